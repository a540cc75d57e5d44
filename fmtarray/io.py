"""Formatted arrays on disk and in xarray: Zarr v3 stores, NumPy memory maps, xarray.

* :func:`to_zarr` writes a FormattedArray (Dask-backed or in memory) to a Zarr v3
  array in its canonical dim order (``S…S C B T U…U``); the format is recorded in
  the array's attributes (``attrs["fmtarray"]["format"]``) and each dim gets a
  name (Zarr's ``dimension_names``: ``S1``, ``S2``, ``C``, ``B``, ``T`` …).
* :func:`from_zarr` reads it back lazily as a Dask-backed FormattedArray with its
  format restored, one Dask block per Zarr chunk unless ``chunks=`` says otherwise.
* A NumPy memory map (``numpy.memmap`` / ``numpy.load(..., mmap_mode="r")``) is an
  ordinary NumPy array to fmtarray: wrap it in a FormattedArray; :func:`to_zarr`
  writes it slab by slab, so it is never read whole.
* :func:`from_xarray` / :func:`to_xarray` convert between a FormattedArray and an
  ``xarray.DataArray``. xarray needs distinct dim names, so repeated labels are
  numbered (``S1``, ``S2``) unless ``dims=`` names them. A FormattedArray carries
  no coordinates: pass the original ones to :func:`to_xarray` (``coords=da.coords``)
  and every coordinate whose dims survived the op with their sizes is kept; the
  others (e.g. of a dim a strided convolution shrank) are dropped.

Zarr, Dask and xarray are optional extras (``pip install fmtarray[zarr,dask,xarray]``),
imported only here and only when these functions are called.
"""

from __future__ import annotations

import importlib

from . import _backend, _format
from .array import FormattedArray

__all__ = ["to_zarr", "from_zarr", "from_xarray", "to_xarray", "dim_names"]

FORMAT_VERSION = 1
_ATTR = "fmtarray"


def _need(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for this function: pip install 'fmtarray[{extra}]'"
        ) from None


def dim_names(fmt: str) -> tuple[str, ...]:
    """Default per-dim names of a format: a label used once keeps its letter, repeated
    labels are numbered in order (``"SSCBT"`` → ``("S1", "S2", "C", "B", "T")``)."""
    fmt = _format.as_format(fmt) or ""
    total = {c: fmt.count(c) for c in fmt}
    seen: dict[str, int] = {}
    out = []
    for c in fmt:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if total[c] == 1 else f"{c}{seen[c]}")
    return tuple(out)


def _where(url, component) -> str:
    return f"{url!s}" + (f" (component {component!r})" if component else "")


def _check_names(names, n, arg):
    if isinstance(names, str):
        raise TypeError(f"{arg} must be a list of {n} dim names, got the str {names!r}")
    names = tuple(names)
    if len(names) != n or not all(isinstance(s, str) and s for s in names):
        raise ValueError(f"{arg} must be {n} non-empty str dim names (one per dim), got {names!r}")
    if len(set(names)) != n:
        raise ValueError(f"{arg} must be distinct names, got {names!r}")
    return names


# Zarr ------------------------------------------------------------------------------------


def _regular_chunks(darr):
    """The Dask array rechunked (if needed) so every block but the last along each dim has
    one size, as a Zarr chunk grid needs; returns (array, chunk shape)."""
    shape = []
    need = False
    for c in darr.chunks:
        first = c[0] if c else 1
        if any(s != first for s in c[:-1]) or (c and c[-1] > first):
            need = True
        shape.append(max(c) if c else 1)
    if need:
        darr = darr.rechunk(tuple(shape))
    return darr, tuple(shape)


def _existing(zarr, url, component, storage_options):
    try:
        return zarr.open_array(url, path=component or "", mode="r", storage_options=storage_options)
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return None
    except Exception as e:  # zarr raises its own NodeNotFound errors by version
        if "not found" in str(e).lower() or type(e).__name__.endswith("NotFoundError"):
            return None
        raise


