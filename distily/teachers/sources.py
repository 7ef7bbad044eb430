"""The teacher sources a run can name (``teacher_source``), and the one a run opens."""

from typing import Optional

from transformers import PreTrainedTokenizerBase

from distily.config import DistillConfig
from distily.data.chat import adopt_chat_template
from distily.errors import DistilyConfigError
from distily.models.arguments import ModelArguments
from distily.models.teacher import load_tokenizer
from distily.models.vocab import check_same_tokenizer, same_vocabulary
from distily.teachers.cross_tokenizer import CrossTokenizerTeacher
from distily.teachers.live import LiveTeacher
from distily.teachers.recorded import RecordedTeacher
from distily.teachers.source import TeacherSource

TEACHER_SOURCES: dict[str, type[TeacherSource]] = {"live": LiveTeacher, "recorded": RecordedTeacher}
# the sources that can teach a student with another tokenizer, wrapping the source of the same name
CROSS_TOKENIZER_SOURCES = {"live": CrossTokenizerTeacher}


def student_tokenizer(model_args: ModelArguments) -> Optional[PreTrainedTokenizerBase]:
    """The student's tokenizer: ``student_tokenizer_name_or_path``, else a student checkpoint's own; None (the
    teacher's) for a student built from the teacher."""
    name = model_args.student_tokenizer_name_or_path or model_args.student_model_name_or_path
    return None if name is None else load_tokenizer(name, "student", model_args.trust_remote_code)


def settled_config(config: DistillConfig) -> DistillConfig:
    """``config`` as the source ``teacher_source`` names settles it (``TeacherSource.settled_config``)."""
    return TEACHER_SOURCES[config.record.teacher_source].settled_config(config)


def open_teacher(config: DistillConfig) -> TeacherSource:
    """The run's teacher source, as ``teacher_source`` names it, opened with ``config`` as ``settled_config`` gives
    it; for a student with another tokenizer, the cross-tokenizer form of it."""
    name = config.record.teacher_source
    teacher = TEACHER_SOURCES[name](config)
    adopt_chat_template(teacher.tokenizer, config.data.chat_template)
    tokenizer = student_tokenizer(config.model)
    if tokenizer is None or same_vocabulary(teacher.tokenizer, tokenizer):
        if config.data.student_chat_template is not None:
            raise DistilyConfigError(
                "student_chat_template is for a student with its own tokenizer, and this student reads the "
                "teacher's; expected chat_template (one template for both)"
            )
        return teacher
    adopt_chat_template(tokenizer, config.data.student_chat_template, key="student_chat_template")
    if name not in CROSS_TOKENIZER_SOURCES:
        check_same_tokenizer(teacher.tokenizer, tokenizer, f"cross-tokenizer distillation needs teacher_source="
                             f"{' or '.join(CROSS_TOKENIZER_SOURCES)}: a store holds the teacher's tokens only")
    return CROSS_TOKENIZER_SOURCES[name](teacher, tokenizer)
