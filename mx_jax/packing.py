"""Sub-byte storage: FP4 two codes per byte, FP6 four codes per three bytes, along the quantized axis.

FP4: byte i = code[2i] | code[2i+1] << 4 (first element in the low nibble, as PyTorch's float4_e2m1fn_x2
and cuBLAS). FP6: 24-bit word w = c0 | c1 << 6 | c2 << 12 | c3 << 18 stored little-endian in 3 bytes.
8-bit formats pack to their uint8 codes (a bitcast). ``unpack(pack(q)) == q`` exactly.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mx_jax import _bits
from mx_jax.qarray import QArray


def _group(x: jax.Array, axis: int, k: int) -> jax.Array:
  x = jnp.moveaxis(x, axis, -1)
  if x.shape[-1] % k:
    raise ValueError(f"packing needs the quantized axis length to be a multiple of {k}; got {x.shape[-1]}")
  return x.reshape(x.shape[:-1] + (x.shape[-1] // k, k))


def pack_codes(codes: jax.Array, bits: int, axis: int) -> jax.Array:
  """uint8 codes (low ``bits`` bits) -> packed uint8 bytes along ``axis``."""
  if bits == 8:
    return codes.astype(jnp.uint8)
  c = codes.astype(jnp.uint32)
  if bits == 4:
    g = _group(c, axis, 2)
    out = g[..., 0] | (g[..., 1] << 4)
  elif bits == 6:
    g = _group(c, axis, 4)
    w = g[..., 0] | (g[..., 1] << 6) | (g[..., 2] << 12) | (g[..., 3] << 18)
    out = jnp.stack([w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF], axis=-1)
    out = out.reshape(out.shape[:-2] + (out.shape[-2] * 3,))
  else:
    raise ValueError(f"bits must be 4, 6 or 8; got {bits}")
  return jnp.moveaxis(out.astype(jnp.uint8), -1, axis)


def unpack_codes(packed: jax.Array, bits: int, axis: int) -> jax.Array:
  if bits == 8:
    return packed
  p = jnp.moveaxis(packed.astype(jnp.uint32), axis, -1)
  if bits == 4:
    out = jnp.stack([p & 0xF, p >> 4], axis=-1)
  elif bits == 6:
    g = p.reshape(p.shape[:-1] + (p.shape[-1] // 3, 3))
    w = g[..., 0] | (g[..., 1] << 8) | (g[..., 2] << 16)
    out = jnp.stack([(w >> (6 * i)) & 0x3F for i in range(4)], axis=-1)
  else:
    raise ValueError(f"bits must be 4, 6 or 8; got {bits}")
  out = out.reshape(out.shape[:-2] + (out.shape[-2] * out.shape[-1],))
  return jnp.moveaxis(out.astype(jnp.uint8), -1, axis)


def element_codes(q: QArray) -> jax.Array:
  """uint8 bit codes of an unpacked QArray's elements (bitcast for FP8/INT8; FP6 is stored as codes)."""
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray; got {type(q).__name__}")
  if q.packed:
    raise ValueError("q is packed: call mx_jax.packing.unpack(q) first (element_codes reads one code per element)")
  elem = q.format.elem
  if elem.bits == 8:
    return jax.lax.bitcast_convert_type(q.data, jnp.uint8)
  if elem.bits == 6:
    return q.data.astype(jnp.uint8)
  return _bits.elem_to_code(_bits.from_elem_dtype(q.data, elem), elem)


def pack(q: QArray) -> QArray:
  """Packs ``q.data`` into its true bit width (a no-op for an already packed QArray)."""
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray; got {type(q).__name__}")
  if q.packed:
    return q
  elem = q.format.elem
  codes = _bits.elem_to_code(_bits.from_elem_dtype(q.data, elem), elem)
  axis = q.axis if q.axis is not None else q.data.ndim - 1
  if q.data.ndim == 0:
    raise ValueError("cannot pack a rank-0 QArray")
  return dataclasses.replace(q, data=pack_codes(codes, elem.bits, axis), packed=True)


def unpack(q: QArray) -> QArray:
  """Inverse of ``pack``: element codes back in the element's ml_dtypes dtype."""
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray; got {type(q).__name__}")
  if not q.packed:
    return q
  elem = q.format.elem
  axis = q.axis if q.axis is not None else q.data.ndim - 1
  codes = unpack_codes(q.data, elem.bits, axis)
  vals = _bits.code_to_elem(codes, elem)
  return dataclasses.replace(q, data=_bits.to_elem_dtype(vals, elem), packed=False)