def to_zarr(x, url, component=None, *, dims=None, overwrite=False, compute=True,
            storage_options=None, **kwargs):
    """Write the FormattedArray ``x`` to a Zarr v3 array and record its format.

    Parameters
    ----------
    x
        A FormattedArray: Dask-backed (written block by block, in parallel, never whole
        in memory), NumPy (a memory map is written slab by slab) or another library's
        (copied to the host: writing to disk is an explicit transfer).
    url
        A path or URL (anything ``zarr.open_array`` accepts) of the store.
    component
        The array's path inside the store (None: the store's root array).
    dims
        Per-dim names (default :func:`dim_names` of the format), stored as Zarr's
        ``dimension_names``.
    overwrite
        Replace an existing array at that place. Without it, an existing array is an
        error (which names its shape and dtype).
    compute
        For Dask data: False returns the ``dask.delayed`` write instead of running it.
    **kwargs
        Passed to ``zarr.create_array`` (``chunks``, ``compressors``, ``shards`` …). For
        Dask data the default chunks are the Dask blocks (made regular if they are not);
        given ``chunks`` rechunk the Dask array to them so no two tasks write one chunk.

    Returns the ``zarr.Array`` (or the delayed write when ``compute=False``).
    """
    zarr = _need("zarr", "zarr")
    if not isinstance(x, FormattedArray):
        raise TypeError(
            f"x must be a FormattedArray (its format is what to_zarr records), got "
            f"{type(x).__module__}.{type(x).__name__}; wrap it: fa.FormattedArray(data, 'SSCBT')"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    fmt = x.format
    names = dim_names(fmt) if dims is None else _check_names(dims, x.ndim, "dims")
    if fmt == "" and dims is None:
        names = tuple(f"dim_{i}" for i in range(x.ndim))
    data = x.data
    lib = _backend.library_name(data)
    shape = tuple(int(s) for s in data.shape)

    old = _existing(zarr, url, component, storage_options)
    if old is not None and not overwrite:
        same = tuple(old.shape) == shape and str(old.dtype) == str(_np_dtype(data))
        what = "an array of the same shape and dtype" if same else "another array"
        raise ValueError(
            f"to_zarr: {_where(url, component)} already holds {what} (shape {tuple(old.shape)}, "
            f"{old.dtype}); the new one has shape {shape} ({_np_dtype(data)}). Pass "
            "overwrite=True to replace it, or write to another url/component"
        )

    attrs = dict(kwargs.pop("attributes", None) or {})
    attrs[_ATTR] = {"format": fmt, "version": FORMAT_VERSION, "dims": list(names)}
    chunks = kwargs.pop("chunks", None)
    if lib == "dask":
        if chunks is None:
            data, chunks = _regular_chunks(data)
        else:
            chunks = tuple(int(c) for c in chunks)
            data = data.rechunk(chunks)
    arr = zarr.create_array(
        url, name=component, shape=shape, dtype=_np_dtype(data), chunks=chunks or "auto",
        attributes=attrs, dimension_names=names, overwrite=overwrite,
        storage_options=storage_options, **kwargs,
    )
    if lib == "dask":
        import dask.array as da

        if not compute:
            return da.store(data, arr, lock=False, compute=False)
        da.store(data, arr, lock=False)
        return arr
    _write_slabs(arr, data)
    return arr


def _np_dtype(data):
    import numpy as np

    if _backend.library_name(data) in ("numpy", "dask"):
        return np.dtype(data.dtype)
    return np.dtype(_backend.to_numpy(data[(slice(0, 0),) * data.ndim]).dtype)


def _write_slabs(arr, data):
    """Write an in-memory (or memory-mapped) array along its last dim, one chunk-column of
    slabs at a time, so a memory map is never read whole."""
    import numpy as np

    if data.ndim == 0:
        arr[...] = np.asarray(_backend.to_numpy(data))
        return
    n = int(data.shape[-1])
    step = max(1, int(arr.chunks[-1]))
    for i in range(0, n, step):
        sl = (Ellipsis, slice(i, min(n, i + step)))
        arr[sl] = np.asarray(_backend.to_numpy(data[sl]))


def from_zarr(url, component=None, fmt=None, chunks=None, *, storage_options=None):
    """Read a Zarr array lazily as a Dask-backed FormattedArray.

    Parameters
    ----------
    url, component
        Where the array is (as for :func:`to_zarr`).
    fmt
        The format; default the one :func:`to_zarr` recorded. Needed for arrays that
        fmtarray did not write (their dims are read in stored order, then permuted to
        canonical order lazily).
    chunks
        Dask chunks (default: one block per Zarr chunk).
    """
    zarr = _need("zarr", "zarr")
    da = _need("dask.array", "dask")
    try:
        arr = zarr.open_array(url, path=component or "", mode="r", storage_options=storage_options)
    except Exception as e:
        raise ValueError(
            f"from_zarr: no Zarr array at {_where(url, component)} ({type(e).__name__}: {e})"
        ) from e
    rec = arr.attrs.get(_ATTR) if hasattr(arr, "attrs") else None
    if fmt is None:
        if not isinstance(rec, dict) or not isinstance(rec.get("format"), str):
            raise ValueError(
                f"from_zarr: {_where(url, component)} has no recorded format (it was not "
                f"written by fmtarray.to_zarr); give one label per stored dim, e.g. "
                f"from_zarr(url, fmt={'SSCBT'[:len(arr.shape)]!r}) for its shape "
                f"{tuple(arr.shape)}"
            )
        version = rec.get("version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"from_zarr: {_where(url, component)} was written by a newer fmtarray "
                f"(format record version {version!r}; this one reads up to {FORMAT_VERSION})"
            )
        fmt = rec["format"]
    fmt = _format.as_format(fmt) or ""
    if len(fmt) != len(arr.shape) and not (fmt == "" and rec is not None):
        raise ValueError(
            f"from_zarr: fmt {fmt!r} has {len(fmt)} labels but the array at "
            f"{_where(url, component)} has {len(arr.shape)} dims (shape {tuple(arr.shape)}); "
            "give one label per stored dim"
        )
    data = da.from_zarr(arr, chunks=chunks if chunks is not None else arr.chunks)
    return FormattedArray(data, fmt)


# xarray ----------------------------------------------------------------------------------


def from_xarray(da, labels=None) -> FormattedArray:
    """An ``xarray.DataArray`` as a FormattedArray (its data, Dask-backed or not, is not
    copied).

    ``labels`` maps every dim name of ``da`` to a label (``{"y": "S", "x": "S",
    "band": "C", "time": "T"}``); it may be omitted for dims already named by labels
    (``S``, ``S1``, ``C``, ``B``, ``T``, ``U2`` … as :func:`to_xarray` writes them).
    Coordinates are not carried (see :func:`to_xarray`'s ``coords``).
    """
    xr = _need("xarray", "xarray")
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"da must be an xarray.DataArray, got {type(da).__module__}.{type(da).__name__}")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise TypeError(f"labels must be a dict {{dim_name: label}}, got {type(labels).__name__}")
    for k in labels:
        if k not in da.dims:
            raise ValueError(f"labels names the dim {k!r}, which the DataArray lacks; its dims are "
                             f"{tuple(da.dims)}")
    fmt = []
    missing = []
    for d in da.dims:
        lab = labels.get(d)
        if lab is None:
            s = str(d)
            if s[:1] in "SCBTU" and (len(s) == 1 or s[1:].isdigit()):
                lab = s[0]
        if lab is None:
            missing.append(d)
            continue
        if not isinstance(lab, str) or len(lab) != 1 or lab not in "SCBTU":
            raise ValueError(f"labels[{d!r}] must be one of 'S', 'C', 'B', 'T', 'U', got {lab!r}")
        fmt.append(lab)
    if missing:
        raise ValueError(
            f"from_xarray: dims {tuple(missing)} are not mapped to a label; pass labels= with "
            f"one of 'S', 'C', 'B', 'T', 'U' for each, e.g. labels={{{missing[0]!r}: 'S'}} "
            f"(the DataArray's dims are {tuple(da.dims)})"
        )
    return FormattedArray(da.data, "".join(fmt))


