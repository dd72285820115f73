"""The package layout's rules, checked on the source (docs/architecture.md):

- no import cycles among the modules of rsfm_core, rsfm_kernels and rsfm_train, counting
  every import statement, also those inside functions (a lazy import is still a
  dependency: it only moves the failure to run time);
- stages only call stages below them: inside rsfm_core the layers below, rsfm_kernels
  depends on neither rsfm_core nor rsfm_train, and rsfm_core never on rsfm_train.

Edges are between named modules (``from .x import y`` is an edge to ``x``, or to ``x.y``
when that is a module); a package's ``__init__`` is the package's own node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {
    "rsfm_core": REPO / "rsfm_core",
    "rsfm_kernels": REPO / "kernels",
    "rsfm_train": REPO / "train",
}

# rsfm_core's stages, lowest first: a module may import its own stage and those before it.
CORE_LAYERS = [
    {
        "rsfm_core",
        "rsfm_core.lazy",
        "rsfm_core.sensors",
        "rsfm_core.sample",
        "rsfm_core.files",
        "rsfm_core.cliutil",
    },
    {"rsfm_core.io"},
    {"rsfm_core.synthetic", "rsfm_core.model"},
    {"rsfm_core.inference"},
    {"rsfm_core.envinfo", "rsfm_core.demo", "rsfm_core.cli"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for name, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = f
    return out


def _resolve(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (every import statement)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = _resolve(mod, is_pkg, node.level, node.module)
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from pkg import sub` depends on the module sub, `from pkg import attr` on pkg
                names = [n if n in mods else base for n in subs]
            for n in names:
                while n and n not in mods:  # rsfm_core.io.read.x -> rsfm_core.io.read
                    n = n.rpartition(".")[0]
                if n and n != mod:
                    graph[mod].add(n)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int | None:
    for i, layer in enumerate(CORE_LAYERS):
        if any(mod == m or mod.startswith(m + ".") for m in layer if m != "rsfm_core"):
            return i
    return 0 if mod == "rsfm_core" else None


def test_the_graph_sees_imports():
    g = import_graph()
    assert "rsfm_core.io" in g["rsfm_core.inference.tiles"]  # through the package's names
    assert "rsfm_core.io.tiling" in g["rsfm_core.inference.tiles"]
    assert g["rsfm_core.inference"] == {"rsfm_core.lazy"}  # `rsfm --help` loads only its cli
    assert "rsfm_core.model.checkpoint" in g["rsfm_core.model.encoder"]
    assert "rsfm_kernels.dispatch" in g["rsfm_kernels.attn"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (each line is one strongly connected set):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_every_core_module_has_a_layer():
    missing = sorted(m for m in import_graph() if m.startswith("rsfm_core") and _layer(m) is None)
    assert not missing, f"add these modules to CORE_LAYERS: {missing}"


@pytest.mark.parametrize("root", ["rsfm_core", "rsfm_kernels"])
def test_stages_only_import_below(root):
    bad = []
    for mod, deps in import_graph().items():
        if not mod.startswith(root):
            continue
        for d in deps:
            if root == "rsfm_kernels" and not d.startswith("rsfm_kernels"):
                bad.append(f"{mod} -> {d}")
            elif root == "rsfm_core" and d.startswith("rsfm_train"):
                bad.append(f"{mod} -> {d}")
            elif root == "rsfm_core" and d.startswith("rsfm_core") and _layer(d) > _layer(mod):
                bad.append(f"{mod} (layer {_layer(mod)}) -> {d} (layer {_layer(d)})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))
