"""One of the processes of ``test_processes_asking_for_the_same_rows_at_once_read_the_stream_once``: it makes
GO.ready.PID, waits for GO to exist, then loads rows 5 to 15 of DATA with dataset_streaming; each stream it opens
takes 2 seconds to open and is noted in OPENED.

    python stream_worker.py DATA GO OPENED

Prints the texts of the rows it loaded, as JSON.
"""

import json
import os
import sys
import time
from pathlib import Path

import datasets

from distily.data.arguments import DataArguments
from distily.data.sources import load_documents

data, go, opened = sys.argv[1:]
load_dataset = datasets.load_dataset


def slow_stream(*args, **kwargs):
    if kwargs.get("streaming"):
        with open(opened, "a") as note:
            note.write("opened\n")
        time.sleep(2)
    return load_dataset(*args, **kwargs)


datasets.load_dataset = slow_stream
Path(f"{go}.ready.{os.getpid()}").touch()  # imports done: the test starts all workers at once
while not Path(go).exists():
    time.sleep(0.05)
rows = load_documents(DataArguments(dataset_name=data, dataset_split="train[5:15]", dataset_streaming=True))
sys.stdout.write(json.dumps(rows.to_dict()["text"]) + "\n")
