"""The model card: ``README.md`` of a distilled student, built with ``huggingface_hub``'s card tools.

It reports what was done and measured, nothing more:

- The front matter's ``base_model`` is never the teacher (see ``card_data``): the Hub would show the student as
  "Finetuned from" or "Quantized from" its teacher, and a distilled student is neither. It is the Hub checkpoint
  the student started from (``student_model_name_or_path``), of which the student is a fine-tune. The teacher is
  named in the text ("distilled from [teacher](link)") and, when it is a Hub id, in the metadata key
  ``teacher_model``; the text says what the student learned from it (its output distribution, hidden states, ...),
  and a student that no loss taught from the teacher (a hard-label baseline) is said to be trained on the data alone.
- The method is read from the objective that trained the student: its components, weights, losses,
  layer maps, projectors and norms, and the student's BitNet options if any.
- The model-index holds the student's results only (held-out sets, answers to held-out prompts, lm-eval
  tasks); the teacher's numbers stand beside the student's in the text's table. lm-eval scores on a
  subsample (``lm_eval_limit``) say so.
- The configuration that reproduces the run, and the versions of Distily and the frameworks.
"""

import dataclasses
import enum
import inspect
import json
import math
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Optional

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from distily.config import DistillConfig
from distily.evaluation.arguments import FEWSHOT, HELDOUT_SET, KL_TO_TEACHER, SAMPLES
from distily.evaluation.framing_check import CHECK_BLOCKS
from distily.metrics import (
    GENERATION, FramingMetrics, MultimodalCheckpoint, RecordingSource, RunMetrics, generation_key,
)
from distily.models.summary import ACTIVE_PARAMETERS
from distily.models.teacher import looks_like_local_path
from distily.objectives.objective import DistillationObjective
from distily.reporting.tables import MIB, markdown_table, run_columns
from distily.teachers.cross_tokenizer import ALIGNED_CONVERSATIONS, ALIGNED_PIECES

FRAMEWORKS = ("transformers", "torch", "datasets", "accelerate", "huggingface_hub", "lm_eval")
CARD_METRICS = ("perplexity", "bits_per_byte", "kl_to_teacher", "top1_agreement")  # per eval set, in the model index
# what of the teacher each objective component teaches the student, by its name in the objective
TEACHER_SIGNALS = {"logits": "output distribution", "hidden_states": "hidden states", "attentions": "attention maps",
                   "attention_relations": "attention relations"}
ARCHITECTURE_ROWS = {
    "model_type": "model type",
    "layers": "layers",
    "hidden_size": "hidden size",
    "attention_heads": "attention heads",
    "key_value_heads": "key/value heads",
    "intermediate_size": "MLP width",
    "vocab_size": "vocabulary",
    "dtype": "dtype",
}


def teacher_name(config: DistillConfig, metrics: RunMetrics) -> str:
    """The teacher as the run knew it: its Hub id or path (from the store, for a recorded teacher)."""
    return config.model.teacher_model_name_or_path or metrics.teacher.model_name_or_path or "unknown"


def data_items(metrics: RunMetrics) -> str:
    """What the data's items are called: conversations for chat data (its losses count ``loss_on``), else documents."""
    return "conversations" if metrics.framing.loss_on else "documents"


def training_data(config: DistillConfig, metrics: RunMetrics) -> str:
    """The training data as the card names them: the dataset given, or the documents or conversations a store-only
    run's teacher store was recorded on (the run's dataset settings are then defaults, not the store's)."""
    name = config.data.dataset_name
    return f"`{name}`" if name else f"the {data_items(metrics)} its teacher store was recorded on"


def hub_id(name_or_path: str) -> str | None:
    """``name_or_path`` when it names a Hub repository rather than a local directory."""
    return None if looks_like_local_path(name_or_path) else name_or_path


def _link(name_or_path: str) -> str:
    repo = hub_id(name_or_path)
    return f"[{repo}](https://huggingface.co/{repo})" if repo else f"the local checkpoint `{name_or_path}`"


