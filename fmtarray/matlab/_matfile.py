"""MATLAB names for learnables to and from MATLAB ``.mat`` files.

``saveLearnables(net, file)`` writes the network's learnables (and its state, such
as batch-norm statistics and the image input layer's normalisation statistics) in
MATLAB's layouts, as MATLAB's ``net.Learnables`` / ``net.State`` tables: two
structs, ``Learnables`` and ``State``, each with the fields ``Layer``, ``Parameter``
(N×1 cell arrays of char) and ``Value`` (an N×1 cell array of numeric arrays).  In
MATLAB::

    S = load("learnables.mat");
    T = struct2table(S.Learnables);          % the table Layer, Parameter, Value
    for i = 1:height(T)                      % into a dlnetwork of the same layers
        k = net.Learnables.Layer == T.Layer{i} & net.Learnables.Parameter == T.Parameter{i};
        net.Learnables.Value{k} = dlarray(T.Value{i});
    end

Parameter names are MATLAB's (``Weights``, ``Bias``, ``Offset``, ``Scale``,
``TrainedMean``, ``TrainedVariance``, ``Mean``, ``StandardDeviation``, ``Min``,
``Max``): the Python name in PascalCase.  Values are the layers' arrays, which
fmtarray keeps in MATLAB's layouts (convolution weights ``h×w×C×F``, bias
``1×1×F``, fully connected weights ``OutputSize×InputSize``, bias ``OutputSize×1``).

``loadLearnables(net, file)`` reads such a file (written here or by MATLAB) back
into ``net``.  ``scipy`` is needed (``pip install scipy``); it is imported only
when these functions run.
"""

from __future__ import annotations

import os

import numpy as _np

from .. import _backend
from ..array import FormattedArray

__all__ = ["saveLearnables", "loadLearnables"]


def _scipy_io():
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - scipy is installed in the test env
        raise ImportError(
            "saveLearnables/loadLearnables need scipy to read and write .mat files; install it "
            "with 'pip install scipy'"
        ) from e
    return scipy.io


def _matlab_name(p: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in p.split("_"))


def _raw(v):
    return v.data if isinstance(v, FormattedArray) else v


def _rows(tree):
    for layer, params in tree.items():
        for p, v in params.items():
            yield layer, p, _raw(v)


def _table(tree):
    rows = list(_rows(tree))
    n = len(rows)
    names = _np.empty((n, 1), dtype=object)
    params = _np.empty((n, 1), dtype=object)
    values = _np.empty((n, 1), dtype=object)
    for i, (layer, p, v) in enumerate(rows):
        names[i, 0] = layer
        params[i, 0] = _matlab_name(p)
        values[i, 0] = _np.array(_backend.to_numpy(v), copy=True)
    return {"Layer": names, "Parameter": params, "Value": values}


def saveLearnables(net, filename):  # noqa: N802 (MATLAB-style name)
    """Write ``net``'s learnables and state to the MATLAB file ``filename`` (see the
    module docstring for the variables and layouts).  Returns ``filename``."""
    sio = _scipy_io()
    if not callable(getattr(net, "learnables", None)):
        raise TypeError(f"saveLearnables needs a fmtarray.Network, got {type(net).__name__}")
    state = net.state() if callable(getattr(net, "state", None)) else {}
    data = {"Learnables": _table(net.learnables()), "State": _table(state)}
    sio.savemat(os.fspath(filename), data, do_compression=False, oned_as="column")
    return filename


def _cells(struct, field, filename, table):
    try:
        v = struct[field]
    except (KeyError, ValueError, IndexError):
        raise ValueError(
            f"{filename!r}: {table} has no field {field!r}; expected the fields Layer, Parameter "
            "and Value (as saveLearnables writes them)"
        ) from None
    return [v.flat[i] for i in range(v.size)] if isinstance(v, _np.ndarray) else [v]


