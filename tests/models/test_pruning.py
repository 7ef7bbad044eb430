"""student_init=pruned: a narrower student keeps the teacher's most important neurons, heads (whole KV groups) and
hidden channels, ranked by the teacher's activations on calibration rows (Minitron)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, MistralConfig, Phi3Config,
)

from store_values import store_values
from tiny import VOCAB, tiny_config
from distily.cli import main
from distily.config import parse_config, parse_record_config
from distily.demo import TEACHER_DIR
from distily.demo.corpus import write_corpus
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.models.arguments import ModelArguments
from distily.models.pruning import Calibration
from distily.models.student import build_student
from distily.recording.run import run_recording
from distily.training.distill import run_distillation

NARROW = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1}
GEMMAS = {"gemma": GemmaConfig, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig, "mistral": MistralConfig}
PRUNABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"]
# partial rotary as in Phi-4-mini (a Phi-3 model), with longrope: the first half of each head's dimensions rotated
PHI3_ROPE = {"rope_type": "longrope", "partial_rotary_factor": 0.5, "rope_theta": 10000.0,
             "short_factor": [1.0, 1.5, 2.0, 4.0], "long_factor": [2.0, 3.0, 4.0, 8.0]}


def teacher_of(arch: str):
    """A tiny teacher: 4 layers, width 64, 4 heads of 16 in 2 KV groups, MLP 128."""
    torch.manual_seed(0)
    shape = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2)
    if arch in GEMMAS:
        config = GEMMAS[arch](head_dim=16, **shape)
    elif arch == "phi3":
        config = Phi3Config(original_max_position_embeddings=64, rope_parameters=dict(PHI3_ROPE), pad_token_id=0,
                            bos_token_id=0, eos_token_id=0, **shape)
    else:
        config = tiny_config(arch)
    return AutoModelForCausalLM.from_config(config).eval()


def weights(layer) -> dict[str, torch.Tensor]:
    """A decoder layer's weights by module name (q_proj, ..., input_layernorm); Phi-3's q/k/v_proj and gate/up_proj
    are views of its fused qkv_proj (the query heads' rows, the keys', the values') and gate_up_proj (the gate's rows,
    the up projection's), split as modeling_phi3 splits their outputs."""
    found = {name.rsplit(".", 1)[-1]: module.weight for name, module in layer.named_modules()
             if isinstance(getattr(module, "weight", None), torch.Tensor)}
    if "qkv_proj" in found:
        keys, fused = layer.self_attn.num_key_value_heads * layer.self_attn.head_dim, found.pop("qkv_proj")
        found.update(zip(("q_proj", "k_proj", "v_proj"), fused.split([len(fused) - 2 * keys, keys, keys])))
        found.update(zip(("gate_proj", "up_proj"), found.pop("gate_up_proj").chunk(2)))
    return found


def calibration_rows(count: int = 6, seed: int = 1) -> list[dict]:
    """Rows of different lengths, so a batch of them holds padding."""
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, VOCAB, (int(length),), generator=generator).tolist()}
            for length in torch.randint(5, 30, (count,), generator=generator)]


def pruned(teacher, rows=None, **overrides):
    rows = calibration_rows() if rows is None else rows
    args = ModelArguments(student_init="pruned", student_config_overrides=overrides or None)
    return build_student(args, teacher, calibration=Calibration(lambda student: rows, len(rows)))


@pytest.mark.parametrize("arch", PRUNABLE)
def test_a_student_of_the_teachers_width_is_the_teacher_initialised_one(arch):
    teacher = teacher_of(arch)
    depth = {"num_hidden_layers": 2}
    student = pruned(teacher, **depth)
    copied = build_student(ModelArguments(student_init="teacher", student_config_overrides=depth), teacher)
    assert list(student.state_dict()) == list(copied.state_dict())
    for (name, value), expected in zip(student.state_dict().items(), copied.state_dict().values()):
        assert torch.equal(value, expected), name
    ids = torch.tensor([[3, 7, 11, 19, 5]])
    assert torch.equal(student(ids).logits, copied(ids).logits)