def _lm_eval_dataset(task: str, found: dict[str, float], limit: int | float | None) -> tuple[str, dict]:
    """An lm-eval task's model-index name and dataset args, as the Hub's leaderboards give them (``hellaswag
    (10-shot)``, ``num_few_shot``), and saying when ``lm_eval_limit`` cut the task to a sample."""
    shots = found.get(FEWSHOT)
    details, args = [], {}
    if shots is not None:
        details.append(f"{shots:g}-shot")
        args["num_few_shot"] = int(shots)
    if limit is not None:
        details.append(f"a sample: lm_eval_limit={limit}")
        args["limit"] = limit
    return task + (f" ({'; '.join(details)})" if details else ""), args


def _eval_results(config: DistillConfig, metrics: RunMetrics) -> list[EvalResult]:
    """The student's numbers on the held-out split, each named eval set, the held-out prompts and each lm-eval
    task (the teacher's are in the text's table: a model-index result is read as the model's own)."""
    student = metrics.student
    data = config.data
    # (type: a Hub id, else the set's name, so that local sets stay apart; name; config; split); a store-only run
    # knows its data's split from the store alone
    held_out = f"(held-out {data_items(metrics)})"
    if data.dataset_name:
        heldout = (hub_id(data.dataset_name) or HELDOUT_SET, f"{data.dataset_name} {held_out}",
                   data.dataset_config_name, f"{data.dataset_split} {held_out}")
    else:
        heldout = (HELDOUT_SET, f"recorded teacher store {held_out}", None, None)
    sources = {HELDOUT_SET: heldout}
    for name, spec in metrics.eval_sets.items():
        sources[name] = (hub_id(spec.path) or name, name, spec.config, spec.split)
    results = []

    def add(source, metric, value, dataset_args=None):
        if isinstance(value, (int, float)) and math.isfinite(value):  # a diverged student's NaN: the table's alone
            dataset_type, dataset_name, dataset_config, dataset_split = source
            results.append(EvalResult(
                task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                dataset_config=dataset_config, dataset_split=dataset_split, dataset_args=dataset_args or None,
                metric_type=metric, metric_value=float(value), metric_name=metric,
            ))

    for set_name, source in sources.items():
        for metric in CARD_METRICS:
            add(source, metric, student.after.get(metric, set_name))
    evaluation = config.evaluation
    if evaluation.generation_eval_dataset:
        path = evaluation.generation_eval_dataset
        source = (hub_id(path) or GENERATION, f"{path} (held-out prompts)", None, evaluation.generation_eval_split)
        for key, value in student.after.values.items():
            if key.startswith(f"{GENERATION}/") and key not in (generation_key(SAMPLES), generation_key(KL_TO_TEACHER)):
                add(source, key.split("/", 1)[1], value)
    for task, found in (student.lm_eval or {}).items():
        name, dataset_args = _lm_eval_dataset(task, found, evaluation.lm_eval_limit)
        for metric, value in found.items():
            if not metric.endswith("_stderr") and metric not in (SAMPLES, FEWSHOT):
                add((task, name, None, None), metric, value, dataset_args)
    return results


def teacher_signals(objective: DistillationObjective) -> list[str]:
    """What the student learned from the teacher: each component that reads the teacher's outputs (none where the
    student learned from the data alone, e.g. a hard-label baseline)."""
    return [TEACHER_SIGNALS.get(name, f"`{name}`") for name, component in objective.components.items()
            if component.needs_teacher]


