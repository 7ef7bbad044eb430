"""On a GPU (``-m cuda``; skipped without one): the chunked loss and the chunked evaluation give the CPU's numbers
(``test_compile.py`` has the compiled bf16 run on a GPU)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.data.batches import collate
from distily.evaluation.heldout import heldout_metrics
from distily.objectives.chunked import chunked_logit_loss_sum
from distily.objectives.losses import forward_kl
from tiny import VOCAB, tiny_config

pytestmark = pytest.mark.cuda


def test_the_fused_chunked_loss_and_its_gradients_on_the_gpu_equal_the_cpu_full_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 64, generator=generator)
    head = torch.randn(4096, 64, generator=generator) * 0.2
    teacher = torch.randn(300, 4096, generator=generator) * 2

    def loss_and_grads(device, fused):
        leaves = [tensor.to(device).requires_grad_() for tensor in (hidden, head)]
        if fused:
            loss = chunked_logit_loss_sum(forward_kl, leaves[0], teacher.to(device), lm_head_weight=leaves[1],
                                          chunk_size=64, loss_chunk_size=16)
        else:
            loss = forward_kl(leaves[0] @ leaves[1].T, teacher.to(device)).sum()
        return [value.detach().cpu() for value in (loss, *torch.autograd.grad(loss, leaves))]

    for on_gpu, on_cpu in zip(loss_and_grads("cuda", True), loss_and_grads("cpu", False)):
        torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_the_chunked_evaluation_on_the_gpu_equals_the_cpu():
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2))
    teacher = AutoModelForCausalLM.from_config(tiny_config("qwen2", layers=2))
    rows = [{"input_ids": torch.randint(VOCAB, (length,))} for length in (16, 9, 16, 4)]
    on_cpu = heldout_metrics(student, rows, collate, batch_size=2, teacher=teacher, chunk_size=7)
    on_gpu = heldout_metrics(student.cuda(), rows, collate, batch_size=2, teacher=teacher.cuda(), chunk_size=7)
    assert on_gpu == pytest.approx(on_cpu, rel=1e-4)

