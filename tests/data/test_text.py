import dataclasses
import json
import os
import random
import statistics

import datasets
import pytest
from transformers import AutoTokenizer

import distily.data.packing as packing_module
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.framing import Framing
from distily.data.sources import load_documents
from distily.data.tokenization_cache import cached_dataset, tokenizer_fingerprint
from distily.data.training_data import build_datasets, sampled_rows
from distily.errors import DistilyConfigError
from distily.evaluation.perplexity import load_eval_set
from tiny import make_documents, make_tokenizer, write_jsonl


def args(path, tmp_path, **overrides):
    return DataArguments(dataset_name=str(path), tokenization_cache_dir=str(tmp_path / "cache"), **overrides)


def flat(dataset):
    return [tuple(row.tolist()) for row in dataset["input_ids"]]


def test_blocks_are_full_length_and_train_eval_documents_are_disjoint(tmp_path, tokenizer):
    documents = [f"document number {i} says " + d for i, d in enumerate(make_documents(200))]
    path = write_jsonl(tmp_path / "d.jsonl", documents)
    data = build_datasets(args(path, tmp_path, eval_fraction=0.2, max_eval_samples=None), tokenizer, 32, seed=0)
    assert all(len(row) == 32 for row in data.train["input_ids"])
    assert len(data.eval) > 0
    train_text = tokenizer.decode([t for row in data.train["input_ids"] for t in row.tolist()])
    eval_text = tokenizer.decode([t for row in data.eval["input_ids"] for t in row.tolist()])
    train_numbers = {int(part.split()[0])
                     for part in train_text.split("document number ")[1:] if part.split()[0].isdigit()}
    eval_numbers = {int(part.split()[0])
                    for part in eval_text.split("document number ")[1:] if part.split()[0].isdigit()}
    assert train_numbers and eval_numbers and not train_numbers & eval_numbers


def test_packing_keeps_every_token_with_separators(tmp_path, tokenizer):
    documents = make_documents(50)
    batch = packing_module._tokenize_batch({"text": documents}, tokenizer, "text")
    packed = Framing("stream", 16, eos_token_id=tokenizer.eos_token_id).pack(batch["input_ids"])
    stream = [t for ids in batch["input_ids"] for t in ids + [tokenizer.eos_token_id]]
    assert [t for block in packed["input_ids"] for t in block] == stream[: len(stream) // 16 * 16]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet", "directory", "saved", "pretokenized"])
def test_every_source_kind_loads(tmp_path, tokenizer, kind):
    documents = make_documents(120)
    if kind == "txt":
        path = tmp_path / "d.txt"
        path.write_text("\n\n".join(documents))  # paragraphs: one document each
    elif kind == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", documents)
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        datasets.Dataset.from_dict({"text": documents}).to_parquet(str(path))
    elif kind == "directory":
        path = tmp_path / "dir"
        path.mkdir()
        write_jsonl(path / "a.jsonl", documents[:60])
        write_jsonl(path / "b.jsonl", documents[60:])
    elif kind == "saved":
        path = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(path))
    else:
        path = tmp_path / "tokenized"
        ids = tokenizer(documents)["input_ids"]
        datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(path))
    data = build_datasets(args(path, tmp_path), tokenizer, 32, seed=0)
    assert len(data.train) > 10 and data.train[0]["input_ids"].shape == (32,)


