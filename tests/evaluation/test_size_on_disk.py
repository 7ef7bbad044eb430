"""A checkpoint's size on disk (the card's "size on disk" row) counts its weights in either format, once."""

import torch
from transformers import AutoModelForCausalLM

from distily.teachers.source import checkpoint_size
from tiny import tiny_config


def weight_bytes(directory, suffix: str) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.name.endswith(suffix))


def test_a_checkpoint_saved_as_bin_counts_its_weights_once(tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # as older checkpoints hold their weights
    (tmp_path / "training_args.bin").write_bytes(b"\0" * 1000)  # a pickle that holds no weights
    size = checkpoint_size(str(tmp_path), model)
    assert size == weight_bytes(tmp_path, ".bin") - 1000 and size > 4 * model.num_parameters()  # float32
    model.save_pretrained(tmp_path)  # the same weights again, as the safetensors transformers would load
    assert checkpoint_size(str(tmp_path), model) == weight_bytes(tmp_path, ".safetensors")
