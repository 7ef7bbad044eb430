"""The README's minimal config is a run as shown: every key valid, and a bounded one."""

import re
from pathlib import Path

import yaml

from distily.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_minimal_config_parses_and_bounds_its_run(tmp_path):
    """The example had no max_steps and no slice: num_train_epochs (3) over all of English Wikipedia, whose 6.4
    million articles are tokenized before the first step."""
    example = re.search(r"A\s+minimal config:\n\n```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(example)
    keys = yaml.safe_load(example)
    config = parse_config(str(config_file))
    assert config.training.max_steps > 0
    assert config.data.dataset_split == keys["dataset_split"] and "[" in keys["dataset_split"]
    assert config.data.dataset_streaming  # only those rows are read, not every data file of the split first
    assert config.model.teacher_model_name_or_path == "gpt2" and config.training.output_dir == keys["output_dir"]
