"""Saving and loading networks: :func:`save` / :func:`load` (no pickle).

A saved network is a ZIP archive (``docs/save_load.md`` describes it field by field):

* ``manifest.json``: the format name (``"fmtarray.network"``) and version, the
  network (layer names, the graph's connections, whether it was initialised, the
  library, device and dtype its arrays came from) and, per layer, its class, every
  constructor property, its learnables, state, learn-rate and L2 factors;
* ``arrays/NNNN.npy``: one NumPy ``.npy`` file per array, written and read with
  ``allow_pickle=False``.

Only layer classes exported by :mod:`fmtarray.layers` and classes registered
with :func:`register_layer` are rebuilt; no code is stored or executed.  Values
that cannot be stored as data (a callable initialiser, an unregistered layer
class, an object array) are a ``ValueError`` at save time naming the layer and the
property.  Every problem with a file (empty, truncated, not a ZIP, not JSON, a
newer version, a missing array, a property the layer refuses) is a ``ValueError``
naming the file; no partial network is ever returned.  The file is written to a
temporary file beside the target and renamed into place, so a failure leaves no
half-written file.

This module holds the manifest (what it says about the network and its layers, and
rebuilding them); the archive itself, its writing and its checked reading are in
:mod:`fmtarray._persist_file`.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os

import numpy as _np

from . import _backend
from ._persist_file import (  # noqa: F401  (FORMAT_NAME, FORMAT_VERSION: public here)
    _ARRAY_KINDS, _MANIFEST, FORMAT_NAME, FORMAT_VERSION, _Damaged, _need, _read,
    _write_atomically,
)
from ._move import _dtype_name
from .array import FormattedArray
from .layers._protocol import factor as _factor
from .layers._protocol import learnable_names as _learnable_names
from .layers._protocol import network_dtype as _network_dtype
from .layers._protocol import set_values as _set_values
from .layers._protocol import state_names as _state_names
from .layers.base import Layer

__all__ = ["save", "load", "register_layer", "FORMAT_NAME", "FORMAT_VERSION"]

_USER_LAYERS: dict[str, type] = {}


def register_layer(cls, name=None):
    """Allow :func:`save`/:func:`load` to store layers of the user class ``cls``.

    ``cls`` must follow the save/load contract: every constructor parameter is
    readable as an attribute of the same name, whose value the constructor
    accepts back.  ``name`` (default: ``module.ClassName``) is what the file
    records; register the class under the same name before loading.  Returns
    ``cls``, so it works as a class decorator.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_layer needs a class, got {type(cls).__name__} {cls!r}")
    key = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(key, str) or not key:
        raise TypeError(f"register_layer: name must be a non-empty str, got {name!r}")
    if key in _builtin_classes():
        raise ValueError(f"register_layer: {key!r} is the name of a built-in layer class")
    _USER_LAYERS[key] = cls
    return cls


def _builtin_classes() -> dict[str, type]:
    from . import layers

    return {n: c for n, c in vars(layers).items()
            if isinstance(c, type) and issubclass(c, Layer) and c is not Layer}


def _class_key(layer, who) -> str:
    cls = type(layer)
    builtin = _builtin_classes()
    if builtin.get(cls.__name__) is cls:
        return cls.__name__
    for k, c in _USER_LAYERS.items():
        if c is cls:
            return k
    raise ValueError(
        f"cannot save {who}: its class {cls.__module__}.{cls.__qualname__} is not a built-in "
        "layer; a saved file holds data, not code, so register the class first with "
        "fmtarray.persistence.register_layer(cls) (and again before loading)"
    )


def _ctor_params(cls, who):
    """The constructor's parameters as ``[(name, positional_only)]``."""
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(
                f"cannot save {who}: the constructor of {cls.__name__} takes *{p.name}, so its "
                "properties cannot be listed; give it named parameters"
            )
        out.append((p.name, p.kind is p.POSITIONAL_ONLY))
    return out


# values <-> JSON ------------------------------------------------------------------------


