"""Cross-tokenizer alignment: hand-made token ends, and two real tokenizers with different conventions."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from distily.data.alignment import (
    ALIGNED, TEACHER_INPUT_IDS, ModelFraming, align, align_document, align_documents, check_offsets,
    closing_positions, collate_aligned, token_ends,
)
from distily.data.batches import collate
from distily.data.framing import INPUT_IDS
from distily.data.vocabulary import map_vocabularies, token_bytes
from distily.errors import DistilyConfigError
from distily.evaluation.bytes import dataset_target_bytes, token_byte_lengths
from distily.evaluation.heldout import heldout_metrics
from tests.tiny import (
    make_character_splitting_tokenizer, make_documents, make_instruct_tokenizer, make_sentencepiece_tokenizer,
    make_tokenizer, tiny_config,
)


def test_one_to_one_merges_and_splits():
    # text "abcdef": student a|bc|def, teacher ab|c|de|f
    student, teacher = [1, 3, 6], [2, 3, 5, 6]
    assert align(student, teacher) == [-1, 1, 3]  # "a" is inside teacher "ab"; "bc" closes with "c"; "def" with "f"
    assert align(teacher, student) == [-1, 1, -1, 2]


def test_a_character_split_into_bytes_closes_at_its_last_byte():
    # "é!" : byte-level gives two tokens ending at 1 (the two bytes of é), then "!" ; the other tokenizer one token
    assert closing_positions([1, 1, 2]) == {1: 1, 2: 2}
    assert align([1, 1, 2], [1, 2]) == [-1, 0, 1]


def test_closing_characters_only_move_forward():
    # a token whose successor ends earlier (offsets that go back) closes nothing
    assert closing_positions([2, 1, 3]) == {1: 1, 3: 2}
    assert closing_positions([3, 1, 4]) == {1: 1, 4: 2}


def test_a_token_that_splits_a_character_closes_nothing_before_the_token_that_completes_it(tokenizers):
    """A byte-level teacher reads ``中文`` as 中's first two bytes, then 中's last byte with 文: its first token ends
    where 中 does in its offsets but has not read 中. Aligned pairs have read the same text (their prefixes decode
    alike); the student's 中 has no partner, its 文 pairs with the token that completes both."""
    student = tokenizers[1]  # SentencePiece: 中 and 文 each as its three byte-fallback tokens
    teacher = make_character_splitting_tokenizer()
    text = "中文 ok"
    (student_ids,), (student_ends,) = token_ends(student, [text])
    (teacher_ids,), (teacher_ends,) = token_ends(teacher, [text])
    assert teacher_ends[:2] == [2, 2] and len(teacher_ids) == 5
    aligned = align(student_ends, teacher_ends)
    pairs = [(i, j) for i, j in enumerate(aligned) if j >= 0]
    for i, j in pairs:
        assert student.decode(student_ids[: i + 1]).lstrip() == teacher.decode(teacher_ids[: j + 1])
    assert [student.decode(student_ids[: i + 1]).lstrip() for i, _ in pairs] == ["中文", "中文 ", "中文 ok"]


@pytest.fixture(scope="module")
def tokenizers():
    return make_tokenizer(), make_sentencepiece_tokenizer()


TEXT = "The cat sees a book.\n\nA dog reads émoji 😀 x"


def test_byte_level_and_sentencepiece_align_on_words_newlines_and_unicode(tokenizers):
    byte_level, sentencepiece = tokenizers
    (student_ids,), (student_ends,) = token_ends(byte_level, [TEXT])
    (teacher_ids,), (teacher_ends,) = token_ends(sentencepiece, [TEXT])
    aligned = align(student_ends, teacher_ends)
    for position, teacher_position in enumerate(aligned):
        if teacher_position >= 0:  # both have read exactly the same text
            assert student_ends[position] == teacher_ends[teacher_position]
            assert byte_level.decode(student_ids[: position + 1]) == sentencepiece.decode(
                teacher_ids[: teacher_position + 1]
            ).lstrip() == TEXT[: student_ends[position]]
    for boundary in ("The", "The cat", "The cat sees", "The cat sees a book.\n\n", "😀", " x"):
        end = TEXT.index(boundary) + len(boundary)
        assert end in closing_positions(student_ends) and end in closing_positions(teacher_ends)
        assert aligned[closing_positions(student_ends)[end]] == closing_positions(teacher_ends)[end]
    assert aligned[-1] == len(teacher_ids) - 1  # the text's end


