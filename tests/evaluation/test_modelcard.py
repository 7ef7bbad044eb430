"""The model card parses with huggingface_hub, carries the metrics and tags, and never claims a fine-tune."""

import dataclasses
import re

import pytest
import yaml
from huggingface_hub import ModelCard

from distily.config import parse_config
from distily.evaluation.harness import task_results
from distily.metrics import FramingMetrics, RecordingSource
from distily.objectives.objective import build_objective
from distily.reporting.model_card import build_model_card, non_default_config
from tiny import tiny_config


def local_file(tmp_path, name: str) -> str:
    """An empty file at ``tmp_path / name``: a local eval set the config reads (a missing one is refused)."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


def card_for(tmp_path, run_metrics, teacher="gpt2", bitnet=None, **values):
    config = parse_config(
        teacher_model_name_or_path=teacher,
        eval_datasets={"recent": local_file(tmp_path, "data/recent.jsonl")},
        lm_eval_tasks=["hellaswag"],
        output_dir=str(tmp_path / "run"),
        **{"dataset_name": "wikimedia/wikipedia", "dataset_config_name": "20231101.en", "hidden_states_weight": 0.5,
           "lm_eval_limit": 100, "student_config_overrides": {"num_hidden_layers": 2}, **values},
    )
    objective = build_objective(config.objective, tiny_config("llama"), tiny_config("llama", layers=2), 320)
    card = build_model_card(config, run_metrics(bitnet), objective, "tiny-student", ["plots/losses.png"])
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path), config


def front_matter(card: ModelCard) -> dict:
    """The YAML between the card's first two ``---`` lines, parsed back as the Hub reads it."""
    text = str(card)
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_card_parses_and_carries_the_metrics_and_tags(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics)
    data = card.data
    assert {"distily", "distillation"} <= set(data.tags)
    assert "bitnet" not in data.tags
    assert data.datasets == ["wikimedia/wikipedia"]
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("wikimedia/wikipedia (held-out documents)", "perplexity")] == 9.025
    assert results[("recent", "kl_to_teacher")] == 0.5
    assert results[("recent", "bits_per_byte")] == 1.4
    assert results[("hellaswag (a sample: lm_eval_limit=100)", "acc")] == 0.33
    text = card.text
    assert "| heldout: perplexity | 7.39 | 30.00 | 9.03 |" in text  # the teacher's numbers beside the student's
    assert "| heldout: bits per byte (UTF-8) | 1.2000 | — | 1.3000 |" in text
    assert "unlike perplexity, it compares models whose tokenizers differ" in text
    assert "| hellaswag: acc (n=100) | 0.4100 ± 0.0100 | — | 0.3300 ± 0.0100 |" in text
    assert "`recent` 2 of 32" in text  # the overlap is reported
    assert "lm_eval_limit=100" in text and "not full benchmark scores" in text
    assert "HiddenStatesComponent" in text and "layer_pairs=" in text  # the method actually used
    assert "| layers | 4 | 2 |" in text
    assert "transformers" in text and "torch" in text and "distily distill run.yaml" in text
    assert "![plots/losses.png](plots/losses.png)" in text


def test_the_card_names_the_lm_eval_settings_that_change_scores(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, lm_eval_apply_chat_template=True,
                       lm_eval_model_args='{"think_end_token": "</think>"}')
    assert ('lm-evaluation-harness tasks ran on a sample (lm_eval_limit=100); these are not full benchmark scores '
            '(prompts rendered with the chat template; HFLM arguments `{"think_end_token": "</think>"}`)') in card.text
    plain, _ = card_for(tmp_path, run_metrics)
    assert "not full benchmark scores; n is" in plain.text


def test_the_model_index_holds_the_students_results_only(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics)
    index = front_matter(card)["model-index"]
    assert [model["name"] for model in index] == ["tiny-student"]
    values = [metric["value"] for result in index[0]["results"] for metric in result["metrics"]]
    assert sorted(values) == sorted([9.025, 1.3, 0.25, 0.8, 12.25, 1.4, 0.5, 0.33])  # the student's after training
    assert 7.389 not in values and 0.41 not in values and "of the teacher" not in yaml.safe_dump(index)


