"""OFP8 with one FP32 scale per tensor (or per channel): TransformerEngine / Micikevicius et al. scaling.

  scale = (max_elem / amax) / 2^margin      (float32; optionally rounded down to a power of two)
  q     = fp8( x * scale )                  float32 product, then RNE onto the FP8 grid
  x^    = q * (1 / scale)                   (the stored decode scale, TE's ``scale_inv``)
amax is taken over the finite elements (a NaN/Inf element stays NaN / saturates by itself and does not
poison the others' scale); amax = 0 -> scale 1 (current scaling; delayed scaling keeps its previous
scale, see scaling.py). Saturating (default): |q| capped at max_elem, ±Inf -> ±max, NaN stays NaN. Non-saturating:
overflow -> Inf (E5M2) / NaN (E4M3), as a plain cast.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mx_jax import _bits
from mx_jax.formats import ElemFormat


def finite_amax(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """max |x| over the finite entries (float32); 0 for an all-non-finite reduction."""
  a = jnp.abs(_bits.as_f32(x))
  return jnp.max(jnp.where(jnp.isfinite(a), a, 0.0), axis=axis, keepdims=keepdims)


def compute_scale(amax: jax.Array, elem: ElemFormat, margin: int = 0, power_of_two: bool = False,
                  fallback: jax.Array | float = 1.0) -> jax.Array:
  """scale = max_elem / amax / 2^margin in float32; ``fallback`` where amax is 0 or non-finite."""
  amax = jnp.asarray(amax, jnp.float32)
  s = jnp.float32(elem.max_normal) / amax
  s = _bits.mul_pow2(s, jnp.int32(-margin)) if margin else s
  if power_of_two:
    fl, _ = _bits.frexp_bits(_bits.abs_bits(s))
    s = _bits.pow2(fl)
  ok = jnp.isfinite(amax) & (amax > 0) & jnp.isfinite(s) & (s > 0)
  return jnp.where(ok, s, jnp.asarray(fallback, jnp.float32))


def fp8_quantize(x: jax.Array, scale: jax.Array, elem: ElemFormat, rounding: str,
                 key: jax.Array | None, saturate: bool, fast: bool = False) -> tuple[jax.Array, jax.Array]:
  """Returns (FP8 values as float32, decode scale 1/scale). ``scale`` broadcasts against x.

  ``fast`` (RNE, saturating only): FPU rounding, bit-identical for normal inputs (the GEMM-operand path).
  """
  scale = jnp.asarray(scale, jnp.float32)
  y = _bits.as_f32(x) * scale
  if fast and rounding == "nearest_even" and saturate:
    v = jnp.where(jnp.isnan(y), jnp.nan, _bits.round_to_elem_rne_fast(y, elem))
    return v, jnp.float32(1.0) / scale
  rbits = jax.random.bits(key, y.shape, jnp.uint32) if rounding == "stochastic" else None
  v = _bits.round_to_elem(y, jnp.int32(0), elem, rounding, rbits=rbits, saturate=saturate)
  if saturate:  # NaN stays NaN for per-tensor FP8 (the element format carries it)
    v = jnp.where(jnp.isnan(y), jnp.nan, v)
  return v, jnp.float32(1.0) / scale
