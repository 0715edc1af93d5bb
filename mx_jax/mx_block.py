"""OCP MX v1.0 block quantization: one E8M0 scale 2^e per block of k elements along an axis.

Shared exponent (``scale_mode``), from the exact bits of the block amax A (clamped to [-127, 127]):
  floor (OCP):  e = floor(log2 A) - emax_elem          (the largest elements may saturate, by design)
  ceil:         e = ceil(log2 A) - emax_elem
  even:         e = floor(log2 round_M(A)) - emax_elem (A's significand rounded half-up to M bits)
  rceil (NVIDIA/cuBLAS): e = ceil(log2(A / max_elem))  (no element saturates)
Elements: x / 2^e rounded on the element grid (RNE by default), saturated to ±max_elem. A block holding
NaN or ±Inf gets the NaN scale (byte 0xFF) and decodes to NaN; an all-zero block gets byte 0 and decodes to 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mx_jax import _bits
from mx_jax._blocks import from_blocks, to_blocks
from mx_jax.formats import E8M0_BIAS, E8M0_NAN, ElemFormat

SCALE_MODES = ("floor", "ceil", "even", "rceil")


def _frac_bits_of(v: float) -> int:
  """23-bit fraction of a positive normal float32 constant."""
  import numpy as np
  return int(np.array(v, np.float32).view(np.uint32)) & 0x7FFFFF


def shared_exponent(amax_bits: jax.Array, elem: ElemFormat, scale_mode: str) -> jax.Array:
  """Unbiased E8M0 exponent e (int32, in [-127, 127]) from |amax| bits (finite)."""
  fl, frac = _bits.frexp_bits(amax_bits)
  return _exponent_of(fl, frac, elem, scale_mode)


def _exponent_of(fl: jax.Array, frac: jax.Array, elem: ElemFormat, scale_mode: str) -> jax.Array:
  """shared_exponent from the amax's floor(log2) ``fl`` and 23-bit normalised fraction ``frac``."""
  if scale_mode == "floor":
    e = fl - elem.emax
  elif scale_mode == "ceil":
    e = fl + (frac != 0).astype(jnp.int32) - elem.emax
  elif scale_mode == "rceil":
    e = fl - elem.emax + (frac > _frac_bits_of(elem.max_normal)).astype(jnp.int32)
  elif scale_mode == "even":
    carry = (frac + (1 << (22 - elem.mbits))) >> 23
    e = fl + carry - elem.emax
  else:
    raise ValueError(f"scale_mode must be one of {SCALE_MODES}; got {scale_mode!r}")
  return jnp.clip(e, -E8M0_BIAS, E8M0_BIAS)


def scale_bytes_to_e8m0(b: jax.Array) -> jax.Array:
  """uint8 biased exponents -> float8_e8m0fnu by bitcast (never astype: that rounds and maps 0 to NaN)."""
  return lax.bitcast_convert_type(b.astype(jnp.uint8), jnp.float8_e8m0fnu)


