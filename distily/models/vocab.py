"""Teacher and student must speak the same vocabulary; padding rows of a padded embedding are not words."""

from typing import Optional

from transformers import PreTrainedTokenizerBase

from distily.errors import DistilyConfigError


def check_same_tokenizer(teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase):
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise DistilyConfigError(
            f"the student's tokenizer ({len(student_tokenizer)} tokens) differs from the teacher's "
            f"({len(teacher_tokenizer)} tokens); expected the same tokenizer (cross-tokenizer distillation "
            "is not supported)"
        )


def shared_vocab_size(teacher_vocab: int, student_vocab: int, tokenizer_size: int) -> Optional[int]:
    """How many logit columns the loss compares: None (all) when both heads have the same width, else
    the real vocabulary when both heads cover it and differ only by padding rows."""
    if teacher_vocab == student_vocab:
        return None
    if min(teacher_vocab, student_vocab) < tokenizer_size:
        raise DistilyConfigError(
            f"teacher logits have {teacher_vocab} columns and student logits {student_vocab}, but the tokenizer has "
            f"{tokenizer_size} tokens; expected both to cover the tokenizer (differing only by padding rows)"
        )
    return tokenizer_size
