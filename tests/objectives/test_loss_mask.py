"""A batch's ``loss_mask`` reaches every component, the token counts and the held-out evaluation: outputs at
masked-out positions change nothing, and each value equals its formula over the kept positions only."""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from distily.data.batches import collate
from distily.evaluation.heldout import heldout_metrics
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.component import loss_positions, next_token_targets, token_counts
from distily.objectives.features import AttentionRelationsComponent, AttentionsComponent, HiddenStatesComponent
from distily.objectives.losses import forward_kl, mse
from distily.objectives.norms import NORMS
from distily.objectives.objective import HardLabelComponent, LogitsComponent, build_objective
from distily.objectives.projectors import PROJECTORS
from distily.objectives.sparse import RecordedTeacherOutput, SparseLogitsComponent, bucket_logprobs
from distily.recording.targets import sparse_targets

VOCAB = 48
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # [batch, seq]: the second row right-padded
LOSS_MASK = torch.tensor([[0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 0]])  # one mark on padding, which never counts
KEPT = MASK.bool() & LOSS_MASK.bool()


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _batch(loss_mask=True):
    ids = torch.randint(1, VOCAB, MASK.shape, generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": MASK, "labels": ids.masked_fill(MASK == 0, -100)}
    return {**batch, "loss_mask": LOSS_MASK} if loss_mask else batch


def _perturbed(tensor):
    """``tensor`` with every position outside the kept ones moved far: [batch, seq, ...]."""
    moved = tensor.clone()
    moved[~KEPT] += 50 * _random(*moved[~KEPT].shape, seed=9)
    return moved


def test_loss_positions_and_token_counts_follow_the_loss_mask():
    assert torch.equal(loss_positions(_batch()), KEPT)
    assert torch.equal(loss_positions(_batch(loss_mask=False)), MASK.bool())
    targets = KEPT[:, :-1] & MASK[:, 1:].bool()
    assert torch.equal(next_token_targets(_batch()), targets)
    assert token_counts(_batch()).tolist() == [int(KEPT.sum()), int(targets.sum())]


def test_logit_loss_counts_the_kept_positions_only():
    student, teacher = _random(2, 6, VOCAB, seed=1), _random(2, 6, VOCAB, seed=2)
    component = LogitsComponent("forward_kl")
    value = component(SimpleNamespace(logits=student), SimpleNamespace(logits=teacher), _batch())
    torch.testing.assert_close(value, forward_kl(student[KEPT], teacher[KEPT]).sum())
    moved = component(SimpleNamespace(logits=student), SimpleNamespace(logits=_perturbed(teacher)), _batch())
    torch.testing.assert_close(moved, value)


def test_objective_with_a_full_loss_mask_is_the_objective_without_one():
    student = SimpleNamespace(logits=_random(2, 6, VOCAB, seed=1))
    teacher = SimpleNamespace(logits=_random(2, 6, VOCAB))
    objective = build_objective(ObjectiveArguments(hard_label_weight=0.5))
    full = {**_batch(loss_mask=False), "loss_mask": torch.ones_like(MASK)}
    unmasked = objective(student, teacher, _batch(loss_mask=False)).loss
    assert torch.equal(objective(student, teacher, full).loss, unmasked)
    masked = objective(student, teacher, _batch()).components
    torch.testing.assert_close(masked["logits"], forward_kl(student.logits[KEPT], teacher.logits[KEPT]).mean())


def test_hard_labels_count_the_kept_targets_only():
    logits = _random(2, 6, VOCAB, seed=3)
    batch = _batch()
    targets = KEPT[:, :-1] & MASK[:, 1:].bool()
    expected = F.cross_entropy(logits[:, :-1][targets], batch["input_ids"][:, 1:][targets], reduction="sum")
    torch.testing.assert_close(HardLabelComponent()(SimpleNamespace(logits=logits), None, batch), expected)


def test_hidden_states_count_the_kept_positions_only():
    torch.manual_seed(0)
    component = HiddenStatesComponent([(1, 1)], [PROJECTORS["identity"](8, 8)], [NORMS["none"](8)], "mse")
    student = SimpleNamespace(hidden_states=(None, _random(2, 6, 8, seed=4)))
    teacher = SimpleNamespace(hidden_states=(None, _random(2, 6, 8, seed=5)))
    value = component(student, teacher, _batch())
    torch.testing.assert_close(value, mse(student.hidden_states[1][KEPT], teacher.hidden_states[1][KEPT]).sum())
    moved = SimpleNamespace(hidden_states=(None, _perturbed(teacher.hidden_states[1])))
    torch.testing.assert_close(component(student, moved, _batch()), value)


def _attention(seed):
    scores = _random(2, 2, 6, 6, seed=seed).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
    return scores.softmax(-1)  # [batch, heads, query, key]


def test_attention_rows_count_the_kept_queries_only():
    component = AttentionsComponent([(1, 1)], 2, 2)
    student, teacher = _attention(6), _attention(7)
    value = component(SimpleNamespace(attentions=(student,)), SimpleNamespace(attentions=(teacher,)), _batch())
    reference_batch = {**_batch(loss_mask=False), "attention_mask": KEPT.long()}  # the same rows, no loss mask
    reference = component(SimpleNamespace(attentions=(student,)), SimpleNamespace(attentions=(teacher,)),
                          reference_batch)
    torch.testing.assert_close(value, reference)
    moved = teacher.transpose(1, 2).clone()  # [batch, query, heads, key]
    moved[~KEPT] = _attention(8).transpose(1, 2)[~KEPT]
    moved_value = component(SimpleNamespace(attentions=(student,)),
                            SimpleNamespace(attentions=(moved.transpose(1, 2),)), _batch())
    torch.testing.assert_close(moved_value, value)


def _tiny_llama(seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=1, max_position_embeddings=16)
    return AutoModelForCausalLM.from_config(config).eval()


def test_attention_relations_sum_over_the_kept_query_rows():
    student, teacher = _tiny_llama(0), _tiny_llama(1)
    component = AttentionRelationsComponent([(1, 1)], 2, ["query", "key"])
    component.attach(student, teacher)

    def relations(loss_mask):
        batch = {**_batch(loss_mask=False), "loss_mask": loss_mask}
        with torch.no_grad():
            outputs = [model(input_ids=batch["input_ids"], attention_mask=MASK) for model in (student, teacher)]
        return component(*outputs, batch)

    per_row = sum(relations(torch.zeros_like(MASK).index_put((row, column), torch.tensor(1)))
                  for row, column in KEPT.nonzero())
    torch.testing.assert_close(relations(LOSS_MASK), per_row)
    assert relations(torch.ones_like(MASK)) > relations(LOSS_MASK)


def test_sparse_logit_loss_counts_the_kept_positions_only():
    student, teacher_logits = _random(2, 6, VOCAB, seed=10), _random(2, 6, VOCAB, seed=11)
    top, ids, tail = sparse_targets(teacher_logits.flatten(0, 1), 8, 1.0)

    def stored(logprobs):
        return RecordedTeacherOutput(logprobs.view(2, 6, 8), ids.view(2, 6, 8), tail.view(2, 6), 1.0)

    component = SparseLogitsComponent("forward_kl")
    value = component(SimpleNamespace(logits=student), stored(top), _batch())
    s, t = bucket_logprobs(student[KEPT], top.view(2, 6, 8)[KEPT], ids.view(2, 6, 8)[KEPT], tail.view(2, 6)[KEPT], 1.0)
    torch.testing.assert_close(value, forward_kl(s, t).sum())
    moved = top.view(2, 6, 8).clone()
    moved[~KEPT] = moved[~KEPT].flip(-1)
    torch.testing.assert_close(component(SimpleNamespace(logits=student), stored(moved), _batch()), value)


def test_heldout_metrics_count_the_kept_positions_only():
    model, teacher = _tiny_llama(2), _tiny_llama(3)
    batch = _batch()
    rows = [{"input_ids": batch["input_ids"][row, :length], "loss_mask": LOSS_MASK[row, :length]}
            for row, length in enumerate(MASK.sum(1).tolist())]
    metrics = heldout_metrics(model, rows, collate, batch_size=2, teacher=teacher)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=MASK).logits
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=MASK).logits
    targets = KEPT[:, :-1] & MASK[:, 1:].bool()
    nll = F.cross_entropy(logits[:, :-1][targets], batch["input_ids"][:, 1:][targets])
    assert math.isclose(metrics["lm_loss"], nll.item(), rel_tol=1e-5)
    kl = forward_kl(logits[KEPT], teacher_logits[KEPT]).mean()
    assert math.isclose(metrics["kl_to_teacher"], kl.item(), rel_tol=1e-4)
    agree = (logits[KEPT].argmax(-1) == teacher_logits[KEPT].argmax(-1)).float().mean()
    assert math.isclose(metrics["top1_agreement"], agree.item())
