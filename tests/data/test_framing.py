"""Framing: blocks open the way the model's pretraining contexts did, documents never see each other, and a
BOS-anchored teacher measured by Distily scores what plain transformers gives on the same sequences."""

import json
import logging
import re
from functools import partial

import datasets
import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from distily.data.alignment import ModelFraming
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.framing import (
    Framing, check_causality, check_document_isolation, check_models_keep_documents_apart, document_separator_id,
    model_inputs, resolve_packing,
)
from distily.data.sources import load_documents
from distily.data.text_files import split_text
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.evaluation.framing_check import check_framing
from distily.evaluation.heldout import Evaluator, heldout_metrics
from distily.recording.arguments import GenerateArguments
from distily.recording.generate import sample_sequences, start_token, write_samples
from tiny import (
    ARCHITECTURES,
    CHAT_STYLES,
    INSTRUCT_END_OF_TEXT,
    documents_of,
    make_bos_tokenizer,
    make_chat_tokenizer,
    make_documents,
    make_instruct_tokenizer,
    make_tokenizer,
    plain_loss,
    save_tiny_masked_lm,
    sequences_of,
    tiny_config,
    tiny_opt,
    train_bos_anchored_llama,
    write_jsonl,
)

BOS = 1000  # a stand-in id in the pure framing tests


@pytest.fixture(scope="module")
def bos_tokenizer():
    return make_bos_tokenizer()


@pytest.fixture(scope="module")
def bos_teacher(bos_tokenizer):
    return train_bos_anchored_llama(bos_tokenizer)


def test_bos_blocks_open_with_bos_and_keep_every_token():
    documents = [[BOS] + list(range(i * 100, i * 100 + n)) for i, n in enumerate([5, 13, 2, 30, 7, 9])]
    packed = Framing("bos_blocks", 8, bos_token_id=BOS).pack(documents)
    assert all(len(ids) == 8 and ids[0] == BOS for ids in packed["input_ids"])
    pieces = [p for ids, pos in zip(packed["input_ids"], packed["position_ids"]) for p in documents_of(ids, pos)]
    rebuilt, current = [], None  # a piece that does not open a document continues the previous one
    for piece in pieces:
        if piece[1:2] and current is not None and piece[1] == current[-1] + 1 and current[0] == BOS:
            current.extend(piece[1:])
        else:
            current = list(piece)
            rebuilt.append(current)
    stream = [t for d in documents for t in d]
    assert [t for d in rebuilt for t in d] == stream[: len([t for d in rebuilt for t in d])]
    assert len(stream) - sum(map(len, rebuilt)) < 8  # only the last partial block is dropped


def test_documents_packing_keeps_each_document_whole():
    documents = [[BOS] + list(range(i * 100, i * 100 + n)) for i, n in enumerate([5, 13, 2, 6, 7, 1, 3])]
    packed = Framing("documents", 16, bos_token_id=BOS).pack(documents)
    assert all(len(ids) <= 16 for ids in packed["input_ids"])
    pieces = [p for ids, pos in zip(packed["input_ids"], packed["position_ids"]) for p in documents_of(ids, pos)]
    assert sorted(pieces) == sorted(documents)
    assert len(packed["input_ids"]) == 3  # best fit: 44 tokens in three blocks of 16


def test_a_long_document_is_cut_under_the_bos_rule():
    document = [BOS] + list(range(20))
    packed = Framing("documents", 8, bos_token_id=BOS).pack([document])
    pieces = sorted(packed["input_ids"], key=lambda ids: ids[1] if ids[0] == BOS else -1)
    assert all(ids[0] == BOS for ids in pieces)
    assert [t for ids in pieces for t in ids[1:]] == list(range(20))


def test_auto_packing_follows_the_tokenizer(bos_tokenizer, tokenizer):
    assert resolve_packing("auto", bos_tokenizer, pretokenized=False) == "documents"
    assert resolve_packing("auto", tokenizer, pretokenized=False) == "stream"  # GPT-2 style: no BOS
    assert resolve_packing("auto", tokenizer, pretokenized=True) == "documents"
    assert resolve_packing("stream", bos_tokenizer, pretokenized=True) == "stream"
    # OPT's BOS is its separator </s>, the end of the document before: it was pretrained on a stream
    assert resolve_packing("auto", make_opt_tokenizer(), pretokenized=False) == "stream"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("packing", ["bos_blocks", "documents"])