def card_data(config: DistillConfig, metrics: RunMetrics, model_name: str, distilled: bool) -> ModelCardData:
    """The front matter. The rule: ``base_model`` only with a relation the Hub defines (``adapter``, ``merge``,
    ``quantized``, ``finetune``) that is true of the student. Of the teacher, none is: a distilled student is no
    adapter or merge; it is not a quantization of the teacher, not even a BitNet student that keeps the teacher's
    architecture (its ternary weights were trained against the teacher's outputs, not rounded from its
    weights); it is not a fine-tune (it was trained to reproduce the teacher, whose layers it may only have
    started from). A ``base_model`` without a relation is worse: the Hub infers one from the files, and
    shows "Finetuned from" or "Quantized from". So the teacher, when a Hub id, is ``teacher_model`` (a key of
    Distily's: the Hub shows no relation for it), and the text names it with a link (a local teacher is named
    there only). A student started from a Hub checkpoint (``student_model_name_or_path``) is a fine-tune of that
    checkpoint: it is the ``base_model``, relation ``finetune``. A student that learned nothing from the teacher
    (not ``distilled``: trained on the data alone) has no ``teacher_model`` and no ``distillation`` tag."""
    teacher = hub_id(teacher_name(config, metrics)) if distilled else None
    tags = ["distily"] + (["distillation"] if distilled else [])
    tags += ["bitnet", "1.58b", "ternary"] if metrics.student.bitnet else []
    dataset = hub_id(config.data.dataset_name) if config.data.dataset_name else None
    extra = {"teacher_model": teacher} if teacher else {}
    start = config.model.student_model_name_or_path
    if start and hub_id(start):
        extra.update(base_model=start, base_model_relation="finetune")
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[dataset] if dataset else None,
        eval_results=_eval_results(config, metrics),
        **extra,
    )


def count_of(count: int, noun: str) -> str:
    """``1 row``, ``1,024 rows``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


FULL_BLOCKS = ("stream", "bos_blocks")  # the packings whose every row is max_seq_length tokens


def _text_rows(count: int, packing: str, length: int) -> str:
    """``count`` rows of text framed by ``packing``, as long as they are: full blocks of ``length`` tokens only for
    the packings that cut the text into them; the others' rows hold at most ``length`` tokens, often fewer."""
    if packing in FULL_BLOCKS:
        return f"{count_of(count, 'packed sequence')} of {length} tokens"
    if packing == "documents":
        return (f"{count_of(count, 'block')} of at most {length} tokens, each holding whole documents (or pieces of "
                "longer ones) best-fit and masked apart, so a block may be partly filled")
    if packing == ALIGNED_PIECES:
        return (f"{count_of(count, 'row')} of at most {length} tokens by either model's tokenizer,"
                " one piece of a document a row")
    return (f"{count_of(count, 'row')} of at most {length} tokens, one document (or a piece of a longer one) "
            "a row")  # padded


def _conversation_rows(count: int, packing: str, length: int) -> str:
    """``count`` rows of chat data: a conversation each, or with ``packing: documents`` blocks of whole
    conversations (so fewer rows than conversations)."""
    if packing == "documents":
        return f"{count_of(count, 'block')} of at most {length} tokens (whole conversations, best-fit and masked apart)"
    return f"{count_of(count, 'conversation')} of at most {length} tokens"


def _heldout_rows(metrics: RunMetrics) -> str:
    """What the held-out split is: rows of text as packed (_text_rows), or of conversations (_conversation_rows,
    counted on the tokens the losses count)."""
    if metrics.framing.loss_on:
        counted = "their assistant's tokens" if metrics.framing.loss_on == "assistant" else "all their tokens"
        rows = _conversation_rows(metrics.eval_sequences, metrics.framing.packing, metrics.max_seq_length)
        return f"{rows} set aside before training, on {counted}"
    rows = _text_rows(metrics.eval_sequences, metrics.framing.packing, metrics.max_seq_length)
    return f"{rows}, from documents set aside before packing"


def tokenizers_differ(metrics: RunMetrics) -> bool:
    """Whether the student has a tokenizer of its own (framed for both models' tokenizers): its per-token rows then
    do not compare with the teacher's, and the results table leads with bits per byte."""
    return metrics.framing.packing in (ALIGNED_PIECES, ALIGNED_CONVERSATIONS)


