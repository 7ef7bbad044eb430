"""On-policy distillation (GKD: Agarwal et al., 2024, arXiv 2306.13649): a fraction ``lmbda`` of the training
micro-batches is replaced by the student's own completions of their prompts, which the teacher then scores.

A batch's prompts follow the shared ``loss_mask`` convention (``loss_mask[b, t] = 1`` iff the token at t + 1 is
a target). Each conversation of a row (one per row when padded; under document masks, each document of the block,
by its ``position_ids``) gives one prompt: its tokens up to and including the first position of its last run of
``loss_mask`` (the token that predicts its last assistant turn's first target), so that a multi-turn
conversation keeps its earlier turns as context and the student answers its last one (as TRL's GKD trainer does);
the whole conversation when it has no target. The new batch is prompt + completion per prompt, right-padded, with
``loss_mask`` 1 exactly at the positions that predict completion tokens. Whether a
micro-batch goes on-policy is drawn from ``(seed, optimizer step, micro-batch index)``, and its completions are
sampled from the random state seeded with these and the process's index, so a run, and a run resumed from a
checkpoint, picks the same batches and (with the ``hf`` back end) samples the same completions. Across tokenizers
(``AlignedOnPolicyBatches``) each new row also carries the teacher's tokens of the completion and the alignment.
"""

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.alignment import TEACHER_ATTENTION_MASK, TEACHER_INPUT_IDS, TEACHER_LOSS_MASK, collate_aligned
from distily.data.batches import completion_batch
from distily.data.chat import ChatTemplate
from distily.data.chat_alignment import CompletionAlignment
from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS
from distily.errors import DistilyConfigError
from distily.generation.backends import open_generator
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import CompletionGenerator


def last_turn_start(targets: torch.Tensor) -> Optional[int]:
    """The first position of the last run of ``targets`` [seq] (bool), None when there is none."""
    previous = torch.cat([targets.new_zeros(1), targets[:-1]])  # [seq]
    starts = (targets & ~previous).nonzero()
    return int(starts[-1]) if len(starts) else None


