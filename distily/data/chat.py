"""Chat and instruction data: ``messages`` conversations and ``prompt`` + ``completion`` pairs, tokenized with
a chat template, with the loss mask of the assistant's tokens.

A dataset is chat data when it has a messages column (``dataset_messages_column``: lists of ``{role,
content}``, roles system, user, assistant) or both a prompt and a completion column (strings, or TRL's
conversational form where both are message lists); both kinds at once is refused. A message's content is a
string or a list of text parts (``[{"type": "text", "text": ...}]``, as Gemma 3's, Llama 4's and Qwen2.5-VL's
templates take), read as their texts joined (``message_text``); a part of another type (an image) is refused.
Every row becomes one conversation (``messages``), checked as it is loaded, and is tokenized as the chat template
renders it (``tokenizer.apply_chat_template``'s text, tokenized without added special tokens, as transformers does).

The assistant's tokens are found without ``{% generation %}`` markers, which most templates lack: for each assistant
turn, the conversation before it is rendered with the generation prompt, which must be a prefix of the whole
rendering; or the conversation before it without the generation prompt must be, and the turn starts after the last
of the generation prompt's tokens the rendering holds whole (Qwen3's template with ``enable_thinking: false`` writes
an empty ``<think>`` block into the generation prompt but before the last answer only; the DeepSeek-R1 distills'
opens a ``<think>`` block there before no answer); else the template is not prefix-consistent and the row is refused
(saying so of a system message that Mistral v3's and Nemo's templates write into the last user turn only, which a
conversation ending with an answer loses). The turn's content must follow it verbatim (whitespace-stripped): before
the next special token (its last occurrence there), or there the end of the content alone, whitespace aside (Qwen3's
template drops the ``<think>`` reasoning of answers before the last user turn, and writes the last answer's
reasoning between newlines of its own), or in a template without special tokens right after the prompt (whitespace
aside); or, where the model writes special tokens before it (gpt-oss's ``<|channel|>final<|message|>`` after the
generation prompt ``<|start|>assistant``), where the rendering writes it (its rendering with a character appended to
the answer parts from the text there), after the prompt and holding no special token; else the row is refused. The
conversation's last message, when an answer, must be shown whole (whitespace aside): a template that keeps only its
end (the R1 distills' drop its reasoning) is refused, as it would teach an answer without the reasoning the model
writes first. The assistant's tokens run from the generation prompt's end to
the content's: text the template puts between them is the model's to write (Qwen3's template opens the last answer
with an empty ``<think>`` block, which the model writes when it answers without reasoning); a special token the
prompt ends inside is the prompt's (Phi-3's ``<|assistant|>`` takes the whitespace after it, so also the leading
space of an answer). An answer before the last that the text holds verbatim from inside its generation prompt starts
there (one starting ``<think>``, as the R1 distills' prompt ends, keeps it). With them, the end-of-turn token when a
special token closes the content (whitespace between counted with it). The row's ``loss_mask`` is that mask moved
one position left (the shared convention: 1 at t when the token at t + 1 is a target). A conversation longer than
the run's sequence length is cut; a cut that would leave earlier answers but none of the last ends it at the last
answer it keeps, rendered as the conversation's last answer.
"""

import bisect
import datetime
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import datasets
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.errors import DistilyConfigError

MESSAGES = "messages"  # the column every chat row is normalised to
ROW = "row"  # beside it: the row's index in the dataset as given, for errors
ROLES = ("system", "user", "assistant")
MESSAGES_FORMAT, PROMPT_COMPLETION_FORMAT = "messages", "prompt + completion"


def chat_format(columns: list[str], args: DataArguments) -> Optional[str]:
    """``messages``, ``prompt + completion`` or None (text or token ids) from a dataset's columns."""
    messages = args.dataset_messages_column in columns
    pairs = args.dataset_prompt_column in columns and args.dataset_completion_column in columns
    if messages and pairs:
        raise DistilyConfigError(
            f"dataset {args.dataset_name!r} has both a messages column ({args.dataset_messages_column!r}) and "
            f"prompt + completion columns ({args.dataset_prompt_column!r}, {args.dataset_completion_column!r}); "
            "expected one chat format"
        )
    if INPUT_IDS in columns:
        return None
    return MESSAGES_FORMAT if messages else PROMPT_COMPLETION_FORMAT if pairs else None


