"""Feature components: hidden states, attention probabilities and q/k/v attention relations captured by hooks."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM, BambaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Lfm2Config, Phi3Config, Qwen2Config,
)

from tiny import tiny_gemma3n_config
from distily.data.batches import collate
from distily.data.framing import model_inputs
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.features import AttentionRelationsComponent, AttentionsComponent, HiddenStatesComponent
from distily.objectives.losses import FEATURE_LOSSES
from distily.objectives.norms import NORMS
from distily.objectives.objective import build_objective
from distily.objectives.projectors import PROJECTORS
from distily.objectives.qkv import QKVRecorder

VOCAB = 64
TINY_CONFIGS = {
    "gpt2": lambda width, heads, depth: GPT2Config(
        vocab_size=VOCAB, n_embd=width, n_head=heads, n_layer=depth, n_positions=32, attn_pdrop=0.0
    ),
    "llama": lambda width, heads, depth: LlamaConfig(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1), num_hidden_layers=depth, max_position_embeddings=32,
    ),
    "phi3": lambda width, heads, depth: Phi3Config(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1), num_hidden_layers=depth, max_position_embeddings=32, pad_token_id=0,
    ),
    "qwen2": lambda width, heads, depth: Qwen2Config(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1), num_hidden_layers=depth, max_position_embeddings=32,
    ),
}
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # [batch, seq]: the second row right-padded


def tiny_model(architecture, width=32, heads=4, depth=2, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(TINY_CONFIGS[architecture](width, heads, depth)).eval()


def tokens(seed=1):
    return torch.randint(1, VOCAB, MASK.shape, generator=torch.Generator().manual_seed(seed))


def batch_of(input_ids):
    return {"input_ids": input_ids, "attention_mask": MASK, "labels": input_ids.masked_fill(MASK == 0, -100)}


def hidden_outputs(width, depth=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return SimpleNamespace(hidden_states=tuple(torch.randn(2, 6, width, generator=generator) for _ in range(depth + 1)))


def hidden_component(student_width=16, teacher_width=32, projector="linear", norm="none", loss="mse"):
    torch.manual_seed(0)
    pairs = [(1, 1), (2, 2)]
    return HiddenStatesComponent(
        pairs,
        [PROJECTORS[projector](student_width, teacher_width) for _ in pairs],
        [NORMS[norm](teacher_width) for _ in pairs],
        loss,
    )


# hidden states


@pytest.mark.parametrize("loss", FEATURE_LOSSES)
@pytest.mark.parametrize("norm", ["none", "layernorm", "affine"])
def test_hidden_states_loss_is_zero_when_the_student_is_the_teacher(loss, norm):
    outputs = hidden_outputs(32)
    component = hidden_component(32, 32, "identity", norm, loss)
    assert component(outputs, outputs, batch_of(tokens())).abs().item() < 1e-5


@pytest.mark.parametrize("loss", FEATURE_LOSSES)
def test_teacher_only_norm_is_met_by_the_normalised_teacher(loss):
    teacher = hidden_outputs(32)
    student = SimpleNamespace(hidden_states=tuple(F.layer_norm(h, (32,)) for h in teacher.hidden_states))
    component = hidden_component(32, 32, "identity", "teacher_only", loss)
    assert component(student, teacher, batch_of(tokens())).abs().item() < 1e-5
    assert component(teacher, teacher, batch_of(tokens())).item() > 0.1


def test_hidden_states_loss_is_the_plain_formula_summed_over_real_tokens():
    component = hidden_component(16, 32)
    student, teacher = hidden_outputs(16, seed=1), hidden_outputs(32, seed=2)
    expected = 0.0
    for (s, t), projector in zip(component.layer_pairs, component.projectors):
        for row, length in enumerate(MASK.sum(1).tolist()):
            difference = projector(student.hidden_states[s][row, :length]) - teacher.hidden_states[t][row, :length]
            expected += difference.pow(2).mean(-1).sum().item()
    actual = component(student, teacher, batch_of(tokens())).item()
    assert math.isclose(actual, expected / 2, rel_tol=1e-5)


@pytest.mark.parametrize("loss", FEATURE_LOSSES)
def test_hidden_states_padding_is_ignored_and_losses_are_non_negative(loss):
    component = hidden_component(16, 32, "mlp", "affine", loss)
    student, teacher = hidden_outputs(16, seed=1), hidden_outputs(32, seed=2)
    value = component(student, teacher, batch_of(tokens()))
    for states in (student.hidden_states, teacher.hidden_states):
        for state in states:
            state[1, 4:] = 1e4  # padding positions
    assert value.item() >= 0
    assert torch.equal(component(student, teacher, batch_of(tokens())), value)


def test_hidden_states_train_the_projector_and_the_student():
    component = hidden_component(16, 32, "orthogonal", "affine")
    student, teacher = hidden_outputs(16, seed=1), hidden_outputs(32, seed=2)
    for state in student.hidden_states:
        state.requires_grad_(True)
    component(student, teacher, batch_of(tokens())).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in component.parameters())
    assert student.hidden_states[1].grad[1, 4:].abs().sum() == 0, "no gradient into padding"
    assert student.hidden_states[1].grad[0].abs().sum() > 0


# attention probabilities


def attention_outputs(heads, depth=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    causal = torch.ones(6, 6).tril().bool()
    scores = [torch.randn(2, heads, 6, 6, generator=generator).masked_fill(~causal, -math.inf) for _ in range(depth)]
    return SimpleNamespace(attentions=tuple(score.softmax(-1) for score in scores))


def reference_attention_kl(student_probs, teacher_probs):
    """sum over real query rows of mean over heads of KL(teacher row || student row), by explicit loops."""
    total = 0.0
    for row, length in enumerate(MASK.sum(1).tolist()):
        for query in range(length):
            for head in range(teacher_probs.shape[1]):
                p, q = teacher_probs[row, head, query], student_probs[row, head, query]
                keep = p > 0
                total += (p[keep] * (p[keep].log() - q[keep].log())).sum().item() / teacher_probs.shape[1]
    return total


@pytest.mark.parametrize("student_heads, teacher_heads, mode", [(4, 4, "group"), (2, 8, "group"), (8, 2, "group"),
                                                                 (3, 4, "mean")])
def test_attention_kl_matches_explicit_loops_with_heads_merged(student_heads, teacher_heads, mode):
    student, teacher = attention_outputs(student_heads, seed=1), attention_outputs(teacher_heads, seed=2)
    component = AttentionsComponent([(1, 1), (2, 2)], student_heads, teacher_heads, mode)
    heads = min(student_heads, teacher_heads) if mode == "group" else 1
    expected = 0.0
    for index in (0, 1):
        merged = [probs.unflatten(1, (heads, -1)).mean(2) for probs in (student.attentions[index],
                                                                        teacher.attentions[index])]
        expected += reference_attention_kl(*merged)
    actual = component(student, teacher, batch_of(tokens())).item()
    assert actual > 0 and math.isclose(actual, expected / 2, rel_tol=1e-4)
    assert component(teacher, teacher, batch_of(tokens())).abs().item() < 1e-6


def test_attention_rows_of_padding_are_not_counted():
    student, teacher = attention_outputs(4, seed=1), attention_outputs(4, seed=2)
    component = AttentionsComponent([(2, 2)], 4, 4)
    value = component(student, teacher, batch_of(tokens()))
    student.attentions[1][1, :, 4:] = torch.full((6,), 1 / 6)  # padding query rows
    assert torch.equal(component(student, teacher, batch_of(tokens())), value)


def test_attentions_from_models_that_did_not_run_eager_attention_are_a_config_error():
    model = tiny_model("llama")  # SDPA returns no attention probabilities
    outputs = model(tokens(), attention_mask=MASK, output_attentions=True)
    with pytest.raises(DistilyConfigError, match="returned no attention probabilities"):
        AttentionsComponent([(1, 1)], 4, 4)(outputs, outputs, batch_of(tokens()))


def test_attentions_from_eager_models_train_the_student():
    teacher, student = tiny_model("llama", 64, 8, 4), tiny_model("llama", 32, 4, 2, seed=1).train()
    for model in (teacher, student):
        model.set_attn_implementation("eager")
    component = AttentionsComponent([(1, 2), (2, 4)], 4, 8)
    with torch.no_grad():
        teacher_outputs = teacher(tokens(), attention_mask=MASK, output_attentions=True)
    student_outputs = student(tokens(), attention_mask=MASK, output_attentions=True)
    loss = component(student_outputs, teacher_outputs, batch_of(tokens()))
    loss.backward()
    assert loss.item() > 0 and student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0



HYBRID_CONFIGS = {  # blocks 1 and 3 Mamba or convolutional, blocks 2 and 4 attention
    "bamba": lambda: BambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                 num_key_value_heads=2, num_hidden_layers=4, attn_layer_indices=[1, 3],
                                 mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8),
    "lfm2": lambda: Lfm2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                               num_key_value_heads=2, num_hidden_layers=4, layer_types=["conv", "full_attention"] * 2),
}


@pytest.mark.parametrize("architecture", HYBRID_CONFIGS)
def test_attention_pairs_of_hybrid_models_read_the_blocks_they_name(architecture):
    """A hybrid model returns attention probabilities for its attending blocks alone (2 here, of 4 blocks): index i
    read ``attentions[i - 1]``, so pair (2, 4) read the teacher's map at position 3 (an IndexError: it has 2) and
    (1, 1), a Mamba block, read block 2's map. After attach, index i reads block i's map, by the float64 loops, and a
    pair naming a block that does not attend is refused in one line."""
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(HYBRID_CONFIGS[architecture](),
                                                       attn_implementation="eager").eval())
    student, teacher = models
    with torch.no_grad():
        student_out, teacher_out = (model(tokens(), attention_mask=MASK, output_attentions=True, use_cache=False)
                                    for model in models)
    assert len(student_out.attentions) == len(teacher_out.attentions) == 2
    component = AttentionsComponent([(2, 4), (4, 2)], 4, 4)
    component.attach(student, teacher)
    expected = sum(reference_attention_kl(student_out.attentions[s].double(), teacher_out.attentions[t].double())
                   for s, t in ((0, 1), (1, 0)))
    assert math.isclose(component(student_out, teacher_out, batch_of(tokens())).item(), expected / 2, rel_tol=1e-4)
    name = type(teacher).__name__
    with pytest.raises(DistilyConfigError, match=rf"^attentions_layer_map pairs teacher block 3 \({name}\), "
                                                 r"which returns no attention probabilities: only its blocks \[2, 4\] "
                                                 r"attend"):
        AttentionsComponent([(2, 3)], 4, 4).attach(student, teacher)



def test_hidden_states_of_gemma3n_are_read_at_the_active_altup_stream():
    """Gemma 3n returns each hidden state as its AltUp streams, ``[streams, batch, seq, width]``: indexed by the
    ``[batch, seq]`` token mask they raised an IndexError. After attach, each model's are read at its active stream
    (``altup_active_idx``: 1 in this teacher), the one its layers compute on: the loss is the float64 mean squared
    difference of those streams at the real tokens."""
    models = []
    for seed, active in ((1, 0), (2, 1)):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(tiny_gemma3n_config(altup_active_idx=active)).eval())
    student, teacher = models
    with torch.no_grad():
        student_out, teacher_out = (model(tokens(), attention_mask=MASK, output_hidden_states=True, use_cache=False)
                                    for model in models)
    assert student_out.hidden_states[1].shape == (2, *MASK.shape, 64)
    pairs = [(1, 2), (4, 4)]
    component = HiddenStatesComponent(pairs, [PROJECTORS["identity"](64, 64)] * 2, [NORMS["none"](64)] * 2, "mse")
    component.attach(student, teacher)
    rows = MASK.bool()
    expected = sum((student_out.hidden_states[s][0][rows].double() - teacher_out.hidden_states[t][1][rows].double())
                   .square().mean(-1).sum().item() for s, t in pairs) / len(pairs)
    actual = component(student_out, teacher_out, batch_of(tokens())).item()
    assert actual > 0 and math.isclose(actual, expected, rel_tol=1e-5)


# q/k/v capture and attention relations


def _block_input_norm(block):
    return block.ln_1 if hasattr(block, "ln_1") else block.input_layernorm


@pytest.mark.parametrize("architecture", TINY_CONFIGS)
def test_recorded_qkv_are_the_projections_of_each_block(architecture):
    model = tiny_model(architecture)
    recorder = QKVRecorder(model, [0, 1])
    with torch.no_grad():
        hidden_states = model(tokens(), attention_mask=MASK, output_hidden_states=True).hidden_states
    records = [recorder.take(index) for index in (0, 1)]
    with pytest.raises(RuntimeError, match="no q/k/v recorded"):
        recorder.take(0)  # handed over once
    recorder.remove()
    config, blocks = model.config, decoder_layers(model)
    head_dim = config.hidden_size // config.num_attention_heads
    kv_width = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    for index, (block, record) in enumerate(zip(blocks, records)):
        normed = _block_input_norm(block)(hidden_states[index])  # [batch, seq, width]
        attention = block.attn if architecture == "gpt2" else block.self_attn
        if architecture == "gpt2":
            expected = attention.c_attn(normed).split(config.hidden_size, dim=-1)
        elif architecture == "phi3":
            expected = attention.qkv_proj(normed).split([config.hidden_size, kv_width, kv_width], dim=-1)
        else:
            expected = [attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)]
        for kind, tensor in zip(("query", "key", "value"), expected):
            assert torch.allclose(record[kind], tensor, atol=1e-5), (architecture, index, kind)
    model(tokens())
    with pytest.raises(RuntimeError):
        recorder.take(1)  # hooks removed: nothing recorded


def test_models_without_known_qkv_projections_are_a_config_error():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                      intermediate_size=64)
    )
    with pytest.raises(DistilyConfigError, match="no query/key/value projections distily knows"):
        QKVRecorder(model, [0])


def reference_relation_kl(student_vectors, teacher_vectors, relation_heads):
    """MiniLMv2 relation KL summed over real query rows, averaged over relation heads, by explicit loops."""
    total = 0.0
    for row, length in enumerate(MASK.sum(1).tolist()):
        for head in range(relation_heads):
            logps = []
            for vectors in (student_vectors, teacher_vectors):
                v = vectors[row, :length].float().chunk(relation_heads, dim=-1)[head]  # [length, d_r]
                scores = v @ v.T / math.sqrt(v.shape[-1])
                causal = torch.ones(length, length).tril().bool()
                logps.append(scores.masked_fill(~causal, -math.inf).log_softmax(-1))
            for query in range(length):
                s, t = logps[0][query, : query + 1], logps[1][query, : query + 1]
                total += F.kl_div(s, t, log_target=True, reduction="sum").item() / relation_heads
    return total


@pytest.mark.parametrize("architecture", TINY_CONFIGS)
def test_relations_match_the_minilm_formula_for_a_narrower_student_without_eager_attention(architecture):
    teacher, student = tiny_model(architecture, 64, 8, 4), tiny_model(architecture, 32, 4, 2, seed=1)
    component = AttentionRelationsComponent([(2, 4), (1, 2)], relation_heads=2, kinds=["query", "key", "value"])
    component.attach(student, teacher)
    references = [QKVRecorder(student, [0, 1]), QKVRecorder(teacher, [1, 3])]
    student_outputs = student(tokens(), attention_mask=MASK)
    with torch.no_grad():
        teacher_outputs = teacher(tokens(), attention_mask=MASK)
    loss = component(student_outputs, teacher_outputs, batch_of(tokens()))
    expected = 0.0
    for student_index, teacher_index in component.layer_pairs:
        student_qkv, teacher_qkv = references[0].take(student_index - 1), references[1].take(teacher_index - 1)
        for kind in component.kinds:
            expected += reference_relation_kl(student_qkv[kind].detach(), teacher_qkv[kind], 2)
    assert loss.item() > 0 and math.isclose(loss.item(), expected / 6, rel_tol=1e-4)
    assert student.config._attn_implementation == teacher.config._attn_implementation == "sdpa"
    loss.backward()
    attention = decoder_layers(student)[0].attn if architecture == "gpt2" else decoder_layers(student)[0].self_attn
    projection = {"gpt2": "c_attn", "phi3": "qkv_proj"}.get(architecture, "q_proj")
    assert getattr(attention, projection).weight.grad.abs().sum() > 0


def test_relations_under_bf16_autocast_are_the_float32_relations():
    """Autocast ran the relation product in bf16, whose scores could not take the float32 fill of the masked keys
    (a RuntimeError at every step of a bf16 run)."""
    teacher, student = tiny_model("llama", 64, 8, 4), tiny_model("llama", 32, 4, 2, seed=1)
    component = AttentionRelationsComponent([(2, 4)], relation_heads=2, kinds=["query", "key", "value"])
    component.attach(student, teacher)
    losses = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            student_outputs = student(tokens(), attention_mask=MASK)
            with torch.no_grad():
                teacher_outputs = teacher(tokens(), attention_mask=MASK)
            losses.append(component(student_outputs, teacher_outputs, batch_of(tokens())))
    assert losses[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], rtol=0.05, atol=1e-3)  # the q/k/v come from bf16 matmuls


def test_relations_give_the_same_gradients_under_activation_checkpointing():
    teacher = tiny_model("llama", 64, 8, 4)
    gradients = []
    for checkpointing in (False, True):
        student = tiny_model("llama", 32, 4, 2, seed=1).train()
        if checkpointing:  # recomputed blocks fire the hooks again; the recorded q/k/v keep their graph
            student.activation_checkpointing_enable()
        component = AttentionRelationsComponent([(1, 2), (2, 4)], relation_heads=2, kinds=["query", "key", "value"])
        component.attach(student, teacher)
        student_outputs = student(tokens(), attention_mask=MASK)
        with torch.no_grad():
            teacher_outputs = teacher(tokens(), attention_mask=MASK)
        component(student_outputs, teacher_outputs, batch_of(tokens())).backward()
        gradients.append(student.model.layers[0].self_attn.k_proj.weight.grad)
    assert gradients[0].abs().sum() > 0 and torch.allclose(gradients[0], gradients[1], atol=1e-6)


def test_relations_are_zero_for_a_copy_and_ignore_padding_tokens():
    student = tiny_model("llama", 32, 4, 2)
    teacher = copy.deepcopy(student)
    component = AttentionRelationsComponent([(1, 1), (2, 2)], relation_heads=4, kinds=["query", "key", "value"])
    component.attach(student, teacher)

    def loss_for(student_ids, teacher_ids):
        student_outputs = student(student_ids, attention_mask=MASK)
        teacher_outputs = teacher(teacher_ids, attention_mask=MASK)
        return component(student_outputs, teacher_outputs, batch_of(student_ids))

    assert loss_for(tokens(), tokens()).abs().item() < 1e-6
    value = loss_for(tokens(seed=1), tokens(seed=2))
    changed = tokens(seed=1)
    changed[1, 4:] = (changed[1, 4:] + 7) % VOCAB  # only padding positions differ
    assert value.item() > 0 and torch.allclose(loss_for(changed, tokens(seed=2)), value, rtol=1e-6)


def test_relations_in_a_block_of_packed_documents_equal_those_of_each_document_alone():
    """Under document masks (restarting position_ids) the models keep documents apart; so must the relations: a
    query of the second document related to every key of the first (0.339 of 1.800 more on this block)."""
    student, teacher = tiny_model("llama", 32, 4, 2), tiny_model("llama", 64, 8, 2, seed=1)
    component = AttentionRelationsComponent([(2, 2)], relation_heads=2, kinds=["query", "key", "value"])
    component.attach(student, teacher)

    def loss(batch):
        with torch.no_grad():
            return component(student(**model_inputs(batch)), teacher(**model_inputs(batch)), batch).item()

    generator = torch.Generator().manual_seed(2)
    first, second = (torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (6, 5))
    packed = collate([{"input_ids": first + second, "position_ids": list(range(6)) + list(range(5))}])
    alone = collate([{"input_ids": first}, {"input_ids": second}])
    assert loss(packed) > 0 and math.isclose(loss(packed), loss(alone), rel_tol=1e-5)


# configuration


def objective_for(student_config, teacher_config, **values):
    return build_objective(ObjectiveArguments(**values), teacher_config, student_config, VOCAB)


def test_build_objective_sizes_feature_components_from_the_configs():
    teacher_config, student_config = TINY_CONFIGS["phi3"](64, 8, 4), TINY_CONFIGS["phi3"](32, 4, 2)
    objective = objective_for(
        student_config, teacher_config, hidden_states_weight=2.0, hidden_states_layer_map="uniform_last",
        attentions_weight=0.5, attention_relations_weight=1.0, attention_relations_kinds=["query", "value"],
    )
    assert list(objective.components) == ["logits", "hidden_states", "attentions", "attention_relations"]
    assert objective.weights == {"logits": 1.0, "hidden_states": 2.0, "attentions": 0.5, "attention_relations": 1.0}
    hidden = objective.components["hidden_states"]
    assert hidden.layer_pairs == [(1, 2), (2, 4)]
    assert [tuple(p.weight.shape) for p in hidden.projectors] == [(64, 32), (64, 32)]
    assert objective.components["attentions"].matched_heads == 4
    assert objective.components["attention_relations"].relation_heads == 2  # gcd(4, 2, 8, 4)
    assert objective.needs("needs_hidden_states") and objective.needs("needs_attentions")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hidden_states_weight": 1, "hidden_states_projector": "identity"}, "hidden_states_projector='identity'"),
        ({"hidden_states_weight": 1, "hidden_states_loss": "l3"}, "hidden_states_loss='l3' is not a registered"),
        ({"hidden_states_weight": 1, "hidden_states_norm": "rms"}, "hidden_states_norm='rms' is not a registered"),
        ({"hidden_states_weight": 1, "hidden_states_layer_map": "last_k",
          "hidden_states_layer_map_kwargs": '{"k": 3}'}, "k=3 does not fit depths 2 (student) and 4 (teacher)"),
        ({"attentions_weight": 1, "attentions_layer_map": "pairs",
          "attentions_layer_map_kwargs": {"pairs": [[0, 0]]}}, "attention has no index 0"),
        ({"attentions_weight": 1}, "attentions_heads='group' needs one head count to divide the other"),
        ({"attention_relations_weight": 1, "attention_relations_heads": 5}, "attention_relations_heads=5 does not"),
    ],
)
def test_build_objective_errors_name_the_key_and_what_was_expected(values, message):
    teacher_config, student_config = TINY_CONFIGS["llama"](64, 4, 4), TINY_CONFIGS["llama"](48, 3, 2)
    with pytest.raises(DistilyConfigError) as err:
        objective_for(student_config, teacher_config, **values)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hidden_states_weight": -1}, "hidden_states_weight=-1 must be >= 0"),
        ({"logits_weight": 0}, "are all 0; expected a component to train"),
        ({"attentions_heads": "max"}, "attentions_heads='max' is not supported; expected one of group, mean"),
        ({"attention_relations_heads": 0}, "attention_relations_heads=0 must be a positive integer"),
        ({"attention_relations_kinds": ["query", "query"]}, "expected distinct values among query, key, value"),
        ({"attention_relations_kinds": ["score"]}, "attention_relations_kinds=['score'] is not supported"),
        ({"hidden_states_layer_map_kwargs": "[1]"}, "hidden_states_layer_map_kwargs='[1]' is a JSON list"),
    ],
)
def test_objective_arguments_are_checked_when_parsed(values, message):
    with pytest.raises(DistilyConfigError) as err:
        ObjectiveArguments(**values)
    assert message in str(err.value)


def test_feature_only_objective_is_allowed():
    args = ObjectiveArguments(logits_weight=0, attention_relations_weight=1)
    assert args.attention_relations_kinds == ["query", "key", "value"]


def test_relations_need_a_teacher_model_not_a_recording():
    component = AttentionRelationsComponent([(2, 2)], relation_heads=2, kinds=["query"])
    with pytest.raises(DistilyConfigError, match="with a recorded teacher; expected a teacher model"):
        component.attach(tiny_model("llama"), None)
