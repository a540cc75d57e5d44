"""Padding kernel (``fmtarray._kernels.pad``): the seed's pictures, NumPy/torch
agreement for every mode and any pad size, the adjoint, and errors — over every backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtarray._kernels.pad import PAD_MODES, pad, pad_vjp

from conv_reference import ref_pad

HAS_TORCH = importlib.util.find_spec("torch") is not None
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEED_X = np.array([[3, 1, 4], [1, 5, 9], [2, 6, 5]], dtype=np.float64)

# The seed's 3x3 input padded by 2 (convolution2dLayer.txt, PaddingValue table)
SEED_PADDED = {
    0.0: [
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 3, 1, 4, 0, 0],
        [0, 0, 1, 5, 9, 0, 0],
        [0, 0, 2, 6, 5, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    "symmetric-include-edge": [
        [5, 1, 1, 5, 9, 9, 5],
        [1, 3, 3, 1, 4, 4, 1],
        [1, 3, 3, 1, 4, 4, 1],
        [5, 1, 1, 5, 9, 9, 5],
        [6, 2, 2, 6, 5, 5, 6],
        [6, 2, 2, 6, 5, 5, 6],
        [5, 1, 1, 5, 9, 9, 5],
    ],
    "symmetric-exclude-edge": [
        [5, 6, 2, 6, 5, 6, 2],
        [9, 5, 1, 5, 9, 5, 1],
        [4, 1, 3, 1, 4, 1, 3],
        [9, 5, 1, 5, 9, 5, 1],
        [5, 6, 2, 6, 5, 6, 2],
        [9, 5, 1, 5, 9, 5, 1],
        [4, 1, 3, 1, 4, 1, 3],
    ],
    "replicate": [
        [3, 3, 3, 1, 4, 4, 4],
        [3, 3, 3, 1, 4, 4, 4],
        [3, 3, 3, 1, 4, 4, 4],
        [1, 1, 1, 5, 9, 9, 9],
        [2, 2, 2, 6, 5, 5, 5],
        [2, 2, 2, 6, 5, 5, 5],
        [2, 2, 2, 6, 5, 5, 5],
    ],
}


@pytest.mark.parametrize("value", list(SEED_PADDED))
def test_seed_pictures(xp, value):
    x = xp.asarray(SEED_X, dtype=np.float32)
    y = pad(xp.ns, x, (2, 2), (2, 2), (0, 1), value)
    assert xp.to_numpy(y).dtype == np.float32
    np.testing.assert_array_equal(xp.to_numpy(y), np.array(SEED_PADDED[value], dtype=np.float32))


def test_seed_pictures_match_numpy_names():
    for value, expected in SEED_PADDED.items():
        np.testing.assert_array_equal(ref_pad(SEED_X, (2, 2), (2, 2), (0, 1), value), expected)


@pytest.mark.parametrize("value", [1.5, *PAD_MODES])
def test_backends_any_size(xp, value):
    """Pads larger than the axis (repeated mirroring, as numpy.pad), on every backend."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4))
    before, after = (7, 0), (2, 9)
    y = pad(xp.ns, xp.asarray(x), before, after, (1, 2), value)
    ref = ref_pad(x, before, after, (1, 2), value)
    np.testing.assert_array_equal(xp.to_numpy(y), ref)
    if xp.name == "dask":
        import dask.array as da

        assert isinstance(y, da.Array)
    # adjoint: <pad(v), g> == <v, pad_vjp(g)>
    g = rng.standard_normal(ref.shape)
    gv = xp.to_numpy(pad_vjp(xp.ns, xp.asarray(g), before, after, (1, 2), value))
    v = rng.standard_normal(x.shape)
    pv = ref_pad(v, before, after, (1, 2), 0.0 if not isinstance(value, str) else value)
    np.testing.assert_allclose((pv * g).sum(), (v * gv).sum(), rtol=1e-12)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
    value=st.sampled_from([0.0, -2.0, *PAD_MODES]),
    backend=st.sampled_from(["numpy", "strict"]),
)
def test_matches_numpy_pad(shape, data, value, backend):
    import array_api_compat.numpy as cnp
    import array_api_strict

    nd = len(shape)
    axes = tuple(sorted(data.draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    before = tuple(data.draw(st.integers(0, 8)) for _ in axes)
    after = tuple(data.draw(st.integers(0, 8)) for _ in axes)
    x = np.random.default_rng(0).standard_normal(shape)
    ns = cnp if backend == "numpy" else array_api_strict
    y = np.asarray(pad(ns, ns.asarray(x), before, after, axes, value))
    np.testing.assert_array_equal(y, ref_pad(x, before, after, axes, value))
    # the adjoint is the transpose of the (0/1) padding matrix
    g = np.random.default_rng(1).standard_normal(y.shape)
    gv = np.asarray(pad_vjp(ns, ns.asarray(g), before, after, axes, value))
    assert gv.shape == x.shape
    e = np.zeros(x.size)
    for i in range(min(x.size, 6)):
        e[:] = 0
        e[i] = 1
        col = ref_pad(e.reshape(x.shape), before, after, axes,
                      value if isinstance(value, str) else 0.0)
        assert np.isclose(gv.reshape(-1)[i], (col * g).sum())


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("value,mode", [(0.5, "constant"), ("symmetric-exclude-edge", "reflect"),
                                        ("replicate", "replicate")])
def test_matches_torch_pad(value, mode):
    import array_api_compat.torch as ct
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    kw = {"value": value} if mode == "constant" else {}
    ref = F.pad(x, (2, 1, 3, 4), mode=mode, **kw)  # last dim (2, 1), then (3, 4)
    y = pad(ct, x, (3, 2), (4, 1), (2, 3), value)
    assert torch.equal(y, ref)


def test_errors():
    import array_api_compat.numpy as cnp

    x = np.zeros((0, 3))
    with pytest.raises(ValueError, match="empty axis"):
        pad(cnp, x, (1,), (0,), (0,), "replicate")
    assert pad(cnp, x, (1,), (1,), (0,), 0.0).shape == (2, 3)
    with pytest.raises(ValueError, match="padding_value='mirror'.*symmetric-include-edge"):
        pad(cnp, np.zeros(3), (1,), (1,), (0,), "mirror")
    with pytest.raises(ValueError, match="non-negative"):
        pad(cnp, np.zeros(3), (-1,), (1,), (0,), 0.0)


def test_size_one_exclude_edge_repeats():
    import array_api_compat.numpy as cnp

    y = pad(cnp, np.array([7.0]), (3,), (2,), (0,), "symmetric-exclude-edge")
    np.testing.assert_array_equal(y, np.full(6, 7.0))