def _string(v):
    while isinstance(v, _np.ndarray) and v.dtype == object and v.size == 1:
        v = v.flat[0]
    if isinstance(v, _np.ndarray) and v.dtype.kind == "U":
        v = "".join(v.ravel().tolist())
    return v if isinstance(v, str) else str(v)


def _read_table(mat, var, filename):
    if var not in mat:
        return []
    s = mat[var]
    while isinstance(s, _np.ndarray) and s.dtype == object and s.size == 1:
        s = s.flat[0]
    if isinstance(s, _np.ndarray) and s.dtype.names:
        s = s.flat[0]
    layers = _cells(s, "Layer", filename, var)
    params = _cells(s, "Parameter", filename, var)
    values = _cells(s, "Value", filename, var)
    if not len(layers) == len(params) == len(values):
        raise ValueError(f"{filename!r}: {var} has {len(layers)} layers, {len(params)} "
                         f"parameters and {len(values)} values; they must be as many")
    return [(_string(a), _string(b), c) for a, b, c in zip(layers, params, values)]


def _fit(value, old, where, filename):
    """``value`` (from the file) reshaped to ``old``'s shape (MATLAB drops trailing
    singleton dims), in ``old``'s library and device; dtypes must agree."""
    value = _np.asarray(value)
    if value.dtype.kind != "f":
        raise ValueError(f"{filename!r}: {where} is {value.dtype}, not a floating array")
    shape = tuple(old.shape)

    def strip(s):
        s = list(s)
        while s and s[-1] == 1:
            s.pop()
        return s

    if tuple(value.shape) != shape:
        if strip(value.shape) != strip(shape):
            raise ValueError(
                f"{filename!r}: {where} has shape {tuple(value.shape)}, the network's has "
                f"{shape}"
            )
        value = value.reshape(shape)
    want = _np.dtype(str(old.dtype).replace("torch.", "").replace("array_api_strict.", ""))
    if value.dtype != want:
        raise ValueError(
            f"{filename!r}: {where} is {value.dtype}, the network's is {want}; nothing is cast "
            f"silently: convert the network (or the file) so that they agree"
        )
    lib = _backend.library_name(old)
    if lib == "numpy":
        return _np.array(value, copy=True)
    from .._move import move_array

    return move_array(value, lib, _backend.device(old), what=where)


def loadLearnables(net, filename):  # noqa: N802 (MATLAB-style name)
    """Read learnables (and state) written by :func:`saveLearnables` (or by MATLAB in the
    same layout) from ``filename`` into ``net``; returns ``net``.

    Every row must name a learnable (state) of ``net`` by layer and MATLAB
    parameter name, with the network's shape (trailing singleton dims may be
    dropped, as MATLAB does) and dtype; values move to the network's library and
    device.  Learnables the file does not mention keep their values.
    """
    sio = _scipy_io()
    fname = os.fspath(filename)
    try:
        mat = sio.loadmat(fname)
    except (ValueError, TypeError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{fname!r} is not a readable MATLAB .mat file ({e})") from None
    if "Learnables" not in mat:
        raise ValueError(f"{fname!r} has no variable 'Learnables' (write it with saveLearnables)")
    updates = {}
    for var, tree in (("Learnables", net.learnables()), ("State", net.state())):
        have = {(layer, _matlab_name(p)): (p, _raw(v)) for layer, p, v in _rows(tree)}
        out = {}
        for layer, mp, value in _read_table(mat, var, fname):
            key = (layer, mp)
            if key not in have:
                known = ", ".join(f"{a}/{b}" for a, b in have) or "none"
                raise ValueError(f"{fname!r}: {var} row {layer}/{mp} is not a "
                                 f"{var.lower()} entry of the network; they are {known}")
            p, old = have[key]
            out.setdefault(layer, {})[p] = _fit(value, old, f"{var} {layer}/{mp}", fname)
        updates[var] = out
    # everything checked: only now change the network
    if updates["Learnables"]:
        net.set_learnables(updates["Learnables"])
    if updates.get("State"):
        net.update_state(updates["State"])
    return net