def results_table(metrics: RunMetrics) -> str:
    """The table of results.md and the card: one row per metric; teacher, student before and after."""
    return markdown_table(run_columns(metrics), tokenizers_differ(metrics))


def _kl_and_agreement(recording: Optional[RecordingSource]) -> str:
    """How the results' KL and agreement were measured: a store holds the teacher's top k alone (docs/recording.md)."""
    if recording is None:
        return " KL and agreement are per token, against the teacher's next-token distribution."
    return (f" KL and agreement are per token, against the teacher's next-token distribution as recorded in the store: "
            f"its top {recording.record_top_k} tokens and the rest as one bucket, at temperature "
            f"{recording.recording_temperature:g}. This KL is at most the KL to the whole distribution, so it does not "
            "compare with a live teacher's.")


def results_section(config: DistillConfig, metrics: RunMetrics, plots: list[str]) -> str:
    evaluation = config.evaluation
    lines = [
        "## Results",
        "",
        f"Measured by Distily on held-out data: {_heldout_rows(metrics)}"
        + (", and the named eval sets below" if metrics.eval_sets else "") + "."
        # measured against a teacher with the student's tokens only (not across tokenizers)
        + (_kl_and_agreement(metrics.teacher.recording) if metrics.student.after.get(KL_TO_TEACHER) is not None
           else "")
        + " Bits per byte is the next-token loss summed over the held-out tokens, in bits, over the UTF-8 bytes of "
        "those tokens (each model's by its own tokenizer): unlike perplexity, it compares models whose tokenizers "
        "differ.",
        "",
        results_table(metrics),
    ]
    for name, spec in metrics.eval_sets.items():
        lines.append(f"- `{name}`: {count_of(spec.sequences, 'sequence')} from `{spec.path}` ({spec.split})")
    overlap = metrics.eval_overlap
    if overlap:
        found = [f"`{name}` {o.overlapping_sequences} of {o.sequences}" for name, o in overlap.items()]
        n = next(iter(overlap.values())).ngram
        lines += ["", f"Overlap with the training sequences (sequences sharing a {n}-token span): {', '.join(found)}."]
    else:
        lines += ["", "The eval sets were not checked for overlap with the training data."]
    if evaluation.generation_eval_dataset:
        metric = f" and `{evaluation.generation_eval_metric}`" if evaluation.generation_eval_metric else ""
        # the KL needs a teacher that runs and reads the student's tokens (none from a store, or across tokenizers)
        kl = generation_key(KL_TO_TEACHER) in metrics.student.after.values
        lines += ["", f"Held-out prompts: the first prompts of `{evaluation.generation_eval_dataset}` "
                  f"({evaluation.generation_eval_split}), answered greedily (at most "
                  f"{evaluation.generation_eval_max_new_tokens} new tokens) and scored by exact match with the "
                  f"reference (whitespace-stripped){metric}"
                  + ("; the student's KL to the teacher is per token of its own answers." if kl else ".")]
    if evaluation.lm_eval_tasks:
        sample = (f"on a sample (lm_eval_limit={evaluation.lm_eval_limit}); these are not full benchmark scores"
                  if evaluation.lm_eval_limit else "on every example")
        settings = ["prompts rendered with the chat template"] if evaluation.lm_eval_apply_chat_template else []
        if evaluation.lm_eval_model_args:
            settings.append(f"HFLM arguments `{json.dumps(evaluation.lm_eval_model_args)}`")
        settings = f" ({'; '.join(settings)})" if settings else ""
        lines += ["", f"lm-evaluation-harness tasks ran {sample}{settings}; n is the number of examples scored."]
    lines += [""] + [f"![{plot}]({plot})" for plot in plots]
    return "\n".join(lines)