def test_no_token_attends_across_a_document_boundary(arch, packing):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers=2)).eval()
    first, second = [1] + list(range(10, 19)), [1] + list(range(40, 45))
    framing = Framing(packing, 16, bos_token_id=1)

    def logits(documents):
        packed = framing.pack(documents)
        batch = collate([dict(zip(packed, row)) for row in zip(*packed.values())])
        with torch.no_grad():
            return model(**model_inputs(batch)).logits[0], batch

    original, batch = logits([first, second])
    perturbed, _ = logits([[1] + list(range(60, 69)), second])  # document A changed, B kept
    assert batch["position_ids"][0].tolist()[:16] == list(range(10)) + list(range(6))  # positions restart
    b = slice(10, 16)
    assert torch.allclose(original[b], perturbed[b], atol=1e-5)
    assert not torch.allclose(original[:10], perturbed[:10], atol=1e-3)
    alone = model(input_ids=torch.tensor([second])).logits[0]
    assert torch.allclose(original[b], alone, atol=1e-4)
    assert (batch["labels"][0, 10] == -100).item()  # B's first token is no target of A's last


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_an_instruct_tokenizer_separates_documents_with_its_end_of_text_token(style, tmp_path):
    """Qwen2.5-Instruct and Qwen3 (ChatML) set eos_token to <|im_end|>, Llama-3.x-Instruct to <|eot_id|>: chat
    end-of-turn tokens. Their base models were pretrained on documents ended by <|endoftext|> / <|end_of_text|>,
    which ``stream`` puts between documents, in the blocks and in the cross-tokenizer rows alike."""
    tokenizer = make_instruct_tokenizer(style)
    end_of_text, end_of_turn = INSTRUCT_END_OF_TEXT[style], CHAT_STYLES[style][2]
    separator = tokenizer.convert_tokens_to_ids(end_of_text)
    assert tokenizer.eos_token == end_of_turn and document_separator_id(tokenizer) == separator
    first, second = tokenizer(["the cat sees a book.", "a dog reads the tree."])["input_ids"]
    length = len(first) + 1 + len(second)
    packed = Framing.for_tokenizer("stream", tokenizer, length, pretokenized=False).pack([first, second, first])
    assert packed["input_ids"][0] == first + [separator] + second  # doc1<|endoftext|>doc2, not doc1<|im_end|>doc2
    path = write_jsonl(tmp_path / "d.jsonl", make_documents(40, seed=3))
    data = build_datasets(data_args(path, tmp_path, packing="stream"), tokenizer, 32, seed=0)
    blocks = [ids.tolist() for split in (data.train, data.eval) for ids in split["input_ids"]]
    assert data.framing.eos_token_id == separator and sum(ids.count(separator) for ids in blocks) > 10
    assert not any(tokenizer.eos_token_id in ids for ids in blocks)
    assert ModelFraming(tokenizer, "stream", 32).eos == separator  # the teacher's cross-tokenizer rows end alike


def test_base_tokenizers_keep_eos_as_the_document_separator():
    """The separator is eos_token wherever eos_token is no chat end-of-turn token (GPT-2, Qwen and Llama 3 base,
    Phi-3's <|endoftext|>), or where the vocabulary holds no end-of-text token to use instead."""
    base = make_tokenizer("<|endoftext|>")
    assert document_separator_id(base) == base.eos_token_id
    phi3 = make_chat_tokenizer("phi3", eos_token="<|endoftext|>")  # <|end|> ends a turn, <|endoftext|> is EOS
    assert document_separator_id(phi3) == phi3.eos_token_id == phi3.convert_tokens_to_ids("<|endoftext|>")
    gemma = make_chat_tokenizer("gemma")  # a Gemma whose EOS were its end-of-turn token: <eos> ends documents
    gemma.eos_token = "<end_of_turn>"
    assert document_separator_id(gemma) == gemma.convert_tokens_to_ids("<eos>")
    bare = make_chat_tokenizer("chatml", eos_token="</s>")
    bare.eos_token = "<|im_end|>"
    assert document_separator_id(bare) == bare.eos_token_id  # nothing better in the vocabulary


