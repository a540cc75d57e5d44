"""The file layer of :func:`fmtarray.save` / :func:`fmtarray.load`: the ZIP archive
(``manifest.json`` plus one ``.npy`` file per array, no pickle), its atomic writing, and
the reading that turns every problem with a file (empty, truncated, not a ZIP, not JSON,
a newer version, a missing or unreadable array) into :class:`_Damaged`, a
``ValueError`` that :func:`fmtarray.load` completes with the file's name.

What the manifest says about the network and its layers is :mod:`fmtarray.persistence`'s;
``docs/save_load.md`` describes the format.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib

import numpy as _np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION"]

#: the ``format`` field of every manifest
FORMAT_NAME = "fmtarray.network"
#: the version this fmtarray writes; it reads every version up to this one
FORMAT_VERSION = 1

_MANIFEST = "manifest.json"
_ARRAY_KINDS = "biuf"  # bool, signed/unsigned int, float: what .npy stores without pickle


class _Damaged(ValueError):
    """A problem with the file's contents (turned into a ValueError naming the file)."""


def _write_atomically(target, text, arrays):
    d = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                z.writestr(_MANIFEST, text.encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED)
                for member, a in arrays.items():
                    buf = io.BytesIO()
                    _np.save(buf, a, allow_pickle=False)
                    z.writestr(member, buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _need(d, key, typ, where):
    if not isinstance(d, dict) or key not in d:
        raise _Damaged(f"the manifest has no {where}{key!r} field")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise _Damaged(f"the manifest's {where}{key!r} field has the wrong type: {v!r:.80}")
    return v


def _read(path):
    """(manifest, {member: array}) from the file, or _Damaged."""
    try:
        with zipfile.ZipFile(path) as z:
            try:
                raw = z.read(_MANIFEST)
            except KeyError:
                raise _Damaged(f"it holds no {_MANIFEST}") from None
            try:
                manifest = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _Damaged(f"its {_MANIFEST} is not valid JSON ({e})") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
                raise _Damaged(f"it is not an fmtarray network file (no format {FORMAT_NAME!r} "
                               f"in {_MANIFEST})")
            version = manifest.get("format_version")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise _Damaged(f"its format_version {version!r} is not a positive integer")
            if version > FORMAT_VERSION:
                raise _Damaged(
                    f"it was written in format version {version}, newer than this fmtarray reads "
                    f"(up to {FORMAT_VERSION}); upgrade fmtarray to load it"
                )
            meta = _need(manifest, "arrays", dict, "")
            arrays = {}
            for member, m in meta.items():
                dtype = _need(m, "dtype", str, f"arrays[{member!r}].")
                shape = _need(m, "shape", list, f"arrays[{member!r}].")
                try:
                    data = z.read(member)
                except KeyError:
                    raise _Damaged(f"the manifest lists array {member!r}, which the file does "
                                   "not hold") from None
                try:
                    a = _np.load(io.BytesIO(data), allow_pickle=False)
                except (ValueError, OSError, EOFError, SyntaxError, TypeError, MemoryError) as e:
                    raise _Damaged(f"array {member!r} is not a readable .npy array without "
                                   f"pickle ({e})") from None
                if not isinstance(a, _np.ndarray) or a.dtype.kind not in _ARRAY_KINDS:
                    raise _Damaged(f"array {member!r} has dtype {getattr(a, 'dtype', '?')}, "
                                   "which this format does not store")
                if a.dtype.name != dtype or list(a.shape) != shape:
                    raise _Damaged(f"array {member!r} is {a.dtype.name} {list(a.shape)}, the "
                                   f"manifest says {dtype} {shape}")
                arrays[member] = a
    except (_Damaged, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError) as e:
        raise _Damaged(f"it is not a readable ZIP archive ({e}); it may be truncated or not a "
                       "saved network") from None
    except Exception as e:  # whatever a damaged archive makes zipfile/NumPy raise
        raise _Damaged(f"reading it failed ({type(e).__name__}: {e}); it may be damaged") \
            from None
    return manifest, arrays