def _student_init(config: DistillConfig, metrics: RunMetrics) -> str:
    """How a student built from a config started: the teacher layers copied into its layers, or a random
    initialisation, and the teacher layers whose per-layer settings its layers took (metrics.json's student)."""
    copied, settings = metrics.student.teacher_layers_copied, metrics.student.teacher_layer_settings
    settings_of = "per-layer settings (attention kind, block type, ...; where its config has any)"
    if copied is None:
        taken = f"; its layers take, in order, the {settings_of} of teacher layers {settings}" if settings else ""
        return f"a random initialisation{taken}"
    chosen = ("as chosen (`student_layers_from_teacher`)" if config.model.student_layers_from_teacher else
              "evenly spaced, first and last included, with the layers KV-sharing ones take keys and values from")
    kept = f", each with that teacher layer's {settings_of}" if settings else ""
    return f"teacher layers {copied} ({chosen}) copied into its layers in order{kept}{_pruned(metrics)}"


def _pruned(metrics: RunMetrics) -> str:
    """How a pruned student (student_init=pruned) was cut from the teacher's layers; empty for any other."""
    pruning = metrics.student.pruning
    if pruning is None:
        return ""
    sizes = ", ".join(f"`{key}` {kept} of {pruning['teacher'][key]}" for key, kept in pruning["kept"].items())
    return (f", width-pruned to the teacher's most important units by its activations on the first "
            f"{pruning['calibration_rows']} training rows (Minitron: {sizes})")


def _method_section(config: DistillConfig, metrics: RunMetrics, objective: DistillationObjective) -> str:
    lines = [
        "## Method",
        "",
        "The student minimised a weighted sum of components, each averaged over the tokens of a batch:",
        "",
    ]
    for name, component in objective.components.items():
        formula = " ".join((inspect.getdoc(type(component)) or "").split("\n\n")[0].split()).replace("``", "`")
        details = component.extra_repr()
        lines.append(f"- `{name}` × {objective.weights[name]:g}: {formula}" + (f" (`{details}`)" if details else ""))
    lines += ["", "<details><summary>The objective's modules</summary>", "", "```text", repr(objective), "```",
              "", "</details>", ""]
    model = config.model
    if model.student_model_name_or_path:
        lines.append(f"The student started from the checkpoint `{model.student_model_name_or_path}`.")
    else:
        source = f"`{model.student_config_name_or_path}`" if model.student_config_name_or_path else "the teacher's"
        changes = f" with `{model.student_config_overrides}`" if model.student_config_overrides else ""
        lines.append(f"The student was built from {source} config{changes}, starting from "
                     f"{_student_init(config, metrics)}.")
    training = config.training
    if training.lmbda > 0:
        lines += ["", "On-policy distillation (GKD): each training micro-batch was, with probability "
                  f"{training.lmbda:g} (`lmbda`), replaced by the student's own completions of its prompts "
                  f"(temperature {training.on_policy_temperature:g}, top-p {training.on_policy_top_p:g}, at most "
                  f"{training.on_policy_max_new_tokens} new tokens, `{training.on_policy_backend}` back end), scored "
                  "by the teacher; on those batches the losses count the completion tokens."]
    teacher = metrics.teacher
    if teacher.recording:
        lines += ["", f"The teacher did not run during training: its top-{teacher.recording.record_top_k} "
                  f"log-probabilities were read from a recorded store (`{teacher.recording.teacher_store}`), and the "
                  "held-out KL and agreement are measured against that record."]
    elif teacher.quantization != "none":
        lines += ["", f"The teacher ran quantized to {teacher.quantization} (bitsandbytes); its numbers here are "
                  "those of the quantized teacher."]
    bitnet = metrics.student.bitnet
    if bitnet:
        lines += ["", "It is a ternary BitNet b1.58 model: every linear projection in its decoder blocks is a "
                  "BitLinear layer with weights in {-1, 0, +1} times a per-tensor scale and 8-bit activations "
                  f"(options: `{bitnet}`). This checkpoint holds the latent weights the ternary ones are computed "
                  f"from{_bitnet_loading(metrics.student.architecture)}"]
    return "\n".join(lines)