def test_shuffle_depends_on_seed_and_max_samples_limits(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", make_documents(300))
    first = build_datasets(args(path, tmp_path, max_samples=10), tokenizer, 32, seed=0)
    again = build_datasets(args(path, tmp_path, max_samples=10), tokenizer, 32, seed=0)
    other = build_datasets(args(path, tmp_path, max_samples=10), tokenizer, 32, seed=1)
    assert len(first.train) == 10
    assert flat(first.train) == flat(again.train)
    assert flat(first.train) != flat(other.train)


def test_tokenization_is_cached(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", make_documents(100))
    calls = []
    original = packing_module._tokenize_batch

    def counting(batch, **kwargs):
        calls.append(len(batch["text"]))
        return original(batch, **kwargs)

    monkeypatch.setattr(packing_module, "_tokenize_batch", counting)
    first = build_datasets(args(path, tmp_path), tokenizer, 32, seed=0)
    assert calls
    calls.clear()
    second = build_datasets(args(path, tmp_path), tokenizer, 32, seed=0)
    assert calls == []
    assert flat(first.train) == flat(second.train)
    build_datasets(args(path, tmp_path), tokenizer, 16, seed=0)  # another length is another cache entry
    assert calls


def test_tokenizer_fingerprint_is_stable_and_discriminating(tokenizer):
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(make_tokenizer())
    other = make_tokenizer()
    other.add_tokens(["<new>"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_collate_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: write_jsonl(p / "d.jsonl", make_documents(50)), "dataset_text_column='body' is not a column"),
        (lambda p: write_jsonl(p / "d.jsonl", ["", "   ", ""]), "0 non-empty documents after filtering"),
        (lambda p: str(p / "missing.jsonl"), "does not exist"),
        (lambda p: write_jsonl(p / "d.jsonl", ["tiny", "text"]), "gives no train sequence"),
    ],
)
def test_bad_datasets_are_clear_errors(tmp_path, tokenizer, setup, message):
    column = "body" if "body" in message else "text"
    with pytest.raises(DistilyConfigError, match=message):
        build_datasets(args(setup(tmp_path), tmp_path, dataset_text_column=column), tokenizer, 32, seed=0)


def write_parquet(path, texts):
    datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")})
                               ).to_parquet(str(path))
    return str(path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: (p / "d.jsonl").write_text('{"text": 5}\n{"text": 7}\n'), r"is not text \(datasets reads it as"),
        (lambda p: (p / "d.jsonl").write_text('{"text": "a"}\n{"text": ["b"]}\n'), "is not text"),
        (lambda p: (p / "d.jsonl").write_text("\n  \n"), r"d.jsonl' holds no rows \(only whitespace or \[\]\)"),
        (lambda p: (p / "d.json").write_text("[ ]"), "d.json' holds no rows"),
        (lambda p: ((p / "d").mkdir(), (p / "d" / "a.jsonl").write_text("\n"),
                    write_jsonl(p / "d" / "b.jsonl", make_documents(9))), "a.jsonl' holds no rows"),
        (lambda p: (p / "d.parquet").write_text("not parquet"), "d.parquet' is not a parquet file"),
        (lambda p: write_parquet(p / "d.parquet", []), "d.parquet' holds no rows"),
        (lambda p: (p / "d.csv").write_text("text\na b\nc d\n"),
         r"d.csv' is a .csv file, which Distily does not read; expected a .txt, .jsonl, .json, .parquet file"),
    ],
)
def test_unreadable_local_files_are_one_line_errors_naming_the_file(tmp_path, setup, message):
    """Each of these raised the library's own error (AttributeError, "Instruction 'train' corresponds to no data",
    CastError, ArrowInvalid) with a traceback; a .csv file was said to 'hold no data files'."""
    setup(tmp_path)
    (path,) = [name for name in tmp_path.iterdir() if name.name != "cache"]
    with pytest.raises(DistilyConfigError, match=message):
        build_datasets(args(path, tmp_path), make_tokenizer(), 32, seed=0)


def document_lengths(rows) -> list[int]:
    """The lengths of the documents in blocks with document masks (positions restart at each one)."""
    lengths = []
    for positions in rows["position_ids"]:
        starts = [i for i, position in enumerate(positions.tolist()) if position == 0] + [len(positions)]
        lengths += [end - start for start, end in zip(starts, starts[1:])]
    return lengths