def make_opt_tokenizer():
    """OPT's habits: its BOS is its EOS, ``</s>``, and it starts every text with it."""
    backend = make_tokenizer("</s>").backend_tokenizer
    eos = backend.token_to_id("</s>")
    backend.post_processor = TemplateProcessing(single="</s> $A", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>")


def test_one_end_of_text_token_separates_documents_where_bos_is_eos():
    """OPT was pretrained on documents each followed by ``</s>`` (metaseq's streaming_language_modeling), joined
    and cut into blocks, and its tokenizer starts a text with ``</s>`` (the previous document's end). ``stream``
    added the separator after each document before the next one's BOS: ``</s></s>`` 39 times between 40
    documents, a pair of tokens OPT never saw. Now the stream is OPT's: ``</s> doc1 </s> doc2 </s> ...``."""
    tokenizer = make_opt_tokenizer()
    eos = tokenizer.eos_token_id
    texts = make_documents(40, seed=3)
    assert tokenizer(texts[0])["input_ids"][0] == eos == tokenizer.bos_token_id
    framing = Framing.for_tokenizer("stream", tokenizer, 64, pretokenized=False)
    stream = [token for block in framing.pack(tokenizer(texts)["input_ids"])["input_ids"] for token in block]
    plain = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pretrained = [eos] + [token for ids in plain for token in ids + [eos]]
    assert stream == pretrained[: len(pretrained) // 64 * 64]


def test_stream_blocks_do_attend_across_documents():
    """The contrast: GPT-2's layout keeps one context over documents, so the isolation test above can fail."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", layers=2)).eval()
    framing = Framing("stream", 16, eos_token_id=0)

    def logits(first):
        batch = collate([{"input_ids": ids} for ids in framing.pack([first, list(range(40, 46))])["input_ids"]])
        assert "position_ids" not in batch
        return model(**model_inputs(batch)).logits[0, 11:16]

    assert not torch.allclose(logits(list(range(10, 20))), logits(list(range(60, 70))), atol=1e-3)


class LeakyModel(torch.nn.Module):
    """Ignores position_ids: every position sees the mean of all earlier embeddings, across documents."""

    def __init__(self):
        super().__init__()
        self.config = tiny_config("llama")
        self.embed = torch.nn.Embedding(self.config.vocab_size, 8)
        self.head = torch.nn.Linear(8, self.config.vocab_size)

    def forward(self, input_ids, position_ids=None, use_cache=None):
        hidden = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return type("Output", (), {"logits": self.head(hidden)})


def test_a_model_that_lets_documents_see_each_other_is_refused():
    with pytest.raises(DistilyConfigError, match=r"the teacher \(LeakyModel\) lets packed documents attend"):
        check_document_isolation(LeakyModel(), "teacher")
    torch.manual_seed(0)
    check_document_isolation(AutoModelForCausalLM.from_config(tiny_config("llama", layers=2)), "student")


def test_the_packing_a_refused_model_is_told_to_use_measures_it_on_each_document_alone(bos_tokenizer):
    """OPT ignores restarting positions and its tokenizer starts every text with BOS: the packing the refusal names
    must score each document alone, as plain transformers does (stream, once named, joined and cut them: +86% on a
    trained OPT's held-out loss, and the framing guard then asked for documents, which is refused)."""
    model = tiny_opt(bos_tokenizer)
    with pytest.raises(DistilyConfigError, match=r"lets packed documents attend") as refusal:
        check_document_isolation(model, "teacher")
    packing = re.search(r"expected packing=(\w+)", str(refusal.value)).group(1)
    documents = bos_tokenizer(make_documents(12, seed=3))["input_ids"]
    blocks = Framing.for_tokenizer(packing, bos_tokenizer, 128, pretokenized=False).pack(documents)
    rows = [dict(zip(blocks, row)) for row in zip(*blocks.values())]
    measured = heldout_metrics(model, rows, partial(collate, pad_token_id=0), batch_size=4)["lm_loss"]
    assert measured == pytest.approx(plain_loss(model, documents), rel=1e-5)


def test_only_models_that_will_read_packed_documents_are_probed(bos_tokenizer):
    packed = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "position_ids": [[0, 0]]})
    plain = datasets.Dataset.from_dict({"input_ids": [[1, 2]]})
    teacher = [("teacher", tiny_opt(bos_tokenizer))]
    check_models_keep_documents_apart(teacher, Framing("padded", 64), [plain])  # no packed documents anywhere
    for framing, eval_sets in ((Framing("documents", 64), [plain]), (Framing("padded", 64), [plain, packed]),
                               (None, [packed])):
        with pytest.raises(DistilyConfigError, match=r"the teacher \(OPTForCausalLM\) lets packed documents attend"):
            check_models_keep_documents_apart(teacher, framing, eval_sets)


def test_distily_eval_refuses_a_model_that_would_read_across_packed_documents(bos_tokenizer, tmp_path, capsys):
    """eval never probed its models: a BOS tokenizer packs named eval sets as documents, and a model ignoring
    restarting position_ids (OPT) read across them silently (+5.7% held-out loss on a trained OPT)."""
    from distily.cli import main

    model_dir = tmp_path / "opt"
    tiny_opt(bos_tokenizer).save_pretrained(model_dir)
    bos_tokenizer.save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(make_documents(12, seed=3)))
    arguments = ["eval", str(model_dir), "--eval_datasets", json.dumps({"text": str(text)}), "--max_seq_length", "64",
                 "--tokenization_cache_dir", str(tmp_path / "cache")]
    assert main(arguments) == 2
    assert "lets packed documents attend to each other" in capsys.readouterr().err
    assert main([*arguments, "--packing", "padded"]) == 0


