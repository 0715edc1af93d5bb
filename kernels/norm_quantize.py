"""Pallas kernels: RMSNorm / MXNorm fused with the MX cast, plain RMSNorm forward, and RMSNorm backward.

One program owns ``TR`` whole rows, viewed as a (TR, nb_pow2, bs) tile (blocks of the cast on the last axis,
the block count padded to a power of two and masked to zero); it computes the row statistic with the shared
tile math of ``mx_jax.norms`` (pairwise tree sums, IEEE div/sqrt: ``kernels._dispatch.TritonArith`` when
compiled), normalizes, and either stores the float result or quantizes it with ``kernels.mx_quantize.mx_tile``
and stores codes + scale bytes. Every program also writes its rows' inverse RMS (the backward's residual).

Backward: dx = inv * (h - x * (inv^2 * mean(h * x))), h = gain * dy, one program per TR rows; each program
writes the tree sum over its rows of dy * x * inv, and the wrapper finishes the gain gradient's row tree.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch
from kernels import partitioning
from kernels.mx_quantize import (codes_to_storage, mx_quantize, mx_tile, next_pow2, pad_last,
                                 scale_bytes_to_storage, stochastic_bits)
from mx_jax import norms
from mx_jax.formats import get_format
from mx_jax.qarray import QArray

# Longest row (elements, after padding to a power-of-two number of blocks) a compiled program holds.
MAX_ROW_TRITON = 32768


def _row_tiles(r: int, row_len: int, block_rows):
  if block_rows:
    return int(block_rows)
  if _dispatch.interpret():
    return min(next_pow2(r), 16)
  return min(next_pow2(r), max(1, 8192 // row_len))


def _warps(elems: int, num_warps):
  if num_warps is not None or _dispatch.interpret():
    return num_warps
  # measured on an H100 (BENCHMARKS.md): a 8192-wide row per program runs best with 4 warps
  return 4 if elems <= 8192 else (8 if elems <= 16384 else 16)


def supported(n: int, bs: int) -> bool:
  """Whether the fused kernels take rows of n elements with blocks of bs (else the XLA path is used)."""
  return _dispatch.interpret() or next_pow2(-(-n // bs)) * bs <= MAX_ROW_TRITON


def _mosaic(n: int, bs: int, dtype, kind: str = "fwd", kernel: str = "norm") -> bool:
  """Compiled with the Mosaic GPU backend chosen for ``kernel`` and rows that kernels/mgpu_norm.py takes."""
  if _dispatch.interpret() or _dispatch.gpu_backend(kernel) != "mosaic":
    return False
  from kernels import mgpu_norm
  return mgpu_norm.supported(n, bs, dtype, kind)


def _prep(x, bs):
  """x (..., n) -> (R, nb, bs) in x's dtype, zero-padded along the row; (R, n, nb, nbp)."""
  n = x.shape[-1]
  r = math.prod(x.shape[:-1])
  nb = -(-n // bs)
  return pad_last(x.reshape(r, n), nb * bs - n).reshape(r, nb, bs), r, n, nb, next_pow2(nb)


def _norm_kernel(*refs, kind, n, nb, nbp, r, tr, bs, eps, p, c, exact_sq, has_gain, quant, out_dtype,
                 intermediate_dtype, has_rbits, x_dtype, g_dtype):
  refs = list(refs)
  x_ref = refs.pop(0)
  g_ref = refs.pop(0) if has_gain else None
  rb_ref = refs.pop(0) if has_rbits else None
  rows = pl.program_id(0) * tr + lax.broadcasted_iota(jnp.int32, (tr, 1, 1), 0)
  blks = lax.broadcasted_iota(jnp.int32, (1, nbp, 1), 1)
  mask = (rows < r) & (blks < nb)
  arith = _dispatch.kernel_arith()
  x = _dispatch.load(x_ref, mask, src_dtype=x_dtype)
  g = _dispatch.load(g_ref, blks < nb, src_dtype=g_dtype) if has_gain else None
  if kind == "rms":
    inv = norms.rms_inv_from_tile(x, n, eps, arith, exact_sq)
  else:
    inv = norms.mx_inv_from_tile(x, nb, eps, p, c, arith)
  y = norms.normalize_tile(x, inv, g)
  if quant is None:
    y_ref, inv_ref = refs
    _dispatch.store_float(y_ref, y, out_dtype, mask)
  else:
    codes_ref, scales_ref, inv_ref = refs
    elem, scale_mode, rounding, fast = quant
    if intermediate_dtype is not None:
      y = y.astype(intermediate_dtype).astype(jnp.float32)
    rbits = _dispatch.load(rb_ref, mask) if has_rbits else None
    codes, sb = mx_tile(y, elem, scale_mode, rounding, rbits, fast, _dispatch.fast_only())
    _dispatch.store(codes_ref, codes, mask)
    _dispatch.store(scales_ref, sb, mask.reshape(tr, nbp))
  _dispatch.store_float(inv_ref, inv, jnp.float32, rows.reshape(tr) < r)


def _add_gain_input(in_specs, args, gain, n, nb, nbp, bs) -> None:
  """Appends the (zero-padded, block-shaped) gain and its whole-array BlockSpec, when there is a gain."""
  if gain is not None:
    g3 = pad_last(gain.reshape(1, n), nb * bs - n).reshape(1, nb, bs)
    in_specs.append(pl.BlockSpec((1, nbp, bs), lambda i: (0, 0, 0)))
    args.append(_dispatch.kernel_in(g3))


def _norm_call(x, gain, *, kind, eps, p, bs, quant=None, out_dtype=jnp.float32, intermediate_dtype=None,
               rbits3=None, block_rows=None, num_warps=None):
  x3, r, n, nb, nbp = _prep(x, bs)
  row_len = nbp * bs
  tr = _row_tiles(r, row_len, block_rows)
  c = norms.mxnorm_constant(p, bs) if kind == "mx" else 0.0
  exact_sq = norms._exact_squares(x.dtype)
  blk = pl.BlockSpec((tr, nbp, bs), lambda i: (i, 0, 0))
  in_specs, args = [blk], [_dispatch.kernel_in(x3)]
  _add_gain_input(in_specs, args, gain, n, nb, nbp, bs)
  if rbits3 is not None:
    in_specs.append(blk)
    args.append(rbits3)
  inv_spec = pl.BlockSpec((tr,), lambda i: (i,))
  inv_shape = jax.ShapeDtypeStruct((r,), _dispatch.kernel_out_dtype(jnp.float32))
  if quant is None:
    out_shape = (jax.ShapeDtypeStruct((r, nb, bs), _dispatch.kernel_out_dtype(out_dtype)), inv_shape)
    out_specs = (blk, inv_spec)
  else:
    out_shape = (jax.ShapeDtypeStruct((r, nb, bs), jnp.uint8), jax.ShapeDtypeStruct((r, nb), jnp.uint8),
                 inv_shape)
    out_specs = (blk, pl.BlockSpec((tr, nbp), lambda i: (i, 0)), inv_spec)
  kernel = lambda *refs: _norm_kernel(
      *refs, kind=kind, n=n, nb=nb, nbp=nbp, r=r, tr=tr, bs=bs, eps=eps, p=p, c=c, exact_sq=exact_sq,
      has_gain=gain is not None, quant=quant, out_dtype=out_dtype, intermediate_dtype=intermediate_dtype,
      has_rbits=rbits3 is not None, x_dtype=x3.dtype, g_dtype=None if gain is None else gain.dtype)
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(pl.cdiv(r, tr),), in_specs=in_specs, out_specs=out_specs,
      interpret=_dispatch.interpret(),
      compiler_params=_dispatch.compiler_params(num_warps=_warps(tr * row_len, num_warps)),
      name=f"{kind}_norm" + ("" if quant is None else "_quantize"),
  )(*args)
  if quant is None:
    outs = (_dispatch.kernel_out(outs[0], out_dtype), _dispatch.kernel_out(outs[1], jnp.float32))
  else:
    outs = outs[:2] + (_dispatch.kernel_out(outs[2], jnp.float32),)
  return outs, r, n, nb


