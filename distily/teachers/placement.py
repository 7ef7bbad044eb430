"""Where the live teacher's weights live in a run of one or many processes.

The teacher is frozen and only runs forward under ``no_grad``, so data parallelism needs no wrapper for
it: every process holds a whole copy on its device (one process, DDP, DeepSpeed ZeRO-1/2, which shard
only gradients and optimizer states, things a teacher does not have). A teacher too big for one device
is sharded the way the student is when the run shards parameters: under FSDP2 with the FSDP plugin's own
wrap policy, mixed precision and resharding, under DeepSpeed ZeRO-3 as an inference engine on the
student's ZeRO-3 settings. Every process then holds a slice and the layers are gathered as they run, so
every process must run the teacher on every batch (they do: each has its own batch).
"""

import copy
import logging

from accelerate import Accelerator
from accelerate.utils import DistributedType, fsdp2_prepare_model
from torch import nn

logger = logging.getLogger(__name__)


def zero3_enabled(accelerator: Accelerator) -> bool:
    """Whether the run is DeepSpeed ZeRO-3 (parameters partitioned over the processes)."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    return deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3


def teacher_is_sharded(accelerator: Accelerator) -> bool:
    """Whether ``place_teacher`` shards the teacher (FSDP2, ZeRO-3) rather than keeping a whole copy."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.state.fsdp_plugin.fsdp_version == 2
    return zero3_enabled(accelerator)


def place_teacher(teacher: nn.Module, accelerator: Accelerator) -> nn.Module:
    """The teacher ready for forwards on this process: sharded under FSDP2 or ZeRO-3, else on its device."""
    if teacher_is_sharded(accelerator):
        if accelerator.distributed_type == DistributedType.FSDP:
            return fsdp2_prepare_model(accelerator, teacher.eval())  # shards in place: the same module
        return _zero3_inference_engine(teacher, accelerator.state.deepspeed_plugin.deepspeed_config)
    if accelerator.distributed_type == DistributedType.FSDP:
        logger.info("FSDP version 1: the teacher is replicated on every device (fsdp_version: 2 shards it)")
    return teacher.to(accelerator.device)


def _zero3_inference_engine(teacher: nn.Module, student_config: dict) -> nn.Module:
    """The teacher partitioned by DeepSpeed ZeRO-3 with the student's precision and stage-3 settings, without
    an optimizer (so no optimizer, scheduler or offloaded optimizer state in its config)."""
    import deepspeed  # present whenever accelerate runs DeepSpeed

    config = copy.deepcopy(student_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
