"""Pallas TPU kernels: block-scaled MX matmul (any MX element formats, mixed) and a weight-only variant.

out[b, m, n] = sum_k A[b, m, k] * B[b, n, k], with A = elem_a * 2^(scale_a - 127) per 32-block (NVFP4 weights:
elem * e4m3 scale, times the FP32 tensor scale on the output). Grid (batch, M/tm, N/tn, K/tk), K innermost: each
step dequantizes both (tm, tk) / (tn, tk) tiles to bf16 in VMEM (exact: every MX value has <= 8 significant
bits), runs one full-tile ``jnp.dot`` with f32 accumulation into a VMEM scratch, and the last K step writes
``out_dtype``. Element codes travel as unpacked uint8 (the wrapper unpacks packed FP4/FP6 QArrays and
converts FP4 storage to codes; FP8/INT8/FP6 data are used as stored) and are decoded in-kernel with integer ops.
Scale bytes are laid out (K tiles, rows, tk/bs) by the wrapper (a small array) and expanded along the lanes
in-kernel by a 0/1 matmul on the MXU. K beyond the data (and the zero padding of a partial K tile) is masked.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import _tpu
from mx_jax import _bits
from mx_jax.formats import get_format
from mx_jax.packing import element_codes, unpack
from mx_jax.qarray import QArray

MX_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8")


@dataclasses.dataclass(frozen=True)
class TpuGemmConfig:
  """Tile sizes: tm / tn rows (multiples of 32 or the whole dim), tk lanes (a multiple of 128)."""
  tm: int = 256
  tn: int = 256
  tk: int = 512


def kernel_supports(a: QArray, b: QArray | None = None) -> str | None:
  """None when the TPU kernels take these operands (b None: a weight for the weight-only kernel)."""
  for q in (a, b):
    if q is None:
      continue
    if q.fmt not in MX_FORMATS and not (q.fmt == "nvfp4" and b is None):
      return f"format {q.fmt!r} (MX formats; NVFP4 as a weight-only weight)"
    if q.block_size != (16 if q.fmt == "nvfp4" else 32):
      return f"block_size {q.block_size} (the kernels take 32, NVFP4 16)"
  return None


def supported(a: QArray, b: QArray | None = None) -> bool:
  return kernel_supports(a, b) is None


def _scales3(sbytes: jax.Array, tk: int, bs: int) -> jax.Array:
  """(..., rows, nb) scale bytes -> (..., K tiles, rows, tk/bs), zero-padded."""
  spt = tk // bs
  nb = sbytes.shape[-1]
  nkt = -(-nb // spt)
  s = jnp.pad(sbytes, [(0, 0)] * (sbytes.ndim - 1) + [(0, nkt * spt - nb)])
  s = s.reshape(s.shape[:-1] + (nkt, spt))
  return jnp.moveaxis(s, -2, -3)


def _decode(codes, sexp, fmt: str):
  """Dequantized float32 tile from int32 codes and per-element int32 scale bytes (E8M0, or E4M3 for NVFP4)."""
  f = get_format(fmt)
  elem = f.elem
  c = codes
  if elem.is_int:
    mant = jnp.where(c >= 128, c - 256, c)
    ex = jnp.full_like(c, -elem.mbits)
  else:
    m = elem.mbits
    e_f = (c >> m) & ((1 << elem.ebits) - 1)
    man = c & ((1 << m) - 1)
    mant = jnp.where(e_f > 0, man + (1 << m), man)
    mant = jnp.where(((c >> (elem.bits - 1)) & 1) == 1, -mant, mant)
    ex = jnp.maximum(e_f, 1) - elem.bias - m
  if f.kind == "nvfp4":  # exact e2m1 * e4m3 in float32
    e4 = sexp & 0x7F
    sval = _bits.mul_pow2(jnp.where(e4 >= 8, (e4 & 7) + 8, e4 & 7).astype(jnp.float32),
                          jnp.maximum(e4 >> 3, 1) - 10)
    v = _bits.mul_pow2(mant.astype(jnp.float32), ex) * sval
    return jnp.where(e4 == 0x7F, jnp.nan, v)
  v = _bits.mul_pow2(mant.astype(jnp.float32), ex + sexp - 127)
  return jnp.where(sexp == 255, jnp.nan, v)


def _kernel(*refs, a_fmt, b_fmt, k_valid, tk, nkt, out_dtype, tensor_scale):
  refs = list(refs)
  a_ref = refs.pop(0)
  sa_ref, ea_ref = (refs.pop(0), refs.pop(0)) if a_fmt else (None, None)
  b_ref, sb_ref, eb_ref = refs.pop(0), refs.pop(0), refs.pop(0)
  ts_ref = refs.pop(0) if tensor_scale else None
  o_ref, acc_ref = refs
  kk = pl.program_id(3)

  @pl.when(kk == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def operand(d_ref, s_ref, e_ref, fmt):
    d = d_ref[...].astype(jnp.int32)
    valid = kk * tk + _tpu.lane_iota(d.shape) < k_valid
    if fmt is None:  # bf16 activations (as bits)
      return lax.bitcast_convert_type(jnp.where(valid, d, 0).astype(jnp.uint16), jnp.bfloat16)
    sexp = _tpu.mxu_select(s_ref[...].astype(jnp.int32), e_ref[...])
    v = _decode(d, sexp, fmt)
    return jnp.where(valid, v, 0.0).astype(jnp.bfloat16)

  a = operand(a_ref, sa_ref, ea_ref, a_fmt)
  b = operand(b_ref, sb_ref, eb_ref, b_fmt)
  acc_ref[...] += lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

  @pl.when(kk == nkt - 1)
  def _():
    out = acc_ref[...]
    if ts_ref is not None:
      out = out * lax.bitcast_convert_type(ts_ref[0], jnp.float32)
    o_ref[...] = _tpu.as_bits(out.astype(out_dtype))


def _tile(dim: int, want: int) -> int:
  return dim if dim <= want else max(_tpu.ROW_ALIGN, want // _tpu.ROW_ALIGN * _tpu.ROW_ALIGN)


def _gemm3(a_data, a_sc, a_fmt, b_data, b_sc, b_fmt, k_valid, *, out_dtype, config, tensor_scale=None):
  """a_data (B, M, Ka) uint8 codes (or bf16 when a_fmt is None), b_data (B, N, Kb) uint8 codes; scales
  (B, rows, nb) bytes -> (B, M, N) out_dtype."""
  cfg = config or TpuGemmConfig()
  bsz, m, _ = a_data.shape
  n = b_data.shape[1]
  kpad = max(_tpu.round_up(k_valid, 32), 32)
  tk = min(cfg.tk, _tpu.round_up(kpad, _tpu.LANES))
  nkt = -(-kpad // tk)
  tm, tn = _tile(m, cfg.tm), _tile(n, cfg.tn)
  grid = (bsz, pl.cdiv(m, tm), pl.cdiv(n, tn), nkt)
  in_specs, args = [], []

  def add(data, sc, fmt, rows, which):
    bs = 16 if fmt == "nvfp4" else 32
    spt = tk // bs
    if which == "a":
      in_specs.append(pl.BlockSpec((None, rows, tk), lambda b, i, j, k: (b, i, k)))
    else:
      in_specs.append(pl.BlockSpec((None, rows, tk), lambda b, i, j, k: (b, j, k)))
    args.append(data if fmt else _tpu.as_bits(data.astype(jnp.bfloat16)))
    if fmt:
      imap = (lambda b, i, j, k: (b, k, i, 0)) if which == "a" else (lambda b, i, j, k: (b, k, j, 0))
      in_specs.append(pl.BlockSpec((None, None, rows, spt), imap))
      args.append(_scales3(sc, tk, bs))
      in_specs.append(pl.BlockSpec((spt, tk), lambda b, i, j, k: (0, 0)))
      args.append(_tpu.onehot(spt, tk, bs, transpose=True))

  add(a_data, a_sc, a_fmt, tm, "a")
  add(b_data, b_sc, b_fmt, tn, "b")
  if tensor_scale is not None:
    in_specs.append(pl.BlockSpec(memory_space=pltpu.SMEM))
    args.append(lax.bitcast_convert_type(jnp.reshape(tensor_scale, (1,)).astype(jnp.float32), jnp.int32))
  kernel = functools.partial(_kernel, a_fmt=a_fmt, b_fmt=b_fmt, k_valid=k_valid, tk=tk, nkt=nkt,
                             out_dtype=jnp.dtype(out_dtype),
                             tensor_scale=tensor_scale is not None)
  out = pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs,
      out_specs=pl.BlockSpec((None, tm, tn), lambda b, i, j, k: (b, i, j)),
      out_shape=jax.ShapeDtypeStruct((bsz, m, n), _tpu.uint_of(out_dtype)),
      scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
      compiler_params=_tpu.compiler_params("parallel", "parallel", "parallel", "arbitrary"),
      interpret=_tpu.interpret_arg(), name="tpu_mx_matmul")(*args)
  return lax.bitcast_convert_type(out, jnp.dtype(out_dtype))


def _operand(q: QArray):
  q = unpack(q)
  return element_codes(q), lax.bitcast_convert_type(q.scales, jnp.uint8)


def mx_gemm(a: QArray, b: QArray, *, out_dtype=jnp.bfloat16, variant=None, config: TpuGemmConfig | None = None,
            interpret=None, num_sms=None) -> jax.Array:
  """``kernels.mx_matmul.mx_gemm``'s contract: (M, N) = a (M, K) . b (N, K)^T, both quantized along K (axis 1),
  on the TPU kernel. ``variant`` / ``num_sms`` / ``interpret`` are ignored (interpret mode off-TPU)."""
  why = kernel_supports(a, b)
  if why:
    raise ValueError(f"the TPU kernel does not take {why}")
  (ad, asc), (bd, bsc) = _operand(a), _operand(b)
  out = _gemm3(ad[None], asc[None], a.fmt, bd[None], bsc[None], b.fmt, a.shape[1], out_dtype=out_dtype,
               config=config)
  return out[0]


def _to_bfk(q: QArray, batch, contract):
  free = tuple(d for d in range(q.ndim) if d not in batch and d != contract)
  perm = tuple(batch) + free + (contract,)
  bsz = math.prod(q.shape[d] for d in batch)
  fsz = math.prod(q.shape[d] for d in free)
  d, s = _operand(q)
  d, s = jnp.transpose(d, perm), jnp.transpose(s, perm)
  return d.reshape(bsz, fsz, d.shape[-1]), s.reshape(bsz, fsz, s.shape[-1]), [q.shape[i] for i in free]


def mx_dot_general(lhs: QArray, rhs: QArray, dimension_numbers, *, out_dtype=jnp.bfloat16,
                   config: TpuGemmConfig | None = None, interpret=None) -> jax.Array:
  """lax.dot_general on MX QArrays (one contracting dim each = the quantized axis; batch dims allowed), output
  (batch..., lhs free..., rhs free...). Batch dims are a grid axis of the kernel."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc0, rc0 = lc[0] % lhs.ndim, rc[0] % rhs.ndim
  lb, rb = tuple(d % lhs.ndim for d in lb), tuple(d % rhs.ndim for d in rb)
  why = kernel_supports(lhs, rhs)
  if why or lhs.axis != lc0 or rhs.axis != rc0 or len(lc) != 1 or len(rc) != 1:
    raise ValueError(f"the TPU kernel does not take these operands ({why or 'contracting dims'})")
  ad, asc, lfree = _to_bfk(lhs, lb, lc0)
  bd, bsc, rfree = _to_bfk(rhs, rb, rc0)
  out = _gemm3(ad, asc, lhs.fmt, bd, bsc, rhs.fmt, lhs.shape[lc0], out_dtype=out_dtype, config=config)
  return out.reshape(tuple(lhs.shape[d] for d in lb) + tuple(lfree) + tuple(rfree))


def weight_only_matmul(x: jax.Array, w: QArray, *, out_dtype=jnp.bfloat16, config: TpuGemmConfig | None = None,
                       interpret=None) -> jax.Array:
  """(..., N) = x (..., K) @ W^T, W a (N, K) MX or NVFP4 QArray quantized along K; x is rounded to bf16 (the
  MXU input); NVFP4's FP32 tensor scale multiplies the FP32 accumulator."""
  why = kernel_supports(w)
  if why or w.ndim != 2 or w.axis != 1:
    raise ValueError(f"the TPU weight-only kernel does not take {why or repr(w)}")
  n, k = w.shape
  if x.shape[-1] != k:
    raise ValueError(f"x's last dim {x.shape[-1]} does not match the weight's K={k} (w is (N, K))")
  lead = x.shape[:-1]
  wd, wsc = _operand(w)
  ts = w.tensor_scale if w.fmt == "nvfp4" else None
  out = _gemm3(x.reshape(1, -1, k), None, None, wd[None], wsc[None], w.fmt, k, out_dtype=out_dtype,
               config=config, tensor_scale=ts)
  return out.reshape(lead + (n,))
