"""``distily record`` on a tiny teacher: values against a direct computation, resume after a kill,
the fidelity report, hidden states, provenance in the manifest."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.commands.record import summary_table
from distily.config import parse_config, parse_record_config
from distily.data.framing import INPUT_IDS
from distily.data.store import (
    MANIFEST,
    PROGRESS,
    ROW_NLL,
    TAIL_LOGPROB,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TeacherStore,
    hidden_states_key,
)
from distily.data.tokenization_cache import tokenizer_fingerprint
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher, load_tokenizer
from distily.recording.hf import HFRecorder, check_storable
from distily.recording.run import run_recording
from store_values import store_values
from tiny import (
    make_bos_tokenizer, make_tokenizer, save_float16_overflowing_llama, save_tiny_masked_lm, save_tiny_model,
    tiny_config, tiny_gemma3n_config, tiny_opt,
)


def _record(teacher_dir, text_file, root, **overrides):
    values = store_values(teacher_dir, text_file, root, **overrides)
    return values, run_recording(parse_record_config(**values))


def test_stored_values_are_the_teachers_top_k_tail_and_loss(teacher_dirs, text_file, tmp_path):
    values, manifest = _record(teacher_dirs["llama"], text_file, tmp_path, record_hidden_states_layers=[0, 3])
    settings = manifest["settings"]
    assert settings["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(teacher_dirs["llama"], "teacher"))
    assert settings["teacher_weights_sha256"] and settings["dataset_fingerprint"]
    assert manifest["rows"] == {"train": 24, "eval": 8} and len(manifest["shards"]["train"]) == 3
    assert manifest["bytes_per_topk_entry"] == 4
    teacher = load_teacher(teacher_dirs["llama"])
    rows = TeacherStore(values["teacher_store"]).dataset("train")
    items = [rows[i] for i in range(8, 16)]  # the second shard, one recording batch
    input_ids = torch.stack([item[INPUT_IDS] for item in items])  # [8, 32]
    with torch.no_grad():
        outputs = teacher(input_ids=input_ids, output_hidden_states=True)
    logprobs = F.log_softmax(outputs.logits.float(), -1)  # [8, 32, vocab]
    top = logprobs.topk(16, -1)
    stored_logprobs = torch.stack([item[TOPK_LOGPROBS] for item in items])
    assert stored_logprobs.dtype == torch.float16
    torch.testing.assert_close(stored_logprobs.float(), top.values.half().float(), rtol=0, atol=2e-3)
    assert (torch.stack([item[TOPK_IDS] for item in items])[..., :3] == top.indices[..., :3]).float().mean() > 0.99
    tail = torch.stack([item[TAIL_LOGPROB] for item in items])
    torch.testing.assert_close(tail.exp(), 1 - top.values.exp().sum(-1), rtol=1e-4, atol=1e-5)
    nll = -logprobs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1).double().sum(-1)
    torch.testing.assert_close(torch.stack([item[ROW_NLL] for item in items]), nll, rtol=1e-5, atol=1e-4)
    for layer in (0, 3):
        stored = torch.stack([item[hidden_states_key(layer)] for item in items])
        assert stored.dtype == torch.float16
        torch.testing.assert_close(stored.float(), outputs.hidden_states[layer], rtol=1e-3, atol=1e-3)
    assert hidden_states_key(1) not in items[0]


def test_a_gemma3n_teachers_hidden_states_are_stored_at_its_active_altup_stream(text_file, tmp_path):
    """Gemma 3n returns each hidden state as its AltUp streams, [streams, batch, seq, width]: stored as they came,
    a shard's rows held the streams, and reading row 2 on raised IndexError. Each row now holds the active stream
    (altup_active_idx, 1 here) of its own forward."""
    tokenizer = make_bos_tokenizer()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_gemma3n_config(
        vocab_size=len(tokenizer), altup_active_idx=1, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=None)).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    values, _ = _record(str(tmp_path / "teacher"), text_file, tmp_path, record_hidden_states_layers=[2, 4])
    rows = TeacherStore(values["teacher_store"]).dataset("train")
    items = [rows[i] for i in range(8, 16)]  # the second shard, one recording batch
    with torch.no_grad():
        outputs = teacher(input_ids=torch.stack([item[INPUT_IDS] for item in items]), output_hidden_states=True)
    for layer in (2, 4):
        stored = torch.stack([item[hidden_states_key(layer)] for item in items])  # [8, 32, 64]
        torch.testing.assert_close(stored.float(), outputs.hidden_states[layer][1], rtol=1e-3, atol=1e-3)


def test_the_store_holds_the_sequences_distill_takes_with_a_data_seed(teacher_dirs, text_file, tmp_path):
    """distill draws its held-out split and samples with data_seed where set: record ignored the key and drew them with
    seed, so a store held other sequences than a live run of the same config."""
    values, manifest = _record(teacher_dirs["llama"], text_file, tmp_path, data_seed=7)
    config = parse_config(**values)
    live = build_datasets(config.data, load_tokenizer(teacher_dirs["llama"], "teacher"), 32, config.training.split_seed)
    store = TeacherStore(values["teacher_store"])
    for split in ("train", "eval"):
        stored = [row[INPUT_IDS].tolist() for row in store.dataset(split)]
        assert stored == [row[INPUT_IDS].tolist() for row in getattr(live, split)], split
    assert manifest["settings"]["seed"] == 7
    assert manifest["packed_rows"] == live.packed_rows  # all of each split's rows, before max_(eval_)samples
    assert live.packed_rows["train"] > 24 and live.packed_rows["eval"] > 8


def test_fidelity_report_matches_a_direct_computation(teacher_dirs, text_file, tmp_path):
    values, manifest = _record(teacher_dirs["llama"], text_file, tmp_path, record_top_k=8)
    report = manifest["fidelity"]
    assert sorted(int(k) for k in report["by_k"]) == [8, 32, 64, 128]
    teacher = load_teacher(teacher_dirs["llama"])
    held_out = TeacherStore(values["teacher_store"]).dataset("eval")
    input_ids = torch.stack([held_out[i][INPUT_IDS] for i in range(len(held_out))])
    with torch.no_grad():
        p = F.softmax(teacher(input_ids=input_ids).logits.double(), -1).flatten(0, 1)  # [tokens, vocab]
    vocab = p.shape[-1]
    assert report["tokens"] == p.shape[0]
    for k, reported in report["by_k"].items():
        k = int(k)
        top = p.topk(k, -1)
        kept = top.values.log().half().double().exp()  # what the store keeps, float16 log-probabilities
        tail = 1 - top.values.sum(-1, keepdim=True)
        total = kept.sum(-1, keepdim=True) + tail
        q = (tail / total / (vocab - k)).expand(-1, vocab).clone().scatter(-1, top.indices, kept / total)
        kl = (p * (p.log() - q.log())).sum(-1)
        assert reported["kl"] == pytest.approx(kl.mean().item(), rel=1e-3, abs=1e-6), k
        assert reported["tail_mass"] == pytest.approx(tail.mean().item(), rel=1e-3, abs=1e-6), k
    kls = [report["by_k"][k]["kl"] for k in ("8", "32", "64", "128")]
    assert kls == sorted(kls, reverse=True)  # a larger k loses less


def _killed_then_resumed(teacher_dir, text_file, out: Path, monkeypatch, damage=lambda store: None):
    """A recording killed at its third shard, ``damage(store)`` done to what it left, then resumed: the resumed
    manifest and the number of rows each shard recorded in the resumed run."""
    original = HFRecorder.record
    calls = {"count": 0}

    def dies_on_the_third_shard(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFRecorder, "record", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _record(teacher_dir, text_file, out)
    assert not (out / "store" / MANIFEST).exists()
    damage(out / "store")
    recorded = []
    monkeypatch.setattr(HFRecorder, "record", lambda self, rows, *a, **k: (
        recorded.append(len(rows["input_ids"])) or original(self, rows, *a, **k)))
    _, resumed = _record(teacher_dir, text_file, out)
    return resumed, recorded


def test_a_killed_recording_resumes_to_the_uninterrupted_result(teacher_dirs, text_file, tmp_path, monkeypatch):
    _, uninterrupted = _record(teacher_dirs["llama"], text_file, tmp_path / "a")
    resumed, recorded = _killed_then_resumed(teacher_dirs["llama"], text_file, tmp_path / "b", monkeypatch)
    assert recorded == [8, 8]  # only the missing train shard and the eval shard
    assert _shard_hashes(resumed) == _shard_hashes(uninterrupted)
    assert resumed["fidelity"] == uninterrupted["fidelity"]


def test_a_shard_damaged_while_the_recording_was_stopped_is_recorded_again(teacher_dirs, text_file, tmp_path,
                                                                          monkeypatch, caplog):
    """Resuming kept every listed shard as it was: one damaged between the stop and the resume made the finished
    store fail its check in every run that read it. Now it is recorded again, with a warning."""
    _, uninterrupted = _record(teacher_dirs["llama"], text_file, tmp_path / "a")

    def truncate_the_first_shard(store: Path) -> None:
        shard = store / "train-00000.safetensors"
        shard.write_bytes(shard.read_bytes()[:-10])

    with caplog.at_level("WARNING"):
        resumed, recorded = _killed_then_resumed(teacher_dirs["llama"], text_file, tmp_path / "b", monkeypatch,
                                                 truncate_the_first_shard)
    assert recorded == [8, 8, 8]  # the damaged shard, the missing train shard and the eval shard
    assert "shard 'train-00000.safetensors' has" in caplog.text and "recording it again" in caplog.text
    assert _shard_hashes(resumed) == _shard_hashes(uninterrupted)


def test_recording_again_into_a_finished_store_records_its_damaged_shards(teacher_dirs, text_file, tmp_path, caplog):
    """A shard corrupted after the store was finished failed every run with 'record it again', but recording again
    returned the finished store as it was, corrupted shard and all. Now the damaged shard is recorded again."""
    values, finished = _record(teacher_dirs["llama"], text_file, tmp_path)
    shard = Path(values["teacher_store"]) / "train-00001.safetensors"
    damaged = bytearray(shard.read_bytes())
    damaged[-5] ^= 1
    shard.write_bytes(bytes(damaged))
    with pytest.raises(DistilyConfigError, match=r"fails its sha256 check; .*`distily record` with the store's config"):
        TeacherStore(values["teacher_store"]).verify()
    with caplog.at_level("WARNING"):
        again = run_recording(parse_record_config(**values))
    assert "shard 'train-00001.safetensors' fails its sha256 check: recording it again" in caplog.text
    assert again == finished and not (Path(values["teacher_store"]) / PROGRESS).exists()
    TeacherStore(values["teacher_store"]).verify()


def test_a_recording_of_shards_without_loss_positions_finishes_with_its_fidelity(teacher_dirs, text_file, tmp_path):
    """Shards recorded before the fidelity counted its positions (summed over all of them) and resumed after: the
    report divides by their positions (finishing failed on the missing count)."""
    values, finished = _record(teacher_dirs["llama"], text_file, tmp_path)
    store = Path(values["teacher_store"])
    for entry in finished["shards"]["eval"].values():
        entry["stats"].pop("loss_positions")
    (store / PROGRESS).write_text(json.dumps({"settings": finished["settings"], "shards": finished["shards"]}))
    (store / MANIFEST).unlink()
    resumed = run_recording(parse_record_config(**values))
    assert resumed["fidelity"] == finished["fidelity"]  # text: the loss positions are all positions

def _shard_hashes(manifest):
    return {split: [entry["sha256"] for entry in shards.values()] for split, shards in manifest["shards"].items()}


def test_a_store_recorded_with_other_settings_is_not_resumed(teacher_dirs, text_file, tmp_path):
    _record(teacher_dirs["llama"], text_file, tmp_path)
    with pytest.raises(DistilyConfigError,
                       match=r"holds a recording with record_top_k=16; this run has record_top_k=32"):
        _record(teacher_dirs["llama"], text_file, tmp_path, record_top_k=32)
    with pytest.raises(DistilyConfigError,
                       match=r"holds a recording with max_seq_length=32; this run has max_seq_length=16"):
        _record(teacher_dirs["llama"], text_file, tmp_path, max_seq_length=16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"record_top_k": 400}, r"record_top_k=400 exceeds the teacher's 320 logits; expected at most 320"),
        ({"record_hidden_states_layers": [5]}, r"record_hidden_states_layers index 5 is out of range; expected 0..4"),
        ({"teacher_store": None}, r"teacher_store is not set; expected the directory"),
    ],
)
def test_bad_recording_settings_are_clear_errors(teacher_dirs, text_file, tmp_path, overrides, message):
    with pytest.raises(DistilyConfigError, match=message):
        _record(teacher_dirs["llama"], text_file, tmp_path, **overrides)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--record_top_k", "0"], r"record_top_k=0 must be a positive integer"),
        (["--record_shard_size", "-1"], r"record_shard_size=-1 must be a positive integer"),
        (["--record_backend", "tgi"], r"record_backend='tgi' is not supported; expected one of hf, vllm"),
        (["--record_hidden_states_layers", "1", "1"], r"record_hidden_states_layers=\[1, 1\] is not supported"),
        (["--logits_temperature", "0"], r"logits_temperature=0.0 must be > 0"),
        (["--learning_rate", "1"], r"learning_rate is not used by `distily record`"),
    ],
)
def test_bad_record_flags_are_one_line_errors(flags, message):
    with pytest.raises(DistilyConfigError, match=message):
        parse_record_config(argv=["--teacher_model_name_or_path", "t", "--teacher_store", "s", *flags])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher_source", "cache"], r"teacher_source='cache' is not supported; expected one of live, recorded"),
        (["--teacher_source", "recorded"], r"teacher_source='recorded' needs teacher_store"),
        (["--record_top_k", "8"], r"record_top_k is not used by `distily distill`"),
    ],
)
def test_bad_teacher_source_flags_are_one_line_errors(flags, message):
    with pytest.raises(DistilyConfigError, match=message):
        parse_config(argv=["--output_dir", "o", *flags])


def test_vllm_backend_without_vllm_is_a_clear_error(teacher_dirs, text_file, tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(DistilyConfigError, match=r"record_backend='vllm' needs the vllm package"):
        _record(teacher_dirs["llama"], text_file, tmp_path, record_backend="vllm")


def test_record_command_writes_the_store_and_prints_the_report(teacher_dirs, text_file, tmp_path, capsys):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path)
    values.pop("output_dir")  # record does not need it
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(values))
    assert main(["record", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "KL(teacher || rebuilt)" in out
    store = values["teacher_store"]
    assert out.splitlines()[-1] == (f"The teacher store (24 train and 8 held-out sequences) is in {store}: distill "
                                    f"from it with --teacher_source recorded --teacher_store {store}")
    assert json.loads((tmp_path / "store" / MANIFEST).read_text())["rows"]["eval"] == 8
    assert main(["record", str(config_file), "--record_top_k", "8"]) == 2
    assert "holds a recording with record_top_k=16" in capsys.readouterr().err


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
replace, count = os.replace, [0]
def replace_then_die(src, dst):
    if str(src).endswith(".safetensors.partial"):
        count[0] += 1
        if count[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # the third shard is written but never renamed
    return replace(src, dst)
os.replace = replace_then_die
from distily.config import parse_config, parse_record_config
from distily.recording.run import run_recording
run_recording(parse_record_config(**{values!r}))
"""


