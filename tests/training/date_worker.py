"""One process of ``test_the_processes_of_a_run_started_at_midnight_render_one_date``: process 0 reads the clock
on 26 Jul 2024, the others after midnight (27 Jul), as when a run starts at midnight; each pins the run's date.

    python -m torch.distributed.run --nproc_per_node 2 date_worker.py

Prints ``rank <process> <date pinned>``.
"""

import sys
from types import SimpleNamespace

from accelerate import PartialState

from distily.data import chat
from distily.data.arguments import DataArguments
from distily.recording.arguments import TeacherSourceArguments
from distily.training.run_dir import pin_chat_template_date

state = PartialState(cpu=True)
chat.today = lambda: "2024-07-26" if state.is_main_process else "2024-07-27"
config = SimpleNamespace(data=DataArguments(), record=TeacherSourceArguments())
pin_chat_template_date(config, None)
sys.stdout.write(f"rank {state.process_index} {config.data.chat_template_date}\n")  # one write: lines never interleave
sys.stdout.flush()
