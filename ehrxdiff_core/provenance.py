"""Which library source files a stage's output depends on.

Snakemake's `code` rerun trigger sees only a rule's script, not the library it imports. Each rule's
script imports its stage from one library module (`workflow_scripts/train_vae.py` from
`ehrxdiff_core.models.train_vae`, ...); `script_sources` follows those imports, transitively, and the
rule lists the files found as inputs. Editing a stage's module, or one it imports, reruns that stage
and what is downstream of it, and nothing else; nobody keeps a list by hand.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "ehrxdiff_core"
ROOT = Path(__file__).resolve().parent
# Modules whose edits never change an artifact by themselves: config values reach rules as params,
# and runlog only routes log output. What they import is not followed either: the config imports the
# event-table registry only to check table names, and the stages that use the registry import it themselves.
IGNORED = {"ehrxdiff_core.config", "ehrxdiff_core.runlog", "ehrxdiff_core"}


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    if not parts:  # the package itself (`from ehrxdiff_core import set_offline_flags`)
        return ROOT / "__init__.py"
    rel = Path(*parts)
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_statements(source: str) -> ast.Module:
    """Only the import statements that can name this package (`from ehrxdiff_core…`, `import
    ehrxdiff_core…`, relative `from .…`, at any indentation, parenthesised over several lines),
    parsed one by one: ~10× faster than parsing whole modules, which every Snakemake start does
    for every rule. A docstring line that merely looks like one is parsed too, harmlessly."""
    lines = source.splitlines()
    body: list[ast.stmt] = []
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        i += 1
        if not (text.startswith(("from ", "import ")) and (PACKAGE in text or text.startswith("from ."))):
            continue
        stmt = text
        while stmt.count("(") > stmt.count(")") and i < len(lines):
            stmt += " " + lines[i].strip()
            i += 1
        try:
            body.extend(ast.parse(stmt.split("#", 1)[0]).body)
        except SyntaxError:  # prose in a docstring
            continue
    return ast.Module(body=body, type_ignores=[])


@cache
def _direct_imports(path: Path) -> frozenset[str]:
    tree = _import_statements(path.read_text())
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith(PACKAGE):
                continue
            found.add(mod)
            for alias in node.names:  # `from ehrxdiff_core.data import images` imports a module
                found.add(f"{mod}.{alias.name}")
    return frozenset(m for m in found if _module_file(m) is not None)


def script_sources(script: str | Path) -> list[str]:
    """Library source files (absolute paths) a workflow script depends on: the `ehrxdiff_core` modules
    it imports and theirs, transitively (config and runlog excepted: see `IGNORED`)."""
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"no workflow script {script}")
    found = set()
    for node in ast.walk(_import_statements(script.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(PACKAGE):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = sorted(m for m in found if m not in IGNORED and _module_file(m) is not None)
    if not modules:
        raise ValueError(f"{script}: imports no ehrxdiff_core module (a stage script calls one library module)")
    return _closure([_module_file(m) for m in modules])


def _closure(todo: list[Path]) -> list[str]:
    seen: set[str] = set()
    files = set()
    while todo:
        path = todo.pop().resolve()
        name = _module_name(path)
        if name in seen:
            continue
        seen.add(name)
        if name in IGNORED:
            continue
        files.add(str(path))
        todo.extend(_module_file(m) for m in _direct_imports(path) if m not in seen)
    return sorted(files)