def test_a_model_that_sees_later_tokens_is_refused_and_causal_ones_pass(tmp_path):
    from transformers import BertLMHeadModel

    bidirectional = AutoModelForCausalLM.from_pretrained(save_tiny_masked_lm(tmp_path / "bert", make_tokenizer()))
    assert type(bidirectional) is BertLMHeadModel and not bidirectional.config.is_decoder
    with pytest.raises(DistilyConfigError, match=r"^the teacher \(BertLMHeadModel\) is not causal: its logits at a "):
        check_causality(bidirectional, "teacher")
    decoder = BertLMHeadModel(type(bidirectional.config)(**{**bidirectional.config.to_dict(), "is_decoder": True}))
    check_causality(decoder, "student")  # the same architecture as a decoder: causal
    for arch in ARCHITECTURES:
        check_causality(AutoModelForCausalLM.from_config(tiny_config(arch, layers=2)), "student")
    check_causality(LeakyModel(), "teacher")  # its cumulative mean reads earlier tokens only


@pytest.mark.parametrize("delimiter, expected", [
    ("blank_line", ["a b\nc", "d\ne f", "g\n"]),
    ("line", ["a b", "c", "", "d", "e f", " \t", "", "g"]),
    ("file", ["a b\nc\n\nd\ne f\n \t\n\ng\n"]),
    (r"^d", ["a b\nc\n\n", "d\ne f\n \t\n\ng\n"]),
])
def test_text_files_split_into_documents_with_line_breaks_kept(delimiter, expected):
    assert split_text("a b\nc\n\nd\ne f\n \t\n\ng\n", delimiter) == expected


def test_a_line_ends_at_a_line_feed_only():
    """``line`` records end at \\n or \\r\\n: a form feed, a Unicode line or paragraph separator, a NEL or a lone
    \\r inside a record (which str.splitlines cuts at) stays in it."""
    text = "one\x0cpage\r\ntwo\u2028line\u2029para\nthree\x85nel\x1cfs\rcr\n\nfour"
    assert split_text(text, "line") == ["one\x0cpage", "two\u2028line\u2029para", "three\x85nel\x1cfs\rcr", "", "four"]
    assert split_text("", "line") == [] and split_text("a\n", "line") == ["a"]
    assert split_text("a\n\n", "line") == ["a", ""]


def test_a_byte_order_mark_is_not_text(tmp_path):
    """A UTF-8 file may open with a byte-order mark (Windows editors write one): no character of its first
    document; a bad byte after it is still counted from the file's start."""
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFirst paragraph.\n\nSecond paragraph.\n".encode("utf-8"))
    assert list(load_documents(DataArguments(dataset_name=str(path)))["text"]) == ["First paragraph.",
                                                                                    "Second paragraph.\n"]
    path.write_bytes(b"\xef\xbb\xbfgood text\n\n\xff bad")
    with pytest.raises(DistilyConfigError, match=r"is not UTF-8 at byte 14; expected UTF-8 text"):
        load_documents(DataArguments(dataset_name=str(path)))


