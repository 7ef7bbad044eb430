"""A multimodal checkpoint's language model as the teacher: tiny Gemma 3, Gemma 4, Mistral 3 and Llama 4 checkpoints
with tiny vision towers, saved by transformers in the layouts it saves the published ones in."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from store_values import store_values
from tiny import VOCAB, make_bos_tokenizer, plain_loss, sequences_of, tiny_gemma4_config
from distily.config import parse_config, parse_record_config
from distily.data.store import TeacherStore
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher
from distily.recording.run import _teacher_for, run_recording
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir
from distily.training.trainer import DistillationTrainer

SPECIAL = VOCAB  # the image (and other placeholder) tokens: past the tokenizer's, as in the published vocabularies
TEXT = dict(vocab_size=VOCAB + 8, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, max_position_embeddings=256, num_hidden_layers=4)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
              patch_size=14)
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def multimodal_config(family: str, tokenizer):
    from transformers import Gemma3Config, Gemma4Config, Llama4Config, Mistral3Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    if family == "gemma3":
        return Gemma3Config(text_config=dict(model_type="gemma3_text", sliding_window=4, **TEXT, **ids),
                            vision_config=VISION, mm_tokens_per_image=4, image_token_index=SPECIAL,
                            boi_token_index=SPECIAL + 1, eoi_token_index=SPECIAL + 2)
    if family == "gemma4":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=16)
        placeholders = ("image_token_id", "boi_token_id", "eoi_token_id", "video_token_id", "audio_token_id",
                        "boa_token_id", "eoa_token_index")
        return Gemma4Config(text_config=tiny_gemma4_config(vocab_size=VOCAB + 8, **ids).to_dict(),
                            vision_config=vision, audio_config=None,
                            **{name: SPECIAL + i for i, name in enumerate(placeholders)})
    if family.startswith("mistral3"):  # Mistral 3 ties the LM head by its own config (True) and not by its text's
        vision = dict(model_type="pixtral", head_dim=16, **VISION)
        return Mistral3Config(text_config=dict(model_type="mistral", **TEXT, **ids), vision_config=vision,
                              image_token_index=SPECIAL, spatial_merge_size=1,
                              tie_word_embeddings=family == "mistral3_tied")
    text = dict(intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1, attention_chunk_size=8,
                interleave_moe_layer_step=2)
    vision = dict(vision_output_dim=32, projector_input_dim=32, projector_output_dim=64, **VISION)
    return Llama4Config(text_config={**TEXT, **text, **ids}, vision_config=vision, image_token_index=SPECIAL,
                        boi_token_index=SPECIAL + 1, eoi_token_index=SPECIAL + 2)


def save_multimodal(path, family: str) -> str:
    """The checkpoint, with a BOS-framed tokenizer carrying a chat template. Mistral 3's untied variant is Mistral
    Small 3.1's layout: its config sets no tie_word_embeddings (transformers reads True) and its LM head is saved."""
    tokenizer = make_bos_tokenizer()
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(multimodal_config(family, tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if family == "mistral3":
        config = json.loads((path / "config.json").read_text())
        del config["tie_word_embeddings"]
        (path / "config.json").write_text(json.dumps(config))
    return str(path)


def language_model_bytes(path: str) -> int:
    """The bytes of the checkpoint's language model and LM head tensors, as safetensors reads them."""
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as tensors:
        return sum(tensors.get_tensor(key).nbytes for key in tensors.keys()
                   if "language_model." in key or key.startswith("lm_head."))


def full_model(path: str):
    return AutoModelForImageTextToText.from_pretrained(path).eval()


@pytest.mark.parametrize("family, text_class", [
    ("gemma3", "Gemma3ForCausalLM"), ("gemma4", "Gemma4ForCausalLM"), ("mistral3", "MistralForCausalLM"),
    ("mistral3_tied", "MistralForCausalLM"), ("llama4", "Llama4ForCausalLM"),
])  # fmt: skip
def test_the_teacher_of_a_multimodal_checkpoint_is_its_language_model(family, text_class, tmp_path):
    """Refused before: the teacher is now the family's text-only causal LM with the checkpoint's language model and
    LM head (tied as the multimodal model ties it), its config the text config, without the vision tower; its
    logits on text are the full multimodal model's."""
    path = save_multimodal(tmp_path / family, family)
    teacher = load_teacher(path)
    full = full_model(path)
    assert type(teacher).__name__ == text_class
    assert not any("vision" in name for name, _ in teacher.named_parameters())
    tied = full.get_output_embeddings().weight is full.get_input_embeddings().weight
    assert (teacher.get_output_embeddings().weight is teacher.get_input_embeddings().weight) == tied
    assert teacher.config.tie_word_embeddings == tied
    unset = {"_name_or_path": "", "tie_word_embeddings": None}
    assert {**teacher.config.to_dict(), **unset} == {**full.config.get_text_config().to_dict(), **unset}
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(teacher(input_ids=ids).logits, full(input_ids=ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma3", "gemma4", "llama4"])  # Llama 4: no decoder of its own, logits whole
def test_a_multimodal_teacher_distills_and_its_heldout_loss_is_the_multimodal_models(family, run_values, tmp_path):
    """End to end from the multimodal checkpoint: the student's KL to the teacher falls, the teacher's held-out
    loss is the full multimodal model's on the same sequences, and the student, built from the text config, is saved
    as the text class with the checkpoint's tokenizer and chat template. The teacher's size on disk in metrics.json
    and the card is its language model's tensors' (it was the whole checkpoint's, vision tower included), and both
    say what was loaded."""
    path = save_multimodal(tmp_path / family, family)
    values = run_values(path, student_config_overrides={"num_hidden_layers": 2}, max_steps=10, learning_rate=3e-3,
                        max_eval_samples=None)
    metrics = run_distillation(parse_config(**values))
    assert metrics["student"]["after_kl_to_teacher"] < 0.8 * metrics["student"]["before_kl_to_teacher"]
    language_model, whole = language_model_bytes(path), (Path(path) / "model.safetensors").stat().st_size
    teacher = metrics["teacher"]
    assert teacher["size_on_disk_bytes"] == language_model < whole
    assert teacher["multimodal_checkpoint"] == {"model_type": family, "unused_towers": ["vision"],
                                                "checkpoint_size_on_disk_bytes": whole}
    assert RunDir(values["output_dir"]).read_metrics().to_dict() == json.loads(json.dumps(metrics))
    card = (Path(values["output_dir"]) / "README.md").read_text()
    assert f"| size on disk (MiB) | {language_model / 2**20:,.1f} |" in card
    assert f"multimodal `{family}` checkpoint; vision tower not used) has {teacher['parameters']:,}" in card
    config = parse_config(**values)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template == TEMPLATE
    sequences = sequences_of(build_datasets(config.data, tokenizer, 32, config.training.seed).eval)
    assert metrics["teacher"]["lm_loss"] == pytest.approx(plain_loss(full_model(path), sequences), rel=1e-5)
    student = AutoModelForCausalLM.from_pretrained(values["output_dir"])
    assert type(student).__name__ == type(load_teacher(path)).__name__
    assert AutoTokenizer.from_pretrained(values["output_dir"]).chat_template == TEMPLATE


def test_what_metrics_json_says_of_the_teacher_is_read_when_it_loads(run_values, tmp_path, monkeypatch):
    """The teacher's checkpoint is read when it loads, not again when metrics.json is written: its folder moved away
    while the student trained (a Hub cache pruned, say) costs the run nothing. The end of the run read its config
    again and failed, so a finished run left no metrics.json."""
    path = save_multimodal(tmp_path / "gemma3", "gemma3")
    language_model, whole = language_model_bytes(path), (Path(path) / "model.safetensors").stat().st_size
    train = DistillationTrainer.train

    def train_without_the_teachers_folder(trainer, *args, **kwargs):
        Path(path).rename(tmp_path / "moved")
        return train(trainer, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "train", train_without_the_teachers_folder)
    values = run_values(path, student_config_overrides={"num_hidden_layers": 1}, max_steps=1)
    run_distillation(parse_config(**values))
    teacher = RunDir(values["output_dir"]).read_metrics().teacher
    assert not Path(path).exists() and teacher.size_on_disk_bytes == language_model
    assert teacher.multimodal_checkpoint.checkpoint_size_on_disk_bytes == whole


def test_a_recorded_multimodal_teacher_is_known_by_its_checkpoint(text_file, tmp_path):
    """``distily record`` stores the language model's config and the checkpoint's weights hash; a student that copies
    teacher layers from the store loads the teacher again, and it passes the recorded teacher's identity check. The
    vllm back end's weightless teacher (vLLM runs the checkpoint) is the language model too."""
    path = save_multimodal(tmp_path / "gemma3", "gemma3")
    values = store_values(path, text_file, tmp_path)
    weightless = _teacher_for(parse_record_config(**values, record_backend="vllm"))
    assert type(weightless).__name__ == "Gemma3ForCausalLM" and weightless.device.type == "meta"
    manifest = run_recording(parse_record_config(**values))
    assert manifest["settings"]["teacher_weights_sha256"]
    assert AutoConfig.from_pretrained(TeacherStore(values["teacher_store"]).teacher_config_path).model_type == \
        "gemma3_text"
    run_distillation(parse_config(**values))  # student_init=teacher: the teacher loads, and is the recorded one
    assert AutoModelForCausalLM.from_pretrained(values["output_dir"]).config.model_type == "gemma3_text"


def test_a_multimodal_teacher_without_a_text_only_language_model_or_in_an_unknown_layout_is_refused(tmp_path):
    """Qwen2.5-VL's language model (multimodal rotary positions) has no text-only causal LM class: refused before
    its weights load. A checkpoint keeping its language model under another name is refused, not loaded random."""
    from transformers import Qwen2_5_VLConfig

    Qwen2_5_VLConfig().save_pretrained(tmp_path / "qwen")
    with pytest.raises(DistilyConfigError, match=r"multimodal Qwen2_5_VLConfig whose language model "
                                                 r"\(qwen2_5_vl_text\) has no text-only causal LM class"):
        load_teacher(str(tmp_path / "qwen"))
    path = tmp_path / "gemma3"
    save_multimodal(path, "gemma3")
    weights = load_file(path / "model.safetensors")
    save_file({key.replace("language_model.model.", "llm."): value for key, value in weights.items()},
              path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DistilyConfigError, match=r"multimodal Gemma3Config whose checkpoint lacks \d+ weights of "
                                                 r"its language model, such as model\.embed_tokens\.weight, under "):
        load_teacher(str(path))
