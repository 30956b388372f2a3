"""The house rules, checked on the source: one inference layer, no import cycles, short functions, CLIs alike."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "competition"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
MAX_LINES = 50  # a function longer than this is doing several things


def runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (type-only imports never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports_of(module: str) -> set[str]:
    """competition.* modules a module imports anywhere in its body (module level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("competition"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from competition import cli
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("competition."))
    return found & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_cycle_among_modules():
    graph = {m: imports_of(m) for m in MODULES}
    assert find_cycle(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.slow  # over 5 s of CPU (a fresh interpreter imports the inference side)
def test_inference_side_never_imports_training():
    """A fresh interpreter importing predict/explain/serve/report/inference never loads competition.train."""
    code = ("import sys, competition.predict, competition.explain, competition.serve, competition.report, "
            "competition.inference; print('competition.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert "train" in imports_of("experiment") and "inference" in imports_of("train")  # the walker sees imports


def test_no_function_over_fifty_lines():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


CLI_MODULES = [m for m in MODULES if "def main(" in (PACKAGE / f"{m}.py").read_text()]


def test_every_stage_with_a_command_line_is_listed():
    assert {"experiment", "folds", "audit", "ensemble", "submit", "leaderboard", "predict", "report", "explain",
            "serve"} <= set(CLI_MODULES)


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_cli_has_help_and_writes_nothing(module, tmp_path, capsys):
    import importlib

    from competition.project import Project

    main = importlib.import_module(f"competition.{module}").main
    with pytest.raises(SystemExit) as done:
        main(["--help"], project=Project(tmp_path))
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # --help touches no file (leaderboard --help used to rewrite the board)


# The layers, lowest first: a module may import its own layer and the layers below, never a higher one.
# registries sit below config because config's allowed values (data.augment, tta.views, competition.metric) are
# read from them; model sits below data because folds' twin embeddings load a backbone; experiment, the run
# command, sits above the results it writes (leaderboard, report); submit is the Kaggle upload.
# A name not in the package is ignored; a module missing here fails the test below.
LAYERS = {
    "base": "errors project atomic allocator paths",
    "registries": "metrics augment",
    "settings": "config config_reference options outputs cli",
    "model": "model distributed",
    "data": "tables folds grouping fold_checks audit shift embed decode image_cache dataset crop_cache pseudo test_encoding",
    "inference": "inference adapt",
    "training": "train run_folder assemble fold_workers tracking",
    "results": "leaderboard report compare blend ensemble submission predict explain serve export",
    "commands": "experiment",
    "kaggle": "kaggle_cli submit bundle kaggle_predict kaggle_inference kaggle_kernel kaggle_script kaggle_predict_script notebook",
}
LAYER_OF = {m: i for i, names in enumerate(LAYERS.values()) for m in names.split()}


def upward_imports(modules: list[str], imports=imports_of) -> dict[tuple[str, str], str]:
    """(importer, imported) -> 'a (layer) -> b (layer)' for every import of a higher layer among these modules."""
    names = list(LAYERS)
    return {(m, dep): f"{m} ({names[LAYER_OF[m]]}) -> {dep} ({names[LAYER_OF[dep]]})"
            for m in modules if m in LAYER_OF for dep in sorted(imports(m))
            if dep in LAYER_OF and LAYER_OF[dep] > LAYER_OF[m]}


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m not in LAYER_OF]
    assert unplaced == [], (f"competition/{unplaced[0]}.py is in no layer: place it in LAYERS in "
                            f"tests/test_structure.py ({', '.join(LAYERS)})")


def test_imports_go_to_the_same_or_a_lower_layer():
    found = upward_imports(MODULES)
    assert found == {}, f"imports of a higher layer: {list(found.values())} - move the code down, or the caller up"


def test_the_layer_check_sees_an_upward_import():
    """The check itself can fail: a data module importing training is reported, a downward import is not."""
    fake = {"tables": {"train", "errors"}, "folds": {"tables"}}.get
    assert upward_imports(["tables", "folds"], fake) == {("tables", "train"): "tables (data) -> train (training)"}


@pytest.mark.parametrize("module", ["compare", "kaggle_kernel"])
def test_results_and_kaggle_tools_do_not_import_the_orchestrator(module):
    assert "experiment" not in imports_of(module)


def test_python_m_commands_are_the_modules_with_a_main():
    """competition/__init__.py refuses `python -m competition.X` unless X is a command, derived from the source (a
    main guard calling main()); that must be every module with a `def main(`, and nothing else."""
    import competition

    assert competition.command_modules() == CLI_MODULES
