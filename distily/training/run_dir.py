"""A run's ``output_dir``: finished or not, resumed or started over, written by one run at a time.

- ``metrics.json`` is written last: its presence marks a finished run. A finished run is trained again
  only with ``overwrite_output_dir``, or longer (``resume_from_checkpoint`` with a larger ``max_steps``, or by
  epochs more ``num_train_epochs``: checked once the data gives the run's steps).
- Before a run writes anything, the finished marker of what it replaces is deleted first, so no kill can
  leave a directory that says "finished" beside another run's checkpoints.
- A lock file admits one writer (``distily.training.output_lock``).
- output_dir is never one of the run's inputs (a model, tokenizer, config or teacher store) nor a folder holding
  one, and a folder that no Distily run wrote is written into only when the run would replace none of its files
  (model weights, config, tokenizer, model card, report), or with ``overwrite_output_dir``.
- The settings that shape a run (models, data and its order, objective, on-policy sampling, optimizer, global batch) are
  recorded in ``run_settings.json`` when it starts; a resume with other values is refused. A resume from a
  checkpoint of another directory goes only into an output_dir without checkpoints or a finished run.
  Once the data loads, a sample of the training rows is recorded with them too (``check_train_rows``), and once a
  live teacher loads a fingerprint of its weights (``check_teacher_weights``): a resume on data rewritten under the
  same name, or on a teacher saved again at its path, is refused.
- ``resume_from_checkpoint=true`` resumes from the newest intact checkpoint (``distily.training.checkpoints``):
  a newer one that is truncated or fails its checksums is passed over with a warning.
- ``resume_from_checkpoint=auto`` (Distily's, for a job requeued with the same command): a new run where output_dir
  holds no run, a resume as with true where it holds checkpoints of an unfinished run, the run started again where
  it stopped before its first checkpoint (its settings, recorded in ``run_settings.json``, checked as a resume's),
  and nothing at all where the run finished (``finished_run_left``).
- A full, read-only or unwritable filesystem is one line naming the path; the student is saved aside and
  renamed in, so nothing half-written is left where a user or a resume would look.
"""

import hashlib
import json
import logging
import os
import shlex
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Optional

from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distily.config import DistillConfig
from distily.data.chat import run_date
from distily.data.framing import INPUT_IDS
from distily.data.store import recorded_chat_template_date
from distily.errors import DistilyConfigError
from distily.metrics import RunMetrics
from distily.models.arguments import ModelArguments
from distily.models.finite import raised_on_every_process
from distily.models.identity import weights_fingerprint
from distily.objectives.arguments import ObjectiveArguments
from distily.outputs import filesystem_errors, weight_files, write_json_atomic
from distily.reporting.run import PLOTS_DIR, REPORT_FILE
from distily.training.checkpoints import TRAINER_STATE_FILE, checkpoint_problem
from distily.training.trainer_internals import CHECKPOINT_STAGING_DIR

logger = logging.getLogger(__name__)


