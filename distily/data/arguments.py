"""What a user configures about the training text: where it is, and how it is tokenized, packed and split."""

import datetime
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from distily.arguments import check_not_blank, json_dict, one_of
from distily.errors import DistilyConfigError

PACKINGS = ("auto", "stream", "bos_blocks", "documents", "padded")
LOSS_ON = ("assistant", "all")
EVAL_SPLITS = ("prompt", "conversation")  # what chat data holds out: whole prompts, or single conversations

PACKING_HELP = (
    "How documents become blocks: stream (EOS-separated, cut into full blocks: GPT-2, Qwen), bos_blocks (every "
    "block opens with BOS, documents masked apart: Llama, Mistral, Gemma), documents (whole documents best-fit "
    "into blocks, masked apart, padded), padded (one document per row, padded; any model) or auto (documents when "
    "the tokenizer adds a BOS other than its document separator, else stream; pre-tokenized rows as documents; chat "
    "data padded). See docs/data.md."
)
CHAT_TEMPLATE_KWARGS_HELP = (
    "JSON object of variables the chat template is rendered with wherever it is (chat data, on-policy and generate "
    "prompts, the generation eval, lm-eval's chat prompts), e.g. '{\"enable_thinking\": false}' for Qwen3's "
    "non-thinking mode. A saved student's tokenizer does not keep them: pass them when you use it."
)
RENDERING_KEYS = ("conversation", "chat_template", "tokenize", "add_generation_prompt", "continue_final_message",
                  "return_dict", "return_assistant_tokens_mask")  # set by Distily itself where it renders


def chat_template_kwargs(value) -> dict:
    """``chat_template_kwargs`` checked: a JSON object (or dict) without the keys Distily renders with itself."""
    kwargs = json_dict(value, "chat_template_kwargs")
    taken = sorted(set(kwargs) & set(RENDERING_KEYS))
    if taken:
        raise DistilyConfigError(
            f"chat_template_kwargs sets {', '.join(taken)}, which Distily sets where it renders; expected the "
            "template's own variables (such as enable_thinking)"
        )
    return kwargs


def chat_template_date(value: Optional[str]) -> Optional[str]:
    """``chat_template_date`` checked: None or a ``YYYY-MM-DD`` date."""
    try:
        return None if value is None else datetime.date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise DistilyConfigError(f"chat_template_date={value!r} is not a date; expected YYYY-MM-DD") from None


# a split name, then optionally a range [start:stop] as datasets writes one (digits, _, sign and % looked at below)
_PART = re.compile(r"(?P<split>\w[\w.-]*)\s*(?:\[\s*(?P<start>[^:\]]*?)\s*:\s*(?P<stop>[^:\]]*?)\s*\])?")


@dataclass(frozen=True)
class RowRange:
    """Rows ``start`` up to ``stop`` (not included) of the split ``split``, counted from 0."""

    split: str
    start: int
    stop: int


def _why_not_streamable(match) -> str | None:
    """Why a part of a split spec (a ``_PART`` match) names no row range a stream of unknown length can be read for
    (None: it names one)."""
    if match is None:
        return "is not a split name with a row range"
    if match["stop"] is None:
        return "names a whole split, which a stream would read to its end"
    start, stop = match["start"], match["stop"]
    if "%" in start + stop:
        return "counts in percent of the split's length, which a stream does not know"
    if start.startswith("-") or stop.startswith("-"):
        return "counts rows from the split's end, which a stream does not know"
    if not stop:
        return "has no end row, so a stream would be read to its end"
    if not all(re.fullmatch(r"\d+(_\d+)*", number) for number in (start or "0", stop)):
        return "is not a range of row numbers"
    if int(start or 0) >= int(stop):
        return "holds no rows"
    return None


def row_ranges(split: str, key: str) -> list[RowRange]:
    """The row ranges a split spec read as a stream names (``train[:1000]``, ``train[1000:5000]+test[:100]``),
    checked: each of row numbers, with an end (a percentage, a row counted from the end or a whole split needs the
    split's length, which a stream does not know). ``key`` names the setting in the error."""
    ranges = []
    for part in split.split("+"):
        match = _PART.fullmatch(part.strip())
        why = _why_not_streamable(match)
        if why is not None:
            raise DistilyConfigError(
                f"{key}={split!r} cannot be read as a stream (dataset_streaming=true): {part.strip()!r} {why}; "
                "expected a range of row numbers such as train[:100000] or train[1000:5000]"
            )
        ranges.append(RowRange(match["split"], int(match["start"] or 0), int(match["stop"])))
    return ranges


TEXT_DOCUMENT_DELIMITER_HELP = (
    "What one document is in a .txt file (line breaks are kept inside it): blank_line (blocks separated by blank "
    "lines, the usual paragraph or article layout), line (one record per line), file (the whole file) or a regular "
    "expression that starts a document (e.g. WikiText's articles: '^ = [^=]')."
)


