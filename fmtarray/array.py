"""``FormattedArray``: an array of any array-API library plus dim labels.

The class is thin: construction, accessors and Python operators.  The math is in
:mod:`fmtarray.ops`; the format algebra in :mod:`fmtarray._format`.

Imports go one way (``array`` → nothing in ``ops`` at import time): the
operators and the methods that need an op look :mod:`fmtarray.ops.elementwise`
up on first use (:func:`_ops`), so this module can be imported on its own and
``ops`` modules can import it.
"""

from __future__ import annotations


from . import _backend, _format

__all__ = ["FormattedArray", "dims", "finddim", "stripdims", "extractdata", "as_formatted",
           "to_numpy"]

_SIZE_SEP = "\u00d7"  # ×


class FormattedArray:
    """An array with dimension labels, MATLAB ``dlarray`` style.

    Parameters
    ----------
    data
        An array of any array-API library (NumPy, CuPy, torch, Dask,
        ``array_api_strict``, ...), or another ``FormattedArray`` (re-formatting:
        the new format describes its current canonical dims).
    fmt
        Labels, one per dim: ``S`` spatial, ``C`` channel, ``B`` batch, ``T``
        time, ``U`` unspecified.  ``""`` (default) makes an unformatted array.

    The data is permuted (as a view where the library gives views) to the
    canonical order ``S…S C B T U…U``; a format longer than ``data.ndim`` appends
    trailing singleton dims.

    Examples
    --------
    >>> import numpy as np, fmtarray as fa
    >>> x = fa.FormattedArray(np.zeros((8, 3, 28, 28)), "BCSS")
    >>> x.format, x.shape
    ('SSCB', (28, 28, 3, 8))
    """

    __slots__ = ("_data", "_fmt", "_node", "__weakref__")
    __array_priority__ = 1000  # make NumPy defer to our reflected operators

    def __init__(self, data, fmt: str = ""):
        if isinstance(data, FormattedArray):
            if data._node is not None:
                # re-formatting a traced array stays differentiable
                out = (_ew or _ops())._relabel(data, fmt)
                self._data, self._fmt, self._node = out._data, out._fmt, out._node
                return
            data = data._data
        if not _backend.is_array(data):
            raise TypeError(
                f"data must be an array of an array-API library (numpy, cupy, torch, dask, "
                f"array_api_strict, ...), got {type(data).__module__}.{type(data).__name__}; "
                "wrap Python lists with numpy.asarray (or your library's asarray) first"
            )
        data, fmt = _apply_format(data, fmt)
        self._data = data
        self._fmt = fmt
        self._node = None

    @classmethod
    def _wrap(cls, data, fmt: str):
        """Internal constructor: ``data`` is already canonical for ``fmt``."""
        obj = object.__new__(cls)
        obj._data = data
        obj._fmt = fmt
        obj._node = None
        return obj

    # accessors ---------------------------------------------------------------
    @property
    def data(self):
        """The backend array, in canonical dim order."""
        return self._data

    @property
    def format(self) -> str:
        """The format string (``""`` when unformatted)."""
        return self._fmt

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def device(self):
        return _backend.device(self._data)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def xp(self):
        """The array-API namespace of the data."""
        return _backend.namespace(self._data)

    def size(self, label: str) -> tuple[int, ...] | int:
        """Size of the dim labelled ``label``; a tuple for ``S``/``U``; ``1`` when absent.

        For ``C``/``B``/``T`` this is an int (1 when the label is absent, as in
        MATLAB); for ``S``/``U`` a tuple with one size per such dim.
        """
        pos = _format.finddim(self._fmt, _label(label))
        shape = self.shape
        if label in "SU":
            return tuple(shape[i] for i in pos)
        return shape[pos[0]] if pos else 1

    def __len__(self):
        """Size of the first (canonical) dim; a 0-d array has no length (``TypeError``,
        as in NumPy and torch)."""
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d FormattedArray (it has no dims); use x.shape")
        return self.shape[0]

    # hand-offs to other libraries: the data in canonical order, as x.data gives it
    __array_ufunc__ = None  # NumPy ufuncs do not strip the labels: ndarray + x uses ours

    def _export(self, how):
        if self._node is not None:
            raise TypeError(
                f"{how} of a traced FormattedArray (inside grad / value_and_grad) would drop it "
                "from the gradient (its gradient would silently be zero); use fmtarray ops on "
                "it, or extractdata(x) outside the differentiated function"
            )
        return self._data

    def __array__(self, dtype=None, copy=None):
        """``numpy.asarray(x)``: the data in canonical order (as ``x.data``); the library's
        own ``__array__`` converts it (a GPU array refuses, a Dask array computes)."""
        import numpy as np

        data = self._export("numpy.asarray")
        if isinstance(data, np.ndarray):
            if copy:
                return np.array(data, dtype=dtype, copy=True)
            return data if dtype is None else data.astype(dtype, copy=False)
        kw = {} if copy is None else {"copy": copy}
        return np.asarray(data, dtype=dtype, **kw) if kw else np.asarray(data, dtype=dtype)

    def __dlpack__(self, **kwargs):
        """DLPack export of the data in canonical order (``torch.as_tensor(x)``,
        ``numpy.from_dlpack(x)``), zero-copy where the library allows it."""
        data = self._export("DLPack export")
        if not hasattr(data, "__dlpack__"):
            raise TypeError(
                f"the {_backend.library_name(data)} array in this FormattedArray does not support "
                "DLPack; use extractdata(x) (or x.data) and convert it with its library"
            )
        return data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        data = self._data
        if not hasattr(data, "__dlpack_device__"):
            raise TypeError(
                f"the {_backend.library_name(data)} array in this FormattedArray does not support "
                "DLPack; use extractdata(x) (or x.data) and convert it with its library"
            )
        return data.__dlpack_device__()

    def __repr__(self) -> str:
        shape = self.shape
        if self._fmt:
            body = " ".join(f"{lab}({n})" for lab, n in zip(self._fmt, shape))
            head = f"{_SIZE_SEP.join(map(str, shape))} {self._fmt} FormattedArray"
        else:
            body = "unformatted"
            head = f"{_SIZE_SEP.join(map(str, shape)) or 'scalar'} FormattedArray"
        lib = _backend.library_name(self._data)
        dev = self.device
        dev_s = "" if str(dev) in ("cpu", "CPU_DEVICE") else f", device={dev}"
        traced = ", traced" if self._node is not None else ""
        return f"{head} [{body}] dtype={_dtype_name(self.dtype)} backend={lib}{dev_s}{traced}"

    def __str__(self) -> str:
        head = repr(self)
        try:
            vals = str(_backend.to_numpy(self._data))
        except Exception:  # lazy or remote data: do not force it for a print
            vals = "<data not materialised>"
        return f"{head}\n{vals}"

    def __bool__(self):
        return bool(self._data)

    def __float__(self):
        return float(self._data)

    def __array_namespace__(self, api_version=None):
        raise TypeError(
            "a FormattedArray is not itself an array-API array; use extractdata(x) or x.data "
            "to get the backend array"
        )

    def __getitem__(self, key):
        return (_ew or _ops()).getitem(self, key)

    # conversions ------------------------------------------------------------
    def astype(self, dtype):
        return (_ew or _ops()).astype(self, dtype)

    def to_device(self, device):
        return (_ew or _ops()).to_device(self, device)

    def stripdims(self, fmt=None):
        return stripdims(self, fmt)

    def extractdata(self):
        return extractdata(self)

    def finddim(self, label):
        return finddim(self, label)

    def dims(self):
        return self._fmt

    # operators (delegate to ops.elementwise, looked up on first use) ----------
    def __add__(self, o):
        return (_ew or _ops()).add(self, o)

    def __radd__(self, o):
        return (_ew or _ops()).add(o, self)

    def __sub__(self, o):
        return (_ew or _ops()).subtract(self, o)

    def __rsub__(self, o):
        return (_ew or _ops()).subtract(o, self)

    def __mul__(self, o):
        return (_ew or _ops()).multiply(self, o)

    def __rmul__(self, o):
        return (_ew or _ops()).multiply(o, self)

    def __truediv__(self, o):
        return (_ew or _ops()).divide(self, o)

    def __rtruediv__(self, o):
        return (_ew or _ops()).divide(o, self)

    def __pow__(self, o):
        return (_ew or _ops()).pow(self, o)

    def __rpow__(self, o):
        return (_ew or _ops()).pow(o, self)

    def __neg__(self):
        return (_ew or _ops()).negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return (_ew or _ops()).abs(self)

    def __lt__(self, o):
        return (_ew or _ops()).less(self, o)

    def __le__(self, o):
        return (_ew or _ops()).less_equal(self, o)

    def __gt__(self, o):
        return (_ew or _ops()).greater(self, o)

    def __ge__(self, o):
        return (_ew or _ops()).greater_equal(self, o)

    def __eq__(self, o):  # noqa: D105  (elementwise, like every array library)
        return (_ew or _ops()).equal(self, o)

    def __ne__(self, o):
        return (_ew or _ops()).not_equal(self, o)

    __hash__ = None


