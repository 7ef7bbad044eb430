"""BitNet conversion: ternary layers, straight-through gradients, teacher-initialised students, distillation."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tiny import VOCAB, tiny_config
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from distily.errors import DistilyConfigError
from distily.models.arguments import ModelArguments
from distily.models.bitnet import (
    BitLinear,
    bitlinear_modules,
    block_projections,
    convert_to_bitnet,
    fake_quantize_activations,
    is_bitnet,
    load_bitnet_student,
    ternarize,
)
from distily.models.student import build_student, config_with_overrides
from distily.models.teacher import load_teacher
from distily.training.bitnet_schedule import BitNetSchedule, build_bitnet_optimizer

ARCHITECTURES = ["gpt2", "llama", "phi3"]


def tiny_model(architecture: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(architecture, layers=2)).eval()


def random_tokens(batch: int = 2, seq: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_ternarize_is_absmean_in_fp32():
    weight = torch.randn(64, 32, dtype=torch.bfloat16)
    ternary, scale = ternarize(weight)
    assert ternary.dtype == torch.int8 and scale.dtype == torch.float32
    assert set(ternary.unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(scale, weight.float().abs().mean())
    assert torch.equal(ternary, (weight.float() / scale).round().clamp(-1, 1).to(torch.int8))


def test_activation_quantisation_is_int8_per_token():
    activations = torch.randn(3, 5, 64) * torch.logspace(-3, 3, 5).view(1, 5, 1)
    quantised = fake_quantize_activations(activations)
    step = activations.abs().amax(-1, keepdim=True) / 127  # [3, 5, 1]
    levels = (quantised / step).round()
    assert torch.allclose(quantised / step, levels, atol=1e-3)
    assert levels.abs().max() <= 127
    assert ((quantised - activations).abs() <= step / 2 + 1e-6).all()


def test_straight_through_estimator_passes_gradients_to_latent_weights():
    torch.manual_seed(0)
    layer = BitLinear(32, 16, bias=True)
    inputs = torch.randn(4, 32, requires_grad=True)
    layer(inputs).square().sum().backward()
    ternary, scale = ternarize(layer.weight)
    reference_weight = (ternary.float() * scale).requires_grad_()
    reference_inputs = fake_quantize_activations(inputs.detach()).requires_grad_()
    F.linear(reference_inputs, reference_weight, layer.bias.detach()).square().sum().backward()
    assert torch.allclose(layer.weight.grad, reference_weight.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(inputs.grad, reference_inputs.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_conversion_replaces_only_block_projections(architecture):
    model = tiny_model(architecture)
    sources = {name: module.weight.detach().clone() for name, module in block_projections(model)}
    transposed = {name for name, module in block_projections(model) if isinstance(module, Conv1D)}
    convert_to_bitnet(model)
    converted = dict(model.named_modules())
    assert sources and all(isinstance(converted[name], BitLinear) for name in sources)
    for name, weight in sources.items():  # latent weights start from the source weights
        expected = weight.t() if name in transposed else weight
        assert torch.equal(converted[name].weight, expected)
    outside = [module for name, module in model.named_modules()
               if name not in sources and isinstance(module, BitLinear)]
    assert not outside
    assert (isinstance(model.get_output_embeddings(), nn.Linear)
            and not isinstance(model.get_output_embeddings(), BitLinear))
    assert model.config.distily_bitnet == {
        "input_norm": False, "subln": False, "rms_norm_eps": pytest.approx(model.config.distily_bitnet["rms_norm_eps"])
    }


def ternarised_teacher(teacher):
    """The teacher with every block projection's weight replaced by ternary * scale (weights only)."""
    reference = copy.deepcopy(teacher)
    with torch.no_grad():
        for _, module in block_projections(reference):
            ternary, scale = ternarize(module.weight)
            module.weight.copy_(ternary.float() * scale)
    return reference


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_teacher_initialised_student_tracks_ternarised_teacher(architecture):
    teacher = tiny_model(architecture)
    student = convert_to_bitnet(copy.deepcopy(teacher))
    tokens = random_tokens()
    with torch.no_grad():
        reference = ternarised_teacher(teacher)(tokens).logits.log_softmax(-1)  # [batch, seq, vocab]
        logprobs = student(tokens).logits.log_softmax(-1)
        teacher_logprobs = teacher(tokens).logits.log_softmax(-1)
    kl_to_ternarised = F.kl_div(logprobs, reference, log_target=True, reduction="batchmean").item() / tokens.shape[1]
    kl_to_teacher = (F.kl_div(logprobs, teacher_logprobs, log_target=True, reduction="batchmean").item()
                     / tokens.shape[1])
    # only the int8 activation rounding separates the student from the ternarised teacher
    assert kl_to_ternarised < 1e-3
    assert kl_to_ternarised < kl_to_teacher


