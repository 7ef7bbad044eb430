"""The Hub replaced by a recorder, for the tests of what a run pushes (they are offline): ``transformers``' calls
to ``hf_api()`` land here, and each upload copies the files ``huggingface_hub`` would send into a local repository."""

import shutil
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects


class RecordingHub:
    """``uploads``: each upload's repository, commit message, the paths it sent (in the repository) and a folder
    holding what it sent; ``repo``: the repository's files as the uploads left them. Everything goes under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = root / "repo"
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, commit_message=None, ignore_patterns=None,
                      run_as_future=False, **kwargs):
        folder = Path(folder_path)
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
        sent = sorted(filter_repo_objects(files, ignore_patterns=[*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]))
        prefix = f"{path_in_repo}/" if path_in_repo else ""
        upload = self.root / f"upload-{len(self.uploads)}"
        for name in sent:
            for target in (self.repo / f"{prefix}{name}", upload / f"{prefix}{name}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, target)
        self.uploads.append({"repo_id": repo_id, "message": commit_message, "paths": [prefix + name for name in sent],
                             "folder": upload})
        if run_as_future:
            done = Future()
            done.set_result(None)
            return done
