"""Layers that reuse the keys and values of an earlier layer (Gemma 3n, Gemma 4: each of the last
``num_kv_shared_layers`` layers reuses those of the last layer of its attention type before them): a student's must
have a layer to take them from, and a copied one the copy of the teacher layer it took them from, which the default
teacher layers include."""

from typing import Optional

from transformers import PretrainedConfig

from distily.errors import DistilyConfigError


def kv_producers(config: PretrainedConfig) -> dict[int, Optional[int]]:
    """Each layer that reuses keys and values, and the layer it takes them from (None where there is none)."""
    depth = config.num_hidden_layers
    first_sharing = depth - (getattr(config, "num_kv_shared_layers", None) or 0)
    types = config.layer_types if first_sharing < depth else []
    return {layer: next((i for i in reversed(range(first_sharing)) if types[i] == types[layer]), None)
            for layer in range(first_sharing, depth)}


def with_kv_producers(config: PretrainedConfig, layers: list[int]) -> list[int]:
    """``layers`` (teacher layers in increasing order) with the layers the KV-sharing ones among them take keys and
    values from: each one missing replaces the layer nearest it (the earlier of two as near) that no chosen layer
    takes them from, so the student keeps the teacher's layers that share keys and values and their producers."""
    producers, chosen = kv_producers(config), list(layers)
    while True:
        needed = {producers[layer] for layer in chosen if producers.get(layer) is not None}
        missing = sorted(needed.difference(chosen))
        if not missing:  # each step adds a missing one and drops one none needs: fewer are missing after it
            return sorted(chosen)
        spare = min((layer for layer in chosen if layer not in needed),
                    key=lambda layer: (abs(layer - missing[0]), layer))
        chosen[chosen.index(spare)] = missing[0]


def check_kv_producers(teacher: PretrainedConfig, student: PretrainedConfig, sources: list[int], copied: bool) -> None:
    """Every student layer that reuses keys and values has a layer to take them from; where the student's layers are
    copies of teacher layers ``sources``, the copy of the layer its teacher layer took them from."""
    teacher_producers, student_producers = kv_producers(teacher), kv_producers(student)
    needed = sorted({teacher_producers[sources[layer]] for layer in student_producers
                     if teacher_producers.get(sources[layer]) is not None})
    for layer, producer in student_producers.items():
        wanted = teacher_producers.get(sources[layer])
        if producer is not None and (not copied or wanted is None or sources[producer] == wanted):
            continue
        verb = "copies" if copied else "stands for"
        took = "" if wanted is None else f", which reuses the keys and values of teacher layer {wanted}"
        given = ("no layer's" if producer is None
                 else f"those of its layer {producer} (teacher layer {sources[producer]})")
        expected = ("a num_kv_shared_layers that leaves a layer of each attention type before the KV-sharing ones"
                    if wanted is None else f"student layers that include teacher layers {needed} before the "
                    "KV-sharing ones (student_layers_from_teacher), or num_kv_shared_layers in "
                    "student_config_overrides")
        raise DistilyConfigError(
            f"student layer {layer} {verb} teacher layer {sources[layer]}{took}; in the student it would reuse "
            f"{given}; expected {expected}"
        )
