"""A sweep file: a base config, the runs (each a set of overrides), where they go and how they are ranked.

    base: gpt2-distily.yaml            # a config file (relative to this file) or a mapping of config keys
    output_dir: runs/my-sweep          # each run in output_dir/RUN_NAME
    set: {max_steps: 500}              # config keys for every run (optional)
    grid:                              # every combination of these values (optional)
      learning_rate: [1.0e-4, 3.0e-4]
      teacher_quantization: [none, 8bit, 4bit]
    runs:                              # explicit runs (optional); with a grid, each run at every grid point
      - {name: hidden-states, hidden_states_weight: 1.0}
    layer_search: {component: hidden_states}   # instead of grid and runs (layer_search.py)
    metric: student.after_bits_per_byte   # a key of the flattened metrics.json; ranks the runs, plotted; one
                                       # no run can measure is refused before any run starts
    metric_goal: min                   # or max; required with metric, and only with it

``distily sweep SWEEP.yaml --key value ...`` applies the flags to every run, over ``base`` and ``set``
(``--output_dir`` moves the whole sweep); a flag may not name a key the sweep varies. A value of
``null`` in a run means the key's default. A run whose config is refused (a value of the wrong type, ...) stops the
sweep before any run starts.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from distily.arguments import file_in_the_way
from distily.config import DistillConfig, check_keys, parse_config, read_config_file
from distily.errors import DistilyConfigError
from distily.experiments.layer_search import layer_search_runs
from distily.experiments.metric_keys import check_metric
from distily.experiments.runs import Run, expand_runs, overrides_hash
from distily.objectives.objective import check_objective

SWEEP_KEYS = ("base", "output_dir", "set", "grid", "runs", "layer_search", "metric", "metric_goal")
METRIC_GOALS = ("min", "max")
DEFAULT_METRIC = "student.after_bits_per_byte"  # ranks as perplexity does when the runs share a tokenizer (same
# targets, same bytes), and still fairly when a student has its own (#18)
RUN_NAME_KEY = "name"


@dataclass
class Sweep:
    source: str  # the sweep file
    base: dict  # the base config with `set` applied
    flags: list[str]  # CLI flags for every run; they win over base and set
    runs: list[Run]
    output_dir: Path
    grid_keys: list[str]  # the keys a grid varies (each gets a plot)
    metric: str
    metric_goal: str

    def run_dir(self, run: Run) -> Path:
        return self.output_dir / run.name

    def values(self, run: Run) -> dict:
        """Config keys of ``run``, without those the flags set (parse_config lets keyword values win)."""
        given = set(flag_keys(self.flags))
        values = {key: value for key, value in {**self.base, **run.overrides}.items() if key not in given}
        return {**values, "output_dir": str(self.run_dir(run))}

    def config(self, run: Run, **extra) -> DistillConfig:
        return parse_config(argv=self.flags, **{**self.values(run), **extra})


def flag_keys(flags: list[str]) -> list[str]:
    return [flag[2:].split("=", 1)[0] for flag in flags if flag.startswith("--")]


def _split_output_dir(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """The sweep's ``--output_dir`` (``--output_dir DIR`` or ``--output_dir=DIR``) and the other flags."""
    for index, flag in enumerate(argv):
        if flag.startswith("--output_dir="):
            return flag.split("=", 1)[1], argv[:index] + argv[index + 1 :]
        if flag == "--output_dir":
            if index + 1 == len(argv):
                raise DistilyConfigError("--output_dir has no value; expected a directory for the sweep")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
    return None, argv


def _config_keys(values: dict, where: str) -> dict:
    """``values`` whose keys are config keys; ``output_dir`` is the sweep's to choose."""
    try:
        check_keys(values)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"{where}: {err}")
    if "output_dir" in values:
        raise DistilyConfigError(
            f"{where}: output_dir is chosen by the sweep for each run; expected it at the top level of the sweep file"
        )
    return values


def _mapping(spec: dict, key: str, where: str) -> dict:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise DistilyConfigError(f"{where}: {key}={value!r} is not a mapping; expected config keys and values")
    return value


def _base(spec: dict, path: Path, where: str) -> dict:
    base = spec.get("base")
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise DistilyConfigError(
                f"{where}: base={base!r} does not exist (looked for {str(base_path)!r}); expected a config file "
                "relative to the sweep file"
            )
        base = read_config_file(str(base_path))
    if not isinstance(base, dict):
        raise DistilyConfigError(
            f"{where}: base={base!r} is not a config file or a mapping; expected e.g. base: recipes/gpt2-distily.yaml"
        )
    base = {key: value for key, value in base.items() if key != "output_dir"}
    return {**_config_keys(base, f"{where}: base"), **_config_keys(_mapping(spec, "set", where), f"{where}: set")}


def _grid(spec: dict, where: str) -> dict[str, list]:
    grid = _config_keys(_mapping(spec, "grid", where), f"{where}: grid")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise DistilyConfigError(f"{where}: grid.{key}={values!r} is not a list of values; expected e.g. [1, 2]")
        if not values:
            raise DistilyConfigError(f"{where}: grid.{key}=[] has no values; expected e.g. [1, 2]")
    return grid


def _explicit_runs(spec: dict, where: str) -> list[tuple[Optional[str], dict]]:
    runs = spec.get("runs")
    if runs is None:
        return []
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise DistilyConfigError(f"{where}: runs={runs!r} is not a list of mappings; expected e.g. [{{seed: 1}}]")
    explicit = []
    for index, run in enumerate(runs):
        overrides = dict(run)
        label = overrides.pop(RUN_NAME_KEY, None)
        if label is not None and not isinstance(label, str):
            raise DistilyConfigError(f"{where}: runs[{index}].name={label!r} is not a string; expected a short label")
        named = [given for given, _ in explicit]
        if label is not None and label in named:
            raise DistilyConfigError(f"{where}: runs[{index}].name={label!r} is also runs[{named.index(label)}]'s; "
                                     "expected a name of its own for each run")
        explicit.append((label, _config_keys(overrides, f"{where}: runs[{index}]")))
    return explicit


