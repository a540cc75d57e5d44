"""``ImageInputLayer``: MATLAB's ``imageInputLayer``.

It turns raw images into ``SSCB`` FormattedArrays and normalises them. The
normalisation statistics are computed from the training data, as MATLAB does,
by :meth:`ImageInputLayer.compute_statistics` (the training loop calls it on the
whole training set before training).

The statistics (``mean``, ``standard_deviation``, ``min``, ``max``) are the layer's
non-learnable *state* (``state_names``): :meth:`fmtarray.Network.state` reports them,
:meth:`fmtarray.Network.update_state` sets them (checked against ``input_size``),
``Network.to`` moves them and :func:`fmtarray.save` stores them.
"""

from __future__ import annotations

import numbers

from .. import _backend, _validate
from ..array import FormattedArray
from ..ops.elementwise import astype
from .base import Layer, check_name

__all__ = ["ImageInputLayer", "image_input_layer", "NORMALIZATIONS"]

#: legal string values of ``normalization``
NORMALIZATIONS = ("zerocenter", "zscore", "rescale-symmetric", "rescale-zero-one", "none")
_DIMENSIONS = ("auto", "channel", "element", "all")
_X = "\u00d7"
#: which statistics each normalisation needs
_NEEDS = {
    "zerocenter": ("mean",),
    "zscore": ("mean", "standard_deviation"),
    "rescale-symmetric": ("min", "max"),
    "rescale-zero-one": ("min", "max"),
    "none": (),
}
_NEUTRAL = {"mean": 0.0, "standard_deviation": 1.0, "min": 0.0, "max": 1.0}