def test_a_non_finite_result_stays_out_of_the_model_index(tmp_path, run_metrics):
    """A diverged student measures NaN or infinity: the Hub's model-index takes numbers, so those stay in the
    card's table alone; the finite results are indexed as before."""
    def diverged(bitnet=None):
        metrics = run_metrics(bitnet)
        metrics.student.evaluations.update(after_perplexity=float("inf"), after_bits_per_byte=float("nan"))
        return metrics

    card, _ = card_for(tmp_path, diverged)
    text = str(card)
    values = [metric["value"] for result in front_matter(card)["model-index"][0]["results"]
              for metric in result["metrics"]]
    assert sorted(values) == sorted([0.25, 0.8, 12.25, 1.4, 0.5, 0.33])
    assert ".nan" not in text.split("---\n", 2)[1] and ".inf" not in text.split("---\n", 2)[1]


GSM8K_RAW = {  # the harness's results for a task with two filters, each with its stderr
    "results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05,
                          "exact_match,flexible-extract": 0.3, "exact_match_stderr,flexible-extract": 0.06}},
    "n-samples": {"gsm8k": {"original": 1319, "effective": 20}},
}


def test_a_filtered_metrics_stderr_is_its_plus_minus_not_a_result(tmp_path, run_metrics):
    gsm8k = task_results(GSM8K_RAW, ["gsm8k"])
    assert gsm8k == {"gsm8k": {
        "exact_match_strict-match": 0.25, "exact_match_strict-match_stderr": 0.05,
        "exact_match_flexible-extract": 0.3, "exact_match_flexible-extract_stderr": 0.06, "samples": 20,
    }}
    card, _ = card_for(tmp_path, lambda bitnet: run_metrics(bitnet).with_benchmarks(gsm8k, None))
    metrics = {(result.dataset_type, result.metric_name): result.metric_value
               for result in card.data.eval_results if result.dataset_type == "gsm8k"}
    assert metrics == {("gsm8k", "exact_match_strict-match"): 0.25, ("gsm8k", "exact_match_flexible-extract"): 0.3}
    rows = [line for line in card.text.splitlines() if line.startswith("| gsm8k:")]
    assert rows == ["| gsm8k: exact_match_strict-match (n=20) | — | — | 0.2500 ± 0.0500 |",
                    "| gsm8k: exact_match_flexible-extract (n=20) | — | — | 0.3000 ± 0.0600 |"]  # no stderr row


@pytest.mark.parametrize("packing, training_set, heldout", [
    ("stream", "3,200 packed sequences of 128 tokens (409,600 tokens).", "64 packed sequences of 128 tokens, from"),
    ("bos_blocks", "3,200 packed sequences of 128 tokens (409,600 tokens).", "64 packed sequences of 128 tokens, from"),
    ("documents", "3,200 blocks of at most 128 tokens, each holding whole documents (or pieces of longer ones) "
                  "best-fit and masked apart, so a block may be partly filled.", "64 blocks of at most 128 tokens,"),
    ("padded", "3,200 rows of at most 128 tokens, one document (or a piece of a longer one) a row.",
     "64 rows of at most 128 tokens, one document (or a piece of a longer one) a row, from"),
    ("aligned_pieces", "3,200 rows of at most 128 tokens by either model's tokenizer, one piece of a document a row.",
     "64 rows of at most 128 tokens by either model's tokenizer"),
])
def test_the_card_counts_tokens_only_where_every_row_is_full(packing, training_set, heldout, tmp_path, run_metrics):
    """Only stream and bos_blocks cut the text into full blocks; the other packings' rows are often shorter (padded
    rows are single documents), so rows times max_seq_length is no token count there."""
    packed = dataclasses.replace(run_metrics(), framing=FramingMetrics(packing))
    card, _ = card_for(tmp_path, lambda bitnet: packed)
    assert f"- Training set: {training_set}\n" in card.text
    assert f"Measured by Distily on held-out data: {heldout}" in card.text
    assert ("409,600 tokens)" in card.text) == (packing in ("stream", "bos_blocks"))


