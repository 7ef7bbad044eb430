"""Packed ternary checkpoints: transformers' 2-bit layout, exact round trip, logits, transformers loading."""

import json

import pytest
import torch
from safetensors.torch import load_file
from file_tree import tree
from tiny import VOCAB, make_tokenizer, tiny_config
from transformers import AutoModelForCausalLM
from transformers.integrations.bitnet import pack_weights

from distily.cli import main
from distily.commands.export import export_run
from distily.errors import DistilyConfigError
from distily.export.packed import (
    LOGITS_TOLERANCE,
    linear_weight_bytes,
    load_packed_student,
    pack_ternary,
    unpack_ternary,
    verify_packed,
    write_packed_checkpoint,
)
from distily.export.report import read_export_report
from distily.models.bitnet import bitlinear_modules, convert_to_bitnet

ARCHITECTURES = ["gpt2", "llama", "phi3"]


def tiny_student(architecture: str, **options):
    torch.manual_seed(0)
    return convert_to_bitnet(AutoModelForCausalLM.from_config(tiny_config(architecture, layers=2)).eval(), **options)


def random_tokens(batch: int = 2, seq: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))


def test_pack_layout_matches_transformers():
    ternary = torch.randint(-1, 2, (64, 24), dtype=torch.int8)
    packed = pack_ternary(ternary)
    assert packed.shape == (16, 24) and packed.dtype == torch.uint8
    assert torch.equal(packed, pack_weights(ternary.clone()))
    assert torch.equal(unpack_ternary(packed), ternary)


def test_pack_rejects_rows_not_divisible_by_four():
    with pytest.raises(DistilyConfigError, match="6 rows; expected a multiple of 4"):
        pack_ternary(torch.zeros(6, 8, dtype=torch.int8))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_packed_round_trip_is_exact(architecture, tmp_path):
    student = tiny_student(architecture)
    path = write_packed_checkpoint(student, tmp_path / "packed", verify_input_ids=random_tokens())
    stored = load_file(path / "model.safetensors")
    for name, layer in bitlinear_modules(student):
        ternary, scale = layer.ternary_weight()
        assert torch.equal(unpack_ternary(stored[f"{name}.weight"]), ternary)
        assert torch.equal(stored[f"{name}.weight_scale"], scale.reshape(1))
    packed_bytes, fp16_bytes = linear_weight_bytes(path)
    assert packed_bytes * 7 <= fp16_bytes
    reloaded = load_packed_student(path)
    with torch.no_grad():
        assert torch.equal(reloaded(random_tokens()).logits, student(random_tokens()).logits)


