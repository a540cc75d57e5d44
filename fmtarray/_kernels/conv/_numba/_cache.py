"""On-disk cache stamps of the compiled kernels: every source file of this package.

Numba keys a cached function (``cache=True``) on the contents of the one file that
defines it. The kernels here call compiled functions and use IR helpers of other files
of the package (``_wgrad_pieces`` and ``_winograd_kernels`` call ``_simd``'s drivers;
their intrinsics are built by ``_simd``'s and ``_ir``'s helpers): with Numba's own stamp,
an edit there would leave their cached machine code stale. :func:`install` puts three
cache locators ahead of Numba's (the user's ``NUMBA_CACHE_DIR``, the in-tree
``__pycache__`` and, for a read-only install, the user-wide cache directory, as Numba's
own) that take the functions defined in this package only and
stamp them with the hash of all its ``.py`` files: an edit to any of them compiles the
kernels again. Functions of other packages keep Numba's locators.
"""

from __future__ import annotations

import glob
import hashlib
import os

__all__ = ["install", "package_stamp"]

_DIR = os.path.dirname(os.path.abspath(__file__))
_installed: list = []


def _files():
    return sorted(glob.glob(os.path.join(_DIR, "*.py")))


def package_stamp(files=None):
    """The hash of the package's sources (``files``: those instead), read again only
    when a file's modification time or size changed."""
    from numba.core import caching

    h = hashlib.sha256()
    for path in _files() if files is None else files:
        st = os.stat(path)
        h.update(os.path.basename(path).encode())
        h.update(caching._hash_source_file(path, st.st_mtime, st.st_size))
    return h.digest()


def _ours(py_file):
    return os.path.dirname(os.path.abspath(py_file)) == _DIR


def install():
    """Put the package's locators ahead of Numba's (once; before the kernels' modules
    define their functions). Without Numba's locator classes (another Numba version),
    nothing changes: each file's own stamp, as before."""
    if _installed:
        return
    _installed.append(True)
    from numba.core import caching

    bases = [getattr(caching, n, None) for n in ("UserProvidedCacheLocator",
                                                  "InTreeCacheLocator", "UserWideCacheLocator")]
    impl = getattr(caching, "CacheImpl", getattr(caching, "_CacheImpl", None))
    if impl is None or None in bases or not hasattr(caching, "_hash_source_file"):
        return
    ours = []
    for base in bases:

        class Locator(base):
            def get_source_stamp(self):
                return package_stamp()

            @classmethod
            def from_function(cls, py_func, py_file):
                return super().from_function(py_func, py_file) if _ours(py_file) else None

        Locator.__name__ = Locator.__qualname__ = "Package" + base.__name__
        ours.append(Locator)
    impl._locator_classes[:0] = ours
