"""Pieces shared by the Mosaic GPU (``plgpu``) quantize and norm kernels.

Register layout: ``row_layout(v)`` gives each of a warpgroup's 128 threads one row of a (128k, C) array
(``v`` consecutive elements per register), so reductions along a row are thread-local and a row's columns
are sliced out without data movement (``v = 1``). Element codes are built from the FP32 bit pattern with
integer ops only (Hopper has no E8M0/FP4/FP6 converts): ``scaled_codes`` is ``round_to_elem`` +
``exact_codes`` of ``mx_jax._bits`` / ``kernels.mx_quantize`` fused into one integer computation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import jax.experimental.pallas.mosaic_gpu as plgpu

from kernels import _dispatch
from kernels._dispatch import as_bits, uint_of  # noqa: F401  (the kernels' float-as-bits I/O)
from mx_jax import _bits
from mx_jax.formats import ElemFormat

ROWS = 128  # threads of a warpgroup: rows of a row_layout tile


def row_layout(v: int = 8):
  """Thread t of the warpgroup holds row t (mod 128) of the array, ``v`` elements per register."""
  return plgpu.Layout.TCGEN05_TMEM_NATIVE(v)


def load_rows(ref, v: int = 8):
  """SMEM (T, C) -> registers in ``row_layout(v)``, read as 16-byte vectors (4 elements of 32 bits, then
  regrouped in registers)."""
  w = 16 // jnp.dtype(ref.dtype).itemsize
  if w >= v:
    return plgpu.load(ref, layout=row_layout(v))
  return plgpu.layout_cast(plgpu.load(ref, layout=row_layout(w)), row_layout(v))


def interpret_params():
  """plgpu.kernel's ``interpret=``: Mosaic GPU's interpreter off-GPU (or when forced), else None."""
  return plgpu.InterpretGPUParams() if _dispatch.interpret() else None


def f32_bits_of(u: jax.Array, src_dtype) -> jax.Array:
  """Input bits (uint16/uint32) of ``src_dtype`` -> the uint32 bits of the value as float32 (exact)."""
  src_dtype = jnp.dtype(src_dtype)
  if src_dtype == jnp.bfloat16:
    return u.astype(jnp.uint32) << 16
  if src_dtype == jnp.float32:
    return u
  return lax.bitcast_convert_type(lax.bitcast_convert_type(u, src_dtype).astype(jnp.float32), jnp.uint32)


def f32_of(u32: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(u32, jnp.float32)


def bcast_rows(v: jax.Array, shape) -> jax.Array:
  """(T,) per-row values -> (T, C)."""
  return lax.broadcast_in_dim(v, shape, (0,))


def scaled_codes(u: jax.Array, e: jax.Array, elem: ElemFormat, rounding: str, rbits=None) -> jax.Array:
  """Code (int32, low ``elem.bits`` bits) of x / 2^e rounded onto ``elem``'s grid, saturated.

  u: uint32 bits of a finite float32 x; e: int32 in [-127, 127]. On |x| = sig * 2^ee (sig with its hidden
  bit, ee = max(E, 1) - 150): grid exponent g = max(floor(log2|x|), emin + e) - M, q = round(sig / 2^(g - ee))
  (RNE, ties away, or + 31 random bits then truncate, as ``_bits.round_to_elem``), code magnitude
  (max(floor(log2|x|) - e - emin, 0) << M) + q; |x| / 2^e > max_normal saturates. g - ee >= 5 for every
  format and e >= -127, so the shift never goes left.
  """
  m = elem.mbits
  neg = (u >> 31).astype(jnp.int32)
  ab = (u & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32)
  e_bits = ab >> 23
  fl, frac = _bits.frexp_bits(ab)
  sig = ((ab & 0x7FFFFF) | jnp.where(e_bits > 0, 1 << 23, 0)).astype(jnp.uint32)
  ee = jnp.maximum(e_bits, 1) - 150
  fv = fl - e  # floor(log2 |v|), v = x / 2^e
  s = jnp.maximum(fv, elem.emin) - m + e - ee
  s_pos = jnp.clip(s, 1, 31).astype(jnp.uint32)
  if rounding == "stochastic":
    pre = jnp.clip(s - 31, 0, 31).astype(jnp.uint32)
    sig_r = sig >> pre
    q = (sig_r + ((rbits >> 1) & ((jnp.uint32(1) << s_pos) - 1))) >> s_pos
  else:
    q = sig >> s_pos
    rem = sig & ((jnp.uint32(1) << s_pos) - 1)
    half = jnp.uint32(1) << (s_pos - 1)
    if rounding == "nearest_even":
      q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.uint32)
    elif rounding == "nearest_away":
      q = q + (rem >= half).astype(jnp.uint32)
    else:
      raise ValueError(f"rounding must be one of {_bits.ROUNDINGS}; got {rounding!r}")
  mag = (jnp.maximum(fv - elem.emin, 0) << m) + q.astype(jnp.int32)
  max_frac = int(np.array(elem.max_normal, np.float32).view(np.uint32)) & 0x7FFFFF
  over = (fv > elem.emax) | ((fv == elem.emax) & (frac > max_frac))
  max_code = ((elem.emax - elem.emin) << m) + (max_frac >> (23 - m)) + (1 << m)
  mag = jnp.where(over, max_code, mag)
  if elem.is_int:  # two's complement of k (value k * 2^-6)
    return jnp.where(neg == 1, -mag, mag) & 0xFF
  return mag | (neg << (elem.bits - 1))
