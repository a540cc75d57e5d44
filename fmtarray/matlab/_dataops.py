"""MATLAB's data and loss functions for custom training loops: ``onehotencode``/
``onehotdecode``, the losses ``crossentropy`` and ``mse``, and the functional ops
``relu``, ``softmax``, ``fullyconnect`` and ``mean`` (with ``"all"``).

Each is the fmtarray op under MATLAB's name and argument order (``Name, Value``
options included); they work inside :func:`fmtarray.matlab.dlfeval` and
:func:`fmtarray.grad` alike. Differences from MATLAB are in each docstring and in
``docs/matlab.md``.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend
from ..array import FormattedArray
from ..ops import reductions as _red
from ..ops.elementwise import relu as _relu
from ..ops.nn import cross_entropy, fully_connect
from ..ops.nn import softmax as _softmax
from ._common import _options, _reraise

__all__ = [
    "onehotencode", "onehotdecode", "crossentropy", "mse",
    "relu", "softmax", "fullyconnect", "mean",
]


# one-hot encoding --------------------------------------------------------------------------

_DTYPES = {"single": "float32", "double": "float64", "float32": "float32", "float64": "float64",
           "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
           "uint8": "uint8", "logical": "bool"}


def _feature_dim(fn, d, ndim):
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"{fn}: featureDim must be a positive integer (MATLAB's 1-based "
                         f"dimension number), got {d!r}")
    return int(d) - 1


def onehotencode(A, featureDim, *args, **kwargs):  # noqa: N803
    """MATLAB ``B = onehotencode(A, featureDim, typename, ClassNames=classes)``.

    ``A``: labels, a 1-D sequence or array (read as MATLAB's ``1×N`` row, so
    ``featureDim=1`` gives ``K×N``, the ``CB`` layout of a classifier's output) or an
    N-d array whose ``featureDim`` dim has size 1. ``featureDim`` is 1-based, as in
    MATLAB. ``ClassNames`` (also ``classes=``) lists the classes in order; without it
    the classes are the sorted distinct labels of ``A`` (MATLAB's categories of
    ``categorical(A)``): give it whenever a mini-batch may miss a class. A label that is
    not a class is a ``ValueError``. ``typename`` (``"single"``, ``"double"``, a dtype)
    defaults to float32 (MATLAB: double), the dtype of fmtarray's networks.

    Returns an array of the labels' library and device (NumPy for a Python list or for
    string labels), or an unformatted FormattedArray when ``A`` is a FormattedArray.
    """
    fn = "onehotencode"
    typename = None
    if len(args) % 2:
        typename, args = args[0], args[1:]
    opts = _options(fn, args, kwargs, {"ClassNames": "classes", "classes": "classes"})
    classes = opts.get("classes")
    fa_in = isinstance(A, FormattedArray)
    a = A._data if fa_in else A
    if not _backend.is_array(a):
        import numpy as np
        a = np.asarray(a)
    xp = _backend.namespace(a)
    if a.ndim == 0:
        a = xp.reshape(a, (1, 1))
    elif a.ndim == 1:
        a = xp.reshape(a, (1, a.shape[0]))
    fd = _feature_dim(fn, featureDim, a.ndim)
    while a.ndim <= fd:
        a = a[..., None]
    if a.shape[fd] != 1:
        raise ValueError(f"{fn}: dimension featureDim={featureDim} of the labels has size "
                         f"{a.shape[fd]}; it must be 1 (a singleton the classes expand into)")
    text = not (hasattr(a, "dtype") and (xp.isdtype(a.dtype, "numeric") or a.dtype == xp.bool))
    if text:  # strings or objects: encoded on the host with NumPy
        import numpy as np
        xp = _backend.namespace(np.zeros(1))
    dev = _backend.device(a)
    if classes is None:
        import numpy as np
        host = np.unique(_backend.to_numpy(a))
        classes = host.tolist()
    classes = list(classes) if not _backend.is_array(classes) else \
        _backend.to_numpy(classes).tolist()
    if not classes:
        raise ValueError(f"{fn}: ClassNames is empty; give at least one class")
    shape = [1] * a.ndim
    shape[fd] = len(classes)
    if text:
        import numpy as np
        cls = np.asarray(classes, dtype=object).reshape(shape)
        hot = np.asarray(a, dtype=object) == cls
    else:
        cls = xp.reshape(xp.asarray(classes, device=dev), tuple(shape))
        hot = a == cls
    found = xp.any(hot, axis=fd)
    if not bool(xp.all(found)):
        import numpy as np
        missing = np.asarray(_backend.to_numpy(a)).take(0, axis=fd)[
            ~np.asarray(_backend.to_numpy(found), dtype=bool)]
        raise ValueError(f"{fn}: label {missing.ravel().tolist()[0]!r} is not one of the classes "
                         f"{classes}; give ClassNames with every class")
    name = _DTYPES.get(typename, typename) if isinstance(typename, str) else typename
    dtype = getattr(xp, name) if isinstance(name, str) else (name or xp.float32)
    if isinstance(typename, str) and typename not in _DTYPES:
        raise ValueError(f"{fn}: unknown typename {typename!r}; the legal ones are "
                         + ", ".join(_DTYPES))
    out = xp.astype(hot, dtype)
    return FormattedArray._wrap(out, "") if fa_in else out


def onehotdecode(B, classes, featureDim, *args):  # noqa: N803
    """MATLAB ``A = onehotdecode(B, classes, featureDim)``: the class of the largest value
    along ``featureDim`` (1-based; for a formatted ``B`` also a label such as ``"C"``).

    Returns the class values with the ``featureDim`` dim removed (MATLAB keeps it as a
    singleton; removing it lets ``Y == TTest`` compare element by element): an array of
    ``B``'s library and device for numeric classes, a NumPy array for strings. Ties go to
    the first class, as in MATLAB. ``typename`` (MATLAB's optional 4th argument) is not
    needed: the values have the classes' type.
    """
    fn = "onehotdecode"
    if len(args) > 1:
        raise TypeError(f"{fn} takes B, classes, featureDim and an optional typename")
    b = B._data if isinstance(B, FormattedArray) else B
    if not _backend.is_array(b):
        raise TypeError(f"{fn}: B must be an array or a FormattedArray, got {type(B).__name__}")
    if isinstance(featureDim, str):
        if not isinstance(B, FormattedArray) or featureDim not in B.format or len(featureDim) != 1:
            raise ValueError(f"{fn}: featureDim={featureDim!r} must be a label of B's format "
                             f"{getattr(B, 'format', '')!r} (or a 1-based dimension number)")
        fd = B.format.index(featureDim)
    else:
        fd = _feature_dim(fn, featureDim, b.ndim)
    if fd >= b.ndim:
        raise ValueError(f"{fn}: featureDim={featureDim} but B has {b.ndim} dims")
    classes = list(classes) if not _backend.is_array(classes) else \
        _backend.to_numpy(classes).tolist()
    if len(classes) != b.shape[fd]:
        raise ValueError(f"{fn}: {len(classes)} classes but dimension featureDim={featureDim} "
                         f"of B has size {b.shape[fd]}; give one class per entry")
    xp = _backend.namespace(b)
    idx = xp.argmax(b, axis=fd)
    if all(isinstance(c, numbers.Number) and not isinstance(c, bool) for c in classes):
        cls = xp.asarray(classes, device=_backend.device(b))
        return xp.reshape(xp.take(cls, xp.reshape(idx, (-1,))), tuple(idx.shape))
    import numpy as np
    return np.asarray(classes, dtype=object)[_backend.to_numpy(idx)]


# losses and functional ops -----------------------------------------------------------------

_CE_OPTIONS = {"NormalizationFactor": "normalization", "DataFormat": "data_format",
               "ClassificationMode": "mode"}
_NORMALIZATION = {"batch-size": "batch", "none": "none"}


def crossentropy(Y, targets, *args, **kwargs):
    """MATLAB ``loss = crossentropy(Y, targets, Name=Value)``: ``−Σ targets·log(Y) / N``,
    summed over ``C`` and every other dim, divided by the batch size ``N``
    (:func:`fmtarray.cross_entropy`). ``targets`` may be unformatted in ``Y``'s layout
    (``onehotencode(labels, 1)`` for ``CB`` predictions).

    Options: ``NormalizationFactor`` (``"batch-size"``, default, or ``"none"``),
    ``DataFormat`` (for an unformatted ``Y``), ``ClassificationMode`` (only
    ``"single-label"``).
    """
    fn = "crossentropy"
    opts = _options(fn, args, kwargs, _CE_OPTIONS)
    mode = opts.pop("mode", "single-label")
    if not isinstance(mode, str) or mode.lower() != "single-label":
        raise ValueError(f"{fn}: ClassificationMode={mode!r} is not supported; the legal value "
                         "is 'single-label'")
    norm = opts.pop("normalization", "batch-size")
    if not isinstance(norm, str) or norm.lower() not in _NORMALIZATION:
        raise ValueError(f"{fn}: invalid NormalizationFactor={norm!r}; the legal values are "
                         + ", ".join(repr(k) for k in _NORMALIZATION))
    try:
        return cross_entropy(Y, targets, normalization=_NORMALIZATION[norm.lower()], **opts)
    except (TypeError, ValueError) as e:
        _reraise(fn, e, _CE_OPTIONS)


def mse(Y, targets, *args, **kwargs):
    """MATLAB ``loss = mse(Y, targets)``: half mean squared error,
    ``Σ (Y − targets)² / (2N)`` over every element, ``N`` the batch size (``B``; 1 when
    ``Y`` has none). Option ``NormalizationFactor``: ``"batch-size"`` (default),
    ``"all-elements"`` (``N`` = number of elements), ``"none"`` (``N`` = 1, still halved).
    Returns an unformatted scalar FormattedArray, differentiable.
    """
    fn = "mse"
    opts = _options(fn, args, kwargs, {"NormalizationFactor": "normalization"})
    norm = opts.get("normalization", "batch-size")
    legal = ("batch-size", "all-elements", "none")
    if not isinstance(norm, str) or norm.lower() not in legal:
        raise ValueError(f"{fn}: invalid NormalizationFactor={norm!r}; the legal values are "
                         + ", ".join(repr(k) for k in legal))
    Y = Y if isinstance(Y, FormattedArray) else FormattedArray(Y)
    d = Y - targets
    norm = norm.lower()
    if norm == "all-elements":
        n = math.prod(d.shape)
    elif norm == "batch-size" and "B" in Y.format:
        n = Y.size("B")
    else:
        n = 1
    return _red.sum(d * d) / (2 * n)


def relu(X):
    """MATLAB ``Y = relu(X)``: :func:`fmtarray.relu` (``max(X, 0)``, NaN stays NaN)."""
    return _relu(X)


def softmax(X, *args, **kwargs):
    """MATLAB ``Y = softmax(X, DataFormat=...)``: :func:`fmtarray.softmax` over ``C``."""
    opts = _options("softmax", args, kwargs, {"DataFormat": "data_format"})
    return _softmax(X, **opts)


def fullyconnect(X, weights, bias, *args, **kwargs):
    """MATLAB ``Y = fullyconnect(X, weights, bias, DataFormat=...)``:
    :func:`fmtarray.fully_connect` (``weights`` ``OutputSize×InputSize``, the input's
    features flattened in MATLAB's column-major order)."""
    opts = _options("fullyconnect", args, kwargs, {"DataFormat": "data_format"})
    try:
        return fully_connect(X, weights, bias, **opts)
    except (TypeError, ValueError) as e:
        _reraise("fullyconnect", e, {"DataFormat": "data_format"})


def mean(X, dim=None):
    """MATLAB ``mean(X)``, ``mean(X, "all")``, ``mean(X, dim)``, ``mean(X, vecdim)``.

    ``dim`` is MATLAB's: ``"all"``; a 1-based dimension number or a list of them
    (dimensions of the canonical layout, e.g. ``1`` is ``C`` for ``CB`` data); or a str of
    labels (``"SB"``, fmtarray's form, as :func:`fmtarray.mean`). Without ``dim``, the
    first dimension whose size is not 1 (MATLAB's default). The reduced dims are dropped
    (MATLAB keeps them as singletons, which label broadcasting does not need). Python's
    0-based axes are :func:`fmtarray.mean`'s (``fmtarray.mean(x, "all")`` works too).
    """
    X = X if isinstance(X, FormattedArray) else FormattedArray(X)
    if dim is None:
        dims = [i for i, n in enumerate(X.shape) if n != 1][:1] or [0]
        return _red.mean(X, tuple(dims)) if X.ndim else _red.mean(X)
    if isinstance(dim, str):
        return _red.mean(X, dim)
    vec = [dim] if isinstance(dim, numbers.Integral) else list(dim)
    for d in vec:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= d <= X.ndim:
            raise ValueError(f"mean: dim must be 'all', labels, or 1-based dimension numbers "
                             f"in 1..{X.ndim} (MATLAB's), got {dim!r}")
    return _red.mean(X, tuple(int(d) - 1 for d in vec))
