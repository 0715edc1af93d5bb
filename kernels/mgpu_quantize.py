"""MX / NVFP4 quantize along the last axis as a Mosaic GPU (``plgpu``) kernel.

Same contract and bits as ``kernels.mx_quantize.quantize_blocks_pallas`` (and so ``mx_jax.quantize``):
per block of ``bs`` elements, MX: e = shared_exponent(absmax), codes = RNE/away/SR(x / 2^e) saturated,
scale byte e + 127 (0xFF for a block holding NaN/Inf, whose codes are 0); NVFP4: E4M3 block scale
d = RN_e4m3(absmax / 6 * s_enc), codes = round(x / (d * s_dec)) onto E2M1.

Layout: the input is viewed as (M, bs) = one block per row (M = rows * blocks, a free reshape) and read as
bits (uint16/uint32). A CTA pipelines ``steps`` tiles of T rows GMEM -> SMEM (``plgpu.emit_pipeline``);
each thread of the warpgroup owns T/128 whole blocks (``_mgpu_common.row_layout``), so the block absmax is
a thread-local max and every element op is integer arithmetic on the FP32 bits (``scaled_codes``). Codes
(uint8 (T, bs)) and scale bytes (uint8 (T,)) go SMEM -> GMEM by TMA from two alternating buffers.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from kernels import _mgpu_common as mc
from mx_jax import mx_block
from mx_jax.formats import E2M1, E4M3, E8M0_BIAS, E8M0_NAN, get_format

_EXP = 0x7F800000
_RECIP_ELEM_MAX = np.float32(1.0) / np.float32(E2M1.max_normal)
_E4M3_NAN = int(np.array(np.nan, jnp.float8_e4m3fn).view(np.uint8))


def _e4m3_value(code: jax.Array) -> jax.Array:
  """Non-negative E4M3 code (int32) -> its float32 value, from exponent bits (subnormals: mant * 2^-9)."""
  ex, mant = code >> 3, code & 7
  normal = lax.bitcast_convert_type(((ex + 120) << 23) | (mant << 20), jnp.float32)
  return jnp.where(ex > 0, normal, mant.astype(jnp.float32) * jnp.float32(2.0 ** -9))


def mx_block_codes(u, elem, scale_mode, rounding, rbits=None):
  """uint32 FP32 bits (T, bs) -> (codes int32 (T, bs), scale bytes int32 (T,)) of MX blocks (rows)."""
  ab = (u & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32)
  amax = jnp.max(ab, axis=1)
  bad = amax >= _EXP
  e = mx_block.shared_exponent(jnp.where(bad, 0, amax), elem, scale_mode)
  codes = mc.scaled_codes(u, mc.bcast_rows(e, u.shape), elem, rounding, rbits)
  return jnp.where(mc.bcast_rows(bad, u.shape), 0, codes), jnp.where(bad, E8M0_NAN, e + E8M0_BIAS)


def nvfp4_block_codes(u, s_enc, s_dec, rounding, rbits=None):
  """NVFP4 on FP32 bits (T, 16): (E2M1 codes, E4M3 scale bytes (T,)); the float steps of
  ``kernels.mx_quantize.nvfp4_tile`` with the E4M3 cast done by ``scaled_codes``."""
  ab = (u & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32)
  amax = jnp.max(ab, axis=1)
  bad = amax >= _EXP
  d = jnp.minimum(mc.f32_of(jnp.where(bad, 0, amax).astype(jnp.uint32)) * _RECIP_ELEM_MAX * s_enc,
                  jnp.float32(E4M3.max_normal))
  d8 = mc.scaled_codes(lax.bitcast_convert_type(d, jnp.uint32), jnp.zeros_like(amax), E4M3, "nearest_even")
  d32 = _e4m3_value(d8)
  zero = d32 == 0
  enc = jnp.float32(1.0) / jnp.where(zero, jnp.float32(1.0), d32 * s_dec)
  xe = mc.f32_of(u) * mc.bcast_rows(enc, u.shape)
  ue = lax.bitcast_convert_type(xe, jnp.uint32)
  codes = mc.scaled_codes(ue, jnp.zeros(u.shape, jnp.int32), E2M1, rounding, rbits)
  signed_zero = (u >> 28).astype(jnp.int32) & 8
  codes = jnp.where(mc.bcast_rows(zero | bad, u.shape), signed_zero, codes)
  return codes, jnp.where(bad, _E4M3_NAN, d8)


# Tiling (set by benchmarks/bench_quantize_norm.py's sweep): rows (= blocks) per tile, tiles per CTA.
CONFIG = {"tile": 256, "steps": 1}


def _tile_rows(m: int, block_rows: int | None) -> int:
  t = block_rows or CONFIG["tile"]
  return max(mc.ROWS, min(int(t), mc.ROWS * -(-m // mc.ROWS)))


def quantize_blocks_mgpu(xb, fmt, *, src_dtype, scale_mode="floor", rounding="nearest_even", rbits=None,
                         s_enc=None, s_dec=None, block_rows=None, steps=None):
  """Raw kernel call on the bits ``xb`` (M, bs) of ``src_dtype`` values, M a multiple of the tile (the
  caller pads): returns (codes uint8 (M, bs), scale bytes uint8 (M,))."""
  f = get_format(fmt)
  m, bs = xb.shape
  t = _tile_rows(m, block_rows)
  if m % t:
    raise ValueError(f"rows {m} must be a multiple of the tile {t}")
  tiles = m // t
  steps = int(steps or CONFIG["steps"])
  while tiles % steps:
    steps -= 1
  sr = rounding == "stochastic"
  nv = f.kind == "nvfp4"

  def kernel(*refs):
    refs = list(refs)
    x_g = refs.pop(0)
    rb_g = refs.pop(0) if sr else None
    sc_g = refs.pop(0) if nv else None
    c_g, s_g, c_s, s_s = refs
    cta = lax.axis_index("c")
    if nv:
      s_enc_v, s_dec_v = sc_g[0], sc_g[1]

    def body(idx, x_s, *rest):
      (i,) = idx
      slot = i % 2
      u = mc.f32_bits_of(mc.load_rows(x_s), src_dtype)
      rb = mc.load_rows(rest[0]) if sr else None
      if nv:
        codes, sb = nvfp4_block_codes(u, s_enc_v, s_dec_v, rounding, rb)
      else:
        codes, sb = mx_block_codes(u, f.elem, scale_mode, rounding, rb)
      plgpu.wait_smem_to_gmem(2, wait_read_only=True)  # the copies from this slot two steps ago
      c_s.at[slot][...] = codes.astype(jnp.uint8)
      s_s.at[slot][...] = sb.astype(jnp.uint8)
      plgpu.commit_smem()
      row0 = (cta * steps + i) * t
      plgpu.copy_smem_to_gmem(c_s.at[slot], c_g.at[pl.ds(row0, t)])
      plgpu.copy_smem_to_gmem(s_s.at[slot], s_g.at[pl.ds(row0, t)])

    spec = plgpu.BlockSpec((t, bs), lambda i: (i, 0))
    ins = [x_g.at[pl.ds(cta * steps * t, steps * t)]]
    if sr:
      ins.append(rb_g.at[pl.ds(cta * steps * t, steps * t)])
    plgpu.emit_pipeline(body, grid=(steps,), in_specs=[spec] * len(ins),
                        max_concurrent_steps=min(2, steps))(*ins)
    plgpu.wait_smem_to_gmem(0)

  args = [xb] + ([rbits] if sr else [])
  if nv:
    args.append(jnp.stack([jnp.asarray(s_enc, jnp.float32).reshape(()),
                           jnp.asarray(s_dec, jnp.float32).reshape(())]))
  f_k = plgpu.kernel(
      kernel, out_type=(jax.ShapeDtypeStruct((m, bs), jnp.uint8), jax.ShapeDtypeStruct((m,), jnp.uint8)),
      grid=(tiles // steps,), grid_names=("c",),
      scratch_types=(plgpu.SMEM((2, t, bs), jnp.uint8), plgpu.SMEM((2, t), jnp.uint8)),
      interpret=mc.interpret_params())
  return f_k(*args)


def quantize_mgpu(x, f, bs, scale_mode, rounding, rb3, s_enc, s_dec, block_rows=None, steps=None):
  """x (..., n) -> (codes uint8 (R, nb, bs), scale bytes uint8 (R, nb)) (wrapper side of the kernel).
  ``rb3``: uint32 (R, nb, bs) random bits for stochastic rounding."""
  from kernels.mx_quantize import pad_last
  n = x.shape[-1]
  r = math.prod(x.shape[:-1])
  nb = -(-n // bs)
  m = r * nb
  t = _tile_rows(m, block_rows)
  mp = t * -(-m // t)
  xb = pad_last(mc.as_bits(x).reshape(r, n), nb * bs - n).reshape(m, bs)
  if mp != m:
    xb = jnp.pad(xb, ((0, mp - m), (0, 0)))
  rb = None
  if rb3 is not None:
    rb = rb3.reshape(m, bs)
    rb = jnp.pad(rb, ((0, mp - m), (0, 0))) if mp != m else rb
  codes, sb = quantize_blocks_mgpu(xb, f.name, src_dtype=x.dtype, scale_mode=scale_mode, rounding=rounding,
                                   rbits=rb, s_enc=s_enc, s_dec=s_dec, block_rows=t, steps=steps)
  if mp != m:
    codes, sb = codes[:m], sb[:m]
  return codes.reshape(r, nb, bs), sb.reshape(r, nb)


def mx_quantize_mgpu(x, fmt, *, block_size=None, scale_mode="floor", rounding="nearest_even", key=None,
                     rbits=None, amax=None):
  """``kernels.mx_quantize.mx_quantize(..., impl="pallas")`` on this kernel (compiled on a GPU, Mosaic GPU's
  interpreter elsewhere), called below any sharding wrapper of that entry point (one device)."""
  from kernels import _dispatch
  from kernels import mx_quantize as _  # noqa: F401  (the module, shadowed by the function in kernels)
  import sys
  kq = sys.modules["kernels.mx_quantize"]
  from mx_jax.quantize import _check_array, _check_options
  x = _check_array(x)
  f = get_format(fmt)
  if f.kind not in ("mx", "nvfp4"):
    raise ValueError(f"{fmt!r} is not a block format")
  if rounding == "stochastic" and key is None and rbits is None:
    raise ValueError("rounding='stochastic' needs key= or rbits=")
  bs, _ = _check_options(f, block_size, scale_mode, rounding, key if rbits is None else True, None)
  if rbits is not None and rounding != "stochastic":
    rbits = None
  with _dispatch.use_gpu_backend("mosaic"):
    fn = getattr(kq._mx_quantize_jit, "unwrapped", kq._mx_quantize_jit)
    return fn(x, key, rbits, amax, f.name, bs, scale_mode, rounding, _dispatch.impl_key("pallas"), None, None,
              None, True)
