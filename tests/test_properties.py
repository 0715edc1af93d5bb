"""Property tests (hypothesis, derandomized so they cannot flake) of MX fake quantization, plus a statistical
test of stochastic rounding with a fixed key and a tolerance many standard errors wide."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import mxcall as C  # noqa: E402
import spec_reference as R  # noqa: E402

jax.config.update("jax_enable_x64", False)

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPE = (4, 64)  # fixed shape for the value properties: one compile per (format, options)
CONFIG = st.tuples(st.sampled_from(R.MX_FORMATS), st.sampled_from(R.SCALE_MODES), st.sampled_from(R.ROUNDINGS))
TINY = float(np.finfo(np.float32).tiny)


@st.composite
def mx_values(draw, shape=SHAPE, max_exp=120, specials=True):
  """float32 arrays: per-row magnitude 2^k (k from subnormal to huge), mantissas with few or many bits,
  exact zeros of both signs, and hypothesis' own float32 corner values planted at random positions."""
  n = int(np.prod(shape))
  seed = draw(st.integers(0, 2**32 - 1))
  rng = np.random.default_rng(seed)
  rows = int(np.prod(shape[:-1]))
  k = rng.integers(-150, max_exp, (rows, 1))
  spread = rng.integers(0, 30, (rows, 1))
  m = rng.uniform(-2, 2, (rows, shape[-1]))
  bits = rng.integers(1, 24, (rows, shape[-1]))
  m = np.round(np.ldexp(m, bits)) / np.exp2(bits)  # short mantissas -> rounding ties
  e = k - rng.integers(0, 1, (rows, shape[-1])) * 0 - (rng.random((rows, shape[-1])) * spread).astype(int)
  x = np.ldexp(m, e)
  x[rng.random(x.shape) < 0.05] = 0.0
  x[rng.random(x.shape) < 0.02] = -0.0
  x = x.reshape(shape).astype(np.float32)
  if specials:
    lim = float(np.finfo(np.float32).max) if max_exp >= 128 else 2.0**max_exp
    planted = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False,
                                      min_value=-lim, max_value=lim), max_size=8))
    pos = rng.choice(n, len(planted), replace=False)
    x.reshape(-1)[pos] = np.array(planted, np.float32)
  return x


def _half_step_bound(x, f, byte, fmt, block_size=32, axis=-1):
  """For unsaturated elements: |f - x| <= half a grid step (in x's binade, at the block scale)."""
  s = R.elem_spec(fmt)
  e = np.repeat(np.moveaxis(byte.astype(np.int64) - 127, axis, -1), block_size, axis=-1)[..., : x.shape[axis]]
  e = np.moveaxis(e, -1, axis)
  x64 = x.astype(np.float64)
  v = np.ldexp(x64, -e)  # element units
  step = np.ldexp(R.grid_step(v, fmt), e)
  unsat = np.abs(v) <= s["max"]
  # elements whose result could be an fp32 subnormal are left to the exhaustive tests (XLA:CPU flushes
  # those to zero); everything else is checked.
  # Elements of magnitude >= 2^127 are skipped too: ceil-family scales can round them up to 2^128, which is
  # +-Inf in float32 (the oracle agrees; test_formats_exhaustive checks those bit for bit).
  check = unsat & (np.abs(x64) >= 4 * TINY) & (np.abs(x64) < 2.0**127)
  err = np.abs(f.astype(np.float64) - x64)
  return check, err, step


@SETTINGS
@given(cfg=CONFIG, x=mx_values(max_exp=118))
def test_idempotent(cfg, x):
  """fake(fake(x)) == fake(x): the quantized values are on the grid of their own (re-derived) scale.
  (Inputs stay below 2^118 so no ceil-family scale overflows to Inf.)"""
  fmt, mode, rounding = cfg
  kw = dict(scale_mode=mode, rounding=rounding)
  f1 = C.fake(x, fmt, **kw)
  f2 = C.fake(f1, fmt, **kw)
  R.assert_same(f2, f1, f"idempotence {cfg}", inputs=x)
  # the oracle has the property as well
  r1 = R.ref_mx_fake(x, fmt, -1, 32, mode, rounding)
  R.assert_same(R.ref_mx_fake(r1, fmt, -1, 32, mode, rounding), r1, "oracle idempotence")


