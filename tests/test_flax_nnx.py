"""Flax NNX integration: MxLinear / MxEinsum against the spec reference, quantize_model on a stock nnx model,
a jitted train step with delayed-scaling state, and a reused layer merging its amaxes by max.

Expected values come from tests/spec_reference.py (float64 numpy) or plain numpy, never from mx_jax.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mx_jax
from mx_jax.flax import nnx as mxn
from tests.spec_reference import ref_fp8_tensor, ref_mx_fake


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_mx_linear_forward_matches_spec_reference():
  lin = mxn.MxLinear(64, 48, recipe="mxfp8", rngs=nnx.Rngs(0))
  x = _x((5, 64))
  w = np.asarray(lin.kernel[...])  # (in, out): contraction along axis 0
  xq = ref_mx_fake(np.asarray(x), "mxfp8_e4m3", axis=-1, out_dtype=np.float64)
  wq = ref_mx_fake(w, "mxfp8_e4m3", axis=0, out_dtype=np.float64)
  exp = xq @ wq + np.asarray(lin.bias[...], np.float64)
  np.testing.assert_allclose(np.asarray(lin(x), np.float64), exp, rtol=1e-5, atol=1e-5)


def test_mx_einsum_forward_matches_spec_reference():
  ein = mxn.MxEinsum("btk,kn->btn", (64, 32), recipe="mxfp8", rngs=nnx.Rngs(0))
  x = _x((2, 3, 64))
  w = np.asarray(ein.kernel[...])
  xq = ref_mx_fake(np.asarray(x), "mxfp8_e4m3", axis=-1, out_dtype=np.float64)
  wq = ref_mx_fake(w, "mxfp8_e4m3", axis=0, out_dtype=np.float64)
  np.testing.assert_allclose(np.asarray(ein(x), np.float64), np.einsum("btk,kn->btn", xq, wq), rtol=1e-5, atol=1e-5)


class Stock(nnx.Module):  # no mx_jax code
  def __init__(self, rngs):
    self.up = nnx.Linear(32, 64, rngs=rngs)
    self.down = nnx.Linear(64, 32, rngs=rngs)

  def __call__(self, x):
    h = self.up(x)
    return h, self.down(jax.nn.gelu(h))


def test_quantize_model_nnx_changes_exactly_the_included_layers():
  m = Stock(nnx.Rngs(0))
  x = _x((4, 32), 1)
  h0, y0 = m(x)
  q = mx_jax.quantize_model(m, "mxfp8", include=["down"])
  h1, y1 = q(x)
  np.testing.assert_array_equal(np.asarray(h1), np.asarray(h0))  # excluded layer: bit-identical
  assert not np.array_equal(np.asarray(y1), np.asarray(y0))
  # The included layer computes exactly the reference MX GEMM of the (unchanged) hidden activation.
  g = np.asarray(jax.nn.gelu(h0), np.float64)
  wq = ref_mx_fake(np.asarray(m.down.kernel[...]), "mxfp8_e4m3", axis=0, out_dtype=np.float64)
  exp = ref_mx_fake(g.astype(np.float32), "mxfp8_e4m3", axis=-1, out_dtype=np.float64) @ wq
  np.testing.assert_allclose(np.asarray(y1, np.float64), exp + np.asarray(m.down.bias[...]), rtol=1e-5, atol=1e-5)
  y2 = m(x)[1]  # the original is untouched
  np.testing.assert_array_equal(np.asarray(y2), np.asarray(y0))


def _delayed_step(model, opt, x, y):
  diff = nnx.DiffState(0, nnx.Any(nnx.Param, mxn.QuantState))

  def loss_fn(m):
    return jnp.mean((m(x)[1] - y) ** 2)

  loss, g = nnx.value_and_grad(loss_fn, argnums=diff)(model)
  opt.update(model, nnx.state(g, nnx.Param))
  mxn.apply_quant_state(model, g)
  return loss


def test_nnx_train_step_with_delayed_scaling_updates_state_and_learns():
  model = mx_jax.quantize_model(Stock(nnx.Rngs(0)), "fp8_delayed")
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x, y = _x((16, 32), 2), _x((16, 32), 3)
  step = nnx.jit(_delayed_step)
  losses = [float(step(model, opt, x, y)) for _ in range(25)]
  assert losses[-1] < 0.7 * losses[0]
  st = model.down.dot_general.state
  hist = np.asarray(st["x"]["amax_history"][...])
  assert np.count_nonzero(hist) == min(25, hist.size)  # one amax pushed per step
  assert float(st["x"]["scale"][...]) != 1.0


class Twice(nnx.Module):
  def __init__(self, rngs):
    self.shared = mxn.MxLinear(16, 16, recipe="fp8_delayed", use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.shared(x) + self.shared(3.0 * x)


def test_reused_nnx_layer_merges_amax_by_max():
  m = Twice(nnx.Rngs(0))
  x = _x((4, 16), 4)
  diff = nnx.DiffState(0, nnx.Any(nnx.Param, mxn.QuantState))
  g = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=diff))(m, x)
  st = g["shared"]["dot_general"]["state"]
  w = np.asarray(m.shared.kernel[...])
  ax, aw = np.abs(3 * np.asarray(x)).max(), np.abs(w).max()
  assert float(st["x"]["amax_history"][...][0]) == np.float32(ax)
  assert float(st["w"]["amax_history"][...][0]) == np.float32(aw)  # a sum over the uses would give 2x
  exp_scale = ref_fp8_tensor(np.asarray(3 * x), "fp8_e4m3")["scale"]
  assert float(st["x"]["scale"][...]) == float(np.asarray(exp_scale).reshape(()))
  # An eager call afterwards is a separate step: it reads the variables, not a stale threaded state.
  y1 = np.asarray(m(x))
  np.testing.assert_array_equal(np.asarray(m(x)), y1)


@pytest.mark.parametrize("bad", [object(), "mxfp8"])
def test_quantize_model_nnx_rejects_bad_include(bad):
  with pytest.raises(TypeError, match="include"):
    mxn.quantize_model(Stock(nnx.Rngs(0)), "mxfp8", include=bad)
