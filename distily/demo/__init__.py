"""The offline demo's materials: a bundled teacher and Python's own documentation as its text."""

from pathlib import Path

TEACHER_DIR = Path(__file__).parent / "teacher"
