"""Property tests of the pure-Python format algebra (no arrays involved)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmtarray import _format

RANK = {"S": 0, "C": 1, "B": 2, "T": 3, "U": 4}


@st.composite
def formats(draw, max_s=3, max_u=2):
    labels = ["S"] * draw(st.integers(0, max_s)) + ["U"] * draw(st.integers(0, max_u))
    for lab in "CBT":
        if draw(st.booleans()):
            labels.append(lab)
    return "".join(draw(st.permutations(labels)))


@given(formats())
def test_canonicalize_is_idempotent_and_sorted(fmt):
    canon, perm = _format.canonicalize(fmt)
    assert sorted(perm) == list(range(len(fmt)))
    assert "".join(fmt[i] for i in perm) == canon
    assert [RANK[c] for c in canon] == sorted(RANK[c] for c in canon)
    again, perm2 = _format.canonicalize(canon)
    assert again == canon and perm2 == tuple(range(len(canon)))


@given(formats())
def test_canonical_permutation_is_stable_for_repeated_labels(fmt):
    _, perm = _format.canonicalize(fmt)
    s_positions = [p for p in perm if fmt[p] == "S"]
    assert s_positions == sorted(s_positions)
    u_positions = [p for p in perm if fmt[p] == "U"]
    assert u_positions == sorted(u_positions)


@given(formats())
def test_finddim_agrees_with_format(fmt):
    canon, _ = _format.canonicalize(fmt)
    for lab in "SCBTU":
        pos = _format.finddim(canon, lab)
        assert pos == tuple(i for i, c in enumerate(canon) if c == lab)


@pytest.mark.parametrize(
    "fmt, rule",
    [("SX", "unknown label 'X'"), ("SCC", "repeats label 'C'"), ("BSB", "repeats label 'B'"),
     ("TT", "repeats label 'T'"), ("ssc", "unknown label 's'")],
)
def test_invalid_formats_name_the_rule(fmt, rule):
    with pytest.raises(ValueError) as e:
        _format.validate(fmt)
    assert rule in str(e.value) and repr(fmt) in str(e.value)


def test_validate_rejects_non_strings():
    with pytest.raises(TypeError, match="format must be a str"):
        _format.validate(3)


@st.composite
def broadcast_pair(draw):
    """Two canonical formats with shapes that broadcast by label."""
    ns = draw(st.integers(0, 2))
    nu = draw(st.integers(0, 1))
    full = "S" * ns + "C" * draw(st.integers(0, 1)) + "B" * draw(st.integers(0, 1)) + "T" * draw(
        st.integers(0, 1)) + "U" * nu
    sizes = [draw(st.integers(1, 4)) for _ in full]

    def side():
        keep_s = draw(st.booleans())
        keep_u = draw(st.booleans())
        fmt, shape = [], []
        for lab, n in zip(full, sizes):
            if lab == "S" and not keep_s or lab == "U" and not keep_u:
                continue
            if lab in "CBT" and not draw(st.booleans()):
                continue
            fmt.append(lab)
            shape.append(n if draw(st.booleans()) else 1)
        return "".join(fmt), tuple(shape)

    return side(), side()


@given(broadcast_pair())
@settings(max_examples=200)
def test_label_broadcasting_equals_manual_alignment(pair):
    (fa, sa), (fb, sb) = pair
    out_fmt, out_shape, pa, pb = _format.broadcast(fa, sa, fb, sb)
    # manual: place each label's dims at the union's positions
    a = np.random.default_rng(0).standard_normal(sa)
    b = np.random.default_rng(1).standard_normal(sb)
    assert len(pa) == len(out_fmt) == len(pb)
    manual = a.reshape(pa) + b.reshape(pb)
    assert manual.shape == out_shape
    # the union of labels, in canonical order
    assert out_fmt == "".join(sorted(set(fa) | set(fb), key=RANK.get)).replace(
        "S", "S" * max(fa.count("S"), fb.count("S"))).replace("U", "U" * max(fa.count("U"), fb.count("U")))
    # every element of the result pairs the right elements: check one index
    idx = tuple(n - 1 for n in out_shape)
    ia = tuple(min(i, n - 1) for i, n in zip(idx, pa))
    ib = tuple(min(i, n - 1) for i, n in zip(idx, pb))
    assert manual[idx] == a.reshape(pa)[ia] + b.reshape(pb)[ib]


def test_broadcast_errors_name_both_formats_and_shapes():
    with pytest.raises(ValueError, match=r"'SSCB'.*\(4, 4, 3, 2\).*'SCB'.*\(4, 3, 2\).*ambiguous"):
        _format.broadcast("SSCB", (4, 4, 3, 2), "SCB", (4, 3, 2))
    with pytest.raises(ValueError, match=r"'C' dim #1 has sizes 3 and 5"):
        _format.broadcast("SSCB", (4, 4, 3, 2), "CB", (5, 2))


@pytest.mark.parametrize("fmt", ["SSCB", "SSC", "SSCBT", "SSCT", "SSB", "SS", "SSBT"])
def test_conv2d_dispatch_spatial(fmt):
    assert _format.conv2d_layer_dims(fmt) == "SS"


@pytest.mark.parametrize("fmt", ["SCBT", "SCT", "SBT", "ST"])
def test_conv2d_dispatch_space_time(fmt):
    assert _format.conv2d_layer_dims(fmt) == "ST"


@pytest.mark.parametrize("fmt", ["SCB", "CBT", "SSSCB", "SSCBU", "", "CB"])
def test_conv2d_dispatch_rejects(fmt):
    with pytest.raises(ValueError, match="accepted formats are SSCB, SSC"):
        _format.conv2d_layer_dims(fmt)