def reference_importance(teacher, rows: list[dict], layers: list[int]) -> dict:
    """Minitron's scores computed here on their own: each row run alone (no padding), its activations kept whole by
    forward hooks, the L2 norm over its tokens, then the mean over rows."""
    captured = {}

    def keep(key, take_input):
        def hook(module, args, output):
            captured[key] = (args[0] if take_input else output)[0].detach()  # [seq, units]
        return hook

    handles = [teacher.model.norm.register_forward_hook(keep(("norm", "final"), False))]
    for index in layers:
        layer = decoder_layers(teacher)[index]
        handles.append(layer.mlp.down_proj.register_forward_hook(keep(("neurons", index), True)))
        handles.append(layer.self_attn.o_proj.register_forward_hook(keep(("heads", index), True)))
        for name in ("input_layernorm", "post_attention_layernorm"):
            handles.append(getattr(layer, name).register_forward_hook(keep(("norm", index, name), False)))
    totals = {}
    with torch.no_grad():
        for row in rows:
            teacher(torch.tensor([row["input_ids"]]))
            for key, activation in captured.items():
                if key[0] == "heads":  # [seq, heads * 16] -> [seq, heads]: each head's output norm
                    activation = activation.reshape(len(activation), -1, 16).norm(dim=-1)
                totals[key] = totals.get(key, 0) + activation.double().square().sum(dim=0).sqrt() / len(rows)
    for handle in handles:
        handle.remove()
    channels = sum(value for key, value in totals.items() if key[0] == "norm")
    return {"channels": channels, **{key: value for key, value in totals.items() if key[0] != "norm"}}


