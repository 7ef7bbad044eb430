"""What an export checked and what it could not check: written into the export, printed by `distily export`.

A packed export carries it as REPORT_FILE inside its directory, a GGUF file as the metadata string
GGUF_REPORT_KEY; both are written only once every listed check has passed (the export is renamed into
place after them), so a report on disk never claims a check that failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

REPORT_FILE = "distily_export.json"
GGUF_REPORT_KEY = "distily.export_report"
LLAMA_CPP_NOT_INSTALLED = (
    "not verified with llama.cpp: llama-cpp-python is not installed; `pip install 'distily[llamacpp]'`"
)


@dataclass
class ExportReport:
    format: str  # "packed" or "gguf"
    verified: list[str] = field(default_factory=list)  # the checks that ran and passed
    not_verified: list[str] = field(default_factory=list)  # each check that did not run: "not verified ...: why; how"

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "verified": self.verified, "not_verified": self.not_verified},
                          indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExportReport:
        values = json.loads(text)
        return cls(values["format"], list(values["verified"]), list(values["not_verified"]))

    def line(self, path: str | Path) -> str:
        """One line for the end of `distily export`: "wrote and verified" only when every check ran."""
        if not self.not_verified:
            return f"wrote and verified {path} ({'; '.join(self.verified)})"
        return f"wrote {path}; verified: {'; '.join(self.verified) or 'nothing'}; {'; '.join(self.not_verified)}"


def read_export_report(path: str | Path) -> ExportReport:
    """The report an export wrote: REPORT_FILE inside a packed directory, GGUF_REPORT_KEY in a GGUF file."""
    path = Path(path)
    if path.is_dir():
        return ExportReport.from_json((path / REPORT_FILE).read_text(encoding="utf-8"))
    import gguf  # a GGUF file was written, so the optional gguf package is installed

    return ExportReport.from_json(gguf.GGUFReader(str(path)).get_field(GGUF_REPORT_KEY).contents())