def _results_rows(text: str) -> list[str]:
    """The metric names of the card's results table (the one whose columns are the teacher and the student)."""
    lines = text.splitlines()
    start = lines.index("| metric | teacher | student (before) | student (after) |") + 2
    rows = lines[start:lines.index("", start)]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows]


@pytest.mark.parametrize("packing, differ", [("aligned_pieces", True), ("aligned_conversations", True),
                                             ("stream", False)])
def test_a_cross_tokenizer_students_results_lead_with_bits_per_byte(packing, differ, tmp_path, run_metrics):
    """A student with a tokenizer of its own (the aligned packings) is compared with its teacher per byte: per-token
    loss and perplexity do not compare them, and the card (whose results section is results.md's) used to lead
    with them."""
    packed = dataclasses.replace(run_metrics(), framing=FramingMetrics(packing))
    card, _ = card_for(tmp_path, lambda bitnet: packed)
    rows = _results_rows(card.text)
    per_byte = ["heldout: bits per byte (UTF-8)", "heldout: nats per byte (UTF-8)", "recent: bits per byte (UTF-8)"]
    assert (rows[:3] == per_byte) == differ
    assert rows[0] == (per_byte[0] if differ else "distillation loss (the objective)")
    assert "heldout: perplexity" in rows


def test_the_card_says_when_the_tokens_seen_count_padding(tmp_path, run_metrics):
    counted, _ = card_for(tmp_path, run_metrics)
    assert "100 optimizer steps (1.00 epochs), about 409,600 tokens.\n" in counted.text  # non_padding, the default
    padded, _ = card_for(tmp_path, run_metrics, include_num_input_tokens_seen="all")
    assert "100 optimizer steps (1.00 epochs), about 409,600 tokens (padding included).\n" in padded.text
    one_step = dataclasses.replace(run_metrics(), train=dataclasses.replace(run_metrics().train, global_step=1))
    single, _ = card_for(tmp_path, lambda bitnet: one_step)
    assert "Trained for 1 optimizer step (1.00 epochs)" in single.text


def test_a_dense_students_card_claims_no_relation_to_its_hub_teacher(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, teacher="openai-community/gpt2")
    meta = front_matter(card)
    assert "base_model" not in meta and "base_model_relation" not in meta  # no "Finetuned from" on the Hub
    assert meta["teacher_model"] == "openai-community/gpt2"
    assert meta["tags"] == ["distily", "distillation"]
    assert "distilled from [openai-community/gpt2](https://huggingface.co/openai-community/gpt2)" in card.text
    assert not re.search(r"fine-?tuned from|quantized from", str(card), re.IGNORECASE)


def test_the_card_says_what_the_student_learned_from_the_teacher(tmp_path, run_metrics):
    """The card said "trained to reproduce the teacher's output distribution (knowledge distillation)" of every
    student: of one that learned its hidden states alone too, and of the hard-label baseline of
    recipes/logits-vs-hidden-states.yaml, which no loss taught from the teacher (and tagged it distillation)."""
    both, _ = card_for(tmp_path, run_metrics, teacher="openai-community/gpt2")
    assert "trained to reproduce the teacher's output distribution and hidden states on" in both.text
    hidden, _ = card_for(tmp_path, run_metrics, logits_weight=0.0, hidden_states_weight=1.0)
    assert "trained to reproduce the teacher's hidden states on `wikimedia/wikipedia`" in hidden.text
    assert "output distribution" not in hidden.text
    alone, _ = card_for(tmp_path, run_metrics, teacher="openai-community/gpt2", logits_weight=0.0,
                        hidden_states_weight=0.0, hard_label_weight=1.0)
    assert ("tiny-student is a student trained with Distily on `wikimedia/wikipedia` by next-token cross-entropy "
            "alone: no loss read the teacher, [openai-community/gpt2](https://huggingface.co/openai-community/gpt2), "
            "which is measured beside it.") in alone.text
    assert "distilled" not in alone.text and "knowledge distillation" not in alone.text
    meta = front_matter(alone)
    assert meta["tags"] == ["distily"] and "teacher_model" not in meta


