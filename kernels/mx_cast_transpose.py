"""Pallas kernel: MX quantization along a non-last axis, written transposed (a "cast-transpose"), optionally
with the last-axis quantization of the same tile (both orientations from one read of the input).

``mx_cast_transpose(x, fmt, axis=a)`` returns ``(row, col)``:
  * ``col`` == ``mx_jax.quantize(jnp.moveaxis(x, a, -1), fmt, axis=-1)`` bit for bit: x quantized in blocks
    along axis ``a``, stored with that axis last (the (rows, K) layout the block-scaled GEMM reads, so a
    weight gradient's or attention's operand contracted along a middle axis needs no transpose of its own);
  * ``row`` == ``mx_jax.quantize(x, fmt, axis=-1)`` (``rowwise=True``, which needs ``a == x.ndim - 2``), or
    None.
Element math is ``mx_quantize.mx_tile`` (scale 2^e from the block absmax, elements RNE / round-half-away on
the element grid, saturated to ±max_normal; NaN/Inf blocks get the NaN scale), so both equal the spec path.

Kernel layout: x is viewed as (L, R, C) (L = product of the axes before ``a``, R = x.shape[a], C = product
of the axes after it); a program loads a (TR, TC) tile once, quantizes it along C as (TR, TC/bs, bs) blocks
(row) and, after an in-register transpose, along R as (TC, TR/bs, bs) blocks (col). R (and C for ``row``) is
zero-padded to a multiple of the block size, as the spec path pads the quantized axis.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch
from kernels.mx_quantize import codes_to_storage, mx_tile, next_pow2, scale_bytes_to_storage
from mx_jax.formats import get_format
from mx_jax.qarray import QArray

ROUNDINGS = ("nearest_even", "nearest_away")


def _tile(n: int, bs: int, cap: int) -> int:
  return int(max(bs, min(next_pow2(n), cap)))


def _ct_kernel(x_ref, *refs, elem, scale_mode, rounding, bs, r, c, tr, tc, masked, rowwise, src_dtype):
  if rowwise:
    row_ref, row_s_ref, col_ref, col_s_ref = refs
  else:
    col_ref, col_s_ref = refs
  mask = row_smask = col_mask = col_smask = None
  if masked:
    i0, j0 = pl.program_id(1) * tr, pl.program_id(2) * tc
    iota = lambda shape, d, step=1: lax.broadcasted_iota(jnp.int32, shape, d) * step
    mask = (i0 + iota((tr, tc), 0) < r) & (j0 + iota((tr, tc), 1) < c)
    row_smask = (i0 + iota((tr, tc // bs), 0) < r) & (j0 + iota((tr, tc // bs), 1, bs) < c)
    col_mask = (j0 + iota((tc, tr), 0) < c) & (i0 + iota((tc, tr), 1) < r)
    col_smask = (j0 + iota((tc, tr // bs), 0) < c) & (i0 + iota((tc, tr // bs), 1, bs) < r)
  x = _dispatch.load(x_ref, mask, src_dtype=src_dtype)  # (tr, tc) float32
  fast_only = _dispatch.fast_only()
  if rowwise:
    codes, sb = mx_tile(x.reshape(tr, tc // bs, bs), elem, scale_mode, rounding, fast_only=fast_only)
    _dispatch.store(row_ref, codes.reshape(tr, tc), mask)
    _dispatch.store(row_s_ref, sb, row_smask)
  xt = jnp.transpose(x)  # (tc, tr)
  codes, sb = mx_tile(xt.reshape(tc, tr // bs, bs), elem, scale_mode, rounding, fast_only=fast_only)
  _dispatch.store(col_ref, codes.reshape(tc, tr), col_mask)
  _dispatch.store(col_s_ref, sb, col_smask)


def cast_transpose_pallas(x3: jax.Array, fmt: str, *, block_size: int = 32, scale_mode: str = "floor",
                          rounding: str = "nearest_even", rowwise: bool = False, block_rows: int | None = None,
                          block_cols: int | None = None, num_warps: int | None = None):
  """Raw kernel call on x3 (L, R, C), R (and C when ``rowwise``) multiples of ``block_size``. Returns uint8
  arrays: col codes (L, C, R), col scale bytes (L, C, R/bs), then (rowwise) row codes (L, R, C) and row scale
  bytes (L, R, C/bs)."""
  f = get_format(fmt)
  bs = block_size
  if x3.ndim != 3 or x3.shape[1] % bs or (rowwise and x3.shape[2] % bs):
    raise ValueError(f"x3 must be (L, R, C) with R{' and C' if rowwise else ''} a multiple of block_size={bs}; "
                     f"got shape {x3.shape}")
  l, r, c = x3.shape
  interp = _dispatch.interpret()
  # compiled: the H100 sweep's best (session 23, benchmarks/bench_cast_transpose.py --sweep): 128 columns and 4
  # warps; 64 rows for the col-only kernel with 128 columns, else 32 (run 2: 1.5-2.4 / 1.5-2.1 TB/s col / dual; the
  # 128 x 128 tile with 8 warps ran 0.44-0.94 TB/s)
  tc = block_cols or _tile(c, bs, 64 if interp else 128)
  tr = block_rows or _tile(r, bs, 64 if interp or (tc == 128 and not rowwise) else 32)
  if tr % bs or tc % bs or tr & (tr - 1) or tc & (tc - 1):
    raise ValueError(f"block_rows / block_cols must be powers of two and multiples of block_size={bs}; "
                     f"got {tr}, {tc}")
  masked = (r % tr != 0) or (c % tc != 0)
  grid = (l, pl.cdiv(r, tr), pl.cdiv(c, tc))
  col_specs = [pl.BlockSpec((None, tc, tr), lambda i, j, k: (i, k, j)),
               pl.BlockSpec((None, tc, tr // bs), lambda i, j, k: (i, k, j))]
  col_shapes = [jax.ShapeDtypeStruct((l, c, r), jnp.uint8), jax.ShapeDtypeStruct((l, c, r // bs), jnp.uint8)]
  out_specs, out_shape = col_specs, col_shapes
  if rowwise:
    out_specs = [pl.BlockSpec((None, tr, tc), lambda i, j, k: (i, j, k)),
                 pl.BlockSpec((None, tr, tc // bs), lambda i, j, k: (i, j, k))] + col_specs
    out_shape = [jax.ShapeDtypeStruct((l, r, c), jnp.uint8),
                 jax.ShapeDtypeStruct((l, r, c // bs), jnp.uint8)] + col_shapes
  if num_warps is None and not interp:
    num_warps = 4
  kernel = functools.partial(_ct_kernel, elem=f.elem, scale_mode=scale_mode, rounding=rounding, bs=bs, r=r, c=c,
                             tr=tr, tc=tc, masked=masked, rowwise=rowwise, src_dtype=x3.dtype)
  outs = pl.pallas_call(
      kernel,
      out_shape=tuple(out_shape),
      grid=grid,
      in_specs=[pl.BlockSpec((None, tr, tc), lambda i, j, k: (i, j, k))],
      out_specs=tuple(out_specs),
      interpret=interp,
      compiler_params=_dispatch.compiler_params(num_warps=num_warps),
      name=f"mx_cast_transpose_{f.name}",
  )(_dispatch.kernel_in(x3))
  if rowwise:
    return outs[2], outs[3], outs[0], outs[1]
  return outs[0], outs[1]


def _check(x, fmt, axis, rowwise, block_size, scale_mode, rounding):
  from mx_jax.quantize import _check_array, _check_options
  x = _check_array(x)
  f = get_format(fmt)
  if f.kind != "mx":
    raise ValueError(f"fmt must be an MX block format (mxfp8_e4m3, ..., mxint8); got {f.name!r}")
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS} for the cast-transpose kernel; got {rounding!r}")
  bs, _ = _check_options(f, block_size, scale_mode, rounding, None, None)
  if bs & (bs - 1) or not 2 <= bs <= 128:
    raise ValueError(f"block_size must be a power of two in [2, 128] for the cast-transpose kernel; got {bs}")
  if x.ndim < 2:
    raise ValueError(f"x must have rank >= 2 (a non-last axis to quantize along); got shape {x.shape}")
  if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim or axis % x.ndim == x.ndim - 1:
    raise ValueError(f"axis must be a non-last axis of x (rank {x.ndim}); got {axis!r}")
  axis %= x.ndim
  if rowwise and axis != x.ndim - 2:
    raise ValueError(f"rowwise=True needs axis == x.ndim - 2 = {x.ndim - 2} (the row quantization runs along the "
                     f"last axis, which must then be the tile's column axis); got axis={axis}")
  return x, f, axis, bs


def mx_cast_transpose(x: jax.Array, fmt: str, *, axis: int = -2, rowwise: bool = False,
                      block_size: int | None = None, scale_mode: str = "floor", rounding: str = "nearest_even",
                      impl: str = "auto", block_rows: int | None = None, block_cols: int | None = None,
                      num_warps: int | None = None) -> tuple[QArray | None, QArray]:
  """MX-quantizes ``x`` along ``axis`` with that axis moved last, and (``rowwise``) along its last axis too.

  Returns ``(row, col)``: ``col`` is ``mx_jax.quantize(jnp.moveaxis(x, axis, -1), fmt, axis=-1, ...)``, ``row``
  is ``mx_jax.quantize(x, fmt, axis=-1, ...)`` or None; same bits. ``impl``: "auto" (the kernel on a GPU, XLA
  elsewhere), "xla", "pallas" (interpret mode off-GPU). ``block_rows`` / ``block_cols``: the kernel's tile
  along ``axis`` / along the axes after it (powers of two, multiples of the block size).
  """
  x, f, axis, bs = _check(x, fmt, axis, rowwise, block_size, scale_mode, rounding)
  _dispatch.resolve_impl(impl)
  return _ct_jit(x, f.name, axis, bool(rowwise), bs, scale_mode, rounding, _dispatch.impl_key(impl), block_rows,
                 block_cols, num_warps)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 11)))
def _ct_jit(x, fmt, axis, rowwise, bs, scale_mode, rounding, impl, block_rows, block_cols, num_warps):
  from mx_jax.quantize import quantize
  f = get_format(fmt)
  moved = jnp.moveaxis(x, axis, -1)
  if _dispatch.resolve_impl(impl) == "xla" or x.size == 0:
    col = quantize(moved, f.name, axis=-1, block_size=bs, scale_mode=scale_mode, rounding=rounding)
    row = quantize(x, f.name, axis=-1, block_size=bs, scale_mode=scale_mode, rounding=rounding) if rowwise else None
    return row, col
  lead, r, trail = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
  l, c = math.prod(lead), math.prod(trail)
  rp = -(-r // bs) * bs
  cp = -(-c // bs) * bs if rowwise else c
  x3 = x.reshape(l, r, c)
  if rp != r or cp != c:  # zero padding on the bits (XLA:CPU would pad bf16 through float32, flushing subnormals)
    x3 = lax.bitcast_convert_type(jnp.pad(_dispatch.as_bits(x3), ((0, 0), (0, rp - r), (0, cp - c))), x.dtype)
  outs = cast_transpose_pallas(x3, f.name, block_size=bs, scale_mode=scale_mode, rounding=rounding,
                               rowwise=rowwise, block_rows=block_rows, block_cols=block_cols, num_warps=num_warps)
  codes, sb = outs[0][:, :c], outs[1][:, :c]
  col = QArray(codes_to_storage(codes.reshape(moved.shape[:-1] + (rp,)), f.elem),
               scale_bytes_to_storage(sb.reshape(moved.shape[:-1] + (rp // bs,)), "mx"), None, f.name,
               moved.ndim - 1, tuple(moved.shape), bs, False)
  row = None
  if rowwise:
    codes, sb = outs[2][:, :r], outs[3][:, :r]
    row = QArray(codes_to_storage(codes.reshape(x.shape[:-1] + (cp,)), f.elem),
                 scale_bytes_to_storage(sb.reshape(x.shape[:-1] + (cp // bs,)), "mx"), None, f.name, x.ndim - 1,
                 tuple(x.shape), bs, False)
  return row, col