class ImageInputLayer(Layer):
    """Image input layer (MATLAB ``imageInputLayer``).

    Parameters
    ----------
    input_size
        ``(h, w)`` (one channel) or ``(h, w, c)``.
    normalization
        ``"zerocenter"`` (default: subtract ``mean``), ``"zscore"`` (subtract
        ``mean``, divide by ``standard_deviation``), ``"rescale-symmetric"``
        (to ``[-1, 1]`` with ``min``/``max``), ``"rescale-zero-one"`` (to ``[0, 1]``),
        ``"none"``, or a callable ``f(x) -> x`` on the ``SSCB`` FormattedArray.
    normalization_dimension
        ``"auto"`` (default; as MATLAB, per channel when the statistics are
        computed from data), ``"channel"`` (statistics ``1×1×c``), ``"element"``
        (``h×w×c``) or ``"all"`` (one value).
    mean, standard_deviation, min, max
        Given statistics (a scalar, ``c`` values, ``1×1×c`` or ``h×w×c``), or None
        to compute them with :meth:`compute_statistics`.
    name
        Layer name.

    Input conversion (:meth:`predict`): a FormattedArray ``SSCB`` (or ``SSC``,
    ``SSB``), or a raw array in MATLAB's layout ``h×w×c×N`` (also ``h×w×N`` when
    ``c = 1``, and a single ``h×w×c`` / ``h×w`` image). Integer images are cast to
    float32. Sizes must match ``input_size``.
    """

    default_name = "imageinput"
    #: the normalisation statistics are non-learnable state (moved and saved with it)
    state_names = ("mean", "standard_deviation", "min", "max")

    def __init__(self, input_size, *, normalization="zerocenter", normalization_dimension="auto",
                 mean=None, standard_deviation=None, min=None, max=None, name=""):
        self.name = check_name(name)
        self.input_size = _input_size(input_size)
        if callable(normalization):
            self.normalization = normalization
        elif isinstance(normalization, str) and normalization.lower() in NORMALIZATIONS:
            self.normalization = normalization.lower()
        else:
            raise ValueError(
                f"normalization must be one of {', '.join(repr(n) for n in NORMALIZATIONS)} or a "
                f"callable f(x) -> x, got {normalization!r}"
            )
        if not isinstance(normalization_dimension, str) or (
            normalization_dimension.lower() not in _DIMENSIONS
        ):
            raise ValueError(
                f"normalization_dimension must be one of {', '.join(map(repr, _DIMENSIONS))}, "
                f"got {normalization_dimension!r}"
            )
        self.normalization_dimension = normalization_dimension.lower()
        self.mean = self._stat(mean, "mean")
        self.standard_deviation = self._stat(standard_deviation, "standard_deviation")
        self.min = self._stat(min, "min")
        self.max = self._stat(max, "max")
        #: True once :meth:`compute_statistics` has run
        self.statistics_computed = False

    # statistics ----------------------------------------------------------------------
    def _stat(self, v, prop):
        """A given statistic as a 3-d raw array (``1×1×1``, ``1×1×c`` or ``h×w×c``)."""
        if v is None:
            return None
        h, w, c = self.input_size
        if isinstance(v, FormattedArray):
            v = v.data
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            host = _backend.namespace()  # a Python scalar: a host (NumPy) array of it
            v = host.asarray(float(v), dtype=host.float32)
        if not _backend.is_array(v):
            raise TypeError(
                f"{prop} must be an array (a scalar, c, 1{_X}1{_X}c or h{_X}w{_X}c values) or "
                f"None, got {type(v).__name__}"
            )
        xp = _backend.namespace(v)
        n = 1
        for s in v.shape:
            n *= int(s)
        if n == 1:
            shape = (1, 1, 1)
        elif n == c and (v.ndim <= 1 or tuple(v.shape)[-1] == c):
            shape = (1, 1, c)
        elif n == h * w * c:
            shape = (h, w, c)
        else:
            raise ValueError(
                f"{prop} of shape {tuple(v.shape)} does not fit input_size {self.input_size}: "
                f"give one value, {c} (1{_X}1{_X}{c}) or {h}{_X}{w}{_X}{c}"
            )
        return xp.reshape(v, shape)

    def _needed(self):
        return () if callable(self.normalization) else _NEEDS[self.normalization]

    def compute_statistics(self, x):
        """Compute the normalisation statistics from training data ``x`` (as MATLAB does
        before training) and store them; returns ``self``.

        ``x``: every training image, as a FormattedArray ``SSCB`` or a raw
        ``h×w×c×N`` array. Per channel (``normalization_dimension`` ``"auto"`` or
        ``"channel"``), per element, or over ``"all"``. The standard deviation is
        the population one (divides by the count); a zero standard deviation or
        ``max == min`` is replaced by 1 so that constant pixels stay finite.
        """
        xf = self._convert(x, check=True)
        xd = xf.data
        xp = _backend.namespace(xd)
        dim = self.normalization_dimension
        axes = {"auto": (0, 1, 3), "channel": (0, 1, 3), "element": (3,), "all": (0, 1, 2, 3)}[dim]
        h, w, c = self.input_size
        shape = {"element": (h, w, c), "all": (1, 1, 1)}.get(dim, (1, 1, c))

        def red(fn):
            return xp.reshape(fn(xd, axis=axes, keepdims=True), shape)

        needed = self._needed()
        if "mean" in needed:
            self.mean = red(xp.mean)
        if "standard_deviation" in needed:
            sd = red(xp.std)
            self.standard_deviation = xp.where(sd == 0, xp.ones_like(sd), sd)
        if "min" in needed:
            self.min = red(xp.min)
            self.max = red(xp.max)
        self.statistics_computed = True
        return self

    def update_state(self, state: dict) -> None:
        """Set statistics (``{"mean": ..., ...}``), each checked against ``input_size``
        as the constructor checks them (a scalar, ``c``, ``1×1×c`` or ``h×w×c`` values)."""
        for k, v in state.items():
            if k not in self.state_names:
                raise ValueError(
                    f"image input layer {self.name!r} has no state {k!r}; its state is "
                    f"{', '.join(self.state_names)}"
                )
            setattr(self, k, self._stat(v, k))

    # protocol ------------------------------------------------------------------------
    def example_input(self, *, xp=None, dtype=None, device=None):
        """A zero ``SSCB`` batch of one image (what :class:`fmtarray.Network` initialises with)."""
        xp = xp if xp is not None else _backend.namespace()
        dtype = dtype if dtype is not None else xp.float32
        h, w, c = self.input_size
        return FormattedArray._wrap(xp.zeros((h, w, c, 1), dtype=dtype, device=device), "SSCB")

    def initialize(self, x=None, *, seed=None):
        """Fill statistics that are still empty with neutral values (mean 0, standard
        deviation 1, min 0, max 1) in ``x``'s library, dtype and device.

        Statistics from data come from :meth:`compute_statistics`; initialising
        never overwrites them.
        """
        if x is None:
            x = self.example_input()
        xf = self._convert(x, check=True)
        xp = _backend.namespace(xf.data)
        h, w, c = self.input_size
        for prop in self._needed():
            if getattr(self, prop) is None:
                setattr(self, prop, xp.full((1, 1, c), _NEUTRAL[prop], dtype=xf.dtype,
                                            device=xf.device))
        return self

    def _convert(self, x, check=True):
        """``x`` as an ``SSCB`` FormattedArray (see the class docstring)."""
        h, w, c = self.input_size
        who = f"image input layer {self.name!r}" if self.name else "image input layer"
        if isinstance(x, FormattedArray) and x.format:
            fmt = x.format
            if fmt == "SSCB":
                out = x
            elif fmt == "SSC":
                out = FormattedArray(x, "SSCB")
            elif fmt == "SSB" and c == 1:
                out = FormattedArray(x, "SSBC")
            else:
                raise ValueError(
                    f"{who} takes images of format 'SSCB' (or 'SSC', 'SSB' for one channel), got "
                    f"format {fmt!r} with shape {x.shape}"
                )
        else:
            raw = x.data if isinstance(x, FormattedArray) else x
            if not _backend.is_array(raw):
                raise TypeError(
                    f"{who}: expected images as an array (h{_X}w{_X}c{_X}N, MATLAB's layout) or "
                    f"a FormattedArray 'SSCB', got {type(x).__module__}.{type(x).__name__}"
                )
            shape = tuple(raw.shape)
            if raw.ndim == 4:
                fmt = "SSCB"
            elif raw.ndim == 3 and shape == (h, w, c) and c > 1:
                fmt = "SSC"  # one image
            elif raw.ndim == 3 and c == 1:
                fmt = "SSB"
            elif raw.ndim == 2 and c == 1:
                fmt = "SS"
            else:
                raise ValueError(
                    f"{who}: cannot read an array of shape {shape} as images of size "
                    f"{h}{_X}{w}{_X}{c}; give h{_X}w{_X}c{_X}N (MATLAB's layout) or a "
                    "FormattedArray 'SSCB'"
                )
            out = FormattedArray(x, {"SSB": "SSBC", "SS": "SSCB"}.get(fmt, fmt))
            if fmt == "SSC":
                out = FormattedArray(out, "SSCB")
        xp = _backend.namespace(out.data)
        if not _backend.isdtype(xp, out.dtype, "real floating"):
            out = astype(out, xp.float32)  # integer images: MATLAB converts them to single
        if check and tuple(out.shape[:3]) != (h, w, c):
            raise ValueError(
                f"{who}: input of size {_X.join(map(str, out.shape[:3]))} (format 'SSCB', shape "
                f"{out.shape}) does not match input_size {h}{_X}{w}{_X}{c}"
            )
        return out

    def predict(self, x):
        """Convert ``x`` to ``SSCB`` and normalise it."""
        xf = self._convert(x)
        norm = self.normalization
        if callable(norm):
            y = norm(xf)
            return y if isinstance(y, FormattedArray) else FormattedArray(y, "SSCB")
        if norm == "none":
            return xf
        missing = [p for p in self._needed() if getattr(self, p) is None]
        if missing:
            raise ValueError(
                f"image input layer {self.name!r}: '{norm}' normalization needs "
                f"{' and '.join(missing)}; call compute_statistics(training_images) (or "
                "initialize() for neutral values) first, or pass them to the constructor"
            )

        def s(v):
            return FormattedArray._wrap(v, "SSC")

        if norm == "zerocenter":
            return xf - s(self.mean)
        if norm == "zscore":
            return (xf - s(self.mean)) / s(self.standard_deviation)
        lo, hi = self.min, self.max
        xp = _backend.namespace(hi)
        rng = hi - lo
        rng = xp.where(rng == 0, xp.ones_like(rng), rng)
        if norm == "rescale-zero-one":
            return (xf - s(lo)) / s(rng)
        return (xf - s(lo)) * (2.0 / s(rng)) - 1.0

    # display -------------------------------------------------------------------------
    def type_name(self) -> str:
        return "Image Input"

    def description(self) -> str:
        size = _X.join(str(n) for n in self.input_size)
        norm = self.normalization
        if callable(norm):
            return f"{size} images with custom normalization"
        if norm == "none":
            return f"{size} images"
        return f"{size} images with '{norm}' normalization"

    def __repr__(self):
        return f"ImageInputLayer(name={self.name!r}, {self.description()})"


def _input_size(v):
    """``(h, w)`` or ``(h, w, c)`` of positive integers (the shared normaliser: lists,
    tuples, NumPy rows, integral floats; 2.7 is an error, not 2)."""
    legal = "(h, w) or (h, w, c) of positive integers"
    if _validate.scalar(v) is not None:
        raise TypeError(f"input_size={v!r}: expected {legal}")
    t = _validate.int_list("input_size", v, (2, 3), 1, legal)
    return t + (1,) if len(t) == 2 else t


def image_input_layer(input_size, **properties) -> ImageInputLayer:
    """Create an :class:`ImageInputLayer` (MATLAB ``imageInputLayer``)."""
    return ImageInputLayer(input_size, **properties)