def test_a_bitnet_students_card_is_tagged_but_claims_no_quantization(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, bitnet={"input_norm": False, "subln": True, "rms_norm_eps": 1e-6})
    meta = front_matter(card)
    assert "base_model" not in meta and "base_model_relation" not in meta  # no "Quantized from" on the Hub
    assert meta["teacher_model"] == "gpt2"
    assert {"distillation", "bitnet", "1.58b"} <= set(meta["tags"])
    assert "ternary BitNet b1.58" in card.text and "| weights | dense | ternary (BitNet b1.58) |" in card.text
    assert "distilled from [gpt2](https://huggingface.co/gpt2)" in card.text
    # transformers alone loads the latent weights as a dense model (a tiny BitNet Llama run's: 1.6% top-1 agreement
    # with the ternary model the card measured), and the card named no other way to load it
    assert "`AutoModelForCausalLM.from_pretrained` loads them as a full-precision model, which is not" in card.text
    assert "`load_bitnet_student(path)`" in card.text and "`distily export`" in card.text


def test_a_bitnet_student_transformers_loads_as_ternary_says_so(tmp_path, run_metrics):
    """Where its saved config carries transformers' BitNet quantization_config, from_pretrained loads the checkpoint
    as the ternary model: the card said it gave a full-precision one and sent the reader to Distily."""
    def loadable(bitnet):
        metrics = run_metrics(bitnet)
        architecture = {**metrics.student.architecture, "bitnet_in_transformers": True}
        return dataclasses.replace(metrics, student=dataclasses.replace(metrics.student, architecture=architecture))

    card, _ = card_for(tmp_path, loadable, bitnet={"input_norm": False, "subln": False, "rms_norm_eps": 1e-6})
    assert "`AutoModelForCausalLM.from_pretrained(path)` loads it as the ternary model measured here" in card.text
    assert "full-precision" not in card.text and "`distily export`" in card.text


def test_a_local_teacher_is_named_in_the_text_only(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, teacher=str(tmp_path))
    meta = front_matter(card)
    assert "base_model" not in meta and "teacher_model" not in meta
    assert str(tmp_path) not in yaml.safe_dump(meta)
    assert f"distilled from the local checkpoint `{tmp_path}`" in card.text


def test_a_store_only_runs_card_names_no_dataset_settings_of_its_own(tmp_path, run_metrics):
    """A run from a teacher store without dataset_name trains on the documents the store was recorded on: the card
    gave the run's dataset defaults as theirs (a store recorded on split train[:50%]: "Dataset: the recorded teacher
    store (split `train`, text column `text`)", and split "train (held-out documents)" in the model index)."""
    stored = RecordingSource("gpt2", "stores/gpt2", record_top_k=64, recording_temperature=1.0)
    recorded = dataclasses.replace(run_metrics(), teacher=dataclasses.replace(run_metrics().teacher, recording=stored))
    card, _ = card_for(tmp_path, lambda bitnet: recorded, dataset_name=None, dataset_config_name=None,
                       teacher_source="recorded", teacher_store="stores/gpt2", hidden_states_weight=0.0)
    assert ("- Dataset: the documents its teacher store was recorded on (`stores/gpt2`, whose manifest names them); "
            "0.05 of its documents held out") in card.text
    assert "trained to reproduce the teacher's output distribution on the documents its teacher store was recorded" \
           " on (knowledge distillation)" in card.text
    assert "`train`" not in card.text and "text column" not in card.text
    heldout = [result for result in card.data.eval_results if result.dataset_type == "heldout"]
    assert heldout and all(result.dataset_split is None for result in heldout)


def test_the_configuration_in_the_card_reproduces_the_run(tmp_path, run_metrics):
    card, config = card_for(tmp_path, run_metrics, learning_rate=3e-4, bf16=True)
    block = re.search(r"```yaml\n(.*?)```", card.text, re.DOTALL).group(1)
    again = parse_config(**yaml.safe_load(block))
    assert non_default_config(again) == non_default_config(config)
    assert yaml.safe_load(block)["learning_rate"] == 3e-4


