"""Teacher sources: every kind the config accepts opens its class, and each gives the objective its logit loss."""

import dataclasses


from distily.recording.arguments import TEACHER_SOURCES as CONFIG_TEACHER_SOURCES
from distily.config import parse_config
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import LogitsComponent, build_objective
from distily.objectives.sparse import SparseLogitsComponent
from distily.teachers.live import LiveTeacher
from distily.teachers.recorded import RecordedTeacher
from distily.teachers.sources import TEACHER_SOURCES, open_teacher


def test_every_teacher_source_the_config_accepts_has_a_class():
    assert tuple(TEACHER_SOURCES) == CONFIG_TEACHER_SOURCES
    assert TEACHER_SOURCES == {"live": LiveTeacher, "recorded": RecordedTeacher}


def test_the_source_gives_the_objective_its_logit_loss():
    for source, component in ((LiveTeacher, LogitsComponent), (RecordedTeacher, SparseLogitsComponent)):
        objective = build_objective(ObjectiveArguments(), vocab_size=11, logits_component=source.logits_component)
        assert type(objective.components["logits"]) is component


def test_a_live_teacher_opens_the_teacher_and_resolves_cakld_beta_without_touching_the_config(teacher_dirs, run_values):
    config = parse_config(**run_values(teacher_dirs["llama"], logits_loss="cakld"))
    teacher = open_teacher(config)
    assert isinstance(teacher, LiveTeacher) and teacher.live_model is teacher.model
    assert [role for role, _ in teacher.probed_models()] == ["teacher"]
    given = dataclasses.replace(config.objective, logits_loss_kwargs={"beta": 0.25})
    assert teacher.resolve_objective(given, train=None) is given  # a given beta is kept as it is


