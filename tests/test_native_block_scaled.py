"""Native block-scaled GEMM dispatch (Blackwell, jax.nn.scaled_matmul): impl="native" forced on CPU (JAX's own
decomposition), impl="auto" routed there when the device is Blackwell (faked), refusals named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mx_jax
from mx_jax import matmul as M


def _ref(qa, qb, eq):
  return np.einsum(eq, np.asarray(mx_jax.dequantize(qa), np.float64), np.asarray(mx_jax.dequantize(qb), np.float64))


def test_native_matmul_and_dot_general_match_reference():
  ka, kb = jax.random.split(jax.random.key(0))
  qa = mx_jax.quantize(jax.random.normal(ka, (3, 40, 96)), "mxfp8_e4m3", axis=2)
  qb = mx_jax.quantize(jax.random.normal(kb, (3, 24, 96)), "mxfp8_e5m2", axis=2)
  got = M.mx_dot_general(qa, qb, (((2,), (2,)), ((0,), (0,))), out_dtype=jnp.float32, impl="native")
  np.testing.assert_allclose(np.asarray(got, np.float64), _ref(qa, qb, "bmk,bnk->bmn"), rtol=1e-5, atol=1e-5)
  a2 = mx_jax.quantize(jax.random.normal(ka, (40, 64)), "mxfp8_e4m3", axis=1)
  b2 = mx_jax.quantize(jax.random.normal(kb, (24, 64)), "mxfp8_e4m3", axis=1)
  got2 = M.mx_matmul(a2, b2, out_dtype=jnp.float32, impl="native")
  np.testing.assert_allclose(np.asarray(got2, np.float64), _ref(a2, b2, "mk,nk->mn"), rtol=1e-5, atol=1e-5)


def test_auto_takes_native_on_blackwell(monkeypatch):
  calls = []
  real = M._native_bmk
  monkeypatch.setattr(M, "on_blackwell", lambda: True)
  monkeypatch.setattr(M, "_native_bmk", lambda a, b, o: calls.append(1) or real(a, b, o))
  q = mx_jax.quantize(jax.random.normal(jax.random.key(1), (16, 64)), "mxfp8_e4m3", axis=1)
  M.mx_matmul(q, q, out_dtype=jnp.float32, impl="auto")
  assert calls == [1]
  q4 = mx_jax.quantize(jax.random.normal(jax.random.key(1), (16, 64)), "mxfp4_e2m1", axis=1)
  M.mx_matmul(q4, q4, out_dtype=jnp.float32, impl="auto")  # MXFP4: not native -> elsewhere
  assert calls == [1]


def test_native_refuses_what_it_cannot_take():
  q4 = mx_jax.quantize(jnp.ones((8, 64)), "mxfp4_e2m1", axis=1)
  q8 = mx_jax.quantize(jnp.ones((8, 64)), "mxfp8_e4m3", axis=1)
  with pytest.raises(ValueError, match="native"):
    M.mx_matmul(q4, q8, impl="native")
  odd = mx_jax.quantize(jnp.ones((8, 40)), "mxfp8_e4m3", axis=1)
  with pytest.raises(ValueError, match="multiple of 32"):
    M.mx_matmul(odd, odd, impl="native")


def test_training_gemms_go_native_on_blackwell(monkeypatch):
  """mxfp8 with impl="auto" on a (faked) Blackwell runs all three GEMMs through jax.nn.scaled_matmul and
  matches the emulated path."""
  import dataclasses
  from mx_jax.dot import quantized_dot_general
  calls = []
  real = M._native_bmk
  monkeypatch.setattr(M, "on_blackwell", lambda: True)
  monkeypatch.setattr(M, "_native_bmk", lambda a, b, o: calls.append(a.shape[-1]) or real(a, b, o))
  x = jax.random.normal(jax.random.key(2), (32, 64))
  w = jax.random.normal(jax.random.key(3), (64, 96)) * 0.1
  dn = (((1,), (0,)), ((), ()))
  outs = []
  for impl in ("xla", "auto"):
    rec = dataclasses.replace(mx_jax.recipe("mxfp8"), impl=impl)
    f = lambda x, w, rec=rec: jnp.sum(jnp.sin(quantized_dot_general(x, w, dn, rec)))
    outs.append(jax.value_and_grad(f, argnums=(0, 1))(x, w))
  assert set(calls) == {64, 96, 32}  # the contraction sizes of forward, dgrad, wgrad
  calls.clear()
  w48 = w[:, :48]  # dgrad contracts over 48: not whole 32-blocks -> that GEMM is emulated
  rec = dataclasses.replace(mx_jax.recipe("mxfp8"), impl="auto")
  jax.grad(lambda x, w: jnp.sum(quantized_dot_general(x, w, dn, rec)), argnums=(0, 1))(x, w48)
  assert set(calls) == {64, 32}
  (v0, g0), (v1, g1) = outs
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-5)
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
