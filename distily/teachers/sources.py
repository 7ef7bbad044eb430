"""The teacher sources a run can name (``teacher_source``), and the one a run opens."""

from distily.config import DistillConfig
from distily.teachers.live import LiveTeacher
from distily.teachers.recorded import RecordedTeacher
from distily.teachers.source import TeacherSource

TEACHER_SOURCES: dict[str, type[TeacherSource]] = {"live": LiveTeacher, "recorded": RecordedTeacher}


def open_teacher(config: DistillConfig) -> TeacherSource:
    """The run's teacher source, as ``teacher_source`` names it."""
    return TEACHER_SOURCES[config.record.teacher_source](config)
