"""Pallas TPU kernel: MX / NVFP4 quantization along the last axis, equal bit for bit to ``mx_jax.quantize``.

Math (integer-only for MX, so FP32-subnormal flushing on the TPU VPU or XLA:CPU cannot change a bit): per block,
A = max |x| bits, e = shared exponent (``mx_block.shared_exponent``), and each element's code is
    code = (max(floor(log2|x|) - e - emin, 0) << M) + round(sig >> s),   s = grid exponent - exponent of sig,
saturated to the code of max_normal, with the sign bit (FP) or two's complement (INT8); NaN/Inf blocks -> scale
0xFF and codes 0. NVFP4 follows ``nvfp4.py`` in float32 (same ops as the XLA path) with integer E4M3 / E2M1 codes.

Layout: x (R, n) as bits, tiles (TR, TC) with TC a multiple of 128 lanes holding TC/bs whole blocks (ragged
edge tiles; lanes >= n read as zero, as the XLA path zero-pads). Block maxima by a lane butterfly, the scale bytes
compacted one lane per block by a 0/1 matmul (see ``kernels/_tpu.py``). Codes (R, nb*bs) and scales are uint8.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import _tpu
from kernels.mx_quantize import codes_to_storage, scale_bytes_to_storage, stochastic_bits
from mx_jax import _bits, mx_block, nvfp4
from mx_jax.formats import E2M1, E4M3, E8M0_BIAS, E8M0_NAN, ElemFormat, get_format
from mx_jax.qarray import QArray

_EXP = 0x7F800000
_ABS = 0x7FFFFFFF
_NVFP4_NAN = int(np.array(np.nan, jnp.float8_e4m3fn).view(np.uint8))
_RECIP_6 = float(np.float32(1.0) / np.float32(E2M1.max_normal))
MAX_TILE_LANES = 8192


def max_code(elem: ElemFormat) -> int:
  """Code of +max_normal (magnitude codes are ordered like the values)."""
  if elem.is_int:
    return 127
  return int(np.array(elem.max_normal, elem.dtype).view(np.uint8)) if elem.bits == 8 else (
      int(np.array(elem.max_normal, np.float32).astype(elem.dtype).view(np.uint8)) & ((1 << elem.bits) - 1))


def elem_codes(b32: jax.Array, e: jax.Array, elem: ElemFormat, rounding: str, rbits=None) -> jax.Array:
  """int32 FP32 bits -> element codes (int32, low ``elem.bits`` bits) of x / 2^e, exactly as
  ``_bits.round_to_elem(..., saturate=True)`` rounds (RNE / ties away / stochastic with 31 random bits):
  |x| = sig * 2^ee, grid step 2^g with g = max(floor(log2|x|), emin + e) - M, q = round(sig / 2^(g - ee)).
  NaN -> signed 0, Inf and overflow -> max."""
  ab = b32 & _ABS
  neg = lax.shift_right_logical(b32, 31)
  fl, _ = _bits.frexp_bits(ab)
  e_bits = ab >> 23
  sig = (ab & 0x7FFFFF) | jnp.where(e_bits > 0, 1 << 23, 0)
  ee = jnp.maximum(e_bits, 1) - 150
  m = elem.mbits
  s = jnp.maximum(fl, elem.emin + e) - m - ee  # >= 1 for every finite x and e in [-127, 127]
  s_pos = jnp.clip(s, 1, 31)
  sig = sig >> jnp.clip(s - 31, 0, 31)
  q = sig >> s_pos
  rem = sig & ((jnp.int32(1) << s_pos) - 1)  # 1 << 31 wraps to INT_MIN; minus 1 wraps to INT_MAX: the mask
  half = jnp.int32(1) << (s_pos - 1)
  if rounding == "nearest_even":
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.int32)
  elif rounding == "nearest_away":
    q = q + (rem >= half).astype(jnp.int32)
  elif rounding == "stochastic":
    r = lax.shift_right_logical(rbits, 1) & ((jnp.int32(1) << s_pos) - 1)
    q = lax.shift_right_logical(sig + r, s_pos)  # sig + r < 2^32: unsigned in int32
  else:
    raise ValueError(f"rounding must be one of {_bits.ROUNDINGS}; got {rounding!r}")
  mag = (jnp.maximum(fl - e - elem.emin, 0) << m) + q
  mag = jnp.minimum(mag, max_code(elem))
  mag = jnp.where(ab > _EXP, 0, mag)
  if elem.is_int:
    return jnp.where(neg == 1, -mag, mag) & 0xFF
  return mag | (neg << (elem.bits - 1))


def e4m3_value(code: jax.Array) -> jax.Array:
  """Non-negative E4M3 code (int32, not NaN) -> exact float32 value."""
  ex, man = code >> 3, code & 7
  normal = _tpu.f32_of_bits(((ex + 120) << 23) | (man << 20))
  return jnp.where(ex > 0, normal, man.astype(jnp.float32) * jnp.float32(2.0 ** -9))


def mx_tile(b32, valid, elem, scale_mode, rounding, rbits, bs):
  """(codes, per-lane scale byte) of a (TR, TC) tile of FP32 bits; ``valid``: lanes inside the row."""
  b32 = jnp.where(valid, b32, 0)
  amax = _tpu.group_max(b32 & _ABS, bs)
  bad = amax >= _EXP
  e = mx_block.shared_exponent(jnp.where(bad, 0, amax), elem, scale_mode)
  codes = jnp.where(bad, 0, elem_codes(b32, e, elem, rounding, rbits))
  return codes, jnp.where(bad, E8M0_NAN, e + E8M0_BIAS)


def nvfp4_tile(b32, valid, s_enc, s_dec, rounding, rbits):
  """NVFP4 (nvfp4.py's float32 steps) on a tile of FP32 bits: (E2M1 codes, per-lane E4M3 scale byte)."""
  b32 = jnp.where(valid, b32, 0)
  gmax = _tpu.group_max(b32 & _ABS, 16)
  bad = gmax >= _EXP
  amax_b = _tpu.f32_of_bits(jnp.where(bad, 0, gmax))
  # nvfp4.py: amax_b / 6 * s_enc, which XLA evaluates as amax_b * RN(1/6) * s_enc
  d = jnp.minimum(amax_b * jnp.float32(_RECIP_6) * s_enc, jnp.float32(E4M3.max_normal))
  d_code = elem_codes(lax.bitcast_convert_type(d, jnp.int32), jnp.int32(0), E4M3, "nearest_even")
  d32 = e4m3_value(d_code)
  zero = d_code == 0
  enc = jnp.float32(1.0) / jnp.where(zero, jnp.float32(1.0), d32 * s_dec)
  xe = _tpu.f32_of_bits(b32) * enc
  codes = elem_codes(lax.bitcast_convert_type(xe, jnp.int32), jnp.int32(0), E2M1, rounding, rbits)
  codes = jnp.where(zero | bad, lax.shift_right_logical(b32, 31) << 3, codes)
  return codes, jnp.where(bad, _NVFP4_NAN, d_code)


def tiles(r: int, npad: int, bs: int, block_rows=None, block_blocks=None):
  """(TR, TC): TC lanes hold whole blocks and give 128 scale lanes per tile unless one tile covers the row."""
  tc = min(_tpu.round_up(npad, _tpu.LANES), _tpu.LANES * bs)
  if block_blocks:
    tc = int(block_blocks) * bs
  tr = int(block_rows) if block_rows else _tpu.row_tile(r, max(1, (1 << 17) // tc))
  return tr, tc


def supported(n: int, fmt: str = "mxfp8_e4m3", block_size: int | None = None, rounding: str = "nearest_even",
              block_rows=None, block_blocks=None) -> bool:
  """Whether the TPU kernel takes rows of n elements with this format and block size (else use XLA)."""
  f = get_format(fmt)
  if f.kind not in ("mx", "nvfp4"):
    return False
  bs = f.block_size if block_size is None else int(block_size)
  npad = -(-n // bs) * bs
  tr, tc = tiles(1, npad, bs, block_rows, block_blocks)
  one_tile = tc >= npad
  return (tc % _tpu.LANES == 0 and tc % bs == 0 and (one_tile or (tc // bs) % _tpu.LANES == 0)
          and tc <= max(MAX_TILE_LANES, _tpu.LANES * bs if bs <= 64 else 0))


def _kernel(*refs, kind, elem, scale_mode, rounding, n, tc, bs, src_dtype, has_rbits):
  refs = list(refs)
  x_ref, sel_ref = refs.pop(0), refs.pop(0)
  rb_ref = refs.pop(0) if has_rbits else None
  s_ref = refs.pop(0) if kind == "nvfp4" else None
  codes_ref, scales_ref = refs
  b32 = _tpu.f32_bits_of(x_ref[...], src_dtype)
  valid = pl.program_id(1) * tc + _tpu.lane_iota(b32.shape) < n
  rbits = lax.bitcast_convert_type(rb_ref[...], jnp.int32) if has_rbits else None
  if kind == "nvfp4":
    s_enc = lax.bitcast_convert_type(s_ref[0], jnp.float32)
    s_dec = lax.bitcast_convert_type(s_ref[1], jnp.float32)
    codes, sb = nvfp4_tile(b32, valid, s_enc, s_dec, rounding, rbits)
  else:
    codes, sb = mx_tile(b32, valid, elem, scale_mode, rounding, rbits, bs)
  codes_ref[...] = codes.astype(jnp.uint8)
  scales_ref[...] = _tpu.mxu_select(sb, sel_ref[...]).astype(jnp.uint8)


def quantize_2d(x2: jax.Array, fmt: str, bs: int, *, scale_mode="floor", rounding="nearest_even", rbits2=None,
                s_enc=None, s_dec=None, block_rows=None, block_blocks=None):
  """Raw kernel call on x2 (R, n): (codes uint8 (R, nb*bs), scale bytes uint8 (R, nb))."""
  f = get_format(fmt)
  r, n = x2.shape
  nb = -(-n // bs)
  npad = nb * bs
  tr, tc = tiles(r, npad, bs, block_rows, block_blocks)
  grid = (pl.cdiv(r, tr), pl.cdiv(npad, tc))
  spt = tc // bs  # scale lanes per tile
  blk = pl.BlockSpec((tr, tc), lambda i, j: (i, j))
  in_specs = [blk, pl.BlockSpec((tc, spt), lambda i, j: (0, 0))]
  args = [_tpu.as_bits(x2), _tpu.onehot(tc, spt, bs)]
  if rbits2 is not None:
    in_specs.append(blk)
    args.append(rbits2)
  if f.kind == "nvfp4":
    in_specs.append(pl.BlockSpec(memory_space=pltpu.SMEM))
    args.append(lax.bitcast_convert_type(jnp.stack([s_enc, s_dec]).astype(jnp.float32), jnp.int32))
  kernel = functools.partial(_kernel, kind=f.kind, elem=f.elem, scale_mode=scale_mode, rounding=rounding, n=n,
                             tc=tc, bs=bs, src_dtype=x2.dtype, has_rbits=rbits2 is not None)
  codes, sb = pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs,
      out_specs=(blk, pl.BlockSpec((tr, spt), lambda i, j: (i, j))),
      out_shape=(jax.ShapeDtypeStruct((r, npad), jnp.uint8),
                 jax.ShapeDtypeStruct((r, grid[1] * spt), jnp.uint8)),
      compiler_params=_tpu.compiler_params("parallel", "parallel"),
      interpret=_tpu.interpret_arg(), name=f"tpu_mx_quantize_{f.name}")(*args)
  return codes, sb[:, :nb]


def mx_quantize(x: jax.Array, fmt: str, *, block_size: int | None = None, scale_mode: str = "floor",
                rounding: str = "nearest_even", key: jax.Array | None = None, rbits: jax.Array | None = None,
                amax: jax.Array | None = None, impl: str = "auto", block_rows: int | None = None,
                block_blocks: int | None = None, num_warps: int | None = None, fast: bool = True) -> QArray:
  """``kernels.mx_quantize.mx_quantize``'s contract on the TPU kernel: the QArray of ``mx_jax.quantize(x, fmt,
  axis=-1, ...)``. ``impl="xla"`` (or a per-tensor format, or ``not supported(...)``) takes the XLA path.
  ``block_rows`` / ``block_blocks``: tile rows / blocks per tile. ``num_warps`` and ``fast`` are ignored."""
  from kernels.mx_quantize import mx_quantize as xla_entry
  from mx_jax.quantize import _check_array, _check_options
  x = _check_array(x)
  f = get_format(fmt)
  if rounding == "stochastic" and key is None and rbits is None:
    raise ValueError("rounding='stochastic' needs key= or rbits=")
  bs, _ = _check_options(f, block_size, scale_mode, rounding, key if rbits is None else True, None)
  if (impl == "xla" or f.kind == "tensor" or x.ndim == 0 or x.size == 0
      or not supported(x.shape[-1], f.name, bs, rounding, block_rows, block_blocks)):
    return xla_entry(x, fmt, block_size=block_size, scale_mode=scale_mode, rounding=rounding, key=key,
                     rbits=rbits, amax=amax, impl="xla")
  if amax is not None and f.kind != "nvfp4":
    raise ValueError(f"amax= applies to nvfp4 and fp8 formats, not {f.name!r}")
  if rounding != "stochastic":
    rbits = key = None
  return _quantize_jit(x, key, rbits, amax, f.name, bs, scale_mode, rounding, block_rows, block_blocks,
                       _tpu.interpret())


@functools.partial(jax.jit, static_argnums=tuple(range(4, 11)))
def _quantize_jit(x, key, rbits, amax, fmt, bs, scale_mode, rounding, block_rows, block_blocks, _mode):
  f = get_format(fmt)
  lead, n = tuple(x.shape[:-1]), x.shape[-1]
  r, nb = math.prod(lead), -(-n // bs)
  rb2 = None
  if rounding == "stochastic":
    rb2 = stochastic_bits(key, rbits, lead, nb, bs).reshape(r, nb * bs)
  s_enc = s_dec = None
  if f.kind == "nvfp4":
    s_enc, s_dec = nvfp4.tensor_scales(x, amax)
  codes, sb = quantize_2d(x.reshape(r, n), f.name, bs, scale_mode=scale_mode, rounding=rounding, rbits2=rb2,
                          s_enc=s_enc, s_dec=s_dec, block_rows=block_rows, block_blocks=block_blocks)
  data = codes_to_storage(codes.reshape(lead + (nb * bs,)), f.elem)
  scales = scale_bytes_to_storage(sb.reshape(lead + (nb,)), f.kind)
  return QArray(data, scales, s_dec, f.name, len(lead), tuple(x.shape), bs, False)