def test_rows_are_framed_per_model_and_cut_at_aligned_characters(tokenizers):
    byte_level, sentencepiece = tokenizers
    text = " ".join([TEXT] * 6)
    student_framing = ModelFraming(byte_level, "auto", 24)  # stream family: EOS after the document
    teacher_framing = ModelFraming(sentencepiece, "auto", 24)  # BOS family: <s> first in every row
    rows = align_document(text, [x[0] for x in token_ends(byte_level, [text])],
                          [x[0] for x in token_ends(sentencepiece, [text])], student_framing, teacher_framing)
    assert len(rows) > 3
    decoded_student = ""
    for number, row in enumerate(rows):
        assert len(row[INPUT_IDS]) <= 24 and len(row[TEACHER_INPUT_IDS]) <= 24
        assert row[TEACHER_INPUT_IDS][0] == sentencepiece.bos_token_id
        last = number == len(rows) - 1
        # a row ends where both tokenizers end (before the student's EOS, which the teacher's framing lacks)
        assert row[ALIGNED][-2 if last else -1] == len(row[TEACHER_INPUT_IDS]) - 1
        assert (row[INPUT_IDS][-1] == byte_level.eos_token_id) == last
        decoded_student += byte_level.decode(row[INPUT_IDS], skip_special_tokens=True)
    assert decoded_student == text  # every character in exactly one row


def test_an_instruct_teachers_rows_end_with_its_end_of_text_token(tokenizers):
    """A Qwen-instruct-like teacher (EOS <|im_end|>, the end of a chat turn) ends a document's last row with
    <|endoftext|>, as its stream blocks do; it aligns with the student's EOS (two document ends)."""
    byte_level, _ = tokenizers
    teacher = make_instruct_tokenizer("chatml")
    end_of_text = teacher.convert_tokens_to_ids("<|endoftext|>")
    rows = align_document(TEXT, [x[0] for x in token_ends(byte_level, [TEXT])],
                          [x[0] for x in token_ends(teacher, [TEXT])], ModelFraming(byte_level, "auto", 24),
                          ModelFraming(teacher, "auto", 24))
    assert [row[TEACHER_INPUT_IDS][-1] == end_of_text for row in rows] == [False] * (len(rows) - 1) + [True]
    assert not any(teacher.eos_token_id in row[TEACHER_INPUT_IDS] for row in rows)
    assert rows[-1][INPUT_IDS][-1] == byte_level.eos_token_id
    assert rows[-1][ALIGNED][-1] == len(rows[-1][TEACHER_INPUT_IDS]) - 1


def test_both_models_predict_every_token_so_bits_per_byte_count_each_byte_once(tokenizers, tmp_path):
    """Each side of the aligned rows evaluated on its own tokens: the byte-level side (no BOS, EOS-separated)
    starts every row with its end-of-text token, as its stream precedes a document, so it predicts the row's first
    token too. Both models' held-out bits per byte equal the plain-transformers ones over every byte of the text (the
    SentencePiece side reads one space more per document, its prepended ``▁``), also for documents cut in rows."""
    byte_level, sentencepiece = tokenizers
    documents = make_documents(6, seed=5)
    rows = align_documents(Dataset.from_dict({"text": documents}), byte_level, sentencepiece, "auto", 256, "text",
                           str(tmp_path))
    assert len(rows) == len(documents)  # a row each
    torch.manual_seed(0)
    sides = ((INPUT_IDS, byte_level, "gpt2", [byte_level.eos_token_id], [byte_level.eos_token_id], 0),
             (TEACHER_INPUT_IDS, sentencepiece, "llama", [sentencepiece.bos_token_id], [], 1))
    for column, tokenizer, architecture, before, after, space in sides:
        model = AutoModelForCausalLM.from_config(tiny_config(architecture, layers=1, vocab_size=len(tokenizer)))
        own = Dataset.from_dict({INPUT_IDS: rows[column]})
        found = heldout_metrics(model.eval(), own, collate, tokenizer=tokenizer)["bits_per_byte"]
        nll = 0.0
        for document in documents:
            ids = torch.tensor(before + tokenizer(document, add_special_tokens=False)[INPUT_IDS] + after)
            with torch.no_grad():
                logits = model(ids[None]).logits[0].double()
            nll += torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()
        text_bytes = sum(len(document.encode()) + space for document in documents)
        assert found == pytest.approx(nll / math.log(2) / text_bytes, rel=1e-5)
    long = [" ".join(documents) + " 😀 café"]
    rows = align_documents(Dataset.from_dict({"text": long}), byte_level, sentencepiece, "auto", 24, "text",
                           str(tmp_path))
    assert len(rows) > 4
    own = rows.select_columns([INPUT_IDS])
    assert dataset_target_bytes(own, collate, token_byte_lengths(byte_level)) == len(long[0].encode())


