"""The package's floors: every import of a distily module goes down (or across one floor), never up, and no
modules import each other in a cycle. Read from the source with ``ast``, every import counted (also those inside
functions)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distily"

# Bottom to top. A module is on the floor of the first entry naming it or a package above it; each package's
# ``arguments`` module (its configuration dataclasses) is on the configuration floor, with ``distily.config``
# that composes them per command, so that every floor may read them.
FLOORS = (
    ("foundation", ("distily", "distily.errors", "distily.logs", "distily.paths", "distily.outputs",
                    "distily.preemption")),
    ("configuration", ("distily.arguments", "distily.*.arguments", "distily.config")),
    ("what a run measured (metrics.json)", ("distily.metrics",)),
    ("models and data", ("distily.models", "distily.data", "distily.demo")),
    ("objectives", ("distily.objectives",)),
    ("what runs beside an objective: recording, evaluation, export, generation",
     ("distily.recording", "distily.evaluation", "distily.export", "distily.generation")),
    ("teacher sources", ("distily.teachers",)),
    ("reporting", ("distily.reporting",)),
    ("training", ("distily.training",)),
    ("experiments", ("distily.experiments",)),
    ("commands", ("distily.commands",)),
    ("cli", ("distily.cli",)),
)
LIBRARY_TOP = "experiments"  # the floors up to here are the library: they import no command and not the cli


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    if module.endswith(".arguments"):
        return 1
    for level, (_, names) in enumerate(FLOORS):
        if any(module == name or module.startswith(name + ".") for name in names if name != "distily"):
            return level
    if module == "distily":
        return 0
    raise AssertionError(f"{module} is on no floor; add its package to FLOORS")


def imports(module: str) -> set[str]:
    """The distily modules ``module`` imports (a name imported from a package counts as its module, if it is one)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "distily")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "distily":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return found - {module}


def upward_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if floor(target) > floor(module))


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of imports as [a, b, ..., a], or [] when there is none."""
    done, path = set(), []

    def visit(module) -> list[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        path.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return []


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_is_read():
    assert "distily.teachers.sources" in GRAPH["distily.training.distill"]
    assert "distily.training.distill" in GRAPH["distily.commands.distill"]
    assert "distily.experiments.sweep_file" in GRAPH["distily.commands.sweep"]  # `from package import module`
    assert floor("distily.models.arguments") == 1 and floor("distily.metrics") == 2
    assert floor("distily.models.student") == 3


def test_the_checks_catch_an_upward_edge_and_a_cycle():
    made_up = {"distily.objectives.losses": {"distily.training.trainer"}, "distily.training.trainer": set()}
    assert upward_edges(made_up) == [("distily.objectives.losses", "distily.training.trainer")]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_upward():
    shown = [f"{module} ({FLOORS[floor(module)][0]}) -> {target}" for module, target in upward_edges(GRAPH)]
    assert not shown, shown


def test_no_library_module_imports_a_command_or_the_cli():
    top = next(level for level, (name, _) in enumerate(FLOORS) if name == LIBRARY_TOP)
    offending = sorted(
        (module, target) for module, targets in GRAPH.items() if floor(module) <= top for target in targets
        if target == "distily.cli" or target.startswith("distily.commands")
    )
    assert not offending


def test_no_import_cycles():
    assert find_cycle(GRAPH) == []