def message_text(content, role: str, where: str) -> str:
    """A ``role`` message's content as text: a string, or a list of text parts (the OpenAI and multimodal form,
    ``[{"type": "text", "text": ...}]``) whose texts are joined, as Llama 4's and Qwen2.5-VL's templates render a
    list of text parts. A part of another type (an image, audio) is refused: ``where`` names the conversation."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DistilyConfigError(f"{where} has a {role} message without text content; expected a string or a list of "
                                 "text parts")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise DistilyConfigError(f"{where} has a {role} message with a part of type {kind!r}; expected text parts "
                                     "only ({'type': 'text', 'text': ...}): Distily distills text")
        if not isinstance(part.get("text"), str):
            raise DistilyConfigError(f"{where} has a {role} message with a text part without text; expected a string")
    return "".join(part["text"] for part in content)


def message_turns(value, where: str) -> list[dict]:
    """A list of messages checked: each a ``{role, content}`` dict, its content as text (``message_text``), its
    other keys (``reasoning_content``, which Qwen3's and SmolLM3's templates render) kept unchanged for the
    template."""
    if not isinstance(value, list):
        raise DistilyConfigError(f"{where} is a {type(value).__name__}; expected a list of {{role, content}} messages")
    turns = []
    for message in value:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise DistilyConfigError(f"{where} has a message with role={role!r}; expected one of {', '.join(ROLES)}")
        turns.append({**message, "content": message_text(message.get("content"), role, where)})
    return turns


@dataclass(frozen=True)
class ChatColumns:
    """What reading conversations depends on: the dataset's name (for errors) and its chat columns. Only these go
    into the read conversations' fingerprint, so settings that leave the rows alone (``max_samples``, caches,
    workers) do not make a store recorded on them refuse them as other documents."""

    dataset_name: Optional[str]
    messages: str
    prompt: str
    completion: str

    @classmethod
    def of(cls, args: DataArguments) -> "ChatColumns":
        return cls(args.dataset_name, args.dataset_messages_column, args.dataset_prompt_column,
                   args.dataset_completion_column)


def _conversation(row, index: int, fmt: str, columns: ChatColumns) -> list[dict]:
    where = f"dataset {columns.dataset_name!r} row {index}"
    if fmt == MESSAGES_FORMAT:
        turns = message_turns(row[columns.messages], where)
    else:
        prompt, completion = row[columns.prompt], row[columns.completion]
        if isinstance(prompt, str) != isinstance(completion, str):
            raise DistilyConfigError(
                f"{where} mixes a {type(prompt).__name__} prompt and a {type(completion).__name__} completion; "
                "expected both strings or both message lists"
            )
        if isinstance(prompt, str):
            prompt, completion = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
        answers = message_turns(completion, where)
        if not any(turn["role"] == "assistant" and turn["content"].strip() for turn in answers):
            raise DistilyConfigError(f"{where} has an empty completion; expected the text the assistant answers")
        turns = message_turns(prompt, where) + answers
    empty = [index for index, turn in enumerate(turns) if turn["role"] == "assistant" and not turn["content"].strip()]
    if empty:
        raise DistilyConfigError(f"{where} has an empty assistant turn (message {empty[0]}); expected the text the "
                                 "assistant answers")
    if not any(turn["role"] == "assistant" and turn["content"].strip() for turn in turns):
        raise DistilyConfigError(f"{where} has no assistant turn with content; expected at least one to learn from")
    if turns[0]["role"] == "assistant":  # its prompt: an empty conversation, which apply_chat_template refuses
        raise DistilyConfigError(f"{where} opens with an assistant turn; expected a system or user turn before the "
                                 "first answer (the prompt it answers)")
    return turns


def _normalise_batch(batch, indices, fmt: str, columns: ChatColumns):
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    return {MESSAGES: [_conversation(row, index, fmt, columns) for row, index in zip(rows, indices)], ROW: indices}


def conversations(documents: datasets.Dataset, fmt: str, args: DataArguments) -> datasets.Dataset:
    """Every row as one checked conversation, in a ``messages`` column (its index as given in ``row``)."""
    return documents.map(
        _normalise_batch,
        batched=True,
        with_indices=True,
        remove_columns=documents.column_names,
        fn_kwargs={"fmt": fmt, "columns": ChatColumns.of(args)},
        desc="Reading conversations",
    )


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: Optional[str], role: str = "teacher",
                          key: str = "chat_template") -> str:
    """The template chat data is rendered with: ``chat_template`` (a Jinja string or a .jinja file), else the
    tokenizer's own; errors name the ``role`` whose tokenizer it is and the config ``key`` that sets it."""
    if chat_template is None:
        if not isinstance(tokenizer.chat_template, str):
            raise DistilyConfigError(
                f"the {role}'s tokenizer ({type(tokenizer).__name__}) has no chat template; expected {key} "
                "(a Jinja string or a .jinja file) for chat data"
            )
        return tokenizer.chat_template
    path = Path(os.path.expanduser(chat_template))
    if chat_template.endswith(".jinja"):
        if not path.is_file():
            raise DistilyConfigError(f"{key}={chat_template!r} does not exist; expected a .jinja file")
        return path.read_text(encoding="utf-8")
    return chat_template


