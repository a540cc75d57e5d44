"""LLVM IR helpers of the SIMD intrinsics beyond :mod:`._simd`'s: lane masks, masked
loads and stores, a loop that LLVM must not unroll, a vector pointer."""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from ._simd import _I32, _I64

__all__ = ["mask", "masked", "no_unroll", "at"]


def mask(v, n):
    """``<lanes × i1>``: lane ``l`` set where ``l < n``."""
    b = v.b
    ity = ir.VectorType(_I64, v.lanes)
    nv = b.insert_element(ir.Constant(ity, None), n, ir.Constant(_I32, 0))
    nv = b.shuffle_vector(nv, ir.Constant(ity, None),
                          ir.Constant(ir.VectorType(_I32, v.lanes), [0] * v.lanes))
    return b.icmp_signed("<", ir.Constant(ity, list(range(v.lanes))), nv)


def masked(v, store):
    """LLVM's masked load (``store`` false) or store of ``v``'s vectors."""
    kind = "store" if store else "load"
    name = f"llvm.masked.{kind}.v{v.lanes}{'f32' if v.align == 4 else 'f64'}.p0"
    mty = ir.VectorType(ir.IntType(1), v.lanes)
    pty = v.vty.as_pointer()
    fty = (ir.FunctionType(ir.VoidType(), [v.vty, pty, _I32, mty]) if store else
           ir.FunctionType(v.vty, [pty, _I32, mty, v.vty]))
    return cgutils.get_or_insert_function(v.b.module, fty, name)


def no_unroll(builder, block):
    """Mark the loop whose back edge ends ``block`` not to be unrolled: LLVM unrolls it
    twice otherwise, which needs twice the registers and spills the sums to the stack
    in every position (measured: 2.4x slower)."""
    m = builder.module
    flag = m.add_metadata([ir.MetaDataString(m, "llvm.loop.unroll.disable")])
    loop = m.add_metadata([flag, flag])  # its first operand made itself below (a loop ID)
    loop.operands = (loop, flag)
    block.terminator.set_metadata("llvm.loop", loop)


def at(v, base, idx):
    """A pointer to the vector of ``v``'s type at ``base[idx]``."""
    return v.b.bitcast(v.b.gep(base, [idx]), v.vty.as_pointer())
