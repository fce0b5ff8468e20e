"""The page's own ES modules linked into one classic script, for a file that must run without a server.

Each module becomes a function whose imports are read from the modules before it and whose exports it
returns (`__hs["lib/util.js"]`). Only the forms static/js uses are understood: `import {a, b as c} from`,
`import * as x from`, and `export` before a function, class or const/let; anything else raises, so a new
form fails the snapshot tests instead of a saved file.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import PurePosixPath

from app.snapshot.assets import STATIC

JS = STATIC / "js"
_IMPORT = re.compile(r'^import\s+(.+?)\s+from\s+"([^"]+)";[ \t]*$', re.M | re.S)
_EXPORT = re.compile(r"^export\s+((?:async\s+)?function\s*\*?\s*|class\s+|const\s+|let\s+)(\w+)", re.M)
_UNSUPPORTED = re.compile(r"^(export\s+(default|\{|\*)|import\s*\(|.*\bimport\.meta\b)", re.M)


class BundleError(ValueError):
    """A module uses a form the linker does not understand."""


def _resolve(importer: str, spec: str) -> str:
    if not spec.startswith("."):
        raise BundleError(f"{importer}: only relative imports can be linked, not {spec!r}")
    parts: list[str] = []
    for part in (PurePosixPath(importer).parent / spec).parts:
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _binding(clause: str, key: str) -> str:
    clause = " ".join(clause.split())
    star = re.fullmatch(r"\*\s+as\s+(\w+)", clause)
    if star:
        return f"const {star.group(1)} = __hs[{key!r}];"
    names = re.fullmatch(r"\{(.*)\}", clause)
    if not names:
        raise BundleError(f"unsupported import clause {clause!r}")
    pairs = [re.sub(r"^(\w+)\s+as\s+(\w+)$", r"\1: \2", n.strip()) for n in names.group(1).split(",") if n.strip()]
    return f"const {{ {', '.join(pairs)} }} = __hs[{key!r}];"


def _module(name: str, order: list[str], done: set[str]) -> None:
    """Depth first: every module `name` imports goes into `order` before it."""
    if name in done:
        return
    done.add(name)
    source = (JS / name).read_text(encoding="utf-8")
    for _, spec in _IMPORT.findall(source):
        _module(_resolve(name, spec), order, done)
    order.append(name)


def _wrapped(name: str) -> str:
    source = (JS / name).read_text(encoding="utf-8")
    bad = _UNSUPPORTED.search(source)
    if bad:
        raise BundleError(f"{name}: cannot link {bad.group(0).strip()!r}")
    imports = [_binding(clause, _resolve(name, spec)) for clause, spec in _IMPORT.findall(source)]
    body = _IMPORT.sub("", source)
    exports = _EXPORT.findall(body)
    body = _EXPORT.sub(lambda m: m.group(1) + m.group(2), body)
    returned = ", ".join(n for _, n in exports)
    return f"__hs[{name!r}] = (() => {{\n{chr(10).join(imports)}\n{body}\nreturn {{ {returned} }};\n}})();\n"


@cache
def bundle(entry: str = "snapshot/main.js", name: str = "HeadScopeSnapshot") -> str:
    """`entry` and every module it imports as one script that sets `window[name]` to the entry's exports (once)."""
    order: list[str] = []
    _module(entry, order, set())
    modules = "".join(_wrapped(m) for m in order)
    head = f"(() => {{\nif (window.{name}) return;\nconst __hs = {{}};\n"
    script = f"{head}{modules}window.{name} = __hs[{entry!r}];\n}})();\n"
    if re.search(r"</script|<!--", script, re.I):
        raise BundleError("the linked script holds '</script' or '<!--', which would end its <script> element")
    return script
