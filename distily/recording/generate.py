"""``distily generate``: synthetic text sampled from the teacher, or its responses to prompts
(``distily.recording.responses``), as a dataset to distill on.

Without prompts, each sample starts from the beginning-of-text token (the end-of-text token where the tokenizer has
none), which the sample keeps, and runs ``generate_length`` tokens or until the teacher samples end-of-text. The
temperature can move along the sequence (hot at the start for variety, cooler later for coherence); nucleus sampling
(top-p) is applied after it. Samples are written with an ``input_ids`` column (the exact tokens, used pre-tokenized
by ``distily distill``) and their ``text``.
"""

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import datasets
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from distily.arguments import file_in_the_way
from distily.config import GenerateConfig
from distily.data.chat import run_chat_template, run_date
from distily.data.store import check_store_directory, existing_recording
from distily.data.framing import document_separator_id
from distily.errors import DistilyConfigError
from distily.generation.backends import open_generator
from distily.generation.engine import strip_stop
from distily.models.architecture import max_positions
from distily.models.teacher import load_teacher, load_tokenizer
from distily.recording.arguments import RESPONSES_COLUMN, GenerateArguments
from distily.recording.responses import teacher_responses
from distily.recording.run import run_recording

logger = logging.getLogger(__name__)


def start_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """What an unconditional sample starts from: BOS, else the token before each document of a pretraining stream
    (``document_separator_id``: an instruct tokenizer's end-of-text token, not its end-of-turn EOS)."""
    for token_id in (tokenizer.bos_token_id, document_separator_id(tokenizer)):
        if token_id is not None:
            return token_id
    raise DistilyConfigError(
        "the teacher's tokenizer has neither a beginning- nor an end-of-text token; expected one to start samples from"
    )


def sample_sequences(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: GenerateArguments, batch_size: int
) -> list[list[int]]:
    """``generate_num_samples`` token lists, each the token it was sampled from (``start_token``) and what the teacher
    wrote after it, cut before the first stop token: the student reads each sample in the context it was drawn in
    (without the start token, a tokenizer that adds no BOS, GPT-2's or Qwen's, gave the teacher's first token no
    context to predict it from, and every later one another context than it was sampled in)."""
    start = start_token(tokenizer)
    # the tokenizer's ids, its stops
    generator = open_generator("hf", teacher, tokenizer, args.sampling(), None, role="teacher")
    samples = []
    with tqdm(total=args.generate_num_samples, desc="Sampling from the teacher", unit="seq") as progress:
        while len(samples) < args.generate_num_samples:
            count = min(batch_size, args.generate_num_samples - len(samples))
            completions = generator.generate([[start]] * count)
            samples.extend([start] + strip_stop(completion, generator.stop_ids) for completion in completions)
            progress.update(count)
    return samples


def write_dataset(dataset: datasets.Dataset, output: str) -> None:
    """``dataset`` into a .jsonl or .parquet file or a ``save_to_disk`` directory, atomically."""
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    if target.suffix == ".jsonl":
        dataset.to_json(str(partial), lines=True)
    elif target.suffix == ".parquet":
        dataset.to_parquet(str(partial))
    else:
        shutil.rmtree(partial, ignore_errors=True)
        dataset.save_to_disk(str(partial))
    os.replace(partial, target)


def write_samples(samples: list[list[int]], tokenizer: PreTrainedTokenizerBase, output: str) -> None:
    """Sampled sequences as a pre-tokenized dataset (``input_ids``, and their ``text`` to read) at ``output``."""
    texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
    write_dataset(datasets.Dataset.from_dict({"input_ids": samples, "text": texts}), output)


def unfinished_counts(dropped: dict[str, int], generate_length: int, positions: Optional[int]) -> list[str]:
    """The responses dropped without a stop token, counted by the limit they reached: ``generate_length``, or the
    teacher's last position (where a prompt leaves fewer than ``generate_length`` positions)."""
    at_length, counts = dropped["unfinished"] - dropped["at_positions"], []
    if at_length or not dropped["at_positions"]:
        counts.append(f"{at_length} without a stop token within generate_length={generate_length}")
    if dropped["at_positions"]:
        counts.append(f"{dropped['at_positions']} without a stop token within the teacher's {positions} positions")
    return counts