def test_the_cards_configuration_holds_the_runs_chat_template_date_only_where_a_chat_template_rendered(
        tmp_path, run_metrics):
    """Every run pins a chat_template_date (its settings record it for a resume); the card's configuration gave it
    for a run on text too, where nothing read it. It now holds it for chat data, the generation eval's prompts and
    lm-eval's chat prompts only."""
    def reproduced(metrics, **values):
        card, _ = card_for(tmp_path, lambda bitnet: metrics, chat_template_date="2024-07-26", **values)
        return yaml.safe_load(re.search(r"```yaml\n(.*?)```", card.text, re.DOTALL).group(1))

    text, chat = run_metrics(), dataclasses.replace(run_metrics(), framing=FramingMetrics("padded", loss_on="all"))
    assert "chat_template_date" not in reproduced(text)
    for metrics, values in ((chat, {}), (text, {"generation_eval_dataset": local_file(tmp_path, "prompts.jsonl")}),
                            (text, {"lm_eval_apply_chat_template": True})):
        assert reproduced(metrics, **values)["chat_template_date"] == "2024-07-26"


def test_a_chat_students_card_names_the_template_the_loss_mask_and_the_on_policy_fraction(tmp_path, run_metrics):
    chat = dataclasses.replace(run_metrics(), framing=FramingMetrics("padded", loss_on="assistant"))
    card, _ = card_for(tmp_path, lambda bitnet: chat, lmbda=0.5, on_policy_temperature=0.7, on_policy_max_new_tokens=64)
    text = card.text
    assert "3,200 conversations of at most 128 tokens, rendered with the teacher's chat template; the" in text
    assert "the losses count the assistant's tokens (`loss_on: assistant`)" in text
    assert "packed sequences" not in text and "text column" not in text
    # each micro-batch is drawn with probability lmbda: a short run's share may be far from it (seed 42, 2 steps: none)
    assert "each training micro-batch was, with probability 0.5 (`lmbda`), replaced" in text
    assert "a fraction 0.5" not in text and "temperature 0.7" in text
    assert "at most 64 new tokens, `hf` back end" in text
    plain, _ = card_for(tmp_path, run_metrics)
    assert "3,200 packed sequences of 128 tokens" in plain.text and "On-policy" not in plain.text
    no_thinking, _ = card_for(tmp_path, lambda bitnet: chat, chat_template_kwargs={"enable_thinking": False})
    assert ("rendered with the teacher's chat template and `chat_template_kwargs: {\"enable_thinking\": false}`; "
            "the losses") in no_thinking.text


def test_a_chat_runs_card_calls_its_data_conversations_not_documents(tmp_path, run_metrics):
    """A chat run's card said "0.05 of its documents held out" and named its held-out set "train (held-out
    documents)" in the model index, where the data are conversations (a store-only chat run: "the documents its
    teacher store was recorded on")."""
    chat = dataclasses.replace(run_metrics(), framing=FramingMetrics("padded", loss_on="assistant"))
    card, _ = card_for(tmp_path, lambda bitnet: chat, dataset_name="HuggingFaceH4/ultrachat_200k")
    assert "document" not in str(card).lower()
    assert "0.05 of its conversations held out for evaluation" in card.text
    results = {(r.dataset_name, r.dataset_split) for r in card.data.eval_results}
    assert ("HuggingFaceH4/ultrachat_200k (held-out conversations)", "train (held-out conversations)") in results
    stored = RecordingSource("gpt2", "stores/chat", record_top_k=64, recording_temperature=1.0)
    recorded = dataclasses.replace(chat, teacher=dataclasses.replace(chat.teacher, recording=stored))
    card, _ = card_for(tmp_path, lambda bitnet: recorded, dataset_name=None, dataset_config_name=None,
                       teacher_source="recorded", teacher_store="stores/chat", hidden_states_weight=0.0)
    assert "document" not in str(card).lower()
    assert "- Dataset: the conversations its teacher store was recorded on" in card.text
    assert "recorded teacher store (held-out conversations)" in {r.dataset_name for r in card.data.eval_results}

