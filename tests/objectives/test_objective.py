import pytest
import torch
from transformers import AutoModelForCausalLM
from types import SimpleNamespace

from distily.errors import DistilyConfigError
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.losses import forward_kl
from distily.objectives.objective import build_objective, check_objective, token_counts
from tiny import tiny_config


def outputs(logits):
    return SimpleNamespace(logits=logits)


def batch_with_padding():
    torch.manual_seed(0)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    input_ids = torch.randint(0, 11, attention_mask.shape)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_token_counts():
    batch = batch_with_padding()
    assert token_counts(batch).tolist() == [6 + 4 + 3 + 6, 5 + 3 + 2 + 5]


def test_logit_component_is_the_mean_over_real_tokens_only():
    batch = batch_with_padding()
    student, teacher = torch.randn(4, 6, 11), torch.randn(4, 6, 11)
    objective = build_objective(ObjectiveArguments())
    result = objective(outputs(student), outputs(teacher), batch)
    mask = batch["attention_mask"].bool()
    expected = forward_kl(student[mask], teacher[mask]).mean()
    torch.testing.assert_close(result.loss, expected)
    garbage = student.clone()
    garbage[~mask] = 1e4  # padding positions must not matter
    torch.testing.assert_close(objective(outputs(garbage), outputs(teacher), batch).loss, expected)


def test_vocab_size_limits_the_logit_loss_to_shared_columns():
    batch = batch_with_padding()
    student, teacher = torch.randn(4, 6, 11), torch.randn(4, 6, 13)  # teacher head padded by 2 rows
    objective = build_objective(ObjectiveArguments(), vocab_size=11)
    mask = batch["attention_mask"].bool()
    expected = forward_kl(student[mask], teacher[mask][:, :11]).mean()
    torch.testing.assert_close(objective(outputs(student), outputs(teacher), batch).loss, expected)


def test_hard_label_component_equals_the_models_own_loss():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    input_ids = torch.randint(0, 300, (2, 12))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
    result = model(input_ids=input_ids, labels=input_ids)
    objective = build_objective(ObjectiveArguments(logits_weight=0, hard_label_weight=1))
    torch.testing.assert_close(objective(result, None, batch).loss, result.loss)


def test_accumulated_halves_give_the_same_loss_and_gradient():
    batch = batch_with_padding()
    teacher = torch.randn(4, 6, 11)
    student = torch.randn(4, 6, 11, requires_grad=True)
    objective = build_objective(ObjectiveArguments(hard_label_weight=0.5))
    whole = objective(outputs(student), outputs(teacher), batch).loss
    (whole_grad,) = torch.autograd.grad(whole, student)
    counts = token_counts(batch)  # of the whole accumulated batch
    total, grad = 0.0, torch.zeros_like(student)
    for part in (slice(0, 2), slice(2, 4)):
        piece = {key: value[part] for key, value in batch.items()}
        loss = objective(outputs(student[part]), outputs(teacher[part]), piece, counts).loss
        (g,) = torch.autograd.grad(loss, student)
        total, grad = total + loss, grad + g
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(grad, whole_grad)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(logits_loss="kl_divergence"), "logits_loss='kl_divergence' is not a registered loss"),
        (dict(logits_loss_kwargs='{"beta": 0.5}'), "do not fit loss 'forward_kl'"),
    ],
)
def test_bad_objective_settings(arguments, message):
    with pytest.raises(DistilyConfigError, match=message):
        build_objective(ObjectiveArguments(**arguments))