@dataclass
class DataArguments:
    """The text the student learns from, and how it is tokenized, packed and split."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id, or a local path: a txt/jsonl/json/parquet file, a directory of them, or a "
            "dataset saved with save_to_disk (required)."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset subset (config) name."})
    dataset_split: str = field(default="train", metadata={
        "help": "Dataset split to read: a name, or a slice of it as datasets reads one (train[:1000], "
                "train[-500:]), of local data too."})
    dataset_streaming: bool = field(default=False, metadata={
        "help": "Read dataset_split's rows from a stream of the dataset instead of letting datasets download and "
                "convert every data file of the split first (gigabytes to terabytes for a Hub corpus): dataset_split "
                "then names rows by number (train[:200000], train[1000:5000]; no percentage, no row counted from the "
                "end, no whole split). The rows read are kept in $HF_HOME/distily/streamed, so a re-run or a resume "
                "reads them there. Applies to dataset_name (distill, record) and generate_prompts (generate); eval "
                "sets are read whole. See docs/data.md."})
    dataset_text_column: str = field(
        default="text",
        metadata={"help": "Column holding the text. A dataset with an input_ids column is used pre-tokenized."},
    )
    dataset_messages_column: str = field(
        default="messages",
        metadata={"help": "Column of chat data as lists of {role, content} messages (roles system, user, assistant)."},
    )
    dataset_prompt_column: str = field(
        default="prompt",
        metadata={"help": "Column of prompts (strings or message lists) of prompt + completion data."},
    )
    dataset_completion_column: str = field(
        default="completion",
        metadata={"help": "Column of completions (strings or message lists) of prompt + completion data."},
    )
    chat_template: Optional[str] = field(
        default=None,
        metadata={
            "help": "Jinja chat template (the string, or a path to a .jinja file) for chat data; default: the "
            "teacher tokenizer's own. Given, the student is saved with it (and lm-eval's chat prompts use it)."
        },
    )
    student_chat_template: Optional[str] = field(
        default=None,
        metadata={
            "help": "Jinja chat template (the string, or a path to a .jinja file) of a student with its own "
            "tokenizer (cross-tokenizer chat data: each model reads the conversations in its own template); "
            "default: the student tokenizer's own. Given, the student is saved with it."
        },
    )
    chat_template_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": CHAT_TEMPLATE_KWARGS_HELP}
    )
    chat_template_date: Optional[str] = field(
        default=None,
        metadata={
            "help": "The date (YYYY-MM-DD) a chat template that writes the day it is rendered (strftime_now: "
            "SmolLM3's, Mistral Small 3's, Llama 3's without date_string) renders the whole run with (its data, "
            "prompts and lm-eval's chat prompts); default: the date of the run or recording resumed, else of the "
            "recorded teacher store, else the day the run starts (UTC). A run records it in run_settings.json, a "
            "store in its settings (a run on it with another date is refused); generate reports its prompts'."
        },
    )
    loss_on: str = field(
        default="assistant",
        metadata={
            "help": "Which tokens of chat data the losses and held-out metrics count: assistant (the assistant's "
            "turns and their end-of-turn tokens) or all."
        },
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Length of the packed sequences. Default: the smaller of the models' limit and 1024."},
    )
    packing: str = field(default="auto", metadata={"help": PACKING_HELP})
    text_document_delimiter: str = field(default="blank_line", metadata={"help": TEXT_DOCUMENT_DELIMITER_HELP})
    max_samples: Optional[int] = field(
        default=None, metadata={"help": "Limit on the number of packed training sequences."}
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of documents held out for evaluation (split before packing, so no overlap)."},
    )
    eval_split_by: str = field(
        default="prompt",
        metadata={"help": "Chat data: hold out whole prompts (prompt: the conversations answering one prompt stay on "
                  "one side, so no held-out prompt is trained on) or single conversations (conversation: held-out "
                  "answers to prompts also trained on, for data of many answers per prompt drawn alike)."},
    )
    max_eval_samples: Optional[int] = field(
        default=256, metadata={"help": "Limit on the number of packed evaluation sequences."}
    )
    tokenization_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where tokenized datasets are cached. Default: $HF_HOME/distily/tokenized."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes used to tokenize (datasets.map num_proc)."}
    )

    def __post_init__(self):
        check_not_blank(self.dataset_name, "dataset_name", "a Hub dataset id or a local path")
        check_not_blank(self.text_document_delimiter, "text_document_delimiter",  # as a regex: a document a character
                        "blank_line, line, file or a regular expression that starts a document")
        if not 0.0 < self.eval_fraction < 1.0:
            raise DistilyConfigError(f"eval_fraction={self.eval_fraction} is out of range; expected 0 < x < 1")
        one_of(self.packing, PACKINGS, "packing")
        one_of(self.eval_split_by, EVAL_SPLITS, "eval_split_by")
        one_of(self.loss_on, LOSS_ON, "loss_on")
        self.chat_template_kwargs = chat_template_kwargs(self.chat_template_kwargs)
        self.chat_template_date = chat_template_date(self.chat_template_date)
        for name in ("max_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 0:
            raise DistilyConfigError(
                f"preprocessing_num_workers={self.preprocessing_num_workers} must be >= 0 (0 or unset: one process)"
            )
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise DistilyConfigError(f"max_seq_length={self.max_seq_length} is too short; expected at least 2")