class RunDir:
    """A run's output_dir: the paths of what Distily writes there, its finished marker and its checkpoints."""

    METRICS = "metrics.json"  # written last: its presence marks a finished run
    LOCK = "_distily.lock"  # while a run writes output_dir ("_": push_to_hub does not upload it)
    SETTINGS = "run_settings.json"  # what shapes the run, recorded when it starts
    REPLACED = "_replaced"  # an overwritten run's files on their way out
    STUDENT_STAGING = "_student-staging"  # the student is saved here, then renamed into output_dir ("_": as LOCK)
    STUDENT_WEIGHTS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                       "pytorch_model*.bin")
    # What else a run writes at the top of output_dir, under names a model folder or a model's repository uses too:
    # the student's config and tokenizer (the files any tokenizer class saves), its card, the report and its plots
    WRITTEN = ("README.md", REPORT_FILE, PLOTS_DIR, "config.json", "generation_config.json", TRAINING_ARGS_NAME,
               "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
               "chat_template.*", "*.model")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def settings(self) -> Path:
        return self.path / self.SETTINGS

    @property
    def replaced(self) -> Path:
        return self.path / self.REPLACED

    @property
    def checkpoint_staging(self) -> Path:
        return self.path / CHECKPOINT_STAGING_DIR

    @property
    def student_staging(self) -> Path:
        return self.path / self.STUDENT_STAGING

    def is_finished(self) -> bool:
        return self.metrics.exists()

    def read_metrics(self) -> RunMetrics:
        return RunMetrics.from_dict(json.loads(self.metrics.read_text()))

    def write_metrics(self, metrics: RunMetrics) -> None:
        """Write metrics.json, which marks the run finished (so: last)."""
        write_json_atomic(self.metrics, metrics.to_dict())

    def unmark_finished(self) -> None:
        self.metrics.unlink(missing_ok=True)

    def finished_step(self) -> Optional[int]:
        """The last step of the finished run, None when there is none or its metrics.json does not say (read
        alone, not as ``RunMetrics``: a metrics.json that lacks other figures still tells how far its run went)."""
        try:
            return int(json.loads(self.metrics.read_text())["train"]["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def recorded_settings(self) -> Optional[dict]:
        """The settings the run was started with, None when they were not recorded."""
        return json.loads(self.settings.read_text()).get("settings", {}) if self.settings.is_file() else None

    def record_settings(self, settings: dict) -> None:
        write_json_atomic(self.settings, {"settings": settings})

    def checkpoints(self) -> list[Path]:
        """The checkpoint-N directories, newest (highest N) first."""
        prefix = f"{PREFIX_CHECKPOINT_DIR}-"
        numbered = [(int(path.name[len(prefix):]), path) for path in self.path.glob(f"{prefix}*")
                    if path.name[len(prefix):].isdigit() and path.is_dir()]
        return [path for _, path in sorted(numbered, reverse=True)]

    def last_checkpoint(self) -> Optional[Path]:
        return next(iter(self.checkpoints()), None)

    def student_weights(self) -> list[Path]:
        return [path for pattern in self.STUDENT_WEIGHTS for path in self.path.glob(pattern)]

    def foreign_files(self) -> list[str]:
        """The names of the files here that the run would write over, when no Distily run wrote this directory (no
        run_settings.json): a model or a model's repository saved by someone else."""
        if self.settings.exists():
            return []
        written = {path.name for pattern in self.WRITTEN for path in self.path.glob(pattern)}
        return sorted(written | {path.name for path in weight_files(self.path)})

    def holds_own(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` is one of this directory's checkpoints."""
        return Path(checkpoint).resolve().parent == self.path.resolve()


# Settings a resumed run must share with the run that wrote its checkpoint: what it trains on and in which order,
# the models, the objective, on-policy sampling and the optimizer. Anything else (max_steps, logging, evaluation,
# checkpoints, precision, workers, back ends) may change.
DATA_KEYS = ("dataset_name", "dataset_config_name", "dataset_split", "dataset_text_column", "dataset_messages_column",
             "dataset_prompt_column", "dataset_completion_column", "chat_template", "student_chat_template",
             "chat_template_kwargs", "chat_template_date", "loss_on", "max_seq_length", "packing",
             "text_document_delimiter", "max_samples", "eval_fraction", "eval_split_by")
RECORD_KEYS = ("teacher_source", "teacher_store")
TRAINING_KEYS = ("seed", "data_seed", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
                 "weight_decay", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "bitnet_schedule", "bitnet_stage_boundary",
                 # the order the training rows are drawn in, and whether an epoch ends with a short batch
                 "train_sampling_strategy", "dataloader_drop_last",
                 # on-policy: how often the student's own completions replace a batch, and how they are sampled
                 # (on_policy_backend may change: hf and vllm sample the same distribution)
                 "lmbda", "on_policy_temperature", "on_policy_top_p", "on_policy_max_new_tokens")
# The run's inputs that are local files or directories when they exist (else Hub ids): output_dir is none of them
# and holds none of them, since the student, checkpoints and logs written there (and an overwrite or the
# checkpoint rotation removing them) would replace them. An output_dir inside one of them only adds a folder there.
INPUT_KEYS = ("teacher_model_name_or_path", "student_model_name_or_path", "student_tokenizer_name_or_path",
              "student_config_name_or_path", "teacher_store")
GLOBAL_BATCH = "global_train_batch_size"  # per-device batch x accumulation x processes: these may be traded
TRAIN_ROWS = "train_rows_sha256"  # a sample of the training rows (train_rows_digest), recorded once the data loads
TEACHER_WEIGHTS = "teacher_weights"  # the live teacher's weights_fingerprint, recorded once it loads
CONTENTS = (TRAIN_ROWS, TEACHER_WEIGHTS)  # what the inputs held: checked as they load (_check_unchanged)
SAMPLED_ROWS = 64
RESUMABLE_CHANGES = "max_steps, logging, evaluation and checkpoint settings may change"
AUTO = "auto"  # resume_from_checkpoint=auto: Distily's own value (the Trainer's are a path or true)


def run_settings(config: DistillConfig) -> dict:
    """The settings that shape the run, as they read back from JSON."""
    model_keys = [f.name for f in fields(ModelArguments) if f.name != "trust_remote_code"]
    parts = [
        (config.model, model_keys),
        (config.data, DATA_KEYS),
        (config.objective, [f.name for f in fields(ObjectiveArguments)]),
        (config.record, RECORD_KEYS),
        (config.training, TRAINING_KEYS),
    ]
    settings = {key: getattr(part, key) for part, keys in parts for key in keys}
    training = config.training
    settings[GLOBAL_BATCH] = (
        training.per_device_train_batch_size * training.gradient_accumulation_steps * training.world_size
    )
    return json.loads(json.dumps(settings, default=str))


def check_output_dir_path(output_dir: str) -> None:
    """output_dir is a directory or nothing yet."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise DistilyConfigError(
            f"output_dir={output_dir!r} is an existing file; expected a directory (new, or of a previous run)"
        )


def check_inputs_outside(output_dir: str, settings: dict) -> None:
    """output_dir is not, and does not hold, a local model, tokenizer, config or teacher store the run reads."""
    out = Path(output_dir).expanduser().resolve()
    for key in INPUT_KEYS:
        value = settings.get(key)
        if value is None or not os.path.exists(os.path.expanduser(value)):  # unset, or a Hub id
            continue
        path = Path(value).expanduser().resolve()
        if path == out or out in path.parents:
            relation = "is" if path == out else "contains"
            raise DistilyConfigError(
                f"output_dir={output_dir!r} {relation} {key}={value!r}; expected an output_dir that neither is nor "
                "contains an input of the run (the student, checkpoints and logs written there would replace it)"
            )


def _newest_intact(value, output_dir: str) -> str:
    """The newest intact checkpoint in ``output_dir``, with one warning line for the newer ones passed over."""
    checkpoints = RunDir(output_dir).checkpoints()
    if not checkpoints:
        raise DistilyConfigError(
            f"resume_from_checkpoint={value!r} but {output_dir!r} holds no checkpoint; expected a directory with "
            "checkpoint-* subdirectories"
        )
    broken = []
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if broken:
                logger.warning(f"resuming from {checkpoint}, the newest intact checkpoint: {'; '.join(broken)}")
            return str(checkpoint)
        broken.append(f"{checkpoint.name} is not intact ({problem})")
    raise DistilyConfigError(
        f"resume_from_checkpoint={value!r} but no checkpoint in {output_dir!r} is intact ({'; '.join(broken)}); "
        "expected an intact checkpoint, or --overwrite_output_dir true to start over"
    )


def resolve_resume(training) -> Optional[str]:
    """``resume_from_checkpoint`` as a checkpoint directory (true/last: the newest intact one in output_dir, a
    newer one that is not intact passed over with a warning), or None."""
    value = training.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", ""):
        return None
    if training.overwrite_output_dir:
        raise DistilyConfigError(
            f"resume_from_checkpoint={value!r} and overwrite_output_dir=true are both set; expected one: resume "
            "continues the run in output_dir, overwrite starts it over"
        )
    if str(value).lower() in ("true", "last", "yes"):
        return _newest_intact(value, training.output_dir)
    if _is_auto(training):  # a new run, or one started again, where output_dir holds no checkpoint
        return _newest_intact(value, training.output_dir) if RunDir(training.output_dir).checkpoints() else None
    if not os.path.isfile(os.path.join(value, TRAINER_STATE_FILE)):
        raise DistilyConfigError(
            f"resume_from_checkpoint={value!r} is not a checkpoint; expected a checkpoint-* directory with "
            f"{TRAINER_STATE_FILE}, true (the newest intact one in output_dir) or {AUTO}"
        )
    problem = checkpoint_problem(value)
    if problem is not None:
        raise DistilyConfigError(
            f"resume_from_checkpoint={value!r} is not intact ({problem}); expected an intact checkpoint (an earlier "
            "one, or resume_from_checkpoint=true for the newest intact one)"
        )
    return value


def _is_auto(training) -> bool:
    return str(training.resume_from_checkpoint).lower() == AUTO


def finished_run_left(training) -> Optional[str]:
    """With resume_from_checkpoint=auto over a finished run, the line saying that the run leaves it as it is (a job
    requeued after its run finished: nothing to do, nothing written); None otherwise."""
    run = RunDir(training.output_dir)
    if not _is_auto(training) or not run.is_finished():
        return None
    finished = run.finished_step()
    steps = "" if finished is None else f" of {finished} steps"
    longer = "" if finished is None else (f" (--resume_from_checkpoint true with "
                                          f"{_more_steps(training, f'max_steps above {finished}')} trains it longer)")
    return (f"output_dir={str(run.path)!r} holds a finished run{steps}: resume_from_checkpoint={AUTO} leaves it as it "
            f"is{longer}")


def continued_run(training, resume: Optional[str]) -> Optional[RunDir]:
    """The run whose settings this one keeps: the resumed checkpoint's, or the unfinished run of output_dir that
    resume_from_checkpoint=auto starts again (it recorded its settings but stopped before its first checkpoint);
    None for a new run."""
    if resume is not None:
        return RunDir(Path(resume).parent)
    run = RunDir(training.output_dir)
    return run if _is_auto(training) and run.settings.is_file() and not run.is_finished() else None


def pin_chat_template_date(config: DistillConfig, continued: Optional[RunDir]) -> None:
    """Fix the date a dated chat template renders the whole run with (``chat_template_date``): the one given, else
    the one the run it continues (``continued_run``: resumed, or started again) recorded, else the recorded teacher
    store's, else today (UTC) on the main process, which every process takes (one started at midnight could read the
    next day); the run's settings record it."""
    data, record = config.data, config.record
    resumed = (continued.recorded_settings() or {}) if continued is not None else {}
    stored = recorded_chat_template_date(record.teacher_store) if record.teacher_source == "recorded" else None
    date = run_date(data.chat_template_date, resumed.get("chat_template_date"), stored)
    [data.chat_template_date] = broadcast_object_list([date])  # the main process's (from process 0)


def _checkpoint_step(checkpoint: str) -> int:
    return json.loads(Path(checkpoint, TRAINER_STATE_FILE).read_text())["global_step"]


def _check_files_are_distilys(run: RunDir) -> None:
    """Refuse a directory that no Distily run wrote holding files the run would write over (a model saved there, a
    clone of a model's repository)."""
    files = run.foreign_files()
    if files:
        raise DistilyConfigError(
            f"output_dir={str(run.path)!r} holds {', '.join(files)} but no {RunDir.SETTINGS}, so no Distily run wrote "
            "it and the run would write over them; expected another output_dir, or --overwrite_output_dir true to "
            "replace them"
        )


def _check_foreign_resume(run: RunDir, resume: Optional[str]) -> None:
    """A resume from another directory's checkpoint goes into an output_dir without checkpoints or a finished run:
    the Trainer would rotate that run's checkpoints away, and its files would be taken for this run's."""
    if resume is None or run.holds_own(resume) or not (run.is_finished() or run.last_checkpoint()):
        return
    held = "a finished run" if run.is_finished() else "checkpoints of an unfinished run"
    raise DistilyConfigError(
        f"resume_from_checkpoint={resume!r} is not in output_dir={str(run.path)!r}, which holds {held}; expected "
        "an output_dir without checkpoints or a finished run, or --resume_from_checkpoint true to continue the run "
        "in it"
    )


def check_output_dir(training, resume: Optional[str], settings: dict) -> None:
    """Refuse an output_dir that is or holds one of the run's inputs (``settings``, on every process); refuse to
    train again over a finished run, to start over an unfinished one, or to write over files no Distily run wrote,
    unless told to; a finished run is resumed only to train it longer, from a
    checkpoint at its last step; a checkpoint of another directory is resumed only into an output_dir without
    checkpoints or a finished run."""
    run = RunDir(training.output_dir)
    output_dir = run.path
    check_output_dir_path(str(output_dir))
    check_inputs_outside(training.output_dir, settings)  # first: the advice below (overwrite) would replace an input
    if training.overwrite_output_dir or not output_dir.is_dir():
        return
    _check_files_are_distilys(run)
    _check_foreign_resume(run, resume)
    if run.is_finished():
        finished = run.finished_step()
        steps = f" of {finished} steps" if finished is not None else ""
        expected = "--overwrite_output_dir true to train it again, or another output_dir"
        if resume is None or finished is None:
            raise DistilyConfigError(
                f"output_dir={str(output_dir)!r} holds a finished run{steps}; expected {expected}"
                + ("" if finished is None else f" (or --resume_from_checkpoint true with "
                   f"{_more_steps(training, f'max_steps above {finished}')} to train it longer)")
            )
        if training.max_steps > 0:  # by epochs, once the data gives the steps (check_steps)
            _check_trains_further(training, finished, training.max_steps)
        if _checkpoint_step(resume) < finished:
            raise DistilyConfigError(
                f"resume_from_checkpoint={resume!r} is at step {_checkpoint_step(resume)}, before the end of the "
                f"finished run in {str(output_dir)!r} (step {finished}); expected a checkpoint of its last step, or "
                f"{expected}"
            )
        return
    if resume is None and run.last_checkpoint() is not None:
        raise DistilyConfigError(
            f"output_dir={str(output_dir)!r} holds checkpoints of an unfinished run; expected "
            "--resume_from_checkpoint true to continue it or --overwrite_output_dir true to start over"
        )
    restarted = continued_run(training, resume) if resume is None else None
    if restarted is not None:  # only a run of these settings is started again, and its half-written saves removed
        _check_settings(restarted, settings, f"resume_from_checkpoint={AUTO} would start again the unfinished run in "
                                             f"{str(output_dir)!r} (no checkpoint yet), started")


def _more_steps(training, max_steps: str) -> str:
    """The advice to train longer, ``max_steps`` (e.g. "max_steps above 4"), by epochs also more num_train_epochs."""
    return max_steps if training.max_steps > 0 else f"more num_train_epochs or {max_steps}"


def _check_trains_further(training, finished: int, total_steps: int) -> None:
    """A run of ``total_steps`` steps that resumes a finished run of ``finished`` steps trains it longer."""
    if total_steps <= finished:
        raise DistilyConfigError(
            f"output_dir={training.output_dir!r} holds a finished run of {finished} steps and "
            f"{training.run_length(total_steps)} trains no further; expected "
            f"{_more_steps(training, f'max_steps above {finished}')} to train it longer, or --overwrite_output_dir "
            "true to train it again, or another output_dir"
        )


def _check_reaches_checkpoint(training, resume: str, total_steps: int) -> None:
    """A run of ``total_steps`` steps resumed from ``resume`` trains at least to its step."""
    step = _checkpoint_step(resume)
    if total_steps < step:
        raise DistilyConfigError(
            f"{training.run_length(total_steps)} is below the step of resume_from_checkpoint={resume!r} ({step}); "
            f"expected {_more_steps(training, f'max_steps of at least {step}')}"
        )


def check_steps(training, resume: Optional[str], total_steps: int) -> None:
    """A run by epochs (max_steps -1), once its data gives its ``total_steps`` (the Trainer's count): resumed, it
    trains further than the finished run it continues and at least to its checkpoint's step (``check_output_dir``
    and ``check_resume`` check a positive max_steps before anything loads)."""
    if resume is None or training.max_steps > 0:
        return
    finished = RunDir(training.output_dir).finished_step()
    if finished is not None:
        _check_trains_further(training, finished, total_steps)
    _check_reaches_checkpoint(training, resume, total_steps)


def _warn_unrecorded(run: RunDir, keys: list[str]) -> None:
    logger.warning(f"{run.settings} does not record {', '.join(keys)} (written by an older Distily): the resumed "
                   "run's values of these are not checked")


def check_resume(training, resume: str, settings: dict) -> None:
    """A resumed run trains at least to its checkpoint's step, with the settings that run was started with."""
    if training.max_steps > 0:  # by epochs, once the data gives the steps (check_steps)
        _check_reaches_checkpoint(training, resume, training.max_steps)
    _check_settings(RunDir(Path(resume).parent), settings, f"resume_from_checkpoint={resume!r} continues a run started")


def _check_settings(run: RunDir, settings: dict, started: str) -> None:
    """``settings`` are those ``run`` recorded when it started, but for those its inputs' contents give (checked as
    they load: check_train_rows, check_teacher_weights); a refusal opens with ``started`` (the run it goes on)."""
    was = run.recorded_settings()
    if was is None:
        logger.warning(f"{run.settings} does not exist: the settings of the resumed run cannot be checked")
        return
    unrecorded = sorted(set(settings) - set(was))  # settings an older Distily did not record
    if unrecorded:
        _warn_unrecorded(run, unrecorded)
    for key in sorted(set(was) - set(CONTENTS)):
        if was[key] != settings.get(key):
            raise DistilyConfigError(
                f"{started} with {key}={was[key]!r}, not {settings.get(key)!r}; expected the settings it was started "
                f"with ({RESUMABLE_CHANGES}), or --overwrite_output_dir true to start over"
            )


def train_rows_digest(train) -> str:
    """The sha256 of the training set's row count and of the token ids of ``SAMPLED_ROWS`` rows spread evenly over it
    (its first and last among them): data rewritten under the same name gives other rows, read in milliseconds."""
    count = len(train)
    digest = hashlib.sha256(f"{count} rows".encode())
    sampled = {round(index * (count - 1) / (SAMPLED_ROWS - 1)) for index in range(SAMPLED_ROWS)} if count else set()
    for row in sorted(sampled):
        digest.update(json.dumps([int(token) for token in train[row][INPUT_IDS]]).encode())
    return digest.hexdigest()


def _check_unchanged(resume: Optional[str], settings: dict, key: str, value: str, started: str, changed: str,
                     expected: str) -> None:
    """Record ``value`` (what an input holds now) under ``key`` in ``settings``; refuse a resume of a run that
    recorded another: it continues a run ``started`` (on what), ``changed`` (what changed since), ``expected``."""
    settings[key] = value
    run = RunDir(Path(resume).parent) if resume is not None else None
    was = run.recorded_settings() if run is not None else None
    if was is not None and key not in was:
        _warn_unrecorded(run, [key])
    if was is None or was.get(key, value) == value:
        return
    raise DistilyConfigError(
        f"resume_from_checkpoint={resume!r} continues a run started {started} ({key} {was[key][:12]}..., now "
        f"{value[:12]}...: {changed} changed since); expected {expected}, or --overwrite_output_dir true to start over"
    )


def check_train_rows(resume: Optional[str], settings: dict, train) -> None:
    """Record the training rows' digest (``train_rows_digest``) in ``settings``; refuse a resume of a run that was
    started on other rows (a data file or a teacher store rewritten under its name since)."""
    source = "teacher_store" if settings.get("teacher_source") == "recorded" else "dataset_name"
    _check_unchanged(resume, settings, TRAIN_ROWS, train_rows_digest(train),
                     f"on other training rows than {source}={settings.get(source)!r} gives now",
                     "the data, or how a newer Distily frames it,", "the data it was started with")


def check_teacher_weights(resume: Optional[str], settings: dict, teacher: Optional[PreTrainedModel]) -> None:
    """Record the live teacher's ``weights_fingerprint`` in ``settings`` (none without a live teacher, or where it is
    unknown); refuse a resume of a run that was started on other weights (a teacher saved again at its path, or a Hub
    revision that moved since)."""
    name = settings.get("teacher_model_name_or_path")
    fingerprint = weights_fingerprint(name, teacher) if teacher is not None and name is not None else None
    if fingerprint is not None:
        _check_unchanged(resume, settings, TEACHER_WEIGHTS, fingerprint,
                         f"with other weights than teacher_model_name_or_path={name!r} holds now",
                         "the checkpoint there (or its Hub revision)", "the teacher it was started with")


def _remove(paths: list[Path], trash: Path) -> None:
    """Delete ``paths`` by first renaming each into ``trash`` (one atomic rename each), so that a kill never leaves
    a half-deleted checkpoint where a resume would look for one; then delete ``trash``."""
    shutil.rmtree(trash, ignore_errors=True)  # left by a killed overwrite
    trash.mkdir()
    for number, path in enumerate(paths):
        if os.path.lexists(path):
            os.rename(path, trash / f"{number}-{path.name}")
    shutil.rmtree(trash)


def prepare_output_dir(training, resume: Optional[str], settings: dict) -> None:
    """Just before the run writes: delete the finished marker of what it replaces first (an overwritten run, or a
    finished run trained longer), then an overwritten run's checkpoints and student weights, so that no kill leaves
    another run's files that a plain start, a resume or an export would take for this one's (a run that
    resume_from_checkpoint=auto starts again: the half-written saves it stopped in); record ``settings`` (a run
    resumed from its own checkpoint keeps those it was started with)."""
    if not training.should_save:
        return
    run = RunDir(training.output_dir)
    run.unmark_finished()  # the marker goes first
    if training.overwrite_output_dir and run.path.is_dir():
        previous = [run.checkpoint_staging, run.student_staging, *run.path.glob(f"{PREFIX_CHECKPOINT_DIR}-*")]
        _remove(previous + run.student_weights(), run.replaced)
    elif resume is None and continued_run(training, resume) is not None:  # started again: settings checked
        _remove([run.checkpoint_staging, run.student_staging], run.replaced)
    if resume is None or not run.holds_own(resume) or not run.settings.exists():
        run.record_settings(settings)


def save_student(trainer, output_dir: str) -> None:
    """The Trainer's ``save_model`` into a hidden staging directory, then each file renamed into ``output_dir``
    (weights of an earlier save that this one does not write removed), so that a kill or a full disk never
    leaves a half-written student there; a failed save removes what it staged."""
    run, saves = RunDir(output_dir), trainer.args.should_save
    try:
        with filesystem_errors(run.path, "the student"):  # diagnosed before the staged files are removed
            if saves:
                shutil.rmtree(run.student_staging, ignore_errors=True)  # left by a killed save
            with raised_on_every_process(trainer.process_group_device, "saving the student"):
                trainer.save_model(str(run.student_staging), _internal_call=True)
            trainer.accelerator.wait_for_everyone()
            if saves:
                staged = sorted(run.student_staging.iterdir())
                stale = [path for path in run.student_weights() if path.name not in {file.name for file in staged}]
                for file in staged:
                    os.replace(file, run.path / file.name)
                for path in stale:
                    path.unlink()
                run.student_staging.rmdir()
    except BaseException:
        if saves:
            shutil.rmtree(run.student_staging, ignore_errors=True)
        raise


def _resume_command(command: str, overwrite: bool) -> str:
    """``command`` with ``--resume_from_checkpoint true`` instead of any resume or overwrite flag, with its value
    (a bare ``--overwrite_output_dir``, which the parser reads as true, has none: the next flag is kept)."""
    words, kept = shlex.split(command), []
    skip = False
    for word, following in zip(words, [*words[1:], None]):
        if skip:
            skip = False
            continue
        if word.split("=")[0] in ("--resume_from_checkpoint", "--overwrite_output_dir"):
            skip = "=" not in word and following is not None and not following.startswith("--")
            continue
        kept.append(word)
    kept += ["--overwrite_output_dir", "false"] if overwrite else []  # set in the config file
    return shlex.join([*kept, "--resume_from_checkpoint", "true"])


def interrupted(training, command: Optional[str], stopped: str = "interrupted") -> str:
    """What a stopped run leaves, in one line starting with ``stopped`` (how it stopped): the checkpoint to resume
    from and the command that does it."""
    run = RunDir(training.output_dir)
    if run.is_finished():
        return f"{stopped} after the run finished ({run.metrics} is written)"
    if run.last_checkpoint() is None:
        return f"{stopped} before the first checkpoint in {training.output_dir!r}; nothing to resume, start it again"
    last = str(run.last_checkpoint())
    if command is None or not command.startswith("distily distill "):  # called from Python, or by a sweep
        return f"{stopped}; the last checkpoint is {last!r}, resume_from_checkpoint=true continues it"
    how = _resume_command(command, training.overwrite_output_dir)
    return f"{stopped}; the last checkpoint is {last!r}, resume with: {how}"
