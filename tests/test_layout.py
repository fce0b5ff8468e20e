"""The layering the folders promise: no import hides in a function, hooks and resume points have one home each,
and lower packages never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
# inspect/ from the bottom up: a package may import its own modules and any package before it, never one after
LAYERS = ["app.errors", "app.inspect.model", "app.inspect.engine", "app.inspect.observe", "app.inspect.intervene"]


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in APP.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_no_import_of_the_app_inside_a_function() -> None:
    hidden = []
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                hidden += [f"{name}.{fn.name}: {m}" for m in _imports(fn) if m.startswith("app")]
    assert hidden == []


def test_lower_layers_never_import_higher_ones() -> None:
    def rank(module: str) -> int | None:
        return next((i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")), None)

    upward = []
    for name, tree in _modules().items():
        own = rank(name)
        if own is None:
            continue
        for module in _imports(tree):
            other = rank(module)
            if other is not None and other > own:
                upward.append(f"{name} imports {module}")
    assert upward == []


def test_inspection_code_never_imports_the_web_layer() -> None:
    web = [
        f"{name} imports {module}"
        for name, tree in _modules().items()
        if name.startswith("app.inspect")
        for module in _imports(tree)
        if module.split(".")[0] in {"fastapi", "starlette"} or module.startswith(("app.api", "app.service", "app.main"))
    ]
    assert web == []


def test_hooks_are_registered_in_one_module_and_blocks_skipped_in_one() -> None:
    registering, resuming = set(), set()
    for path in APP.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        if ".register_forward" in text or ".register_full_backward" in text:
            registering.add(rel)
        if "starting_at(" in text and "def starting_at(" not in text:
            resuming.add(rel)
    assert registering == {"app/inspect/engine/hooks.py"}
    assert resuming == {"app/inspect/engine/segments.py"}


def test_a_router_never_imports_a_router_and_dependencies_come_from_deps() -> None:
    """A router (a module that defines `router`: app.api's and the pages') imports schemas, encoders, errors and
    deps, never another router; and a request's service, stores and jobs reach routes through deps.py's providers
    alone."""
    modules = _modules()
    routers = {
        name
        for name, tree in modules.items()
        for node in tree.body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "router" for t in node.targets)
    }
    assert {"app.api.jobs", "app.api.datasets", "app.api.lecture", "app.web", "app.docs"} <= routers  # it sees them
    assert not routers & {"app.api.deps", "app.api.schemas", "app.api.encode", "app.api.errors"}
    crossing = [
        f"{name} imports {module}"
        for name in sorted(routers)
        for module in _imports(modules[name])
        if module in routers - {name}
    ]
    assert crossing == []
    providers = sorted(
        path.relative_to(ROOT).as_posix()
        for path in APP.rglob("*.py")
        if "Depends(" in (text := path.read_text(encoding="utf-8")) or "request.app.state" in text
    )
    assert providers == ["app/api/deps.py"]