def test_a_txt_files_line_breaks_reach_the_tokenizer(tmp_path, bos_tokenizer):
    articles = ["First line of one.\nSecond line of one.", "Only line of two.", "Three:\n  indented\n\tand tabbed."]
    path = tmp_path / "d.txt"
    path.write_text("\n\n".join(articles) + "\n")
    args = DataArguments(dataset_name=str(path), tokenization_cache_dir=str(tmp_path / "cache"), packing="documents",
                         eval_fraction=0.34, max_eval_samples=None)
    data = build_datasets(args, bos_tokenizer, 64, seed=0)
    pieces = [documents_of(row["input_ids"].tolist(), row["position_ids"].tolist()) for split in (data.train, data.eval)
              for row in split]
    found = sorted(piece for row in pieces for piece in row)
    expected = sorted(bos_tokenizer(text)["input_ids"] for text in articles[:2] + [articles[2] + "\n"])
    assert found == expected


def test_invalid_document_delimiter_and_non_utf8_are_one_line_errors(tmp_path):
    with pytest.raises(DistilyConfigError, match=r"text_document_delimiter='\(' is not a regular expression"):
        split_text("x", "(")
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n\n\xff\xfe bad")
    from distily.data.sources import load_documents

    with pytest.raises(DistilyConfigError, match=r"is not UTF-8 at byte 11; expected UTF-8 text"):
        load_documents(DataArguments(dataset_name=str(path)))


# ----- a BOS-anchored teacher, measured by Distily and by plain transformers -----


def distily_teacher_loss(teacher, tokenizer, data):
    evaluator = Evaluator({"heldout": data.eval}, partial(collate, pad_token_id=0), 4, teacher, len(tokenizer))
    return evaluator.teacher_metrics()["lm_loss"]


def data_args(path, tmp_path, **overrides):
    return DataArguments(dataset_name=str(path), tokenization_cache_dir=str(tmp_path / "cache"), eval_fraction=0.3,
                         max_eval_samples=None, **overrides)


@pytest.mark.parametrize("packing", ["auto", "bos_blocks"])
def test_text_data_teacher_loss_equals_plain_transformers(bos_teacher, bos_tokenizer, tmp_path, packing):
    texts = make_documents(60, seed=11)
    data = build_datasets(data_args(write_jsonl(tmp_path / "d.jsonl", texts), tmp_path, packing=packing),
                          bos_tokenizer, 128, seed=0)
    assert data.framing.packing == ("documents" if packing == "auto" else "bos_blocks")
    assert all(row["input_ids"][0].item() == bos_tokenizer.bos_token_id for row in data.eval)
    measured = distily_teacher_loss(bos_teacher, bos_tokenizer, data)
    reference = plain_loss(bos_teacher, sequences_of(data.eval))
    assert measured == pytest.approx(reference, rel=1e-5)
    if packing == "auto":  # every document whole: the reference is the documents themselves
        assert sorted(sequences_of(data.eval)) == sorted(
            bos_tokenizer(t)["input_ids"] for t in data.eval_documents["text"]
        )


def test_pretokenized_rows_are_used_as_given(bos_teacher, bos_tokenizer, tmp_path):
    rows = [bos_tokenizer(text)["input_ids"] for text in make_documents(60, seed=12)]
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"input_ids": rows}).to_parquet(str(path))
    data = build_datasets(data_args(path, tmp_path), bos_tokenizer, 128, seed=0)
    assert data.framing.packing == "documents"
    assert sorted(sequences_of(data.eval)) == sorted(map(list, data.eval_documents["input_ids"]))
    measured = distily_teacher_loss(bos_teacher, bos_tokenizer, data)
    assert measured == pytest.approx(plain_loss(bos_teacher, sequences_of(data.eval)), rel=1e-5)


def test_generated_samples_reach_the_student_in_the_teachers_framing(bos_teacher, bos_tokenizer, tmp_path):
    args = GenerateArguments(generate_output=str(tmp_path / "s.jsonl"), generate_num_samples=24, generate_length=40)
    torch.manual_seed(0)
    samples = sample_sequences(bos_teacher, bos_tokenizer, args, batch_size=8)
    assert all(sample[0] == bos_tokenizer.bos_token_id for sample in samples)
    write_samples(samples, bos_tokenizer, args.generate_output)
    data = build_datasets(data_args(args.generate_output, tmp_path), bos_tokenizer, 64, seed=0)
    eval_rows = [sample for sample in samples if sample in [list(r) for r in data.eval_documents["input_ids"]]]
    assert sorted(sequences_of(data.eval)) == sorted(eval_rows)
    measured = distily_teacher_loss(bos_teacher, bos_tokenizer, data)
    assert measured == pytest.approx(plain_loss(bos_teacher, eval_rows), rel=1e-5)


