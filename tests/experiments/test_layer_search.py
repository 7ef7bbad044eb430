"""Layer-selection search: distinct candidates from named maps and single pairs, ranked by held-out loss."""

import logging

import pytest
import yaml
from rich.console import Console
from transformers import Gemma3Config

from distily.commands.sweep import run_sweep
from distily.errors import DistilyConfigError
from distily.experiments.sweep_file import load_sweep
from distily.reporting.sweep import print_ranking


def search_file(tmp_path, base, **layer_search) -> str:
    spec = {
        "base": base,
        "output_dir": str(tmp_path / "search"),
        "set": {"hidden_states_weight": 1.0},
        "layer_search": layer_search,
        "metric": "student.after_lm_loss",
        "metric_goal": "min",
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture
def base(teacher_dirs, run_values):
    """A 4-layer Llama teacher and a 2-layer student."""
    values = run_values(
        teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=1, max_eval_samples=4
    )
    values.pop("output_dir")
    return values


def _pairs(run) -> list:
    return run.overrides["hidden_states_layer_map_kwargs"]["pairs"]


def test_candidates_are_the_distinct_pairs_of_maps_and_single_pairs(base, tmp_path):
    path = search_file(tmp_path, base, single_pairs={"student": [2], "teacher": [2, 4]})
    runs = load_sweep(path).runs
    # all = uniform = uniform_last = (1,2) (2,4); last = (2,4); the single pair (2,4) is last's again
    assert [run.name.rsplit("-", 1)[0] for run in runs] == ["all", "last", "pair-2-2"]
    assert [_pairs(run) for run in runs] == [[[1, 2], [2, 4]], [[2, 4]], [[2, 2]]]
    assert all(run.overrides["hidden_states_layer_map"] == "pairs" for run in runs)


def test_a_map_that_does_not_fit_is_left_out_with_a_warning(base, tmp_path, caplog):
    deeper = {**base, "student_config_overrides": {"num_hidden_layers": 6}, "student_init": "random"}
    with caplog.at_level(logging.WARNING):
        runs = load_sweep(search_file(tmp_path, deeper, maps=["uniform", {"last_k": {"k": 2}}])).runs
    assert [run.name.rsplit("-", 1)[0] for run in runs] == ["last_k-k=2"]
    assert "uniform" in caplog.text and "left out" in caplog.text
    with pytest.raises(DistilyConfigError, match="layer_search has no candidate that fits"):
        load_sweep(search_file(tmp_path, deeper, maps=["uniform"]))


def test_a_search_needs_a_teacher_to_read_the_depths_from(base, tmp_path):
    with pytest.raises(DistilyConfigError, match="teacher_model_name_or_path is not set"):
        load_sweep(search_file(tmp_path, {**base, "teacher_model_name_or_path": None}))


def test_a_multimodal_teachers_depth_is_its_language_models(base, tmp_path):
    """A multimodal teacher (a Gemma 3 config of 6 text layers) used to be refused: the student's config was built
    from the multimodal config, which has no num_hidden_layers to override, where the run builds it from the
    language model's."""
    text = dict(model_type="gemma3_text", num_hidden_layers=6, hidden_size=64, intermediate_size=128,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    Gemma3Config(text_config=text, vision_config=vision).save_pretrained(tmp_path / "gemma3")
    teacher = {**base, "teacher_model_name_or_path": str(tmp_path / "gemma3")}
    runs = load_sweep(search_file(tmp_path, teacher, maps=["all", "last"])).runs
    assert [_pairs(run) for run in runs] == [[[1, 3], [2, 6]], [[2, 6]]]


@pytest.mark.parametrize(
    "search, message",
    [
        ({"maps": ["nearest"]}, "'nearest' is not a registered layer map"),
        ({"maps": "all"}, "layer_search.maps='all' is not a list"),
        ({"maps": [3]}, "layer_search.maps entry 3 is not a map name"),
        ({"single_pairs": {"student": [9]}}, "single_pairs.student=\\[9\\] is not 'all' or a list"),
        ({"single_pairs": {"teacher": [True]}}, "single_pairs.teacher=\\[True\\] is not 'all' or a list"),  # was 1
        ({"single_pairs": [1, 2]}, "single_pairs=\\[1, 2\\] is not a mapping"),
        ({"component": "attentions", "maps": ["last"]}, "attentions_weight is 0"),
    ],
)
def test_layer_search_errors_name_the_bad_value(search, message, base, tmp_path):
    with pytest.raises(DistilyConfigError, match=message):
        load_sweep(search_file(tmp_path, base, **search))


def test_layer_search_ranks_the_candidates_by_heldout_loss(base, tmp_path):
    trained = {**base, "warmup_steps": 0, "learning_rate": 1e-2}  # the one step moves the student (no warmup)
    sweep = load_sweep(search_file(tmp_path, trained, maps=["all", "last"],
                                   single_pairs={"student": [1], "teacher": [1]}))
    rows = run_sweep(sweep)
    losses = [row["student.after_lm_loss"] for row in rows]
    assert [row["status"] for row in rows] == ["finished"] * 3 and losses == sorted(set(losses))  # three values
    assert [row["rank"] for row in rows] == [1, 2, 3]

    console = Console(record=True, width=200)
    print_ranking(sweep, rows, console)
    printed = console.export_text()
    positions = [printed.index(row["name"]) for row in rows]
    assert positions == sorted(positions)
    results = (tmp_path / "search" / "results.md").read_text()
    assert results.index(rows[0]["name"]) < results.index(rows[-1]["name"])
