"""The quantized dot_general against an explicit reference: each GEMM's operands quantized along that
GEMM's own contraction axis (mx_jax.quantize, itself checked against the spec), product in float64."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mx_jax
from mx_jax.dot import quantized_dot_general

PRESETS = ["fp32", "bf16", "fp8_current", "mxfp8", "mxfp8_e5m2grad", "mxfp6", "mxfp4_weights", "nvfp4",
           "mxfp8@scaled_dot", "mxfp8_e5m2grad@scaled_dot"]


def _recipe(name):
  """A preset, or "preset@impl" (the same quantization through another GEMM engine)."""
  base, _, impl = name.partition("@")
  rec = mx_jax.recipe(base)
  return dataclasses.replace(rec, impl=impl) if impl else rec


def fq(x, spec, axis):
  """float64 dequantized copy of x quantized along ``axis`` per ``spec`` (None: bf16/fp32 passthrough)."""
  if spec is None:
    return np.asarray(x, np.float64)
  key = None
  if spec.rounding == "stochastic":
    pytest.skip("stochastic operand: compared statistically in test_stochastic_grad_unbiased")
  return np.asarray(mx_jax.fake_quantize(jnp.asarray(x, jnp.float32), spec.fmt, axis=axis, key=key,
                                         scale_mode=spec.scale_mode, rounding=spec.rounding), np.float64)


def _data(b=24, k=70, n=40, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(ks[0], (b, k)) * 3
  w = jax.random.normal(ks[1], (k, n)) * 0.05
  c = jax.random.normal(ks[2], (b, n)) * 1e-2
  return x, w, c


@pytest.mark.parametrize("name", PRESETS)
def test_dense_forward_and_both_gradients(name):
  rec = _recipe(name)
  x, w, c = _data()
  dn = (((1,), (0,)), ((), ()))
  f = lambda x, w: quantized_dot_general(x, w, dn, rec)
  y, vjp = jax.vjp(f, x, w)
  dx, dw = vjp(c)
  if rec.is_noop:
    cast = (lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)) if name == "bf16" else \
        (lambda a: np.asarray(a, np.float64))
    ref_y, ref_dx, ref_dw = cast(x) @ cast(w), cast(c) @ cast(w).T, cast(x).T @ cast(c)
  else:
    ref_y = fq(x, rec.x, 1) @ fq(w, rec.w, 0)
    ref_dx = fq(c, rec.g_dgrad, 1) @ fq(w, rec.w_dgrad, 1).T
    ref_dw = fq(x, rec.x_wgrad, 0).T @ fq(c, rec.g_wgrad, 0)
    # The reference must be able to fail: quantizing the weight along the wrong axis differs.
    wrong = fq(x, rec.x, 1) @ fq(w.T, rec.w, 0).T if rec.w.fmt != "fp8_e4m3" else None
    if wrong is not None:
      assert np.max(np.abs(wrong - ref_y)) > 1e-4
  # bf16: JAX's own transpose rule returns bf16 cotangents for bf16 operands (one bf16 rounding).
  tol = 2 ** -8 if name == "bf16" else 2e-6
  for got, ref in ((y, ref_y), (dx, ref_dx), (dw, ref_dw)):
    got = np.asarray(got, np.float64)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.max(np.abs(ref)) + 1e-30)


def test_stochastic_grad_unbiased():
  """nvfp4's gradient operands use stochastic rounding: averaged over perturbed inputs, dW converges."""
  rec = mx_jax.recipe("nvfp4")
  x, w, c = _data(b=32, k=32, n=16)
  dn = (((1,), (0,)), ((), ()))
  wgrad = jax.jit(lambda ci: jax.vjp(lambda w: quantized_dot_general(x, w, dn, rec), w)[1](ci)[0])
  # A new tensor each time -> a new content-derived key.
  dws = [wgrad(c * (1 + 1e-6 * i)) for i in range(64)]
  mean = np.mean(np.stack(dws), 0)
  exact = np.asarray(fq(x, rec.x_wgrad, 0)).T @ np.asarray(c, np.float64)
  one = np.asarray(dws[0])
  assert np.linalg.norm(mean - exact) < 0.5 * np.linalg.norm(one - exact)


@pytest.mark.parametrize("impl", ["xla", "scaled_dot"])
def test_batch_dims_and_multi_contraction(impl):
  rec = _recipe("mxfp8@" + impl)
  ks = jax.random.split(jax.random.key(3), 3)
  a = jax.random.normal(ks[0], (3, 5, 4, 16))   # batch 3, free 5, contract (4, 16) -> 64
  b = jax.random.normal(ks[1], (3, 16, 4, 7))   # batch 3, contract (16, 4), free 7
  dn = (((2, 3), (2, 1)), ((0,), (0,)))
  y = quantized_dot_general(a, b, dn, rec)
  assert y.shape == (3, 5, 7)
  # Reference: flatten contraction in a's order (4, 16) for both operands, then MX along it.
  a2 = np.asarray(a).reshape(3, 5, 64)
  b2 = np.transpose(np.asarray(b), (0, 2, 1, 3)).reshape(3, 64, 7)
  ref = np.einsum("bik,bkj->bij", fq(a2, rec.x, 2), fq(b2, rec.w, 1))
  np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
  g = jax.grad(lambda a, b: jnp.sum(quantized_dot_general(a, b, dn, rec) ** 2), (0, 1))(a, b)
  assert g[0].shape == a.shape and g[1].shape == b.shape and all(bool(jnp.all(jnp.isfinite(t))) for t in g)


