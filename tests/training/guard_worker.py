"""One process of ``test_a_non_finite_gradient_or_weight_on_one_process_stops_every_process``: a small model
sharded over 2 processes (gloo on CPU) by FSDP2 or FSDP1, its optimizer under ``NonFiniteStepGuard``; after a
backward, process 1 alone puts a NaN in its slice of the gradients (as when an overflow lands in its shard).
Then process 1 alone puts a NaN in its slice of the weights, which ``check_finite_weights`` must refuse on every
process (also under DeepSpeed ZeRO-3, where a parameter's slice is its ``ds_tensor``: the ``zero3`` mode alone).

    python -m torch.distributed.run --nproc_per_node 2 guard_worker.py fsdp2 fsdp1   # or: zero3

Prints ``ok <mode> <rank>`` when every check of a mode holds (an assertion fails otherwise).
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

from distily.errors import DistilyConfigError
from distily.training.guards import NonFiniteStepGuard, check_finite_weights, local_part

CPU = torch.device("cpu")


def sharded_model(mode: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    if mode == "fsdp2":
        fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        return model
    return FullyShardedDataParallel(model, use_orig_params=True, device_id=CPU)


def backward(model: nn.Module, poison: bool) -> None:
    model(torch.ones(2, 8)).sum().backward()
    if poison and dist.get_rank() == 1:
        grad = next(local_part(p.grad) for p in model.parameters()
                    if p.grad is not None and local_part(p.grad).numel())
        grad.view(-1)[0] = float("nan")


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [local_part(parameter).detach().clone() for parameter in model.parameters()]


def moved(model: nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(now, then) for now, then in zip(weights(model), before))


def steps_taken(mode: str, process_group_device) -> list:
    """The guarded step after a NaN on process 1 alone: whether each process's slice of the weights moved."""
    model = sharded_model(mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    NonFiniteStepGuard(optimizer, max_consecutive=3, process_group_device=process_group_device)
    backward(model, poison=True)
    before = weights(model)
    optimizer.step()
    taken = [None] * dist.get_world_size()
    dist.all_gather_object(taken, moved(model, before))
    return taken


def check(mode: str) -> None:
    # the case: deciding alone, process 0 steps and process 1 skips, so the shards fall out of step
    assert steps_taken(mode, None) == [True, False]
    assert steps_taken(mode, CPU) == [False, False]  # decided together, both skip

    model = sharded_model(mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteStepGuard(optimizer, max_consecutive=2, process_group_device=CPU)
    backward(model, poison=False)
    before = weights(model)
    optimizer.step()
    assert moved(model, before) and guard.counts.skipped == 0  # a finite step is taken everywhere
    backward(model, poison=True)
    optimizer.step()
    backward(model, poison=True)
    try:  # every process stops at the same step, none is left waiting in a collective
        optimizer.step()
        raise AssertionError("the second non-finite step in a row did not stop the run")
    except DistilyConfigError as stop:
        assert "2 optimizer steps in a row had non-finite gradients" in str(stop)
    assert guard.counts.skipped == 2
    check_weights(mode)


def zero3_model() -> nn.Module:
    """The small model partitioned by DeepSpeed ZeRO-3 (its CPU accelerator)."""
    import deepspeed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    config = {"train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                      config=config)
    return engine.module


def refusals(mode: str, process_group_device) -> list:
    """Whether each process refuses to write the model after process 1 alone put a NaN in its slice of the weights."""
    model = zero3_model() if mode == "zero3" else sharded_model(mode)
    if dist.get_rank() == 1:
        with torch.no_grad():
            next(part for part in map(local_part, model.parameters()) if part.numel()).view(-1)[0] = float("nan")
    try:
        check_finite_weights(model, process_group_device=process_group_device)
        refused = False
    except DistilyConfigError:
        refused = True
    answers = [None] * dist.get_world_size()
    dist.all_gather_object(answers, refused)
    return answers


def check_weights(mode: str) -> None:
    # the case: deciding alone, only process 1 refuses, and process 0 would go on into the save and wait there
    assert refusals(mode, None) == [False, True]
    assert refusals(mode, CPU) == [True, True]  # decided together, both refuse
    print(f"ok {mode} {dist.get_rank()}", flush=True)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    for mode in sys.argv[1:]:
        if mode == "zero3":
            check_weights(mode)
        else:
            check(mode)
    dist.destroy_process_group()
