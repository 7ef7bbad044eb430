"""Training from a store (``teacher_source: recorded``): equal to the live teacher at k = vocabulary,
lowers the KL at small k, reads recorded hidden states, and refuses a store that does not fit the run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.config import parse_config, parse_record_config
from distily.data.framing import INPUT_IDS
from distily.data.store import MANIFEST, MANIFEST_CHECKSUM, ROW_NLL, manifest_checksum, read_manifest
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.models import identity
from distily.models.identity import WEIGHTS_DIGEST, sampled_weights_digest, weights_sha256
from distily.models.teacher import load_tokenizer
from distily.recording.run import run_recording
from distily.teachers.recorded import RecordedTeacher
from distily.training.distill import run_distillation
from store_values import store_values
from tiny import VOCAB, make_documents, make_tokenizer, save_tiny_model, tiny_config, write_jsonl


@pytest.fixture(scope="module")
def recorded(teacher_dirs, text_file, tmp_path_factory):
    """A k=16 store of the tiny Llama teacher with hidden states 2 and 4 recorded."""
    root = tmp_path_factory.mktemp("recorded")
    values = store_values(teacher_dirs["llama"], text_file, root, record_hidden_states_layers=[2, 4])
    run_recording(parse_record_config(**values))
    return values


def _train(values, tmp_path, **overrides):
    run = {**values, "output_dir": str(tmp_path / "run"), "teacher_source": "recorded", **overrides}
    return run_distillation(parse_config(**{key: value for key, value in run.items() if value is not None}))


def test_training_from_a_full_vocabulary_store_matches_the_live_teacher(teacher_dirs, text_file, tmp_path):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, record_top_k=VOCAB, learning_rate=1e-3)
    run_recording(parse_record_config(**values))
    live = run_distillation(parse_config(**{**values, "output_dir": str(tmp_path / "live")}))
    from_store = _train(values, tmp_path)
    assert from_store["train"]["train_loss"] == pytest.approx(live["train"]["train_loss"], rel=2e-3)
    for key in ("before_loss_logits", "after_loss_logits", "after_kl_to_teacher", "after_lm_loss"):
        assert from_store["student"][key] == pytest.approx(live["student"][key], rel=2e-3), key
    assert from_store["student"]["after_top1_agreement"] == pytest.approx(live["student"]["after_top1_agreement"],
                                                                          abs=0.02)
    assert from_store["teacher"]["lm_loss"] == pytest.approx(live["teacher"]["lm_loss"], rel=1e-5)
    assert from_store["teacher"]["bits_per_byte"] == pytest.approx(live["teacher"]["bits_per_byte"], rel=1e-5)
    assert from_store["teacher"]["source"] == "recorded"


@pytest.mark.parametrize("recorded_limit", [None, 100, 42, 16])  # 42: all the held-out rows; 16: a sample of them
def test_fewer_held_out_rows_than_the_store_holds_are_those_a_live_run_samples(teacher_dirs, text_file, tmp_path,
                                                                                recorded_limit):
    """A store of every held-out row (none sampled: they are in packing order) evaluated with a smaller
    max_eval_samples gave its first rows, where a live run samples them at random (best-fit packing puts the longest
    documents first): the two evaluated other sequences, and the teacher's held-out loss differed. A store recorded
    with max_eval_samples equal to the number of held-out rows was taken for a sample (its manifest now says)."""
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, max_eval_samples=recorded_limit,
                          packing="documents")
    assert run_recording(parse_record_config(**values))["packed_rows"]["eval"] == 42
    config = parse_config(**{**values, "max_eval_samples": 8, "teacher_source": "recorded"})
    stored = RecordedTeacher(config).datasets(AutoModelForCausalLM.from_config(tiny_config("llama"))).eval
    live = build_datasets(config.data, load_tokenizer(teacher_dirs["llama"], "teacher"), 32, config.training.split_seed)
    assert [stored[i][INPUT_IDS].tolist() for i in range(len(stored))] == [row.tolist() for row in live.eval[INPUT_IDS]]
    assert torch.equal(stored.row_values(ROW_NLL), torch.stack([stored[i][ROW_NLL] for i in range(len(stored))]))


def test_split_settings_left_unset_are_the_stores_and_the_run_reports_them(teacher_dirs, text_file, tmp_path, caplog):
    """A store drawn with seed 7, eval_fraction 0.1 and the first 24 train rows, trained from with seed 3 and neither
    of the others: the store's rows applied, but run_settings.json and the card said eval_fraction 0.05, all rows and
    seed 3 alone (and seed 3 was refused). The run now records how its rows were drawn (data_seed 7: the rows and
    their order; seed 3 the rest), and a live run with those settings trains the same."""
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, seed=7, eval_fraction=0.1, record_top_k=VOCAB,
                          learning_rate=1e-3)
    run_recording(parse_record_config(**values))
    run = {**values, "seed": 3, "eval_fraction": None, "max_samples": None}  # None: left out
    with caplog.at_level("INFO", logger="distily.teachers.store_split"):
        stored = _train(run, tmp_path)
    assert [record.getMessage() for record in caplog.records if record.name == "distily.teachers.store_split"] == [
        "eval_fraction: the store's 0.1 applies (its rows were drawn with it)",
        "max_samples: the store's 24 train rows",
        "data_seed: the store's 7 applies (its rows were drawn with it, and their order follows it); seed=3 seeds the "
        "rest",
    ]
    settings = json.loads((tmp_path / "run" / "run_settings.json").read_text())["settings"]
    drawn = {key: settings[key] for key in ("eval_fraction", "max_samples", "seed", "data_seed")}
    assert drawn == {"eval_fraction": 0.1, "max_samples": 24, "seed": 3, "data_seed": 7}
    card = (tmp_path / "run" / "README.md").read_text()
    assert "0.1 of its documents held out for evaluation (drawn with seed 7)" in card
    live = run_distillation(parse_config(**{**values, **drawn, "output_dir": str(tmp_path / "live")}))
    assert stored["train"]["train_loss"] == pytest.approx(live["train"]["train_loss"], rel=2e-3)
    for key in ("before_kl_to_teacher", "after_kl_to_teacher", "after_lm_loss"):
        assert stored["student"][key] == pytest.approx(live["student"][key], rel=2e-3), key
    assert (stored["train_sequences"], stored["eval_sequences"]) == (live["train_sequences"], live["eval_sequences"])


def test_a_store_recorded_before_manifests_gave_packed_rows_opens_as_before(teacher_dirs, text_file, tmp_path):
    """No packed_rows: a store recorded without max_eval_samples holds every held-out row (sampled as a live run)."""
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, max_eval_samples=None)
    run_recording(parse_record_config(**values))
    manifest_path = tmp_path / "store" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["packed_rows"]
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))
    config = parse_config(**{**values, "max_eval_samples": 8, "teacher_source": "recorded"})
    stored = RecordedTeacher(config).datasets(AutoModelForCausalLM.from_config(tiny_config("llama"))).eval
    live = build_datasets(config.data, load_tokenizer(teacher_dirs["llama"], "teacher"), 32, config.training.split_seed)
    assert [stored[i][INPUT_IDS].tolist() for i in range(len(stored))] == [row.tolist() for row in live.eval[INPUT_IDS]]


def test_record_backed_training_lowers_the_kl_to_the_teacher(recorded, tmp_path):
    metrics = _train(recorded, tmp_path, max_steps=30, learning_rate=3e-3, warmup_steps=2,
                     teacher_model_name_or_path=None, student_init="random")
    student = metrics["student"]
    assert student["after_kl_to_teacher"] < 0.8 * student["before_kl_to_teacher"], student
    assert student["after_loss_logits"] == pytest.approx(student["after_kl_to_teacher"], rel=1e-4)
    assert metrics["train_sequences"] == 24 and metrics["eval_sequences"] == 8


def test_hidden_state_distillation_reads_recorded_layers(recorded, tmp_path):
    metrics = _train(
        recorded, tmp_path, hidden_states_weight=1.0, hidden_states_layer_map="pairs",
        hidden_states_layer_map_kwargs={"pairs": [[1, 2], [2, 4]]},
    )
    assert metrics["student"]["after_loss_hidden_states"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_states_weight": 1.0, "hidden_states_layer_map": "all"}, None),  # teacher layers 2 and 4
        ({"eval_fraction": 0.2}, r"eval_fraction=0.2 would draw other rows than the 0.05 teacher_store=.* was "
                                 r"recorded with; expected no eval_fraction \(the store's then\), or a store recorded"),
        ({"data_seed": 7}, r"data_seed=7 would draw other rows than the 42 teacher_store=.* was recorded with; "
                           r"expected data_seed=42 or none \(any seed then: it seeds the initialisation"),
        ({"seed": 7, "data_seed": 42}, None),  # another initialisation, the store's rows
        ({"max_samples": 100}, r"max_samples=100 asks for more than the 24 train rows teacher_store=.* holds "
                               r"\(max_samples=24 when recorded\); expected max_samples <= 24 or unset"),
        ({"max_eval_samples": 100}, r"max_eval_samples=100 asks for more than the 8 eval rows teacher_store="),
        ({"hidden_states_weight": 1.0, "hidden_states_layer_map": "pairs",
          "hidden_states_layer_map_kwargs": {"pairs": [[0, 0], [1, 1], [2, 3]]}},
         r"hidden_states_layer_map uses teacher hidden states \[0, 1, 3\], but teacher_store=.* recorded \[2, 4\]; "
         r"expected record_hidden_states_layers to include them"),
        ({"attentions_weight": 1.0}, r"the attentions component reads the live teacher's internals"),
        ({"attention_relations_weight": 1.0}, r"the attention_relations component reads the live teacher's internals"),
        ({"logits_loss": "mse"}, r"logits_loss='mse' has no sparse form for a recorded teacher"),
        ({"max_seq_length": 16}, r"max_seq_length=16 differs from the 32 teacher_store=.* was recorded with"),
        ({"logits_temperature": 2.0},
         r"logits_temperature=2.0 differs from the 1.0 teacher_store=.* was recorded with"),
        ({"teacher_model_name_or_path": None},
         r"the student copies teacher weights .* teacher_model_name_or_path is needed with a recorded teacher too"),
    ],
)
def test_a_store_that_does_not_fit_the_run_is_a_clear_error(recorded, tmp_path, overrides, message):
    if message is None:
        _train(recorded, tmp_path, max_steps=1, **overrides)
        return
    with pytest.raises(DistilyConfigError, match=message):
        _train(recorded, tmp_path, **overrides)


def test_other_documents_are_a_provenance_error(recorded, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", make_documents(50, seed=7))
    with pytest.raises(DistilyConfigError, match=r"dataset_name='.*other.jsonl' holds other documents than the"):
        _train(recorded, tmp_path, dataset_name=other)
    metrics = _train(recorded, tmp_path, dataset_name=None, max_steps=1)  # no dataset: the store's
    assert metrics["train_sequences"] == 24


def test_another_tokenizer_or_teacher_is_a_provenance_error(recorded, tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    other_tokenizer = save_tiny_model(tmp_path / "tok", "llama", tokenizer)
    with pytest.raises(DistilyConfigError, match=r"the tokenizer of teacher_model_name_or_path=.* is not the one"):
        _train(recorded, tmp_path, teacher_model_name_or_path=other_tokenizer)
    other_weights = save_tiny_model(tmp_path / "weights", "llama", make_tokenizer(), seed=1)
    with pytest.raises(DistilyConfigError, match=r"is not the teacher teacher_store=.* was recorded with .*"
                                                 r"teacher_weights_digest differs"):
        _train(recorded, tmp_path, teacher_model_name_or_path=other_weights)


def test_a_teacher_named_beside_a_store_must_be_the_recorded_one(recorded, tmp_path):
    """Another checkpoint with the teacher's tokenizer, named with a student that copies no weights: the run trained on
    the store and its model card said it was distilled from the checkpoint named. A copy of the recorded teacher
    elsewhere is the same teacher."""
    other_weights = save_tiny_model(tmp_path / "weights", "llama", make_tokenizer(), seed=1)
    with pytest.raises(DistilyConfigError, match=r"^teacher_model_name_or_path=.* is not the teacher teacher_store=.* "
                                                 r"was recorded with .*teacher_weights_digest differs\); expected"):
        _train(recorded, tmp_path, teacher_model_name_or_path=other_weights, student_init="random")
    copy = shutil.copytree(recorded["teacher_model_name_or_path"], tmp_path / "copy")
    config = parse_config(**{**recorded, "teacher_source": "recorded", "teacher_model_name_or_path": str(copy)})
    RecordedTeacher(RecordedTeacher.settled_config(config))


def test_a_local_teacher_is_checked_by_the_stores_sampled_digest_and_an_older_store_by_every_byte(
        recorded, tmp_path, monkeypatch):
    """Naming a local teacher beside a store hashed all its weight files at every start (1.0-1.5 s for a checkpoint of
    507 MB here, minutes for a real teacher); the manifest now holds their sampled digest, read in milliseconds. A
    store recorded before it did is checked by every byte, as before: the same teacher passes, another is refused."""
    hashed = []
    monkeypatch.setattr(identity, "weights_sha256", lambda directory: hashed.append(directory) or full(directory))
    full = weights_sha256
    teacher = recorded["teacher_model_name_or_path"]
    assert read_manifest(Path(recorded["teacher_store"]) / MANIFEST)[WEIGHTS_DIGEST] == sampled_weights_digest(teacher)
    config = parse_config(**{**recorded, "teacher_source": "recorded"})
    RecordedTeacher(RecordedTeacher.settled_config(config))
    assert hashed == []
    older = shutil.copytree(recorded["teacher_store"], tmp_path / "older")
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest[WEIGHTS_DIGEST], manifest[MANIFEST_CHECKSUM]
    (older / MANIFEST).write_text(json.dumps({**manifest, MANIFEST_CHECKSUM: manifest_checksum(manifest)}))
    config = parse_config(**{**recorded, "teacher_source": "recorded", "teacher_store": str(older)})
    RecordedTeacher(RecordedTeacher.settled_config(config))
    assert hashed == [teacher]
    other_weights = save_tiny_model(tmp_path / "weights", "llama", make_tokenizer(), seed=1)
    with pytest.raises(DistilyConfigError, match=r"teacher_weights_sha256 differs"):
        _train(recorded, tmp_path, teacher_store=str(older), teacher_model_name_or_path=other_weights)


def test_a_student_of_another_width_is_an_error(recorded, tmp_path):
    with pytest.raises(DistilyConfigError,
                       match=r"the student has 384 logits but teacher_store=.* was recorded over the "
                       r"teacher's 320"):
        _train(recorded, tmp_path, student_init="random", student_config_overrides={"vocab_size": 384})


def test_a_corrupted_store_stops_training(recorded, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(recorded["teacher_store"], copy)
    shard = copy / "train-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DistilyConfigError, match=r"train-00002.safetensors' has 100 bytes"):
        _train(recorded, tmp_path, teacher_store=str(copy))


def _unique_parameters(model) -> int:
    """Parameters counted by storage: a tensor shared by two modules (tied embedding and LM head) once."""
    return sum({p.data_ptr(): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}.values())


def test_tied_embeddings_are_counted_once_and_a_recorded_teacher_has_no_memory_figure(teacher_dirs, text_file,
                                                                                        tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])  # GPT-2 ties its LM head to the embedding
    assert teacher.lm_head.weight is teacher.get_input_embeddings().weight
    expected = _unique_parameters(teacher)
    assert expected < sum(p.numel() for _, p in teacher.named_parameters(remove_duplicate=False))
    values = store_values(teacher_dirs["gpt2"], text_file, tmp_path, max_steps=1)
    run_recording(parse_record_config(**values))
    live = run_distillation(parse_config(**{**values, "output_dir": str(tmp_path / "live")}))
    with_weights = _train(values, tmp_path / "weights")  # the teacher loaded to initialise the student, then dropped
    without = _train(values, tmp_path / "config", teacher_model_name_or_path=None, student_init="random")  # meta only
    runs = {"live": live, "weights/run": with_weights, "config/run": without}
    for output_dir, metrics in runs.items():
        assert metrics["teacher"]["parameters"] == expected, output_dir
        student = AutoModelForCausalLM.from_pretrained(tmp_path / output_dir)
        assert metrics["student"]["parameters"] == _unique_parameters(student)
    assert live["teacher"]["memory_bytes"] > 0
    assert "memory_bytes" not in with_weights["teacher"] and "memory_bytes" not in without["teacher"]


def test_another_document_delimiter_is_named(teacher_dirs, tmp_path):
    """The same .txt file cut into other documents gave only 'holds other documents than' the same file, with two
    fingerprints; the setting that differs is named now."""
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(document.replace(". ", ".\n") for document in make_documents(80)) + "\n")
    values = store_values(teacher_dirs["llama"], str(text), tmp_path / "store")
    run_recording(parse_record_config(**values))
    with pytest.raises(DistilyConfigError, match=r"^text_document_delimiter='line' differs from the 'blank_line' "
                                                 r"teacher_store=.* was recorded with; expected 'blank_line'"):
        _train(values, tmp_path, text_document_delimiter="line")
