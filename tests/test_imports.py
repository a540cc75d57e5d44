"""Imports go one way, and module names are not shadowed.

* The module-level import graph inside ``fmtarray`` (read with ``ast``, so nothing
  is executed) has no cycles. Imports inside functions are the sanctioned way to
  reach upwards lazily and are not edges; neither are ``if TYPE_CHECKING:`` blocks.
* The graph respects the layers of DESIGN.md: ``_format``/``_backend`` →
  ``_kernels`` → ``array`` → ``ops`` → ``autodiff``/``layers`` → ``network`` →
  ``training`` → ``matlab``/the package; a module never imports a higher layer at
  import time (``array`` imports no ``ops`` module, for instance).
* Every module imports as a module, and ``package.<submodule name>`` is that
  module, not a function re-exported under the same name (``fmtarray.train`` is
  the function, so the training package is ``fmtarray.training``; the conv op's
  module is ``fmtarray.ops.convolution`` and ``fmtarray.ops.conv`` the function).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fmtarray"


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """``{dotted name: (path, is_package)}`` for every module under ``fmtarray/``."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _import_time_statements(body):
    """Import statements executed when the module is imported (not inside functions)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _import_time_statements(node.orelse)
        else:  # class bodies, if/try/with blocks run at import time
            for field in ("body", "orelse", "finalbody"):
                yield from _import_time_statements(getattr(node, field, None) or [])
            for handler in getattr(node, "handlers", None) or []:
                yield from _import_time_statements(handler.body)


def _targets(name: str, is_pkg: bool, node) -> set[str]:
    """The fmtarray modules one import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:
        pkg = name.split(".") if is_pkg else name.split(".")[:-1]
        base = ".".join(pkg[: len(pkg) - (node.level - 1)] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:  # `from . import _backend`: the submodule itself
            out.add(sub)
        elif base in MODULES:  # `from .array import FormattedArray`
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in _import_time_statements(tree.body):
            deps |= _targets(name, is_pkg, node)
        graph[name] = deps - {name}
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _path(graph, src, dst):
    """One import chain from ``src`` to ``dst`` (for the failure message)."""
    prev, todo = {src: None}, [src]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w not in prev:
                prev[w] = v
                todo.append(w)
    chain, v = [], dst
    while v is not None:
        chain.append(v)
        v = prev.get(v)
    return " -> ".join(reversed(chain))


def test_the_graph_sees_real_imports():
    g = import_graph()
    assert "fmtarray.ops.elementwise" in MODULES and "fmtarray.array" in MODULES
    assert "fmtarray.array" in g["fmtarray.ops.elementwise"]
    assert "fmtarray._backend" in g["fmtarray.ops.elementwise"]  # `from .. import _backend`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    g = import_graph()
    cycles = _cycles(g)
    msgs = [" ; ".join(_path(g, c[0], d) for d in g[c[0]] & set(c)) for c in cycles]
    assert not cycles, "module-level import cycles inside fmtarray: " + " | ".join(
        f"{c}: {m}" for c, m in zip(cycles, msgs)
    )


# layers of DESIGN.md, lowest first; a module may import its own layer or lower ones
LAYERS = [
    ("fmtarray._format", "fmtarray._backend", "fmtarray._tape"),
    ("fmtarray._kernels", "fmtarray._validate"),
    ("fmtarray.array", "fmtarray._jax_pytree"),
    ("fmtarray.ops", "fmtarray.io"),
    ("fmtarray.autodiff", "fmtarray.layers"),
    ("fmtarray.network", "fmtarray._layer_graph", "fmtarray._move", "fmtarray.persistence",
     "fmtarray._persist_file", "fmtarray._blockwise"),
    ("fmtarray.training",),
    ("fmtarray.matlab",),
]


def _layer(name: str) -> int:
    if name == "fmtarray":  # the package's __init__ re-exports everything
        return len(LAYERS)
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, (
        f"module {name} is in no layer of tests/test_imports.py LAYERS; add it where it belongs"
    )
    return best[0]


def test_imports_go_downward_only():
    g = import_graph()
    bad = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)}) at import time"
        for m, deps in g.items() for d in sorted(deps) if _layer(d) > _layer(m)
    ]
    assert not bad, "upward imports: " + "; ".join(bad)


def test_array_imports_no_ops_module():
    deps = import_graph()["fmtarray.array"]
    assert not [d for d in deps if d.startswith("fmtarray.ops")], deps


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports_as_a_module(name):
    if name.endswith(".__main__"):  # `python -m` entry points run code on import
        pytest.skip("a __main__ module is run, not imported")
    mod = importlib.import_module(name)
    assert isinstance(mod, types.ModuleType) and mod.__name__ == name


@pytest.mark.parametrize("name", sorted(n for n in MODULES if "." in n))
def test_submodule_attribute_is_the_module(name):
    """``fmtarray.training``, ``fmtarray.ops.convolution``, ... are modules: no
    function or class re-exported by the parent package hides a submodule."""
    if name.endswith(".__main__"):
        pytest.skip("a __main__ module is run, not imported")
    parent, _, child = name.rpartition(".")
    importlib.import_module(name)
    attr = getattr(sys.modules[parent], child)
    assert attr is sys.modules[name], (
        f"{parent}.{child} is {type(attr).__name__} {attr!r}, not the module {name}: a name "
        f"re-exported by {parent} shadows the submodule; rename the module"
    )


def test_public_function_names_do_not_hide_modules():
    import fmtarray

    assert callable(fmtarray.train) and not isinstance(fmtarray.train, types.ModuleType)
    assert isinstance(fmtarray.training, types.ModuleType)
    assert isinstance(importlib.import_module("fmtarray.training"), types.ModuleType)
    assert isinstance(importlib.import_module("fmtarray.ops.convolution"), types.ModuleType)
    assert callable(fmtarray.conv) and callable(fmtarray.ops.conv)