@SETTINGS
@given(cfg=CONFIG, x=mx_values(max_exp=128))
def test_odd_symmetric(cfg, x):
  """fake(-x) == -fake(x), signed zeros included (except MXINT8, which has no -0)."""
  fmt, mode, rounding = cfg
  kw = dict(scale_mode=mode, rounding=rounding)
  R.assert_same(C.fake(-x, fmt, **kw), -C.fake(x, fmt, **kw), f"symmetry {cfg}", inputs=x,
                signed_zeros=fmt != "mxint8")


@SETTINGS
@given(cfg=CONFIG, x=mx_values(max_exp=128))
def test_error_at_most_half_a_step_and_never_nan(cfg, x):
  fmt, mode, rounding = cfg
  kw = dict(scale_mode=mode, rounding=rounding)
  f = C.fake(x, fmt, **kw)
  assert not np.isnan(f).any(), "NaN from finite input"
  byte = R.e8m0_bytes(C.quant(x, fmt, **kw).scales)
  assert (byte < 255).all()
  check, err, step = _half_step_bound(x, f, byte, fmt)
  bad = check & ~(err <= step / 2)
  assert not bad.any(), (x[bad][:5], f[bad][:5], step[bad][:5])
  # saturated elements land exactly on +-max * 2^e
  s = R.elem_spec(fmt)
  e = np.repeat(byte.astype(np.int64) - 127, 32, axis=-1)
  sat = (np.abs(np.ldexp(x.astype(np.float64), -e)) > s["max"]) & (np.abs(x) < 2.0**127)
  np.testing.assert_array_equal(np.abs(f[sat]).astype(np.float64), np.ldexp(s["max"], e[sat]).astype(np.float32))


# ---------------------------------------------------------------------------------------------------- shapes
SHAPE_CASES = [((37,), 0, 32), ((5, 33), 1, 32), ((5, 33), 0, 4), ((3, 7, 65), 2, 64), ((3, 7, 65), 1, 2),
               ((3, 7, 65), 0, 16), ((2, 3, 4, 9), 3, 8), ((1,), 0, 32), ((2, 1, 129), -1, 128),
               ((300,), -1, 256)]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: f"{c[0]}-ax{c[1]}-bs{c[2]}")
def test_shape_axis_block_size_vs_oracle(case):
  shape, axis, bs = case
  i = SHAPE_CASES.index(case)
  fmt = R.MX_FORMATS[i % 6]
  mode = R.SCALE_MODES[i % 4]
  rng = np.random.default_rng(i)
  x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
  f = C.fake(x, fmt, axis=axis, block_size=bs, scale_mode=mode)
  assert f.shape == x.shape and f.dtype == x.dtype
  R.assert_same(f, R.ref_mx_fake(x, fmt, axis, bs, mode), f"{fmt} {case}", inputs=x, ftz_ok=True)
  q = C.quant(x, fmt, axis=axis, block_size=bs, scale_mode=mode)
  ax = axis % x.ndim
  nb = -(-shape[ax] // bs)
  assert q.axis == ax and tuple(q.shape) == shape and q.block_size == bs
  assert q.scales.shape == shape[:ax] + (nb,) + shape[ax + 1:]
  R.assert_bytes(R.e8m0_bytes(q.scales), R.ref_mx_quantize(x, fmt, axis, bs, mode)[2], f"{case} bytes")
  # padding does not change results: quantize the explicitly zero-padded tensor
  pad = [(0, 0)] * x.ndim
  pad[ax] = (0, nb * bs - shape[ax])
  xp = np.pad(x, pad)
  fp = C.fake(xp, fmt, axis=axis, block_size=bs, scale_mode=mode)
  R.assert_same(np.take(fp, np.arange(shape[ax]), axis=ax), f, "padding invariance")


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), data=st.data())
def test_any_shape_any_axis(shape, data):
  axis = data.draw(st.integers(-len(shape), len(shape) - 1))
  fmt = data.draw(st.sampled_from(R.MX_FORMATS))
  x = np.random.default_rng(len(shape) * 1000 + sum(shape)).standard_normal(shape).astype(np.float32)
  f = C.fake(x, fmt, axis=axis, block_size=8)
  assert f.shape == tuple(shape)
  R.assert_same(f, R.ref_mx_fake(x, fmt, axis, 8), f"{fmt} shape {shape} axis {axis}", inputs=x)