class _Writer:
    def __init__(self):
        self.arrays: dict[str, _np.ndarray] = {}
        self.meta: dict[str, dict] = {}
        self.library = None
        self.device = None
        self.saved_ids: set[int] = set()

    def array(self, v, who):
        fmt = None
        if isinstance(v, FormattedArray):
            fmt, v = v.format, v.data
        self.saved_ids.add(id(v))
        if self.library is None:
            self.library = _backend.library_name(v)
            self.device = str(_backend.device(v))
        try:
            host = _np.array(_backend.to_numpy(v), copy=True)
        except (TypeError, RuntimeError, ValueError) as e:
            raise ValueError(f"cannot save {who}: its {v.dtype} array has no NumPy dtype ({e}); "
                             "cast it (e.g. to float32) first") from e
        if host.dtype.kind not in _ARRAY_KINDS or host.dtype.byteorder not in "=|<":
            raise ValueError(f"cannot save {who}: arrays of dtype {host.dtype} are not stored "
                             "(only bool, integer and floating arrays, without pickle)")
        member = f"arrays/{len(self.arrays):04d}.npy"
        self.arrays[member] = host
        self.meta[member] = {"dtype": host.dtype.name, "shape": list(host.shape)}
        return {"array": member, "format": fmt}

    def value(self, v, who):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, FormattedArray) or _backend.is_array(v):
            return self.array(v, who)
        if isinstance(v, _np.generic) and v.dtype.kind == "b":
            return bool(v)
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            f = float(v)
            return f if math.isfinite(f) else {"float": repr(f)}
        if isinstance(v, tuple):
            return {"tuple": [self.value(a, who) for a in v]}
        if isinstance(v, list):
            return {"list": [self.value(a, who) for a in v]}
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"dict": {k: self.value(a, who) for k, a in v.items()}}
        what = "a callable" if callable(v) else f"a {type(v).__module__}.{type(v).__qualname__}"
        raise ValueError(
            f"cannot save {who}: its value is {what} ({v!r:.80}); a saved file holds data only "
            "(numbers, strings, tuples, lists, arrays), not code or objects; replace it by one "
            "of the built-in choices before saving (an initialiser is no longer needed once the "
            "layer is initialised)"
        )


def _plain(v) -> bool:
    """Plain data: None, bool, numbers, str, and tuples/lists/str-keyed dicts of them."""
    if v is None or isinstance(v, (bool, str, numbers.Real)) and not _backend.is_array(v):
        return not isinstance(v, _np.ndarray)
    if isinstance(v, (tuple, list)):
        return all(_plain(a) for a in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(a) for k, a in v.items())
    return False


def _arrays_in(v):
    if isinstance(v, FormattedArray):
        yield v.data
    elif _backend.is_array(v):
        yield v
    elif isinstance(v, (tuple, list)):
        for a in v:
            yield from _arrays_in(a)
    elif isinstance(v, dict):
        for a in v.values():
            yield from _arrays_in(a)


def _instance_data(layer, w, who):
    """The plain-data instance attributes of ``layer`` (what layers derive after
    construction, such as 'same' padding sizes or flags); an array the layer holds
    outside its properties, learnables and state is an error, never dropped."""
    out = {}
    for k, v in vars(layer).items():
        if _plain(v):
            out[k] = w.value(v, f"{who} attribute {k!r}")
            continue
        for a in _arrays_in(v):
            if id(a) not in w.saved_ids:
                raise ValueError(
                    f"cannot save {who}: its attribute {k!r} holds an array that is none of its "
                    "constructor properties, learnables or state, so it would be lost; list it "
                    "in the layer's state_names"
                )
    return out


def _kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, numbers.Real):
        return "number"
    return type(v).__name__


def _restore_instance(layer, saved, arrays, who):
    """Give the rebuilt layer the saved plain-data attributes its constructor created."""
    have = vars(layer)
    for k, v in saved.items():
        v = _decode(v, arrays, f"{who} attribute {k!r}")
        if k not in have:
            continue  # created later by the layer (a cache): derived again when needed
        cur = have[k]
        if cur is not None and v is not None and _kind(cur) != _kind(v):
            raise _Damaged(f"{who}: saved attribute {k!r} is a {_kind(v)}, the rebuilt layer's "
                           f"a {_kind(cur)}")
        object.__setattr__(layer, k, v)


def _decode(v, arrays, where):
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, dict) and len(v) in (1, 2):
        if "array" in v:
            member = v["array"]
            if member not in arrays:
                raise _Damaged(f"{where} refers to array {member!r}, which the file does not hold")
            a = arrays[member]
            fmt = v.get("format")
            if fmt is None:
                return a
            if not isinstance(fmt, str):
                raise _Damaged(f"{where}: the format of array {member!r} is not a str: {fmt!r}")
            return FormattedArray(a, fmt)
        (k, a), = v.items()
        if k == "tuple" and isinstance(a, list):
            return tuple(_decode(e, arrays, where) for e in a)
        if k == "list" and isinstance(a, list):
            return [_decode(e, arrays, where) for e in a]
        if k == "dict" and isinstance(a, dict):
            return {n: _decode(e, arrays, where) for n, e in a.items()}
        if k == "float" and a in ("inf", "-inf", "nan"):
            return float(a)
    raise _Damaged(f"{where} holds a value this format does not know: {v!r:.80}")


# save --------------------------------------------------------------------------------------


def _network_info(net):
    """(connections or None, input names, output names) of a graph network, else Nones."""
    conns = getattr(net, "connections", None)
    if conns is None:
        return None
    return [[str(s), str(d)] for s, d in conns]


