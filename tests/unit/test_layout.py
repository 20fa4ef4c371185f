"""The shape of the source tree: no import circle among the gateway's modules, no file
too long to read.

Imports are read from the source (``ast``), not by importing anything.  Only the
imports a module runs when it is loaded count (module level, including ``if
TYPE_CHECKING:`` and ``try:`` blocks, which name a dependency all the same); an import
inside a function is a deliberate lazy one and is left out.  ``lazy_imports()`` lists
those, for a reviewer who wants to see them.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tornado_proxy", "providers")
MAX_LINES = 800

def sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _runs_at_load(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a module body that run when it is loaded (not function bodies)."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            yield from _runs_at_load(getattr(node, name, None) or [])
        for handler in getattr(node, "handlers", None) or []:
            yield from _runs_at_load(handler.body)


def _targets(node: ast.stmt, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """The checked modules an import statement loads."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        # ``from pkg import sub`` loads the submodule; any other name comes from pkg itself
        subs = {f"{mod}.{a.name}" for a in node.names} & known.keys()
        names = subs | ({mod} if len(subs) < len(node.names) else set())
    return {n for n in names if n in known}


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """module -> the checked modules it imports at load time (``lazy``: inside functions only)."""
    known = sources()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        at_load = list(_runs_at_load(tree.body))
        if lazy:
            loaded = {id(n) for n in at_load}
            nodes = [n for n in ast.walk(tree) if isinstance(n, ast.stmt) and id(n) not in loaded]
        else:
            nodes = at_load
        is_package = path.name == "__init__.py"
        graph[module] = set().union(*(_targets(n, module, is_package, known) for n in nodes)) - {module}
    return graph


def lazy_imports() -> dict[str, set[str]]:
    """module -> the checked modules it imports inside a function (allowed; listed for review)."""
    return {m: t for m, t in import_graph(lazy=True).items() if t}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_real_imports() -> None:
    graph = import_graph()
    assert "tornado_proxy.gateway" in graph["tornado_proxy.app"]
    assert "providers.base" in graph["providers.coze.errors"]  # a relative import
    assert "tornado_proxy.accounts.scheduler" in graph["tornado_proxy.gateway"]


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    graph = import_graph()
    found = circles(graph)
    detail = ["  " + " <-> ".join(group) + ": " + "; ".join(
        f"{m} -> {sorted(graph[m] & set(group))}" for m in group) for group in found]
    assert not found, "import circles among tornado_proxy.* and providers.*:\n" + "\n".join(detail)


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_source_file_over_800_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): _lines(p) for p in sources().values()}
    over = {f: n for f, n in long.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines: {over}"


def test_upstream_adapters_never_import_the_client_apis() -> None:
    # providers/ holds upstream adapters only; a client API may use an upstream's tables,
    # never the other way round (lazy imports inside functions count too).
    eager, lazy = import_graph(), import_graph(lazy=True)
    bad = {m: sorted(t for t in eager[m] | lazy[m] if t.startswith("tornado_proxy.apis"))
           for m in eager if m.startswith("providers")}
    assert not {m: t for m, t in bad.items() if t}


def test_client_formats_live_in_the_client_api_layer() -> None:
    # Every ClientFormat / StreamEncoder subclass is defined under tornado_proxy/apis/.
    found = {}
    for module, path in sources().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & {"ClientFormat", "StreamEncoder"}:
                    found[node.name] = module
    assert {"OpenAIChatFormat", "AnthropicMessagesFormat", "ResponsesFormat", "GeminiNativeFormat"} <= set(found)
    outside = {c: m for c, m in found.items() if not m.startswith("tornado_proxy.apis.")}
    assert not outside, outside


# A vendor's rate-limit header names (its families: Anthropic's, OpenAI's, Codex's).
_VENDOR_HEADER = re.compile(r"anthropic-ratelimit|x-ratelimit|x-codex-|ratelimit-unified", re.IGNORECASE)


def _string_literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant but docstrings (f-string parts included)."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_the_accounts_core_names_no_vendor_rate_limit_header() -> None:
    # Which headers carry an upstream's quota is the provider's to declare
    # (Provider.rate_limit_headers, providers/ratelimits.py); the scheduler reads the spec.
    found = [f"{path.relative_to(ROOT).as_posix()}:{line}: {text!r}"
             for path in sorted((ROOT / "tornado_proxy" / "accounts").glob("*.py"))
             for line, text in _string_literals(ast.parse(path.read_text(encoding="utf-8")))
             if _VENDOR_HEADER.search(text)]
    assert not found, "vendor rate-limit header names in tornado_proxy/accounts:\n" + "\n".join(found)


def test_the_vendor_header_check_sees_literals_but_not_docstrings() -> None:
    tree = ast.parse('"""x-ratelimit-* docs"""\nA = "anthropic-ratelimit-unified-"\nB = f"x-codex-{w}-used"\n')
    assert [text for _, text in _string_literals(tree) if _VENDOR_HEADER.search(text)] == [
        "anthropic-ratelimit-unified-", "x-codex-"]
