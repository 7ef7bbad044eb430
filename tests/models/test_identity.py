"""The teacher's identity: a local checkpoint is known by a hash of the files its weights load from."""

from distily.models.identity import weights_sha256


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