def test_a_chat_card_packed_by_documents_counts_blocks_not_conversations(tmp_path, run_metrics):
    """Chat data with packing: documents held 18 conversations out in 16 blocks (eval_fraction 0.3 of 60), and its
    card said "16 conversations of at most 128 tokens"; training said "37 rows of conversations ..., at most 128
    tokens each" of blocks holding several."""
    packed = dataclasses.replace(run_metrics(), framing=FramingMetrics("documents", loss_on="assistant"),
                                 eval_sequences=16, train_sequences=37)
    text = card_for(tmp_path, lambda bitnet: packed)[0].text
    blocks = "of at most 128 tokens (whole conversations, best-fit and masked apart)"
    assert f"held-out data: 16 blocks {blocks} set aside before training, on their assistant's tokens" in text
    assert f"- Training set: 37 blocks {blocks}, rendered with the teacher's chat template; the losses" in text
    assert "16 conversations" not in text and "37 conversations" not in text

def test_a_count_of_one_is_singular(tmp_path, run_metrics):
    """A tiny chat run held out one conversation: its card said "1 conversations of at most 64 tokens"."""
    single = dataclasses.replace(run_metrics(), framing=FramingMetrics("padded", loss_on="assistant"),
                                 eval_sequences=1, train_sequences=1)
    single.eval_sets["recent"] = dataclasses.replace(single.eval_sets["recent"], sequences=1)
    text = card_for(tmp_path, lambda bitnet: single)[0].text
    assert "held-out data: 1 conversation of at most 128 tokens set aside" in text
    assert "- Training set: 1 conversation of at most 128 tokens, rendered" in text
    assert "- `recent`: 1 sequence from `data/recent.jsonl`" in text
    packed = dataclasses.replace(run_metrics(), eval_sequences=1)
    assert "held-out data: 1 packed sequence of 128 tokens, from" in card_for(tmp_path, lambda bitnet: packed)[0].text


def test_the_results_explain_kl_and_agreement_only_where_they_were_measured(tmp_path, run_metrics):
    """A student with its own tokenizer has no KL or agreement rows (a tiny cross-tokenizer run's table had none),
    yet its card said how they are measured."""
    text = card_for(tmp_path, run_metrics)[0].text
    assert ". KL and agreement are per token, against the teacher's next-token distribution. Bits per" in text
    metrics = run_metrics()
    for key in [key for key in metrics.student.evaluations if "kl_to_teacher" in key or "agreement" in key]:
        del metrics.student.evaluations[key]
    without = card_for(tmp_path, lambda bitnet: metrics)[0].text
    assert "KL and agreement" not in without
    assert "and the named eval sets below. Bits per byte is the next-token loss" in without


def test_the_results_say_a_recorded_teachers_kl_is_against_its_top_k(tmp_path, run_metrics):
    """From a store the KL is against the recorded top k and a tail bucket (a live run on the bundled teacher gave
    its untrained student 0.806, a k=64 store 0.704), yet results.md said it was against the teacher's distribution."""
    stored = RecordingSource("gpt2", "stores/gpt2", record_top_k=64, recording_temperature=1.0)
    recorded = dataclasses.replace(run_metrics(), teacher=dataclasses.replace(run_metrics().teacher, recording=stored))
    text = card_for(tmp_path, lambda bitnet: recorded)[0].text
    assert ("against the teacher's next-token distribution as recorded in the store: its top 64 tokens and the rest "
            "as one bucket, at temperature 1. This KL is at most the KL to the whole distribution") in text
    assert "against the teacher's next-token distribution. Bits" not in text


def test_the_held_out_prompts_line_names_the_kl_only_where_it_was_measured(tmp_path, run_metrics):
    """A student whose answers no teacher scored (a recorded teacher, or one with other tokens) has no
    generation/kl_to_teacher, yet its card said how that KL is measured."""
    def answered(kl: bool):
        metrics = run_metrics()
        metrics.student.evaluations.update({"after_generation/exact_match": 25.0, "after_generation/samples": 8,
                                            **({"after_generation/kl_to_teacher": 0.5} if kl else {})})
        prompts = local_file(tmp_path, "prompts.jsonl")
        return card_for(tmp_path, lambda bitnet: metrics, generation_eval_dataset=prompts)[0].text

    assert "the student's KL to the teacher is per token of its own answers." in answered(kl=True)
    without = answered(kl=False)
    assert "KL to the teacher is per token of its own answers" not in without
    assert "scored by exact match with the reference (whitespace-stripped)." in without


