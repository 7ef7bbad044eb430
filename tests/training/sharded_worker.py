"""One process of ``test_sharded_student``: a tiny student sharded over the processes (gloo on CPU) by FSDP2 or
FSDP1 as accelerate prepares the Trainer's ``DistillationModel`` (transformer-based wrap: each decoder layer of
the student its own unit), or by DeepSpeed ZeRO-3 (its CPU accelerator). After a
training step, the student generates completions of this process's own prompts (the processes decoding
different numbers of steps, then one of them near the model's last position), builds on-policy batches and runs
an evaluation forward, all through ``DistillationTrainer.run_student``: everything must equal the same
computations on an unsharded copy of its weights, and the next step the copy's.

    python -m torch.distributed.run --nproc_per_node 2 sharded_worker.py fsdp2 fsdp1   # or: zero3 (alone)

Prints ``ok <mode> <rank>`` when every check of a mode holds (an assertion fails otherwise).
"""

import copy
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, fsdp2_prepare_model
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import AutoModelForCausalLM

from distily.generation.arguments import SamplingSettings
from distily.generation.engine import HFGenerator
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import build_objective
from distily.training.distillation_model import DistillationModel
from distily.training.on_policy import LOSS_MASK, OnPolicyBatches
from distily.training.trainer import DistillationTrainer
from tiny import VOCAB, tiny_config

PAD, MAX_NEW_TOKENS, LR = 0, 8, 0.1


def distillation_model(teacher) -> DistillationModel:
    torch.manual_seed(1)
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2, pad_token_id=PAD))
    objective = build_objective(ObjectiveArguments(), vocab_size=VOCAB)
    objective.attach(student, teacher)
    return DistillationModel(student, objective)


def plain_trainee(model):
    """``model`` and its training step (forward, backward, SGD step) on a batch and the teacher's outputs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step(batch, teacher_outputs) -> float:
        result, _ = model(batch, teacher_outputs)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return result.loss.item()

    return model, step


def sharded_trainee(model: DistillationModel, mode: str):
    """``model`` sharded by ``mode`` (the module that runs it), and its training step."""
    if mode == "zero3":
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True,
                  "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                          config=config)

        def step(batch, teacher_outputs) -> float:
            result, _ = engine(batch, teacher_outputs)
            engine.backward(result.loss)
            engine.step()
            return result.loss.item()

        return engine, step
    # FSDP as accelerate prepares the Trainer's model (its state set by hand: accelerate picks no FSDP on a CPU)
    accelerator = Accelerator()
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=int(mode[-1]), auto_wrap_policy="transformer_based_wrap", use_orig_params=True)
    accelerator.state.distributed_type = DistributedType.FSDP
    if mode == "fsdp2":  # accelerator.prepare's FSDP2 step (it would want the optimizer, built here after it)
        wrapped, unit = fsdp2_prepare_model(accelerator, model), FSDPModule
    else:
        wrapped, unit = accelerator.prepare_model(model), FullyShardedDataParallel
    units = [name.removeprefix("_fsdp_wrapped_module.") for name, module in wrapped.named_modules()
             if isinstance(module, unit)]
    assert units == ["", "student.model.layers.0", "student.model.layers.1"], units  # one unit per decoder layer
    return plain_trainee(wrapped)


def gathered_copy(engine, like: DistillationModel) -> DistillationModel:
    """An unsharded copy of a ZeRO-3 engine's model with its current weights (DeepSpeed's own update rule
    makes them differ from plain SGD's)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        state = {name: tensor.detach().clone() for name, tensor in engine.module.state_dict().items()}
    whole = copy.deepcopy(like)
    whole.load_state_dict(state)
    return whole


def check(mode: str) -> None:
    """Every check of the module's docstring, with the student sharded by ``mode``."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2, pad_token_id=PAD)).eval()
    model = distillation_model(teacher)
    reference, reference_step = plain_trainee(copy.deepcopy(model))
    wrapped, step = sharded_trainee(model, mode)
    batch = {"input_ids": torch.randint(1, VOCAB, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    with torch.no_grad():  # the same batch on every process
        teacher_outputs = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    first = step(batch, teacher_outputs)
    assert abs(first - reference_step(batch, teacher_outputs)) < 1e-5
    if mode == "zero3":
        reference, reference_step = plain_trainee(gathered_copy(wrapped, reference))
    student = model.student
    trainer = SimpleNamespace(is_fsdp_enabled=mode != "zero3", model_wrapped=wrapped, student=student)

    # this process's prompts: rank 0 one prompt whose greedy answer ends after 2 tokens, rank 1 three that go on
    greedy = SamplingSettings(MAX_NEW_TOKENS, temperature=0)
    eos = HFGenerator(reference.student, greedy, stop_ids=[], pad_token_id=PAD).generate([[5, 6, 7]])[0][1]
    prompts = [[5, 6, 7]] if rank == 0 else [[11, 12, 13, 14], [21, 22], [31, 32, 33, 34, 35]]
    expected = HFGenerator(reference.student, greedy, stop_ids=[eos], pad_token_id=PAD).generate(prompts)
    generator = HFGenerator(student, greedy, stop_ids=[eos], pad_token_id=PAD)

    def completions_of(these_prompts):
        def generate(student):
            generator.load_weights(student, sharded=True)
            return generator.generate(these_prompts)

        return DistillationTrainer.run_student(trainer, generate)

    assert completions_of(prompts) == expected
    lengths = [0] * dist.get_world_size()
    dist.all_gather_object(lengths, max(len(completion) for completion in expected))
    assert lengths[0] < lengths[1], lengths  # the processes decoded different numbers of steps

    # one process has a prompt 3 positions from the model's last: every process decodes 3 steps at most
    near_end = list(range(1, tiny_config("llama").max_position_embeddings - 2))
    expected_near_end = HFGenerator(reference.student, greedy, stop_ids=[eos], pad_token_id=PAD).generate([near_end])
    assert completions_of(prompts + [near_end] * rank) == (
        [completion[:3] for completion in expected] + expected_near_end * rank)

    # on-policy batches as the trainer builds them, every micro-batch drawn
    length = len(prompts[0])  # prompt, then the reference answer 40, 41
    prompt_batch = {"input_ids": torch.tensor([prompts[0] + [40, 41]]),
                    "attention_mask": torch.ones(1, length + 2, dtype=torch.long),
                    LOSS_MASK: torch.tensor([[0] * (length - 1) + [1, 1, 0]])}
    on_policy = OnPolicyBatches(generator, lmbda=1.0, seed=0, pad_token_id=PAD, max_seq_length=64)
    batches = DistillationTrainer.run_student(trainer,
                                              lambda student: on_policy.replace([prompt_batch], 0, student, True))
    assert batches[0]["input_ids"][0].tolist() == prompts[0] + expected[0]

    logits = DistillationTrainer.run_student(trainer, lambda student: student(**batch).logits)
    with torch.no_grad():
        assert torch.allclose(logits, reference.student(**batch).logits, atol=1e-5)

    # all of this changed nothing: the next step (new weights) is the unsharded copy's
    second = step(batch, teacher_outputs)
    assert abs(second - reference_step(batch, teacher_outputs)) < 1e-5 and abs(second - first) > 1e-3
    print(f"ok {mode} {rank}", flush=True)


def main(modes: list[str]) -> None:
    if modes == ["zero3"]:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    for mode in modes:
        check(mode)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