def test_kept_eval_blocks_are_a_seeded_sample_of_every_document_length(tmp_path, tokenizer):
    """Best-fit packing opens blocks longest document first, so the first eval blocks hold the longest documents;
    the ``max_eval_samples`` kept are a random sample drawn with the seed, whose documents are as long as the
    held-out documents on average (the first 32 blocks' are 1.3x as long)."""
    rng = random.Random(0)
    words = "the cat sees a book today".split()
    documents = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(600)]
    path = write_jsonl(tmp_path / "d.jsonl", documents)
    every = build_datasets(args(path, tmp_path, eval_fraction=0.5, max_eval_samples=None, packing="documents"),
                           tokenizer, 128, seed=0)
    held_out = [len(ids) for ids in tokenizer(list(every.eval_documents["text"]))["input_ids"]]
    assert max(held_out) <= 128 and len(every.eval) > 64  # every document whole in a block; more blocks than kept
    limited = args(path, tmp_path, eval_fraction=0.5, max_eval_samples=32, packing="documents")
    rows = {"train": every.train, "eval": every.eval}
    kept_means = [statistics.mean(document_lengths(sampled_rows(rows, limited, seed)[1])) for seed in range(10)]
    assert statistics.mean(kept_means) == pytest.approx(statistics.mean(held_out), rel=0.05)
    assert min(document_lengths(sampled_rows(rows, limited, 0)[1])) < 10  # short documents are measured too

    first = build_datasets(limited, tokenizer, 128, seed=0)
    assert len(first.eval) == 32
    assert flat(first.eval) == flat(build_datasets(limited, tokenizer, 128, seed=0).eval)  # the same for a seed
    assert flat(sampled_rows(rows, limited, 0)[1]) != flat(sampled_rows(rows, limited, 1)[1])


def test_files_in_hidden_folders_are_not_data(tmp_path):
    """Notebook checkpoints, macOS resource forks and ``__MACOSX`` copies hold copies of the data (or binary
    junk): read, they would put the same documents on both sides of the split. ``datasets`` skips them too."""
    documents = [f"document {i}" for i in range(10)]
    root = tmp_path / "data"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    (root / "__MACOSX").mkdir()
    (root / "part").mkdir()
    write_jsonl(root / "a.jsonl", documents[:6])
    write_jsonl(root / "part" / "b.jsonl", documents[6:])
    write_jsonl(root / ".ipynb_checkpoints" / "a-checkpoint.jsonl", documents[:6])
    write_jsonl(root / "__MACOSX" / "a.jsonl", documents[:6])
    (root / "._a.jsonl").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble, not JSON
    loaded = load_documents(args(root, tmp_path))
    assert sorted(loaded["text"]) == sorted(documents)
    only_hidden = tmp_path / "hidden"
    (only_hidden / ".cache").mkdir(parents=True)
    write_jsonl(only_hidden / ".cache" / "a.jsonl", documents)
    with pytest.raises(DistilyConfigError, match=r"holds no data files; expected .* \(hidden ones, under a name "
                                                 r"starting with \. or __, are skipped\)"):
        load_documents(args(only_hidden, tmp_path))