@partitioning.norm
def norm_pallas(x, gain, *, eps, kind, p, block_size, out_dtype=jnp.float32, block_rows=None, num_warps=None):
  """Normalized x (x's shape, ``out_dtype``) and per-row inverse RMS (R,) float32 by the Pallas kernel."""
  if _dispatch.on_tpu():  # Pallas TPU kernel (kernels/tpu_norm.py)
    from kernels import tpu_norm
    return tpu_norm.norm(x, gain, eps=eps, kind=kind, p=p, block_size=block_size, out_dtype=out_dtype)
  if x.size == 0 or not supported(x.shape[-1], block_size):
    y, inv = norms._xla_norm_f32(x, gain, eps, kind, p, block_size)
    return y.reshape(x.shape).astype(out_dtype), inv
  if _mosaic(x.shape[-1], block_size if kind == "mx" else norms._TREE_BLOCK, x.dtype):
    from kernels import mgpu_norm
    return mgpu_norm.norm_pallas_mgpu(x, gain, eps=eps, kind=kind, p=p, block_size=block_size,
                                      out_dtype=out_dtype)
  (y, inv), r, n, nb = _norm_call(x, gain, kind=kind, eps=eps, p=p, bs=block_size, out_dtype=out_dtype,
                                  block_rows=block_rows, num_warps=num_warps)
  y = y.reshape(r, nb * block_size)
  if nb * block_size != n:
    y = y[:, :n]
  return y.reshape(x.shape), inv


