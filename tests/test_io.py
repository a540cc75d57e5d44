"""fmtarray.io: Zarr v3 round trips (in-memory, Dask, memory-mapped data), recorded formats,
bad stores, and xarray conversion with coordinates."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import io as fio

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")


def _video(shape=(6, 5, 3, 2, 7), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_dim_names():
    assert fio.dim_names("SSCBT") == ("S1", "S2", "C", "B", "T")
    assert fio.dim_names("SCBT") == ("S", "C", "B", "T")
    assert fio.dim_names("SSSCBUU") == ("S1", "S2", "S3", "C", "B", "U1", "U2")


def test_numpy_round_trip_records_format(tmp_path):
    v = _video()
    x = fa.FormattedArray(v, "SSCBT")
    arr = fa.to_zarr(x, tmp_path / "v.zarr", chunks=(6, 5, 3, 1, 3))
    assert arr.attrs["fmtarray"]["format"] == "SSCBT"
    assert tuple(arr.metadata.dimension_names) == ("S1", "S2", "C", "B", "T")
    y = fa.from_zarr(tmp_path / "v.zarr")
    assert y.format == "SSCBT"
    assert type(y.data).__module__.startswith("dask")
    assert y.data.chunks[-1] == (3, 3, 1)  # one Dask block per Zarr chunk
    np.testing.assert_array_equal(np.asarray(y.data.compute()), v)


def test_non_canonical_input_is_stored_canonically(tmp_path):
    v = _video((2, 7, 3, 6, 5))  # B T C S S memory
    x = fa.FormattedArray(v, "BTCSS")
    fa.to_zarr(x, tmp_path / "c.zarr", component="frames")
    y = fa.from_zarr(tmp_path / "c.zarr", component="frames")
    assert y.format == "SSCBT" and y.shape == (6, 5, 3, 2, 7)
    np.testing.assert_array_equal(np.asarray(y.data.compute()), np.asarray(x.data))


def test_dask_write_is_lazy_block_by_block_and_rechunks_irregular(tmp_path):
    v = _video((6, 5, 3, 2, 11))
    d = da.from_array(v, chunks=(6, 5, 3, 1, (4, 3, 4)))  # irregular along T
    x = fa.FormattedArray(d, "SSCBT")
    delayed = fa.to_zarr(x, tmp_path / "d.zarr", compute=False)
    stored = zarr.open_array(tmp_path / "d.zarr", mode="r")
    assert not np.any(stored[...])  # nothing written before compute (zeros = fill value)
    delayed.compute()
    np.testing.assert_array_equal(stored[...], v)
    assert stored.chunks == (6, 5, 3, 1, 4)


def test_memmap_is_written_in_slabs(tmp_path):
    v = _video((4, 4, 1, 2, 9))
    path = tmp_path / "m.npy"
    np.save(path, v)
    m = np.load(path, mmap_mode="r")
    x = fa.FormattedArray(m, "SSCBT")
    fa.to_zarr(x, tmp_path / "m.zarr", chunks=(4, 4, 1, 2, 2))
    np.testing.assert_array_equal(np.asarray(fa.from_zarr(tmp_path / "m.zarr").data.compute()), v)


def test_lazy_pipeline_from_zarr_matches_numpy(tmp_path):
    v = _video((8, 8, 3, 2, 4))
    fa.to_zarr(fa.FormattedArray(v, "SSCBT"), tmp_path / "p.zarr", chunks=(8, 8, 3, 1, 2))
    x = fa.from_zarr(tmp_path / "p.zarr")
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 4)).astype(np.float32)
    y = fa.relu(fa.conv(x, da.from_array(w), padding="same"))
    assert type(y.data).__module__.startswith("dask")
    ref = fa.relu(fa.conv(fa.FormattedArray(v, "SSCBT"), w, padding="same"))
    np.testing.assert_allclose(np.asarray(y.data.compute()), np.asarray(ref.data), rtol=1e-5, atol=1e-5)


def test_no_recorded_format_needs_fmt(tmp_path):
    zarr.create_array(tmp_path / "raw.zarr", shape=(4, 3, 2), dtype="f4")
    with pytest.raises(ValueError, match=r"no recorded format.*fmt="):
        fa.from_zarr(tmp_path / "raw.zarr")
    y = fa.from_zarr(tmp_path / "raw.zarr", fmt="BSS")  # stored order, permuted lazily
    assert y.format == "SSB" and y.shape == (3, 2, 4)


def test_format_length_must_fit(tmp_path):
    zarr.create_array(tmp_path / "raw.zarr", shape=(4, 3, 2), dtype="f4")
    with pytest.raises(ValueError, match=r"'SSCB' has 4 labels but the array .* has 3 dims"):
        fa.from_zarr(tmp_path / "raw.zarr", fmt="SSCB")


def test_missing_store_and_newer_version(tmp_path):
    with pytest.raises(ValueError, match="no Zarr array at"):
        fa.from_zarr(tmp_path / "nothing.zarr")
    a = fa.to_zarr(fa.FormattedArray(_video((2, 2, 1, 1)), "SSCB"), tmp_path / "n.zarr")
    a.attrs["fmtarray"] = {"format": "SSCB", "version": 99}
    with pytest.raises(ValueError, match="newer fmtarray"):
        fa.from_zarr(tmp_path / "n.zarr")


def test_writing_over_an_existing_array(tmp_path):
    fa.to_zarr(fa.FormattedArray(_video((2, 2, 1, 3)), "SSCB"), tmp_path / "e.zarr")
    other = fa.FormattedArray(_video((4, 4, 1, 3)), "SSCB")
    with pytest.raises(ValueError, match=r"already holds another array \(shape \(2, 2, 1, 3\).*"
                                         r"\(4, 4, 1, 3\).*overwrite=True"):
        fa.to_zarr(other, tmp_path / "e.zarr")
    fa.to_zarr(other, tmp_path / "e.zarr", overwrite=True)
    np.testing.assert_array_equal(np.asarray(fa.from_zarr(tmp_path / "e.zarr").data.compute()),
                                  np.asarray(other.data))


def test_to_zarr_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="must be a FormattedArray"):
        fa.to_zarr(np.zeros(3), tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="distinct"):
        fa.to_zarr(fa.FormattedArray(np.zeros((2, 2)), "SS"), tmp_path / "a.zarr", dims=["a", "a"])


def test_torch_data_is_written_from_the_host(tmp_path):
    torch = pytest.importorskip("torch")
    v = _video((3, 3, 2, 2))
    fa.to_zarr(fa.FormattedArray(torch.from_numpy(v), "SSCB"), tmp_path / "t.zarr")
    np.testing.assert_array_equal(np.asarray(fa.from_zarr(tmp_path / "t.zarr").data.compute()), v)


# xarray ------------------------------------------------------------------------------------


def test_xarray_round_trip_with_coordinates():
    xr = pytest.importorskip("xarray")
    v = _video((6, 5, 3, 2))
    arr = xr.DataArray(v, dims=("y", "x", "band", "sample"),
                       coords={"y": np.arange(6) * 0.5, "x": np.arange(5) * 2.0,
                               "band": ["r", "g", "b"]})
    x = fa.from_xarray(arr, labels={"y": "S", "x": "S", "band": "C", "sample": "B"})
    assert x.format == "SSCB"
    np.testing.assert_array_equal(np.asarray(x.data), v)
    y = fa.conv(x, np.ones((3, 3, 3, 4), np.float32), padding="same")  # S sizes survive, C does not
    out = fa.to_xarray(y, dims=["y", "x", "feature", "sample"], coords=arr.coords)
    assert out.dims == ("y", "x", "feature", "sample")
    np.testing.assert_array_equal(out["y"].values, arr["y"].values)
    np.testing.assert_array_equal(out["x"].values, arr["x"].values)
    assert "band" not in out.coords
    assert out.attrs["fmtarray_format"] == "SSCB"
    # the default names are labels, so the result reads back without labels=
    back = fa.from_xarray(fa.to_xarray(y))
    assert back.format == "SSCB"
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(y.data))


def test_xarray_strided_dims_drop_their_coordinates():
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(_video((6, 6, 1, 1)), dims=("y", "x", "c", "b"),
                       coords={"y": np.arange(6), "x": np.arange(6)})
    x = fa.from_xarray(arr, labels={"y": "S", "x": "S", "c": "C", "b": "B"})
    y = fa.conv(x, np.ones((2, 2, 1, 1), np.float32), stride=2)
    out = fa.to_xarray(y, dims=["y", "x", "c", "b"], coords=arr.coords)
    assert "y" not in out.coords and "x" not in out.coords


def test_xarray_dask_backed_stays_lazy():
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(da.zeros((4, 4, 2, 8), chunks=(4, 4, 2, 2)), dims=("S1", "S2", "C", "B"))
    x = fa.from_xarray(arr)
    assert x.format == "SSCB" and x.data is arr.data


def test_xarray_unmapped_dim_is_named():
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(np.zeros((2, 3)), dims=("lat", "C"))
    with pytest.raises(ValueError, match=r"dims \('lat',\) are not mapped to a label.*'S', 'C'"):
        fa.from_xarray(arr)
    with pytest.raises(ValueError, match=r"labels\['lat'\] must be one of"):
        fa.from_xarray(arr, labels={"lat": "X"})
    with pytest.raises(ValueError, match="lacks"):
        fa.from_xarray(arr, labels={"lon": "S"})
