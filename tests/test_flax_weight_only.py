"""mx_jax.flax.weight_only: an unmodified linen / nnx model's Dense / Linear layers run weight-only (CPU: the XLA
path).

Reference: the same model applied with each selected kernel replaced by its quantize -> dequantize round trip,
computed in float64 numpy from the float32 activations (the weight-only path multiplies x by the dequantized
weight at FP32: relative 1e-5 of sum |x||W|)."""
import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mx_jax
import mx_jax.flax
from kernels import mx_matmul
from kernels import wo_mgpu as wm
from mx_jax.flax.weight_only import FORMATS, WEIGHTS, weight_only_model


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(64, name="up")(x))
    h = nn.LayerNorm(name="ln")(h)
    return nn.Dense(40, use_bias=False, name="down")(h)


class Block(nn.Module):  # nested paths, a Dense called twice, and a non-Dense layer with a 'kernel' (Conv)
  @nn.compact
  def __call__(self, x):
    mlp = MLP(name="mlp")
    y = mlp(x[..., :96]) + mlp(x[..., 34:]) + nn.Dense(40, name="skip")(x)
    return nn.Conv(8, (1,), name="conv")(y)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _init(model, x, seed):
  """The model's variables with random (nonzero) biases."""
  v = model.init(jax.random.key(seed), x)
  leaves, tree = jax.tree_util.tree_flatten_with_path(v)
  keys = iter(jax.random.split(jax.random.key(seed + 100), len(leaves)))
  return jax.tree_util.tree_unflatten(tree, [
      jax.random.normal(next(keys), l.shape, l.dtype) if str(path[-1]) == "['bias']" else l for path, l in leaves])


def _fq(kernel, fmt):
  """The kernel (K, N) after the weight-only path's quantization (along K) and dequantization."""
  q = mx_jax.quantize(jnp.asarray(kernel, jnp.float32).T, fmt, axis=1)
  return mx_jax.dequantize(q, jnp.float32).T


@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "nvfp4", "mxfp8_e4m3"])
def test_weight_only_model_matches_fake_quant_reference(fmt):
  model = Block()
  x = _x((2, 5, 130))
  variables = _init(model, x, 1)
  wo = weight_only_model(model, fmt)
  wvars = wo.prepare(variables, x)
  assert sorted(wvars[WEIGHTS]) == ["mlp/down", "mlp/up", "skip"]  # not the Conv
  p = wvars["params"]
  assert "kernel" not in p["mlp"]["up"] and "bias" in p["mlp"]["up"] and "kernel" not in p["skip"]
  assert "kernel" in p["conv"] and "kernel" in variables["params"]["skip"]  # the input is not edited
  assert all(isinstance(w, mx_jax.QArray) and w.fmt == fmt for w in wvars[WEIGHTS].values())  # CPU
  got = jax.jit(wo.apply)(wvars, x)
  vp = variables["params"]
  ref_params = {**vp, "skip": {**vp["skip"], "kernel": _fq(vp["skip"]["kernel"], fmt)},
                "mlp": {**vp["mlp"], "up": {**vp["mlp"]["up"], "kernel": _fq(vp["mlp"]["up"]["kernel"], fmt)},
                        "down": {"kernel": _fq(vp["mlp"]["down"]["kernel"], fmt)}}}
  want = jax.jit(model.apply)({"params": ref_params}, x)
  plain = model.apply(variables, x)
  assert got.shape == want.shape == (2, 5, 8)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-3  # the quantization is really applied


def test_include_exclude_and_dtype():
  model = MLP()
  x = _x((3, 96)).astype(jnp.bfloat16)
  variables = _init(model, x, 2)
  wo = weight_only_model(model, "mxfp4_e2m1", exclude=["down"])
  wvars = wo.prepare(variables, x)
  assert list(wvars[WEIGHTS]) == ["up"] and "kernel" in wvars["params"]["down"]
  y = wo.apply(wvars, x)
  assert y.dtype == model.apply(variables, x).dtype
  ref = dict(variables["params"], up={**variables["params"]["up"], "kernel": _fq(variables["params"]["up"]["kernel"],
                                                                                  "mxfp4_e2m1")})
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(model.apply({"params": ref}, x), np.float32),
                             rtol=3e-2, atol=3e-2)  # bf16 activations and output
  assert weight_only_model(model, include=["up"]).dense_paths(variables, x) == ["up"]


def test_prepare_on_hopper_gives_the_kernel_layout(monkeypatch):
  model = MLP()
  x = _x((4, 96))
  variables = model.init(jax.random.key(3), x)
  monkeypatch.setattr(mx_matmul, "on_hopper", lambda: True)
  wvars = weight_only_model(model, "mxfp6_e2m3").prepare(variables, x)
  assert all(isinstance(w, wm.MgpuWeight) and w.fmt == "mxfp6_e2m3" for w in wvars[WEIGHTS].values())
  assert wvars[WEIGHTS]["up"].shape == (64, 96)