def test_unconditional_samples_start_where_the_teachers_documents_start(bos_tokenizer):
    """BOS where the tokenizer has one; else the end-of-text token that precedes each document in a stream, which
    for an instruct tokenizer is not its EOS (<|im_end|> ends a chat turn)."""
    assert start_token(bos_tokenizer) == bos_tokenizer.bos_token_id
    qwen = make_instruct_tokenizer("chatml")
    assert start_token(qwen) == qwen.convert_tokens_to_ids("<|endoftext|>") != qwen.eos_token_id


def test_stream_packing_hurts_a_bos_teacher_and_the_guard_says_so(bos_teacher, bos_tokenizer, tmp_path, caplog):
    texts = make_documents(60, seed=11)
    path = write_jsonl(tmp_path / "d.jsonl", texts)
    stream = build_datasets(data_args(path, tmp_path, packing="stream"), bos_tokenizer, 128, seed=0)
    framed = build_datasets(data_args(path, tmp_path), bos_tokenizer, 128, seed=0)
    collate_fn = partial(collate, pad_token_id=0)
    with caplog.at_level(logging.WARNING, logger="distily"):
        report = check_framing(bos_teacher, stream.eval_documents, bos_tokenizer, stream.framing, "text", collate_fn, 4)
    assert report.teacher_lm_loss_packed > 1.3 * report.teacher_lm_loss_documents
    assert "packing=stream makes the teacher's held-out loss" in caplog.text
    assert "expected packing=documents or padded" in caplog.text  # padded too: a model may ignore document masks
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distily"):
        report = check_framing(bos_teacher, framed.eval_documents, bos_tokenizer, framed.framing, "text", collate_fn, 4)
    assert report.teacher_lm_loss_packed < 1.05 * report.teacher_lm_loss_documents
    assert "makes the teacher's held-out loss" not in caplog.text


def test_distill_and_record_measure_a_bos_teacher_as_plain_transformers_does(
    bos_teacher, bos_tokenizer, run_values, tmp_path
):
    """End to end: the teacher in metrics.json is the teacher plain transformers measures, live and recorded."""
    from distily.config import parse_config, parse_record_config
    from distily.data.store import TeacherStore
    from distily.recording.run import run_recording
    from distily.training.distill import run_distillation

    teacher_dir = tmp_path / "teacher"
    bos_teacher.save_pretrained(teacher_dir)
    bos_tokenizer.save_pretrained(teacher_dir)
    values = run_values(str(teacher_dir), student_config_overrides={"num_hidden_layers": 1}, max_seq_length=128,
                        max_steps=2, max_eval_samples=None)
    metrics = run_distillation(parse_config(**values))
    framing = metrics["framing"]
    assert framing["packing"] == "documents"
    assert framing["teacher_lm_loss_packed"] == pytest.approx(framing["teacher_lm_loss_documents"], rel=0.01)
    config = parse_config(**values)
    data = build_datasets(config.data, bos_tokenizer, 128, config.training.seed)
    reference = plain_loss(bos_teacher, sequences_of(data.eval))
    assert metrics["teacher"]["lm_loss"] == pytest.approx(reference, rel=1e-5)

    store = tmp_path / "store"
    manifest = run_recording(parse_record_config(**{**values, "teacher_store": str(store)}))
    assert manifest["settings"]["packing"] == "documents"
    assert manifest["teacher_heldout"]["lm_loss"] == pytest.approx(reference, rel=1e-5)
    row = TeacherStore(store).dataset("eval")[0]
    assert row["position_ids"][0] == 0 and row["input_ids"][0] == bos_tokenizer.bos_token_id
    recorded = run_distillation(parse_config(**{
        **values, "teacher_store": str(store), "teacher_source": "recorded", "output_dir": str(tmp_path / "rec"),
    }))
    assert recorded["teacher"]["lm_loss"] == pytest.approx(reference, rel=1e-5)
    with pytest.raises(DistilyConfigError, match=r"packing='stream' differs from the 'documents'"):
        run_distillation(parse_config(**{
            **values, "teacher_store": str(store), "teacher_source": "recorded", "packing": "stream",
            "output_dir": str(tmp_path / "rec2"),
        }))
