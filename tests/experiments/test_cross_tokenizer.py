"""experiments/cross_tokenizer.py end to end at a toy scale: teacher, student tokenizer, students, report."""

import json

import pytest

pytest.importorskip("distily.evaluation.bytes")  # bits per byte (#18, built beside this script)

import cross_tokenizer as script  # noqa: E402
from distily.data.tokenizer import train_sentencepiece_bpe  # noqa: E402
from distily.evaluation.run import named_eval_sets  # noqa: E402
from tiny import make_documents, wikitext_like  # noqa: E402
from wikitext import heldout_blocks  # noqa: E402


@pytest.mark.slow
def test_cross_tokenizer_writes_its_table_plot_and_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.txt").write_text(wikitext_like(make_documents(300, seed=2)))
    (data / "test.txt").write_text(wikitext_like(make_documents(120, seed=3)))
    report, numbers = tmp_path / "docs" / "cross.md", tmp_path / "cross.json"
    toy = ["--vocab_size", "300", "--student_vocab_size", "350", "--hidden_size", "64", "--teacher_layers", "2",
           "--student_layers", "1", "--seq_length", "32", "--batch_size", "4", "--teacher_steps", "2",
           "--student_steps", "2", "--eval_every", "1", "--eval_blocks", "4", "--transfer_fraction", "0.3"]  # fmt: skip
    results = script.main(["--data", str(data), "--work_dir", str(tmp_path / "work"), "--report", str(report),
                           "--json", str(numbers), *toy])
    expected = [name for name, _, _ in script.VARIANTS]
    assert list(results["students"]) == expected
    assert 0 < results["teacher"]["bits_per_byte"] < 20
    for row in results["students"].values():  # before training, then every --eval_every steps
        assert [point["step"] for point in row["curve"]] == [0, 1, 2]
        assert all(0 < point["bits_per_byte"] < 20 for point in row["curve"])

    # the baseline is the cross-entropy student's best checkpoint on the validation set (not the test set it is
    # reported on); every student is compared with it from there on
    baseline = results["students"]["cross-entropy"]["curve"]
    assert all(0 < point["validation_bits_per_byte"] < 20 for point in baseline)
    best = min(baseline[1:], key=lambda point: point["validation_bits_per_byte"])
    assert results["baseline_best_step"] == best["step"] and results["students"]["cross-entropy"]["vs_baseline"] == 1.0
    later = [str(step) for step in (1, 2) if step >= best["step"]]
    mapped = {str(point["step"]): point["bits_per_byte"] for point in results["students"]["mapped"]["curve"]}
    assert results["over_baseline_best"]["mapped"] == pytest.approx(
        {step: mapped[step] / best["bits_per_byte"] for step in later})
    worst = {name: max(ratios.values())
             for name, ratios in results["over_baseline_best"].items() if name != "cross-entropy"}
    assert (results["best"]["name"] == min(worst, key=worst.get)
            and results["best"]["worst"] == pytest.approx(min(worst.values())))

    assert json.loads(numbers.read_text())["students"].keys() == set(expected)
    table = report.read_text()
    assert all(f"| {name} |" in table for name in expected) and "cross_tokenizer.py --data" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_students_are_evaluated_on_every_held_out_block_as_the_teacher(tmp_path):
    """With ``--eval_blocks 0`` the teacher reads every block of the test and validation text; so do the students'
    runs, not a sample of ``max_eval_samples`` blocks."""
    files = {name: tmp_path / f"{name}.txt" for name in ("heldout", "validation", "transfer")}
    for seed, path in enumerate(files.values()):
        path.write_text(wikitext_like(make_documents(120, seed=seed)))
    tokenizer = train_sentencepiece_bpe(make_documents(50, seed=5), 300)
    args = script.parse_args(["--work_dir", str(tmp_path), "--seq_length", "16"])
    prepared = {"teacher_dir": tmp_path / "teacher", "student_dir": tmp_path / "student", "files": files}
    sweep = script.student_sweep(args, prepared)
    eval_sets = named_eval_sets(sweep.config(sweep.runs[0]), tokenizer, args.seq_length)
    for name, path in (("unseen", files["heldout"]), ("validation", files["validation"])):
        everything = heldout_blocks(path, tokenizer, args.seq_length, tmp_path / "cache", 0)
        assert len(everything) > 64 and len(eval_sets[name]) == len(everything), name
