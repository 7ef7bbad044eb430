"""experiments/transfer_set.py end to end at a toy scale: splits, teacher, samples, students, curves, report."""

import json
from pathlib import Path

import datasets
import pytest
from transformers import PreTrainedTokenizerFast

import transfer_set as script
from tiny import make_documents, wikitext_like
from wikitext import read_articles

STEPS, EVERY, BATCH, SEQ = 4, 2, 4, 32


@pytest.mark.slow
def test_transfer_set_splits_trains_evaluates_and_reports(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.txt").write_text(wikitext_like(make_documents(300, seed=2), title="Valid"))
    (data / "test.txt").write_text(wikitext_like(make_documents(100, seed=3), title="Test"))
    work, report, numbers = tmp_path / "work", tmp_path / "docs" / "transfer.md", tmp_path / "transfer.json"
    toy = ["--vocab_size", "300", "--hidden_size", "64", "--teacher_layers", "2", "--student_layers", "1",
           "--seq_length", str(SEQ), "--batch_size", str(BATCH), "--teacher_steps", "2",
           "--student_steps", str(STEPS), str(2 * STEPS),
           "--eval_every", str(EVERY), "--eval_blocks", "6", "--student_inits", "random"]  # fmt: skip
    results = script.main(["--data", str(data), "--work_dir", str(work), "--report", str(report),
                           "--json", str(numbers)] + toy)

    # splits: by article, none shared; the held-out set is the tail of test.txt, in no one's text
    splits = results["splits"]
    titles = {name: set(split["titles"]) for name, split in splits.items() if "titles" in split}
    test_titles = [article.split("\n")[0].strip() for article in read_articles(data / "test.txt")]
    assert splits["heldout"]["titles"] == test_titles[len(test_titles) - len(titles["heldout"]):]
    assert 0.1 < splits["heldout"]["characters"] / len((data / "test.txt").read_text()) <= 0.2
    assert not titles["heldout"] & titles["teacher"]
    assert titles["teacher_own_heldout"] <= titles["teacher"]
    assert titles["10pct"] <= titles["30pct"] <= titles["teacher"] - titles["teacher_own_heldout"]
    validation = {article.split("\n")[0].strip() for article in read_articles(work / "data" / "validation.txt")}
    assert validation == titles["teacher_own_heldout"]  # the baseline's checkpoint is chosen on it, not on the test
    teacher_text = (work / "data" / "teacher.txt").read_text()
    assert not any(article in teacher_text for article in read_articles(work / "data" / "heldout.txt"))
    longest = max(len(article) for article in read_articles(work / "data" / "teacher.txt"))
    for name, fraction in (("10pct", 0.1), ("30pct", 0.3)):  # as near the fraction as whole articles come
        assert abs(splits[name]["characters"] - fraction * splits["teacher"]["characters"]) <= longest / 2

    # the students read the transfer set's articles, end-of-text between them, as blocks: nothing else
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "teacher")
    blocks = datasets.Dataset.from_json(str(work / "data" / "transfer-10pct.jsonl"))
    assert len(blocks) == splits["10pct"]["blocks"] and {len(ids) for ids in blocks["input_ids"]} == {SEQ}
    decoded = tokenizer.decode(sum(blocks["input_ids"], [])).split(tokenizer.eos_token)
    assert {piece.split("\n")[0].strip() for piece in decoded[:-1]} <= titles["10pct"]
    with_samples = datasets.Dataset.from_json(str(work / "data" / "transfer-10pct+samples.jsonl"))
    assert with_samples["input_ids"][: len(blocks)] == blocks["input_ids"]
    assert (len(with_samples) == len(blocks) + splits["samples"]["blocks"]
            and splits["samples"]["sequences"] == len(blocks))

    # every student of a transfer set at the same budgets (the 30% set twice the steps), the tokens it read at
    # each; its curve ends where its run's final evaluation does; the held-out set measured against each run's data
    expected = {"random-10pct": [name for name, _, _ in script.SIGNALS], "random-30pct": ["hard-labels", "logits"]}
    assert {name: list(group["students"]) for name, group in results["groups"].items()} == expected
    for name, group in results["groups"].items():
        steps = STEPS if name == "random-10pct" else 2 * STEPS
        budgets = list(range(0, steps + 1, EVERY))
        for signal, row in group["students"].items():
            assert [point["step"] for point in row["curve"]] == budgets, (name, signal)
            assert [point["tokens"] for point in row["curve"]] == [step * BATCH * SEQ for step in budgets]
            assert row["tokens_seen"] == steps * BATCH * SEQ
            assert row["heldout_overlap"]["sequences"] == 6
            metrics = json.loads((work / "students" / Path(row["run_dir"]).name / "metrics.json").read_text())
            assert row["curve"][-1]["perplexity"] == pytest.approx(metrics["student"]["after_unseen_perplexity"],
                                                                   rel=1e-5)
            assert metrics["teacher"]["unseen_perplexity"] == pytest.approx(results["teacher"]["perplexity"], rel=1e-5)
            assert row["curve"][-1]["validation_perplexity"] == pytest.approx(
                metrics["student"]["after_validation_perplexity"], rel=1e-5)

        # the baseline's reported point is its best checkpoint on the validation set; the ratios are against its
        # test perplexity there
        baseline = group["students"]["hard-labels"]["curve"]
        best = min(baseline[1:], key=lambda point: point["validation_perplexity"])
        assert (group["baseline_best_step"], group["baseline_best_perplexity"]) == (best["step"], best["perplexity"])
        later = [step for step in budgets if step >= best["step"]]
        logits = {point["step"]: point["perplexity"] for point in group["students"]["logits"]["curve"]}
        assert group["over_baseline_best"]["logits"] == pytest.approx(
            {str(s): logits[s] / best["perplexity"] for s in later})
        worst = max(logits[s] for s in later) / best["perplexity"]
        assert group["goals"]["logits_over_baseline_best"] == {"limit": 0.85, "worst": pytest.approx(worst),
                                                               "met": worst <= 0.85}
    ternary = results["groups"]["random-10pct"]["ternary_over_full_precision"]
    best_step = results["groups"]["random-10pct"]["baseline_best_step"]
    assert set(ternary) == {str(step) for step in range(0, STEPS + 1, EVERY) if step >= best_step}

    assert json.loads(numbers.read_text())["groups"].keys() == expected.keys()
    table = report.read_text()
    assert "transfer_set.py --data" in table and all(f"| {name} |" in table for name in expected["random-10pct"])
    assert table.count("| steps | tokens |") == 2 and "Logit-distilled student / baseline" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_the_baseline_checkpoint_is_chosen_on_validation_and_reported_on_test():
    """Choosing on the test set would report the baseline's luckiest test point: here validation is lowest at step
    2, test at step 4, so the baseline is step 2's test perplexity and the students are compared from step 2 on."""
    def curve(test: list[float], validation: list[float]) -> dict:
        return {"curve": [{"step": step, "tokens": 10 * step, "perplexity": t, "validation_perplexity": v}
                          for step, t, v in zip((0, 2, 4, 6), test, validation)]}

    students = {"hard-labels": curve([900, 60, 50, 70], [900, 55, 65, 80]),
                "logits": curve([900, 48, 45, 44], [900, 50, 46, 45])}
    found = script.comparison(students)
    assert (found["baseline_best_step"], found["baseline_best_perplexity"], found["baseline_overfits"]) == (2, 60, True)
    assert found["over_baseline_best"]["logits"] == {"2": 48 / 60, "4": 45 / 60, "6": 44 / 60}
    assert found["goals"]["logits_over_baseline_best"] == {"limit": 0.85, "worst": 0.8, "met": True}


def test_goal_lines_start_at_the_baseline_best_budget_in_any_order_of_the_steps():
    """The ratios are keyed by steps as text; read back from JSON with sorted keys, "16" comes before "8": the line
    must still quote the baseline's best budget (step 8) first."""
    def curve(test: list[float], validation: list[float]) -> dict:
        return {"curve": [{"step": step, "tokens": 10 * step, "perplexity": t, "validation_perplexity": v}
                          for step, t, v in zip((0, 8, 16, 24), test, validation)]}

    students = {"hard-labels": curve([900, 60, 50, 70], [900, 55, 65, 80]),
                "logits": curve([900, 48, 45, 44], [900, 50, 46, 45])}
    group = json.loads(json.dumps(script.comparison(students), sort_keys=True))
    assert list(group["over_baseline_best"]["logits"]) == ["16", "24", "8"]
    logits_line = script.goal_lines(group)[0]
    assert logits_line.startswith("- Logit-distilled student / baseline: 0.80x at the baseline's best budget, "
                                  "0.73x to 0.80x from there on"), logits_line
