"""The split of a dataset's documents into training and held-out ones (``eval_fraction``, seeded).

Conversations that answer one prompt (``distily generate`` writes ``generate_num_return_sequences`` of them per
prompt, and instruction sets repeat prompts) stay on one side: split one by one, a held-out prompt's other answers
would be trained on, and the held-out loss would measure recall of them. Data whose prompts are all distinct, or
all one (with a warning), text, and chat data split by conversation (``eval_split_by: conversation``: many answers
per prompt drawn alike, where held-out answers to trained prompts are what is measured) split row by row as
``datasets``' ``train_test_split`` does.
"""

import json
import logging
from typing import Optional

import datasets

from distily.data.chat import MESSAGES

logger = logging.getLogger(__name__)


def _prompt(turns: list[dict]) -> str:
    """A conversation's prompt: its turns before the last assistant turn."""
    last = max((index for index, turn in enumerate(turns) if turn.get("role") == "assistant"), default=len(turns))
    return json.dumps(turns[:last], sort_keys=True)


def prompts_of(documents: datasets.Dataset) -> Optional[list[str]]:
    """Each conversation's prompt, None for text."""
    if MESSAGES not in documents.column_names:
        return None
    return [_prompt(turns) for turns in documents[MESSAGES]]


def split_documents(documents: datasets.Dataset, eval_fraction: float, seed: int,
                    by: str = "prompt") -> datasets.DatasetDict:
    """``train`` and ``test`` documents, ``eval_fraction`` of them (of the prompts, where conversations repeat one
    and ``by`` is prompt) held out, drawn with ``seed``."""
    prompts = prompts_of(documents) if by == "prompt" else None
    distinct = len(set(prompts)) if prompts is not None else None
    if distinct == 1 and len(prompts) > 1:
        logger.warning(f"the {len(prompts)} conversations answer one prompt: the held-out ones share it with training")
    if prompts is None or distinct in (1, len(prompts)):
        return documents.train_test_split(test_size=eval_fraction, seed=seed)
    groups = datasets.Dataset.from_dict({"prompt": sorted(set(prompts))})
    held_out = set(groups.train_test_split(test_size=eval_fraction, seed=seed)["test"]["prompt"])
    test = [index for index, prompt in enumerate(prompts) if prompt in held_out]
    train = [index for index, prompt in enumerate(prompts) if prompt not in held_out]
    return datasets.DatasetDict(train=documents.select(train), test=documents.select(test))
