"""The shape of the package: no import cycles, layers that stay apart, a modality registry that stays consistent."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "mmtune"


def module_imports() -> dict[str, set[str]]:
    """Every module of mmtune -> the mmtune modules it imports, read from its import statements (also in functions).

    ``from package import name`` counts as importing ``package`` (its ``__init__``) and, when ``name`` is a
    module, that module too: a submodule that imports its own package's ``__init__`` is a cycle.
    """
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {m for t in targets if (m := known(t)) and m != name and m.startswith("mmtune")}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_inside_mmtune():
    graph = module_imports()
    assert len(graph) > 60
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_generic_loaders_import_no_checkpoint_format():
    """Formats of other toolkits live in mmtune.interop; only the one place that opens models asks it."""
    graph = module_imports()
    generic = [m for m in graph if m == "mmtune.models.loading" or m.startswith(("mmtune.models.multimodal",
                                                                                   "mmtune.data", "mmtune.modalities",
                                                                                   "mmtune.config"))]
    for module in generic:
        assert not any(dep.startswith("mmtune.interop") for dep in graph[module]), module
    importers = sorted(m for m, deps in graph.items() if not m.startswith("mmtune.interop")
                       and any(d.startswith("mmtune.interop") for d in deps))
    assert importers == ["mmtune.cli", "mmtune.models.open", "mmtune.models.run_outputs"]


def test_the_training_loop_knows_no_task():
    """The loop gets a task's model, data and final/ writer through the TaskRun contract only."""
    deps = module_imports()["mmtune.training.loop"]
    assert "mmtune.training.tasks" in deps  # the registry, TASKS: the test reads the real graph
    forbidden = ("mmtune.models", "mmtune.modalities", "mmtune.interop", "mmtune.generation", "mmtune.data.",
                 "mmtune.training.objective", "mmtune.training.methods", "mmtune.training.peft_methods",
                 "mmtune.training.tasks.")
    allowed = {"mmtune.data.loader", "mmtune.training.tasks.base"}  # the DataLoader stream; the TaskRun contract
    assert not [d for d in deps if d.startswith(forbidden) and d not in allowed], deps


def test_modalities_have_distinct_tags_and_placeholder_ids():
    from mmtune.config.schema import MediaConfig, MethodMedia
    from mmtune.modalities import MODALITIES

    tags = [m.tag for m in MODALITIES.values()]
    ids = [m.placeholder_id for m in MODALITIES.values()]
    assert len(set(tags)) == len(tags) and len(set(ids)) == len(ids)
    assert all(i < 0 for i in ids)  # never a vocabulary entry
    assert all(name == m.name for name, m in MODALITIES.items())
    # every registered modality is a key of the recipe's media sections
    assert set(MediaConfig.model_fields) == set(MODALITIES) == set(MethodMedia.model_fields)