@pytest.mark.slow
def test_a_sigkilled_recording_resumes_to_the_uninterrupted_result(teacher_dirs, text_file, tmp_path):
    _, uninterrupted = _record(teacher_dirs["llama"], text_file, tmp_path / "a")
    values = store_values(teacher_dirs["llama"], text_file, tmp_path / "b")
    script = KILLER.format(tests=str(Path(__file__).parents[1]), values=values)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env={**os.environ})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    store = tmp_path / "b" / "store"
    assert (store / "train-00002.safetensors.partial").exists() and not (store / MANIFEST).exists()
    _, resumed = _record(teacher_dirs["llama"], text_file, tmp_path / "b")
    assert _shard_hashes(resumed) == _shard_hashes(uninterrupted)
    assert not math.isnan(resumed["teacher_heldout"]["lm_loss"])


def test_hidden_states_past_float16s_range_are_refused_not_stored_as_inf(tmp_path, text_file):
    """A float32 teacher's hidden states are recorded in float16: activations past 65504 became inf, and a run from
    the store skipped every step on a NaN loss yet finished. The recording stops at the first such layer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2e5)  # embedding outputs near 1e5; RMSNorm keeps the model working
    model.save_pretrained(tmp_path / "teacher")
    make_bos_tokenizer().save_pretrained(tmp_path / "teacher")
    with pytest.raises(DistilyConfigError, match=r"hidden states of layer 0 reach .* beyond float16's 6\.55e\+04"):
        _record(str(tmp_path / "teacher"), text_file, tmp_path, record_hidden_states_layers=[0, 1])


def test_a_teacher_that_overflows_float16_is_refused_before_its_shard_is_written(text_file, tmp_path):
    """Found by review: a float16 teacher's NaN logits went into the store's top-k unchecked."""
    teacher = save_float16_overflowing_llama(tmp_path / "teacher")
    with pytest.raises(DistilyConfigError, match=r"^shard 'train-00000.safetensors': the teacher's logits of row 0 "
                       r"hold NaN or \+inf \(the teacher ran with float16 weights\); expected finite teacher outputs: "
                       r"teacher_torch_dtype bfloat16 or float32 \(some families, such as Gemma, overflow in "
                       r"float16\)$"):
        _record(teacher, text_file, tmp_path, teacher_torch_dtype="float16")
    assert not list((tmp_path / "store").glob("*.safetensors*"))


def test_a_recording_refused_at_nan_logits_wrote_no_part_of_that_shard_and_resumes(teacher_dirs, text_file, tmp_path,
                                                                                  monkeypatch):
    """The teacher's logits of each batch's last row NaN in the third shard: refused there, the two shards before it
    kept whole and nothing of the third written; the same command then resumes to the uninterrupted store."""
    _, uninterrupted = _record(teacher_dirs["llama"], text_file, tmp_path / "a")
    original, calls = HFRecorder.record, []

    def last_row_nan(module, inputs, output) -> None:
        output.logits[-1].fill_(math.nan)

    def nan_in_the_third_shard(self, *args, **kwargs):
        calls.append(1)
        if len(calls) != 3:
            return original(self, *args, **kwargs)
        hook = self.teacher.register_forward_hook(last_row_nan)
        try:
            return original(self, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(HFRecorder, "record", nan_in_the_third_shard)
    with pytest.raises(DistilyConfigError, match=r"^shard 'train-00002.safetensors': the teacher's logits of row \d+ "
                       r"hold NaN or \+inf \(the teacher ran with float32 weights\)"):
        _record(teacher_dirs["llama"], text_file, tmp_path / "b")
    store = tmp_path / "b" / "store"
    assert sorted(path.name for path in store.glob("*.safetensors*")) == [
        "train-00000.safetensors", "train-00001.safetensors"]
    monkeypatch.setattr(HFRecorder, "record", original)
    _, resumed = _record(teacher_dirs["llama"], text_file, tmp_path / "b")
    assert _shard_hashes(resumed) == _shard_hashes(uninterrupted)


def test_nan_hidden_states_are_refused_not_stored():
    """``nan > float16's largest`` is False: NaN hidden states passed the range check into the store."""
    with pytest.raises(DistilyConfigError, match=r"^the teacher's hidden states of layer 2 hold NaN or \+inf \(the "
                       r"teacher ran with float32 weights\)"):
        check_storable(torch.tensor([[1.0, math.nan]]), torch.float16, 2, torch.float32)