def _dtype_name(dt) -> str:
    s = str(dt)
    for pre in ("torch.", "dtype('", "array_api_strict."):
        s = s.replace(pre, "")
    return s.rstrip("')")


def _apply_format(data, fmt):
    fmt = _format.as_format(fmt) or ""
    nd = data.ndim
    if len(fmt) < nd:
        if fmt == "":
            return data, ""
        raise ValueError(
            f"format {fmt!r} has {len(fmt)} labels but the data has {nd} dims "
            f"(shape {tuple(data.shape)}); give one label per dim (a longer format appends "
            "trailing singleton dims, a shorter one is not allowed)"
        )
    xp = _backend.namespace(data)
    if len(fmt) > nd:
        data = xp.reshape(data, tuple(data.shape) + (1,) * (len(fmt) - nd))
    canon, perm = _format.canonicalize(fmt)
    if perm != tuple(range(len(perm))):
        data = xp.permute_dims(data, perm)
    return data, canon


def as_formatted(x) -> FormattedArray:
    """``x`` as a FormattedArray (raw arrays become unformatted)."""
    if isinstance(x, FormattedArray):
        return x
    return FormattedArray(x)


def dims(x) -> str:
    """The format of ``x`` (``""`` when unformatted or not a FormattedArray)."""
    return x._fmt if isinstance(x, FormattedArray) else ""


