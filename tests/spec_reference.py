"""Independent float64 numpy reference for the mx_jax numerics (the test oracle).

Written from the format specifications (OCP Microscaling v1.0, NVIDIA NVFP4 two-level scaling, per-tensor
FP8 scaling), never from mx_jax code. No jax here: vectorized numpy only, so the oracle is fast enough for
exhaustive sweeps.

Conventions
- Element values are returned in *element units* (the value the element code stands for), float64.
- MX scale exponents are ints in [-127, 127]; the E8M0 byte is ``e + 127``; byte 255 is the NaN scale.
- Signed zeros follow the sign of the input wherever the element format has a negative zero (all float
  element formats). MXINT8 codes are two's-complement integers: there is no -0, so a zero element is +0.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

# ----------------------------------------------------------------------------------------------------
# Element formats, from the spec tables: mantissa bits M, smallest normal exponent emin, max normal.
# emax = floor(log2(max normal)) is the exponent the OCP shared-scale rule subtracts.
# ----------------------------------------------------------------------------------------------------
ELEM = {
    "e4m3": dict(M=3, emin=-6, max=448.0, emax=8, has_inf=False),
    "e5m2": dict(M=2, emin=-14, max=57344.0, emax=15, has_inf=True),
    "e3m2": dict(M=2, emin=-2, max=28.0, emax=4, has_inf=False),
    "e2m3": dict(M=3, emin=0, max=7.5, emax=2, has_inf=False),
    "e2m1": dict(M=1, emin=0, max=6.0, emax=2, has_inf=False),
    # MXINT8: k/64, |k| <= 127; a one-binade "float" with step 1/64 everywhere (M=6, emin=0).
    "int8": dict(M=6, emin=0, max=127.0 / 64.0, emax=0, has_inf=False),
}

MX_ELEM = {
    "mxfp8_e4m3": "e4m3",
    "mxfp8_e5m2": "e5m2",
    "mxfp6_e3m2": "e3m2",
    "mxfp6_e2m3": "e2m3",
    "mxfp4_e2m1": "e2m1",
    "mxint8": "int8",
}
MX_FORMATS = tuple(MX_ELEM)
FP8_ELEM = {"fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2"}
SCALE_MODES = ("floor", "ceil", "rceil", "even")
ROUNDINGS = ("nearest_even", "nearest_away")

# ml_dtypes element dtypes (used only to *read* QArray codes, never to build the reference values).
ELEM_DTYPE = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
    "int8": np.int8,
}


def elem_spec(fmt: str) -> dict:
  """Element parameters for an element name ("e4m3") or a block/tensor format name ("mxfp8_e4m3")."""
  if fmt in ELEM:
    return ELEM[fmt]
  if fmt in MX_ELEM:
    return ELEM[MX_ELEM[fmt]]
  if fmt in FP8_ELEM:
    return ELEM[FP8_ELEM[fmt]]
  if fmt == "nvfp4":
    return ELEM["e2m1"]
  raise ValueError(fmt)


def elem_name(fmt: str) -> str:
  if fmt in ELEM:
    return fmt
  return {**MX_ELEM, **FP8_ELEM, "nvfp4": "e2m1"}[fmt]


def grid_values(fmt: str) -> np.ndarray:
  """All non-negative values of the element format, ascending, enumerated from (M, emin, max)."""
  s = elem_spec(fmt)
  M, emin, mx = s["M"], s["emin"], s["max"]
  vals = {0.0}
  # subnormal / lowest binade: k * 2^(emin - M), k < 2^M ... plus all normal binades up to max.
  for k in range(1, 2**M):
    vals.add(math.ldexp(k, emin - M))
  E = emin
  while math.ldexp(1.0, E) <= mx:
    for k in range(2**M, 2 ** (M + 1)):
      v = math.ldexp(k, E - M)
      if v <= mx:
        vals.add(v)
    E += 1
  return np.array(sorted(vals))


# ----------------------------------------------------------------------------------------------------
# Element rounding
# ----------------------------------------------------------------------------------------------------
def _binade(a: np.ndarray) -> np.ndarray:
  """floor(log2(a)) for finite a > 0 (exact, via frexp); garbage (but finite) for 0 / inf / nan."""
  _, ex = np.frexp(a)
  return ex.astype(np.int64) - 1


def grid_step(v, fmt: str) -> np.ndarray:
  """The grid step of the element format at |v| (v in element units): 2^(max(floor(log2|v|), emin) - M)."""
  s = elem_spec(fmt)
  a = np.abs(np.asarray(v, np.float64))
  a = np.where(np.isfinite(a) & (a > 0), a, 1.0)
  return np.ldexp(1.0, np.maximum(_binade(a), s["emin"]) - s["M"])


def ref_elem_round(v, fmt: str, rounding: str = "nearest_even", saturate: bool = True) -> np.ndarray:
  """Rounds float64 values (already divided by the scale) to the element grid.

  rounding: "nearest_even" (RNE) or "nearest_away" (ties away from zero). With saturate, results are
  clamped to +-max normal (+-Inf too); NaN stays NaN. Without saturate the result is the unbounded grid
  rounding (callers decide what overflow means). The sign of the input is kept (also for zero results).
  """
  s = elem_spec(fmt)
  v = np.asarray(v, np.float64)
  a = np.abs(v)
  fin = np.isfinite(a) & (a > 0)
  a_safe = np.where(fin, a, 1.0)
  step_exp = np.maximum(_binade(a_safe), s["emin"]) - s["M"]
  q = np.ldexp(a_safe, -step_exp)  # exact (power-of-two scaling of a float64)
  if rounding == "nearest_even":
    r = np.rint(q)  # numpy rint is round-half-to-even
  elif rounding == "nearest_away":
    r = np.floor(q + 0.5)  # q < 2^(M+2): q + 0.5 is exact
  else:
    raise ValueError(rounding)
  out = np.ldexp(r, step_exp)
  out = np.where(fin, out, a)  # 0 -> 0, inf -> inf, nan -> nan
  if saturate:
    out = np.where(np.isnan(out), out, np.minimum(out, s["max"]))
  return np.copysign(out, v)


def ref_elem_neighbours(v, fmt: str):
  """(lower, upper) grid neighbours of |v| toward zero / away from zero, signed like v, saturated."""
  s = elem_spec(fmt)
  v = np.asarray(v, np.float64)
  a = np.abs(v)
  a_safe = np.where(np.isfinite(a) & (a > 0), a, 1.0)
  step_exp = np.maximum(_binade(a_safe), s["emin"]) - s["M"]
  q = np.ldexp(a_safe, -step_exp)
  lo = np.ldexp(np.floor(q), step_exp)
  hi = np.ldexp(np.ceil(q), step_exp)
  lo = np.where(a > 0, lo, 0.0)
  hi = np.where(a > 0, hi, 0.0)
  lo, hi = np.minimum(lo, s["max"]), np.minimum(hi, s["max"])
  return np.copysign(lo, v), np.copysign(hi, v)


# ----------------------------------------------------------------------------------------------------
# MX (OCP Microscaling v1.0): E8M0 shared scale per block
# ----------------------------------------------------------------------------------------------------
def ref_mx_scale_exp(amax, fmt: str, scale_mode: str = "floor"):
  """Shared-scale exponent e (int64, in [-127, 127]) and E8M0 byte (uint8) for block amaxes (float64).

  NaN / Inf amax -> byte 255 (e is returned as 0 there). amax == 0 -> e = -127 (byte 0).
  """
  s = elem_spec(fmt)
  M, emax, mx = s["M"], s["emax"], s["max"]
  amax = np.asarray(amax, np.float64)
  fin = np.isfinite(amax)
  pos = fin & (amax > 0)
  a = np.where(pos, amax, 1.0)
  m, ex = np.frexp(a)  # a = m * 2^ex, m in [0.5, 1)
  E = ex.astype(np.int64) - 1  # floor(log2 a)
  sig = m * 2.0  # in [1, 2), exact
  if scale_mode == "floor":
    e = E - emax
  elif scale_mode == "ceil":
    e = E - emax + (sig > 1.0)
  elif scale_mode == "rceil":
    # smallest e with max * 2^e >= amax (exact); it is E - emax or E - emax + 1.
    e = E - emax + (a > np.ldexp(mx, E - emax))
  elif scale_mode == "even":
    # significand rounded to M bits, ties up (add half an ulp of an M-bit mantissa, truncate).
    e = E - emax + (sig + 2.0 ** -(M + 1) >= 2.0)
  else:
    raise ValueError(scale_mode)
  e = np.clip(e, -127, 127)
  e = np.where(pos, e, np.where(fin, -127, 0))
  byte = np.where(fin, e + 127, 255).astype(np.uint8)
  return e.astype(np.int64), byte


def _to_f64(x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == np.float64:
    return x
  with np.errstate(invalid="ignore"):
    return x.astype(np.float32).astype(np.float64) if x.dtype.itemsize <= 4 else x.astype(np.float64)


def _blocked(x64: np.ndarray, axis: int, block_size: int):
  """Moves axis last, zero-pads it to a multiple of block_size, returns (..., nb, bs) plus the length."""
  xm = np.moveaxis(x64, axis, -1)
  n = xm.shape[-1]
  nb = -(-n // block_size)
  pad = nb * block_size - n
  if pad:
    xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (pad,), xm.dtype)], axis=-1)
  return xm.reshape(xm.shape[:-1] + (nb, block_size)), n


def _unblocked(xb: np.ndarray, n: int, axis: int) -> np.ndarray:
  xm = xb.reshape(xb.shape[:-2] + (-1,))[..., :n]
  return np.moveaxis(xm, -1, axis)


def ref_mx_quantize(x, fmt: str, axis: int = -1, block_size: int = 32, scale_mode: str = "floor",
                    rounding: str = "nearest_even"):
  """Reference MX quantization.

  Returns (elements, e, byte):
    elements: float64 element values (element units), original shape; NaN in NaN-scale blocks.
    e: int64 scale exponents, shape of x with `axis` replaced by the number of blocks.
    byte: uint8 E8M0 scale bytes (e + 127, or 255 for NaN/Inf blocks), same shape as e.
  """
  x64 = _to_f64(x)
  axis = axis % x64.ndim
  name = elem_name(fmt)
  xb, n = _blocked(x64, axis, block_size)
  with np.errstate(invalid="ignore"):
    amax = np.max(np.abs(xb), axis=-1)  # NaN propagates; Inf gives Inf
  e, byte = ref_mx_scale_exp(amax, name, scale_mode)
  scaled = np.ldexp(xb, -e[..., None])  # exact in float64
  elems = ref_elem_round(scaled, name, rounding, saturate=True)
  if name == "int8":
    elems = elems + 0.0  # no negative zero in two's complement: -0 -> +0
  elems = np.where((byte == 255)[..., None], np.nan, elems)
  elems = _unblocked(elems, n, axis)
  return elems, np.moveaxis(e, -1, axis), np.moveaxis(byte, -1, axis)


def cast_out(v64: np.ndarray, dtype) -> np.ndarray:
  """Casts exact float64 results to an output dtype with one RNE rounding (via float32, which is exact
  for every MX / NVFP4 / FP8 dequantized value in range). A value beyond the dtype's max becomes +-Inf, as
  IEEE rounding requires: e.g. ceil/rceil/even scales round amax = FLT_MAX up to 2^emax * 2^(128-emax) =
  2^128, which float32 cannot hold."""
  dtype = np.dtype(dtype)
  if dtype == np.float64:
    return v64
  with np.errstate(over="ignore", invalid="ignore"):
    v32 = v64.astype(np.float32)
    return v32 if dtype == np.float32 else v32.astype(dtype)


def ref_mx_fake(x, fmt: str, axis: int = -1, block_size: int = 32, scale_mode: str = "floor",
                rounding: str = "nearest_even", out_dtype=None) -> np.ndarray:
  """dequantize(quantize(x)): elements * 2^e, NaN for NaN-scale blocks, rounded once to out_dtype (default:
  x.dtype, as fake_quantize returns; pass out_dtype=np.float64 for the exact float64 values)."""
  x = np.asarray(x)
  elems, e, byte = ref_mx_quantize(x, fmt, axis, block_size, scale_mode, rounding)
  axis = axis % x.ndim
  eb = np.repeat(np.moveaxis(e, axis, -1), block_size, axis=-1)[..., : x.shape[axis]]
  eb = np.moveaxis(eb, -1, axis)
  deq = np.ldexp(elems, eb)  # NaN elements stay NaN
  if out_dtype is None:
    out_dtype = x.dtype if x.dtype.kind == "f" or x.dtype == ml_dtypes.bfloat16 else np.float32
  return cast_out(deq, out_dtype)


# ----------------------------------------------------------------------------------------------------
# NVFP4: E2M1 elements, blocks of 16, E4M3 block decode scale, FP32 per-tensor scale. float32 steps.
# ----------------------------------------------------------------------------------------------------
F32 = np.float32


def ref_nvfp4(x, axis: int = -1, block_size: int = 16) -> dict:
  """Reference NVFP4 quantization, mirroring the float32 op order of the NVIDIA recipe.

  Returns dict(elems (float64, element units, original shape; NaN in NaN blocks), block_scale
  (float8_e4m3fn, per block; NaN for NaN blocks), tensor_scale (float32 decode scale = 1/S_enc),
  s_enc (float32), deq (float32, original shape)).
  """
  x32 = np.asarray(x).astype(np.float32)
  axis = axis % x32.ndim
  with np.errstate(all="ignore"):
    # mx_jax's documented choice: the tensor amax is taken over the finite elements, so one NaN/Inf
    # does not poison the other blocks (it is carried by its own block's NaN scale).
    ax32 = np.where(np.isfinite(x32), np.abs(x32), F32(0))
    A = np.max(ax32) if x32.size else F32(0)
    if A == 0 or not np.isfinite(A):
      S = F32(1.0)
    else:
      S = F32(F32(6.0 * 448.0) / F32(A))
    inv_S = F32(F32(1.0) / S)
    xm = np.moveaxis(x32, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // block_size)
    pad = nb * block_size - n
    if pad:
      xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (pad,), np.float32)], axis=-1)
    xb = xm.reshape(xm.shape[:-1] + (nb, block_size))
    amax_b = np.max(np.abs(xb), axis=-1)  # float32, NaN propagates
    bad = ~np.isfinite(amax_b)
    d = (amax_b / F32(6.0)).astype(np.float32) * S  # float32 * float32 -> float32
    d = np.minimum(d, F32(448.0))
    d_e4m3 = np.where(bad, F32(0), d).astype(ml_dtypes.float8_e4m3fn)  # RNE, d <= 448
    d32 = d_e4m3.astype(np.float32)
    enc = F32(1.0) / (d32 * inv_S)  # float32, inf where d32 == 0 (unused there)
    y = (xb * enc[..., None]).astype(np.float32)
    elems = ref_elem_round(y.astype(np.float64), "e2m1", "nearest_even", saturate=True)
    zero_blk = (d32 == 0)[..., None]
    elems = np.where(zero_blk, np.copysign(0.0, xb.astype(np.float64)), elems)
    elems = np.where(bad[..., None], np.nan, elems)
    deq = (elems.astype(np.float32) * d32[..., None]).astype(np.float32) * inv_S
    deq = deq.astype(np.float32)
  block_scale = np.where(bad, np.nan, d32).astype(ml_dtypes.float8_e4m3fn)
  elems_o = np.moveaxis(elems.reshape(elems.shape[:-2] + (-1,))[..., :n], -1, axis)
  deq_o = np.moveaxis(deq.reshape(deq.shape[:-2] + (-1,))[..., :n], -1, axis)
  return dict(elems=elems_o, block_scale=np.moveaxis(block_scale, -1, axis), tensor_scale=inv_S, s_enc=S,
              deq=deq_o)


# ----------------------------------------------------------------------------------------------------
# Per-tensor / per-channel FP8 (current scaling)
# ----------------------------------------------------------------------------------------------------
def ref_fp8_tensor(x, fmt: str, margin: int = 0, power_of_two: bool = False, saturate: bool = True,
                   scale=None, granularity: str = "tensor", axis: int = -1) -> dict:
  """Reference per-tensor (or per-channel: amax reduced along `axis`) FP8 quantization.

  scale = float32(max / amax) / 2**margin (float32; power_of_two rounds it down to a power of two);
  amax (over the finite elements) == 0 -> scale 1. y = float32(x * scale), RNE to the fp8 grid. saturate: clamp to
  +-max (+-Inf -> +-max, NaN stays NaN); else overflow -> Inf (E5M2) / NaN (E4M3).
  Returns dict(elems (float64), scale (float32, keepdims), inv_scale (float32), deq (float32)).
  """
  name = elem_name(fmt)
  s = ELEM[name]
  x32 = np.asarray(x).astype(np.float32)
  with np.errstate(all="ignore"):
    if scale is None:
      fa = np.where(np.isfinite(x32), np.abs(x32), F32(0))  # amax over finite elements (documented)
      if granularity == "tensor":
        amax = np.max(fa, keepdims=True) if x32.size else np.zeros([1] * x32.ndim, np.float32)
      elif granularity == "channel":
        amax = np.max(fa, axis=axis, keepdims=True)
      else:
        raise ValueError(granularity)
      sc = (F32(s["max"]) / amax).astype(np.float32)
      sc = (sc / F32(2.0**margin)).astype(np.float32)
      if power_of_two:
        m, ex = np.frexp(sc.astype(np.float64))
        sc = np.where(np.isfinite(sc) & (sc > 0), np.ldexp(0.5, ex), sc).astype(np.float32)
      bad = (amax == 0) | ~np.isfinite(amax)
      sc = np.where(bad, F32(1.0), sc).astype(np.float32)
    else:
      sc = np.asarray(scale, np.float32)
    y = (x32 * sc).astype(np.float32)
    r = ref_elem_round(y.astype(np.float64), name, "nearest_even", saturate=False)
    if saturate:
      r = np.where(np.isnan(r), r, np.clip(r, -s["max"], s["max"]))
    else:
      over = np.abs(r) > s["max"]
      r = np.where(over, np.copysign(np.inf, r) if s["has_inf"] else np.nan, r)
    inv = (F32(1.0) / sc).astype(np.float32)
    deq = (r.astype(np.float32) * inv).astype(np.float32)
  return dict(elems=r, scale=sc, inv_scale=inv, deq=deq)


# ----------------------------------------------------------------------------------------------------
# Comparison helpers (numpy only)
# ----------------------------------------------------------------------------------------------------
def to_f64(a) -> np.ndarray:
  a = np.asarray(a)
  with np.errstate(invalid="ignore"):
    return a.astype(np.float32).astype(np.float64) if a.dtype != np.float64 else a


def mismatch_mask(got, exp, signed_zeros: bool = True) -> np.ndarray:
  """True where got and exp differ: NaN == NaN, and (by default) +0 != -0."""
  g, e = to_f64(got), to_f64(exp)
  gn, en = np.isnan(g), np.isnan(e)
  with np.errstate(invalid="ignore"):
    diff = (gn != en) | (~gn & ~en & (g != e))
    if signed_zeros:
      diff |= ~gn & ~en & (np.signbit(g) != np.signbit(e))
  return diff


def flush_subnormals(v, dtype=np.float32) -> np.ndarray:
  """v with every value of magnitude below the smallest normal of `dtype` replaced by a zero of its sign
  (what a flush-to-zero float unit returns)."""
  v = to_f64(v)
  tiny = float(ml_dtypes.finfo(dtype).tiny) if np.dtype(dtype) == ml_dtypes.bfloat16 else float(
      np.finfo(dtype).tiny)
  with np.errstate(invalid="ignore"):
    return np.where(np.abs(v) < tiny, np.copysign(0.0, v), v)


def assert_same(got, exp, what: str = "", inputs=None, signed_zeros: bool = True, show: int = 8,
                ftz_ok: bool = False):
  """Bit-level float equality (NaN == NaN, +0 != -0). ftz_ok: a result that is exactly the expected value
  flushed to a signed zero (expected below the smallest normal of got's dtype) is accepted too."""
  got_a, exp_a = np.asarray(got), np.asarray(exp)
  assert got_a.shape == exp_a.shape, f"{what}: shape {got_a.shape} != expected {exp_a.shape}"
  bad = mismatch_mask(got_a, exp_a, signed_zeros)
  if ftz_ok and bad.any():
    bad &= mismatch_mask(got_a, flush_subnormals(exp_a, got_a.dtype), signed_zeros)
  if bad.any():
    idx = np.argwhere(bad)[:show]
    lines = []
    for i in idx:
      t = tuple(i)
      inp = "" if inputs is None else f" input={np.asarray(inputs)[t]!r}"
      lines.append(f"  at {t}:{inp} expected={to_f64(exp_a)[t]!r} got={to_f64(got_a)[t]!r}")
    raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(lines))