def _opt_teacher(path) -> str:
    """A tiny OPT with a BOS tokenizer (packing auto: documents): OPT ignores restarting position_ids."""
    tokenizer = make_bos_tokenizer()
    tiny_opt(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("teacher, message", [
    (_opt_teacher, r"^the teacher \(OPTForCausalLM\) lets packed documents attend to each other"),
    (lambda path: save_tiny_masked_lm(path, make_tokenizer()), r"^the teacher \(BertLMHeadModel\) is not causal"),
])
def test_a_teacher_the_live_path_refuses_is_refused_before_a_row_is_recorded(teacher, message, text_file, tmp_path):
    """record never probed its teacher: an OPT teacher's packed documents read each other (stored top-k log-probs
    0.1 nats off the teacher's on each document alone) and a masked LM's predictions read the next token, and both
    were recorded, where a live run refuses them and a run from the store runs no teacher to probe."""
    with pytest.raises(DistilyConfigError, match=message):
        _record(teacher(tmp_path / "teacher"), text_file, tmp_path, max_seq_length=128)
    assert not (tmp_path / "store").exists()  # no shard, progress or manifest (the store opens at its first shard)


def test_pre_tokenized_ids_past_the_teachers_vocabulary_are_refused_before_a_row_is_recorded(teacher_dirs, tmp_path):
    """A live run refuses them in one line; record ran the teacher on them and failed with a traceback (IndexError
    in the embedding), after writing a shard."""
    rows = [{"input_ids": [1 + (row * 7 + i) % 300 for i in range(40)]} for row in range(100)]
    rows[5]["input_ids"][3] = 400
    data = tmp_path / "ids.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(DistilyConfigError, match=r"row 5 \(counting from 0\) holds token id 400; expected ids in "
                                                 r"0\.\.319"):
        _record(teacher_dirs["llama"], str(data), tmp_path)
    assert not (tmp_path / "store").exists()


