"""Exhaustive / dense bit-exact comparison of mx_jax MX quantization against the float64 spec oracle.

1. Every one of the 65,536 bf16 bit patterns v, in blocks of 2 with a controlled partner:
   [v, P] for four partners P (the element max, a power of two, a bf16-subnormal amax and a huge one), so
   that v is rounded against a known scale whenever |v| <= P, and [v, +-0] so that amax = |v| itself.
2. A dense float32 sample of 2^20 values (half uniformly random bit patterns, half blocks with a shared
   random exponent and short mantissas that make rounding ties common), in blocks of 32, along either axis.

Each is checked for every MX element format x scale mode x deterministic rounding: E8M0 scale bytes, element
codes (outside NaN blocks), dequantize(quantize(x)) in float32 and fake_quantize(x) in x.dtype, with NaN == NaN
and +0 != -0.
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import spec_reference as R  # noqa: E402

import mx_jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# XLA:CPU runs float arithmetic with flush-to-zero: a dequantized value below the fp32/bf16 smallest normal
# (possible with the 2^-127 scale) comes back as a zero of the same sign. The sweeps accept exactly that
# (codes and scale bytes are still compared strictly); test_specials.py pins the exact subnormal outputs.
FTZ_OK = True

BF16 = ml_dtypes.bfloat16
COMBOS = [(f, m, r) for f in R.MX_FORMATS for m in R.SCALE_MODES for r in R.ROUNDINGS]


def _id(c):
  return "-".join(c)


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def bf16_sweep_input(fmt: str) -> np.ndarray:
  v = np.arange(65536, dtype=np.uint16).view(BF16)
  mx = R.elem_spec(fmt)["max"]
  partners = [mx, 0.5, 1.875 * 2.0**-130, 1.25 * 2.0**120]
  rows = []
  for p in partners:
    pb = np.full(v.shape, p, np.float64).astype(np.float32).astype(BF16)
    assert float(pb[0]) == p  # all partners are exact bf16 values
    rows.append(np.stack([v, pb], axis=-1))
  z = np.where(np.arange(65536) % 2 == 0, 0.0, -0.0).astype(np.float32).astype(BF16)
  rows.append(np.stack([v, z], axis=-1))
  return np.concatenate(rows, axis=0)  # (5 * 65536, 2) bfloat16


@functools.lru_cache(maxsize=None)
def dense_f32_input() -> np.ndarray:
  """(1024, 1024) float32; blocks of 32 along the last axis share structure."""
  rng = np.random.default_rng(20240531)
  n = 1 << 20
  half = n // 2
  uniform = rng.integers(0, 2**32, half, dtype=np.uint64).astype(np.uint32)
  nb = half // 32
  base = rng.integers(0, 255, nb)  # biased fp32 exponent of the block's largest values
  expf = np.clip(np.repeat(base, 32) - rng.integers(0, 24, half), 0, 254).astype(np.uint32)
  mant = rng.integers(0, 2**23, half, dtype=np.uint64).astype(np.uint32)
  short = rng.random(half) < 0.5  # short mantissas: ties against the element grids are common
  keep = rng.integers(0, 6, half).astype(np.uint32)  # keep 0..5 leading mantissa bits
  mask = ((np.uint32(0x7FFFFF) >> (np.uint32(23) - keep)) << (np.uint32(23) - keep)).astype(np.uint32)
  mant = np.where(short, mant & mask, mant)
  sign = (rng.integers(0, 2, half).astype(np.uint32) << np.uint32(31))
  structured = sign | (expf << np.uint32(23)) | mant
  zero = rng.random(half) < 0.01
  structured = np.where(zero, sign, structured)
  bits = np.concatenate([uniform, structured]).astype(np.uint32)
  # a few planted non-finite values in the structured half
  idx = half + rng.choice(half, 64, replace=False)
  bits[idx[:24]] = 0x7FC00000
  bits[idx[24:44]] = 0x7F800000
  bits[idx[44:]] = 0xFF800000
  return bits.view(np.float32).reshape(1024, 1024)


# ----------------------------------------------------------------------------------------------------
# oracle results, cached so that the perturbation checks reuse them
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def ref_bf16(fmt, mode, rounding):
  x = bf16_sweep_input(fmt)
  elems, e, byte = R.ref_mx_quantize(x, fmt, axis=-1, block_size=2, scale_mode=mode, rounding=rounding)
  fake32 = R.ref_mx_fake(x, fmt, axis=-1, block_size=2, scale_mode=mode, rounding=rounding,
                         out_dtype=np.float32)
  return elems, byte, fake32, R.cast_out(fake32.astype(np.float64), BF16)


@functools.lru_cache(maxsize=None)
def ref_dense(fmt, mode, rounding, axis):
  x = dense_f32_input() if axis == 1 else np.ascontiguousarray(dense_f32_input().T)
  elems, e, byte = R.ref_mx_quantize(x, fmt, axis=axis, block_size=32, scale_mode=mode, rounding=rounding)
  fake = R.ref_mx_fake(x, fmt, axis=axis, block_size=32, scale_mode=mode, rounding=rounding)
  return x, elems, byte, fake


def _check_qarray(q, x, fmt, axis, elems_ref, byte_ref, what):
  assert q.fmt == fmt
  assert tuple(q.shape) == x.shape
  got_bytes = R.e8m0_bytes(q.scales)
  R.assert_bytes(got_bytes, byte_ref, what + " scale bytes")
  codes = R.codes_to_values(q.data, fmt)
  n = x.shape[axis]
  codes = np.take(codes, np.arange(n), axis=axis)  # drop padding
  assert codes.shape == x.shape
  nan_blk = np.isnan(elems_ref)
  R.assert_same(np.where(nan_blk, np.nan, codes), elems_ref, what + " element codes", inputs=x)


def _perturbation_check(results, key, others, what):
  """The sweep can tell the configuration apart from each deliberately wrong one."""
  exp = results[key]
  for k in others:
    assert R.mismatch_mask(results[k], exp).any(), f"{what}: sweep cannot tell {key} from {k}"


# ----------------------------------------------------------------------------------------------------
# 1. all bf16 bit patterns
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_all_bf16_patterns(combo):
  fmt, mode, rounding = combo
  x = bf16_sweep_input(fmt)
  elems_ref, byte_ref, fake32_ref, fakebf_ref = ref_bf16(fmt, mode, rounding)
  xj = jnp.asarray(x)
  kw = dict(axis=-1, block_size=2, scale_mode=mode, rounding=rounding)
  what = f"bf16 sweep {fmt}/{mode}/{rounding}"

  q = mx_jax.quantize(xj, fmt, **kw)
  _check_qarray(q, x, fmt, 1, elems_ref, byte_ref, what)
  deq = np.asarray(mx_jax.dequantize(q, jnp.float32))
  assert deq.dtype == np.float32
  R.assert_same(deq, fake32_ref, what + " dequantize(f32)", inputs=x, ftz_ok=FTZ_OK)
  fq = np.asarray(mx_jax.fake_quantize(xj, fmt, **kw))
  assert fq.dtype == BF16
  R.assert_same(fq, fakebf_ref, what + " fake_quantize(bf16)", inputs=x, ftz_ok=FTZ_OK)

  # perturbation: every other scale mode, and the other rounding, give a different answer on this sweep
  other_r = [rr for rr in R.ROUNDINGS if rr != rounding]
  other_m = [mm for mm in R.SCALE_MODES if mm != mode]
  res = {(mode, rounding): fake32_ref}
  res.update({(m2, rounding): ref_bf16(fmt, m2, rounding)[2] for m2 in other_m})
  res.update({(mode, r2): ref_bf16(fmt, mode, r2)[2] for r2 in other_r})
  others = [k for k in res if k != (mode, rounding)]
  if fmt == "mxint8" and mode in ("rceil", "even"):
    # For MXINT8 (max 2 - 2^-6, M = 6) rceil bumps the exponent iff the significand > 2 - 2^-6 and even
    # iff it is >= 2 - 2^-7: identical on bf16 inputs (7 fraction bits). The dense f32 test separates them.
    others = [k for k in others if k[0] not in ("rceil", "even")]
  _perturbation_check(res, (mode, rounding), others, what)


# ----------------------------------------------------------------------------------------------------
# 2. dense float32 sample
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS, ids=_id)
def test_dense_float32(combo):
  fmt, mode, rounding = combo
  axis = 1 if rounding == "nearest_even" else 0
  x, elems_ref, byte_ref, fake_ref = ref_dense(fmt, mode, rounding, axis)
  xj = jnp.asarray(x)
  kw = dict(axis=axis, block_size=32, scale_mode=mode, rounding=rounding)
  what = f"dense f32 {fmt}/{mode}/{rounding}/axis{axis}"
  q = mx_jax.quantize(xj, fmt, **kw)
  assert q.axis == axis
  _check_qarray(q, x, fmt, axis, elems_ref, byte_ref, what)
  fq = np.asarray(mx_jax.fake_quantize(xj, fmt, **kw))
  assert fq.dtype == np.float32
  R.assert_same(fq, fake_ref, what + " fake_quantize", inputs=x, ftz_ok=FTZ_OK)
  # perturbation: the previous scale mode (cyclically) differs on this sample
  m2 = R.SCALE_MODES[(R.SCALE_MODES.index(mode) + 1) % 4]
  assert R.mismatch_mask(ref_dense(fmt, m2, rounding, axis)[3], fake_ref).any()


def test_dense_sample_is_rich():
  """The dense sample really contains ties, subnormals, NaN/Inf blocks and all-zero-ish blocks."""
  x = dense_f32_input()
  a = np.abs(x[np.isfinite(x)])
  assert (a[a > 0] < np.finfo(np.float32).tiny).sum() > 1000  # fp32 subnormals
  _, _, byte = R.ref_mx_quantize(x, "mxfp8_e4m3", axis=1, block_size=32)
  assert (byte == 255).sum() > 1000 and (byte == 0).sum() > 10
  _, _, byte = R.ref_mx_quantize(x, "mxint8", axis=1, block_size=32, scale_mode="ceil")
  assert (byte == 254).sum() >= 10  # clamped at the top
  # ceil-family scales on amax near FLT_MAX give dequantized 2^128 -> inf (the oracle keeps IEEE overflow)
  f = R.ref_mx_fake(x, "mxfp8_e4m3", 1, 32, "ceil")
  assert np.isinf(f[np.isfinite(x)]).any()
  # RNE vs ties-away differ on many elements (ties are common)
  d = R.mismatch_mask(R.ref_mx_fake(x, "mxfp4_e2m1", 1, 32, "floor", "nearest_even"),
                      R.ref_mx_fake(x, "mxfp4_e2m1", 1, 32, "floor", "nearest_away"))
  assert d.sum() > 5000
