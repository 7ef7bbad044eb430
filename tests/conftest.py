"""Fixtures over ``tiny``: the tests never touch the network."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share the cores: one thread each (their subprocesses too), set
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads its OpenMP runtime, or they contend for them

from tiny import (  # noqa: E402
    ARCHITECTURES, make_documents, make_tokenizer, save_tiny_model, tokenizer_for, write_jsonl,
)


@pytest.fixture
def tokenizer():
    """A fresh tokenizer per test, so no test sees another's changes to it."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def teacher_dirs(tmp_path_factory):
    """A saved tiny teacher per architecture."""
    root = tmp_path_factory.mktemp("teachers")
    return {arch: save_tiny_model(root / arch, arch, tokenizer_for(arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "docs.jsonl", make_documents(400))


@pytest.fixture
def run_values(text_file, tmp_path):
    """Config keys for a short distillation run on tiny data."""

    def values(teacher_dir, **overrides):
        return {
            "teacher_model_name_or_path": teacher_dir,
            "dataset_name": text_file,
            "max_seq_length": 32,
            "max_eval_samples": 16,
            "output_dir": str(tmp_path / "run"),
            "tokenization_cache_dir": str(tmp_path / "cache"),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8,
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_steps": 2,
            "report_to": "none",
            "disable_tqdm": True,
            **overrides,
        }

    return values


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped without one (``benchmarks/gpu_check.sh`` runs them on one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