def test_einsum_matches_reference():
  rec = mx_jax.recipe("mxfp6")
  ks = jax.random.split(jax.random.key(4), 2)
  q = jax.random.normal(ks[0], (2, 6, 3, 32))
  k = jax.random.normal(ks[1], (2, 5, 3, 32))
  y = mx_jax.einsum("bqhd,bkhd->bhqk", q, k, mx_jax.dot_general(rec))
  ref = np.einsum("bqhd,bkhd->bhqk", fq(q, rec.x, 3), fq(k, rec.w, 3))
  np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
  y2 = jnp.einsum("bqhd,bkhd->bhqk", q, k, _dot_general=mx_jax.dot_general(rec))
  np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))


def test_delayed_scaling_state_is_the_gradient():
  rec = mx_jax.recipe("fp8_delayed")
  x, w, c = _data()
  st = mx_jax.init_state(rec)
  dn = (((1,), (0,)), ((), ()))
  f = lambda x, w, s: jnp.vdot(quantized_dot_general(x, w, dn, rec, s), c)
  _, _, new = jax.grad(f, (0, 1, 2))(x, w, st)
  assert float(new["x"]["amax_history"][0]) == float(jnp.max(jnp.abs(x)))
  assert float(new["g"]["amax_history"][0]) == float(jnp.max(jnp.abs(c)))
  np.testing.assert_allclose(float(new["w"]["scale"]), 448.0 / float(jnp.max(jnp.abs(w))), rtol=1e-6)
  # Step 1 used the initial scale 1 (delayed): the forward equals quantizing x and w with scale 1.
  y = quantized_dot_general(x, w, dn, rec, st)
  ref = fq(x, mx_jax.OperandSpec("fp8_e4m3"), 1) if False else None
  xq = np.asarray(mx_jax.fake_quantize(x, "fp8_e4m3", scale=jnp.float32(1.0)), np.float64)
  wq = np.asarray(mx_jax.fake_quantize(w, "fp8_e4m3", scale=jnp.float32(1.0)), np.float64)
  np.testing.assert_allclose(np.asarray(y), xq @ wq, rtol=0, atol=1e-6 * np.abs(xq @ wq).max())
  del ref


def test_bad_inputs_name_the_argument():
  x, w, _ = _data()
  with pytest.raises(ValueError, match="recipe name"):
    mx_jax.dot_general("mxfp9")
  with pytest.raises(ValueError, match="contracting dims"):
    quantized_dot_general(x, w, (((0,), (0,)), ((), ())), "mxfp8")
  with pytest.raises(TypeError, match="lhs"):
    quantized_dot_general(jnp.ones((2, 3), jnp.int32), w[:3], (((1,), (0,)), ((), ())), "mxfp8")
  with pytest.raises(ValueError, match="delayed"):
    quantized_dot_general(x, w, (((1,), (0,)), ((), ())), "fp8_delayed")
  with pytest.raises(ValueError, match="state"):
    mx_jax.dot_general("fp8_delayed")
  with pytest.raises(ValueError, match="scaling"):
    mx_jax.OperandSpec("mxfp8_e4m3", scaling="delayed")


def test_jit_and_vmap_agree():
  dg = mx_jax.dot_general("mxfp8")
  x, w, _ = _data()
  f = lambda x: dg(x, w, (((1,), (0,)), ((), ())))
  # Same quantized operands; only the f32 accumulation order of the GEMM may differ between compilations.
  np.testing.assert_allclose(np.asarray(jax.jit(f)(x)), np.asarray(f(x)), rtol=1e-6, atol=1e-6)
  xs = jnp.stack([x, 2 * x])
  np.testing.assert_allclose(np.asarray(jax.vmap(f)(xs)[1]), np.asarray(f(2 * x)), rtol=1e-6, atol=1e-6)


def test_scaled_dot_impl_runs_lax_scaled_dot(monkeypatch):
  """impl="scaled_dot" really lowers to lax.scaled_dot (forced on CPU for the 2D case XLA:CPU can run), with
  the same forward and gradients as the emulated path."""
  from mx_jax import dot
  monkeypatch.setattr(dot, "_lax_scaled_dot", lambda: True)
  x, w, c = _data(b=32, k=64, n=48)
  dn = (((1,), (0,)), ((), ()))
  outs = {}
  for impl in ("xla", "scaled_dot"):
    rec = _recipe("mxfp8@" + impl)
    f = lambda x, w, rec=rec: quantized_dot_general(x, w, dn, rec)
    y, vjp = jax.vjp(f, x, w)
    outs[impl] = (y, *vjp(c))
    jaxpr = str(jax.make_jaxpr(lambda x, w, c, f=f: jax.vjp(f, x, w)[1](c))(x, w, c))
    assert ("scaled_dot" in jaxpr) == (impl == "scaled_dot")
  for a, b in zip(outs["xla"], outs["scaled_dot"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(a))))
