"""The GPU-only row-major pin of emulated GEMM operands (dot.PIN_OPERAND_LAYOUT) changes no value and reaches
the compiled program as XLA's LayoutConstraint; on CPU it is skipped."""
import jax
import jax.numpy as jnp
import numpy as np

import mx_jax
from mx_jax import dot


def _loss(x, w):
  return (mx_jax.quantized_dot_general(x, w, (((2,), (0,)), ((), ())), "mxfp8") ** 2).sum()


def test_pin_is_value_neutral_and_lowered(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (2, 64, 96))
  w = jax.random.normal(jax.random.key(1), (96, 40))
  g = jax.grad(_loss, argnums=(0, 1))
  assert "LayoutConstraint" not in jax.jit(g).lower(x, w).as_text()  # CPU: skipped
  ref = g(x, w)
  jax.clear_caches()
  monkeypatch.setattr(dot, "_PIN_BACKENDS", ("gpu", "cpu"))
  for pin in ("in", "out"):
    monkeypatch.setattr(dot, "PIN_OPERAND_LAYOUT", pin)
    jax.clear_caches()
    text = jax.jit(g).lower(x, w).as_text()
    assert text.count("LayoutConstraint") >= 2, pin  # forward and both backward GEMMs' operands
    got = g(x, w)
    for a, b in zip(got, ref):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.clear_caches()