def test_transformers_loads_packed_llama(tmp_path):
    # transformers' BitNet helpers are torch.compile'd: run them eagerly. Through dynamo's own patch, which restores
    # the setting (pytest's monkeypatch deletes an attribute that is not in the module's __dict__ on undo, and a
    # deleted dynamo setting stays hidden: every later torch.compile fails)
    with torch._dynamo.config.patch(disable=True):
        student = tiny_student("llama", input_norm=True)
        path = write_packed_checkpoint(student, tmp_path / "packed")
        config = json.loads((path / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "bitnet"
        assert config["quantization_config"]["modules_to_not_convert"] == ["lm_head"]
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            reference, logits = student(random_tokens()).logits, loaded(random_tokens()).logits
    assert (logits - reference).abs().max() <= LOGITS_TOLERANCE * reference.abs().max()


def test_transformers_loads_a_subln_llama_as_bitnet(tmp_path):
    """A SubLN Llama student is transformers' BitNet b1.58 architecture (BitNetForCausalLM, as
    microsoft/bitnet-b1.58-2B-4T): its export was written without quantization_config, so plain transformers
    failed on the packed weight shapes. It loads now, its sub-norms as attn_sub_norm / ffn_sub_norm."""
    student = tiny_student("llama", subln=True)
    with torch.no_grad():
        for _, layer in bitlinear_modules(student):
            if layer.rms_norm is not None:
                layer.rms_norm.weight.uniform_(0.5, 1.5)
    path = write_packed_checkpoint(student, tmp_path / "packed", verify_input_ids=random_tokens())
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("bitnet", ["BitNetForCausalLM"])
    assert config["quantization_config"]["quant_method"] == "bitnet"
    assert "model.layers.1.mlp.ffn_sub_norm.weight" in load_file(path / "model.safetensors")
    with torch._dynamo.config.patch(disable=True):  # see test_transformers_loads_packed_llama
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            reference, logits = student(random_tokens()).logits, loaded(random_tokens()).logits
    assert type(loaded).__name__ == "BitNetForCausalLM"
    assert (logits - reference).abs().max() <= LOGITS_TOLERANCE * reference.abs().max()
    with torch.no_grad():
        assert torch.equal(load_packed_student(path)(random_tokens()).logits, reference)


@pytest.mark.parametrize("architecture, options", [("gpt2", {}), ("qwen2", {"subln": True}),
                                                   ("llama", {"subln": True, "rms_norm_eps": 1e-3})])
def test_layouts_transformers_cannot_rebuild_carry_no_quantization_config(architecture, options, tmp_path):
    student = tiny_student(architecture, **options)
    path = write_packed_checkpoint(student, tmp_path / "packed", verify_input_ids=random_tokens())
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert json.loads((path / "config.json").read_text())["distily_bitnet"]["format"] == "packed"


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    student = tiny_student("llama")
    monkeypatch.setattr("distily.export.packed.LOGITS_TOLERANCE", -1.0)
    with pytest.raises(DistilyConfigError, match="packed logits differ"):
        write_packed_checkpoint(student, tmp_path / "packed", verify_input_ids=random_tokens())
    assert list(tmp_path.iterdir()) == []


def save_run(student, run_dir):
    make_tokenizer().save_pretrained(run_dir)
    student.save_pretrained(run_dir)


def test_export_run_writes_a_verified_packed_checkpoint(tmp_path):
    save_run(tiny_student("llama"), tmp_path / "run")
    path = export_run(tmp_path / "run", "packed")
    assert path == tmp_path / "run" / "packed"
    assert (path / "tokenizer.json").is_file() and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


def test_export_run_errors(tmp_path):
    with pytest.raises(DistilyConfigError, match="expected one of packed, gguf"):
        export_run(tmp_path, "onnx")
    with pytest.raises(DistilyConfigError, match="no config.json"):
        export_run(tmp_path, "packed")
    save_run(tiny_student("llama"), tmp_path / "run")
    export_run(tmp_path / "run", "packed")
    with pytest.raises(DistilyConfigError, match="packed export"):  # an export is not a trained student
        export_run(tmp_path / "run" / "packed", "packed")


def test_verify_rejects_oversized_weights(tmp_path, monkeypatch):
    student = tiny_student("llama")
    path = write_packed_checkpoint(student, tmp_path / "packed")
    monkeypatch.setattr("distily.export.packed.linear_weight_bytes", lambda _: (100, 100))
    with pytest.raises(DistilyConfigError, match="packed linear weights take 100 bytes"):
        verify_packed(student, path, random_tokens())


def test_verification_of_a_training_student_ignores_dropout(tmp_path):
    student = tiny_student("gpt2").train()  # GPT-2 has dropout 0.1
    write_packed_checkpoint(student, tmp_path / "packed", verify_input_ids=random_tokens())
    assert student.training



def export_command(*args) -> int:
    return main(["export", *map(str, args)])


def test_export_command_replaces_a_previous_export_only_with_overwrite(tmp_path, capsys):
    save_run(tiny_student("llama"), tmp_path / "run")
    output = tmp_path / "exports" / "packed"
    assert export_command(tmp_path / "run", "--format", "packed", "--output", output) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote and verified {output} (") and "reloaded logits within 1e-05" in last
    assert read_export_report(output).not_verified == []
    before, inode = tree(tmp_path), output.stat().st_ino

    assert export_command(tmp_path / "run", "--format", "packed", "--output", output) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"distily export: error: output '{output}' already exists; expected a new path, "
        "or --overwrite to replace a previous packed export"
    )
    assert tree(tmp_path) == before

    assert export_command(tmp_path / "run", "--format", "packed", "--output", output, "--overwrite") == 0
    assert output.stat().st_ino != inode  # a new directory, renamed in
    assert tree(tmp_path) == before  # the same export again, and no staging left beside it


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_distily_eval_measures_a_packed_export_as_the_student_it_came_from(architecture, text_file, tmp_path):
    """distily eval refused a packed export ("holds a packed export; expected a trained student"), which transformers
    loads (Llama) and load_packed_student loads (GPT-2's Conv1D layout): its held-out loss is the latent student's."""
    save_run(tiny_student(architecture), tmp_path / "run")
    assert export_command(tmp_path / "run", "--format", "packed") == 0
    losses = {}
    for model in ("run", "run/packed"):
        evaluation = ["--eval_datasets", json.dumps({"docs": text_file}), "--max_seq_length", "32",
                      "--max_eval_samples", "4", "--output_dir", str(tmp_path / "eval" / model)]
        assert main(["eval", str(tmp_path / model), *evaluation]) == 0
        results = json.loads((tmp_path / "eval" / model / "eval.json").read_text())
        (losses[model],) = [column["docs_lm_loss"] for column in results["columns"].values()]
    assert losses["run/packed"] == losses["run"]


def test_export_refuses_a_users_folder_even_with_overwrite(tmp_path, capsys):
    save_run(tiny_student("llama"), tmp_path / "run")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')
    (folder / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    capsys.readouterr()  # the saved run's progress bars
    for flags, expected in (
        ([], "already exists"),
        (["--overwrite"], "is not a previous packed export (it holds 'thesis.tex'"),
    ):
        assert export_command(tmp_path / "run", "--format", "packed", "--output", folder, *flags) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert tree(tmp_path) == before


def test_a_failed_overwrite_leaves_the_previous_export_and_no_staging(tmp_path, monkeypatch):
    save_run(tiny_student("llama"), tmp_path / "run")
    export_run(tmp_path / "run", "packed")
    before = tree(tmp_path)

    def killed(*args):
        raise KeyboardInterrupt("killed while verifying")

    monkeypatch.setattr("distily.export.packed.verify_packed", killed)
    with pytest.raises(KeyboardInterrupt):
        export_run(tmp_path / "run", "packed", overwrite=True)
    assert tree(tmp_path) == before


def test_packed_export_report_without_verification_says_so(tmp_path):
    path = write_packed_checkpoint(tiny_student("llama"), tmp_path / "packed")
    report = read_export_report(path)
    assert report.verified == [] and report.not_verified == [
        "not verified against the student's logits: no verify_input_ids given"
    ]
    assert report.line(path).startswith(f"wrote {path}; verified: nothing; not verified")
