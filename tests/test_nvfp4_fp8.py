"""NVFP4 (two-level: FP32 tensor scale + E4M3 block scale, E2M1 elements) and per-tensor / per-channel FP8
current scaling, bit-exact against the float32-op-order oracle in spec_reference.py. Delayed scaling is
tested elsewhere."""
import os
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import mxcall as C  # noqa: E402
import spec_reference as R  # noqa: E402

import mx_jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

BF16 = ml_dtypes.bfloat16
F32 = np.float32


def _sample(shape, seed, spread=10):
  """Gaussian values with a random power-of-two magnitude per row (finite), plus some exact zeros."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread, shape[:-1] + (1,)))
  x[rng.random(shape) < 0.02] = 0.0
  return x.astype(np.float32)


def _nv_zero_blocks_mask(r, axis, n):
  """Elementwise mask of the NVFP4 blocks whose E4M3 decode scale is 0."""
  z = (r["block_scale"].astype(np.float32) == 0)
  zm = np.repeat(np.moveaxis(z, axis, -1), 16, axis=-1)[..., :n]
  return np.moveaxis(zm, -1, axis)


def _check_nvfp4(x, axis=-1, jit=True, what="nvfp4"):
  x = np.asarray(x)
  r = R.ref_nvfp4(x, axis=axis)
  if jit:
    q = C.quant(x, "nvfp4", axis=axis)
    f = C.fake(x, "nvfp4", axis=axis)
    d = C.deq(q)
  else:
    q = mx_jax.quantize(jnp.asarray(x), "nvfp4", axis=axis)
    f = np.asarray(mx_jax.fake_quantize(jnp.asarray(x), "nvfp4", axis=axis))
    d = np.asarray(mx_jax.dequantize(q))
  ax = axis % x.ndim
  assert q.fmt == "nvfp4" and q.block_size == 16 and q.axis == ax and tuple(q.shape) == x.shape
  assert q.scales.dtype == ml_dtypes.float8_e4m3fn
  assert q.tensor_scale is not None and np.asarray(q.tensor_scale).dtype == np.float32
  # tensor decode scale = float32(1 / S_enc), bit-exact
  R.assert_same(np.asarray(q.tensor_scale).reshape(()), r["tensor_scale"], what + " tensor_scale")
  R.assert_same(np.asarray(q.scales).astype(np.float32), r["block_scale"].astype(np.float32),
                what + " block scales (E4M3)")
  # Zero-scale blocks are compared without the sign of zero here; test_nvfp4_zero_scale_block_keeps_signs
  # pins that separately.
  zmask = _nv_zero_blocks_mask(r, ax, x.shape[ax])
  n = x.shape[ax]
  codes = np.take(R.codes_to_values(q.data, "nvfp4"), np.arange(n), axis=ax)
  nanb = np.isnan(r["elems"])
  for got, exp, name in ((np.where(nanb, np.nan, codes), r["elems"], "codes"), (d, r["deq"], "dequantize"),
                         (f, R.cast_out(r["deq"].astype(np.float64), x.dtype), "fake_quantize")):
    assert got.shape == exp.shape
    got = np.asarray(got)
    R.assert_same(np.where(zmask, np.abs(got), got), np.where(zmask, np.abs(exp), exp), f"{what} {name}",
                  inputs=x, ftz_ok=True)
  assert f.dtype == x.dtype
  return r


# ---------------------------------------------------------------------------------------------------- NVFP4
@pytest.mark.parametrize("shape,axis", [((64, 80), -1), ((64, 80), 0), ((3, 37, 5), 1), ((1000,), 0),
                                        ((16,), 0), ((7, 33), -1)])
def test_nvfp4_random_vs_oracle(shape, axis):
  x = _sample(shape, seed=sum(shape) + axis)
  _check_nvfp4(x, axis)


@pytest.mark.parametrize("seed", range(3))
def test_nvfp4_wide_dynamic_range(seed):
  """Blocks far below the tensor amax: E4M3 block scales go subnormal and to 0 (zero blocks)."""
  x = _sample((128, 64), seed=100 + seed, spread=40)
  r = _check_nvfp4(x, -1)
  bs = r["block_scale"].astype(np.float32)
  assert (bs == 0).any() and ((bs > 0) & (bs < 2.0**-6)).any() and (bs == 448).any()


def test_nvfp4_all_bf16_values():
  """Every finite bf16 value in [2^-24, 2^24) (both signs), in blocks of 16, as bf16 input."""
  v = np.arange(65536, dtype=np.uint16).view(BF16)
  a = np.abs(v.astype(np.float32))
  v = v[np.isfinite(a) & (a >= 2.0**-24) & (a < 2.0**24)]
  v = v[: (len(v) // 16) * 16].reshape(-1, 16)
  _check_nvfp4(v, -1, what="nvfp4 bf16 sweep")
  # a second arrangement: each value next to a fixed block amax of 6 (so the E4M3 scale is exactly known)
  w = np.stack([v.reshape(-1), np.full(v.size, 6.0, np.float32).astype(BF16)], axis=-1)
  w = np.concatenate([w, np.zeros((w.shape[0], 14), BF16)], axis=-1)
  w = np.where(np.abs(w.astype(np.float32)) > 6, np.zeros_like(w), w)  # keep amax = 6 everywhere
  _check_nvfp4(w, -1, what="nvfp4 bf16 fixed-scale")


def test_nvfp4_hand_example():
  """[6, 3, 1.5, -0.25 | 0.5, ...]: A = 6, S_enc = 448, block scales 448 and 448/12 -> E4M3."""
  x = np.zeros((2, 16), np.float32)
  x[0, :4] = [6, 3, 1.5, -0.25]
  x[1, :2] = [0.5, 0.3]
  q = C.quant(x, "nvfp4")
  assert np.asarray(q.tensor_scale) == F32(1) / F32(448)
  bs = np.asarray(q.scales).astype(np.float32).ravel()
  assert bs[0] == 448.0
  assert bs[1] == F32(F32(0.5) / F32(6) * F32(448)).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)  # 36
  np.testing.assert_array_equal(R.codes_to_values(q.data, "nvfp4")[0, :4], [6, 3, 1.5, -0.0])


def test_nvfp4_zero_tensor():
  x = np.zeros((4, 32), np.float32)
  x[1] = -0.0
  q = C.quant(x, "nvfp4")
  assert np.asarray(q.tensor_scale) == 1.0  # S_enc = 1 when A == 0
  f = C.fake(x, "nvfp4")
  assert (f == 0).all() and not np.isnan(f).any()


def test_nvfp4_zero_scale_block_keeps_signs():
  """A block whose E4M3 decode scale rounds to 0 encodes zeros; like every other zero result (and like an
  MX all-zero block) the element keeps the sign of its input."""
  x = np.zeros((2, 16), np.float32)
  x[0, 0] = 1000.0
  x[1, :4] = [1e-6, -1e-6, -2e-7, 3e-7]
  r = R.ref_nvfp4(x)
  assert r["block_scale"].astype(np.float32)[1, 0] == 0
  f = C.fake(x, "nvfp4")
  R.assert_same(f, r["deq"], "zero-scale block values (signed zeros)", inputs=x)
  R.assert_same(R.codes_to_values(C.quant(x, "nvfp4").data, "nvfp4"), r["elems"], "zero-scale codes")


def test_nvfp4_nan_inf_blocks():
  """A NaN/Inf block decodes to NaN; finite blocks stay finite."""
  x = _sample((4, 32), 5)
  x[0, 3] = np.nan
  x[2, 20] = -np.inf
  f = C.fake(x, "nvfp4")
  blk_nan = np.repeat(np.isnan(R.ref_nvfp4(x)["deq"]).reshape(4, 2, 16).any(-1), 16, axis=1)
  np.testing.assert_array_equal(np.isnan(f), blk_nan)
  assert blk_nan[0, :16].all() and blk_nan[2, 16:].all() and blk_nan.sum() == 32


def test_nvfp4_nan_does_not_poison_the_tensor_scale():
  """Documented choice: the global amax A is max|x| over the finite elements; a NaN block decodes to NaN
  and every other block keeps the scale it would have without the NaN."""
  x = _sample((4, 32), 6)
  clean = R.ref_nvfp4(x)
  x[0, 3] = np.nan
  r = R.ref_nvfp4(x)
  assert r["s_enc"] == clean["s_enc"] or np.max(np.abs(np.delete(x.ravel(), 3))) != np.max(np.abs(x[np.isfinite(x)]))
  q = C.quant(x, "nvfp4")
  R.assert_same(np.asarray(q.tensor_scale).reshape(()), r["tensor_scale"], "tensor_scale with a NaN")
  R.assert_same(C.fake(x, "nvfp4"), r["deq"], "values with a NaN elsewhere", inputs=x, ftz_ok=True)


def test_nvfp4_eager_matches_jit():
  x = _sample((8, 48), 9)
  _check_nvfp4(x, -1, jit=False, what="nvfp4 eager")


def test_nvfp4_oracle_perturbation():
  """The oracle's float32 op order matters: e.g. an RNE-vs-truncation of the block scale or computing the
  decode in float64 gives different bits on the random sample."""
  x = _sample((64, 80), 1)
  r = R.ref_nvfp4(x)
  d64 = r["elems"] * r["block_scale"].astype(np.float64).repeat(16, axis=-1)[:, :80] * (1 / float(r["s_enc"]))
  assert R.mismatch_mask(d64.astype(np.float32), r["deq"]).any()


# ---------------------------------------------------------------------------------------------------- FP8
FP8_CASES = [
    dict(),
    dict(margin=1),
    dict(margin=3),
    dict(power_of_two=True),
    dict(power_of_two=True, margin=2),
    dict(saturate=False),
    dict(granularity="channel", axis=0),
    dict(granularity="channel", axis=1),
    dict(granularity="channel", axis=-1, power_of_two=True),
]


def _fp8_call(x, fmt, jit=True, **kw):
  if jit:
    q = C.quant(x, fmt, **kw)
    return q, C.fake(x, fmt, **kw), C.deq(q)
  q = mx_jax.quantize(jnp.asarray(x), fmt, **kw)
  return q, np.asarray(mx_jax.fake_quantize(jnp.asarray(x), fmt, **kw)), np.asarray(mx_jax.dequantize(q))


def _check_fp8(x, fmt, jit=True, what=None, **kw):
  x = np.asarray(x)
  what = what or f"{fmt} {kw}"
  r = R.ref_fp8_tensor(x, fmt, **kw)
  q, f, d = _fp8_call(x, fmt, jit=jit, **kw)
  assert q.fmt == fmt and tuple(q.shape) == x.shape
  assert q.data.dtype == np.dtype(R.ELEM_DTYPE[R.elem_name(fmt)])
  sc = np.asarray(q.scales)
  assert sc.dtype == np.float32
  exp_sc = r["inv_scale"]
  if kw.get("granularity", "tensor") == "tensor":
    sc, exp_sc = sc.reshape(()), exp_sc.reshape(())
  R.assert_same(sc, exp_sc, what + " decode scale (1/scale)")
  R.assert_same(R.codes_to_values(q.data, fmt), r["elems"], what + " codes", inputs=x)
  R.assert_same(d, r["deq"], what + " dequantize", inputs=x, ftz_ok=True)
  R.assert_same(f, R.cast_out(r["deq"].astype(np.float64), x.dtype), what + " fake_quantize", inputs=x,
                ftz_ok=True)
  assert f.dtype == x.dtype
  return r


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("kw", FP8_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_fp8_current_scaling_vs_oracle(fmt, kw):
  x = _sample((64, 96), seed=len(kw) * 7 + (fmt == "fp8_e5m2"), spread=12)
  _check_fp8(x, fmt, **kw)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_all_bf16_values(fmt):
  """Every finite bf16 value through per-tensor FP8 with an explicit scale of 1 and 2^-3 (grid + overflow)."""
  v = np.arange(65536, dtype=np.uint16).view(BF16)
  v = v[np.isfinite(v.astype(np.float32))].reshape(-1, 2)
  for s in (1.0, 0.125):
    for sat in (True, False):
      _check_fp8(v, fmt, scale=jnp.float32(s), saturate=sat, what=f"{fmt} bf16 sweep scale={s} saturate={sat}")


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_saturation_and_overflow(fmt):
  mx = R.elem_spec(fmt)["max"]
  x = np.array([[mx * 1.1, -mx * 1.04, mx, 1.0, 1e30, -1e30]], np.float32)
  sat = C.fake(x, fmt, scale=jnp.float32(1.0))
  np.testing.assert_array_equal(sat, [[mx, -mx, mx, 1, mx, -mx]])
  nos = C.fake(x, fmt, scale=jnp.float32(1.0), saturate=False)
  if fmt == "fp8_e4m3":  # no Inf in E4M3: 492.8 and 465.9 round past 464 to 480 -> NaN
    assert np.isnan(nos[0, [0, 1, 4, 5]]).all() and nos[0, 2] == mx and nos[0, 3] == 1
  else:  # 63078 rounds past 61440 -> Inf; 59638 rounds to 57344
    np.testing.assert_array_equal(nos[0], [np.inf, -mx, mx, 1, np.inf, -np.inf])
  R.assert_same(nos, R.ref_fp8_tensor(x, fmt, saturate=False, scale=1.0)["deq"], "non-saturating")


def test_fp8_zero_tensor_scale_is_one():
  """Pitfall: max_elem / 0 must not produce Inf/NaN: current scaling uses scale 1 for a zero amax."""
  for fmt in ("fp8_e4m3", "fp8_e5m2"):
    x = np.zeros((4, 8), np.float32)
    x[1] = -0.0
    q = C.quant(x, fmt)
    assert np.asarray(q.scales) == 1.0
    f = C.fake(x, fmt)
    R.assert_same(f, x, "zero tensor")
    qc = C.quant(x, fmt, granularity="channel", axis=0)
    np.testing.assert_array_equal(np.asarray(qc.scales).ravel(), np.ones(8, np.float32))


def test_fp8_channel_with_a_zero_channel():
  x = _sample((16, 8), 4)
  x[:, 3] = 0
  r = _check_fp8(x, "fp8_e4m3", granularity="channel", axis=0)
  assert r["scale"].ravel()[3] == 1.0


def test_fp8_explicit_scale_overrides_amax():
  x = _sample((16, 16), 8)
  s = F32(3.0)  # not a power of two: exercises the float32 product and 1/scale
  r = _check_fp8(x, "fp8_e4m3", scale=jnp.float32(s), what="explicit scale 3")
  assert r["inv_scale"].ravel()[0] == F32(1) / F32(3)
  # and it really differs from current scaling
  assert R.mismatch_mask(r["deq"], R.ref_fp8_tensor(x, "fp8_e4m3")["deq"]).any()


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_power_of_two_scale_is_power_of_two(fmt):
  x = _sample((8, 32), 12)
  q = C.quant(x, fmt, power_of_two=True)
  inv = float(np.asarray(q.scales))
  m, _ = np.frexp(inv)
  assert m == 0.5
  # round DOWN the encode scale: max/amax/scale in [1, 2)
  amax = np.abs(x).max()
  ratio = R.elem_spec(fmt)["max"] / amax * inv
  assert 1 <= ratio < 2


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_bf16_input_and_eager(fmt):
  x = _sample((32, 32), 13).astype(BF16)
  _check_fp8(x, fmt)
  _check_fp8(x, fmt, jit=False, what=f"{fmt} eager bf16")


def test_fp8_nonfinite_elements_do_not_poison_the_scale():
  """Documented choice: amax is max|x| over the finite elements; +-Inf saturates to +-max
  (saturate=True) and NaN stays NaN, while the finite elements keep their scale."""
  x = _sample((4, 8), 14) * 100
  finite_amax = np.max(np.abs(x))
  x[0, 5] = np.inf
  x[2, 1] = np.nan
  for fmt in ("fp8_e4m3", "fp8_e5m2"):
    r = R.ref_fp8_tensor(x, fmt)
    assert r["scale"].ravel()[0] == np.float32(np.float32(R.ELEM[R.elem_name(fmt)]["max"]) / np.float32(finite_amax))
    q = C.quant(x, fmt)
    R.assert_same(np.asarray(q.scales).reshape(()), r["inv_scale"].reshape(()), f"{fmt} scale with Inf/NaN")
    R.assert_same(C.fake(x, fmt), r["deq"], f"{fmt} values with Inf/NaN", inputs=x)


def test_fp8_inf_nan_elements_with_explicit_scale():
  x = np.array([[np.inf, -np.inf, np.nan, 1.0]], np.float32)
  for fmt in ("fp8_e4m3", "fp8_e5m2"):
    mx = R.elem_spec(fmt)["max"]
    f = C.fake(x, fmt, scale=jnp.float32(1.0))
    np.testing.assert_array_equal(f[0, [0, 1, 3]], [mx, -mx, 1])
    assert np.isnan(f[0, 2])
    g = C.fake(x, fmt, scale=jnp.float32(1.0), saturate=False)
    R.assert_same(g, R.ref_fp8_tensor(x, fmt, saturate=False, scale=1.0)["deq"], f"{fmt} non-saturating specials")
