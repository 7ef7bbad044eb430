"""Teacher and student must speak the same vocabulary; padding rows of a padded embedding are not words."""

from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.errors import DistilyConfigError


def same_vocabulary(teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase) -> bool:
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def _first_difference(teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase) -> str:
    """Where two different vocabularies part, in words: the token of lowest id that either holds under another id or
    lacks."""
    teacher, student = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    token = min(set(teacher.items()) ^ set(student.items()), key=lambda item: (item[1], item[0]))[0]
    student_id, teacher_id = student.get(token, "none"), teacher.get(token, "none")
    return f"{token!r} is id {student_id} in it, {teacher_id} in the teacher's"


def check_same_tokenizer(teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase,
                         why: str = "the agreement metrics compare the two models token by token",
                         model: str = "the student"):
    """``student_tokenizer``, the tokenizer of ``model`` (``distily eval``: the model as the user named it), has the
    teacher's vocabulary; else one line naming a token they differ on."""
    if not same_vocabulary(teacher_tokenizer, student_tokenizer):
        raise DistilyConfigError(
            f"the tokenizer of {model} ({len(student_tokenizer)} tokens) differs from the teacher's "
            f"({len(teacher_tokenizer)} tokens): {_first_difference(teacher_tokenizer, student_tokenizer)}; expected "
            f"the same tokenizer ({why})"
        )


def shared_vocab_size(teacher_vocab: int, student_vocab: int, tokenizer_size: int,
                      model: str = "the student") -> Optional[int]:
    """How many logit columns the loss compares: None (all) when both heads have the same width, else
    the real vocabulary when both heads cover it and differ only by padding rows. ``model`` names the model of
    ``student_vocab`` columns."""
    if teacher_vocab == student_vocab:
        return None
    if min(teacher_vocab, student_vocab) < tokenizer_size:
        raise DistilyConfigError(
            f"the teacher's logits have {teacher_vocab} columns and those of {model} {student_vocab}, but the "
            f"tokenizer has {tokenizer_size} tokens; expected both to cover the tokenizer (differing only by padding "
            "rows)"
        )
    return tokenizer_size


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, role: str) -> None:
    """Every id the tokenizer can give (``len(tokenizer)``, and its pad/BOS/EOS ids) must be a row of the model's
    input embedding: past it, a batch fails with an index error, or the run finishes and the saved model, whose
    config takes the tokenizer's pad id, cannot be loaded again (``Padding_idx must be within num_embeddings``)."""
    rows = model.get_input_embeddings().num_embeddings
    special = {
        name: getattr(tokenizer, name)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id")
        if isinstance(getattr(tokenizer, name), int) and getattr(tokenizer, name) >= rows
    }
    if len(tokenizer) > rows or special:
        beyond = "".join(f", {name} {value}" for name, value in special.items())
        raise DistilyConfigError(
            f"the tokenizer has {len(tokenizer)} tokens{beyond}, but the {role}'s input embedding has {rows} rows; "
            f"expected every token id below {rows} (the model's own tokenizer, or a model whose embedding covers it)"
        )
