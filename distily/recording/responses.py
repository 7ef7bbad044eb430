"""The teacher's responses to prompts (``distily generate`` with ``generate_prompts``): sequence-level KD data.

Each prompt (a ``prompt`` string: one user turn; or ``messages``: role/content turns ending with the user's) is
formatted with the teacher's chat template (``apply_chat_template(..., add_generation_prompt=True)``), or the
``chat_template`` given, and the teacher samples ``generate_num_return_sequences`` responses to it. Each response
becomes one conversation: the prompt's turns and an ``assistant`` turn, the ``messages`` rows that ``distily
distill`` reads as chat data. A response that is empty (the teacher stopped at once), or unfinished (no stop
token within ``generate_length`` or before the teacher's last position, unless ``generate_keep_unfinished``), is
dropped and counted; so are the responses to a prompt that fills the teacher's positions (nothing is sampled for
it). A response is the teacher's text without its stop token and special tokens, and without what the template
writes before an answer's content when it opens with it (``answer_opening``, found on a probe answer: gpt-oss's
``<|channel|>final<|message|>``, shown as ``final``; Qwen3's empty ``<think>`` block), which the template writes
back when the conversation is rendered.
"""

import dataclasses

import datasets
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.config import GenerateConfig
from distily.data.chat import ChatTemplate, message_turns, prompt_ids
from distily.data.sources import load_documents
from distily.errors import DistilyConfigError
from distily.generation.backends import open_generator
from distily.generation.engine import answer_opening, completion_text, without_opening
from distily.models.architecture import max_positions

PROMPT, MESSAGES = "prompt", "messages"
OPENING_PROBE = [{"role": "user", "content": "Hello."}]  # answered "Hello.": what a template writes before an answer


def load_prompts(config: GenerateConfig) -> datasets.Dataset:
    """The ``generate_prompts`` dataset, read as ``dataset_name`` is."""
    args = config.generate
    data = dataclasses.replace(
        config.data, dataset_name=args.generate_prompts, dataset_split=args.generate_prompts_split
    )
    try:
        return load_documents(data)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"generate_prompts={args.generate_prompts!r}: {err}")


def _turns(messages, row: int) -> list[dict]:
    """A ``messages`` row as a list of {role, content} turns, checked as chat data's messages are (``message_turns``:
    roles system, user and assistant, a content of text parts read as their texts joined) and to end with the user's
    turn."""
    where = f"generate_prompts row {row}"
    if isinstance(messages, list) and not messages:
        raise DistilyConfigError(f"{where} has no messages; expected a list of role/content turns")
    turns = message_turns(messages, where)
    if turns[-1]["role"] != "user":
        raise DistilyConfigError(f"{where} ends with a {turns[-1]['role']!r} turn; expected the user's turn last")
    return [{"role": turn["role"], "content": turn["content"]} for turn in turns]


def prompt_conversations(prompts: datasets.Dataset) -> list[list[dict]]:
    """Each prompt row as the conversation the teacher answers (checked: no empty prompt, the user's turn last)."""
    if MESSAGES in prompts.column_names:
        conversations = [_turns(messages, row) for row, messages in enumerate(prompts[MESSAGES])]
    elif PROMPT in prompts.column_names:
        conversations = []
        for row, prompt in enumerate(prompts[PROMPT]):
            if not isinstance(prompt, str) or not prompt.strip():
                raise DistilyConfigError(f"generate_prompts row {row} has an empty prompt {prompt!r}; expected text")
            conversations.append([{"role": "user", "content": prompt}])
    else:
        raise DistilyConfigError(
            f"generate_prompts has the columns {', '.join(prompts.column_names)}; expected a {PROMPT!r} column (a "
            f"string) or a {MESSAGES!r} column (role/content turns)"
        )
    if not conversations:
        raise DistilyConfigError("generate_prompts holds no prompts; expected at least one row")
    return conversations


def teacher_responses(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GenerateConfig, template: ChatTemplate,
    batch_size: int,
) -> tuple[list[list[dict]], dict[str, int]]:
    """The conversations with the teacher's responses appended (``generate_num_return_sequences`` per prompt, in
    prompt order, each prompt rendered with ``template``), and the responses dropped: ``too_long`` ones (the prompt
    leaves none of the teacher's positions: nothing is sampled), ``empty`` ones, and ``unfinished`` ones (no stop
    token within ``generate_length`` or the teacher's positions: cut mid-answer, the template would close them as
    whole answers) unless ``generate_keep_unfinished``; ``at_positions`` counts the unfinished ones that reached the
    teacher's last position."""
    args = config.generate
    conversations = prompt_conversations(load_prompts(config))
    # ends at its end of turn
    generator = open_generator("hf", teacher, tokenizer, args.sampling(), None, template, role="teacher")
    stops = generator.stop_ids
    opening = answer_opening(tokenizer, OPENING_PROBE, "Hello.", template,
                             "the conversation Distily renders to find what the template writes before an answer")
    positions = max_positions(teacher.config)
    requests = []  # (conversation, prompt ids), each prompt generate_num_return_sequences times
    answered, dropped = [], {"too_long": 0, "empty": 0, "unfinished": 0, "at_positions": 0}
    for row, conversation in enumerate(conversations):
        ids = prompt_ids(tokenizer, conversation, template, f"generate_prompts row {row}")
        if positions is not None and len(ids) >= positions:
            dropped["too_long"] += args.generate_num_return_sequences
            continue
        requests += [(conversation, ids)] * args.generate_num_return_sequences
    with tqdm(total=len(requests), desc="Teacher responses", unit="response") as progress:
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            for (conversation, ids), completion in zip(chunk, generator.generate([ids for _, ids in chunk])):
                response = without_opening(completion_text(tokenizer, completion, stops), opening)
                if not response.strip():
                    dropped["empty"] += 1
                elif not (completion and completion[-1] in stops) and not args.generate_keep_unfinished:
                    dropped["unfinished"] += 1
                    dropped["at_positions"] += positions is not None and len(ids) + len(completion) >= positions
                else:
                    answered.append(conversation + [{"role": "assistant", "content": response}])
            progress.update(len(chunk))
    return answered, dropped