def e8m0_to_bytes(s: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(s, jnp.uint8)


def _window_block_max(ab: jax.Array, ax: int) -> jax.Array:
  """max over axis ``ax`` (keepdims) as a ``reduce_window`` whose window is the whole axis."""
  n = ab.shape[ax]
  dims = [1] * ab.ndim
  dims[ax] = n
  return lax.reduce_window(ab, jnp.array(jnp.iinfo(ab.dtype).min, ab.dtype), lax.max, dims, dims, "VALID")


def _halving_block_max(ab: jax.Array, ax: int) -> jax.Array:
  """max over axis ``ax`` (keepdims): an elementwise max of its even and odd elements, then a half-size reduce."""
  n = ab.shape[ax]
  if n >= 4 and n % 2 == 0:
    ab = jnp.maximum(lax.slice_in_dim(ab, 0, n, 2, axis=ax), lax.slice_in_dim(ab, 1, n, 2, axis=ax))
  return jnp.max(ab, axis=ax, keepdims=True)


def _block_max(ab: jax.Array, ax: int) -> jax.Array:
  """max over the block axis ``ax`` (keepdims), in the form each backend's emitter runs fastest (same values).

  CUDA: a ``reduce_window``. XLA:GPU emits it as a loop kernel (the step's loop-kernel block maxes ran at ~2.4 TB/s), where a
  reduce over a contiguous 32-element block became a row-reduction kernel (measured ~1.5 TB/s) and once a multi-output row reduction that also
  ran the other blocking's quantization at a few % of bandwidth; the 12-layer mxfp8 train step went from 1.311x
  to 1.266x bf16 on the H100 (BENCHMARKS.md, issue 3). Elsewhere the halving reduce, which XLA:CPU runs ~1.4x
  faster than the window. Chosen at lowering time by the platform actually lowered for.
  """
  return lax.platform_dependent(ab, cuda=lambda v: _window_block_max(v, ax),
                                default=lambda v: _halving_block_max(v, ax))


def _fast_blocks(x: jax.Array, elem: ElemFormat, axis: int, bs: int, scale_mode: str):
  """(blocked element values as float32, blocked exponent e, non-finite-block mask) by FPU rounding: block amax
  (one reduction), e = shared_exponent(amax), x * 2^-e rounded.

  Measured on the H100 (BENCHMARKS.md, issue 3 session 6) against taking the block max of per-element
  exponents (one reduction as well, no per-block kernel): this form's 2-layer train step is 367 us faster.
  """
  xb = to_blocks(_bits.as_f32(x), axis, bs)
  ab = _bits.abs_bits(xb)
  amax = _block_max(ab, axis + 1)
  bad = _bits.is_nonfinite_bits(amax)
  e = shared_exponent(jnp.where(bad, 0, amax), elem, scale_mode)
  return _bits.round_to_elem_rne_fast(_bits.mul_pow2(xb, -e), elem), e, bad


def mx_fake_quantize_fast(x: jax.Array, elem: ElemFormat, axis: int, bs: int, scale_mode: str) -> jax.Array:
  """Dequantized MX values (float32, padded along axis) via float scaling and FPU rounding (RNE only).

  The GEMM-operand path: ~4x fewer ALU ops than the integer path. Same bits as
  ``mx_dequantize_blocks(*mx_quantize_blocks(...))`` for inputs without FP32 subnormals; with them, a
  backend that flushes subnormals (XLA:CPU) may give zeros where the exact path gives tiny values.
  """
  v, e, bad = _fast_blocks(x, elem, axis, bs, scale_mode)
  return from_blocks(jnp.where(bad, jnp.nan, _bits.mul_pow2(v, e)), axis)


def mx_quantize_fast(x: jax.Array, elem: ElemFormat, axis: int, bs: int, scale_mode: str):
  """(elements in ``elem``'s storage dtype (``_bits.to_elem_dtype``: FP6 as codes, INT8 as int8), padded along
  axis; E8M0 scales) with the fast path's rounding (RNE); a QArray's data and scales."""
  v, e, bad = _fast_blocks(x, elem, axis, bs, scale_mode)
  sb = jnp.squeeze(jnp.where(bad, E8M0_NAN, e + E8M0_BIAS), axis + 1)
  return _bits.to_elem_dtype(from_blocks(jnp.where(bad, 0.0, v), axis), elem), scale_bytes_to_e8m0(sb)


def mx_quantize_blocks(x: jax.Array, elem: ElemFormat, axis: int, bs: int, scale_mode: str,
                       rounding: str, key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Returns (element values as exact float32, padded along axis; scale bytes uint8)."""
  xb = to_blocks(_bits.as_f32(x), axis, bs)
  ab = _bits.abs_bits(xb)
  amax = jnp.max(ab, axis=axis + 1, keepdims=True)  # integer max: exact, NaN > Inf > finite
  bad = _bits.is_nonfinite_bits(amax)
  e = shared_exponent(jnp.where(bad, 0, amax), elem, scale_mode)
  rbits = None
  if rounding == "stochastic":
    rbits = jax.random.bits(key, xb.shape, jnp.uint32)
  v = _bits.round_to_elem(xb, e, elem, rounding, rbits=rbits, saturate=True)
  v = jnp.where(bad, 0.0, v)
  scale_b = jnp.where(bad, E8M0_NAN, e + E8M0_BIAS).astype(jnp.uint8)
  return from_blocks(v, axis), jnp.squeeze(scale_b, axis + 1)


def mx_dequantize_blocks(v: jax.Array, scale_b: jax.Array, axis: int, bs: int) -> jax.Array:
  """Exact float32 elem * 2^(b - 127) (NaN where b = 0xFF), still padded along axis.

  Built from exponent bits, so FP32-subnormal results are exact even where the backend flushes them.
  """
  vb = to_blocks(v, axis, bs)
  b = jnp.expand_dims(scale_b.astype(jnp.int32), axis + 1)
  out = _bits.mul_pow2_bits(vb, jnp.broadcast_to(b - E8M0_BIAS, vb.shape))
  out = jnp.where(b == E8M0_NAN, jnp.nan, out)
  return from_blocks(out, axis)