def test_the_framing_check_is_named_as_a_sample_not_as_the_held_out_loss(tmp_path, run_metrics):
    """The check runs the teacher on the first held-out documents (about 8 blocks), not on the held-out set the
    table reports: a tiny run's card said "the teacher's held-out loss as packed 6.654 nats" beside a table giving
    its held-out loss as 6.6870."""
    checked = dataclasses.replace(run_metrics(), framing=FramingMetrics("stream", 2.25, 2.5))
    card, _ = card_for(tmp_path, lambda bitnet: checked)
    assert ("- Packing: `stream` (see Distily's docs/data.md); the framing check ran the teacher on the first held-out "
            "documents (about 8 blocks' worth, not the held-out set above): 2.250 nats as packed, 2.500 with each "
            "document run alone.") in card.text
    assert "| heldout: next-token loss (nats) | 2.0000 |" in card.text


def _hellaswag_index_entry(card: ModelCard) -> dict:
    (entry,) = [result["dataset"] for result in front_matter(card)["model-index"][0]["results"]
                if result["dataset"]["type"] == "hellaswag"]
    return entry


def test_lm_eval_results_in_the_model_index_say_their_shots_and_when_they_are_a_sample(tmp_path, run_metrics):
    """The model index gave a 100-example sample's score as plain "hellaswag" (the Hub shows it as the task's
    score), with no few-shot count; the Hub's convention names both (dataset args ``num_few_shot``)."""
    scored = {"hellaswag": {"acc": 0.33, "acc_stderr": 0.01, "samples": 100, "num_fewshot": 10}}
    with_shots = lambda bitnet: run_metrics(bitnet).with_benchmarks(scored, None)  # noqa: E731
    sampled, _ = card_for(tmp_path, with_shots)
    assert _hellaswag_index_entry(sampled) == {"name": "hellaswag (10-shot; a sample: lm_eval_limit=100)",
                                               "type": "hellaswag", "args": {"num_few_shot": 10, "limit": 100}}
    assert "| hellaswag: acc (n=100, 10-shot) | 0.4100 ± 0.0100 | — | 0.3300 ± 0.0100 |" in sampled.text
    assert "num_fewshot" not in sampled.text  # a count of the label, not a row of the table
    whole, _ = card_for(tmp_path, with_shots, lm_eval_limit=None)
    assert _hellaswag_index_entry(whole) == {"name": "hellaswag (10-shot)", "type": "hellaswag",
                                             "args": {"num_few_shot": 10}}


def test_a_student_started_from_a_hub_checkpoint_names_it_as_its_base_model(tmp_path, run_metrics):
    """Its weights began as that checkpoint's and were trained further: a fine-tune of it, which the Hub's model
    tree shows from ``base_model`` (the card used to set none, as for a student built from its teacher)."""
    card, _ = card_for(tmp_path, run_metrics, teacher="openai-community/gpt2-medium",
                       student_model_name_or_path="openai-community/gpt2", student_config_overrides=None)
    meta = front_matter(card)
    assert meta["base_model"] == "openai-community/gpt2" and meta["base_model_relation"] == "finetune"
    assert meta["teacher_model"] == "openai-community/gpt2-medium"
    local, _ = card_for(tmp_path, run_metrics, student_model_name_or_path=str(tmp_path), student_config_overrides=None)
    assert "base_model" not in front_matter(local)  # a local checkpoint is named in the text only


def test_a_mixture_of_experts_card_gives_the_parameters_a_token_passes_through(tmp_path, run_metrics):
    """Beside the total (a dense model's is its count per token too)."""
    def metrics(bitnet=None):
        found = run_metrics(bitnet)
        found.teacher.architecture["active_parameters"] = 100_000
        return found

    card, _ = card_for(tmp_path, metrics)
    assert "| parameters | 400,000 | 200,000 |\n| parameters per token | 100,000 | 200,000 |" in card.text
    assert "parameters per token" not in card_for(tmp_path, run_metrics)[0].text