def test_a_directory_whose_file_names_give_splits_reads_the_split_asked_for(tmp_path, caplog):
    """``datasets``' data-directory convention: files (or folders) named by split hold that split. Only the split
    asked for is read (both used to be read as one training set), and a split the names do not give is a one-line
    error naming those they give."""
    documents = {split: [f"{split} document {i}" for i in range(4)] for split in ("train", "test", "validation")}
    by_file, by_folder = tmp_path / "by_file", tmp_path / "by_folder"
    by_file.mkdir()
    write_jsonl(by_file / "train.jsonl", documents["train"])
    write_jsonl(by_file / "test-0.jsonl", documents["test"])
    for split in ("train", "validation"):
        (by_folder / "data" / split).mkdir(parents=True)
        write_jsonl(by_folder / "data" / split / "part.jsonl", documents[split])
    assert sorted(load_documents(args(by_file, tmp_path))["text"]) == documents["train"]
    assert sorted(load_documents(args(by_file, tmp_path, dataset_split="test"))["text"]) == documents["test"]
    assert sorted(load_documents(args(by_folder, tmp_path, dataset_split="validation"))["text"]) == documents[
        "validation"]
    with pytest.raises(DistilyConfigError, match=r"^'.*by_file' has no split 'validation'; expected one of train, "
                                                 r"test \(the splits its file names give\)$"):
        load_documents(args(by_file, tmp_path, dataset_split="validation"))
    write_jsonl(by_file / "notes.jsonl", ["a note"])  # names no split: not read, as datasets reads it
    with caplog.at_level("WARNING", logger="distily.data.local_files"):
        assert sorted(load_documents(args(by_file, tmp_path))["text"]) == documents["train"]
    assert "1 data files under" in caplog.text and "notes.jsonl" in caplog.text


def test_a_directory_whose_file_names_give_no_split_is_all_train_whatever_the_split(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "a.jsonl", ["first document"])
    write_jsonl(root / "b.jsonl", ["second document"])
    for split in ("train", "test"):
        assert sorted(load_documents(args(root, tmp_path, dataset_split=split))["text"]) == ["first document",
                                                                                          "second document"]


def test_a_slice_of_a_split_reads_that_slice_of_local_data(tmp_path):
    """A split such as the recipes' ``train[:10%]`` was read whole from a local file (and refused by a split-named
    directory or a save_to_disk DatasetDict): local data is now sliced as datasets slices a Hub dataset's split."""
    documents = [f"document {i}" for i in range(10)]
    text_file = tmp_path / "docs.txt"
    text_file.write_text("\n\n".join(documents))
    by_split = tmp_path / "by_split"
    by_split.mkdir()
    write_jsonl(by_split / "train.jsonl", documents)
    write_jsonl(by_split / "test.jsonl", ["test document"])
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": documents})}).save_to_disk(str(saved))
    for path in (write_jsonl(tmp_path / "docs.jsonl", documents), text_file, by_split, saved):
        for split, expected in (("train", documents), ("train[:30%]", documents[:3]), ("train[-2:]", documents[-2:]),
                                ("train[2:4]+train[:1]", documents[2:4] + documents[:1])):
            assert list(load_documents(args(path, tmp_path, dataset_split=split))["text"]) == expected, (path, split)
    assert list(load_documents(args(by_split, tmp_path, dataset_split="train[:1]+test"))["text"]) == [
        "document 0", "test document"]
    with pytest.raises(DistilyConfigError, match=r"^dataset_split='train\[5:' of '.*docs.txt': Unrecognized "
                                                 r"instruction format: train\[5:; expected a split such as train"):
        load_documents(args(text_file, tmp_path, dataset_split="train[5:"))


def test_an_eval_sets_kept_blocks_are_a_fixed_sample_of_every_document_length(tmp_path, tokenizer):
    """A named eval set packed by best fit, with fewer blocks kept than it has: a sample (the same for every run),
    not the first blocks, which hold the longest documents."""
    rng = random.Random(1)
    words = "the cat sees a book today".split()
    documents = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    spec = {"path": write_jsonl(tmp_path / "eval.jsonl", documents), "config": None, "split": "train",
            "text_column": "text", "max_samples": None}
    every = load_eval_set("set", spec, tokenizer, 128, str(tmp_path / "cache"), packing="documents")
    kept = load_eval_set("set", {**spec, "max_samples": 200}, tokenizer, 128, str(tmp_path / "cache"),
                         packing="documents")
    assert len(every) > 400 and len(kept) == 200
    assert flat(kept) == flat(load_eval_set("set", {**spec, "max_samples": 200}, tokenizer, 128,
                                            str(tmp_path / "cache"), packing="documents"))
    first = every.select(range(200))
    overall = statistics.mean(document_lengths(every))
    assert statistics.mean(document_lengths(first)) > 1.15 * overall  # what cutting kept
    assert statistics.mean(document_lengths(kept)) == pytest.approx(overall, rel=0.05)


