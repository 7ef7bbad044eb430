"""The rows a store can serve a run: the split settings a recorded run takes from its store.

A store holds the rows ``distily record`` drew with its config (``eval_fraction``, the split seed, ``max_samples``,
``max_eval_samples``); a run from it trains and evaluates on them alone. ``store_split`` gives the run's config with the
store's values where the run left them at their defaults, so that what the run reports (``run_settings.json``, the
model card) says how its rows were drawn and reproduces them live, and refuses a value the store cannot honour. A
default cannot be told from the same value given: given explicitly, a default reads as left unset.
"""

import copy
import dataclasses
import logging
from typing import Optional

from distily.arguments import default_of, user_set
from distily.config import DistillConfig
from distily.data.store import TeacherStore
from distily.errors import DistilyConfigError

logger = logging.getLogger(__name__)

LIMITS = {"train": "max_samples", "eval": "max_eval_samples"}  # the setting that cuts or samples each split


def store_where(store: TeacherStore) -> str:
    """How messages name the store."""
    return f"teacher_store={str(store.path)!r}"


def holds_all(store: TeacherStore, split: str) -> bool:
    """Whether the store's rows are all the split packs into, not the first ``max_samples`` (train) or a sample of
    ``max_eval_samples`` (eval). A store recorded before manifests gave ``packed_rows`` cannot tell when its limit
    equals its rows: then it is taken for a cut (or sample)."""
    rows = len(store.dataset(split))
    packed = store.manifest.get("packed_rows")
    if packed is not None:
        return rows == packed[split]
    limit = store.settings[LIMITS[split]]
    return limit is None or limit > rows


def store_split(config: DistillConfig, store: TeacherStore) -> DistillConfig:
    """``config`` with the store's split (a new config; ``config`` is left as given): its ``eval_fraction``, its
    ``eval_split_by`` (chat data) and, for a store of the first ``max_samples`` train rows, that limit, where the run
    left them unset; its split seed as ``data_seed`` (which seeds the rows and their order) when ``seed`` is another
    (which then seeds the rest: the initialisation, dropout). An ``eval_fraction``, ``eval_split_by`` or ``data_seed``
    given other than the store's, or a limit above the rows of a store that holds only some of a split, is refused."""
    data, training = config.data, config.training
    eval_fraction = _stored(data, store, "eval_fraction", store.settings["eval_fraction"])
    eval_split_by = _stored(data, store, "eval_split_by", _stored_split_by(data, store))
    max_samples = _limit(store, "train", data.max_samples, user_set(data, "max_samples"))
    _limit(store, "eval", data.max_eval_samples, user_set(data, "max_eval_samples"))  # the named eval sets keep theirs
    resolved = copy.copy(training)  # as DistillConfig.trainer_arguments: TrainingArguments' post-init runs once
    resolved.data_seed = _data_seed(training.seed, training.data_seed, store)
    split = {"eval_fraction": eval_fraction, "eval_split_by": eval_split_by, "max_samples": max_samples}
    return dataclasses.replace(config, data=dataclasses.replace(data, **split), training=resolved)


def _stored_split_by(data, store: TeacherStore) -> str:
    """How the store held out chat data: its ``eval_split_by``, in its settings unless the default. Text is held out
    alike either way: a run from a store of text keeps its own."""
    if "loss_on" not in store.settings:  # a store of text
        return data.eval_split_by
    return store.settings.get("eval_split_by", default_of(data, "eval_split_by"))


def _stored(data, store: TeacherStore, name: str, stored):
    """The store's value of the split setting ``name``: taken where the run left it unset, refused where given other."""
    value = getattr(data, name)
    if value != stored:
        if user_set(data, name):
            raise DistilyConfigError(
                f"{name}={value!r} would draw other rows than the {stored!r} {store_where(store)} was recorded with; "
                f"expected no {name} (the store's then), or a store recorded with {name}={value!r}"
            )
        logger.info(f"{name}: the store's {stored!r} applies (its rows were drawn with it)")
    return stored


def _data_seed(seed: int, data_seed: Optional[int], store: TeacherStore) -> Optional[int]:
    """The run's ``data_seed``: the one given, which must be the store's split seed; unset, the store's when ``seed``
    is another (a live run with it draws the store's rows)."""
    stored = store.settings["seed"]
    if data_seed is not None and data_seed != stored:
        raise DistilyConfigError(
            f"data_seed={data_seed!r} would draw other rows than the {stored!r} {store_where(store)} was recorded "
            f"with; expected data_seed={stored!r} or none (any seed then: it seeds the initialisation, the store's "
            f"seed the rows), or a store recorded with data_seed={data_seed!r}"
        )
    if data_seed is None and seed != stored:
        logger.info(f"data_seed: the store's {stored!r} applies (its rows were drawn with it, and their order follows "
                    f"it); seed={seed!r} seeds the rest")
        return stored
    return data_seed


def _limit(store: TeacherStore, split: str, limit: Optional[int], given: bool) -> Optional[int]:
    """The run's ``max_samples`` (train) or ``max_eval_samples`` (eval): the one given when the store can serve it (a
    store of all of a split's rows serves any, as a live run gets them all too); unset, a store of some rows gives
    them (their number)."""
    key, rows = LIMITS[split], len(store.dataset(split))
    if holds_all(store, split) or (limit is not None and limit <= rows):
        return limit
    if given:
        raise DistilyConfigError(
            f"{key}={limit!r} asks for more than the {rows} {split} rows {store_where(store)} holds ({key}="
            f"{store.settings[key]!r} when recorded); expected {key} <= {rows} or unset (the store's rows), or a "
            f"store recorded with {key}={limit!r}"
        )
    logger.info(f"{key}: the store's {rows} {split} rows")
    return rows
