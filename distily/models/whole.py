"""Models loaded whole on every process, also in a DeepSpeed ZeRO-3 run.

When a run's DeepSpeed config is ZeRO-3 (``deepspeed`` in the training arguments, or accelerate's DeepSpeed
launch), transformers partitions every model it loads or builds from a config over the processes as it goes
(``deepspeed.zero.Init``), so no process holds its weights. Distily checks and measures its models before
training (causality, document isolation, tokenizer sizes, framing, parameter counts), which a partitioned model
cannot run. So it loads them whole and lets DeepSpeed partition them afterwards: the Trainer's engine the
student, ``placement.py`` the teacher (as accelerate does with ``zero3_init_flag: false``).
"""

from contextlib import contextmanager

from transformers.integrations import deepspeed as hf_deepspeed


@contextmanager
def models_loaded_whole():
    """While open, transformers loads and builds models unpartitioned; the run's ZeRO config is back after."""
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers keeps the run's config object only here
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
