"""The layout docs/architecture.md describes, held to: its layers (an import never goes up one), no
import cycle among the project's modules, classes and functions a reader can hold in mind, a thin
pipeline, and third-party libraries owned by one module each."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("automl", "escalation")

#: docs/architecture.md's layers, top to bottom: a module imports its own layer or one below it. A
#: name stands for the module and everything in it (a package). Every module of the project is in one.
LAYERS = (
    # the package itself is the public face: ``from automl import AutoML``
    ("commands", ("automl.cli", "automl.__main__", "automl.api", "automl")),
    ("jobs", ("automl.pipeline", "automl.worker", "automl.fit_job")),
    ("stages", ("automl.stages",)),
    (
        "what a run gives",
        (
            "automl.predict",
            "automl.export",
            "automl.serve",
            "automl.mlflow_model",
            "automl.evaluate",
            "automl.report",
            "automl.explain",
        ),
    ),
    ("the search", ("automl.search", "automl.trainers", "automl.trials", "escalation.train", "escalation.eject")),
    ("the study", ("automl.tuning", "automl.shared_study", "automl.space", "automl.callbacks", "automl.ensemble")),
    ("services", ("automl.tracking", "automl.budget", "automl.run_data", "escalation.callbacks")),
    ("models", ("automl.flash", "escalation.template")),
    ("data", ("automl.data",)),
    (
        "foundations",
        (
            "automl.backbones",
            "automl.run_folder",
            "automl.trial_record",
            "automl.config",
            "automl.target",
            "automl.metrics",
            "automl.errors",
            "automl.storage",
            "automl.progress",
            "automl.checkpoints",
            "automl.version",
            "automl.presets",
            "automl.shaping",
            "automl.calibration",
            "escalation",
        ),
    ),
)
#: names in LAYERS that stand for the module alone, not the package under it (``automl``'s __init__)
MODULE_ONLY = {"automl"}
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 60
#: a function longer than MAX_FUNCTION_LINES says why in a comment that starts so
LONG_FUNCTION_NOTE = "# long:"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules ``file`` imports, at the top or inside a function."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_project_imports_itself_round_a_loop():
    known = modules()
    graph = {name: imports(name, file, known) for name, file in known.items()}
    assert "automl.pipeline" in graph and graph["automl.pipeline"]  # the walk sees imports
    assert cycles(graph) == []


def layer_of(module: str) -> int:
    """The index in LAYERS of the most specific name that covers ``module``; -1 when none does."""
    best, depth = -1, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            covers = module == name or (module.startswith(f"{name}.") and name not in MODULE_ONLY)
            if covers and len(name) > depth:
                best, depth = index, len(name)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {other} ({LAYERS[layer_of(other)][0]}), a layer above it"
        for module, others in sorted(graph.items())
        for other in sorted(others)
        if layer_of(other) < layer_of(module)
    ]


def test_the_layer_check_names_an_import_that_goes_up():
    assert upward_imports({"automl.stages": {"automl.pipeline", "automl.search"}}) == [
        "automl.stages (stages) imports automl.pipeline (jobs), a layer above it"
    ]
    assert layer_of("automl.flash.heads") == layer_of("automl.flash") != layer_of("automl")
    assert layer_of("automl.not_in_the_map") == -1  # the package's name covers its __init__ alone


def test_every_module_is_in_a_layer_and_imports_go_down_only():
    known = modules()
    assert [name for name in known if layer_of(name) < 0] == []
    graph = {name: imports(name, file, known) for name, file in known.items()}
    assert upward_imports(graph) == []


def long_definitions(source: str, where: str) -> list[str]:
    found = []
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1
        if isinstance(node, ast.ClassDef) and length > MAX_CLASS_LINES:
            found.append(f"{where}: class {node.name} is {length} lines (at most {MAX_CLASS_LINES})")
        elif not isinstance(node, ast.ClassDef) and length > MAX_FUNCTION_LINES:
            body = lines[node.lineno - 1 : node.end_lineno]
            if not any(line.strip().startswith(LONG_FUNCTION_NOTE) for line in body):
                found.append(
                    f"{where}: {node.name}() is {length} lines (at most {MAX_FUNCTION_LINES}, "
                    f"or a '{LONG_FUNCTION_NOTE}' comment saying why)"
                )
    return found


def test_the_size_check_finds_a_long_class_and_an_unexplained_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES))
    function = "\n".join(f"    y{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_definitions(f"class Big:\n{body}\n", "m.py") == [
        f"m.py: class Big is {MAX_CLASS_LINES + 1} lines (at most 250)"
    ]
    assert len(long_definitions(f"def f():\n{function}\n", "m.py")) == 1
    assert long_definitions(f"def f():\n    {LONG_FUNCTION_NOTE} a table of routes\n{function}\n", "m.py") == []


def test_classes_and_functions_stay_short_enough_to_read():
    found = []
    for file in modules().values():
        found += long_definitions(file.read_text(), str(file.relative_to(ROOT)))
    assert found == []


def test_the_pipeline_is_a_thin_sequence_of_stages():
    source = (ROOT / "automl" / "pipeline.py").read_text()
    assert len(source.splitlines()) < 400
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno < 250, node.name


@pytest.mark.parametrize(
    ("library", "owners"),
    [
        ("optuna", {"automl.tuning", "automl.shared_study", "automl.storage"}),
        ("mlflow", {"automl.tracking", "automl.mlflow_model"}),
    ],
)
def test_a_third_party_library_is_imported_by_its_owners_only(library, owners):
    importers = set()
    for name, file in modules().items():
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == library or n.startswith(f"{library}.") for n in names):
                importers.add(name)
    assert importers <= owners, importers - owners


def literal_attr_keys(source: str, where: str) -> list[str]:
    """Places that name an Optuna user attribute by a string literal (``user_attrs.get("role")``,
    ``user_attrs["role"]``, ``set_user_attr("role", ...)``) instead of a ``trial_record`` constant."""
    found = []
    for node in ast.walk(ast.parse(source)):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            target = node.func
            if target.attr == "set_user_attr" or (
                target.attr == "get" and isinstance(target.value, ast.Attribute) and target.value.attr == "user_attrs"
            ):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            key = node.slice if node.value.attr == "user_attrs" else None
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append(f"{where}:{node.lineno}: user attribute {key.value!r} named by a string")
    return found


def test_the_key_check_finds_a_user_attribute_named_by_a_string():
    source = "\n".join(
        [
            'a = t.user_attrs.get("role")',
            'b = t.user_attrs["seconds"]',
            't.set_user_attr("worker", 1)',
            "c = t.user_attrs[ROLE]",
        ]
    )
    assert [line.split(": ")[1] for line in literal_attr_keys(source, "m.py")] == [
        "user attribute 'role' named by a string",
        "user attribute 'seconds' named by a string",
        "user attribute 'worker' named by a string",
    ]


def test_optuna_user_attributes_are_named_by_trial_record_constants_only():
    """Workers sharing a study agree through these keys: one misspelt string would split them."""
    found = []
    for name, file in modules().items():
        if name != "automl.trial_record":
            found += literal_attr_keys(file.read_text(), str(file.relative_to(ROOT)))
    assert found == []
