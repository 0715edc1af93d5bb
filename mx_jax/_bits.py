"""Exact FP32 bit arithmetic shared by every quantizer (private).

Everything here works on the IEEE-754 binary32 bit pattern with integer ops, so results do not depend on
whether the backend flushes FP32 subnormals (XLA:CPU does) or folds float round trips inside jit.

Notation: a finite FP32 ``x`` is ``(-1)^s * sig * 2^ee`` with the integer significand ``sig < 2^24``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mx_jax.formats import ElemFormat

_EXP_MASK = 0x7F800000
_ABS_MASK = 0x7FFFFFFF
_MANT_MASK = 0x007FFFFF
# floor_log2 returned for a zero input: below every exponent the quantizers meet.
ZERO_LOG2 = -1000


# False: widen bf16 inputs with a plain convert (to reproduce the excess-precision effect; benchmarks only).
PIN_BF16_INPUTS = True


def as_f32(x: jax.Array) -> jax.Array:
  """``x`` as float32 holding exactly x's values. A bf16 input is widened and then reduce_precision'd to bf16
  (a no-op on the widened value); an f16 one passes an optimization barrier first. XLA (GPU and CPU; excess
  precision is allowed by default) folds a producer's f32 -> bf16 -> f32 convert pair away, and a quantizer fused
  with that producer would otherwise round the unrounded f32 value instead of the bf16 tensor it was given
  (session 23: 3 % of a GPT step's MXFP8 codes on the H100; tests/test_excess_precision.py)."""
  dt = jnp.dtype(x.dtype)
  if PIN_BF16_INPUTS and dt == jnp.dtype(jnp.float16):  # reduce_precision would flush f16 subnormals: a barrier
    x = lax.optimization_barrier(x)
  y = x.astype(jnp.float32)
  if PIN_BF16_INPUTS and dt == jnp.dtype(jnp.bfloat16):  # exact, subnormals included (FP32's exponent range)
    y = lax.reduce_precision(y, exponent_bits=8, mantissa_bits=7)
  return y


def f32_bits(x: jax.Array) -> jax.Array:
  """The uint32 bit pattern of ``x`` cast to float32 (``as_f32``: a widening cast from bf16/f16 is exact)."""
  return lax.bitcast_convert_type(as_f32(x), jnp.uint32)


def abs_bits(x: jax.Array) -> jax.Array:
  """|x| as int32 bits. For non-negative floats integer order equals float order; NaN > Inf > finite."""
  return (f32_bits(x) & _ABS_MASK).astype(jnp.int32)


def is_nonfinite_bits(ab: jax.Array) -> jax.Array:
  return ab >= _EXP_MASK


def frexp_bits(ab: jax.Array) -> tuple[jax.Array, jax.Array]:
  """For |x| bits ``ab`` (finite): (floor(log2|x|), 23-bit fraction of the normalised significand).

  Exact for FP32 subnormals too; a zero gives (ZERO_LOG2, 0).
  """
  e = ab >> 23
  f = ab & _MANT_MASK
  p = 31 - lax.clz(jnp.maximum(f, 1))  # top set bit of a subnormal's fraction
  sub_log2 = p - 149
  sub_frac = (f << (23 - p)) & _MANT_MASK
  fl = jnp.where(e > 0, e - 127, jnp.where(f > 0, sub_log2, ZERO_LOG2))
  frac = jnp.where(e > 0, f, sub_frac)
  return fl.astype(jnp.int32), frac.astype(jnp.int32)


def pow2(e: jax.Array) -> jax.Array:
  """Exact float32 2^e for integer e in [-126, 127] (built from exponent bits, never a float pow)."""
  e = jnp.clip(e, -126, 127).astype(jnp.int32)
  return lax.bitcast_convert_type(((e + 127) << 23).astype(jnp.uint32), jnp.float32)


def mul_pow2(x: jax.Array, e: jax.Array) -> jax.Array:
  """x * 2^e for integer e in [-252, 254], applied as two normal factors so no factor under/overflows."""
  e = e.astype(jnp.int32)
  e1 = e // 2
  return x * pow2(e1) * pow2(e - e1)


def mul_pow2_bits(v: jax.Array, e: jax.Array) -> jax.Array:
  """Exact float32 v * 2^e built from bits (RNE where the result is an FP32 subnormal).

  Unlike a float multiply, a backend that flushes subnormals (XLA:CPU) still returns the exact subnormal.
  """
  u = f32_bits(v)
  sign = u & jnp.uint32(0x80000000)
  ab = (u & _ABS_MASK).astype(jnp.int32)
  fl, frac = frexp_bits(ab)
  ne = fl + e.astype(jnp.int32)
  normal_bits = (jnp.clip(ne + 127, 1, 254) << 23) | frac
  sig = (frac | (1 << 23)).astype(jnp.uint32)
  s = jnp.clip(-126 - ne, 1, 31).astype(jnp.uint32)  # significand bits dropped in the subnormal range
  q = sig >> s
  rem = sig & ((jnp.uint32(1) << s) - 1)
  half = jnp.uint32(1) << (s - 1)
  q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.uint32)
  sub_bits = q.astype(jnp.int32)  # may carry into the smallest normal: still the right bit pattern
  bits = jnp.where(ne >= -126, normal_bits, jnp.where(ne < -150, 0, sub_bits))
  bits = jnp.where(ne > 127, _EXP_MASK, bits)
  bits = jnp.where(ab == 0, 0, bits)
  bits = jnp.where(ab >= _EXP_MASK, ab, bits)  # Inf / NaN pass through
  return lax.bitcast_convert_type(bits.astype(jnp.uint32) | sign, jnp.float32)