def batch_prompts(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """The prompt of each conversation in the batch, row by row (see the module's docstring)."""
    attended = batch["attention_mask"].bool()  # [batch, seq]
    targets = batch[LOSS_MASK].bool() & attended  # [batch, seq]
    positions = batch.get(POSITION_IDS)  # [batch, seq] under document masks
    prompts = []
    for row, row_attended in enumerate(attended):
        ids, row_targets = batch[INPUT_IDS][row][row_attended], targets[row][row_attended]
        starts = [0] if positions is None else (positions[row][row_attended] == 0).nonzero().flatten().tolist()
        for start, stop in zip(starts, starts[1:] + [len(ids)]):
            first = last_turn_start(row_targets[start:stop])
            prompts.append(ids[start:stop if first is None else start + first + 1].tolist())
    return prompts


@contextmanager
def seeded_sampling(entropy: list[int], device: torch.device) -> Iterator[None]:
    """torch's random state on the CPU and on ``device``, seeded from ``entropy`` for the block and restored after.
    The Trainer restores a checkpoint's random state only after it has collected the first step's batches, so
    completions sampled from the running state would differ in a resumed run."""
    devices = [] if device.type == "cpu" else [device.index if device.index is not None else 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(int(np.random.default_rng(entropy).integers(2**63)))
        yield


def model_device(model: Optional[PreTrainedModel]) -> torch.device:
    """Where ``model``'s first parameter is (the CPU for none)."""
    parameter = next(model.parameters(), None) if model is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


class OnPolicyBatches:
    """Replaces the drawn micro-batches of each optimizer step with the student's completions, and keeps the
    figures logged with the training logs (``logs()``)."""

    def __init__(self, generator: CompletionGenerator, lmbda: float, seed: int, pad_token_id: int,
                 max_seq_length: int, process: int = 0):
        self.generator, self.lmbda, self.seed, self.process = generator, lmbda, seed, process
        self.pad_token_id, self.max_seq_length = pad_token_id, max_seq_length
        self._loaded_step: Optional[int] = None  # the optimizer step whose weights the generator samples from
        self._reset()

    def _reset(self) -> None:
        self._batches = self._on_policy = self._completions = self._tokens = 0
        self._seconds = 0.0

    def is_on_policy(self, step: int, index: int) -> bool:
        """Whether micro-batch ``index`` of optimizer step ``step`` goes on-policy (probability ``lmbda``)."""
        return np.random.default_rng([self.seed, step, index]).random() < self.lmbda

    def _check_prompts(self, batch: dict) -> None:
        if LOSS_MASK not in batch:
            raise DistilyConfigError(
                f"lmbda={self.lmbda} needs prompts, but the training batches carry no loss_mask (plain text); "
                "expected prompt/completion or messages data, or lmbda=0"
            )

    def replace(self, batches: list[dict], step: int, student: PreTrainedModel, sharded: bool = False) -> list[dict]:
        """``batches`` (one optimizer step's micro-batches, at optimizer step ``step``), the drawn ones replaced by
        on-policy batches generated by ``student`` (``sharded`` over the processes: FSDP, ZeRO-3). Every process
        draws the same micro-batches, so a sharded student generates on all of them together."""
        replaced = []
        for index, batch in enumerate(batches):
            self._check_prompts(batch)
            self._batches += 1
            on_policy = self.is_on_policy(step, index)
            replaced.append(self._generated(batch, step, index, student, sharded) if on_policy else batch)
        return replaced

    def _generated(self, batch: dict, step: int, index: int, student: PreTrainedModel, sharded: bool) -> dict:
        if self._loaded_step != step:  # the weights changed since the last generation
            self.generator.load_weights(student, sharded)
            self._loaded_step = step
        prompts = batch_prompts(batch)
        started = time.perf_counter()
        with seeded_sampling([self.seed, step, index, self.process], model_device(student)):
            completions = self.generator.generate(prompts)
        self._seconds += time.perf_counter() - started
        completions = [completion[: max(self.max_seq_length - len(prompt), 0)]  # within the run's length
                       for prompt, completion in zip(prompts, completions)]
        self._on_policy += 1
        self._completions += len(completions)
        self._tokens += sum(len(completion) for completion in completions)
        return self.completed(batch, prompts, completions)

    def completed(self, batch: dict, prompts: list[list[int]], completions: list[list[int]]) -> dict:
        """The on-policy batch of ``batch``'s ``prompts`` and the student's ``completions`` of them."""
        return completion_batch(prompts, completions, self.pad_token_id)

    def logs(self, total: Callable[[torch.Tensor], torch.Tensor] = lambda counts: counts,
             processes: int = 1) -> dict[str, float]:
        """Since the last call, over the ``processes`` (``total`` sums a tensor over them): the fraction of
        micro-batches that went on-policy, the generated tokens per second of generation (the processes generate
        side by side), and the mean completion length (tokens)."""
        counts = [self._batches, self._on_policy, self._completions, self._tokens, self._seconds]
        batches, on_policy, completions, tokens, seconds = total(torch.tensor(counts, dtype=torch.float64)).tolist()
        logs = {"on_policy/fraction": round(on_policy / max(batches, 1), 6)}
        if completions:
            logs["on_policy/generated_tokens_per_second"] = round(tokens / max(seconds / processes, 1e-9), 3)
            logs["on_policy/mean_completion_length"] = round(tokens / completions, 3)
        self._reset()
        return logs


def teacher_prompts(batch: dict) -> list[list[int]]:
    """The prompts of a cross-tokenizer batch's teacher side (``batch_prompts`` over its ids and assistant mask)."""
    return batch_prompts({INPUT_IDS: batch[TEACHER_INPUT_IDS], "attention_mask": batch[TEACHER_ATTENTION_MASK],
                          LOSS_MASK: batch[TEACHER_LOSS_MASK]})


class AlignedOnPolicyBatches(OnPolicyBatches):
    """On-policy batches across tokenizers (as TRL's GOLD trainer offers them): the student completes each prompt
    in its own template and tokens, and each completion is aligned with the teacher's tokens of its text after the
    same conversation's prompt in the teacher's template (``CompletionAlignment``), so the teacher scores what the
    student wrote through the cross-tokenizer losses."""

    def __init__(self, generator: CompletionGenerator, lmbda: float, seed: int, pad_token_id: int,
                 max_seq_length: int, alignment: CompletionAlignment, teacher_pad_token_id: int, process: int = 0):
        super().__init__(generator, lmbda, seed, pad_token_id, max_seq_length, process)
        self.alignment, self.teacher_pad_token_id = alignment, teacher_pad_token_id

    def completed(self, batch: dict, prompts: list[list[int]], completions: list[list[int]]) -> dict:
        rows = [self.alignment.row(prompt, completion, teacher_prompt)
                for prompt, completion, teacher_prompt in zip(prompts, completions, teacher_prompts(batch))]
        return collate_aligned(rows, self.pad_token_id, self.teacher_pad_token_id)


def on_policy_batches(
    training, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pad_token_id: int, max_seq_length: int,
    alignment: Optional[CompletionAlignment] = None, teacher_pad_token_id: int = 0,
    template: Optional[ChatTemplate] = None, trust_remote_code: bool = False,
) -> Optional[OnPolicyBatches]:
    """The on-policy replacement ``training`` (``DistillationTrainingArguments``) asks for, or None at lmbda=0:
    the student's completions, sampled with ``tokenizer`` (the student's) and padded with ``pad_token_id``; across
    tokenizers (an ``alignment`` given) aligned with the teacher's tokens, padded with ``teacher_pad_token_id``;
    a completion of a chat rendered with ``template`` (the student's) ends at its end of turn too;
    ``trust_remote_code`` (the run's) lets a vllm engine load a student whose config names its checkpoint's code."""
    if training.lmbda == 0:
        return None
    settings = SamplingSettings(
        training.on_policy_max_new_tokens, training.on_policy_temperature, training.on_policy_top_p
    )
    generator = open_generator(training.on_policy_backend, student, tokenizer, settings, max_seq_length, template,
                               trust_remote_code)
    if alignment is None:
        return OnPolicyBatches(generator, training.lmbda, training.seed, pad_token_id, max_seq_length,
                               training.process_index)
    return AlignedOnPolicyBatches(generator, training.lmbda, training.seed, pad_token_id, max_seq_length, alignment,
                                  teacher_pad_token_id, training.process_index)
