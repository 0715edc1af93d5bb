"""NVFP4: E2M1 elements, one E4M3 decode scale per 16 elements, one FP32 tensor scale (NVIDIA's recipe).

All steps are float32, in this order (as TransformerEngine's reference quantizer):
  S_enc = 6 * 448 / amax(x)              amax over the finite elements (1 if 0; capped at FP32 max)
  d_b   = e4m3( min(amax_b / 6 * S_enc, 448) )    RNE cast of the block decode scale
  q     = e2m1( x * (1 / (d_b * (1 / S_enc))) )   RNE (or stochastic), saturated to ±6; 0 where d_b = 0
  x^    = q * d_b * (1 / S_enc)
A block holding NaN/Inf gets a NaN block scale and decodes to NaN; other blocks keep their scales (a
NaN does not poison the tensor scale: it is carried by its own block).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mx_jax import _bits, fp8_tensor
from mx_jax._blocks import from_blocks, to_blocks
from mx_jax.formats import E2M1, E4M3

_F32_MAX = float(jnp.finfo(jnp.float32).max)


def tensor_encode_scale(amax: jax.Array) -> jax.Array:
  amax = amax.astype(jnp.float32)
  s = jnp.float32(E2M1.max_normal * E4M3.max_normal) / amax
  s = jnp.minimum(s, _F32_MAX)
  ok = jnp.isfinite(amax) & (amax > 0)
  return jnp.where(ok, s, jnp.float32(1.0))


def tensor_scales(x: jax.Array, amax: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(S_enc, S_dec = 1 / S_enc) from amax over x's finite elements (or the given ``amax``)."""
  s_enc = tensor_encode_scale(fp8_tensor.finite_amax(x) if amax is None else amax)
  return s_enc, jnp.float32(1.0) / s_enc


def nvfp4_quantize_blocks(x: jax.Array, axis: int, bs: int, rounding: str, key: jax.Array | None,
                          amax: jax.Array | None = None, fast: bool = False):
  """Returns (E2M1 values as float32 padded along axis, E4M3 block scales, FP32 tensor decode scale)."""
  x = _bits.as_f32(x)
  s_enc, s_dec = tensor_scales(x, amax)
  xb = to_blocks(x, axis, bs)
  bad = jnp.any(~jnp.isfinite(xb), axis=axis + 1, keepdims=True)
  amax_b = jnp.max(jnp.abs(jnp.where(bad, 0.0, xb)), axis=axis + 1, keepdims=True)
  d = jnp.minimum(amax_b / jnp.float32(E2M1.max_normal) * s_enc, jnp.float32(E4M3.max_normal))
  # The E4M3 block scale is rounded by arithmetic, not by d.astype(f8).astype(f32): XLA:GPU (excess precision
  # allowed, its default) folds that convert pair away, so the elements would be encoded against the unrounded
  # scale while the stored E4M3 scale decodes them (a silent error of up to 1/16 per block; H100, session 4).
  d32 = _bits.round_to_elem(d, jnp.int32(0), E4M3, "nearest_even", saturate=True)
  d_e4m3 = d32.astype(jnp.float8_e4m3fn)  # exact: d32 is on the E4M3 grid
  zero = d32 == 0
  enc = jnp.float32(1.0) / jnp.where(zero, 1.0, d32 * s_dec)
  if fast and rounding == "nearest_even":  # FPU rounding: same bits for normal inputs (GEMM operands)
    v = _bits.round_to_elem_rne_fast(xb * enc, E2M1)
  else:
    rbits = jax.random.bits(key, xb.shape, jnp.uint32) if rounding == "stochastic" else None
    v = _bits.round_to_elem(xb * enc, jnp.int32(0), E2M1, rounding, rbits=rbits, saturate=True)
  v = jnp.where(zero | bad, jnp.copysign(jnp.float32(0.0), xb), v)
  d_e4m3 = jnp.where(bad, jnp.array(jnp.nan, jnp.float8_e4m3fn), d_e4m3)
  return from_blocks(v, axis), jnp.squeeze(d_e4m3, axis + 1), s_dec


def nvfp4_dequantize_blocks(v: jax.Array, scales: jax.Array, tensor_scale: jax.Array, axis: int,
                            bs: int) -> jax.Array:
  vb = to_blocks(v, axis, bs)
  d = jnp.expand_dims(scales.astype(jnp.float32), axis + 1)
  return from_blocks(vb * d * tensor_scale.astype(jnp.float32), axis)
