"""Reverse-mode recording: a node per traced result, one VJP closure per node.

Nothing is recorded unless an input already carries a node, and inputs only get
nodes inside :func:`fmtarray.grad` / :func:`fmtarray.value_and_grad` (and
:func:`fmtarray.matlab.dlfeval`), so plain
forward calls pay one attribute test per input.
"""

from __future__ import annotations


class Node:
    """One traced value: its parents' nodes and the vector-Jacobian product.

    ``vjp(g, needs)`` receives the cotangent of the output (raw array in the
    output's canonical layout) and a tuple of booleans saying which parents need
    a cotangent; it returns one raw cotangent (or ``None``) per parent, each in
    that parent's ``.data`` layout.
    """

    __slots__ = ("parents", "vjp", "needs", "shape", "dtype", "name")

    def __init__(self, parents, vjp, needs, shape, dtype, name=""):
        self.parents = parents
        self.vjp = vjp
        self.needs = needs
        self.shape = shape
        self.dtype = dtype
        self.name = name


def traced(*xs) -> bool:
    """True when any of ``xs`` (FormattedArrays or anything else) is being traced."""
    for x in xs:
        if getattr(x, "_node", None) is not None:
            return True
    return False


def record(out, parents, vjp, name=""):
    """Attach a node to ``out`` when any of ``parents`` is traced; return ``out``.

    ``parents`` may contain ``None`` or non-FormattedArray values (scalars,
    raw arrays): they are treated as constants.
    """
    nodes = tuple(getattr(p, "_node", None) for p in parents)
    needs = tuple(n is not None for n in nodes)
    if any(needs):
        out._node = Node(nodes, vjp, needs, tuple(out.data.shape), out.data.dtype, name)
    return out


def leaf(shape, dtype, name="") -> Node:
    return Node((), None, (), tuple(shape), dtype, name)


def backward(root: Node, g_root, leaves, add):
    """Propagate ``g_root`` from ``root`` and return the cotangents of ``leaves``
    (a list of nodes, traced inputs or intermediate values; ``None`` where one is not
    reached).

    ``add(a, b)`` adds two cotangents.
    """
    order: list[Node] = []
    seen: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node.parents:
            if p is not None and id(p) not in seen:
                stack.append((p, False))
    grads = {id(root): g_root}
    wanted = {id(leaf_) for leaf_ in leaves if leaf_ is not None}
    for node in reversed(order):
        # an intermediate node's cotangent is dropped once propagated, unless it was asked
        # for (matlab.dlgradient differentiates with respect to intermediate values too)
        keep = node.vjp is None or id(node) in wanted
        g = grads.get(id(node)) if keep else grads.pop(id(node), None)
        if g is None or node.vjp is None:
            continue
        pgs = node.vjp(g, node.needs)
        for p, pg in zip(node.parents, pgs):
            if p is None or pg is None:
                continue
            if tuple(pg.shape) != p.shape:
                raise RuntimeError(
                    f"internal error: VJP of {node.name or 'an op'} returned a cotangent of shape "
                    f"{tuple(pg.shape)} for a parent of shape {p.shape}"
                )
            k = id(p)
            grads[k] = pg if k not in grads else add(grads[k], pg)
    return [grads.get(id(leaf_)) for leaf_ in leaves]