def adopt_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: Optional[str],
                        key: str = "chat_template") -> None:
    """Give ``tokenizer`` the run's ``chat_template`` (set by the config's ``key``) when one is given
    (``resolve_chat_template``): the chat data is rendered with it, and lm-eval's chat prompts, the generation eval
    and the student saved with this tokenizer then use the same template (a teacher without one gives its student
    none of its own)."""
    if chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(tokenizer, chat_template, key=key)


CLOCK_CALL = re.compile(r"""strftime_now\(\s*(?:'([^']*)'|"([^"]*)")?""")  # the format: a string literal


def today() -> str:
    """Today's date (UTC) as ``chat_template_date`` writes it."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def run_date(*recorded: Optional[str]) -> str:
    """The date a run renders dated templates with: the first of ``recorded`` that is set (the run's setting, then
    the date the run or store it goes on with was rendered with), else today (UTC)."""
    return next(filter(None, recorded), None) or today()


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template, the keyword arguments it is rendered with (``chat_template_kwargs``, such as
    Qwen3's ``enable_thinking``) and, for a template that writes the day it is rendered (``strftime_now``:
    SmolLM3's, Mistral Small 3's), the date it is rendered with (None for others)."""

    text: str
    kwargs: dict = field(default_factory=dict)
    date: Optional[str] = None  # YYYY-MM-DD

    @property
    def pinned_text(self) -> str:
        """The text to render: a dated template's opens with a ``strftime_now`` of its own that writes ``date``
        in each format the template asks for (a format that is not a string literal is refused)."""
        if self.date is None:
            return self.text
        formats = {next(filter(None, match.groups()), None) for match in CLOCK_CALL.finditer(self.text)}
        if None in formats:
            raise DistilyConfigError("the chat template calls strftime_now with a format that is not a string "
                                     "literal; expected formats Distily can write chat_template_date in")
        day = datetime.date.fromisoformat(self.date)
        written = {format: day.strftime(format) for format in formats}
        return f"{{% macro strftime_now(format) %}}{{{{ {written!r}[format] }}}}{{% endmacro +%}}" + self.text

    @property
    def sha256(self) -> str:
        """The template text's SHA-256 (hex): how a store records the template its rows were rendered with."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def run_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: Optional[str],
                      chat_template_kwargs: Optional[dict] = None, role: str = "teacher",
                      key: str = "chat_template", date: Optional[str] = None) -> ChatTemplate:
    """The template a run renders conversations with (``resolve_chat_template``), its keyword arguments, and for
    a dated template the run's ``date`` (None: today)."""
    text = resolve_chat_template(tokenizer, chat_template, role, key)
    kwargs = dict(chat_template_kwargs or {})
    return ChatTemplate(text, kwargs, (date or today()) if writes_the_day(tokenizer, text, kwargs) else None)


