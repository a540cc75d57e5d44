"""Every tuning threshold of the convolution kernels, in one dataclass.

The values are read through :func:`current`; :func:`tuning` changes some of them
within a ``with`` block (for tests, experiments and users with other machines). The
change is local to the calling thread's context (a :mod:`contextvars` variable) and
travels with the work the kernels hand to their worker threads, so two threads can
run with different settings at once and nothing is left behind after the block.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass

__all__ = ["Tuning", "current", "tuning"]


@dataclass(frozen=True)
class Tuning:
    """Thresholds and buffer sizes (bytes unless said otherwise)."""

    #: upper bound of one column/pad buffer; keeps extra memory bounded whatever the batch
    workspace_bytes: int = 64 * 2**20
    #: target size of one column tile (gathered, then consumed by a GEMM while in cache)
    tile_bytes: int = 2 * 2**20
    #: elements per block of a transposing copy
    copy_block: int = 1 << 17
    #: weight matrices at least this large use "wide" GEMMs (weights streamed once per chunk)
    wide_weight_bytes: int = 2 * 2**20
    #: convolutions with fewer multiply-adds run on the calling thread alone
    serial_macs: int = 1 << 22
    #: per-item partial sums up to this size let a summing phase hand out items dynamically
    ordered_sum_bytes: int = 16 * 2**20
    #: scratch buffers at least this large are kept per thread for the next call
    scratch_keep_bytes: int = 8 * 2**20
    #: batch-innermost path when the channels-last gather would copy runs shorter than this
    bi_max_run: int = 8
    #: minimum flat row length N·Wp for the last-dim-innermost path (elements)
    li_min_run: int = 256
    #: most channels for the last-dim-innermost path
    li_max_c: int = 64
    #: channel range of the flat-shift batch-innermost backward
    flat_channels: tuple = (8, 32)
    #: its minimum batch, minimum flat row (elements) and tile (elements)
    flat_min_n: int = 16
    flat_min_row: int = 512
    flat_tile: int = 2048
    #: Winograd: target size of one block's buffers
    winograd_block_bytes: int = 6 * 2**20
    #: Winograd: GEMM columns (tiles × batch) a block should have
    winograd_min_gemm_cols: int = 256
    #: Winograd: transformed filters at least this large use chunked "wide" GEMMs
    winograd_wide_u_bytes: int = 8 * 2**20
    #: Winograd: smallest number of GEMM columns (2×2 tiles × batch) worth transforming for
    winograd_min_total_cols: int = 512
    #: Winograd: smallest channel and filter counts for which the transforms pay off
    winograd_min_c: int = 8
    winograd_min_f: int = 8
    #: Winograd: smallest batch (the batch is the GEMMs' innermost run)
    winograd_min_n: int = 4
    #: channel-wise paths: target size of one output tile (forward, transposing layout)
    depthwise_tile_bytes: int = 256 * 2**10
    #: channel-wise batch-innermost weight gradient: target size of one cotangent row block
    depthwise_wgrad_tile_bytes: int = 512 * 2**10
    #: Winograd on a canonical copy of other-layout data ("via canonical copy: …"): the
    #: fewest multiply-adds per copied value (x and y, or cotangent and input gradient)
    relayout_winograd_min_macs: int = 512
    #: the batch-innermost entries on a canonical copy: the fewest filter taps
    relayout_bi_min_taps: int = 10
    #: compiled direct convolution (numba.direct) where numpy.winograd applies: the most
    #: channels × filters (above, the Winograd entries serve; measured NHWC forward:
    #: 128×128 a tie, 256×256 Winograd 1.3× faster)
    direct_max_cf: int = 32768
    #: numba.winograd (channels-last Winograd forward): the fewest channels × filters;
    #: the most bytes of transformed input ``V`` (16 · tiles · C values) built at once
    #: (more tiles: in chunks of this size, one after the other); transformed filters
    #: ``U`` (16 · C · F values) of at most this many bytes are formed once per call
    #: (more: each item forms its block's, never the whole ``U``)
    numba_winograd_min_cf: int = 2304
    #: numba.winograd_weight_grad: the fewest channels × filters (measured 2026-12-07
    #: on an AMD EPYC, AVX-512, 2 vCPUs, against numba.direct in the same process:
    #: 64→64 b32 56×56 0.86×, dilated 64→64 0.74×, 96→96 1.28×, 64→128 1.30×, 128→128
    #: 1.52×, 256→256 1.32×; on the Intel VM of the sessions before, 64→64 1.2×)
    numba_winograd_wgrad_min_cf: int = 8192
    numba_winograd_max_v_bytes: int = 8 * 2**20
    numba_winograd_u_bytes: int = 4 * 2**20
    #: with ``U`` formed once: the bytes of ``V`` per item (a run of tiles taken through
    #: all three steps in the cache)
    numba_winograd_run_bytes: int = 2**20
    #: weight gradients of one filter vector: window values in the lanes
    #: (:mod:`._numba._wgrad_pieces`) where a window run fills at least this share of the
    #: vectors it is cut into (a value above 1: never; measured float32, against the
    #: other tile: runs of 48 or 160 values 1.06-1.21×, of 24 (0.75) 0.91-1.02×)
    numba_wgrad_pieces_min_fill: float = 0.8
    #: numba.direct on data not stored channels innermost (e.g. canonical, copied
    #: channels-last): the most channels × filters per group, and for the input gradient
    #: the fewest channels per group (measured float32 2026-12-06: 16→16, 16→32, 48→48
    #: and grouped 16→16 2-4× faster than the BLAS entries, 1→20's and 3→64's input
    #: gradients slower; 2026-12-07, canonical data against the BLAS/Winograd entries,
    #: forward / VJP: 64→64 3×3 1.12 / 0.97, dilated 64→64 1.10 / 1.22, 1×1 32→96 1.36 /
    #: 1.10, 512→512 3×3 1.12 / 1.02, 64→64 float64 0.95 / 0.99: up to 512×512)
    direct_copy_max_cf: int = 262144
    direct_copy_min_cg: int = 8
    #: numba.direct_input_grad with more than direct_max_cf channels × filters: the
    #: fewest output positions (below, the weights' per-call transposed copy, about 36/P
    #: of the kernel's time over P positions, costs more than the kernel saves over
    #: numpy.grad_as_conv; 512→512 3×3 b8 7×7, 392 positions: 11.3 vs 13.1 ms, the copy
    #: 0.8 ms; before the copy was compiled, 5.6 ms: 17.8 vs 14.2)
    direct_input_grad_min_positions: int = 256
    #: numba.direct forward: the most weight bytes of one filter block summed at once
    #: (bigger reductions go a block of runs, or of one run, at a time: kept in L2)
    direct_weight_block_bytes: int = 256 * 2**10
    #: numba.direct forward and input gradient: weights (of one group's filters, as
    #: summed) of this many bytes and more go to the workers by filter blocks, each over
    #: all (or few blocks of) the positions, so that each block of weights is read from
    #: memory once, not once per block of positions (measured 2026-12-07, no other library
    #: running: 512→512 3×3 b8 7×7 11.2-13.1 → 9.6-10.1 ms, b2 14×14 11.3 → 9.5 ms;
    #: 256→256 14×14 a tie)
    direct_filter_split_bytes: int = 2**20
    #: numba.direct weight gradients of this many bytes and more are split over the
    #: workers by filter blocks (else by positions, per-block partial gradients added in
    #: order; 512→512 3×3: 34 → 12 ms)
    direct_wgrad_split_bytes: int = 2**20
    #: numba.direct's weight gradient of one group: weights of fewer bytes (more: BLAS's
    #: GEMM, numpy.gemm_wide, measured 2026-12-07 on an AMD EPYC, AVX-512, 2 vCPUs, 1.12-1.34×
    #: faster: 512→512 3×3 b8 and b32 7×7, float32 and float64, 256→512 and 256→256 3×3
    #: stride 2, 256→256 b64 14×14)
    direct_wgrad_max_bytes: int = 2 * 2**20
    #: numba.direct's forward and weight gradient read a zero-padded channels-last input
    #: in place, with no padded copy, when it has at least this many times the weights'
    #: bytes (the border groups gather their rows of the weights, about 5× them for 3×3;
    #: measured: the weight gradient loses at 2.7×, ties at 14×, wins from 40×)
    direct_in_place_ratio: int = 8
    #: numba.direct_input_grad reads a channels-last cotangent in place when it has at
    #: least this many times the weights' bytes (5×5 s2 48→48 at 3.4×: 2.6 against 3.1
    #: ms; b8 7×7 128→256 at 0.3×: 1.9 against 1.7)
    direct_input_grad_in_place_ratio: int = 2


_DEFAULT = Tuning()
_CURRENT: contextvars.ContextVar[Tuning] = contextvars.ContextVar("fmtarray_tuning",
                                                                   default=_DEFAULT)


def current() -> Tuning:
    """The settings in force for the calling context."""
    return _CURRENT.get()


@contextlib.contextmanager
def tuning(**changes):
    """``with tuning(tile_bytes=300, workspace_bytes=2000): ...`` — change thresholds
    within the block. Unknown names are a ``TypeError`` listing the legal ones."""
    names = {f.name for f in dataclasses.fields(Tuning)}
    bad = sorted(set(changes) - names)
    if bad:
        raise TypeError(f"tuning: unknown setting(s) {bad}; the settings are {sorted(names)}")
    token = _CURRENT.set(dataclasses.replace(_CURRENT.get(), **changes))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)
