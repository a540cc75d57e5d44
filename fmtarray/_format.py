"""Format algebra: labels, canonical order, label broadcasting, conv-dim choice.

Pure Python, cached, and knows nothing about arrays.  Everything here works on
format strings and shape tuples only.
"""

from __future__ import annotations

from functools import lru_cache

LABELS = "SCBTU"
_RANK = {"S": 0, "C": 1, "B": 2, "T": 3, "U": 4}
_SINGLE = "CBT"


def as_format(fmt, name: str = "format"):
    """A format given as a str, or as a list/tuple of one-letter labels (``["S", "S",
    "C", "B"]``, MATLAB's cell array of labels), as a validated str; ``None`` stays
    ``None``. Anything else is a ``TypeError`` naming ``name``."""
    if fmt is None or isinstance(fmt, str):
        return fmt if fmt is None else validate(fmt)
    if isinstance(fmt, (list, tuple)) and all(isinstance(c, str) for c in fmt):
        return validate("".join(fmt))
    raise TypeError(
        f"{name} must be a str of the labels 'S', 'C', 'B', 'T', 'U' (e.g. 'SSCB'), or a "
        f"list of them, got {type(fmt).__name__} {fmt!r}"
    )


def validate(fmt: str) -> str:
    """Return ``fmt`` if it is a legal format string, else raise ``ValueError``
    (``TypeError`` for a non-str, instead of an "unhashable type" from the cache)."""
    if not isinstance(fmt, str):
        raise TypeError(
            f"format must be a str of the labels 'S', 'C', 'B', 'T', 'U' (e.g. 'SSCB'; a list "
            f"of labels is accepted where a format is given), got {type(fmt).__name__} {fmt!r}"
        )
    return _validate(fmt)


@lru_cache(maxsize=1024)
def _validate(fmt: str) -> str:
    for ch in fmt:
        if ch not in _RANK:
            raise ValueError(
                f"format {fmt!r} has unknown label {ch!r}; legal labels are 'S' (spatial), "
                "'C' (channel), 'B' (batch), 'T' (time) and 'U' (unspecified)"
            )
    for ch in _SINGLE:
        if fmt.count(ch) > 1:
            raise ValueError(
                f"format {fmt!r} repeats label {ch!r}; 'C', 'B' and 'T' may appear at most once "
                "(only 'S' and 'U' may repeat)"
            )
    return fmt


def canonicalize(fmt: str) -> tuple[str, tuple[int, ...]]:
    """Canonical format of ``fmt`` and the permutation that takes data in ``fmt``
    order to canonical order (``canonical_axis[i] = perm[i]``).

    The sort is stable, so repeated ``S`` (and ``U``) keep their relative order.
    """
    if not isinstance(fmt, str):
        validate(fmt)  # the TypeError, not "unhashable type" from the cache
    return _canonicalize(fmt)


@lru_cache(maxsize=1024)
def _canonicalize(fmt: str) -> tuple[str, tuple[int, ...]]:
    validate(fmt)
    perm = tuple(sorted(range(len(fmt)), key=lambda i: _RANK[fmt[i]]))
    return "".join(fmt[i] for i in perm), perm


def is_canonical(fmt: str) -> bool:
    return canonicalize(fmt)[0] == fmt


@lru_cache(maxsize=1024)
def finddim(fmt: str, label: str) -> tuple[int, ...]:
    """Positions of ``label`` in ``fmt`` (empty tuple when absent)."""
    if not isinstance(label, str) or len(label) != 1 or label not in _RANK:
        raise ValueError(
            f"label must be one of 'S', 'C', 'B', 'T', 'U', got {label!r}"
        )
    return tuple(i for i, ch in enumerate(fmt) if ch == label)


@lru_cache(maxsize=1024)
def reduction_axes(fmt: str, labels: str) -> tuple[int, ...]:
    """Axes of ``fmt`` whose label is in ``labels`` (``"S"`` selects every S dim)."""
    if not isinstance(labels, str):
        raise TypeError(f"dims must be a str of labels such as 'S' or 'SB', got {labels!r}")
    if not fmt:
        raise ValueError(
            f"cannot reduce over labels {labels!r} of an unformatted array; "
            "pass integer axes or give the array a format"
        )
    for ch in labels:
        if ch not in _RANK:
            raise ValueError(
                f"dims {labels!r} has unknown label {ch!r}; legal labels are 'S', 'C', 'B', 'T', 'U'"
            )
        if ch not in fmt:
            raise ValueError(f"dims {labels!r}: label {ch!r} is not in the array's format {fmt!r}")
    return tuple(i for i, ch in enumerate(fmt) if ch in labels)


@lru_cache(maxsize=4096)
def broadcast(fa: str, sa: tuple[int, ...], fb: str, sb: tuple[int, ...]):
    """Label broadcasting of two canonical formatted operands (SPEC §2).

    Returns ``(out_fmt, out_shape, shape_a, shape_b)`` where ``shape_a``/``shape_b``
    are the operands' shapes with singleton axes inserted so that both align
    positionally with ``out_fmt`` (the operands are canonical, so no permutation is
    ever needed: only reshapes).
    """
    def groups(fmt, shape):
        g = {k: [] for k in _RANK}
        for ch, n in zip(fmt, shape):
            g[ch].append(n)
        return g

    ga, gb = groups(fa, sa), groups(fb, sb)
    out_fmt, out_shape, pa, pb = [], [], [], []
    for lab in LABELS:
        xa, xb = ga[lab], gb[lab]
        if xa and xb and len(xa) != len(xb):
            raise ValueError(
                f"cannot broadcast formats {fa!r} (shape {sa}) and {fb!r} (shape {sb}): "
                f"they have {len(xa)} and {len(xb)} {lab!r} dims, which is ambiguous; "
                f"give both the same number of {lab!r} dims, or none on one side"
            )
        n = max(len(xa), len(xb))
        for i in range(n):
            a = xa[i] if xa else 1
            b = xb[i] if xb else 1
            if a != b and a != 1 and b != 1:
                raise ValueError(
                    f"cannot broadcast formats {fa!r} (shape {sa}) and {fb!r} (shape {sb}): "
                    f"{lab!r} dim #{i + 1} has sizes {a} and {b}; sizes must be equal or 1"
                )
            out_fmt.append(lab)
            out_shape.append(b if a == 1 else a)
            pa.append(a)
            pb.append(b)
    return "".join(out_fmt), tuple(out_shape), tuple(pa), tuple(pb)


# Layer dispatch (SPEC §3.2) -------------------------------------------------

CONV2D_FORMATS = ("SSCB", "SSC", "SSCBT", "SSCT", "SSB", "SS", "SSBT", "SCBT", "SCT", "SBT", "ST")


@lru_cache(maxsize=256)
def conv2d_layer_dims(fmt: str) -> str:
    """Which dims a 2-D convolution layer convolves for input format ``fmt``.

    Returns ``"SS"`` (the two spatial dims) or ``"ST"`` (spatial and time).
    """
    if fmt in ("SSCB", "SSC", "SSCBT", "SSCT", "SSB", "SS", "SSBT"):
        return "SS"
    if fmt in ("SCBT", "SCT", "SBT", "ST"):
        return "ST"
    shown = fmt if fmt else "'' (unformatted)"
    raise ValueError(
        f"a 2-D convolution layer cannot take input of format {shown!r}; accepted formats are "
        + ", ".join(CONV2D_FORMATS)
    )