def test_input_norm_and_subln_placement():
    everywhere = convert_to_bitnet(tiny_model("llama"), input_norm=True)
    assert all(layer.rms_norm is not None for _, layer in block_projections(everywhere))
    subln = convert_to_bitnet(tiny_model("llama"), subln=True)
    with_norm = sorted({name.rsplit(".", 1)[-1]
                        for name, layer in block_projections(subln) if layer.rms_norm is not None})
    assert with_norm == ["down_proj", "o_proj"]
    gpt2 = convert_to_bitnet(tiny_model("gpt2"), subln=True)
    assert sorted({name.split(".")[-2] + "." + name.split(".")[-1]
                   for name, layer in block_projections(gpt2)
                   if layer.rms_norm is not None}) == ["attn.c_proj", "mlp.c_proj"]


def test_conversion_errors():
    model = convert_to_bitnet(tiny_model("llama"))
    with pytest.raises(DistilyConfigError, match="already"):
        convert_to_bitnet(model)
    model = tiny_model("llama")
    model.config.num_hidden_layers = 7
    with pytest.raises(DistilyConfigError, match="num_hidden_layers=7"):
        convert_to_bitnet(model)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_saved_student_reloads_exactly(architecture, tmp_path):
    student = convert_to_bitnet(tiny_model(architecture), subln=True)
    with torch.no_grad():
        for _, layer in block_projections(student):
            if layer.rms_norm is not None:
                layer.rms_norm.weight.uniform_(0.5, 1.5)
    student.save_pretrained(tmp_path)
    reloaded = load_bitnet_student(tmp_path)
    tokens = random_tokens()
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, student(tokens).logits)


CUSTOM_ARCHITECTURE = """from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def test_a_student_of_custom_code_reloads_with_trust_remote_code(tmp_path):
    """An architecture of the checkpoint's own code (``auto_map``) rebuilds only with trust_remote_code, which
    export and eval pass through."""
    student = convert_to_bitnet(tiny_model("llama"))
    student.save_pretrained(tmp_path)
    (tmp_path / "custom_llama.py").write_text(CUSTOM_ARCHITECTURE)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="custom_llama", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "custom_llama.CustomConfig",
                            "AutoModelForCausalLM": "custom_llama.CustomForCausalLM"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_bitnet_student(tmp_path)
    reloaded = load_bitnet_student(tmp_path, trust_remote_code=True)
    assert type(reloaded).__name__ == "CustomForCausalLM"
    tokens = random_tokens()
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, student(tokens).logits)


def test_load_requires_a_bitnet_checkpoint(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(DistilyConfigError, match="distily_bitnet"):
        load_bitnet_student(tmp_path)


def test_short_distillation_lowers_kl():
    config = tiny_config("llama", layers=2)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    student = convert_to_bitnet(AutoModelForCausalLM.from_config(config)).train()  # from its own initialisation
    optimizer, scheduler = build_bitnet_optimizer(student, lr=3e-3,
                                                  schedule=BitNetSchedule(total_steps=40, warmup_steps=4))

    def kl(tokens):
        with torch.no_grad():
            target = teacher(tokens).logits.log_softmax(-1)  # [batch, seq, vocab]
        logprobs = student(tokens).logits.log_softmax(-1)
        return F.kl_div(logprobs, target, log_target=True, reduction="none").sum(-1).mean()

    held_out = random_tokens(4, 32, seed=99)
    with torch.no_grad():
        before = kl(held_out).item()
    for step in range(40):
        loss = kl(random_tokens(4, 32, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        after = kl(held_out).item()
    assert after < 0.8 * before


def test_gradients_under_bf16_autocast_and_bf16_weights():
    torch.manual_seed(0)
    layer = BitLinear(64, 32, bias=True)
    inputs = torch.randn(2, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(inputs).float().square().mean().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    bf16_layer = BitLinear(64, 32, bias=True, dtype=torch.bfloat16)
    bf16_layer(inputs.bfloat16()).float().square().mean().backward()
    assert bf16_layer.weight.grad.dtype == torch.bfloat16 and bf16_layer.bias.grad.dtype == torch.bfloat16


def test_a_mixture_of_experts_is_refused_rather_than_left_mostly_full_precision():
    """transformers 5 keeps experts as 3-D tensors and the router as its own module: converting only the
    nn.Linear projections left two thirds of a Qwen3-MoE layer's matrix weights full precision."""
    from transformers import Qwen3MoeConfig
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                            num_hidden_layers=2)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(DistilyConfigError, match=r"hold 6 weight matrices outside them \(model\.layers\.0\.mlp\."
                                                 r"experts\.gate_up_proj.*expected a dense student"):
        convert_to_bitnet(model)
    assert not is_bitnet(model.config) and not any(isinstance(m, BitLinear) for m in model.modules())


