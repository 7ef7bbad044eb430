"""One process of ``test_a_non_finite_gradient_on_one_process_skips_the_step_on_every_process``: a small model
sharded over 2 processes (gloo on CPU) by FSDP2 or FSDP1, its optimizer under ``NonFiniteStepGuard``; after a
backward, process 1 alone puts a NaN in its slice of the gradients (as when an overflow lands in its shard).

    python -m torch.distributed.run --nproc_per_node 2 guard_worker.py fsdp2 fsdp1

Prints ``ok <mode> <rank>`` when every check of a mode holds (an assertion fails otherwise).
"""

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

from distily.errors import DistilyConfigError
from distily.training.guards import NonFiniteStepGuard

CPU = torch.device("cpu")


def sharded_model(mode: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    if mode == "fsdp2":
        fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        return model
    return FullyShardedDataParallel(model, use_orig_params=True, device_id=CPU)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a (DTensor or plain) parameter or gradient."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def backward(model: nn.Module, poison: bool) -> None:
    model(torch.ones(2, 8)).sum().backward()
    if poison and dist.get_rank() == 1:
        grad = next(local(p.grad) for p in model.parameters() if p.grad is not None and local(p.grad).numel())
        grad.view(-1)[0] = float("nan")


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [local(parameter).detach().clone() for parameter in model.parameters()]


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
    print(f"ok {mode} {dist.get_rank()}", flush=True)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    for mode in sys.argv[1:]:
        check(mode)
    dist.destroy_process_group()