def _bitnet_loading(architecture: dict) -> str:
    """How a BitNet student's checkpoint loads as the ternary model: with plain transformers where its config carries
    transformers' BitNet ``quantization_config``, else with Distily alone."""
    if architecture.get("bitnet_in_transformers"):
        return (", and its config transformers' BitNet `quantization_config` (online mode): "
                "`AutoModelForCausalLM.from_pretrained(path)` loads it as the ternary model measured here (its "
                "`AutoBitLinear` layers ternarise the weights and quantise the activations as they run; logits equal "
                "Distily's to float rounding). `distily export` packs it for inference, as 2-bit weights or GGUF "
                "for llama.cpp (Distily's docs/bitnet.md).")
    return (", in a layout transformers' BitNet integration cannot rebuild (SubLN norms, or GPT-2's Conv1D layers): "
            "`AutoModelForCausalLM.from_pretrained` loads them as a full-precision model, which is not the model "
            "measured here (GPT-2's fails on their shapes). Load it with Distily (`from distily.models.bitnet import "
            "load_bitnet_student`; `load_bitnet_student(path)`), or export it packed or as GGUF with `distily export` "
            "(Distily's docs/bitnet.md; a SubLN Llama's packed export loads in transformers as BitNetForCausalLM).")


def _towers(multimodal: MultimodalCheckpoint) -> str:
    """``vision tower``, ``audio and vision towers``."""
    towers = multimodal.unused_towers
    return f"{' and '.join(towers)} tower{'s' if len(towers) > 1 else ''}" if towers else "other towers"


def _teacher_loaded(metrics: RunMetrics) -> str:
    """What the teacher is, where it is a multimodal checkpoint's language model: `` (the language model of a
    multimodal `gemma3` checkpoint; vision tower not used)``; else nothing."""
    multimodal = metrics.teacher.multimodal_checkpoint
    if multimodal is None:
        return ""
    return f" (the language model of a multimodal `{multimodal.model_type}` checkpoint; {_towers(multimodal)} not used)"


def _multimodal_lines(metrics: RunMetrics) -> list[str]:
    """Under the architecture table: the teacher's numbers are its language model's, not the whole checkpoint's."""
    multimodal = metrics.teacher.multimodal_checkpoint
    if multimodal is None:
        return []
    whole = multimodal.checkpoint_size_on_disk_bytes
    whole = f" (the whole checkpoint's weights: {whole / MIB:,.1f} MiB)" if whole is not None else ""
    return ["", f"The teacher is the language model of a multimodal `{multimodal.model_type}` checkpoint, loaded as "
            f"its text-only causal LM; the checkpoint's {_towers(multimodal)} stayed on disk, unused. Its "
            f"architecture, parameters and size on disk here are those of its language model and LM head{whole}."]


def _architecture_section(metrics: RunMetrics) -> str:
    teacher, student = metrics.teacher, metrics.student
    shapes = teacher.architecture, student.architecture
    lines = ["## Architecture", "", "| | teacher | student |", "|---|---:|---:|"]
    for key, title in ARCHITECTURE_ROWS.items():
        if any(key in shape for shape in shapes):
            lines.append(f"| {title} | {shapes[0].get(key, '—')} | {shapes[1].get(key, '—')} |")
    lines.append(f"| weights | dense | {'ternary (BitNet b1.58)' if shapes[1].get('bitnet') else 'dense'} |")
    lines.append(f"| parameters | {teacher.parameters:,} | {student.parameters:,} |")
    if any(ACTIVE_PARAMETERS in shape for shape in shapes):  # a mixture of experts: those a token passes through
        active = [shape.get(ACTIVE_PARAMETERS, model.parameters) for shape, model in zip(shapes, (teacher, student))]
        lines.append(f"| parameters per token | {active[0]:,} | {active[1]:,} |")
    sizes = [f"{model.size_on_disk_bytes / MIB:,.1f}" for model in (teacher, student)]
    lines.append(f"| size on disk (MiB) | {sizes[0]} | {sizes[1]} |")
    return "\n".join(lines + _multimodal_lines(metrics))


