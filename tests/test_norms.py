"""mx_jax.norms: RMSNorm / MXNorm pure functions, MXNorm's constant and estimator, Flax modules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mx_jax
from mx_jax import norms


def bits_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def rand(shape, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape) * np.exp(rng.standard_normal(shape[:-1] + (1,))), dtype)


@pytest.mark.parametrize("p,k", [(1, 32), (2, 32), (2, 16), (1, 64)])
def test_mxnorm_constant_matches_integral(p, k):
  assert abs(norms._compute_c(p, k) - norms.MXNORM_C[(p, k)]) < 1e-9
  assert norms.mxnorm_constant(p, k) == norms.MXNORM_C[(p, k)]
  # closed form for k = 2, p = 1: E[max(|X1|, |X2|)] = 2 / sqrt(pi)
  assert abs(norms.MXNORM_C[(1, 2)] - np.sqrt(np.pi) / 2) < 1e-12


def test_estimator_is_unbiased_on_gaussian_rows():
  key = jax.random.key(3)
  x = jax.random.normal(key, (1024, 2048)) * 3.0
  amax = jnp.max(jnp.abs(x.reshape(1024, 64, 32)), axis=-1)
  ms_est = norms.MXNORM_C[(2, 32)] ** 2 * jnp.mean(amax ** 2)
  assert abs(float(ms_est) / 9.0 - 1) < 3e-3  # c_2^2 mean(A^2) is unbiased for sigma^2
  rms1 = norms.MXNORM_C[(1, 32)] * jnp.mean(amax)
  assert abs(float(rms1) / 3.0 - 1) < 3e-3  # c_1 mean(A) is unbiased for sigma
  for p in (1, 2):
    err = norms.mx_norm_estimator_error(p=p, rows=256, n=2048)
    assert abs(err["mean"]) < 1e-2 and 0 < err["std"] < 0.1 and err["rows"] == 256
  # the hook for real activations: any array, rows on the last axis
  err = norms.mx_norm_estimator_error(rand((4, 8, 256)), p=2)
  assert err["rows"] == 32 and np.isfinite(err["rmse"])
  est = norms.rms_estimate(x[:4], p=2)
  assert est.shape == (4,) and np.allclose(est, 3.0, rtol=0.1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rms_norm_matches_flax_linen(dtype):
  x = rand((4, 6, 96), dtype, seed=1)
  g = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, 96), jnp.float32)
  ref = nn.RMSNorm().apply({"params": {"scale": g}}, x)
  mod = norms.RMSNorm()
  params = mod.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == {"params": {"scale": (96,)}}
  y = mod.apply({"params": {"scale": g}}, x)
  assert y.dtype == ref.dtype  # flax's dtype rule (bf16 x, f32 scale -> f32)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32), rtol=2e-6, atol=1e-6)
  # the functional form, in x's dtype
  y2 = norms.rms_norm(x, g)
  assert y2.dtype == dtype
  np.testing.assert_allclose(np.asarray(y2, np.float32), np.asarray(ref.astype(dtype), np.float32),
                             rtol=1e-2 if dtype == jnp.bfloat16 else 2e-6, atol=1e-6)


def test_nnx_modules_drop_in():
  x = rand((3, 64), seed=4)
  ref = nnx.RMSNorm(64, rngs=nnx.Rngs(0))
  mine = norms.RMSNormNNX(64, rngs=nnx.Rngs(0))
  assert isinstance(mine.scale, nnx.Param) and mine.scale[...].shape == (64,)
  np.testing.assert_allclose(mine(x), ref(x), rtol=2e-6, atol=1e-6)
  mx = norms.MXNormNNX(64, p=1, rngs=nnx.Rngs(0))
  y = mx(x)
  assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()
  np.testing.assert_array_equal(y, norms.mx_norm(x, mx.scale[...], p=1))
  lin = norms.MXNorm(p=2)
  params = lin.init(jax.random.key(0), x)
  np.testing.assert_array_equal(lin.apply(params, x), norms.mx_norm(x, jnp.ones(64)))


def test_mx_norm_normalizes_gaussian_rows_and_its_gradient():
  x = rand((16, 512), seed=5)
  y = norms.mx_norm(x, None)
  rms_y = jnp.sqrt(jnp.mean(y * y, axis=-1))
  assert np.allclose(rms_y, 1.0, atol=0.12)
  g = jnp.linspace(0.5, 1.5, 512)
  w = rand((16, 512), seed=6)
  f = lambda x, g: jnp.sum(norms.mx_norm(x, g) * w)
  gx, gg = jax.grad(f, (0, 1))(x, g)
  gx_ref, gg_ref = jax.grad(lambda x, g: jnp.sum(norms._mx_norm_diff(x, g, 1e-6, 2, 32) * w), (0, 1))(x, g)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-6, atol=1e-6)
  # gg sums 16 rows of O(1) terms: FP32 summation order alone moves it by a few 1e-6 (XLA:CPU at -O0 vs -O2)
  np.testing.assert_allclose(gg, gg_ref, rtol=1e-6, atol=1e-5)
  # directional finite difference (float64-free: a large step on a smooth direction away from ties)
  d = rand((16, 512), seed=7) * 1e-3
  fd = (f(x + d, g) - f(x - d, g)) / 2
  np.testing.assert_allclose(float(jnp.sum(gx * d)), float(fd), rtol=2e-2)


def test_rms_norm_gradient_matches_autodiff_of_flax_formula():
  x = rand((8, 100), seed=8)
  g = jnp.linspace(0.5, 1.5, 100)
  w = rand((8, 100), seed=9)
  gx, gg = jax.grad(lambda x, g: jnp.sum(norms.rms_norm(x, g) * w), (0, 1))(x, g)
  flax_f = lambda x, g: jnp.sum(nn.RMSNorm().apply({"params": {"scale": g}}, x) * w)
  gx_ref, gg_ref = jax.grad(flax_f, (0, 1))(x, g)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gg, gg_ref, rtol=1e-4, atol=1e-5)


def test_deterministic_eager_jit_vmap():
  x = rand((6, 200), seed=10)
  g = jnp.linspace(0.5, 1.5, 200)
  # op by op, jitted (XLA fuses and would contract a*b+c into an FMA) and vmapped: the same bits
  for kind, p in (("rms", 2), ("mx", 1), ("mx", 2)):
    fn = lambda x: norms._xla_norm_f32(x, g, 1e-6, kind, p, 32)[0]
    ref = fn(x)
    assert bits_equal(ref, jax.jit(fn)(x))
    assert bits_equal(ref, jax.vmap(fn)(x[:, None])[:, 0])
  assert bits_equal(norms.rms_norm(x, g), jax.vmap(lambda r: norms.rms_norm(r, g))(x))
  # the fused XLA path is exactly quantize(norm in float32)
  q = norms.rms_norm_quantize(x, g, "mxfp8_e4m3", impl="xla")
  q2 = mx_jax.quantize(norms.rms_norm(x, g, out_dtype=jnp.float32), "mxfp8_e4m3")
  assert bits_equal(q.data.view(jnp.uint8), q2.data.view(jnp.uint8)) and bits_equal(q.scales, q2.scales)
  q3 = norms.mx_norm_quantize(x, g, "mxfp4_e2m1", p=1, impl="xla")
  q4 = mx_jax.quantize(norms.mx_norm(x, g, fmt="mxfp4_e2m1", p=1, out_dtype=jnp.float32), "mxfp4_e2m1")
  assert bits_equal(mx_jax.dequantize(q3), mx_jax.dequantize(q4))


def test_validation():
  x = rand((2, 64))
  with pytest.raises(ValueError, match="shape"):
    norms.rms_norm(x, jnp.ones(63))
  with pytest.raises(ValueError, match="p must be"):
    norms.mx_norm(x, None, p=3)
  with pytest.raises(ValueError, match="block format"):
    norms.mx_norm(x, None, fmt="fp8_e4m3")
  with pytest.raises(ValueError, match="MX format"):
    norms.rms_norm_quantize(x, None, "fp8_e4m3")
  with pytest.raises(TypeError):
    norms.rms_norm(jnp.arange(4), None)
  with pytest.raises(ValueError, match="impl"):
    norms.rms_norm(x, None, impl="triton")
  with pytest.raises(NotImplementedError):
    norms.RMSNorm(reduction_axes=0).init(jax.random.key(0), x)