def test_a_tokenizer_past_the_teachers_embedding_is_refused_before_a_row_is_recorded(text_file, tmp_path):
    """A run from the store refuses it (check_tokenizer_fits): record finished the store all the same (stream) or
    failed with a traceback (padded: the pad id past the embedding, IndexError)."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # id 320: the embedding has 320 rows
    teacher = save_tiny_model(tmp_path / "teacher", "llama", tokenizer)
    for packing in ("stream", "padded"):
        with pytest.raises(DistilyConfigError, match=r"^the tokenizer has 321 tokens, pad_token_id 320, but the "
                                                     r"teacher's input embedding has 320 rows"):
            _record(teacher, text_file, tmp_path, packing=packing)
        assert not (tmp_path / "store").exists()


def test_the_fidelity_report_lists_k_in_increasing_order():
    # as manifest.json reads back: its keys sorted as text
    by_k = {k: {"kl": 1 / int(k), "tail_mass": 0.5} for k in sorted(["8", "16", "32", "64", "128"])}
    manifest = {"settings": {"record_top_k": 16}, "bytes_per_topk_entry": 4, "bytes_per_token": 74.0,
                "fidelity": {"by_k": by_k}}
    assert list(summary_table(manifest).columns[0].cells) == ["8", "16", "32", "64", "128"]