def best(scores, count: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:count])


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_the_kept_weights_are_the_teachers_slices_of_the_most_important_units(arch):
    """Student of 2 layers from teacher layers 0 and 3, width 32 of 64, MLP 48 of 128, 2 heads in 1 KV group of 4
    heads in 2: each weight is the teacher's, indexed by a ranking computed independently (rows run one by one);
    Phi-3's fused weights are checked part by part."""
    teacher, rows = teacher_of(arch), calibration_rows()
    student = pruned(teacher, rows, num_hidden_layers=2, **NARROW)
    reference = reference_importance(teacher, rows, [0, 3])
    channels = best(reference["channels"], 32)
    teacher_state = teacher.state_dict()
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(student.state_dict()[key], teacher_state[key][:, channels])
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[channels])
    for block, index in zip(decoder_layers(student), [0, 3]):
        source = weights(decoder_layers(teacher)[index])
        neurons = best(reference[("neurons", index)], 48)
        heads = reference[("heads", index)]
        group = best(heads.view(2, 2).sum(dim=1), 1)[0]
        kept_heads = [2 * group + head for head in best(heads.view(2, 2)[group], 2)]
        rows_of = lambda units: [unit * 16 + i for unit in units for i in range(16)]  # noqa: E731
        expected = {
            "q_proj": source["q_proj"][rows_of(kept_heads)][:, channels],
            "k_proj": source["k_proj"][rows_of([group])][:, channels],
            "v_proj": source["v_proj"][rows_of([group])][:, channels],
            "o_proj": source["o_proj"][channels][:, rows_of(kept_heads)],
            "gate_proj": source["gate_proj"][neurons][:, channels],
            "up_proj": source["up_proj"][neurons][:, channels],
            "down_proj": source["down_proj"][channels][:, neurons],
            "input_layernorm": source["input_layernorm"][channels],
            "post_attention_layernorm": source["post_attention_layernorm"][channels],
        }
        state = weights(block)
        assert set(state) == set(expected)
        assert sum(value.numel() for value in state.values()) == sum(param.numel() for param in block.parameters())
        for name, value in expected.items():
            assert torch.equal(state[name], value), (index, name)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_dead_neurons_heads_and_channels_are_the_ones_pruned(arch):
    """Zeroed in the teacher: the gate rows of 64 neurons per layer (their activation is 0), the value rows of KV
    group 0 (its heads output 0) and the norm weights of 32 hidden channels (every norm outputs 0 there). The student
    keeps exactly the others."""
    teacher = teacher_of(arch)
    dead_neurons, dead_channels = list(range(0, 128, 2)), list(range(1, 64, 2))
    with torch.no_grad():
        for layer in map(weights, decoder_layers(teacher)):
            layer["gate_proj"][dead_neurons] = 0
            layer["v_proj"][:16] = 0
            for norm in ("input_layernorm", "post_attention_layernorm"):
                layer[norm][dead_channels] = 0
        teacher.model.norm.weight[dead_channels] = 0
    student = pruned(teacher, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    live_channels, live_neurons = list(range(0, 64, 2)), list(range(1, 128, 2))
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, live_channels])
    for block, source in zip(map(weights, decoder_layers(student)), map(weights, decoder_layers(teacher))):
        assert torch.equal(block["up_proj"], source["up_proj"][live_neurons][:, live_channels])
        assert torch.equal(block["k_proj"], source["k_proj"][16:, live_channels])
        assert torch.equal(block["q_proj"], source["q_proj"][32:, live_channels])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3_text", "phi3"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_each_kept_query_head_keeps_its_own_kv_group(arch, kv_heads):
    """4 heads in 2 KV groups pruned to 2 heads in 2 groups (one query head of each) or in 1 (two of one): each
    student head's query rows are a teacher head's, and its KV group's key and value rows are that head's group's."""
    teacher = teacher_of(arch)
    student = pruned(teacher, num_attention_heads=2, num_key_value_heads=kv_heads, hidden_size=32)
    channels = kept_channels(teacher, student)
    per_group = 2 // kv_heads
    for block, source in zip(map(weights, decoder_layers(student)), map(weights, decoder_layers(teacher))):
        teacher_heads = [teacher_head(source["q_proj"][:, channels], block["q_proj"], head) for head in range(2)]
        for head, taken in enumerate(teacher_heads):
            group, taken_group = slice(head // per_group * 16, (head // per_group + 1) * 16), taken // 2
            for name in ("k_proj", "v_proj"):
                teacher_rows = source[name][taken_group * 16:(taken_group + 1) * 16]
                assert torch.equal(block[name][group], teacher_rows[:, channels])
        assert len({taken // 2 for taken in teacher_heads}) == kv_heads


def kept_channels(teacher, student) -> list[int]:
    """The teacher's hidden channels the student kept: the columns of its first gate_proj (all neurons kept) the
    student's are."""
    columns = weights(decoder_layers(teacher)[0])["gate_proj"].T
    return [next(i for i, column in enumerate(columns) if torch.equal(column, kept))
            for kept in weights(decoder_layers(student)[0])["gate_proj"].T]


def teacher_head(teacher_query, student_query, head: int) -> int:
    """The teacher head whose query rows (at the kept channels) are student head ``head``'s."""
    rows = student_query[head * 16:(head + 1) * 16]
    return next(h for h in range(4) if torch.equal(teacher_query[h * 16:(h + 1) * 16], rows))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"])
def test_a_pruned_student_reloads_in_plain_transformers_with_the_same_logits(arch, tmp_path):
    """And with the teacher's rotary settings (Phi-3's: longrope over half of each head's dimensions)."""
    teacher = teacher_of(arch)
    student = pruned(teacher, num_hidden_layers=3, **NARROW).eval()
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.rope_parameters == teacher.config.rope_parameters
    ids = torch.tensor([[3, 7, 11, 19, 5, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3_text"])
def test_a_narrower_gemma_reads_the_teachers_embeddings_and_keeps_its_logits(arch):
    """Gemma scales its embeddings by sqrt(hidden_size): at width 32 of 64 the student's embedding outputs are still
    the teacher's on the kept channels, and its LM head (tied to the embeddings) after its final norm gives the logits
    of the teacher's kept head columns after the teacher's norm weights, computed here (RMSNorm, weight 1 + w)."""
    teacher = teacher_of(arch)
    student = pruned(teacher, **NARROW)
    ids = torch.tensor([[3, 7, 11, 19]])
    with torch.no_grad():
        embedded = student.get_input_embeddings()(ids)
        channels = [next(i for i in range(64) if torch.allclose(teacher.get_input_embeddings()(ids)[..., i],
                                                               embedded[..., j])) for j in range(32)]
        hidden = torch.randn(1, 4, 32)
        normed = hidden * torch.rsqrt(hidden.square().mean(-1, keepdim=True) + teacher.config.rms_norm_eps)
        expected = (normed * (1 + teacher.model.norm.weight[channels])) @ teacher.lm_head.weight[:, channels].T
        torch.testing.assert_close(student.lm_head(student.model.norm(hidden)), expected)
    assert len(set(channels)) == 32


DEMO_NARROW = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256}


def run_with(run_values, tmp_path, init: str) -> tuple[dict, Path]:
    """The bundled demo teacher (trained: width 192, 6 heads in 2 KV groups, MLP 512) on its corpus, to a student of
    width 128, 4 heads in 2 groups, MLP 256; one step at learning rate 1e-12 (the evaluation before training counts)."""
    values = run_values(str(TEACHER_DIR), dataset_name=str(write_corpus(tmp_path / "docs.jsonl")), student_init=init,
                        student_config_overrides=DEMO_NARROW, max_steps=1, learning_rate=1e-12,
                        pruning_calibration_samples=32, output_dir=str(tmp_path / init))
    return run_distillation(parse_config(**values)), Path(values["output_dir"])


def test_a_pruned_student_starts_much_closer_to_the_teacher_than_a_random_one(run_values, tmp_path, caplog):
    """The held-out KL to the teacher before training, pruned against random init; metrics.json and the card say
    how it was pruned."""
    with caplog.at_level("INFO", logger="distily"):
        pruned_run, output_dir = run_with(run_values, tmp_path, "pruned")
    assert "Pruning: teacher activations on 32 calibration rows" in caplog.text
    random_run, _ = run_with(run_values, tmp_path, "random")
    assert pruned_run["student"]["before_loss"] < 0.5 * random_run["student"]["before_loss"]
    assert pruned_run["student"]["pruning"] == {
        "calibration_rows": 32,
        "kept": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2},
        "teacher": {"hidden_size": 192, "intermediate_size": 512, "num_attention_heads": 6, "num_key_value_heads": 2},
    }
    assert "pruning" not in random_run["student"]
    card = (output_dir / "README.md").read_text()
    assert "width-pruned to the teacher's most important units by its activations on the first 32 training rows " \
           "(Minitron: `hidden_size` 128 of 192, `intermediate_size` 256 of 512" in card


def test_a_recorded_teacher_prunes_the_student_a_live_one_does(teacher_dirs, text_file, tmp_path):
    """From a store the teacher is loaded to rank its units on the store's training rows, the rows a live run trains
    on: the same pruned student (one step at learning rate 1e-12 after it)."""
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, student_init="pruned",
                          student_config_overrides={"num_hidden_layers": 2, **NARROW}, max_steps=1,
                          learning_rate=1e-12, pruning_calibration_samples=16)
    run_recording(parse_record_config(**values))
    students = {}
    for source in ("live", "recorded"):
        output_dir = str(tmp_path / source)
        metrics = run_distillation(parse_config(**{**values, "teacher_source": source, "output_dir": output_dir}))
        assert metrics["student"]["pruning"]["calibration_rows"] == 16
        students[source] = AutoModelForCausalLM.from_pretrained(output_dir).state_dict()
    for name, value in students["live"].items():
        torch.testing.assert_close(students["recorded"][name], value, rtol=0, atol=1e-9)


BAD = [
    ("llama", {"intermediate_size": 256}, "student intermediate_size=256 is larger than the teacher's 128"),
    ("llama", {"hidden_size": 32, "num_attention_heads": 4},
     "student_init=pruned keeps the teacher's head_dim=16; the student's is 8"),
    ("llama", {"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 2},
     "student num_key_value_heads=2 does not divide num_attention_heads=3"),
    ("llama", {"num_key_value_heads": 1}, "the student's 4 query heads per KV head exceed the teacher's 2"),
    ("gpt2", {"n_embd": 32}, "student_init=pruned does not support a gpt2 teacher; expected one of llama, mistral"),
    ("phi3", {"num_key_value_heads": 2}, "the student's 2 query heads per KV head exceed the teacher's 1"),
]


@pytest.mark.parametrize("arch, overrides, expected", BAD, ids=[case[2][:40] for case in BAD])
def test_a_student_that_cannot_be_pruned_is_one_line_and_nothing_is_written(arch, overrides, expected, tmp_path,
                                                                             teacher_dirs, run_values, capsys):
    values = run_values(teacher_dirs[arch], student_init="pruned", student_config_overrides=overrides)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(values))
    assert main(["distill", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("distily distill: error: ") and expected in err.splitlines()[-1], err
    assert "Traceback" not in err and not Path(values["output_dir"]).exists()


def test_pruned_options_that_do_not_fit_are_refused():
    with pytest.raises(DistilyConfigError, match="pruning_calibration_samples=0 is not a row count"):
        ModelArguments(student_init="pruned", pruning_calibration_samples=0)
    with pytest.raises(DistilyConfigError, match="student_init=pruned is set with student_model_name_or_path"):
        ModelArguments(student_init="pruned", student_model_name_or_path="student")


def test_a_student_of_another_tokenizer_or_architecture_is_refused(tmp_path):
    teacher, calibration = teacher_of("llama"), Calibration(lambda student: calibration_rows(), 6)
    args = ModelArguments(student_init="pruned", student_config_overrides=NARROW)
    with pytest.raises(DistilyConfigError, match="this student reads another tokenizer; expected the teacher's"):
        build_student(args, teacher, token_map=lambda: object(), calibration=calibration)
    tiny_config("qwen2").save_pretrained(tmp_path)
    args = ModelArguments(student_init="pruned", student_config_name_or_path=str(tmp_path))
    with pytest.raises(DistilyConfigError, match="the student is a qwen2, expected a llama"):
        build_student(args, teacher, calibration=calibration)