def _framing_line(framing: FramingMetrics) -> str:
    """How the documents were framed, and the framing check: the teacher's loss on its sample of held-out documents
    as packed against the same documents run alone."""
    line = f"- Packing: `{framing.packing}` (see Distily's docs/data.md)"
    if framing.teacher_lm_loss_documents is not None:
        line += (f"; the framing check ran the teacher on the first held-out documents (about {CHECK_BLOCKS} blocks' "
                 f"worth, not the held-out set above): {framing.teacher_lm_loss_packed:.3f} nats as packed, "
                 f"{framing.teacher_lm_loss_documents:.3f} with each document run alone")
    return line + "."


def _data_section(config: DistillConfig, metrics: RunMetrics) -> str:
    data = config.data
    length, train = metrics.max_seq_length, metrics.train
    loss_on = metrics.framing.loss_on  # chat data only
    details = ", ".join(f"{key} `{value}`" for key, value in (
        ("subset", data.dataset_config_name), ("split", data.dataset_split),
        ("text column", None if loss_on else data.dataset_text_column),
    ) if value)
    recording = metrics.teacher.recording
    if not data.dataset_name and recording:  # the run's dataset settings are defaults, not the store's
        details = f"`{recording.teacher_store}`, whose manifest names them"
    source = f"{training_data(config, metrics)} ({details})"
    if loss_on:
        template = "the chat template given (`chat_template`)" if data.chat_template else "the teacher's chat template"
        if metrics.framing.packing == ALIGNED_CONVERSATIONS:  # a student with its own tokenizer
            teacher = "the one given (`chat_template`)" if data.chat_template else "its own"
            student = "the one given (`student_chat_template`)" if data.student_chat_template else "its own"
            template = (f"each model's own chat template (the teacher's: {teacher}; the student's: {student}), "
                        "aligned inside the assistant's answers")
        if data.chat_template_kwargs:  # the student's users render with them too
            template += f" and `chat_template_kwargs: {json.dumps(data.chat_template_kwargs)}`"
        counted = "the assistant's tokens" if loss_on == "assistant" else "every token"
        rows = _conversation_rows(metrics.train_sequences, metrics.framing.packing, length)
        training_set = (f"- Training set: {rows}, rendered with {template}; the losses count {counted} "
                        f"(`loss_on: {loss_on}`).")
    else:
        packing = metrics.framing.packing
        total = f" ({metrics.train_sequences * length:,} tokens)" if packing in FULL_BLOCKS else ""
        training_set = f"- Training set: {_text_rows(metrics.train_sequences, packing, length)}{total}."
    lines = [
        "## Training data",
        "",
        f"- Dataset: {source}; {data.eval_fraction:g} of its {data_items(metrics)} held out for evaluation (drawn "
        f"with seed {config.training.split_seed}).",
        training_set,
        _framing_line(metrics.framing),
    ]
    if train.tokens_seen is not None:
        padding = " (padding included)" if config.training.include_num_input_tokens_seen == "all" else ""
        steps = count_of(train.global_step, "optimizer step")
        lines.append(f"- Trained for {steps} ({train.epoch:.2f} epochs), about "
                     f"{train.tokens_seen:,} tokens{padding}.")
    return "\n".join(lines)


def _hyperparameters(training: TrainingArguments) -> dict:
    precision = "bf16" if training.bf16 else "fp16" if training.fp16 else "fp32"
    return {
        "learning rate": training.learning_rate,
        "schedule": _plain(training.lr_scheduler_type),
        "warmup (steps, or fraction if < 1)": training.warmup_steps,
        "optimizer": _plain(training.optim),
        "weight decay": training.weight_decay,
        "batch size per device": training.per_device_train_batch_size,
        "gradient accumulation": training.gradient_accumulation_steps,
        "devices": training.world_size,
        "max steps": training.max_steps if training.max_steps > 0 else "—",
        "epochs": training.num_train_epochs if training.max_steps <= 0 else "—",
        "precision": precision,
        "seed": training.seed,
    }


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def non_default_config(config: DistillConfig) -> dict:
    """Every key whose value differs from its default, and the (required) ``output_dir``: the config file that
    reproduces the run."""
    values = {"output_dir": config.training.output_dir}
    for part in dataclasses.fields(config):
        args = getattr(config, part.name)
        kind = type(args)
        defaults = kind(output_dir=args.output_dir) if isinstance(args, TrainingArguments) else kind()
        for item in dataclasses.fields(args):
            value = getattr(args, item.name)
            if item.init and not item.name.endswith("token") and value != getattr(defaults, item.name):
                values[item.name] = _plain(value)
    return values


