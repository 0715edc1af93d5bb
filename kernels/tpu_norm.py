"""Pallas TPU kernels: RMSNorm / MXNorm (fused with the MX cast or not) and RMSNorm backward.

Math of ``mx_jax.norms`` (bit for bit): inv = rsqrt_det(mean + eps) with the row statistic a pairwise tree sum
over the row zero-padded to a power of two; y = x * (inv * gain); then the MX cast of ``tpu_quantize``.
Backward: dx = inv * (h - x * (inv^2 * mean(h x))), h = gain * dy; dgain summed sequentially within groups of
C rows, then a tree over groups (``norms.dgain_groups``).

Layout: one tile = TR whole rows on a (TR, L) block, L = the padded power-of-two row (>= 128 lanes); lanes >= n
are read as zero. The tree sums are lane rotations inside 128-lane chunks, then vreg-aligned chunk additions
(``_tpu.lane_tree_sum``); products that feed sums go through ``norms._Arith`` (a barrier against FMA
contraction in interpret mode on XLA:CPU; plain multiplies when compiled: Mosaic does not contract).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _tpu
from kernels import tpu_quantize as tq
from kernels.mx_quantize import codes_to_storage, scale_bytes_to_storage, stochastic_bits
from mx_jax import norms
from mx_jax.formats import get_format
from mx_jax.qarray import QArray

MAX_ROW = 16384  # longest padded row a tile holds


def supported(n: int, bs: int = 32) -> bool:
  """Whether the TPU norm kernels take rows of n elements (blocks of bs); else the XLA path."""
  return _row_len(n, bs) <= MAX_ROW


def _row_len(n, bs):
  return max(bs * norms.next_pow2(-(-n // bs)), 32 * norms.next_pow2(-(-n // 32)), _tpu.LANES)


def _arith():
  return norms._Arith(barrier=bool(_tpu.interpret_arg()))


def _load(ref, dtype, n, col0=0):
  """Float32 values of a bits tile, zero in lanes >= n."""
  b = _tpu.f32_bits_of(ref[...], dtype)
  return _tpu.f32_of_bits(jnp.where(col0 + _tpu.lane_iota(b.shape) < n, b, 0))


def _inv(x, kind, n, nb, bs, eps, p, arith, exact_sq):
  """Per-row 1/sqrt(stat + eps) (TR, 1), with norms' op order."""
  if kind == "rms":
    sq = x * x if exact_sq else arith.mul(x, x)
    plen = 32 * norms.next_pow2(-(-n // 32))
    ms = arith.mul(_tpu.lane_tree_sum(sq, plen), norms._recip(n))
  else:
    plen = bs * norms.next_pow2(nb)
    amax = _tpu.f32_of_bits(_tpu.group_max(lax.bitcast_convert_type(x, jnp.int32) & 0x7FFFFFFF, bs))
    c = norms.mxnorm_constant(p, bs)
    if p == 2:
      m = arith.mul(_tpu.lane_tree_sum(arith.mul(amax, amax), plen, bs), norms._recip(nb))
      ms = arith.mul(jnp.float32(c * c), m)
    else:
      t = arith.mul(_tpu.lane_tree_sum(amax, plen, bs), norms._recip(nb)) * jnp.float32(c)
      ms = arith.mul(t, t)
  return norms.rsqrt_det(ms + jnp.float32(eps), arith)


def _norm_kernel(*refs, kind, n, nb, bs, eps, p, exact_sq, has_gain, quant, out_dtype, idt, has_rbits, x_dtype,
                 g_dtype):
  refs = list(refs)
  x_ref = refs.pop(0)
  g_ref = refs.pop(0) if has_gain else None
  rb_ref = refs.pop(0) if has_rbits else None
  sel_ref = refs.pop(0) if quant else None
  arith = _arith()
  x = _load(x_ref, x_dtype, n)
  inv = _inv(x, kind, n, nb, bs, eps, p, arith, exact_sq)
  k = inv if g_ref is None else inv * _load(g_ref, g_dtype, n)
  y = x * k
  inv_ref = refs.pop()
  inv_ref[...] = lax.bitcast_convert_type(inv, jnp.uint32)
  if not quant:
    refs[0][...] = _tpu.as_bits(y.astype(out_dtype))
    return
  elem, scale_mode, rounding, qbs = quant
  if idt is not None:
    y = y.astype(idt).astype(jnp.float32)
  rbits = lax.bitcast_convert_type(rb_ref[...], jnp.int32) if has_rbits else None
  valid = _tpu.lane_iota(y.shape) < n
  codes, sb = tq.mx_tile(lax.bitcast_convert_type(y, jnp.int32), valid, elem, scale_mode, rounding, rbits, qbs)
  refs[0][...] = codes.astype(jnp.uint8)
  refs[1][...] = _tpu.mxu_select(sb, sel_ref[...]).astype(jnp.uint8)


def _norm_call(x, gain, *, kind, eps, p, bs, quant=None, out_dtype=jnp.float32, idt=None, rbits2=None,
               block_rows=None):
  n = x.shape[-1]
  r = math.prod(x.shape[:-1])
  nb = -(-n // bs)
  qbs = quant[3] if quant else bs
  lanes = max(_row_len(n, bs), qbs)
  tr = int(block_rows) if block_rows else _tpu.row_tile(r, max(8, (1 << 17) // lanes))
  blk = pl.BlockSpec((tr, lanes), lambda i: (i, 0))
  in_specs, args = [blk], [_tpu.as_bits(x.reshape(r, n))]
  if gain is not None:
    in_specs.append(pl.BlockSpec((1, lanes), lambda i: (0, 0)))
    args.append(_tpu.as_bits(gain.reshape(1, n)))
  if rbits2 is not None:
    in_specs.append(blk)
    args.append(rbits2)
  inv_spec = pl.BlockSpec((tr, 1), lambda i: (i, 0))
  inv_shape = jax.ShapeDtypeStruct((r, 1), jnp.uint32)
  if quant:
    nq = -(-n // qbs)
    in_specs.append(pl.BlockSpec((lanes, lanes // qbs), lambda i: (0, 0)))
    args.append(_tpu.onehot(lanes, lanes // qbs, qbs))
    out_shape = (jax.ShapeDtypeStruct((r, nq * qbs), jnp.uint8),
                 jax.ShapeDtypeStruct((r, lanes // qbs), jnp.uint8), inv_shape)
    out_specs = (blk, pl.BlockSpec((tr, lanes // qbs), lambda i: (i, 0)), inv_spec)
  else:
    out_shape = (jax.ShapeDtypeStruct((r, n), _tpu.uint_of(out_dtype)), inv_shape)
    out_specs = (blk, inv_spec)
  kernel = functools.partial(
      _norm_kernel, kind=kind, n=n, nb=nb, bs=bs, eps=eps, p=p, exact_sq=norms._exact_squares(x.dtype),
      has_gain=gain is not None, quant=quant and quant[:3] + (qbs,), out_dtype=out_dtype, idt=idt,
      has_rbits=rbits2 is not None, x_dtype=x.dtype, g_dtype=None if gain is None else gain.dtype)
  outs = pl.pallas_call(
      kernel, grid=(pl.cdiv(r, tr),), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_tpu.compiler_params("parallel"), interpret=_tpu.interpret_arg(),
      name=f"tpu_{kind}_norm" + ("_quantize" if quant else ""))(*args)
  inv = lax.bitcast_convert_type(outs[-1].reshape(r), jnp.float32)
  return outs[:-1], inv, r, n


def norm(x, gain, *, eps, kind, p, block_size, out_dtype=jnp.float32, block_rows=None, num_warps=None):
  """``norm_quantize.norm_pallas``'s contract: (normalized x in ``out_dtype``, inverse RMS (R,) float32)."""
  if x.size == 0 or not supported(x.shape[-1], block_size):
    y, inv = norms._xla_norm_f32(x, gain, eps, kind, p, block_size)
    return y.reshape(x.shape).astype(out_dtype), inv
  (y,), inv, r, n = _norm_call(x, gain, kind=kind, eps=eps, p=p, bs=block_size, out_dtype=jnp.dtype(out_dtype),
                               block_rows=block_rows)
  return lax.bitcast_convert_type(y, jnp.dtype(out_dtype)).reshape(x.shape), inv


def norm_quantize(x, gain, fmt, *, eps, kind, p, norm_block, block_size, scale_mode="floor",
                  rounding="nearest_even", key=None, rbits=None, intermediate_dtype=None, block_rows=None,
                  num_warps=None, fast=True, return_inv=False):
  """``norm_quantize.norm_quantize_pallas``'s contract: fused norm + MX cast -> QArray (and inv). NVFP4 (its
  tensor scale needs the whole normalized tensor) runs the norm kernel, then the quantize kernel."""
  f = get_format(fmt)
  n = x.shape[-1]
  if (f.kind == "nvfp4" or x.size == 0 or not supported(n, max(norm_block, block_size))
      or (kind == "mx" and norm_block != block_size)):
    y, inv = norm(x, gain, eps=eps, kind=kind, p=p, block_size=norm_block, out_dtype=jnp.float32)
    if intermediate_dtype is not None:
      y = y.astype(intermediate_dtype).astype(jnp.float32)
    q = tq.mx_quantize(y, f.name, block_size=block_size, scale_mode=scale_mode, rounding=rounding, key=key,
                       rbits=rbits, impl="pallas")
    return (q, inv) if return_inv else q
  lead = tuple(x.shape[:-1])
  nq = -(-n // block_size)
  rb2 = None
  if rounding == "stochastic":
    rb2 = stochastic_bits(key, rbits, lead, nq, block_size).reshape(-1, nq * block_size)
  (codes, sb), inv, r, n = _norm_call(
      x, gain, kind=kind, eps=eps, p=p, bs=norm_block, quant=(f.elem, scale_mode, rounding, block_size),
      idt=intermediate_dtype, rbits2=rb2, block_rows=block_rows)
  data = codes_to_storage(codes.reshape(lead + (nq * block_size,)), f.elem)
  scales = scale_bytes_to_storage(sb[:, :nq].reshape(lead + (nq,)), "mx")
  q = QArray(data, scales, None, f.name, len(lead), tuple(x.shape), block_size, False)
  return (q, inv) if return_inv else q


# ----------------------------------------------------------------------------------------------------------
# RMSNorm backward
# ----------------------------------------------------------------------------------------------------------


def _bwd_kernel(*refs, n, r, tr, c, has_gain, x_dtype, g_dtype, dy_dtype):
  """A tile of TR rows: dx for every row; each group of C consecutive rows adds its rows' gain gradients
  dy * (x * inv) in row order into its accumulator row (a group may span several tiles: TR < C)."""
  refs = list(refs)
  x_ref = refs.pop(0)
  g_ref = refs.pop(0) if has_gain else None
  dy_ref, inv_ref, dx_ref, dg_ref = refs
  arith = _arith()
  i = pl.program_id(0)
  g = None if g_ref is None else _load(g_ref, g_dtype, n)
  x, dy = _load(x_ref, x_dtype, n), _load(dy_ref, dy_dtype, n)
  inv = lax.bitcast_convert_type(inv_ref[...], jnp.float32)
  h = dy if g is None else arith.mul(g, dy)
  plen = 32 * norms.next_pow2(-(-n // 32))
  cm = arith.mul(_tpu.lane_tree_sum(arith.mul(h, x), plen), norms._recip(n))
  k = arith.mul(inv * inv, cm)
  dx = inv * (h - arith.mul(x, jnp.broadcast_to(k, x.shape)))
  dx_ref[...] = _tpu.as_bits(dx.astype(x_dtype))

  step = min(c, tr)  # rows of one group inside this tile: j, j + step, ... (TR // step groups)
  ng = tr // step
  spg = max(1, c // tr)  # tiles per group

  @pl.when(i % spg == 0)
  def _():
    dg_ref[...] = jnp.zeros(dg_ref.shape, dg_ref.dtype)

  def body(j, acc):
    sl = pl.ds(j, ng, stride=step) if ng > 1 else pl.ds(j, 1)
    xj = _load(x_ref.at[sl, :], x_dtype, n)
    dyj = _load(dy_ref.at[sl, :], dy_dtype, n)
    invj = lax.bitcast_convert_type(inv_ref[sl, :], jnp.float32)
    rows = i * tr + j + step * lax.broadcasted_iota(jnp.int32, (ng, 1), 0)
    return acc + jnp.where(rows < r, arith.mul(dyj, xj * invj), jnp.float32(0.0))

  acc = lax.bitcast_convert_type(dg_ref[...], jnp.float32)
  acc = lax.fori_loop(0, step, body, acc)
  dg_ref[...] = lax.bitcast_convert_type(acc, jnp.uint32)


def rms_norm_bwd(x, gain, inv, dy, *, num_warps=None, block_rows=None):
  """``norm_quantize.rms_norm_bwd_pallas``'s contract: (dx in x.dtype, dgain float32 (n,))."""
  n = x.shape[-1]
  if x.size == 0 or not supported(n):
    return norms.rms_norm_bwd(x, gain, inv, dy, impl="xla")
  r = math.prod(x.shape[:-1])
  lanes = _row_len(n, 32)
  groups, c = norms.bwd_groups(r)
  if block_rows:
    tr = int(block_rows)
  elif r < 8:
    tr = r
  else:
    tr = max(8, min(norms.next_pow2(r), max(8, (1 << 16) // lanes)))
    tr = 1 << (tr.bit_length() - 1)  # a power of two, so groups and tiles nest
  ng, spg = max(1, tr // c), max(1, c // tr)
  ntiles = pl.cdiv(r, tr)
  blk = pl.BlockSpec((tr, lanes), lambda i: (i, 0))
  in_specs, args = [blk], [_tpu.as_bits(x.reshape(r, n))]
  if gain is not None:
    in_specs.append(pl.BlockSpec((1, lanes), lambda i: (0, 0)))
    args.append(_tpu.as_bits(gain.reshape(1, n)))
  in_specs += [blk, pl.BlockSpec((tr, 1), lambda i: (i, 0))]
  args += [_tpu.as_bits(dy.reshape(r, n)), _tpu.as_bits(inv.reshape(r, 1).astype(jnp.float32))]
  nblk = pl.cdiv(ntiles, spg)
  kernel = functools.partial(_bwd_kernel, n=n, r=r, tr=tr, c=c, has_gain=gain is not None, x_dtype=x.dtype,
                             g_dtype=None if gain is None else gain.dtype, dy_dtype=dy.dtype)
  dx, dgp = pl.pallas_call(
      kernel, grid=(ntiles,), in_specs=in_specs,
      out_specs=(blk, pl.BlockSpec((None, ng, lanes), lambda i: (i // spg, 0, 0))),
      out_shape=(jax.ShapeDtypeStruct((r, n), _tpu.uint_of(x.dtype)),
                 jax.ShapeDtypeStruct((nblk, ng, lanes), jnp.uint32)),
      compiler_params=_tpu.compiler_params("arbitrary"), interpret=_tpu.interpret_arg(),
      name="tpu_rms_norm_bwd")(*args)
  dx = lax.bitcast_convert_type(dx, x.dtype).reshape(x.shape)
  dgp = lax.bitcast_convert_type(dgp, jnp.float32).reshape(nblk * ng, lanes)[:groups, :n]
  if dgp.shape[0] < groups:
    dgp = jnp.pad(dgp, ((0, groups - dgp.shape[0]), (0, 0)))
  return dx, norms.tree_sum_last(dgp.T)
