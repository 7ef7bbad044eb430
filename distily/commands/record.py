"""``distily record CONFIG.yaml [--key value ...]``: record the teacher into a store (distily.recording.run) and
print the store's fidelity report and where the store is."""

import shlex

from accelerate import PartialState
from rich.console import Console
from rich.table import Table

from distily.config import RecordConfig, config_from_command_line
from distily.recording.run import run_recording


def summary_table(manifest: dict) -> Table:
    """The fidelity report and sizes, for the terminal."""
    settings = manifest["settings"]
    table = Table(title=f"teacher store: k={settings['record_top_k']}, "
                        f"{manifest['bytes_per_topk_entry']} B per top-k entry, "
                        f"{manifest['bytes_per_token']:.0f} B per token")
    table.add_column("k", justify="right")
    table.add_column("KL(teacher || rebuilt), nats/token", justify="right")
    table.add_column("tail mass", justify="right")
    by_k = manifest.get("fidelity", {}).get("by_k", {})
    for k in sorted(by_k, key=int):  # manifest.json's keys are text, sorted as text: 128 before 32 and 8
        table.add_row(k, f"{by_k[k]['kl']:.5f}", f"{by_k[k]['tail_mass']:.5f}")
    return table


def store_location(manifest: dict, store: str) -> str:
    """One line: what the store holds, where it is, and how a run trains from it."""
    rows = manifest["rows"]
    return (f"The teacher store ({rows['train']} train and {rows['eval']} held-out sequences) is in {store}: "
            f"distill from it with --teacher_source recorded --teacher_store {shlex.quote(store)}")


def main(args: list[str], command_line: str) -> int:
    config = config_from_command_line(RecordConfig, args)
    if config is not None:
        manifest = run_recording(config)
        if PartialState().is_main_process:  # the process that wrote the manifest
            Console().print(summary_table(manifest))
            print(store_location(manifest, config.record.teacher_store))
    return 0
