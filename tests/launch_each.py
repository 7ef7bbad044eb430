"""A script on 2 processes launched one by one, as on 2 machines: no launcher stops the others when one exits
(torchrun on one machine does), so a process left waiting in a collective shows."""

import os
import socket
import subprocess
import sys
from pathlib import Path


def launch_each(script: Path, *args: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """``script args`` on 2 processes (gloo on CPU), each given ``timeout`` seconds, so that a hang fails the test;
    each process's exit status and output, by rank."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    launched = [subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                for rank in range(2)]
    done = []
    for process in launched:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for each in launched:
                each.kill()
            raise
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done