def test_collate_pads_both_sides_and_the_alignment():
    features = [{INPUT_IDS: [5, 6, 7], TEACHER_INPUT_IDS: [1, 2], ALIGNED: [-1, 0, 1]},
                {INPUT_IDS: [5], TEACHER_INPUT_IDS: [1, 2, 3], ALIGNED: [2]}]
    batch = collate_aligned(features, pad_token_id=9, teacher_pad_token_id=8)
    assert batch[INPUT_IDS].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert batch[TEACHER_INPUT_IDS].tolist() == [[1, 2, 8], [1, 2, 3]]
    assert batch["teacher_attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch[ALIGNED].tolist() == [[-1, 0, 1], [2, -1, -1]]


def test_shared_tokens_read_through_each_convention(tokenizers):
    byte_level, sentencepiece = tokenizers
    assert token_bytes(byte_level)[b" the"] == byte_level.convert_tokens_to_ids("\u0120the")
    assert token_bytes(sentencepiece)[b" the"] == sentencepiece.convert_tokens_to_ids("\u2581the")
    assert token_bytes(sentencepiece)[b"\n"] == sentencepiece.convert_tokens_to_ids("<0x0A>")  # no regular token
    assert token_bytes(sentencepiece)[b"a"] == sentencepiece.convert_tokens_to_ids("a")  # not <0x61>
    mapping = map_vocabularies(byte_level, sentencepiece)
    pairs = dict(zip(mapping.student_ids.tolist(), mapping.teacher_ids.tolist()))
    assert pairs[byte_level.convert_tokens_to_ids("\u0120the")] == sentencepiece.convert_tokens_to_ids("\u2581the")
    assert pairs[byte_level.convert_tokens_to_ids("\u010a")] == sentencepiece.convert_tokens_to_ids("<0x0A>")
    assert pairs[byte_level.eos_token_id] == sentencepiece.eos_token_id  # by role, not by text
    assert len(set(pairs.values())) == len(pairs)  # one student token per teacher token


def test_a_token_added_to_a_byte_level_vocabulary_is_read_as_its_text():
    """A byte-level tokenizer matches its added tokens in the text before its byte map: ``ünï`` added to it stands for
    the UTF-8 bytes of ``ünï`` (as a SentencePiece tokenizer's does), not for the three bytes its characters stand for
    in the map (ü is byte 0xFC there)."""
    byte_level, sentencepiece = make_tokenizer(), make_sentencepiece_tokenizer()
    for tokenizer in (byte_level, sentencepiece):
        tokenizer.add_tokens(["ünï"])
    added = byte_level.convert_tokens_to_ids("ünï")
    assert byte_level("a ünï", add_special_tokens=False)["input_ids"][-1] == added
    assert token_bytes(byte_level)["ünï".encode()] == added
    mapping = map_vocabularies(byte_level, sentencepiece)
    pairs = dict(zip(mapping.student_ids.tolist(), mapping.teacher_ids.tolist()))
    assert pairs[added] == sentencepiece.convert_tokens_to_ids("ünï")


def test_no_shared_token_is_an_error_naming_both(tokenizers):
    byte_level, _ = tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"\u4e00\u4e00": 0, "\u4e8c\u4e8c": 1}, unk_token="\u4e00\u4e00"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path="hanzi")
    with pytest.raises(DistilyConfigError, match="share no token") as error:
        map_vocabularies(byte_level, other)
    assert "hanzi" in str(error.value) and "\n" not in str(error.value)
    assert len(map_vocabularies(byte_level, other, required=False)) == 0


def test_a_slow_tokenizer_is_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nthe\ncat\n")
    slow = BertTokenizerLegacy(str(vocab))  # a Python tokenizer: no offset mapping
    with pytest.raises(DistilyConfigError,
                       match="tokenizer \\(BertTokenizerLegacy\\) gives no offset mapping; expected a fast"):
        check_offsets(slow, "student")


def test_the_document_separators_pair_before_the_end_of_turn_tokens(tokenizers):
    """A Qwen-instruct-like teacher ends documents with <|endoftext|> and turns with its EOS <|im_end|>: a base
    student's EOS, its document end, pairs with the teacher's document end; two instruct tokenizers pair their
    document ends and their turn ends."""
    byte_level, _ = tokenizers
    qwen, llama = make_instruct_tokenizer("chatml"), make_instruct_tokenizer("llama3")
    mapping = map_vocabularies(byte_level, qwen)
    pairs = dict(zip(mapping.student_ids.tolist(), mapping.teacher_ids.tolist()))
    assert pairs[byte_level.eos_token_id] == qwen.convert_tokens_to_ids("<|endoftext|>")
    assert qwen.eos_token_id not in pairs.values()  # no student token ends a turn
    mapping = map_vocabularies(llama, qwen)
    pairs = dict(zip(mapping.student_ids.tolist(), mapping.teacher_ids.tolist()))
    assert pairs[llama.convert_tokens_to_ids("<|end_of_text|>")] == qwen.convert_tokens_to_ids("<|endoftext|>")
    assert pairs[llama.eos_token_id] == qwen.eos_token_id  # <|eot_id|> with <|im_end|>
