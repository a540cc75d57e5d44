"""glibc's heap thresholds for the NumPy engine's large arrays.

A training step allocates and frees a handful of arrays of several MiB each (the
convolution's output, ``y * g``, the cotangents, the input gradient). glibc serves an
allocation above its *mmap threshold* with a fresh ``mmap`` and returns it to the system
on ``free``; below it, from the heap, whose free top is given back (``brk``) once it
exceeds the *trim threshold*. glibc raises both as it sees big blocks freed (the mmap
threshold to the freed size, at most 32 MiB, the trim threshold to twice that), so
which of a step's arrays come back as fresh pages depends on the sizes freed so far and
on the order of the frees. Every fresh page is a page fault and a zeroed page on the
next write: on the 2-core VM, 2,100 faults and 6.6-10 ms of system time per training
step of the depthwise benchmark case (ours 10.2-13.1 ms, torch's step about 5 ms),
after a change that freed the step's temporaries earlier (see ``docs/convolution.md``).

On the first NumPy convolution, :func:`tune` sets both thresholds to where glibc's own
rule ends up after a 32 MiB block has been freed: mmap threshold 32 MiB, trim threshold
64 MiB. Arrays below 32 MiB then come from the heap, and up to 64 MiB of freed heap top
stay mapped for the next step (same case: 0 faults, 0.3 ms of system time, 6.0 ms). It
is a process-wide setting of the C library, so it is skipped where the user has chosen
one (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``GLIBC_TUNABLES`` in the environment), off Linux and off glibc, and
``FMTARRAY_HEAP_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from ._common import switched_off

__all__ = ["tune", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: glibc's ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling of the dynamic mmap threshold on 64-bit systems, and twice it
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: the user's own malloc settings, which are left alone
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")

_result: list = []  # [None] once tuned, [reason] when skipped
_lock = threading.Lock()


def tune():
    """Set the thresholds once per process; ``None`` when set, else why not."""
    if _result:
        return _result[0]
    with _lock:
        if not _result:
            _result.append(_tune())
    return _result[0]


def _tune():
    off = switched_off("FMTARRAY_HEAP_TUNING", "leave glibc's malloc thresholds alone",
                       "set them, the default")
    if off:
        return off
    user = [k for k in _USER_SETTINGS if k in os.environ]
    if user:
        return f"the environment sets glibc's malloc ({', '.join(user)})"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "the C library is not glibc"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "mallopt refused the thresholds"
    return None