def save(net, path) -> None:
    """Save the network ``net`` to the file ``path`` (any extension; ``.fmtnet`` suggested).

    Stores every layer's class and constructor properties, the learnables, the
    state (batch-norm statistics, the image input layer's normalisation
    statistics), layer names, learn-rate and L2 factors, the graph's connections,
    the dtype and the library/device the arrays came from.  The file is written
    atomically.  ``fmtarray.load(path)`` rebuilds an equal network (bit-identical
    predictions).  See ``docs/save_load.md`` for the format.
    """
    from .network import Network

    if not isinstance(net, Network):
        raise TypeError(f"save needs a fmtarray.Network, got {type(net).__name__}")
    target = os.fspath(path)
    w = _Writer()
    entries = []
    for name, layer in zip(net.layer_names, net.layers):
        who0 = f"layer {name!r} ({type(layer).__name__})"
        key = _class_key(layer, who0)
        params = _ctor_params(type(layer), who0)
        props = {}
        for p, _ in params:
            if not hasattr(layer, p):
                raise ValueError(
                    f"cannot save {who0}: constructor parameter {p!r} is not readable as "
                    f"layer.{p}; a saved layer must expose each constructor parameter"
                )
            props[p] = w.value(getattr(layer, p), f"{who0} property {p!r}")
        pnames = {p for p, _ in params}
        extra = {}
        for group, names in (("learnables", _learnable_names(layer)),
                             ("state", _state_names(layer))):
            extra[group] = {}
            for n in names:
                v = getattr(layer, n, None)
                if v is None:
                    continue
                if n in pnames:
                    extra[group][n] = {"property": n}
                else:
                    extra[group][n] = w.value(v, f"{who0} {group} {n!r}")
        attrs = _instance_data(layer, w, who0)
        factors = {n: [_factor(layer, n, "learn_rate_factor"), _factor(layer, n, "l2_factor")]
                   for n in extra["learnables"]}
        entries.append({
            "name": name, "class": key, "positional": [p for p, pos in params if pos],
            "properties": props, "learnables": extra["learnables"], "state": extra["state"],
            "instance": attrs, "factors": factors,
        })
    ld = _network_dtype(net.layers, net.layer_names)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "network": {
            "layer_names": list(net.layer_names),
            "connections": _network_info(net),
            "initialized": bool(getattr(net, "initialized", False)),
            "library": w.library,
            "device": w.device,
            "dtype": None if ld is None else _dtype_name(ld[1]),
        },
        "layers": entries,
        "arrays": w.meta,
    }
    text = json.dumps(manifest, indent=1, allow_nan=False)
    _write_atomically(target, text, w.arrays)


def _set_state(layer, vals):
    f = getattr(layer, "update_state", None)
    if callable(f):
        f(vals)
    else:
        for k, v in vals.items():
            setattr(layer, k, v)


# load --------------------------------------------------------------------------------------


def load(path, library=None, device=None):
    """Load a network saved by :func:`save`.

    Parameters
    ----------
    path
        The file.
    library, device
        Where the arrays go: by default NumPy (on the host) whatever library they
        were saved from; else as :meth:`fmtarray.Network.to` (``"torch"``,
        ``device="cuda"``...).

    Returns the network, equal to the saved one: same layers, properties, names,
    factors, graph, learnables, state (bit-identical values, same dtypes).  A file
    that is empty, truncated, not a saved network, of a newer format version, or
    inconsistent is a ``ValueError`` that names the file and says what is wrong.
    """
    target = os.fspath(path)
    try:
        manifest, arrays = _read(target)
        net = _build(manifest, arrays)
    except _Damaged as e:
        raise ValueError(f"cannot load network from {target!r}: {e}") from None
    if library is not None or device is not None:
        from ._move import to_library

        net = to_library(net, "numpy" if library is None else library, device)
    return net


