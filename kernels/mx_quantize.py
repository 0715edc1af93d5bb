"""Pallas kernel: MX / NVFP4 quantization along the last axis (rows x blocks tiles).

``mx_quantize(x, fmt, ...)`` returns exactly ``mx_jax.quantize(x, fmt, axis=-1, ...)`` (same QArray, bit for
bit). Every MX format (FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1, INT8) and NVFP4; any row length (a row whose
length is not a multiple of the block is zero-padded, as the XLA path pads); scale modes floor / ceil / even /
rceil; rounding nearest_even / nearest_away / stochastic (random bits are an input: ``rbits`` or drawn from
``key`` exactly as the XLA path draws them).

Kernel layout: the input is viewed as (R, nb, bs) (R = product of the leading axes, nb blocks of bs); a
program handles a (TR, TB, bs) tile, so a block's 32 elements sit on the tile's last axis and the block
absmax is a max over it. Element codes (uint8) and scale bytes are produced with integer ops; the wrapper
bitcasts them to the QArray dtypes (a no-op in XLA for 8-bit types).

Per tile there are two element paths, picked with ``lax.cond``:
  * generic: ``mx_jax._bits.round_to_elem`` itself (exact for every input, any rounding) + exact codes;
  * fast (round-to-nearest-even only): v = x * 2^-e is exact in float32 whenever every block of the tile is
    all-zero, non-finite or has e in [thr, 126] (thr = -126 - emin + M + 1: then any FP32-subnormal element
    is below half the element grid's smallest step, so FTZ cannot change the result); FP8 then uses the
    hardware-style RNE cast (``astype``, saturated by a clip first), the other formats ``int_codes`` (RNE on
    the FP32 bits, ~20 integer ops). Tiles with an extreme block (tiny amax) take the generic path.
Both paths give the generic result bit for bit; the tests check this on planted special values.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch
from kernels import partitioning
from mx_jax import _bits, mx_block, nvfp4
from mx_jax.formats import E2M1, E4M3, E8M0_BIAS, E8M0_NAN, ElemFormat, get_format
from mx_jax.qarray import QArray

_EXP = 0x7F800000
_RECIP_ELEM_MAX = np.float32(1.0) / np.float32(E2M1.max_normal)


def _f32_bits_const(v: float) -> int:
  return int(np.array(v, np.float32).view(np.uint32))


def fast_threshold(elem: ElemFormat) -> int:
  """Smallest shared exponent e for which the fast path is exact (see module docstring)."""
  return -126 - elem.emin + elem.mbits + 1


def int_codes(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """float32 v (finite or ±Inf) -> element code (uint8): RNE onto the grid, saturated to ±max_normal.

  On the FP32 bits: |v| is clamped to max_normal, the significand (with its hidden bit) is shifted right by
  s = (23 - M) + max(emin - E, 0) with round-half-even, and the code is (max(E - emin, 0) << M) + q (a
  rounding carry moves into the exponent field by itself). FP32 subnormals are treated as exponent -126.
  """
  m = elem.mbits
  u = lax.bitcast_convert_type(v.astype(jnp.float32), jnp.uint32)
  neg = (u >> 31).astype(jnp.int32)
  a = jnp.minimum((u & 0x7FFFFFFF).astype(jnp.int32), _f32_bits_const(elem.max_normal))
  e_bits = a >> 23
  sig = (a & 0x7FFFFF) | jnp.where(e_bits > 0, 1 << 23, 0)
  ee = jnp.maximum(e_bits, 1) - 127  # unbiased exponent
  s = (23 - m) + jnp.maximum(elem.emin - ee, 0)
  s = jnp.minimum(s, 30)
  q = sig >> s
  rem = sig & ((1 << s) - 1)
  half = 1 << (s - 1)
  up = (rem > half) | ((rem == half) & ((q & 1) == 1))
  q = q + up.astype(jnp.int32)
  mag = (jnp.maximum(ee - elem.emin, 0) << m) + q
  if elem.is_int:  # two's complement of the integer code k (value k * 2^-6)
    code = jnp.where(neg == 1, -mag, mag)
    return (code & 0xFF).astype(jnp.uint8)
  return (mag | (neg << (elem.bits - 1))).astype(jnp.uint8)


def _is_fp8(elem: ElemFormat) -> bool:
  return elem.bits == 8 and not elem.is_int


def exact_codes(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """Codes of exact on-grid float32 element values (the generic path's output)."""
  if _is_fp8(elem):
    return lax.bitcast_convert_type(v.astype(elem.dtype), jnp.uint8)
  return int_codes(v, elem)


def _rne_codes(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """Codes of RNE(v) saturated (the fast path)."""
  if _is_fp8(elem):
    v = jnp.clip(v, -elem.max_normal, elem.max_normal)
    return lax.bitcast_convert_type(v.astype(elem.dtype), jnp.uint8)
  return int_codes(v, elem)


def _with_sign_of(v: jax.Array, x: jax.Array) -> jax.Array:
  """|v| with x's sign bit. round_to_elem returns where(x < 0, -mag, mag), and Pallas' Triton lowering
  computes -mag as 0 - mag, which turns -0 into +0; this restores the sign bitwise."""
  mag = lax.bitcast_convert_type(v, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
  sign = lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0x80000000)
  return lax.bitcast_convert_type(mag | sign, jnp.float32)


def _scale_down(x: jax.Array, e: jax.Array, elem: ElemFormat) -> jax.Array:
  """x * 2^-e for e in [-127, 127]: one multiply where 2^-e is a normal float (e <= 126, always the case
  unless emax < 2, i.e. MX INT8), else two."""
  if elem.emax >= 2:
    return x * _bits.pow2(-e)
  e1 = (-e) // 2
  return x * _bits.pow2(e1) * _bits.pow2(-e - e1)


def mx_tile(x: jax.Array, elem: ElemFormat, scale_mode: str, rounding: str, rbits=None, fast: bool = True,
            fast_only: bool = False):
  """Quantizes a float32 tile (..., bs) block-wise along its last axis.

  Returns (codes uint8 (..., bs), scale bytes uint8 (...)) equal to mx_block.mx_quantize_blocks.
  ``fast_only`` (compiled kernels on a backend that keeps FP32 subnormals, i.e. the GPU): the fast path
  for every tile, exact there for all blocks; else the tile-level ``lax.cond`` guards it (FTZ backends).
  """
  ab = _bits.abs_bits(x)
  amax = jnp.max(ab, axis=-1, keepdims=True)
  bad = amax >= _EXP
  e = mx_block.shared_exponent(jnp.where(bad, 0, amax), elem, scale_mode)
  sb = jnp.where(bad, E8M0_NAN, e + E8M0_BIAS).astype(jnp.uint8)
  sb = sb.reshape(sb.shape[:-1])

  def generic():
    v = _with_sign_of(_bits.round_to_elem(x, e, elem, rounding, rbits=rbits, saturate=True), x)
    return exact_codes(jnp.where(bad, 0.0, v), elem)

  if rounding != "nearest_even" or not fast:
    return generic(), sb

  def fastpath():
    return _rne_codes(jnp.where(bad, 0.0, _scale_down(x, e, elem)), elem)

  if fast_only:
    return fastpath(), sb
  ok = bad | (amax == 0) | ((e >= fast_threshold(elem)) & (e <= 126))
  all_ok = jnp.min(ok.astype(jnp.int32)) > 0
  codes = lax.cond(all_ok, fastpath, generic)
  return codes, sb


def nvfp4_tile(x: jax.Array, s_enc: jax.Array, s_dec: jax.Array, rounding: str, rbits=None):
  """NVFP4 on a float32 tile (..., 16): (E2M1 codes uint8, E4M3 scale bytes uint8), as nvfp4.py computes."""
  ab = _bits.abs_bits(x)
  bad = jnp.max(ab, axis=-1, keepdims=True) >= _EXP
  amax_b = lax.bitcast_convert_type(jnp.max(jnp.where(bad, 0, ab), axis=-1, keepdims=True), jnp.float32)
  # nvfp4.py writes amax_b / 6; XLA rewrites a division by a broadcast scalar into a multiplication by its
  # reciprocal (RN(1/6) in float32), and that is what the reference computes on XLA.
  d = jnp.minimum(amax_b * _RECIP_ELEM_MAX * s_enc, jnp.float32(E4M3.max_normal))
  # rounded by arithmetic, as nvfp4.py does: never by an f32 -> f8 -> f32 convert pair, which XLA:GPU folds away
  d32 = _bits.round_to_elem(d, jnp.int32(0), E4M3, "nearest_even", saturate=True)
  d8 = d32.astype(jnp.float8_e4m3fn)  # exact: d32 is on the E4M3 grid
  zero = d32 == 0
  # the backend's own f32 division, as in nvfp4.py (IEEE on CPU; on a GPU XLA and Triton both use the
  # approximate div.full.f32 -- checked by benchmarks/bench_quantize_norm.py)
  enc = jnp.float32(1.0) / jnp.where(zero, jnp.float32(1.0), d32 * s_dec)
  xe = x * enc
  # zero-scale and non-finite blocks store zeros carrying x's sign (nvfp4.py: copysign(0, x))
  signed_zero = lax.bitcast_convert_type(lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0x80000000),
                                         jnp.float32)
  if rounding != "nearest_even":
    xe = _with_sign_of(_bits.round_to_elem(xe, jnp.int32(0), E2M1, rounding, rbits=rbits, saturate=True), xe)
  codes = int_codes(jnp.where(zero | bad, signed_zero, xe), E2M1)
  nan_byte = int(np.array(np.nan, jnp.float8_e4m3fn).view(np.uint8))
  sb = jnp.where(bad, nan_byte, lax.bitcast_convert_type(d8, jnp.uint8).astype(jnp.int32)).astype(jnp.uint8)
  return codes, sb.reshape(sb.shape[:-1])


# ----------------------------------------------------------------------------------------------------------
# Wrapper helpers shared with norm_quantize.py
# ----------------------------------------------------------------------------------------------------------


def next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def codes_to_storage(codes: jax.Array, elem: ElemFormat) -> jax.Array:
  """uint8 codes -> QArray.data dtype (bitcasts; FP4 via XLA's nibble view)."""
  if elem.bits == 6:
    return codes
  if elem.bits == 4:
    return lax.bitcast_convert_type(codes, elem.dtype)[..., 0]
  return lax.bitcast_convert_type(codes, elem.dtype)


def scale_bytes_to_storage(sb: jax.Array, kind: str) -> jax.Array:
  return lax.bitcast_convert_type(sb, jnp.float8_e8m0fnu if kind == "mx" else jnp.float8_e4m3fn)


def pad_last(x2: jax.Array, extra: int) -> jax.Array:
  """Zero-pads the last axis by ``extra`` on the bits (XLA:CPU pads bf16 through float32 with denormals
  flushed, which would zero bf16 subnormals)."""
  if extra == 0:
    return x2
  widths = [(0, 0)] * (x2.ndim - 1) + [(0, extra)]
  if not jnp.issubdtype(x2.dtype, jnp.floating):
    return jnp.pad(x2, widths)
  ut = jnp.dtype(f"uint{x2.dtype.itemsize * 8}")
  return lax.bitcast_convert_type(jnp.pad(lax.bitcast_convert_type(x2, ut), widths), x2.dtype)


def stochastic_bits(key, rbits, lead: tuple[int, ...], nb: int, bs: int) -> jax.Array:
  """Random bits laid out like the XLA path draws them: jax.random.bits(key, lead + (nb, bs), uint32)."""
  if rbits is None:
    if key is None:
      raise ValueError("rounding='stochastic' needs key= or rbits=")
    rbits = jax.random.bits(key, lead + (nb, bs), jnp.uint32)
  rbits = jnp.asarray(rbits)
  if rbits.shape != lead + (nb, bs) or rbits.dtype != jnp.uint32:
    raise ValueError(f"rbits must be uint32 of shape {lead + (nb, bs)}; got {rbits.dtype}{rbits.shape}")
  return rbits


def _tiles(r: int, nb: int, bs: int, block_rows, block_blocks):
  if _dispatch.interpret():
    tr = block_rows or min(next_pow2(r), 64)
    tb = block_blocks or min(next_pow2(nb), max(1, 2048 // bs))
  else:
    tb = block_blocks or min(next_pow2(nb), max(1, 1024 // bs))
    tr = block_rows or min(next_pow2(r), max(1, 16384 // (tb * bs)))
  return int(tr), int(tb)


# ----------------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------------


def _quant_kernel(*refs, kind, elem, scale_mode, rounding, fast, r, nb, tr, tb, masked, has_rbits, src_dtype):
  refs = list(refs)
  x_ref = refs.pop(0)
  rb_ref = refs.pop(0) if has_rbits else None
  if kind == "nvfp4":
    se_ref, sd_ref = refs.pop(0), refs.pop(0)
  codes_ref, scales_ref = refs
  mask = None
  if masked:
    rows = pl.program_id(0) * tr + lax.broadcasted_iota(jnp.int32, (tr, tb, 1), 0)
    blks = pl.program_id(1) * tb + lax.broadcasted_iota(jnp.int32, (tr, tb, 1), 1)
    mask = (rows < r) & (blks < nb)
  x = _dispatch.load(x_ref, mask, src_dtype=src_dtype)
  rbits = _dispatch.load(rb_ref, mask) if has_rbits else None
  if kind == "nvfp4":
    s_enc = _dispatch.load(se_ref, src_dtype=jnp.float32).reshape(1, 1, 1)
    s_dec = _dispatch.load(sd_ref, src_dtype=jnp.float32).reshape(1, 1, 1)
    codes, sb = nvfp4_tile(x, s_enc, s_dec, rounding, rbits)
  else:
    codes, sb = mx_tile(x, elem, scale_mode, rounding, rbits, fast, _dispatch.fast_only())
  _dispatch.store(codes_ref, codes, mask)
  _dispatch.store(scales_ref, sb, None if mask is None else mask.reshape(tr, tb))


def quantize_blocks_pallas(x3: jax.Array, fmt: str, *, scale_mode="floor", rounding="nearest_even",
                           rbits3=None, s_enc=None, s_dec=None, block_rows=None, block_blocks=None,
                           num_warps=None, fast=True):
  """Raw kernel call on x3 (R, nb, bs): returns (codes uint8 (R, nb, bs), scale bytes uint8 (R, nb))."""
  f = get_format(fmt)
  r, nb, bs = x3.shape
  tr, tb = _tiles(r, nb, bs, block_rows, block_blocks)
  masked = (r % tr != 0) or (nb % tb != 0)
  grid = (pl.cdiv(r, tr), pl.cdiv(nb, tb))
  blk3 = pl.BlockSpec((tr, tb, bs), lambda i, j: (i, j, 0))
  in_specs = [blk3]
  args = [_dispatch.kernel_in(x3)]
  if rbits3 is not None:
    in_specs.append(blk3)
    args.append(rbits3)
  if f.kind == "nvfp4":
    scal = pl.BlockSpec((1, 1), lambda i, j: (0, 0))
    in_specs += [scal, scal]
    args += [_dispatch.kernel_in(jnp.reshape(s, (1, 1)).astype(jnp.float32)) for s in (s_enc, s_dec)]
  if num_warps is None and not _dispatch.interpret():
    num_warps = 8 if tr * tb * bs >= 8192 else 4
  kernel = lambda *refs: _quant_kernel(
      *refs, kind=f.kind, elem=f.elem, scale_mode=scale_mode, rounding=rounding, fast=fast, r=r, nb=nb,
      tr=tr, tb=tb, masked=masked, has_rbits=rbits3 is not None, src_dtype=x3.dtype)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((r, nb, bs), jnp.uint8), jax.ShapeDtypeStruct((r, nb), jnp.uint8)),
      grid=grid,
      in_specs=in_specs,
      out_specs=(blk3, pl.BlockSpec((tr, tb), lambda i, j: (i, j))),
      interpret=_dispatch.interpret(),
      compiler_params=_dispatch.compiler_params(num_warps=num_warps),
      name=f"mx_quantize_{f.name}",
  )(*args)


def _xla_quantize_rbits(x, f, bs, scale_mode, rbits):
  """XLA path with caller-given random bits (mx_jax.quantize only takes a key)."""
  from mx_jax._blocks import from_blocks, to_blocks
  ax = x.ndim - 1
  if f.kind == "nvfp4":
    xf = x.astype(jnp.float32)
    s_enc, s_dec = nvfp4.tensor_scales(xf)
    xb = to_blocks(xf, ax, bs)
    codes, sb = nvfp4_tile(xb, s_enc, s_dec, "stochastic", rbits)
    data = codes_to_storage(from_blocks(codes, ax), f.elem)
    return QArray(data, scale_bytes_to_storage(sb, "nvfp4"), s_dec, f.name, ax, tuple(x.shape), bs, False)
  xb = to_blocks(x.astype(jnp.float32), ax, bs)
  ab = _bits.abs_bits(xb)
  amax = jnp.max(ab, axis=-1, keepdims=True)
  bad = _bits.is_nonfinite_bits(amax)
  e = mx_block.shared_exponent(jnp.where(bad, 0, amax), f.elem, scale_mode)
  v = _bits.round_to_elem(xb, e, f.elem, "stochastic", rbits=rbits, saturate=True)
  v = from_blocks(jnp.where(bad, 0.0, v), ax)
  sb = jnp.squeeze(jnp.where(bad, E8M0_NAN, e + E8M0_BIAS).astype(jnp.uint8), -1)
  return QArray(_bits.to_elem_dtype(v, f.elem), mx_block.scale_bytes_to_e8m0(sb), None, f.name, ax,
                tuple(x.shape), bs, False)


def mx_quantize(x: jax.Array, fmt: str, *, block_size: int | None = None, scale_mode: str = "floor",
                rounding: str = "nearest_even", key: jax.Array | None = None, rbits: jax.Array | None = None,
                amax: jax.Array | None = None, impl: str = "auto", block_rows: int | None = None,
                block_blocks: int | None = None, num_warps: int | None = None, fast: bool = True) -> QArray:
  """Quantizes ``x`` along its last axis; returns the QArray ``mx_jax.quantize(x, fmt, axis=-1, ...)`` gives.

  ``rbits``: uint32 random bits of shape ``x.shape[:-1] + (nblocks, block_size)`` for stochastic rounding
  (default: drawn from ``key`` exactly as the XLA path draws them). ``amax``: nvfp4's tensor amax override.
  ``impl``: "auto" (kernel on GPU, XLA elsewhere), "xla", "pallas" (interpret mode off-GPU).
  ``block_rows`` / ``block_blocks`` / ``num_warps``: kernel tiling (rows x blocks per program).
  Per-tensor formats (fp8_e4m3, fp8_e5m2) always take the XLA path.
  """
  from mx_jax.quantize import _check_array, _check_options, quantize
  x = _check_array(x)
  f = get_format(fmt)
  if rounding == "stochastic" and key is None and rbits is None:
    raise ValueError("rounding='stochastic' needs key= or rbits=")
  bs, _ = _check_options(f, block_size, scale_mode, rounding, key if rbits is None else True, None)
  if f.kind == "tensor":
    return quantize(x, f.name, axis=-1, rounding=rounding, key=key, amax=amax)
  if x.ndim == 0:
    raise ValueError(f"x must have rank >= 1 for block format {f.name!r}")
  if amax is not None and f.kind != "nvfp4":
    raise ValueError(f"amax= applies to nvfp4 and fp8 formats, not {f.name!r}")
  if rbits is not None and rounding != "stochastic":
    rbits = None
  if _dispatch.on_tpu() and _dispatch.resolve_impl(impl) == "pallas":  # Pallas TPU kernel (kernels/tpu_quantize.py)
    from kernels import tpu_quantize
    return tpu_quantize.mx_quantize(x, fmt, block_size=block_size, scale_mode=scale_mode, rounding=rounding,
                                    key=key, rbits=rbits, amax=amax, block_rows=block_rows,
                                    block_blocks=block_blocks)
  return _mx_quantize_jit(x, key, rbits, amax, f.name, bs, scale_mode, rounding, _dispatch.impl_key(impl),
                          block_rows, block_blocks, num_warps, bool(fast))


@partitioning.quantize  # custom partitioning of the Pallas path (kernels/partitioning.py)
@functools.partial(jax.jit, static_argnums=tuple(range(4, 13)))
def _mx_quantize_jit(x, key, rbits, amax, fmt, bs, scale_mode, rounding, impl, block_rows, block_blocks,
                     num_warps, fast):
  from mx_jax.quantize import quantize
  f = get_format(fmt)
  lead, n = tuple(x.shape[:-1]), x.shape[-1]
  nb = -(-n // bs)
  if _dispatch.resolve_impl(impl) == "xla" or n == 0 or math.prod(lead) == 0:
    if rbits is not None:
      rb = stochastic_bits(None, rbits, lead, nb, bs)
      if f.kind == "nvfp4" and amax is not None:
        raise NotImplementedError("amax= together with rbits= on the XLA path")
      return _xla_quantize_rbits(x, f, bs, scale_mode, rb)
    return quantize(x, f.name, axis=-1, block_size=bs, scale_mode=scale_mode, rounding=rounding, key=key,
                    amax=amax)
  r = math.prod(lead)
  x3 = pad_last(x.reshape(r, n), nb * bs - n).reshape(r, nb, bs)
  rb3 = None
  if rounding == "stochastic":
    rb3 = stochastic_bits(key, rbits, lead, nb, bs).reshape(r, nb, bs)
  s_enc = s_dec = None
  if f.kind == "nvfp4":
    s_enc, s_dec = nvfp4.tensor_scales(x, amax)
  if impl.startswith("pallas:mosaic"):  # Mosaic GPU kernel (kernels/mgpu_quantize.py; its own tiling)
    from kernels import mgpu_quantize
    codes, sb = mgpu_quantize.quantize_mgpu(x, f, bs, scale_mode, rounding, rb3, s_enc, s_dec)
  else:
    codes, sb = quantize_blocks_pallas(x3, f.name, scale_mode=scale_mode, rounding=rounding, rbits3=rb3,
                                       s_enc=s_enc, s_dec=s_dec, block_rows=block_rows,
                                       block_blocks=block_blocks, num_warps=num_warps, fast=fast)
  data = codes_to_storage(codes.reshape(lead + (nb * bs,)), f.elem)
  scales = scale_bytes_to_storage(sb.reshape(lead + (nb,)), f.kind)
  return QArray(data, scales, s_dec, f.name, len(lead), tuple(x.shape), bs, False)