def to_xarray(x, dims=None, coords=None, *, name=None, attrs=None):
    """A FormattedArray as an ``xarray.DataArray`` (data not copied), dims in the
    canonical order.

    ``dims``: one distinct name per dim (default :func:`dim_names`: ``S1``, ``S2``,
    ``C``, ``B``, ``T`` …). ``coords``: coordinates to attach (e.g. the input's
    ``da.coords``); each one whose dims all exist here with the same sizes is kept, the
    others are dropped. The format is recorded in ``attrs["fmtarray_format"]``.
    """
    xr = _need("xarray", "xarray")
    if not isinstance(x, FormattedArray):
        raise TypeError(f"x must be a FormattedArray, got {type(x).__module__}.{type(x).__name__}")
    names = dim_names(x.format) if dims is None else _check_names(dims, x.ndim, "dims")
    if x.format == "" and dims is None:
        names = tuple(f"dim_{i}" for i in range(x.ndim))
    sizes = dict(zip(names, x.shape))
    kept = {}
    if coords is not None:
        for k, c in dict(coords).items():
            cdims = tuple(getattr(c, "dims", ()))
            if cdims and all(d in sizes and sizes[d] == n for d, n in zip(cdims, c.shape)):
                kept[k] = c
    out_attrs = dict(attrs or {})
    out_attrs["fmtarray_format"] = x.format
    return xr.DataArray(x.data, dims=names, coords=kept, name=name, attrs=out_attrs)