@pytest.mark.parametrize("hidden, warned", [(64, True), (256, False)])
def test_a_bitnet_student_gguf_cannot_pack_is_named_as_it_is_built(hidden, warned, caplog):
    """GGUF's ternary types pack rows in blocks of 256 values: a student of width 64 is told so as the run starts,
    not after training at its export; one of width 256 is not warned."""
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2, hidden_size=hidden, num_attention_heads=4,
                                                           head_dim=hidden // 4, intermediate_size=4 * hidden))
    with caplog.at_level("WARNING", logger="distily"):
        student = build_student(ModelArguments(student_as_bitnet=True), teacher)
    assert bitlinear_modules(student)
    warning = f"ternary layers with rows of {hidden} values, not a multiple of 256"
    assert (warning in caplog.text) == warned and ("export --format gguf" in caplog.text) == warned


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_bitlinear_matches_transformers_online_autobitlinear(dtype, tolerance):
    """Output and straight-through gradients equal those of transformers' quantisation-aware AutoBitLinear
    (WeightQuant, ActQuant) on the same weights and inputs. In float64 the bias was divided by the scale and the
    gradients multiplied in fp32: the weight's gradient was 2e-6 away from transformers' (relative 1e-7)."""
    from transformers.integrations.bitnet import AutoBitLinear

    torch.manual_seed(0)
    ours, theirs = BitLinear(64, 48, bias=True, dtype=dtype), AutoBitLinear(64, 48, dtype=dtype, online_quant=True)
    with torch.no_grad():
        ours.bias.normal_(0, 0.1)
    theirs.load_state_dict(ours.state_dict())
    inputs = [torch.randn(3, 7, 64, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
              for _ in range(2)]
    grad_output = torch.randn(3, 7, 48, dtype=dtype)
    with torch._dynamo.config.patch(disable=True):  # transformers compiles its quantisers
        outputs = [layer(layer_inputs) for layer, layer_inputs in zip((ours, theirs), inputs)]
    for output in outputs:
        output.backward(grad_output)

    def close(mine: torch.Tensor, reference: torch.Tensor) -> bool:
        return (mine - reference).abs().max() <= tolerance * reference.abs().max()

    assert close(outputs[0], outputs[1])
    assert close(inputs[0].grad, inputs[1].grad)
    assert close(ours.weight.grad, theirs.weight.grad) and close(ours.bias.grad, theirs.bias.grad)


@pytest.mark.parametrize("architecture, overrides, options, tolerance", [
    ("llama", {}, {}, 0.0), ("llama", {"tie_word_embeddings": True}, {}, 0.0),
    ("llama", {}, {"input_norm": True}, 1e-6),  # transformers' LlamaRMSNorm computes in fp32, in a float64 model too
    ("qwen2", {}, {}, 0.0), ("qwen3", {}, {}, 0.0), ("phi3", {}, {}, 0.0),
], ids=["llama", "llama-tied", "llama-input-norm", "qwen2", "qwen3-tied", "phi3"])
def test_a_saved_student_loads_in_plain_transformers_as_the_ternary_model(architecture, overrides, options,
                                                                          tolerance, tmp_path):
    """A trained student's checkpoint (its latent weights) loaded with AutoModelForCausalLM.from_pretrained was the
    full-precision model of those weights (tiny students: max |logits difference| 8 to 9, top-1 agreement 0-9%); its
    config now carries transformers' BitNet quantization_config (online AutoBitLinear), so it loads as the ternary
    model. In float64 its logits are Distily's exactly (in fp32 within 7e-7 relative, but where a rounding difference
    flips an activation's int8 step)."""
    torch.manual_seed(0)
    student = convert_to_bitnet(AutoModelForCausalLM.from_config(tiny_config(architecture, layers=2, **overrides)),
                                **options)
    with torch.no_grad():  # as if trained: latent weights, norms and biases away from their initial values
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    student.save_pretrained(tmp_path)
    with torch._dynamo.config.patch(disable=True):  # transformers compiles its quantisers
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
        with torch.no_grad():
            logits = loaded(random_tokens()).logits
    with torch.no_grad():
        reference = load_bitnet_student(tmp_path, dtype=torch.float64)(random_tokens()).logits
    assert (logits - reference).abs().max() <= tolerance * reference.abs().max()
    ternary = {name for name, module in loaded.named_modules() if type(module).__name__ == "AutoBitLinear"}
    assert ternary == {name for name, _ in bitlinear_modules(student)}
    assert type(loaded.lm_head) is nn.Linear  # embeddings and LM head stay full precision


@pytest.mark.parametrize("architecture, options", [("gpt2", {}), ("llama", {"subln": True})])
def test_students_transformers_cannot_rebuild_get_no_quantization_config(architecture, options):
    """transformers' BitNet integration converts nn.Linear layers alone and places no SubLN norms: a GPT-2 student
    (Conv1D) and a SubLN one would load as another model under it, so their configs carry none."""
    student = convert_to_bitnet(tiny_model(architecture), **options)
    assert getattr(student.config, "quantization_config", None) is None


def test_a_student_config_built_from_a_bitnet_or_quantized_model_is_dense():
    """A student built from a BitNet run's config (the run as teacher) inherited its distily_bitnet and
    quantization_config: a dense student saved as one Distily and transformers load as ternary. A 4-bit teacher's
    bitsandbytes quantization_config was inherited the same way."""
    config = convert_to_bitnet(tiny_model("llama")).config
    assert is_bitnet(config) and config.quantization_config["quant_method"] == "bitnet"
    student = config_with_overrides(config, {"num_hidden_layers": 1})
    assert not is_bitnet(student) and getattr(student, "quantization_config", None) is None
    assert student.num_hidden_layers == 1


def test_a_bitnet_run_as_teacher_is_the_ternary_student(tmp_path):
    """A BitNet run named as the teacher loaded as the full-precision model of its latent weights; it is Distily's
    ternary student now, bit for bit (not transformers' AutoBitLinear, which rounds differently)."""
    student = convert_to_bitnet(tiny_model("llama"))
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    student.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    with torch.no_grad():
        assert torch.equal(teacher(random_tokens()).logits, student(random_tokens()).logits)


@pytest.mark.parametrize("options", [{"input_norm": True}, {"subln": True}])
def test_a_bitnet_student_copies_a_bitnet_run_with_norms_whole(options, tmp_path):
    """A BitNet run named as the teacher loads as Distily's ternary student (29e6592), whose BitLinear layers of an
    input_norm or SubLN run hold norms; a BitNet student of the same options copying its layers (student_init=teacher,
    the default) was refused, its layers still nn.Linear when copied ('rms_norm.weight is missing in the student').
    It is converted as the teacher was first: at the teacher's depth it is the teacher."""
    student = convert_to_bitnet(tiny_model("llama"), **options)
    with torch.no_grad():  # as if trained: the norms away from their initial ones
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    student.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    flags = {"bitnet_input_norm": options.get("input_norm", False), "bitnet_subln": options.get("subln", False)}
    copied = build_student(ModelArguments(teacher_model_name_or_path=str(tmp_path), student_as_bitnet=True, **flags),
                           teacher)
    assert copied.config.distily_bitnet == teacher.config.distily_bitnet
    with torch.no_grad():
        assert torch.equal(copied(random_tokens()).logits, teacher(random_tokens()).logits)


@pytest.mark.parametrize("student_options", [{}, {"student_as_bitnet": True}])
def test_a_student_made_otherwise_than_a_bitnet_run_with_norms_is_refused_naming_the_options(student_options,
                                                                                           tmp_path):
    """It was refused with the advice for a reshaped student ('rms_norm.weight is missing in the student ... use
    student_init=random for a reshaped student'), though its shape is the teacher's: the options differ."""
    convert_to_bitnet(tiny_model("llama"), input_norm=True).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    with pytest.raises(DistilyConfigError, match=r"^cannot copy the layers of a BitNet teacher trained with "
                                                 r"bitnet_input_norm=True and bitnet_subln=False .*expected "
                                                 r"student_as_bitnet=true with the teacher's bitnet_input_norm"):
        build_student(ModelArguments(teacher_model_name_or_path=str(tmp_path), **student_options), teacher)
    random = build_student(ModelArguments(teacher_model_name_or_path=str(tmp_path), student_init="random",
                                          **student_options), teacher)
    assert random.config.num_hidden_layers == teacher.config.num_hidden_layers