# ---------------------------------------------------------------------------------------------------- stochastic
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8", "mxfp6_e3m2"])
def test_stochastic_rounding_unbiased_and_neighbours_only(fmt):
  """Each value v sits between grid neighbours lo < v < hi (at a known scale: the block amax is the element
  max, scale 2^0 under floor). Over N = 32768 draws the mean must be v within 6 standard errors (a fixed
  key, so the test is deterministic; a deterministic rounding misses by >= 1/8 step, i.e. >= 40 sigma)."""
  s = R.elem_spec(fmt)
  lo_grid = R.grid_values(fmt)
  lo_grid = lo_grid[(lo_grid > 0) & (lo_grid < s["max"])]
  picks = lo_grid[[1, len(lo_grid) // 3, len(lo_grid) - 2]]  # a low, middle and high grid point
  fracs = np.array([0.125, 0.25, 0.5, 0.75, 0.875])  # dyadic: v exact in float32
  vals = []
  for g in picks:
    step = float(R.grid_step(np.array([g]), fmt)[0])
    vals += [g + p * step for p in fracs]
  vals = np.array(vals)
  vals = np.concatenate([vals, -vals])
  assert (np.asarray(vals, np.float32).astype(np.float64) == vals).all()
  n = 32768
  per_block = 31
  reps = -(-n // per_block)
  x = np.zeros((len(vals), reps, 32), np.float32)
  x[:, :, 0] = s["max"]  # fixes the scale exponent at 0 (floor)
  x[:, :, 1:] = vals[:, None, None]
  f = C.fake(x.reshape(-1, 32), fmt, rounding="stochastic", key=jax.random.key(1234)).reshape(x.shape)
  q = C.quant(x.reshape(-1, 32), fmt, rounding="stochastic", key=jax.random.key(1234))
  assert (R.e8m0_bytes(q.scales) == 127).all()
  np.testing.assert_array_equal(f[:, :, 0], s["max"])
  samples = f[:, :, 1:].reshape(len(vals), -1).astype(np.float64)
  lo, hi = R.ref_elem_neighbours(vals, fmt)
  ok = (samples == lo[:, None]) | (samples == hi[:, None])
  assert ok.all(), f"non-neighbour outputs for {vals[~ok.all(1)]}"
  step = np.abs(hi - lo)
  p_hi = np.abs(vals - lo) / step
  mean = samples.mean(axis=1)
  se = step * np.sqrt(p_hi * (1 - p_hi) / samples.shape[1])
  z = np.abs(mean - vals) / se
  assert (z < 6).all(), f"biased: values {vals[z >= 6]}, means {mean[z >= 6]}, z {z[z >= 6]}"
  # both neighbours really occur, in the right proportions (within 0.02 absolute)
  frac_hi = (samples == hi[:, None]).mean(axis=1)
  np.testing.assert_allclose(frac_hi, p_hi, atol=0.02)


def test_stochastic_rounding_exact_values_unchanged_and_key_matters():
  x = np.zeros((4, 64), np.float32)
  x[:, :8] = [448, 1, 1.125, -2.5, 0.25, 3.5, -448, 0]  # all on the E4M3 grid at scale 1
  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(C.fake(x, "mxfp8_e4m3", rounding="stochastic", key=k1), x)
  y = np.full((4, 64), 1.0625, np.float32)
  y[:, 0] = 448
  a = C.fake(y, "mxfp8_e4m3", rounding="stochastic", key=k1)
  b = C.fake(y, "mxfp8_e4m3", rounding="stochastic", key=k2)
  assert (a != b).any()
  np.testing.assert_array_equal(a, C.fake(y, "mxfp8_e4m3", rounding="stochastic", key=k1))  # deterministic
  assert set(np.unique(a[:, 1:])) <= {1.0, 1.125}


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fmt=st.sampled_from(R.MX_FORMATS), x=mx_values(max_exp=118))
def test_stochastic_rounding_error_below_one_step(fmt, x):
  f = C.fake(x, fmt, rounding="stochastic", key=jax.random.key(7))
  assert not np.isnan(f).any()
  byte = R.e8m0_bytes(C.quant(x, fmt, rounding="stochastic", key=jax.random.key(7)).scales)
  R.assert_bytes(byte, R.ref_mx_quantize(x, fmt)[2], "stochastic rounding keeps the floor scale")
  check, err, step = _half_step_bound(x, f, byte, fmt)
  bad = check & ~(err < step)
  assert not bad.any(), (x[bad][:5], f[bad][:5])