@partitioning.norm_quantize
def norm_quantize_pallas(x, gain, fmt, *, eps, kind, p, norm_block, block_size, scale_mode="floor",
                         rounding="nearest_even", key=None, rbits=None, intermediate_dtype=None,
                         block_rows=None, num_warps=None, fast=True, return_inv=False):
  """Fused norm + cast -> QArray (and the per-row inverse RMS when ``return_inv``).

  MX formats run fully fused. nvfp4 (its tensor scale needs the whole normalized tensor first) runs the norm
  kernel to float32 and then the quantize kernel.
  """
  if _dispatch.on_tpu():  # Pallas TPU kernel (kernels/tpu_norm.py)
    from kernels import tpu_norm
    return tpu_norm.norm_quantize(x, gain, fmt, eps=eps, kind=kind, p=p, norm_block=norm_block,
                                  block_size=block_size, scale_mode=scale_mode, rounding=rounding, key=key,
                                  rbits=rbits, intermediate_dtype=intermediate_dtype, return_inv=return_inv)
  f = get_format(fmt)
  n = x.shape[-1]
  if f.kind == "nvfp4" or x.size == 0 or not supported(n, block_size) or (kind == "rms"
                                                                         and norm_block != block_size):
    y, inv = norm_pallas(x, gain, eps=eps, kind=kind, p=p, block_size=norm_block, out_dtype=jnp.float32)
    if intermediate_dtype is not None:
      y = y.astype(intermediate_dtype).astype(jnp.float32)
    q = mx_quantize(y, f.name, block_size=block_size, scale_mode=scale_mode, rounding=rounding, key=key,
                    rbits=rbits, impl="pallas")
    return (q, inv) if return_inv else q
  if _mosaic(n, block_size, x.dtype, kernel="norm_quantize"):
    from kernels import mgpu_norm
    q, inv = mgpu_norm.norm_quantize_mgpu(x, gain, f.name, eps=eps, kind=kind, p=p, block_size=block_size,
                                          scale_mode=scale_mode, rounding=rounding, key=key, rbits=rbits,
                                          intermediate_dtype=intermediate_dtype)
    return (q, inv) if return_inv else q
  lead = tuple(x.shape[:-1])
  nb = -(-n // block_size)
  rb3 = None
  if rounding == "stochastic":
    rb3 = stochastic_bits(key, rbits, lead, nb, block_size).reshape(-1, nb, block_size)
  (codes, sb, inv), r, n, nb = _norm_call(
      x, gain, kind=kind, eps=eps, p=p, bs=block_size, quant=(f.elem, scale_mode, rounding, fast),
      intermediate_dtype=intermediate_dtype, rbits3=rb3, block_rows=block_rows, num_warps=num_warps)
  data = codes_to_storage(codes.reshape(lead + (nb * block_size,)), f.elem)
  scales = scale_bytes_to_storage(sb.reshape(lead + (nb,)), "mx")
  q = QArray(data, scales, None, f.name, len(lead), tuple(x.shape), block_size, False)
  return (q, inv) if return_inv else q


# ----------------------------------------------------------------------------------------------------------
# RMSNorm backward
# ----------------------------------------------------------------------------------------------------------


def _tree_sum_rows(v, how="split"):
  """Adjacent-pair tree over the first axis (length a power of two) -> v.shape[1:]."""
  while v.shape[0] > 1:
    t = v.shape[0]
    v = norms.pair_sum(v.reshape((t // 2, 2) + v.shape[1:]), axis=1, how=how)
  return v.reshape(v.shape[1:])


def _bwd_kernel(*refs, n, nb, nbp, r, c, bs, has_gain, x_dtype, g_dtype, dy_dtype):
  """One program = one group of c rows, walked one row at a time: dx per row, the gain gradient summed
  sequentially over the group's rows (the order of norms.dgain_groups)."""
  refs = list(refs)
  x_ref = refs.pop(0)
  g_ref = refs.pop(0) if has_gain else None
  dy_ref, inv_ref, dx_ref, dg_ref = refs
  arith = _dispatch.kernel_arith()
  blks = lax.broadcasted_iota(jnp.int32, (1, nbp, 1), 1)
  g = _dispatch.load(g_ref, blks < nb, src_dtype=g_dtype) if has_gain else None
  row0 = pl.program_id(0) * c

  def body(i, acc):
    row = row0 + i
    mask = (blks < nb) & (row < r)
    sl = (pl.ds(i, 1), slice(None), slice(None))
    x = _dispatch.load(x_ref.at[sl], mask, src_dtype=x_dtype)
    dy = _dispatch.load(dy_ref.at[sl], mask, src_dtype=dy_dtype)
    inv = _dispatch.load(inv_ref.at[pl.ds(i, 1)], jnp.full((1,), row < r), src_dtype=jnp.float32)
    dx, dg = norms.rms_bwd_tile(x, g, dy, inv, n, arith)
    _dispatch.store_float(dx_ref.at[sl], dx, x_dtype, mask)
    return acc + dg

  acc = lax.fori_loop(0, c, body, jnp.zeros((1, nbp, bs), jnp.float32))
  _dispatch.store_float(dg_ref, acc, jnp.float32, blks < nb)


@partitioning.rms_norm_bwd
def rms_norm_bwd_pallas(x, gain, inv, dy, *, num_warps=None):
  """(dx in x.dtype, dgain float32 (n,)) for y = rms_norm(x, gain); equals norms.rms_norm_bwd's XLA path."""
  if _dispatch.on_tpu():
    from kernels import tpu_norm
    return tpu_norm.rms_norm_bwd(x, gain, inv, dy)
  bs = norms._TREE_BLOCK
  n = x.shape[-1]
  if x.size == 0 or not supported(n, bs):
    return norms.rms_norm_bwd(x, gain, inv, dy, impl="xla")
  if _mosaic(n, bs, x.dtype, "bwd", kernel="norm_bwd"):
    from kernels import mgpu_norm
    return mgpu_norm.rms_norm_bwd_mgpu(x, gain, inv, dy)
  x3, r, n, nb, nbp = _prep(x, bs)
  dy3, *_ = _prep(dy, bs)
  groups, c = norms.bwd_groups(r)
  blk = pl.BlockSpec((c, nbp, bs), lambda i: (i, 0, 0))
  in_specs, args = [blk], [_dispatch.kernel_in(x3)]
  _add_gain_input(in_specs, args, gain, n, nb, nbp, bs)
  in_specs += [blk, pl.BlockSpec((c,), lambda i: (i,))]
  args += [_dispatch.kernel_in(dy3), _dispatch.kernel_in(inv.reshape(r).astype(jnp.float32))]
  kernel = lambda *refs: _bwd_kernel(*refs, n=n, nb=nb, nbp=nbp, r=r, c=c, bs=bs, has_gain=gain is not None,
                                     x_dtype=x.dtype, g_dtype=None if gain is None else gain.dtype,
                                     dy_dtype=dy.dtype)
  dx3, dgp = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((r, nb, bs), _dispatch.kernel_out_dtype(x.dtype)),
                 jax.ShapeDtypeStruct((groups, nb, bs), _dispatch.kernel_out_dtype(jnp.float32))),
      grid=(groups,), in_specs=in_specs,
      out_specs=(blk, pl.BlockSpec((1, nbp, bs), lambda i: (i, 0, 0))),
      interpret=_dispatch.interpret(),
      compiler_params=_dispatch.compiler_params(num_warps=_warps(nbp * bs, num_warps), num_stages=2),
      name="rms_norm_bwd",
  )(*args)
  dx3, dgp = _dispatch.kernel_out(dx3, x.dtype), _dispatch.kernel_out(dgp, jnp.float32)
  dx = dx3.reshape(r, nb * bs)[:, :n].reshape(x.shape)
  dgp = dgp.reshape(groups, nb * bs)[:, :n]
  return dx, norms.tree_sum_last(dgp.T)