def _grid_and_runs(spec: dict, where: str) -> tuple[list[Run], list[str]]:
    grid, explicit = _grid(spec, where), _explicit_runs(spec, where)
    if not grid and not explicit:
        raise DistilyConfigError(f"{where} has no runs; expected grid, runs or layer_search")
    for index, (_, overrides) in enumerate(explicit):
        both = sorted(set(overrides) & set(grid))
        if both:
            raise DistilyConfigError(
                f"{where}: runs[{index}] sets {', '.join(both)}, which the grid varies; expected one"
            )
    return expand_runs(explicit or [(None, {})], grid), list(grid)


def _check_runs(runs: list[Run], flags: list[str], where: str) -> None:
    seen: dict[str, str] = {}
    for run in runs:
        digest = overrides_hash(run.overrides)
        if digest in seen:
            raise DistilyConfigError(
                f"{where}: runs {seen[digest]!r} and {run.name!r} have the same overrides; expected distinct runs"
            )
        seen[digest] = run.name
    varied = {key for run in runs for key in run.overrides}
    clash = sorted(varied & set(flag_keys(flags)))
    if clash:
        raise DistilyConfigError(
            f"--{clash[0]} is given on the command line but the sweep varies {clash[0]}; expected flags only for keys "
            "the sweep does not vary"
        )


def _metric(spec: dict, where: str) -> tuple[str, str]:
    """The metric that ranks the runs and its goal: given together, or neither (the default metric, lower better)."""
    metric, goal = spec.get("metric", DEFAULT_METRIC), spec.get("metric_goal", "min")
    if not isinstance(metric, str):
        raise DistilyConfigError(f"{where}: metric={metric!r} is not a string; expected e.g. {DEFAULT_METRIC}")
    if "metric" in spec and "metric_goal" not in spec:
        raise DistilyConfigError(f"{where}: metric={metric!r} has no metric_goal; expected metric_goal: min (lower is "
                                 "better) or max (higher is better)")
    if goal not in METRIC_GOALS:
        raise DistilyConfigError(f"{where}: metric_goal={goal!r} is not supported; expected one of min, max")
    if "metric_goal" in spec and "metric" not in spec:
        raise DistilyConfigError(f"{where}: metric_goal={goal!r} has no metric; expected the metric it ranks by "
                                 f"(metric: KEY) beside it, or neither: {DEFAULT_METRIC}, lower is better")
    return metric, goal


def load_sweep(path: str, argv: Optional[list[str]] = None) -> Sweep:
    """Read and check a sweep file; ``argv`` holds the flags given after it on the command line."""
    where = f"sweep file {path!r}"
    spec = read_config_file(path)
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise DistilyConfigError(f"{where}: unknown key {unknown[0]!r}; expected keys among {', '.join(SWEEP_KEYS)}")
    output_dir, flags = _split_output_dir(list(argv or []))
    check_keys(flag_keys(flags))
    output_dir = output_dir or spec.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise DistilyConfigError(f"{where}: output_dir={output_dir!r} is not a directory; expected e.g. runs/my-sweep")
    blocked = file_in_the_way(output_dir)
    if blocked is not None:  # once a FileExistsError or NotADirectoryError as the first run started
        raise DistilyConfigError(f"{where}: output_dir={output_dir!r} {blocked}; expected a directory")
    metric, goal = _metric(spec, where)
    sweep = Sweep(path, _base(spec, Path(path), where), flags, [], Path(output_dir), [], metric, goal)
    if "layer_search" in spec:
        if "grid" in spec or "runs" in spec:
            raise DistilyConfigError(f"{where} has layer_search with grid or runs; expected layer_search alone")
        base_config = parse_config(argv=flags, **sweep.values(Run("base", {})))
        sweep.runs = layer_search_runs(spec["layer_search"], base_config, where)
    else:
        sweep.runs, sweep.grid_keys = _grid_and_runs(spec, where)
    _check_runs(sweep.runs, flags, where)
    _fix_the_data_of_a_seed_sweep(sweep)
    check_metric(sweep.metric, [_run_config(sweep, run, where) for run in sweep.runs], where)
    return sweep


def _run_config(sweep: Sweep, run: Run, where: str) -> DistillConfig:
    """The config of ``run``; one the config refuses (a grid value of the wrong type, keys that do not go together)
    stops the sweep before any run starts, naming the run."""
    try:
        config = sweep.config(run)
        check_objective(config.objective)
        return config
    except DistilyConfigError as err:
        raise DistilyConfigError(f"{where}: run {run.name!r}: {err}") from err


def _fix_the_data_of_a_seed_sweep(sweep: Sweep) -> None:
    """Runs that differ in ``seed`` alone would split off other held-out documents (the split is drawn with
    ``data_seed``, else ``seed``) and rank by numbers measured on different text: unless the sweep sets
    ``data_seed``, every run of a sweep over ``seed`` takes the base's seed as its ``data_seed``, which also fixes
    the order the Trainer samples the data in. Sweep ``data_seed`` as well to vary the data."""
    varied = {key for run in sweep.runs for key in run.overrides}
    if "seed" not in varied or "data_seed" in varied or "data_seed" in {*sweep.base, *flag_keys(sweep.flags)}:
        return
    sweep.base["data_seed"] = parse_config(argv=sweep.flags, **sweep.values(Run("base", {}))).training.seed