REGISTRY_TYPOS = [
    ({"logits_loss": "kl"}, "logits_loss='kl' is not a registered loss; expected one of forward_kl, reverse_kl"),
    ({"logits_loss_kwargs": '{"beta": 0.5}'}, "do not fit loss 'forward_kl': unknown parameters ['beta']"),
    ({"cross_tokenizer_loss": "uldd"}, "cross_tokenizer_loss='uldd' is not a registered cross-tokenizer loss"),
    ({"hidden_states_weight": 1, "hidden_states_loss": "l1"}, "hidden_states_loss='l1' is not a registered feature"),
    ({"hidden_states_weight": 1, "hidden_states_projector": "conv"}, "hidden_states_projector='conv' is not a"),
    ({"hidden_states_weight": 1, "hidden_states_norm": "rms"}, "hidden_states_norm='rms' is not a registered norm"),
    ({"hidden_states_weight": 1, "hidden_states_layer_map": "nearest"}, "hidden_states_layer_map='nearest' is not"),
    ({"attentions_weight": 1, "attentions_layer_map": "last_k", "attentions_layer_map_kwargs": '{"kk": 2}'},
     "attentions_layer_map_kwargs {'kk': 2} do not fit layer map 'last_k'"),
    ({"attention_relations_weight": 1, "attention_relations_layer_map": "pairs"},
     "attention_relations_layer_map_kwargs {} do not fit layer map 'pairs'"),
]


@pytest.mark.parametrize("values, message", REGISTRY_TYPOS, ids=[message[:30] for _, message in REGISTRY_TYPOS])
def test_a_name_no_registry_holds_is_refused_before_the_models_are_known(values, message):
    """Such a typo used to be found after both models had loaded (and in a sweep, when its run started); the
    names of a component that is turned off are not read, and CAKLD's beta may be left to calibration."""
    with pytest.raises(DistilyConfigError) as err:
        check_objective(ObjectiveArguments(**values))
    assert message in str(err.value) and "\n" not in str(err.value)
    turned_off = {key: value for key, value in values.items() if not key.endswith("_weight")}
    if len(turned_off) < len(values):
        check_objective(ObjectiveArguments(**turned_off))
    check_objective(ObjectiveArguments(logits_loss="cakld"))


@pytest.mark.parametrize(("name", "params", "value"), [
    ("jsd", {"beta": 1.5}, "beta=1.5"), ("jsd", {"beta": "0.5"}, "beta='0.5'"), ("cakld", {"beta": -0.1}, "beta=-0.1"),
    ("skew_forward_kl", {"alpha": 1.0}, "alpha=1.0"), ("skew_reverse_kl", {"alpha": True}, "alpha=True"),
])
def test_a_parameter_value_the_loss_refuses_is_refused_before_the_models_are_known(name, params, value):
    """Such a value used to pass and stop the run at its first loss, after both models had loaded and the output
    folder had its run settings (a string with a TypeError traceback)."""
    with pytest.raises(DistilyConfigError) as err:
        check_objective(ObjectiveArguments(logits_loss=name, logits_loss_kwargs=params))
    assert f"do not fit loss {name!r}: loss parameter {value} must be a number in" in str(err.value)
    assert "\n" not in str(err.value)
    check_objective(ObjectiveArguments(logits_loss=name, logits_loss_kwargs={next(iter(params)): 0.5}))


def test_a_batch_without_a_counted_token_gives_zero_not_nan():
    """Every position masked out (chat turns without an answer): each component sums nothing and is divided by
    max(0, 1), so the loss and every gradient are 0, the student's LM head fused (no component reads its logits)
    or not."""
    batch = batch_with_padding()
    batch["loss_mask"] = torch.zeros_like(batch["attention_mask"])
    hidden, head = torch.randn(4, 6, 8, requires_grad=True), torch.nn.Linear(8, 11)
    fused = SimpleNamespace(logits=head(hidden[:, -1:]), hidden_states=(hidden,))
    for student, hard_label_weight in ((fused, 0.0), (outputs(head(hidden)), 0.5)):
        objective = build_objective(ObjectiveArguments(logits_temperature=2.0, hard_label_weight=hard_label_weight))
        objective.attach(SimpleNamespace(get_output_embeddings=lambda: head), None)
        result = objective(student, outputs(torch.randn(4, 6, 11)), batch)
        grads = torch.autograd.grad(result.loss, (hidden, head.weight, head.bias))
        assert result.loss.item() == 0 and all(value.item() == 0 for value in result.components.values())
        assert all((grad == 0).all() for grad in grads)
