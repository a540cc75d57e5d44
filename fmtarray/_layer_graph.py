"""Graph bookkeeping of :class:`fmtarray.Network` (MATLAB ``dlnetwork``'s layer graph).

Layers are kept in the order they were added (the display order, and the index that
seeds each layer's initialiser); connections are ``(source layer, output port,
destination layer, input port)`` by name. A port is named by the layer's
``output_names`` / ``input_names`` (``("out",)`` / ``("in",)`` when the layer does not
say). In MATLAB's ``layer/port`` syntax a bare layer name means its only port.

Network inputs are the unconnected input ports, network outputs the unconnected output
ports, both in layer order (MATLAB ``InputNames`` / ``OutputNames``): a port is shown as
the bare layer name when the layer has one such port, else as ``layer/port``.

Editing (``add_layers``, ``connect_layers``, ``disconnect_layers``, ``remove_layers``,
``replace_layer``) never leaves a cycle; the evaluation plan (a topological order and
where every input comes from) is rebuilt lazily after each edit.
"""

from __future__ import annotations

import heapq

from .layers._protocol import default_name as _default_name
from .layers._protocol import description as _description
from .layers._protocol import type_name as _type_name

__all__ = ["LayerGraph", "in_ports", "out_ports"]


def in_ports(layer) -> tuple[str, ...]:
    return tuple(getattr(layer, "input_names", ("in",)))


def out_ports(layer) -> tuple[str, ...]:
    return tuple(getattr(layer, "output_names", ("out",)))


def _as_layer_list(layers, what="layers"):
    if hasattr(layers, "_layer_graph_marker"):
        raise TypeError(
            f"{what} is a Network: a Network cannot be nested as a layer of another Network; "
            "put its layers in instead, e.g. Network([..., *inner.layers, ...])"
        )
    if callable(getattr(layers, "predict", None)):
        return [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"{what} must be a layer or a list of layers, got "
                        f"{type(layers).__name__}") from None
    for i, layer in enumerate(layers):
        if hasattr(layer, "_layer_graph_marker"):
            raise TypeError(
                f"layer {i + 1} is a Network: a Network cannot be nested as a layer of "
                "another Network; put its layers in instead, e.g. "
                "Network([..., *inner.layers, ...])"
            )
        if not callable(getattr(layer, "predict", None)):
            raise TypeError(
                f"layer {i + 1} ({type(layer).__name__}) is not a layer: a layer is an object "
                "with a predict(x) method (see fmtarray.layers.Layer)"
            )
    return layers


def _resolve_names(layers, taken=(), offset=0):
    """MATLAB's names for ``layers`` (given names kept, unnamed ones ``base`` or
    ``base_k``), none of them in ``taken`` (the names already in the network)."""
    given = []
    for i, layer in enumerate(layers):
        n = getattr(layer, "name", "") or ""
        if not isinstance(n, str):
            raise TypeError(f"layer {offset + i + 1} has a name that is not a str: {n!r}")
        given.append(n)
    taken = dict(taken)  # name -> position (1-based) of the layer that has it
    where = {}
    for i, n in enumerate(given):
        if not n:
            continue
        if n in where:
            raise ValueError(
                f"layer names must be unique: {n!r} is the name of layers {where[n] + 1} "
                f"and {offset + i + 1}"
            )
        if n in taken:
            raise ValueError(
                f"layer names must be unique: {n!r} (layer {offset + i + 1}) is already the name "
                f"of layer {taken[n]} of the network"
            )
        where[n] = offset + i
    used = set(where) | set(taken)
    counts = {}
    for i, n in enumerate(given):
        if not n:
            b = _default_name(layers[i])
            counts[b] = counts.get(b, 0) + 1
    names, next_k = list(given), {}
    for i, n in enumerate(given):
        if n:
            continue
        b = _default_name(layers[i])
        if counts[b] == 1 and b not in used:
            cand = b
        else:
            k = next_k.get(b, 1)
            while f"{b}_{k}" in used:
                k += 1
            cand = f"{b}_{k}"
            next_k[b] = k + 1
        used.add(cand)
        names[i] = cand
    return names