def finddim(x, label: str) -> tuple[int, ...]:
    """Positions of ``label`` in the format of ``x`` (empty tuple when absent)."""
    return _format.finddim(dims(x), _label(label))


def _label(label):
    if not isinstance(label, str):
        raise TypeError(f"label must be one of 'S', 'C', 'B', 'T', 'U', got "
                        f"{type(label).__name__} {label!r}")
    return label


def stripdims(x, fmt: str | None = None):
    """Remove the labels of ``x``; with ``fmt`` (a permutation of ``dims(x)``),
    first permute the data to that order.  Stays differentiable."""
    x = as_formatted(x)
    return (_ew or _ops())._relabel_strip(x, _format.as_format(fmt, "fmt"))


def extractdata(x):
    """The backend array of ``x`` in canonical order (no tracing)."""
    return x._data if isinstance(x, FormattedArray) else x


def to_numpy(x, fmt: str | None = None):
    """``x`` as a NumPy array on the host.

    Parameters
    ----------
    x
        A :class:`FormattedArray` or an array of any array-API library (NumPy, torch,
        JAX, CuPy, Dask, ``array_api_strict``…); a traced FormattedArray gives its
        values, as :func:`extractdata` does.
    fmt
        Optional: a permutation of ``x``'s format (``"BCSS"`` for torch's NCHW), the order
        to return the dims in. By default the dims come in ``x``'s canonical order
        ``S…S C B T U…U``, the order of ``x.data`` and of MATLAB's ``dlarray``
        (``extractdata`` in MATLAB gives the same layout), so the result is the array
        MATLAB would hold.

    Data on another device (a CUDA tensor, a CuPy array) is copied to the host, and a
    Dask array is computed: calling ``to_numpy`` is the explicit request for that. NumPy
    data comes back as it is, without a copy (a view when ``fmt`` permutes it): copy it
    (``numpy.array(a)``) before writing to it.

    Examples
    --------
    >>> import numpy as np, fmtarray as fa
    >>> x = fa.FormattedArray(np.zeros((8, 3, 28, 28)), "BCSS")
    >>> fa.to_numpy(x).shape, fa.to_numpy(x, "BCSS").shape
    ((28, 28, 3, 8), (8, 3, 28, 28))
    """
    if isinstance(x, FormattedArray):
        if fmt is not None:
            x = stripdims(x, fmt)
        return _backend.to_numpy(x._data)
    if not _backend.is_array(x):
        raise TypeError(
            f"to_numpy: x must be a FormattedArray or an array of an array-API library "
            f"(numpy, torch, jax, cupy, dask, array_api_strict, ...), got "
            f"{type(x).__module__}.{type(x).__name__}"
        )
    if fmt is not None:
        raise ValueError(f"to_numpy: fmt={fmt!r} needs a formatted x (a FormattedArray); a "
                         "raw array has no labels to order by")
    return _backend.to_numpy(x)


_ew = None  # fmtarray.ops.elementwise once an operator has been used


def _ops():
    """:mod:`fmtarray.ops.elementwise`, imported on first use (it imports this module)."""
    global _ew
    from .ops import elementwise

    _ew = elementwise
    return elementwise