def test_a_tokenizer_config_that_splits_special_tokens_is_another_cache_entry(tmp_path, tokenizer):
    """``split_special_tokens`` in a tokenizer's tokenizer_config.json changes its ids, not its backend's files: the
    cache written with the tokenizer before the edit was served for it (the ids of ``<eos>`` as one token)."""
    documents = [f"{text} <eos> the end" for text in make_documents(40)]
    path = write_jsonl(tmp_path / "d.jsonl", documents)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    build_datasets(args(path, tmp_path, packing="padded"), AutoTokenizer.from_pretrained(tmp_path / "tokenizer"), 256,
                   seed=0)
    config = tmp_path / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "split_special_tokens": True}))
    edited = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    data = build_datasets(args(path, tmp_path, packing="padded"), edited, 256, seed=0)
    expected = {tuple(ids) for ids in edited(documents)["input_ids"]}
    assert set(flat(data.train)) | set(flat(data.eval)) == expected
    assert tokenizer.eos_token_id not in {token for row in expected for token in row}


@pytest.mark.parametrize("packing", ["stream", "bos_blocks"])
def test_only_the_last_partial_block_of_a_split_is_dropped(tmp_path, tokenizer, packing):
    """Documents were packed 1000 at a time, each batch dropping its own last partial block: here 208 of the 84816
    tokens of stream (1.6 blocks), against fewer than one block's."""
    documents = [text.split(".")[0] for text in make_documents(5000)]
    data = build_datasets(args(write_jsonl(tmp_path / "d.jsonl", documents), tmp_path, packing=packing,
                               eval_fraction=0.01), tokenizer, 128, seed=0)
    train = datasets.Dataset.from_dict({"text": documents}).train_test_split(test_size=0.01, seed=0)["train"]
    separator = packing == "stream"  # an EOS after each document (the tokenizer adds no BOS)
    tokens = sum(len(ids) + separator for ids in tokenizer(list(train["text"]))["input_ids"])
    assert tokens - 128 < data.packed_rows["train"] * 128 <= tokens


def test_blocks_cached_by_an_earlier_packing_scheme_are_not_read_back(tmp_path, tokenizer, monkeypatch):
    """Framing.scheme is in the cache key: rows an earlier version packed otherwise (here: only the first block)
    from the same documents, tokenizer and settings are not served to this one."""
    documents = datasets.Dataset.from_dict({"text": make_documents(50)})
    framing = Framing.for_tokenizer("stream", tokenizer, 32, pretokenized=False)
    earlier = dataclasses.replace(framing, scheme=framing.scheme - 1)
    packed = packing_module._packed_in_order
    with monkeypatch.context() as patch:
        patch.setattr(packing_module, "_packed_in_order", lambda *given: packed(*given).select([0]))
        assert len(packing_module.tokenize_and_pack(documents, tokenizer, earlier, "text", str(tmp_path))) == 1
    rows = packing_module.tokenize_and_pack(documents, tokenizer, framing, "text", str(tmp_path))
    assert len(rows) == len(framing.pack(tokenizer(list(documents["text"]))["input_ids"])["input_ids"]) > 1