def test_validation():
  model = MLP()
  x = _x((2, 96))
  variables = model.init(jax.random.key(4), x)
  with pytest.raises(TypeError, match="model must be a flax.linen or nnx Module"):
    weight_only_model("mlp")
  with pytest.raises(ValueError, match="fmt must be a weight-only format"):
    weight_only_model(model, "fp8_e4m3")
  assert set(FORMATS) == set(wm.FORMATS)  # the literal list is the weight-only kernel's
  with pytest.raises(TypeError, match="exclude must be a sequence"):
    weight_only_model(model, exclude="down")
  wo = weight_only_model(model)
  with pytest.raises(TypeError, match="variables must be the model's variables"):
    wo.prepare(variables["params"], x)
  with pytest.raises(ValueError, match="no nn.Dense layer matched"):
    weight_only_model(model, include=["nothing"]).prepare(variables, x)
  wvars = wo.prepare(variables, x)
  with pytest.raises(ValueError, match="prepare\\(\\) runs once"):
    wo.prepare(wvars, x)
  with pytest.raises(ValueError, match="variables must come from prepare"):
    wo.apply(variables, x)


class NnxNet(nnx.Module):  # a nested Linear, a list of Linears, and a layer that is not one
  def __init__(self, rngs):
    self.inp = nnx.Linear(130, 64, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(64, 64, use_bias=False, rngs=rngs) for _ in range(2)])
    self.norm = nnx.LayerNorm(64, rngs=rngs)
    self.out = nnx.Linear(64, 24, rngs=rngs)

  def __call__(self, x):
    h = nnx.gelu(self.inp(x))
    for b in self.blocks:
      h = h + b(h)
    return self.out(self.norm(h))


def _nnx_net(seed=5):
  net = NnxNet(nnx.Rngs(seed))
  for lin in (net.inp, net.out):
    lin.bias[...] = jax.random.normal(jax.random.key(seed + lin.kernel.shape[0]), lin.bias.shape)
  return net


@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "mxfp8_e5m2"])
def test_nnx_weight_only_matches_fake_quant_reference(fmt):
  """nnx: every selected Linear becomes a WeightOnlyLinear (the original untouched); nnx.jit runs it; equal to the
  model with each kernel replaced by its quantize -> dequantize round trip."""
  net = _nnx_net()
  x = _x((2, 3, 130))
  wo = weight_only_model(net, fmt, exclude=["out"])
  assert isinstance(wo.inp, mx_jax.flax.WeightOnlyLinear) and isinstance(wo.blocks[1], mx_jax.flax.WeightOnlyLinear)
  assert type(wo.out) is nnx.Linear and type(net.inp) is nnx.Linear  # excluded; the input model unchanged
  assert isinstance(wo.inp.weight.get_value(), mx_jax.QArray) and wo.inp.weight.get_value().fmt == fmt  # CPU
  got = nnx.jit(lambda m, x: m(x))(wo, x)
  ref = nnx.clone(net)
  for lin in (ref.inp, ref.blocks[0], ref.blocks[1]):
    lin.kernel[...] = _fq(lin.kernel[...], fmt)
  want = ref(x)
  assert got.shape == want.shape == (2, 3, 24)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)
  assert np.abs(np.asarray(got) - np.asarray(net(x))).max() > 1e-3


def test_nnx_weight_only_root_hopper_and_validation(monkeypatch):
  lin = nnx.Linear(96, 40, rngs=nnx.Rngs(0))
  monkeypatch.setattr(mx_matmul, "on_hopper", lambda: True)
  wo = weight_only_model(lin, "nvfp4")  # the root itself
  assert isinstance(wo, mx_jax.flax.WeightOnlyLinear) and isinstance(wo.weight.get_value(), wm.MgpuWeight)
  assert wo.weight.get_value().shape == (40, 96)
  with pytest.raises(ValueError, match="no nnx.Linear layer matched"):
    weight_only_model(_nnx_net(), include=["nothing"])
  with pytest.raises(ValueError, match="fmt must be a weight-only format"):
    weight_only_model(lin, "mxfp8")
  # the layer's own constructor checks what it is given, naming the argument
  q = mx_jax.quantize(jnp.ones((40, 96)), "mxfp4_e2m1", axis=1)
  with pytest.raises(ValueError, match="weight must be an \\(N, K\\) QArray quantized along axis 1"):
    mx_jax.flax.WeightOnlyLinear(mx_jax.quantize(jnp.ones((40, 96)), "mxfp4_e2m1", axis=0))
  with pytest.raises(TypeError, match="weight must be a QArray or a prepare_weight_only"):
    mx_jax.flax.WeightOnlyLinear(jnp.ones((40, 96)))
  with pytest.raises(ValueError, match=r"bias must be None or an nnx.Param of shape \(40,\)"):
    mx_jax.flax.WeightOnlyLinear(q, nnx.Param(jnp.zeros((96,))))
  with pytest.raises(TypeError, match="dtype must be None or a floating dtype"):
    mx_jax.flax.WeightOnlyLinear(q, None, jnp.int32)
  monkeypatch.undo()  # the XLA path on CPU
  ok = mx_jax.flax.WeightOnlyLinear(q, nnx.Param(jnp.ones((40,))), jnp.float32)
  assert ok(jnp.ones((2, 96))).shape == (2, 40)
