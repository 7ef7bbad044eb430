"""The teacher's identity: a local checkpoint is known by a hash of the files its weights load from."""

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

from distily.models.identity import weights_sha256
from tiny import make_tokenizer, save_tiny_model


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_weights_hash_covers_weight_files_only(tmp_path):
    _write(tmp_path / "model-00001-of-00002.safetensors", b"first shard")
    _write(tmp_path / "model-00002-of-00002.safetensors", b"second shard")
    _write(tmp_path / "config.json", b"{}")
    training_args = _write(tmp_path / "training_args.bin", b"pickled TrainingArguments of one run")
    digest = weights_sha256(tmp_path)
    training_args.write_bytes(b"pickled TrainingArguments of another run")
    assert weights_sha256(tmp_path) == digest
    training_args.unlink()  # a copy of the checkpoint without the Trainer's files is the same teacher
    assert weights_sha256(tmp_path) == digest
    _write(tmp_path / "model-00002-of-00002.safetensors", b"another second shard")
    assert weights_sha256(tmp_path) != digest


def test_pickled_weights_are_hashed_and_a_folder_without_weights_has_none(tmp_path):
    training_args = _write(tmp_path / "training_args.bin", b"pickled TrainingArguments")
    assert weights_sha256(tmp_path) is None
    _write(tmp_path / "pytorch_model.bin", b"pickled state dict")
    digest = weights_sha256(tmp_path)
    assert digest is not None
    training_args.write_bytes(b"other arguments")
    assert weights_sha256(tmp_path) == digest


def _hub_cache_with(tmp_path, repo_id: str, commits: list[str]) -> Path:
    """A Hugging Face cache as the Hub leaves it, holding a tiny model at each of ``commits`` (the last on main)."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for seed, commit in enumerate(commits):
        save_tiny_model(repo / "snapshots" / commit, "llama", make_tokenizer(), seed=seed)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commits[-1])
    return cache


def test_a_hub_teacher_is_known_by_the_commit_it_was_loaded_from(tmp_path):
    """transformers 5 no longer sets config._commit_hash, so a Hub teacher's revision was None: a recorded store
    checked nothing about which teacher trained from it. The teacher is loaded at the commit main points to (from
    the cache, offline), and that commit is its identity."""
    old, new = "1" * 40, "2" * 40
    cache = _hub_cache_with(tmp_path, "distily-test/tiny", [old, new])
    script = (
        "import json; from distily.models.teacher import load_teacher; "
        "from distily.models.identity import teacher_identity; "
        "teacher = load_teacher('distily-test/tiny'); "
        "print(json.dumps([teacher_identity('distily-test/tiny', teacher)['teacher_revision'], "
        "teacher.model.embed_tokens.weight[0, :3].tolist()]))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    revision, weights = json.loads(output.stdout.strip().splitlines()[-1])
    assert revision == new
    expected = AutoModelForCausalLM.from_pretrained(cache / "models--distily-test--tiny" / "snapshots" / new)
    assert weights == expected.model.embed_tokens.weight[0, :3].tolist()