def test_an_entry_another_process_cached_meanwhile_is_kept_for_its_readers(tmp_path):
    """Two runs sharing the cache may build one entry at once. The last one in moved the first one's entry aside and
    deleted it, under the runs reading it: two processes writing 120 entries each at the same moments failed twice
    (OSError 'Directory not empty' on the rename, FileNotFoundError in a reader's shuffle) before this."""
    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4]]})
    theirs = {}

    def build():  # another process caches the same entry while this one builds it
        entry = cached_dataset(str(tmp_path), "key", lambda: rows)
        theirs["inode"] = os.stat(entry.cache_files[0]["filename"]).st_ino
        return rows

    ours = cached_dataset(str(tmp_path), "key", build)
    assert os.stat(ours.cache_files[0]["filename"]).st_ino == theirs["inode"]
    assert flat(ours.with_format("torch")) == [(1, 2), (3, 4)]
    assert [path.name for path in tmp_path.iterdir()] == ["key"]  # no staging left beside it


def test_a_cache_entry_that_is_no_saved_dataset_is_a_one_line_error(tmp_path):
    (tmp_path / "key").mkdir()
    (tmp_path / "key" / "notes.txt").write_text("not a dataset")
    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2]]})
    with pytest.raises(DistilyConfigError, match=r"entry '.*key' is not a saved dataset \(no dataset_info.json\)"):
        cached_dataset(str(tmp_path), "key", lambda: rows)
    assert (tmp_path / "key" / "notes.txt").exists()


def test_a_document_longer_than_the_model_is_tokenized_without_transformers_warning(caplog):
    """Documents are cut into blocks after tokenizing, so transformers' 'Token indices sequence length is longer
    than the specified maximum' (printed on every run of long documents) is a false alarm: not printed."""
    tokenizer = make_tokenizer()
    tokenizer.model_max_length = 4
    with caplog.at_level("WARNING"):
        rows = packing_module._tokenize_batch({"text": ["the cat sees the dog " * 5]}, tokenizer, "text")
    assert len(rows["input_ids"][0]) > 4
    assert "Token indices sequence length" not in caplog.text


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_data_file_edited_in_place_is_read_again(tmp_path, tokenizer, kind):
    """``datasets`` knows a local file by its path and mtime: a file rewritten with other words and its mtime kept
    (``tar -x``, ``cp -p``, a filesystem with whole-second mtimes) was served from both caches (its Arrow copy and
    the tokenized blocks) as it was. Its content is in the key now."""
    path = tmp_path / f"d.{kind}"

    def write(words: list[str]) -> list[str]:
        documents = [f"the {word} sees the dog number {i}" for i, word in enumerate(words)]
        if kind == "jsonl":
            write_jsonl(path, documents)
        else:
            datasets.Dataset.from_dict({"text": documents}).to_parquet(str(path))
        return documents

    write(["cat"] * 20)
    before = os.stat(path)
    build_datasets(args(path, tmp_path, packing="padded"), tokenizer, 256, seed=0)
    documents = write(["dog"] * 20)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    data = build_datasets(args(path, tmp_path, packing="padded"), tokenizer, 256, seed=0)
    assert set(flat(data.train)) | set(flat(data.eval)) == {tuple(ids) for ids in tokenizer(documents)["input_ids"]}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_data_file_written_again_with_the_same_bytes_keeps_its_fingerprint(tmp_path, kind):
    """The documents' fingerprint (a store's dataset_fingerprint, the tokenization cache's key) came from the file's
    mtime: the same bytes written again (copied back, a fresh checkout) read as other documents, and a store recorded
    on them was refused. Other bytes still read as other documents."""
    path = tmp_path / f"d.{kind}"

    def fingerprint(words: list[str], mtime: int) -> str:
        documents = [f"the {word} sees the dog number {i}" for i, word in enumerate(words)]
        if kind == "jsonl":
            write_jsonl(path, documents)
        else:
            datasets.Dataset.from_dict({"text": documents}).to_parquet(str(path))
        os.utime(path, (mtime, mtime))
        return load_documents(DataArguments(dataset_name=str(path)))._fingerprint

    first = fingerprint(["cat"] * 20, 1_000_000_000)
    assert fingerprint(["cat"] * 20, 1_000_000_100) == first
    assert fingerprint(["dog"] * 20, 1_000_000_200) != first