def framework_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in FRAMEWORKS:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def renders_chat(config: DistillConfig, metrics: RunMetrics) -> bool:
    """Whether the run rendered a chat template: chat data, the generation eval's prompts or lm-eval's chat prompts."""
    evaluation = config.evaluation
    return bool(metrics.framing.loss_on or evaluation.generation_eval_dataset
                or (evaluation.lm_eval_tasks and evaluation.lm_eval_apply_chat_template))


def _reproduce_section(config: DistillConfig, metrics: RunMetrics) -> str:
    values = non_default_config(config)
    if not renders_chat(config, metrics):  # every run pins a chat_template_date; only a chat template reads it
        values.pop("chat_template_date", None)
    settings = yaml.safe_dump(values, sort_keys=False, allow_unicode=True).strip()
    hyper = _hyperparameters(config.training)
    versions = ", ".join(f"{name} {value}" for name, value in framework_versions().items())
    lines = [
        "## Hyperparameters",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in hyper.items()],
        "",
        "## Reproduce",
        "",
        f"The run was started as `{metrics.command or 'run_distillation(config)'}`. With Distily "
        f"{metrics.distily_version}, `distily distill config.yaml` repeats it, `config.yaml` holding `output_dir` "
        "and every key that differs from its default:",
        "",
        "```yaml",
        settings,
        "```",
        "",
        f"Versions: Distily {metrics.distily_version}, {versions}.",
    ]
    return "\n".join(lines)


def _what_it_is(config: DistillConfig, metrics: RunMetrics, signals: list[str]) -> str:
    """The card's first sentences: what the student learned from whom (``signals``: teacher_signals), and sizes."""
    teacher = _link(teacher_name(config, metrics))
    kind = "a ternary (BitNet b1.58) student" if metrics.student.bitnet else "a student"
    data = training_data(config, metrics)
    if signals:
        learned = f"{', '.join(signals[:-1])} and {signals[-1]}" if len(signals) > 1 else signals[0]
        what = (f"{kind} distilled from {teacher} with Distily: it was trained to reproduce the teacher's {learned} "
                f"on {data} (knowledge distillation); it is not a fine-tune of the teacher.")
    else:
        what = (f"{kind} trained with Distily on {data} by next-token cross-entropy alone: no loss read the "
                f"teacher, {teacher}, which is measured beside it.")
    return (f"{what} It has {metrics.student.parameters:,} parameters; the teacher{_teacher_loaded(metrics)} has "
            f"{metrics.teacher.parameters:,}.")


def build_model_card(
    config: DistillConfig, metrics: RunMetrics, objective: DistillationObjective, model_name: str,
    plots: list[str] = (),
) -> ModelCard:
    """The card of a finished run, ``plots`` paths relative to the card."""
    signals = teacher_signals(objective)
    intro = f"# {model_name}\n\n{model_name} is {_what_it_is(config, metrics, signals)}"
    sections = [
        intro,
        results_section(config, metrics, list(plots)),
        _method_section(config, metrics, objective),
        _architecture_section(metrics),
        _data_section(config, metrics),
        _reproduce_section(config, metrics),
    ]
    data_yaml = card_data(config, metrics, model_name, distilled=bool(signals)).to_yaml()
    return ModelCard("---\n" + data_yaml + "\n---\n\n" + "\n\n".join(sections) + "\n")
