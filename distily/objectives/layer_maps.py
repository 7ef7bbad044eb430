"""Layer maps: which student layer learns from which teacher layer.

A layer map turns the two depths into ``(student_index, teacher_index)`` pairs::

    LAYER_MAPS[name](student_depth, teacher_depth, **params) -> list[tuple[int, int]]

Indices follow Hugging Face's ``output_hidden_states``, which has ``depth + 1`` entries: index 0 is the
embedding output and index i (1..depth) the output of decoder block i; in most models (Llama, GPT-2,
Phi-3, Qwen2) the last entry has the final norm applied. One index space serves every component:
for attention probabilities and attention relations, index i means the attention of block i
(``attentions[i - 1]``, or block i's entry where only some blocks attend: ``AttentionsComponent.attach``), and
index 0, which has no attention, is refused. The named maps pair block
outputs (1..depth) only; the embeddings (index 0) can be named in ``pairs`` and ``indices``.

"Same relative depth" below is ``teacher_index = round(i * teacher_depth / student_depth)``, halves
rounded up, so student index 0 meets teacher index 0 and the last meets the last.

Register a map of your own with ``LAYER_MAPS["name"] = fn``; ``resolve_layer_map`` checks the
configured parameters against its signature and the pairs it returns against the depths.
"""

import inspect
from typing import Callable

from distily.arguments import registered
from distily.errors import DistilyConfigError

LayerPairs = list[tuple[int, int]]
LayerMap = Callable[..., LayerPairs]


def is_index(value) -> bool:
    """A layer index or count as a config gives it: an int, not a bool (YAML's true would read as layer 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def relative_depth(student_index: int, student_depth: int, teacher_depth: int) -> int:
    """The teacher index at the same relative depth as ``student_index``, halves rounded up; a block output
    (index >= 1) pairs with a block output, never the embeddings (a student more than twice the teacher's depth
    would round its first block down to 0)."""
    index = (2 * student_index * teacher_depth + student_depth) // (2 * student_depth)
    return max(index, 1) if student_index >= 1 else index


def all_layers(student_depth: int, teacher_depth: int) -> LayerPairs:
    """Every student block output, each with the teacher's at the same relative depth; ``(i, i)`` when
    the depths are equal (as in TinyBERT's per-layer distillation, Jiao et al., 2020)."""
    return [(i, relative_depth(i, student_depth, teacher_depth)) for i in range(1, student_depth + 1)]


def last(student_depth: int, teacher_depth: int) -> LayerPairs:
    """The final outputs only: ``(S, T)`` (MiniLM distils the last layer, Wang et al., 2020)."""
    return [(student_depth, teacher_depth)]


def last_k(student_depth: int, teacher_depth: int, k: int) -> LayerPairs:
    """The last k block outputs of each model, in order: ``(S - k + j, T - k + j)`` for j = 1..k."""
    if not is_index(k) or not 1 <= k <= min(student_depth, teacher_depth):
        raise DistilyConfigError(
            f"k={k!r} does not fit depths {student_depth} (student) and {teacher_depth} (teacher); "
            f"expected an integer 1 <= k <= {min(student_depth, teacher_depth)}"
        )
    return [(student_depth - k + j, teacher_depth - k + j) for j in range(1, k + 1)]


def _stride(student_depth: int, teacher_depth: int) -> int:
    if student_depth > teacher_depth:
        raise DistilyConfigError(
            f"a uniform map needs a student no deeper than the teacher; got {student_depth} student and "
            f"{teacher_depth} teacher layers (expected student depth <= teacher depth; use 'all' or 'pairs')"
        )
    return teacher_depth // student_depth


def uniform(student_depth: int, teacher_depth: int) -> LayerPairs:
    """Student block i with teacher block ``i * (T // S)``: TinyBERT's uniform strategy g(m) = m * N / M
    (Jiao et al., 2020). When S does not divide T the top ``T mod S`` teacher blocks are left out."""
    stride = _stride(student_depth, teacher_depth)
    return [(i, i * stride) for i in range(1, student_depth + 1)]


def uniform_last(student_depth: int, teacher_depth: int) -> LayerPairs:
    """``uniform``, except that the last student block always meets the last teacher block, so the
    final representations are matched even when S does not divide T."""
    pairs = uniform(student_depth, teacher_depth)
    pairs[-1] = (student_depth, teacher_depth)
    return pairs


def explicit_pairs(student_depth: int, teacher_depth: int, pairs: list) -> LayerPairs:
    """Explicit ``[[student_index, teacher_index], ...]`` pairs, in the order given."""
    if not isinstance(pairs, (list, tuple)) or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_index(i) for i in pair) for pair in pairs
    ):
        raise DistilyConfigError(f"pairs={pairs!r} is not a list of index pairs; expected e.g. [[1, 2], [2, 4]]")
    return [(student, teacher) for student, teacher in pairs]


def chosen_indices(student_depth: int, teacher_depth: int, indices: list) -> LayerPairs:
    """The listed student indices, each with the teacher's at the same relative depth."""
    if not isinstance(indices, (list, tuple)) or not all(is_index(i) for i in indices):
        raise DistilyConfigError(f"indices={indices!r} is not a list of layer indices; expected e.g. [2, 4]")
    return [(i, relative_depth(i, student_depth, teacher_depth)) for i in indices]


LAYER_MAPS: dict[str, LayerMap] = {
    "all": all_layers,
    "last": last,
    "last_k": last_k,
    "uniform": uniform,
    "uniform_last": uniform_last,
    "pairs": explicit_pairs,
    "indices": chosen_indices,
}


def check_layer_map(option: str, name: str, params: dict) -> None:
    """Stop unless ``name`` is a registered layer map that takes the parameters ``params`` (checked before the
    depths are known; ``option`` names the config key in errors)."""
    registered(name, LAYER_MAPS, option, "layer map")
    try:
        inspect.signature(LAYER_MAPS[name]).bind(1, 1, **params)  # any depths: only the parameters' names bind
    except TypeError as err:
        raise DistilyConfigError(f"{option}_kwargs {params} do not fit layer map {name!r}: {err}")


def resolve_layer_map(
    option: str, name: str, params: dict, student_depth: int, teacher_depth: int, allow_embeddings: bool
) -> LayerPairs:
    """The pairs map ``name`` gives for these depths, checked; ``option`` names the config key in errors.

    ``allow_embeddings`` is False for attention components, which have no index 0.
    """
    check_layer_map(option, name, params)
    try:
        result = LAYER_MAPS[name](student_depth, teacher_depth, **params)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"{option}={name!r}: {err}")
    if not result:
        raise DistilyConfigError(f"{option}={name!r} gives no layer pairs; expected at least one")
    low = 0 if allow_embeddings else 1
    for student_index, teacher_index in result:
        if not (low <= student_index <= student_depth and low <= teacher_index <= teacher_depth):
            raise DistilyConfigError(
                f"{option}={name!r} gives the pair ({student_index}, {teacher_index}); expected student indices "
                f"{low}..{student_depth} and teacher indices {low}..{teacher_depth}"
                + ("" if allow_embeddings else " (attention has no index 0: index i is block i)")
            )
    return result