def _build(manifest, arrays):
    from .network import Network

    info = _need(manifest, "network", dict, "")
    names = _need(info, "layer_names", list, "network.")
    entries = _need(manifest, "layers", list, "")
    if len(entries) != len(names) or not entries:
        raise _Damaged(f"the manifest lists {len(entries)} layers and {len(names)} layer names")
    classes = {**_builtin_classes(), **_USER_LAYERS}
    layers = []
    for i, e in enumerate(entries):
        name = _need(e, "name", str, f"layers[{i}].")
        key = _need(e, "class", str, f"layers[{i}].")
        who = f"layer {name!r} ({key})"
        cls = classes.get(key)
        if cls is None:
            raise _Damaged(
                f"{who}: no layer class {key!r} is known here; built-in classes are "
                f"{', '.join(sorted(_builtin_classes()))}; register user classes with "
                "fmtarray.persistence.register_layer before loading"
            )
        props = {k: _decode(v, arrays, f"{who} property {k!r}")
                 for k, v in _need(e, "properties", dict, f"layers[{i}].").items()}
        positional = _need(e, "positional", list, f"layers[{i}].")
        try:
            args = [props.pop(p) for p in positional]
            layer = cls(*args, **props)
            for group in ("learnables", "state"):
                vals = {}
                for n, v in _need(e, group, dict, f"layers[{i}].").items():
                    if isinstance(v, dict) and set(v) == {"property"}:
                        continue  # passed to the constructor
                    vals[n] = _decode(v, arrays, f"{who} {group} {n!r}")
                if vals:
                    (_set_values if group == "learnables" else _set_state)(layer, vals)
            _restore_instance(layer, _need(e, "instance", dict, f"layers[{i}]."), arrays, who)
        except _Damaged:
            raise
        except Exception as err:  # noqa: BLE001 - whatever a layer raises on a tampered value
            raise _Damaged(f"{who} cannot be rebuilt from its saved properties: {err}") from None
        layers.append(layer)
    conns = info.get("connections")
    try:
        net = _assemble(Network, layers, names, conns)
    except _Damaged:
        raise
    except Exception as err:  # noqa: BLE001
        raise _Damaged(f"the network cannot be rebuilt from its layers and connections: {err}") \
            from None
    if tuple(net.layer_names) != tuple(names):
        raise _Damaged(f"the rebuilt layer names {net.layer_names} differ from the saved {tuple(names)}")
    for name, e in zip(names, entries):
        layer = net[name]
        for n, fac in _need(e, "factors", dict, f"layer {name!r}.").items():
            got = [_factor(layer, n, "learn_rate_factor"), _factor(layer, n, "l2_factor")]
            if got != fac:
                raise _Damaged(f"layer {name!r} {n}: factors {got} differ from the saved {fac}")
    if info.get("initialized") is True:
        _mark_initialized(net, info)
    return net


def _assemble(Network, layers, names, conns):
    """The network: its layers added (in groups that give MATLAB's names as when it was
    built), then its connections made equal to the saved ones."""
    if conns is None:  # a file from a chain-only network
        return Network(layers)
    if not isinstance(conns, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(s, str) for s in c)
            for c in conns):
        raise _Damaged(f"the manifest's network.connections is not a list of [source, "
                       f"destination] names: {conns!r:.120}")
    net = Network()
    for group in _groups(layers, list(names)):
        net.add_layers(group)
    want = [tuple(c) for c in conns]
    for c in net.connections:
        if c not in want:
            net.disconnect_layers(*c)
    have = set(net.connections)
    for c in want:
        if c not in have:
            net.connect_layers(*c)
    if list(net.connections) != want:
        raise _Damaged(f"the rebuilt connections {net.connections} differ from the saved ones")
    return net


def _groups(layers, names):
    """Split ``layers`` into the fewest consecutive groups whose MATLAB names, resolved as
    ``add_layers`` resolves them group by group, are the saved ``names`` (a network built
    by several ``add_layers`` calls names its unnamed layers per call)."""
    from ._layer_graph import _resolve_names

    groups, taken, i, n = [], {}, 0, len(layers)
    while i < n:
        for k in range(n - i, 0, -1):
            try:
                got = _resolve_names(layers[i:i + k], taken, i)
            except (TypeError, ValueError):
                continue
            if list(got) == names[i:i + k]:
                break
        else:  # no grouping gives these names (a file edited by hand): name the layers
            for layer, name in zip(layers[i:], names[i:]):
                if not getattr(layer, "name", ""):
                    layer.name = name
            k = n - i
        groups.append(layers[i:i + k])
        taken.update({m: i + j + 1 for j, m in enumerate(names[i:i + k])})
        i += k
    return groups


def _mark_initialized(net, info):
    """Bring the rebuilt network to its saved initialised state.

    Every value is already in place; initialising only resolves what layers derive
    from an example input ('same' padding sizes) and sets the network's flag.
    """
    if all(callable(getattr(net[n.split("/")[0]], "example_input", None))
           for n in net.input_names):
        dtype = info.get("dtype")
        try:
            dt = _np.dtype(dtype) if isinstance(dtype, str) else None
        except TypeError:
            dt = None
        try:
            net.initialize(dtype=dt if dt is not None and dt.kind == "f" else None)
            return
        except (TypeError, ValueError):
            pass  # a network input that is not an input layer: no example to initialise with
    # Every value is in place; only the flag is missing. Network.initialize cannot set it
    # here: a network input that is not an input layer needs an example (its format and
    # size), and the file records neither. The flag is restored privately, on purpose: a
    # public way to mark a network initialised without examples would let users skip the
    # format checks initialize() makes, so Network offers none.
    net._initialized = True