class LayerGraph:
    """Layers, names and connections; editing and the evaluation plan (no arithmetic)."""

    _layer_graph_marker = True

    def _graph_init(self, layers):
        self._layers, self._names, self._edges = [], (), []
        self._plan_cache = None
        self._initialized = False
        if layers is not None:
            layers = _as_layer_list(layers)
            if layers:
                self.add_layers(layers)

    # names and ports ------------------------------------------------------------------
    def _index(self, name, what="layer") -> int:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a layer name (str), got {type(name).__name__} {name!r}")
        try:
            return self._names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown {what} {name!r}; the layers are {self._names}"
            ) from None

    def _port(self, spec, kind):
        """``(layer index, port name)`` of ``"layer"`` / ``"layer/port"`` (``kind`` is
        ``"source"`` or ``"destination"``)."""
        if not isinstance(spec, str):
            raise TypeError(f"{kind} must be a str 'layer' or 'layer/port', got "
                            f"{type(spec).__name__} {spec!r}")
        lname, sep, port = spec.partition("/")
        if lname not in self._names and spec in self._names:
            lname, sep, port = spec, "", ""
        i = self._index(lname, f"{kind} layer")
        ports = out_ports(self._layers[i]) if kind == "source" else in_ports(self._layers[i])
        which = "output" if kind == "source" else "input"
        if not sep:
            if len(ports) != 1:
                raise ValueError(
                    f"{kind} {spec!r}: layer {lname!r} has {len(ports)} {which}s "
                    f"({', '.join(ports) or 'none'}); name one, e.g. '{lname}/{ports[0] if ports else '?'}'"
                )
            return i, ports[0]
        if port not in ports:
            raise ValueError(
                f"{kind} {spec!r}: layer {lname!r} has no {which} {port!r}; its {which}s are "
                + (", ".join(repr(p) for p in ports) or "none")
            )
        return i, port

    @staticmethod
    def _show(name, port, ports) -> str:
        return name if len(ports) == 1 else f"{name}/{port}"

    def _edited(self):
        self._plan_cache = None
        self._initialized = False
        return self

    # editing ----------------------------------------------------------------------------
    def add_layers(self, layers):
        """Add ``layers`` (a layer or a list), connected in sequence to each other but not
        to the layers already there (MATLAB ``addLayers``). Returns the network."""
        new = _as_layer_list(layers)
        have = {id(layer): k for k, layer in enumerate(self._layers)}
        for i, layer in enumerate(new):
            if id(layer) in have:
                raise ValueError(
                    f"layers {have[id(layer)] + 1} and {len(self._layers) + i + 1} are the same "
                    f"{type(layer).__name__} object; create a separate layer for each position"
                )
            have[id(layer)] = len(self._layers) + i
        taken = {n: k + 1 for k, n in enumerate(self._names)}
        names = _resolve_names(new, taken, len(self._layers))
        start = len(self._layers)
        self._layers = self._layers + new
        self._names = self._names + tuple(names)
        for k in range(start, len(self._layers) - 1):
            outs, ins = out_ports(self._layers[k]), in_ports(self._layers[k + 1])
            if outs and ins:
                self._edges.append((self._names[k], outs[0], self._names[k + 1], ins[0]))
        return self._edited()

    def connect_layers(self, source, destination):
        """Connect ``source`` (``"layer"`` or ``"layer/out"``) to ``destination``
        (``"layer"`` or ``"layer/in2"``) (MATLAB ``connectLayers``). Returns the network."""
        si, sp = self._port(source, "source")
        di, dp = self._port(destination, "destination")
        dname = self._names[di]
        for e in self._edges:
            if e[2] == dname and e[3] == dp:
                src = self._show(e[0], e[1], out_ports(self._layers[self._names.index(e[0])]))
                raise ValueError(
                    f"cannot connect {source!r} to {destination!r}: input "
                    f"{self._show(dname, dp, in_ports(self._layers[di]))!r} is already connected "
                    f"to {src!r}; disconnect it first (disconnect_layers({src!r}, {destination!r}))"
                )
        path = self._path(dname, self._names[si])
        if path is not None:
            raise ValueError(
                f"cannot connect {source!r} to {destination!r}: it would make a cycle "
                + " -> ".join(path + [dname]) + "; a network must be acyclic"
            )
        self._edges.append((self._names[si], sp, dname, dp))
        return self._edited()

    def _path(self, a, b):
        """A path of layer names from ``a`` to ``b`` along the connections, or None."""
        nxt = {}
        for s, _, d, _ in self._edges:
            nxt.setdefault(s, []).append(d)
        prev, todo = {a: None}, [a]
        while todo:
            v = todo.pop()
            if v == b:
                out = []
                while v is not None:
                    out.append(v)
                    v = prev[v]
                return out[::-1]
            for w in nxt.get(v, ()):
                if w not in prev:
                    prev[w] = v
                    todo.append(w)
        return None

    def disconnect_layers(self, source, destination):
        """Remove the connection ``source`` → ``destination`` (MATLAB ``disconnectLayers``)."""
        si, sp = self._port(source, "source")
        di, dp = self._port(destination, "destination")
        e = (self._names[si], sp, self._names[di], dp)
        if e not in self._edges:
            raise ValueError(
                f"there is no connection from {source!r} to {destination!r}; the connections are "
                + (", ".join(f"{s} -> {d}" for s, d in self.connections) or "none")
            )
        self._edges.remove(e)
        return self._edited()

    def remove_layers(self, names):
        """Remove the named layers (a str or a list) and their connections (MATLAB
        ``removeLayers``). Returns the network."""
        names = [names] if isinstance(names, str) else list(names)
        idx = {self._index(n) for n in names}
        gone = {self._names[i] for i in idx}
        self._layers = [layer for i, layer in enumerate(self._layers) if i not in idx]
        self._names = tuple(n for i, n in enumerate(self._names) if i not in idx)
        self._edges = [e for e in self._edges if e[0] not in gone and e[2] not in gone]
        return self._edited()

    def replace_layer(self, name, layers):
        """Replace layer ``name`` by ``layers`` (one layer or a chain) connected in its place
        (MATLAB ``replaceLayer``): the first new layer takes the old layer's input
        connections, the last its output connections, matched by port name (else by
        position). Returns the network."""
        i = self._index(name)
        new = _as_layer_list(layers)
        old = self._layers[i]
        ins = [e for e in self._edges if e[2] == name]
        outs = [e for e in self._edges if e[0] == name]

        def match(port, old_ports, new_ports, which):
            if port in new_ports:
                return port
            k = old_ports.index(port)
            if k < len(new_ports):
                return new_ports[k]
            raise ValueError(
                f"replace_layer({name!r}): the old layer's {which} {port!r} is connected, but "
                f"the new {'first' if which == 'input' else 'last'} layer has no {which} of that "
                f"name or position; its {which}s are {new_ports}"
            )

        in_map = {e[3]: match(e[3], in_ports(old), in_ports(new[0]), "input") for e in ins}
        out_map = {e[1]: match(e[1], out_ports(old), out_ports(new[-1]), "output") for e in outs}
        # rebuild: the old layer out, the new chain in at its position
        rest_layers = self._layers[:i] + self._layers[i + 1:]
        rest_names = self._names[:i] + self._names[i + 1:]
        taken = {n: k + 1 for k, n in enumerate(rest_names)}
        for k, layer in enumerate(new):
            if any(layer is r for r in rest_layers):
                raise ValueError(
                    f"replacement layer {k + 1} ({type(layer).__name__}) is already a layer of the "
                    "network; create a new layer"
                )
        new_names = _resolve_names(new, taken, i)
        self._layers = rest_layers[:i] + new + rest_layers[i:]
        self._names = rest_names[:i] + tuple(new_names) + rest_names[i:]
        edges = [e for e in self._edges if e[0] != name and e[2] != name]
        for a, b, la, lb in zip(new_names, new_names[1:], new, new[1:]):
            if out_ports(la) and in_ports(lb):
                edges.append((a, out_ports(la)[0], b, in_ports(lb)[0]))
        edges += [(s, sp, new_names[0], in_map[dp]) for s, sp, _, dp in ins]
        edges += [(new_names[-1], out_map[sp], d, dp) for _, sp, d, dp in outs]
        self._edges = edges
        return self._edited()

    # views ------------------------------------------------------------------------------
    def _edge_key(self, e):
        si, di = self._names.index(e[0]), self._names.index(e[2])
        return si, di, in_ports(self._layers[di]).index(e[3])

    @property
    def connections(self) -> tuple[tuple[str, str], ...]:
        """``((source, destination), ...)`` in MATLAB form (``("conv_1", "add/in1")``):
        the bare layer name for a layer with one output (input), else ``layer/port``."""
        out = []
        for e in sorted(self._edges, key=self._edge_key):
            s, d = (self._layers[self._names.index(n)] for n in (e[0], e[2]))
            out.append((self._show(e[0], e[1], out_ports(s)), self._show(e[2], e[3], in_ports(d))))
        return tuple(out)

    def _free_ports(self, kind):
        linked = {(e[2], e[3]) for e in self._edges} if kind == "in" else \
                 {(e[0], e[1]) for e in self._edges}
        out = []
        for k, (n, layer) in enumerate(zip(self._names, self._layers)):
            ports = in_ports(layer) if kind == "in" else out_ports(layer)
            for p in ports:
                if (n, p) not in linked:
                    out.append((k, p, self._show(n, p, ports)))
        return out

    @property
    def input_names(self) -> tuple[str, ...]:
        """The network inputs: the unconnected layer inputs, in layer order (MATLAB
        ``InputNames``); ``predict``/``forward`` take one value per input in this order."""
        return tuple(s for _, _, s in self._free_ports("in"))

    @property
    def output_names(self) -> tuple[str, ...]:
        """The network outputs: the unconnected layer outputs, in layer order (MATLAB
        ``OutputNames``); ``predict``/``forward`` return one value per output in this order."""
        return tuple(s for _, _, s in self._free_ports("out"))

    def is_chain(self) -> bool:
        """True when the network is a plain layer array: each layer has one input and one
        output, connected to the next layer's."""
        if any(len(in_ports(layer)) != 1 or len(out_ports(layer)) != 1 for layer in self._layers):
            return False
        want = {(a, b) for a, b in zip(self._names, self._names[1:])}
        return len(self._edges) == len(want) and {(e[0], e[2]) for e in self._edges} == want

    def _plan(self):
        """``(order, sources, outputs)``: a topological order of layer indices; for each
        layer, per input port, ``("net", k)`` (network input k) or ``("layer", j, q)``
        (output port q of layer j); the network outputs as ``(j, q)``."""
        plan = self._plan_cache
        if plan is not None:
            return plan
        pos = {n: k for k, n in enumerate(self._names)}
        net_in = {(k, p): m for m, (k, p, _) in enumerate(self._free_ports("in"))}
        src = {}
        indeg = [0] * len(self._layers)
        succ = [[] for _ in self._layers]
        for s, sp, d, dp in self._edges:
            j, i = pos[s], pos[d]
            src[(i, dp)] = ("layer", j, out_ports(self._layers[j]).index(sp))
            indeg[i] += 1
            succ[j].append(i)
        sources = []
        for i, layer in enumerate(self._layers):
            sources.append(tuple(src.get((i, p), ("net", net_in.get((i, p)))) for p in in_ports(layer)))
        heap = [i for i, n in enumerate(indeg) if n == 0]
        heapq.heapify(heap)
        order = []
        while heap:
            i = heapq.heappop(heap)
            order.append(i)
            for k in succ[i]:
                indeg[k] -= 1
                if indeg[k] == 0:
                    heapq.heappush(heap, k)
        if len(order) != len(self._layers):  # cannot happen through the editing methods
            stuck = [self._names[i] for i in range(len(self._layers)) if i not in set(order)]
            raise ValueError(f"the network has a cycle through layers {stuck}")
        outputs = tuple((k, out_ports(self._layers[k]).index(p)) for k, p, _ in self._free_ports("out"))
        plan = (tuple(order), tuple(sources), outputs)
        self._plan_cache = plan
        return plan

    # display ----------------------------------------------------------------------------
    def _display(self):
        if not self._layers:
            return "Network with no layers (MATLAB: an empty dlnetwork); add them with add_layers"
        chain = self.is_chain()
        rows = [
            (str(i + 1),
             repr(getattr(layer, "name", "") or "") if chain else repr(self._names[i]),
             _type_name(layer), _description(layer))
            for i, layer in enumerate(self._layers)
        ]
        w = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{len(rows)}x1 Layer array with layers:", ""]
        for r in rows:
            lines.append(
                f"  {r[0].rjust(w[0] + 2)}   {r[1].ljust(w[1])}   {r[2].ljust(w[2])}   {r[3]}".rstrip()
            )
        if chain:
            return "\n".join(lines)
        conns = self.connections
        head = ("Source", "Destination")
        ws = [max([len(head[k])] + [len(c[k]) for c in conns]) for k in range(2)]
        lines += ["", f"  {len(conns)}x2 table of connections:", ""]
        lines.append(f"    {head[0].ljust(ws[0])}   {head[1]}")
        lines.append(f"    {'_' * ws[0]}   {'_' * ws[1]}")
        lines += [f"    {s.ljust(ws[0])}   {d}" for s, d in conns]
        ins = ", ".join(repr(n) for n in self.input_names) or "none"
        outs = ", ".join(repr(n) for n in self.output_names) or "none"
        lines += ["", f"  Inputs: {ins}", f"  Outputs: {outs}"]
        return "\n".join(lines)
