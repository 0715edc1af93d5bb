"""NUMERICS_PITFALLS "when a layer is reused, its amax gradients must combine by max, not sum".

A delayed-scaling layer applied twice in one step sees one old state; the new state must push
amax = max over both uses (of x, of w, and of the output gradient g), as if one tensor had been quantized.
The expected values are computed here from the inputs with numpy, independently of the library.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mx_jax
from mx_jax.flax import OVERWRITE_WITH_GRADIENT, MxDense

H = 4  # amax history length used below


class Twice(nn.Module):
  @nn.compact
  def __call__(self, x):
    d = MxDense(16, recipe="fp8_delayed", use_bias=False, name="shared")
    return d(x) + d(3.0 * x)


def _fp8_scale(amax, max_elem):
  return np.float32(max_elem) / np.float32(amax)


def test_reused_linen_layer_merges_amax_by_max():
  x = jax.random.normal(jax.random.key(0), (4, 16))
  m = Twice()
  v = m.init(jax.random.key(1), x)
  w = np.asarray(v["params"]["shared"]["kernel"])

  def loss(p):
    return jnp.sum(m.apply(p, x) ** 2)

  st = jax.jit(jax.grad(loss))(v)[OVERWRITE_WITH_GRADIENT]["shared"]["MxDotGeneral_0"]
  xn = np.asarray(x)
  ax = np.abs(3 * xn).max()  # max over the two uses' inputs
  aw = np.abs(w).max()  # the same weight twice: its own amax, not 2x
  assert float(st["x_amax_history"][0]) == np.float32(ax)
  assert float(st["w_amax_history"][0]) == np.float32(aw)
  np.testing.assert_array_equal(np.asarray(st["x_amax_history"][1:]), 0.0)
  assert float(st["x_scale"]) == _fp8_scale(ax, 448.0)
  assert float(st["w_scale"]) == _fp8_scale(aw, 448.0)
  # Both uses get the same output gradient 2*y: g amax is its max (a sum would double it).
  y = np.asarray(m.apply(v, x), np.float32)
  ag = np.abs(2 * y).max()
  np.testing.assert_allclose(float(st["g_amax_history"][0]), ag, rtol=1e-6)
  np.testing.assert_allclose(float(st["g_scale"]), _fp8_scale(ag, 57344.0), rtol=1e-6)


def test_functional_threading_matches_single_use():
  """quantized_dot_general(return_state=True): two uses threaded give the state of one use on the larger
  input; one use alone gives the plain update (the pass-through cotangent of an unused state is zero)."""
  rec = mx_jax.recipe("fp8_delayed")
  st0 = mx_jax.init_state(rec)
  x = jax.random.normal(jax.random.key(2), (8, 32))
  w = jax.random.normal(jax.random.key(3), (32, 8)) * 0.1
  dn = (((1,), (0,)), ((), ()))

  def two(state):
    y1, s1 = mx_jax.quantized_dot_general(x, w, dn, rec, state, return_state=True)
    y2, _ = mx_jax.quantized_dot_general(0.5 * x, w, dn, rec, s1, return_state=True)
    return jnp.sum(y1 + y2)

  def one(state):
    return jnp.sum(mx_jax.quantized_dot_general(x, w, dn, rec, state))

  s2 = jax.grad(two)(st0)
  s1 = jax.grad(one)(st0)
  for t in ("x", "w", "g"):
    np.testing.assert_array_equal(np.asarray(s2[t]["amax_history"]), np.asarray(s1[t]["amax_history"]))
    assert float(s2[t]["scale"]) == float(s1[t]["scale"])
  assert float(s1["x"]["amax_history"][0]) == float(jnp.max(jnp.abs(x)))


def test_quantized_dot_general_rejects_bad_state_args():
  x = jnp.ones((4, 32), jnp.float32)
  w = jnp.ones((32, 8), jnp.float32)
  dn = (((1,), (0,)), ((), ()))
  with pytest.raises(TypeError, match="return_state"):
    mx_jax.quantized_dot_general(x, w, dn, "mxfp8", None, return_state="yes")
  with pytest.raises(TypeError, match="state must be"):
    mx_jax.quantized_dot_general(x, w, dn, "mxfp8", [1, 2])


class _ScanBody(nn.Module):
  @nn.compact
  def __call__(self, c, x):
    return c * 2.0, MxDense(16, recipe="fp8_delayed", use_bias=False, name="shared")(x * c)


def test_layer_reused_across_scan_iterations_merges_by_max():
  """nn.scan with the state collection carried (variable_carry): each iteration reads the state the previous one
  passed on, so the step's amax is the max over iterations (a broadcast collection would sum them). Flax cannot
  initialize carried variables inside the scan: the body is initialized on its own first (Flax issue #2052)."""
  xs = jax.random.normal(jax.random.key(5), (3, 4, 16))
  v = _ScanBody().init(jax.random.key(1), jnp.float32(1.0), xs[0])
  scanned = nn.scan(_ScanBody, variable_broadcast="params", variable_carry=OVERWRITE_WITH_GRADIENT,
                    split_rngs={"params": False}, length=3)()

  def loss(v):
    (_, ys), _ = scanned.apply(v, jnp.float32(1.0), xs, mutable=[OVERWRITE_WITH_GRADIENT])
    return jnp.sum(ys ** 2)

  st = jax.jit(jax.grad(loss))(v)[OVERWRITE_WITH_GRADIENT]["shared"]["MxDotGeneral_0"]
  xn = np.asarray(xs)
  ax = max(np.abs(xn[i] * 2.0 ** i).max() for i in range(3))  # iteration i multiplies x by 2^i
  aw = np.abs(np.asarray(v["params"]["shared"]["kernel"])).max()
  assert float(st["x_amax_history"][0]) == np.float32(ax)
  assert float(st["w_amax_history"][0]) == np.float32(aw)
  assert float(st["x_scale"]) == _fp8_scale(ax, 448.0)
