"""Layer maps over student/teacher depth pairs: indices in range, order kept, ends where they should."""

import pytest

from distily.errors import DistilyConfigError
from distily.objectives.layer_maps import LAYER_MAPS, relative_depth, resolve_layer_map

DEPTHS = [(1, 1), (1, 12), (2, 4), (3, 8), (4, 4), (4, 12), (5, 7), (6, 12), (12, 12), (7, 32)]  # (student, teacher)
NAMED_MAPS = ["all", "last", "uniform", "uniform_last"]


def resolve(name, student_depth, teacher_depth, allow_embeddings=True, **params):
    return resolve_layer_map("layer_map", name, params, student_depth, teacher_depth, allow_embeddings)


@pytest.mark.parametrize("student_depth, teacher_depth", DEPTHS)
@pytest.mark.parametrize("name", NAMED_MAPS)
def test_named_maps_pair_block_outputs_in_order(name, student_depth, teacher_depth):
    pairs = resolve(name, student_depth, teacher_depth, allow_embeddings=False)
    students, teachers = zip(*pairs)
    assert all(1 <= s <= student_depth for s in students) and all(1 <= t <= teacher_depth for t in teachers)
    assert list(students) == sorted(set(students)), "each student layer once, bottom to top"
    assert list(teachers) == sorted(teachers), "teacher layers never go back down"


@pytest.mark.parametrize("student_depth, teacher_depth", DEPTHS)
def test_all_pairs_every_student_block_at_its_relative_depth(student_depth, teacher_depth):
    pairs = LAYER_MAPS["all"](student_depth, teacher_depth)
    assert [s for s, _ in pairs] == list(range(1, student_depth + 1))
    assert pairs[-1] == (student_depth, teacher_depth)
    for s, t in pairs:
        assert abs(t - s * teacher_depth / student_depth) <= 0.5
    if student_depth == teacher_depth:
        assert pairs == [(i, i) for i in range(1, student_depth + 1)]


def test_relative_depth_rounds_halves_up_and_keeps_the_ends():
    assert relative_depth(1, 2, 3) == 2  # 1.5
    assert relative_depth(1, 4, 2) == 1  # 0.5
    assert relative_depth(0, 5, 7) == 0 and relative_depth(5, 5, 7) == 7


def test_a_student_more_than_twice_as_deep_pairs_its_first_block_with_a_block_not_the_embeddings():
    assert relative_depth(1, 6, 2) == 1  # 1/3 would round to 0: the embedding output
    assert LAYER_MAPS["all"](6, 2) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]


@pytest.mark.parametrize("student_depth, teacher_depth", DEPTHS)
def test_uniform_strides_from_the_bottom_and_uniform_last_ends_at_the_top(student_depth, teacher_depth):
    stride = teacher_depth // student_depth
    assert LAYER_MAPS["uniform"](student_depth, teacher_depth) == [
        (i, i * stride) for i in range(1, student_depth + 1)
    ]
    with_last = LAYER_MAPS["uniform_last"](student_depth, teacher_depth)
    assert with_last[:-1] == LAYER_MAPS["uniform"](student_depth, teacher_depth)[:-1]
    assert with_last[-1] == (student_depth, teacher_depth)


def test_uniform_examples():
    assert LAYER_MAPS["uniform"](3, 8) == [(1, 2), (2, 4), (3, 6)]
    assert LAYER_MAPS["uniform_last"](3, 8) == [(1, 2), (2, 4), (3, 8)]
    assert LAYER_MAPS["uniform"](6, 12) == LAYER_MAPS["uniform_last"](6, 12) == [(i, 2 * i) for i in range(1, 7)]


@pytest.mark.parametrize("student_depth, teacher_depth", DEPTHS)
def test_last_and_last_k(student_depth, teacher_depth):
    assert resolve("last", student_depth, teacher_depth) == [(student_depth, teacher_depth)]
    for k in range(1, min(student_depth, teacher_depth) + 1):
        pairs = resolve("last_k", student_depth, teacher_depth, k=k)
        assert len(pairs) == k and pairs[-1] == (student_depth, teacher_depth)
        assert all(t - s == teacher_depth - student_depth for s, t in pairs)


def test_pairs_and_indices_may_name_the_embeddings():
    assert resolve("pairs", 2, 4, pairs=[[0, 0], [2, 4]]) == [(0, 0), (2, 4)]
    assert resolve("indices", 3, 12, indices=[0, 1, 3]) == [(0, 0), (1, 4), (3, 12)]


@pytest.mark.parametrize(
    "name, params, student_depth, teacher_depth, message",
    [
        ("nope", {}, 2, 4, "not a registered layer map"),
        ("last_k", {}, 2, 4, "do not fit layer map 'last_k'"),
        ("last_k", {"k": 3}, 2, 4, "expected an integer 1 <= k <= 2"),
        ("last", {"k": 1}, 2, 4, "do not fit layer map 'last'"),
        ("uniform", {}, 6, 4, "student depth <= teacher depth"),
        ("uniform_last", {}, 6, 4, "student depth <= teacher depth"),
        ("pairs", {"pairs": [[1, 5]]}, 2, 4, "gives the pair (1, 5)"),
        ("pairs", {"pairs": [1, 2]}, 2, 4, "not a list of index pairs"),
        ("pairs", {"pairs": [[True, 1]]}, 2, 4, "not a list of index pairs"),  # YAML's true is no layer 1
        ("indices", {"indices": [True]}, 2, 4, "not a list of layer indices"),
        ("last_k", {"k": True}, 2, 4, "expected an integer 1 <= k <= 2"),
        ("indices", {"indices": [3]}, 2, 4, "gives the pair (3, 6)"),
        ("indices", {"indices": []}, 2, 4, "gives no layer pairs"),
    ],
)
def test_bad_maps_are_one_line_config_errors(name, params, student_depth, teacher_depth, message):
    with pytest.raises(DistilyConfigError, match="layer_map") as err:
        resolve(name, student_depth, teacher_depth, **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_attention_components_refuse_index_zero():
    with pytest.raises(DistilyConfigError, match="attention has no index 0"):
        resolve("pairs", 2, 4, allow_embeddings=False, pairs=[[0, 0]])


def test_a_registered_map_is_used_by_name():
    LAYER_MAPS["first"] = lambda student_depth, teacher_depth: [(1, 1)]
    try:
        assert resolve("first", 3, 9) == [(1, 1)]
    finally:
        del LAYER_MAPS["first"]