def every_response_dropped(dropped: dict[str, int], generate_length: int, positions: Optional[int]) -> str:
    """The error when ``teacher_responses`` kept no response: how many were dropped for each cause, and what would
    keep them (shorter prompts where the teacher's positions ran out; a longer generate_length where it did)."""
    counts = [f"{dropped['empty']} empty", *unfinished_counts(dropped, generate_length, positions)]
    remedies = []
    if dropped["too_long"]:
        counts.insert(0, f"{dropped['too_long']} to prompts that fill the teacher's {positions} positions")
    if dropped["too_long"] or dropped["at_positions"]:
        remedies.append("shorter prompts, or a teacher with more positions")
    if dropped["empty"] or dropped["unfinished"] > dropped["at_positions"]:
        remedies.append("a longer generate_length")
    if dropped["unfinished"]:
        remedies.append("generate_keep_unfinished=true")
    return f"every response was dropped ({', '.join(counts)}); expected {'; or '.join(remedies)}"


def interrupted_recording(config: GenerateConfig) -> bool:
    """Whether ``teacher_store`` holds an unfinished recording of ``generate_output``: what a ``generate_record`` run
    stopped during its recording leaves (the samples written, the store part-way), which the same command resumes."""
    output = config.generate.generate_output
    if not os.path.exists(output):
        return False
    recording, finished = existing_recording(Path(config.record.teacher_store))
    return recording is not None and not finished and recording["settings"].get("dataset_name") == output


def check_one_process() -> None:
    """Sampling runs in one process: under a launcher every process would sample the same and write the same
    ``generate_output``."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        raise DistilyConfigError(
            f"distily generate was launched as {processes} processes (WORLD_SIZE={processes}); expected one: start "
            "it without accelerate launch or torchrun (a recording of what it wrote, distily record, may use several)"
        )


def run_generation(config: GenerateConfig) -> dict:
    """Sample from the teacher (or its responses to ``generate_prompts``) into ``generate_output``; with
    ``generate_record`` also record the teacher over the samples into ``teacher_store`` (a recording a stopped run
    left unfinished resumes: ``interrupted_recording``). Returns what was written (and the store's manifest)."""
    model_args, args, inference = config.model, config.generate, config.inference
    check_one_process()
    if args.generate_record:
        check_store_directory(config.record.teacher_store)
        if interrupted_recording(config):
            logger.warning(f"teacher_store={config.record.teacher_store!r} holds an unfinished recording of "
                           f"generate_output={args.generate_output!r}: resuming it (nothing is sampled)")
            return {"generate_output": args.generate_output, "resumed": True,
                    "manifest": run_recording(config.recording())}
    blocked = "exists" if os.path.exists(args.generate_output) else file_in_the_way(args.generate_output)
    if blocked is not None:  # before the teacher loads, not after all the sampling
        raise DistilyConfigError(f"generate_output={args.generate_output!r} {blocked}; expected a new path")
    set_seed(inference.seed)
    teacher = load_teacher(
        model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype, model_args.trust_remote_code
    ).to(inference.device)
    tokenizer = load_tokenizer(model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code)
    if args.generate_prompts is not None:
        data = config.data  # one date for the prompts and a store of the conversations (generate_record)
        data.chat_template_date = run_date(data.chat_template_date)
        template = run_chat_template(tokenizer, data.chat_template, data.chat_template_kwargs,
                                     date=data.chat_template_date)
        conversations, dropped = teacher_responses(teacher, tokenizer, config, template,
                                                   inference.per_device_eval_batch_size)
        positions = max_positions(teacher.config)
        if not conversations:
            raise DistilyConfigError(every_response_dropped(dropped, args.generate_length, positions))
        if dropped["too_long"]:
            logger.warning(f"{dropped['too_long']} responses were dropped: their prompts fill the teacher's "
                           f"{positions} positions (shorter prompts, or a teacher with more positions, answer them)")
        if dropped["unfinished"]:
            unfinished = ", ".join(unfinished_counts(dropped, args.generate_length, positions))
            logger.warning(f"responses were dropped: {unfinished} (generate_keep_unfinished keeps them)")
        write_dataset(datasets.Dataset.from_dict({RESPONSES_COLUMN: conversations}), args.generate_output)
        result = {"generate_output": args.generate_output, "conversations": len(conversations),
                  "too_long_dropped": dropped["too_long"], "empty_dropped": dropped["empty"],
                  "unfinished_dropped": dropped["unfinished"],
                  **({"chat_template_date": template.date} if template.date else {})}  # what the template wrote
    else:
        samples = sample_sequences(teacher, tokenizer, args, inference.per_device_eval_batch_size)
        write_samples(samples, tokenizer, args.generate_output)
        result = {
            "generate_output": args.generate_output,
            "samples": len(samples),
            "tokens": sum(len(sample) for sample in samples),
        }
    if args.generate_record:
        result["manifest"] = run_recording(config.recording(), teacher=teacher, tokenizer=tokenizer)
    return result
