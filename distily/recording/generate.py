"""``distily generate``: synthetic text sampled from the teacher, as a dataset to distill on.

Each sample starts from the beginning-of-text token (the end-of-text token where the tokenizer has
none) and runs ``generate_length`` tokens or until the teacher samples end-of-text. The temperature
can move along the sequence (hot at the start for variety, cooler later for coherence); nucleus
sampling (top-p) is applied after it. Samples are written with an ``input_ids`` column (the exact
tokens, used pre-tokenized by ``distily distill``) and their ``text``.
"""

import os
import shutil
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TopPLogitsWarper,
    set_seed,
)

from distily.config import GenerateConfig
from distily.data.framing import tokenizer_adds_bos
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher, load_tokenizer
from distily.recording.arguments import GenerateArguments
from distily.recording.run import run_recording


class LinearTemperatureLogitsProcessor(LogitsProcessor):
    """Divides the scores by a temperature that moves linearly from ``start`` at the first sampled token
    to ``end`` at the ``length``-th (and stays there): ``T_i = start + (end - start) * min(i / (length - 1), 1)``
    for the i-th sampled token, i from 0. ``start == end`` is plain temperature sampling."""

    def __init__(self, start: float, end: float, length: int, prompt_length: int):
        self.start, self.end, self.length, self.prompt_length = start, end, length, prompt_length

    def temperature(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(step / max(self.length - 1, 1), 1.0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids [batch, prompt + sampled so far], scores [batch, vocab]
        return scores / self.temperature(input_ids.shape[-1] - self.prompt_length)


def start_token(tokenizer: PreTrainedTokenizerBase) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise DistilyConfigError(
        "the teacher's tokenizer has neither a beginning- nor an end-of-text token; expected one to start samples from"
    )


@torch.no_grad()
def sample_sequences(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args: GenerateArguments, batch_size: int
) -> list[list[int]]:
    """``generate_num_samples`` token lists, each cut before the first end-of-text token; for a tokenizer that
    starts texts with BOS, each starts with it, so the samples reach a student framed as the teacher read them."""
    start = start_token(tokenizer)
    keep_start = tokenizer_adds_bos(tokenizer)  # a sample opens as the teacher's contexts open: BOS first
    eos = tokenizer.eos_token_id
    samples = []
    with tqdm(total=args.generate_num_samples, desc="Sampling from the teacher", unit="seq") as progress:
        while len(samples) < args.generate_num_samples:
            count = min(batch_size, args.generate_num_samples - len(samples))
            prompt = torch.full((count, 1), start, dtype=torch.long, device=teacher.device)  # [count, 1]
            processors = LogitsProcessorList([
                LinearTemperatureLogitsProcessor(
                    args.generate_temperature,
                    args.generate_final_temperature or args.generate_temperature,
                    args.generate_length,
                    prompt_length=1,
                ),
                TopPLogitsWarper(args.generate_top_p),
            ])
            generated = teacher.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                temperature=1.0,  # the processors above do the temperature and top-p, in that order
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.generate_length,
                logits_processor=processors,
                pad_token_id=eos if eos is not None else start,
                eos_token_id=eos,
            )[:, 1:]  # [count, <= generate_length]
            head = [start] if keep_start else []
            for row in generated.tolist():
                samples.append(head + (row[: row.index(eos)] if eos in row else row))
            progress.update(count)
    return samples


def write_samples(samples: list[list[int]], tokenizer: PreTrainedTokenizerBase, output: str) -> None:
    """``input_ids`` and ``text`` columns into a .jsonl file or a ``save_to_disk`` directory, atomically."""
    dataset = datasets.Dataset.from_dict({"input_ids": samples, "text": tokenizer.batch_decode(samples, skip_special_tokens=True)})
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    if target.suffix == ".jsonl":
        dataset.to_json(str(partial), lines=True)
    else:
        shutil.rmtree(partial, ignore_errors=True)
        dataset.save_to_disk(str(partial))
    os.replace(partial, target)


def run_generation(config: GenerateConfig) -> dict:
    """Sample from the teacher into ``generate_output``; with ``generate_record`` also record the teacher over
    the samples into ``teacher_store``. Returns what was written (and the store's manifest)."""
    model_args, args, inference = config.model, config.generate, config.inference
    if os.path.exists(args.generate_output):
        raise DistilyConfigError(f"generate_output={args.generate_output!r} exists; expected a new path")
    set_seed(inference.seed)
    teacher = load_teacher(
        model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype, model_args.trust_remote_code
    ).to(inference.device)
    tokenizer = load_tokenizer(model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code)
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