def round_to_elem_rne_fast(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """RNE of an already-scaled float32 ``v`` onto ``elem``'s grid with the FPU's own rounding, saturated.

  Step 2^k with k = max(floor(log2|v|), emin) - M; adding and subtracting C = 1.5 * 2^(k + 23) rounds v
  to a multiple of 2^k (round-to-nearest-even, exact for |v| < 2^(k + 22)). About 12 ops per element
  against ~60 for ``round_to_elem``; bit-identical to it for normal and zero ``v`` (tested). Subnormal v
  may be flushed by the backend, but those lie far below every element grid and round to ±0 anyway.
  NaN -> 0 (MX carries NaN in the scale); ±Inf -> ±max.
  """
  u = f32_bits(v)
  ab = (u & _ABS_MASK).astype(jnp.int32)
  fl = (ab >> 23) - 127
  k = jnp.maximum(fl, elem.emin) - elem.mbits
  c = lax.bitcast_convert_type((((k + 150) << 23) | 0x400000).astype(jnp.uint32), jnp.float32)
  r = jnp.copysign((v + c) - c, v)  # the add/sub loses the sign of a zero result
  r = jnp.clip(r, -elem.max_normal, elem.max_normal)
  return jnp.where(ab > _EXP_MASK, 0.0, r)


ROUNDINGS = ("nearest_even", "nearest_away", "stochastic")


def round_to_elem(x: jax.Array, scale_exp: jax.Array, elem: ElemFormat, rounding: str,
                  rbits: jax.Array | None = None, saturate: bool = True) -> jax.Array:
  """Rounds x / 2^scale_exp onto ``elem``'s grid; returns the element value as exact float32.

  Grid at |v| = x / 2^e: step 2^(max(floor(log2|v|), emin) - M). Rounding on the integer significand
  (RNE, ties away, or stochastic: add ``rbits`` uniform in [0, 2^dropped) then truncate, using 31 random
  bits). Saturating: |result| > max_normal -> ±max_normal, ±Inf -> ±max, NaN -> 0 (an MX block's NaN
  lives in its scale). Non-saturating: overflow -> Inf (formats with Inf) or NaN; NaN -> NaN.
  Signed zero keeps the input's sign.
  """
  u = f32_bits(x)
  neg = (u >> 31).astype(jnp.bool_)
  ab = (u & _ABS_MASK).astype(jnp.int32)
  e_bits = ab >> 23
  sig = ((ab & _MANT_MASK) | jnp.where(e_bits > 0, 1 << 23, 0)).astype(jnp.uint32)
  ee = jnp.maximum(e_bits, 1) - 150  # |x| = sig * 2^ee
  fl, _ = frexp_bits(ab)
  e = jnp.broadcast_to(scale_exp, x.shape).astype(jnp.int32)
  m = elem.mbits
  g = jnp.maximum(fl, elem.emin + e) - m  # grid exponent (absolute)
  s = g - ee  # significand bits to drop
  s_pos = jnp.clip(s, 1, 31).astype(jnp.uint32)
  # Shift away bits beyond 31 first (only matters for stochastic; RNE/away give 0 there anyway).
  pre = jnp.clip(s - 31, 0, 31).astype(jnp.uint32)
  sig_r = sig >> pre
  q = sig_r >> s_pos
  rem = sig_r & ((jnp.uint32(1) << s_pos) - 1)
  half = jnp.uint32(1) << (s_pos - 1)
  if rounding == "nearest_even":
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    q = q + up.astype(jnp.uint32)
  elif rounding == "nearest_away":
    q = q + (rem >= half).astype(jnp.uint32)
  elif rounding == "stochastic":
    if rbits is None:
      raise ValueError("rounding='stochastic' needs random bits (pass key=)")
    r = (rbits >> 1) & ((jnp.uint32(1) << s_pos) - 1)  # 31 random bits, masked to the dropped width
    q = (sig_r + r) >> s_pos
  else:
    raise ValueError(f"rounding must be one of {ROUNDINGS}; got {rounding!r}")
  exact = s <= 0
  q = jnp.where(exact, sig, q)
  g = jnp.where(exact, ee, g)
  # Value in element units: q * 2^(g - e). Exponents far outside f32 range only happen for results that
  # overflow (handled below) or are zero (q == 0).
  rel = g - e
  mag = q.astype(jnp.float32) * pow2(rel)
  overflow = (fl - e > elem.emax + 1) | (mag > elem.max_normal)
  is_nan = ab > _EXP_MASK
  is_inf = ab == _EXP_MASK
  mag = jnp.where(q == 0, 0.0, mag)
  if saturate:
    mag = jnp.where(overflow | is_inf, elem.max_normal, mag)
    mag = jnp.where(is_nan, 0.0, mag)
  else:
    big = jnp.inf if elem.has_inf else jnp.nan
    mag = jnp.where(overflow & ~is_inf, big, mag)
    mag = jnp.where(is_inf, big, mag)
    mag = jnp.where(is_nan, jnp.nan, mag)
  # Sign by an integer OR (a float negate lowers to 0 - mag in some backends and loses -0).
  return lax.bitcast_convert_type(f32_bits(mag) | (neg.astype(jnp.uint32) << 31), jnp.float32)


def storage_dtype(elem: ElemFormat):
  """dtype of QArray.data for ``elem``: its ml_dtypes type, except FP6, held as uint8 codes because
  XLA:CPU (jaxlib 0.11.2) cannot convert float6 types ("Invalid bitcast i6 to i8" in its LLVM emitter)."""
  return jnp.dtype(jnp.uint8) if elem.bits == 6 else elem.dtype


def to_elem_dtype(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """Stores exact element values in ``storage_dtype(elem)`` (exact: every value is on the grid)."""
  if elem.bits == 6:
    return elem_to_code(v, elem)
  if elem.is_int:
    return jnp.round(v * 64.0).astype(jnp.int8)
  return v.astype(elem.dtype)


def from_elem_dtype(d: jax.Array, elem: ElemFormat) -> jax.Array:
  """Element codes back to exact float32 values in element units."""
  if elem.bits == 6:
    return code_to_elem(d, elem)
  if elem.is_int:
    return d.astype(jnp.float32) * (1.0 / 64.0)
  return d.astype(jnp.float32)


def elem_to_code(v: jax.Array, elem: ElemFormat) -> jax.Array:
  """Exact float32 element value -> its ``elem.bits``-wide bit code (uint8), by integer arithmetic."""
  if elem.bits == 8:  # FP8 / INT8: the dtype cast of an on-grid value is exact, then a bitcast
    return lax.bitcast_convert_type(to_elem_dtype(v, elem), jnp.uint8)
  u = f32_bits(v)
  sign = (u >> 31).astype(jnp.int32)
  ab = (u & _ABS_MASK).astype(jnp.int32)
  fl, frac = frexp_bits(ab)
  m = elem.mbits
  normal = fl >= elem.emin
  exp_field = jnp.where(normal, fl + elem.bias, 0)
  mant_norm = frac >> (23 - m)
  # Subnormal element: |v| = mant * 2^(emin - m).
  mant_sub = jnp.round(jnp.abs(v) * float(2.0 ** (m - elem.emin))).astype(jnp.int32)
  mant = jnp.where(normal, mant_norm, mant_sub)
  code = (sign << (elem.bits - 1)) | (exp_field << m) | mant
  return code.astype(jnp.uint8)


def code_to_elem(code: jax.Array, elem: ElemFormat) -> jax.Array:
  """Bit code (uint8, low ``elem.bits`` bits) -> exact float32 element value."""
  if elem.bits == 8:
    return from_elem_dtype(lax.bitcast_convert_type(code.astype(jnp.uint8), elem.dtype), elem)
  c = code.astype(jnp.int32)
  m = elem.mbits
  sign = (c >> (elem.bits - 1)) & 1
  exp_field = (c >> m) & ((1 << elem.ebits) - 1)
  mant = (c & ((1 << m) - 1)).astype(jnp.float32)
  normal_val = (1.0 + mant * (2.0 ** -m)) * pow2(exp_field - elem.bias)
  sub_val = mant * float(2.0 ** (elem.emin - m))
  mag = jnp.where(exp_field > 0, normal_val, sub_val)
  return jnp.where(sign == 1, -mag, mag)