def assert_bytes(got, exp, what: str = "", show: int = 8):
  got_a, exp_a = np.asarray(got), np.asarray(exp)
  assert got_a.shape == exp_a.shape, f"{what}: shape {got_a.shape} != expected {exp_a.shape}"
  bad = got_a != exp_a
  if bad.any():
    idx = np.argwhere(bad)[:show]
    lines = [f"  at {tuple(i)}: expected={exp_a[tuple(i)]} got={got_a[tuple(i)]}" for i in idx]
    raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(lines))


def e8m0_bytes(scales) -> np.ndarray:
  """uint8 view of float8_e8m0fnu scales (a jax or numpy array)."""
  s = np.asarray(scales)
  assert s.dtype == ml_dtypes.float8_e8m0fnu, f"scales dtype {s.dtype}, expected float8_e8m0fnu"
  return s.view(np.uint8)


def codes_to_values(data, fmt: str) -> np.ndarray:
  """Element values (float64) of QArray.data codes (element units)."""
  d = np.asarray(data)
  if elem_name(fmt) == "int8":
    assert d.dtype == np.int8, d.dtype
    return d.astype(np.float64) / 64.0
  dt = np.dtype(ELEM_DTYPE[elem_name(fmt)])
  if d.dtype == np.uint8 and dt.itemsize == 1 and dt != np.uint8:
    # unpacked codes held as raw bytes (the low bits are the code): decode them through ml_dtypes.
    # (tests/test_specials.py::test_qarray_dtypes pins the dtype itself against the API contract.)
    d = d.view(dt)
  return d.astype(np.float32).astype(np.float64)
