"""``BatchNormalizationLayer``: MATLAB's ``batchNormalizationLayer``.

Learnables ``offset`` and ``scale``; state ``trained_mean`` and
``trained_variance``. :meth:`~BatchNormalizationLayer.forward` (training)
normalises with the mini-batch statistics and returns the updated running
statistics as state; :meth:`~BatchNormalizationLayer.predict` uses the trained
ones. The arithmetic is :func:`fmtarray.ops.nn.batch_norm`.
"""

from __future__ import annotations

import math
import numbers

from ..ops.nn import batch_norm
from .base import Layer
from .initializers import check_initializer, initialize_array, sub_seed

__all__ = ["BatchNormalizationLayer", "batch_normalization_layer"]

_X = "\u00d7"
_INITS = ("zeros", "ones", "narrownormal")


def _number(v, prop, *, low=0.0, strict=False, high=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{prop} must be a finite number, got {v!r}")
    if v < low or (strict and v == low) or (high is not None and v > high):
        rng = f"> {low}" if strict else f">= {low}"
        if high is not None:
            rng += f" and <= {high}"
        raise ValueError(f"{prop} must be {rng}, got {v!r}")
    return v


class BatchNormalizationLayer(Layer):
    """Batch normalisation per channel (MATLAB ``batchNormalizationLayer``).

    Parameters
    ----------
    num_channels
        ``"auto"`` (default) or the number of channels.
    epsilon
        Added to the variance (default 1e-5).
    mean_decay, variance_decay
        Decay of the running statistics (default 0.1 each):
        ``new = decay · batch + (1 − decay) · old``.
    offset, scale, trained_mean, trained_variance
        Given values (one per channel) or None: ``offset_initializer``
        (``"zeros"``), ``scale_initializer`` (``"ones"``), mean 0 and variance 1.
        Stored as MATLAB does: ``1×1×C`` for 2-D images (one 1 per ``S`` dim),
        ``C×1`` without ``S`` dims.
    offset_learn_rate_factor, scale_learn_rate_factor, offset_l2_factor, scale_l2_factor
        Default 1.
    name
        Layer name.
    """

    learnable_names = ("offset", "scale")
    state_names = ("trained_mean", "trained_variance")
    default_name = "batchnorm"

    def __init__(self, *, num_channels="auto", epsilon=1e-5, mean_decay=0.1, variance_decay=0.1,
                 offset=None, scale=None, trained_mean=None, trained_variance=None,
                 offset_initializer="zeros", scale_initializer="ones", offset_learn_rate_factor=1,
                 scale_learn_rate_factor=1, offset_l2_factor=1, scale_l2_factor=1, name=""):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
        self.name = name
        if isinstance(num_channels, str):
            if num_channels != "auto":
                raise ValueError(f"num_channels must be 'auto' or a positive integer, got {num_channels!r}")
        elif isinstance(num_channels, bool) or not isinstance(num_channels, numbers.Integral) \
                or num_channels < 1:
            raise ValueError(f"num_channels must be 'auto' or a positive integer, got {num_channels!r}")
        self.num_channels = num_channels
        self.epsilon = _number(epsilon, "epsilon", strict=True)
        self.mean_decay = _number(mean_decay, "mean_decay", high=1.0)
        self.variance_decay = _number(variance_decay, "variance_decay", high=1.0)
        self.offset_initializer = check_initializer(offset_initializer, "offset_initializer", _INITS)
        self.scale_initializer = check_initializer(scale_initializer, "scale_initializer", _INITS)
        for prop, v in (("offset_learn_rate_factor", offset_learn_rate_factor),
                        ("scale_learn_rate_factor", scale_learn_rate_factor),
                        ("offset_l2_factor", offset_l2_factor),
                        ("scale_l2_factor", scale_l2_factor)):
            setattr(self, prop, _number(v, prop))
        self.offset = offset
        self.scale = scale
        self.trained_mean = trained_mean
        self.trained_variance = trained_variance
        for prop in ("offset", "scale", "trained_mean", "trained_variance"):
            v = getattr(self, prop)
            if v is None:
                continue
            n = math.prod(tuple(v.shape))
            if self.num_channels == "auto":
                self.num_channels = n
            elif n != self.num_channels:
                raise ValueError(
                    f"{prop} of shape {tuple(v.shape)} must have num_channels = "
                    f"{self.num_channels} values"
                )

    def _channels(self, x):
        fmt = self._require_label(x, "C", "it normalises each channel")
        c = x.shape[fmt.index("C")]
        if self.num_channels != "auto" and c != self.num_channels:
            raise ValueError(
                f"{self._who()} has num_channels {self.num_channels} but the input (format "
                f"{fmt!r}, shape {x.shape}) has {c} channels"
            )
        return c

    def initialize(self, x, *, seed=None):
        """Set ``num_channels`` from ``x`` and fill empty parameters and statistics."""
        c = self._channels(x)
        ns = x.format.count("S")
        shape = (1,) * ns + (c,) if ns else (c, 1)
        xp = x.xp
        dtype = x.dtype if xp.isdtype(x.dtype, "real floating") else xp.float32
        kw = dict(xp=xp, dtype=dtype, device=x.device, fan_in=c, fan_out=c)
        if self.offset is None:
            self.offset = initialize_array(self.offset_initializer, shape, seed=seed,
                                           prop="offset_initializer", **kw)
        if self.scale is None:
            self.scale = initialize_array(self.scale_initializer, shape, seed=sub_seed(seed, 1),
                                          prop="scale_initializer", **kw)
        if self.trained_mean is None:
            self.trained_mean = xp.zeros(shape, dtype=dtype, device=x.device)
        if self.trained_variance is None:
            self.trained_variance = xp.ones(shape, dtype=dtype, device=x.device)
        self.num_channels = c
        return self

    def _ready(self, x):
        self._channels(x)
        if any(getattr(self, p) is None for p in ("offset", "scale", "trained_mean",
                                                   "trained_variance")):
            self.initialize(x)

    def predict(self, x):
        """Normalise with the trained statistics."""
        self._ready(x)
        return batch_norm(x, self.offset, self.scale, self.trained_mean, self.trained_variance,
                          self.epsilon, training=False)

    def forward(self, x):
        """Normalise with the mini-batch statistics; returns ``(y, updated statistics)``."""
        self._ready(x)
        y, m, v = batch_norm(x, self.offset, self.scale, self.trained_mean, self.trained_variance,
                             self.epsilon, training=True, mean_decay=self.mean_decay,
                             variance_decay=self.variance_decay)
        return y, {"trained_mean": m, "trained_variance": v}

    def type_name(self) -> str:
        return "Batch Normalization"

    def description(self) -> str:
        if self.num_channels == "auto":
            return "Batch normalization"
        return f"Batch normalization with {self.num_channels} channels"

    def __repr__(self):
        return f"BatchNormalizationLayer(name={self.name!r}, num_channels={self.num_channels!r})"


def batch_normalization_layer(**properties) -> BatchNormalizationLayer:
    """Create a :class:`BatchNormalizationLayer` (MATLAB ``batchNormalizationLayer``)."""
    return BatchNormalizationLayer(**properties)


