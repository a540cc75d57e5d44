"""The compiled kernels' on-disk cache stamps (``_numba._cache``): every kernel of the
package is stamped with all of its source files (a kernel that calls another file's
driver, or whose intrinsic is built by another file's helpers, compiles again when
that file changes), functions elsewhere keep Numba's own locators."""

from __future__ import annotations

import os

import pytest

from fmtarray._kernels.conv import _numba

pytestmark = pytest.mark.skipif(os.environ.get("FMTARRAY_NUMBA") == "0"
                                or _numba.unavailable() is not None,
                                reason="numba unavailable or FMTARRAY_NUMBA=0")


def test_kernels_are_stamped_with_every_file_of_the_package():
    from fmtarray._kernels.conv._numba import _cache, _simd, _wgrad_pieces, _winograd_kernels

    stamp = _cache.package_stamp()
    for f in (_simd.forward_positions, _winograd_kernels.fused_item, _wgrad_pieces.weight_grad):
        locator = f._cache._impl.locator
        assert type(locator).__name__.startswith("Package")
        assert locator.get_source_stamp() == stamp
    # Numba's own stamp of _winograd_kernels.py alone would not see _simd.py
    from numba.core import caching

    path = _winograd_kernels.__file__
    st = os.stat(path)
    assert caching._hash_source_file(path, st.st_mtime, st.st_size) != stamp


def test_stamp_changes_with_any_file(tmp_path):
    from fmtarray._kernels.conv._numba._cache import package_stamp

    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for f in files:
        f.write_text("x = 1\n")
    before = package_stamp([str(f) for f in files])
    assert package_stamp([str(f) for f in files]) == before
    files[1].write_text("x = 22\n")  # another size: read again
    assert package_stamp([str(f) for f in files]) != before


def test_functions_elsewhere_keep_numbas_locators():
    from numba.core import caching

    from fmtarray._kernels.conv._numba import _cache

    _cache.install()

    def plus_one(a):
        return a + 1

    locator = caching.FunctionCache(plus_one)._impl.locator  # (chosen, nothing written)
    assert not type(locator).__name__.startswith("Package")