PROBE = [{"role": "user", "content": "What day is it?"}]
PROBE_DAYS = ("2001-02-03", "2012-11-28")  # apart in every field a date format writes (day, weekday, month, year)


def writes_the_day(tokenizer: PreTrainedTokenizerBase, text: str, kwargs: dict) -> bool:
    """Whether the template ``text``, given ``kwargs``, writes the day it is rendered: it calls ``strftime_now`` and
    a question rendered on two days reads differently (Llama 3's given ``date_string`` writes that date instead).
    One it cannot render (or pin) counts as dated: rendering the run's data says why."""
    if CLOCK_CALL.search(text) is None:
        return False
    try:
        renderings = {render_chat(tokenizer, PROBE, ChatTemplate(text, kwargs, day), True, "a question")
                      for day in PROBE_DAYS}
    except DistilyConfigError:
        return True
    return len(renderings) > 1


@dataclass(frozen=True)
class ChatTokenization:
    """How conversations become token ids and loss masks."""

    template: ChatTemplate
    loss_on: str  # assistant | all
    max_length: int  # a longer conversation is cut to its first max_length tokens
    # part of the tokenization cache's key (the dataclass's text): raised whenever the ids or masks Distily makes
    # of a conversation change, so a cache written by an earlier version is not read back
    scheme: int = 6


def render_chat(tokenizer: PreTrainedTokenizerBase, turns: list[dict], template: ChatTemplate,
                generation_prompt: bool, where: str) -> str:
    """``turns`` as ``template`` renders them, with the generation prompt when asked; a template that refuses them
    (``raise_exception``: Gemma's and Mistral's refuse roles out of their order) is a one-line error naming
    ``where``. A message's key that reads back as None (Arrow gives a message every key any message of the
    dataset has) is absent to the template, as it was in the message."""
    present = [{key: value for key, value in turn.items() if value is not None} for turn in turns]
    try:
        return tokenizer.apply_chat_template(present, chat_template=template.pinned_text, tokenize=False,
                                             add_generation_prompt=generation_prompt, **template.kwargs)
    except TemplateError as err:
        roles = [turn["role"] for turn in turns]
        raise DistilyConfigError(
            f"the chat template refuses {where} (roles {roles}): {err}; expected conversations the template takes"
        ) from None


def prompt_ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict], template: ChatTemplate,
               where: str) -> list[int]:
    """The conversation as a model reads it before its answer: the template's text with the generation prompt
    (the template writes any BOS itself, so the tokenizer adds no special tokens)."""
    return tokenizer(render_chat(tokenizer, turns, template, True, where), add_special_tokens=False)[INPUT_IDS]


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """The tokenizer's special tokens (those it declares, and added tokens marked special): id -> text."""
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    return {**dict(zip(tokenizer.all_special_ids, tokenizer.all_special_tokens)), **added}


@dataclass(frozen=True)
class AssistantTurn:
    """Where the chat template renders one assistant turn, as character offsets in the conversation's text."""

    message: int  # its index in the conversation's messages
    start: int  # right after its generation prompt: the first character the model writes
    content_start: int  # its content (whitespace-stripped), verbatim from here
    content_end: int
    closing: Optional[int]  # where the first special token after the generation prompt starts (after the content
    # where the model writes special tokens before it: gpt-oss's channel); None: no such token


