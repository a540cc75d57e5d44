"""Weight and bias initialisers (SPEC §3.5), MATLAB's names and formulas.

An initialiser is a name or a callable ``f(shape) -> array``:

=================  ==============================================================
``"glorot"``       uniform on ``[-a, a]``, ``a = sqrt(6 / (numIn + numOut))``, i.e. zero
                   mean and variance ``2 / (numIn + numOut)`` (weights only)
``"he"``           normal, zero mean, variance ``2 / numIn`` (weights only)
``"narrownormal"`` normal, zero mean, standard deviation 0.01
``"zeros"``        zeros
``"ones"``         ones
callable           ``f(shape)``; any array-API array (or nested list) of that shape
=================  ==============================================================

For a convolution ``numIn = h·w·C`` and ``numOut = h·w·F`` (weights ``h × w × C × F``).

Random draws are made on the host by :mod:`fmtarray._backend` from ``seed`` (an
int, a ``numpy.random.Generator`` or ``None`` for fresh entropy), so the same
seed gives the same numbers on every backend; the result is created in the
target namespace, dtype and device.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend

__all__ = [
    "WEIGHTS_INITIALIZERS",
    "BIAS_INITIALIZERS",
    "check_initializer",
    "check_seed",
    "initialize_array",
    "sub_seed",
]

#: legal names for ``weights_initializer``
WEIGHTS_INITIALIZERS = ("glorot", "he", "narrownormal", "zeros", "ones")
#: legal names for ``bias_initializer``
BIAS_INITIALIZERS = ("zeros", "ones", "narrownormal")


def check_initializer(value, prop: str, legal: tuple[str, ...]):
    """Return ``value`` normalised (lower-case name or the callable); error otherwise.

    ``prop`` is the property name used in the error message.
    """
    if callable(value):
        return value
    if isinstance(value, str):
        v = value.lower()
        if v in legal:
            return v
        raise ValueError(
            f"{prop} must be one of {', '.join(repr(n) for n in legal)} or a callable "
            f"f(shape) -> array, got {value!r}"
        )
    raise TypeError(
        f"{prop} must be one of {', '.join(repr(n) for n in legal)} or a callable "
        f"f(shape) -> array, got {type(value).__name__} {value!r}"
    )


_SEED_LEGAL = "legal values: a non-negative integer, a numpy.random.Generator or None"


def check_seed(seed, who: str = "initialize"):
    """Return ``seed`` if it is a legal random seed, else raise naming ``who``'s argument.

    Legal: ``None`` (fresh entropy), a ``numpy.random.Generator``, a non-negative
    integer, or the ``[seed, k]`` lists :func:`sub_seed` derives from one.
    """
    import numpy as np

    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, list) and seed and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seed):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{who}: invalid seed={seed!r} ({type(seed).__name__}); {_SEED_LEGAL}")
    if seed < 0:
        raise ValueError(f"{who}: invalid seed={seed!r}; {_SEED_LEGAL}")
    return seed


def sub_seed(seed, k: int):
    """A seed for the ``k``-th independent draw derived from ``seed``.

    ``k = 0`` gives ``seed`` itself (so a layer's weights drawn with seed ``s`` are
    exactly ``numpy.random.default_rng(s)``'s draws); a ``Generator`` is returned
    as it is (its stream advances); ``None`` stays ``None``.
    """
    if seed is None or k == 0 or not isinstance(seed, numbers.Integral):
        return seed
    return [int(seed), int(k)]


def initialize_array(init, shape, *, fan_in=None, fan_out=None, seed=None, xp=None, dtype=None,
                     device=None, prop="weights_initializer"):
    """Create an array of ``shape`` with initialiser ``init``.

    Parameters
    ----------
    init
        An initialiser name (see the module docstring) or a callable ``f(shape)``.
    shape
        Tuple of ints, passed to a callable as it is.
    fan_in, fan_out
        ``numIn`` and ``numOut`` for ``"glorot"``/``"he"``.
    seed
        int, ``numpy.random.Generator`` or ``None``.
    xp, dtype, device
        Target namespace (default NumPy), dtype (default ``xp.float32``) and device.
    prop
        The property name for error messages.
    """
    check_seed(seed)
    shape = tuple(int(s) for s in shape)
    xp = xp if xp is not None else _backend.namespace()
    dtype = dtype if dtype is not None else xp.float32
    if callable(init):
        return _from_callable(init, shape, xp, dtype, device, prop)
    if init == "zeros":
        return xp.zeros(shape, dtype=dtype, device=device)
    if init == "ones":
        return xp.ones(shape, dtype=dtype, device=device)
    kw = dict(seed=seed, xp=xp, dtype=dtype, device=device)
    if init == "narrownormal":
        return _backend.random_normal(shape, 0.0, 0.01, **kw)
    if init == "glorot":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return _backend.random_uniform(shape, -bound, bound, **kw)
    if init == "he":
        return _backend.random_normal(shape, 0.0, math.sqrt(2.0 / fan_in), **kw)
    raise ValueError(f"{prop}: unknown initialiser {init!r}")


def _from_callable(f, shape, xp, dtype, device, prop):
    name = getattr(f, "__name__", repr(f))
    a = f(shape)
    if isinstance(a, (list, tuple)):
        a = xp.asarray(a, dtype=dtype)
    elif not _backend.is_array(a):
        raise TypeError(
            f"{prop}: the callable {name} must return an array of shape {shape}, "
            f"got {type(a).__module__}.{type(a).__name__}"
        )
    elif _backend.namespace(a) is not xp:
        # e.g. a NumPy-returning initialiser for a torch layer: it is the initialiser's
        # job to create the parameter where the input lives
        a = xp.asarray(_backend.to_numpy(a))
    if a.dtype != dtype:
        a = xp.astype(a, dtype)
    if device is not None and _backend.device(a) != device:
        a = _backend.to_device(a, device)
    return a
