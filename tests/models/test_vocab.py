import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from tiny import make_tokenizer
from distily.errors import DistilyConfigError
from distily.models.vocab import check_same_tokenizer, check_tokenizer_fits, shared_vocab_size


def test_padded_heads_share_the_real_vocabulary():
    assert shared_vocab_size(320, 320, 320) is None
    assert shared_vocab_size(384, 320, 320) == 320
    assert shared_vocab_size(320, 336, 300) == 300


def test_heads_that_do_not_cover_the_tokenizer_are_an_error():
    with pytest.raises(DistilyConfigError, match="expected both to cover the tokenizer"):
        shared_vocab_size(320, 256, 300)


def test_different_tokenizers_are_an_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(DistilyConfigError, match="differs from the teacher's"):
        check_same_tokenizer(make_tokenizer(), PreTrainedTokenizerFast(tokenizer_object=other))
    check_same_tokenizer(make_tokenizer(), make_tokenizer())


def test_tokenizers_of_one_size_are_told_apart_by_a_token():
    """Two vocabularies of 320 tokens used to be refused as 'the student's tokenizer (320 tokens) differs from the
    teacher's (320 tokens)', which names no difference."""
    student = make_tokenizer()
    renamed = {**student.get_vocab()}
    first = min(renamed, key=renamed.get)
    renamed["<renamed>"] = renamed.pop(first)
    teacher = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(renamed, unk_token="<renamed>")))
    with pytest.raises(DistilyConfigError) as error:
        check_same_tokenizer(teacher, student)
    assert str(error.value) == (
        "the tokenizer of the student (320 tokens) differs from the teacher's (320 tokens): '<eos>' is id 0 in it, "
        "none in the teacher's; expected the same tokenizer (the agreement metrics compare the two models token by "
        "token)"
    )


def test_a_tokenizer_must_fit_the_input_embedding():
    from transformers import AutoModelForCausalLM

    from tiny import VOCAB, tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1))
    tokenizer = make_tokenizer()
    check_tokenizer_fits(tokenizer, model, "student")  # VOCAB tokens, VOCAB rows
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    with pytest.raises(DistilyConfigError, match=f"the tokenizer has {VOCAB + 1} tokens, pad_token_id {VOCAB}, but "
                                                 f"the student's input embedding has {VOCAB} rows"):
        check_tokenizer_fits(tokenizer, model, "student")