@dataclass(frozen=True)
class RenderedConversation:
    """A conversation as the chat template renders it, that text's tokens, and its assistant turns."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # each token's characters in text
    turns: list[AssistantTurn]

    def end_of_turn_start(self, turn: AssistantTurn) -> Optional[int]:
        """Where the end-of-turn token of ``turn`` starts, when the turn has one: the special token that closes it
        with only whitespace after its content (the assistant's mask counts it); None otherwise."""
        if turn.closing is None or self.text[turn.content_end : turn.closing].strip():
            return None
        return turn.closing


def _not_prefix_consistent(messages: list[dict], before: str, text: str, where: str,
                           turn: int) -> DistilyConfigError:
    """The error for a conversation whose rendering up to assistant turn ``turn`` (``before``) does not start its
    whole rendering ``text``: it says so of a system message the template writes only while a user's turn is the
    conversation's last (Mistral v3's and Nemo's write it into that turn, so a conversation ending with an answer
    loses it)."""
    if any(text.count(message["content"]) < before.count(message["content"])
           for message in messages if message["role"] == "system" and message["content"].strip()):
        return DistilyConfigError(
            f"the chat template writes {where}'s system message only where a user's turn is the conversation's "
            "last (as Mistral v3's and Nemo's put it into the last user turn): its rendering ending with an answer "
            f"leaves it out, its rendering up to assistant turn {turn} holds it; expected rows without a system "
            "message for this template, or a chat_template that keeps the system message before every turn"
        )
    return DistilyConfigError(
        f"the chat template renders {where} up to its assistant turn {turn} as text that does not start the "
        "whole conversation's; expected a prefix-consistent template (each turn appended to the ones before)"
    )


def _held_prompt_end(tokenizer: PreTrainedTokenizerBase, prompt: str, before: str, text: str) -> int:
    """Where an assistant turn starts in the conversation's ``text`` when the text does not hold its whole
    generation prompt ``prompt`` (Qwen3's enable_thinking=false block opens only the last answer, the R1 distills'
    ``<think>`` no answer): after the last of the prompt's tokens the text holds whole, and at least after the
    conversation before the turn (``before``), which the text starts with. A prompt's token the text holds in
    part is the answer's (the ``<`` of an answer starting ``<b>``, where the prompt writes ``<think>``)."""
    held = len(os.path.commonprefix([prompt, text]))
    offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return max([len(before)] + [end for _, end in offsets if end <= held])


def _own_start(text: str, content: str, begin: int, closing: Optional[int]) -> int:
    """Where an answer before the conversation's last starts: at ``begin`` (its generation prompt's end), or sooner
    where the text holds its ``content`` verbatim across ``begin`` before ``closing``: an answer that starts like the
    end of the generation prompt, which the template writes before no earlier answer (``<think>``: Qwen3's prompt
    with enable_thinking=false, the R1 distills'), keeps those tokens as its own."""
    own = text.rfind(content, 0, len(text) if closing is None else closing)
    return own if 0 <= own < begin < own + len(content) else begin


def _shown_content(text: str, content: str, begin: int, closing: Optional[int]) -> tuple[int, str]:
    """Where whitespace-stripped ``content`` starts after ``begin`` and what of it the text shows: verbatim before
    the special token at ``closing`` (its last occurrence there), or there its end alone, whitespace aside; with no
    special token after it, verbatim right after ``begin`` (whitespace aside). The start is -1 when it is not."""
    if closing is None:
        start = text.find(content, begin)
        return (-1 if text[begin:max(start, 0)].strip() else start), content
    start = text.rfind(content, begin, closing)
    shown = text[begin:closing].strip()
    if start < 0 and shown and _squeezed(content).endswith(_squeezed(shown)):  # the content's end only,
        return text.index(shown, begin), shown  # or its whitespace rearranged
    return start, content


def _written_at(messages: list[dict], turn: int, text: str, render: Callable[[list[dict], bool], str]) -> int:
    """Where the conversation's rendering ``text`` writes message ``turn``'s whitespace-stripped content: its
    rendering (by ``render``) with a character appended to that content parts from ``text`` where the content ends.
    -1 when the text there does not end with the content (a template that changes it)."""
    content = messages[turn]["content"]
    appended = [*messages[:turn], {**messages[turn], "content": content.rstrip() + "\x00"}, *messages[turn + 1:]]
    end = len(os.path.commonprefix([render(appended, False), text]))
    return end - len(content.strip()) if text[:end].endswith(content.strip()) else -1


def _after_written_special_tokens(messages: list[dict], turn: int, text: str, render: Callable[[list[dict], bool], str],
                                  begin: int, special_starts: list[int]) -> tuple[int, Optional[int]]:
    """Where answer ``turn``'s whitespace-stripped content starts when the model writes special tokens between its
    generation prompt's end ``begin`` and it (gpt-oss's ``<|channel|>final<|message|>``), and where the special token
    after it starts (None: none): where the conversation's rendering ``text`` writes it (``_written_at``), after
    ``begin`` and holding no special token (``special_starts``, ascending). The start is -1 otherwise."""
    start = _written_at(messages, turn, text, render)
    after = bisect.bisect_left(special_starts, start + len(messages[turn]["content"].strip()))
    if start < begin or bisect.bisect_left(special_starts, start) != after:
        return -1, None
    return start, special_starts[after] if after < len(special_starts) else None


def assistant_turns(messages: list[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                    where: str) -> RenderedConversation:
    """The conversation as ``template`` renders it, tokenized, and where each assistant turn with content lies in
    it (the module's docstring says how); ``where`` names the conversation in errors (``row 3``)."""
    def render(turns: list[dict], generation_prompt: bool) -> str:
        return render_chat(tokenizer, turns, template, generation_prompt, where)

    text = render(messages, False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding[INPUT_IDS], encoding["offset_mapping"]
    special = _special_tokens(tokenizer)
    special_spans = [span for token, span in zip(ids, offsets) if token in special]  # ascending
    special_starts = [start for start, _ in special_spans]
    turns = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant" or not message["content"].strip():
            continue
        prompt, last = render(messages[:turn], True), turn == len(messages) - 1
        begin = len(prompt)
        if not text.startswith(prompt):
            before = render(messages[:turn], False)
            if not text.startswith(before):
                raise _not_prefix_consistent(messages, before, text, where, turn)
            begin = _held_prompt_end(tokenizer, prompt, before, text)
        after = bisect.bisect_left(special_starts, begin)
        if after > 0 and special_spans[after - 1][1] > begin:  # a role token that takes the whitespace after it
            begin = special_spans[after - 1][1]  # (Phi-3's, rstrip) ends in the answer: it is still the prompt's
        closing = special_starts[after] if after < len(special_starts) else None
        content = message["content"].strip()
        if not last:
            begin = _own_start(text, content, begin, closing)
        start, shown = _shown_content(text, content, begin, closing)
        if start < 0 and closing is not None:
            start, closing = _after_written_special_tokens(messages, turn, text, render, begin, special_starts)
        if start < 0:
            held = sorted(token for token in set(special.values()) if token in content)
            raise DistilyConfigError(
                f"{where}'s assistant turn {turn} holds {held[0]!r}, the text of one of the tokenizer's special "
                "tokens, which it reads as that token, not as the answer's text; expected answers without "
                "special-token text"
            ) if held else DistilyConfigError(
                f"the chat template does not render assistant turn {turn} of {where} after its generation prompt "
                "and before the next special token; expected the assistant's content there verbatim, or its end (as "
                "Qwen3's template keeps of an earlier answer, without its <think> reasoning)"
            )
        if last and _squeezed(shown) != _squeezed(content):
            raise DistilyConfigError(
                f"the chat template leaves the assistant only the end of the last answer (turn {turn}) of {where} "
                "after the generation prompt (the DeepSeek-R1 distills' template drops its <think> reasoning; Qwen3's "
                "prompt holds an empty one with enable_thinking=false); expected that answer whole: another "
                "chat_template or chat_template_kwargs, or answers without reasoning"
            )
        turns.append(AssistantTurn(turn, begin, start, start + len(shown), closing))
    return RenderedConversation(text, ids, offsets, turns)


def masked_assistant_turns(messages: list[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                           row: int) -> tuple[RenderedConversation, list[int], list[int]]:
    """The rendered conversation, the mask of its assistant's tokens (see ``assistant_token_mask``) and the first
    masked token of each of its assistant turns."""
    rendered = assistant_turns(messages, tokenizer, template, f"row {row}")
    offsets, mask, firsts = rendered.offsets, [0] * len(rendered.ids), []
    token_ends = [last for _, last in offsets]  # ascending
    for turn in rendered.turns:
        end_of_turn = rendered.end_of_turn_start(turn)
        end = turn.content_end if end_of_turn is None else end_of_turn + 1  # with the whitespace before it
        token = bisect.bisect_right(token_ends, turn.start)  # the first token that ends after the prompt
        firsts.append(token)
        while token < len(mask) and offsets[token][0] < end:
            mask[token] = 1
            token += 1
    return rendered, mask, firsts


def assistant_token_mask(messages: list[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                         row: int) -> tuple[list[int], list[int]]:
    """``(input_ids, mask)`` of a conversation: the template's rendering tokenized, and 1 on the assistant's
    tokens (from its generation prompt to the end of its content, and the end-of-turn token that closes it);
    ``row`` names the conversation in errors."""
    rendered, mask, _ = masked_assistant_turns(messages, tokenizer, template, row)
    return rendered.ids, mask


def _ending_at_a_kept_answer(messages: list[dict], tokenizer: PreTrainedTokenizerBase, chat: ChatTokenization,
                             row: int) -> tuple[list[int], list[int]]:
    """``(input_ids, mask)`` of a conversation to be cut to ``chat.max_length`` tokens. When the cut would leave
    some of its answers but none of its last, the conversation ends at the last answer the cut keeps, rendered as
    its last answer: the template writes a last answer as the model writes it after that question (Qwen3's opens
    it with its ``<think>`` block and keeps its reasoning), and the on-policy prompt taken from the row is then
    the template's generation prompt."""
    rendered, mask, firsts = masked_assistant_turns(messages, tokenizer, chat.template, row)
    kept = sum(first < chat.max_length for first in firsts)
    if 0 < kept < len(firsts):
        return _ending_at_a_kept_answer(messages[: rendered.turns[kept - 1].message + 1], tokenizer, chat, row)
    return rendered.ids, mask


def target_mask(mask: list[int], max_length: int) -> list[int]:
    """A conversation's ``loss_mask`` from the mask of its tokens (see ``assistant_token_mask``): moved one position
    left (1 at t when the token at t + 1 is masked), cut to ``max_length``; when the cut took the last kept
    position's target, that position loses it."""
    shifted = (mask[1:] + [0])[:max_length]
    if max_length < len(mask):
        shifted[-1] = 0  # its target was cut
    return shifted


def tokenize_conversations(batch, tokenizer: PreTrainedTokenizerBase, chat: ChatTokenization):
    """Token ids of each conversation, and with ``loss_on=assistant`` its ``loss_mask``; a conversation is cut to
    ``chat.max_length`` tokens (with ``loss_on=assistant``, after its last answer the cut keeps when it cuts away
    the last: see ``_ending_at_a_kept_answer``), and with ``loss_on=assistant`` dropped when the cut leaves none
    of its assistant's tokens."""
    out = {INPUT_IDS: []} if chat.loss_on == "all" else {INPUT_IDS: [], LOSS_MASK: []}
    for messages, row in zip(batch[MESSAGES], batch[ROW]):
        if LOSS_MASK in out:
            ids, mask = _ending_at_a_kept_answer(messages, tokenizer, chat, row)
        else:
            ids, mask = assistant_token_mask(messages, tokenizer, chat.template, row)
        loss_mask = target_mask(mask, chat.max_length)
        if LOSS_MASK in out and not any(loss_mask):
            continue
        out[INPUT_IDS].append(ids[: chat.max_length])
        if LOSS_MASK in out:
            out[LOSS_MASK].append(loss_mask)
    return out
