"""Shared helpers of the MATLAB-named functions: ``Name, Value`` option parsing, error
messages that carry MATLAB's option names, and the option tables the learnable layers
share."""

from __future__ import annotations


def _options(func: str, args: tuple, kwargs: dict, table: dict) -> dict:
    """Translate MATLAB ``Name,Value`` pairs (positional) and ``Name=Value`` keywords.

    ``table`` maps MATLAB names to Python names.  Unknown names raise a ``TypeError``
    listing the legal ones.
    """
    if len(args) % 2:
        raise TypeError(
            f"{func}: options must come in Name, Value pairs; got an odd number of extra "
            f"arguments {args!r}"
        )
    pairs = list(zip(args[0::2], args[1::2])) + list(kwargs.items())
    lower = {k.lower(): v for k, v in table.items()}
    out = {}
    for name, value in pairs:
        if not isinstance(name, str) or name.lower() not in lower:
            raise TypeError(
                f"{func}: unknown option {name!r}; the options are " + ", ".join(table)
            )
        py = lower[name.lower()]
        if py in out:
            raise TypeError(f"{func}: option {name!r} given twice")
        out[py] = value
    return out


def _reraise(func: str, err: Exception, table: dict):
    """Re-raise a property error with the MATLAB option name alongside the Python one."""
    msg = str(err)
    for ml, py in table.items():
        if msg.startswith(py + " ") or msg.startswith(py + "="):
            msg = f"{func}: {ml} ({py}){msg[len(py):]}"
            break
    else:
        msg = f"{func}: {msg}"
    raise type(err)(msg) from err


def _make(func, cls, args, kwargs, table, *pos, pos_table=None):
    opts = _options(func, args, kwargs, table)
    try:
        return cls(*pos, **opts)
    except (TypeError, ValueError) as e:
        _reraise(func, e, {**(pos_table or {}), **table})


#: MATLAB options of every layer with weights and a bias (MATLAB name -> Python name)
LEARNABLE_OPTIONS = {
    "WeightsInitializer": "weights_initializer",
    "BiasInitializer": "bias_initializer",
    "Weights": "weights",
    "Bias": "bias",
    "WeightLearnRateFactor": "weight_learn_rate_factor",
    "BiasLearnRateFactor": "bias_learn_rate_factor",
    "WeightL2Factor": "weight_l2_factor",
    "BiasL2Factor": "bias_l2_factor",
    "Name": "name",
}

_CONV_EDGE_OPTIONS = {
    "DilationFactor": "dilation_factor",
    "Padding": "padding",
    "PaddingValue": "padding_value",
    "Cropping": "cropping",
    "NumChannels": "num_channels",
}


def conv_layer_options(*extra: str) -> dict:
    """The options table of a convolution layer: ``Stride``, the layer's ``extra``
    options (of ``DilationFactor``, ``Padding``, ``PaddingValue``, ``Cropping``,
    ``NumChannels``, in the given order), then :data:`LEARNABLE_OPTIONS`."""
    return {"Stride": "stride", **{k: _CONV_EDGE_OPTIONS[k] for k in extra},
            **LEARNABLE_OPTIONS}
