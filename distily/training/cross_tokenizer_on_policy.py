"""On-policy distillation across tokenizers (as TRL's GOLD trainer offers it): the student completes each
conversation's last answer in its own template and tokens; the completion's text is tokenized by the teacher's
tokenizer after the same conversation's prompt in the teacher's template, and the two are aligned on the
characters of that text (``distily.data.chat_alignment.CompletionAlignment``), so the teacher scores what the
student wrote through the cross-tokenizer losses."""

from distily.data.alignment import TEACHER_ATTENTION_MASK, TEACHER_INPUT_IDS, TEACHER_LOSS_MASK, collate_aligned
from distily.data.chat_alignment import CompletionAlignment
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.generation.engine import CompletionGenerator
from distily.training.on_policy import OnPolicyBatches, batch_prompts


def teacher_prompts(batch: dict) -> list[list[int]]:
    """The prompts of an aligned batch's teacher side (``batch_prompts`` over its ids and assistant mask)."""
    return batch_prompts({INPUT_IDS: batch[TEACHER_INPUT_IDS], "attention_mask": batch[TEACHER_ATTENTION_MASK],
                          LOSS_MASK: batch[TEACHER_LOSS_MASK]})


class AlignedOnPolicyBatches(OnPolicyBatches):
    """``OnPolicyBatches`` whose batches carry the teacher's tokens of each completion and the alignment."""

    def __init__(self, generator: CompletionGenerator, lmbda: float, seed: int, pad_token_id: int,
                 max_seq_length: int, alignment: CompletionAlignment, teacher_pad_token_id: int):
        super().__init__(generator, lmbda, seed, pad_token_id, max_seq_length)
        self.alignment, self.teacher_pad_token_id = alignment, teacher_pad_token_id

    def completed(self, batch: dict, prompts: list[list[int]], completions: list[list[int]]) -> dict:
        rows = [self.alignment.row(prompt, completion, teacher_prompt)
                for prompt, completion, teacher_prompt in zip(prompts, completions, teacher_prompts(batch))]
        return collate_aligned(rows, self.pad_token_id, self.teacher_pad_token_id)
