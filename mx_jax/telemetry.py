"""Quantization telemetry: what a quantizer did to one tensor, as a fixed-size float32 vector.

  stats[0] = fraction of elements saturated   (|x| beyond the block's largest representable value)
  stats[1] = fraction of non-zero elements flushed to zero
  stats[2:] = histogram (fractions, 256 bins) of the scale exponent floor(log2(decode scale)) + 127,
              one count per scale (block, channel or tensor), clipped to [0, 255]
Computed inside jit with no host round-trip; recipes return it through the state collection.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mx_jax import _bits
from mx_jax.mx_block import e8m0_to_bytes
from mx_jax.qarray import QArray
from mx_jax.quantize import dequantize

NBINS = 256
SIZE = 2 + NBINS


def _log2_bins(s: jax.Array) -> jax.Array:
  fl, _ = _bits.frexp_bits(_bits.abs_bits(s))
  return jnp.clip(fl + 127, 0, NBINS - 1)


def scale_exponent_bins(q: QArray) -> jax.Array:
  f = q.format
  if f.kind == "mx":
    return e8m0_to_bytes(q.scales).astype(jnp.int32)
  if f.kind == "nvfp4":
    return _log2_bins(q.scales.astype(jnp.float32) * q.tensor_scale)
  return _log2_bins(q.scales)


def quant_stats(x: jax.Array, q: QArray) -> jax.Array:
  """The telemetry vector (see module docstring) for ``q = quantize(x, ...)``."""
  x = x.astype(jnp.float32)
  d = dequantize(q, jnp.float32)
  finite = jnp.isfinite(x)
  n = jnp.maximum(jnp.sum(finite), 1)
  elem = _bits.from_elem_dtype(q.data, q.format.elem) if not q.packed else None
  if elem is not None and q.axis is not None and elem.shape != x.shape:
    elem = jax.lax.slice_in_dim(elem, 0, x.shape[q.axis], axis=q.axis)
  at_max = (jnp.abs(elem) == q.format.elem.max_normal) if elem is not None and elem.shape == x.shape else True
  saturated = finite & at_max & (jnp.abs(x) > jnp.abs(d))
  flushed = finite & (x != 0) & (d == 0)
  bins = scale_exponent_bins(q).reshape(-1)
  hist = jnp.zeros((NBINS,), jnp.float32).at[bins].add(1.0) / bins.size
  head = jnp.stack([jnp.sum(saturated) / n, jnp.sum(flushed) / n]).astype(jnp.float32)
  return jnp.concatenate([head, hist])
