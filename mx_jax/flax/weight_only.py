"""Weight-only inference for an unmodified Flax model: its Dense / Linear kernels quantized once to an MX / NVFP4
format, laid out once for the weight-only kernel, and multiplied by ``mx_weight_only_matmul``.

    wo = weight_only_model(model, "mxfp4_e2m1")     # linen
    wvars = wo.prepare(variables, x)       # once, eagerly (x: example inputs, shapes only); float kernels dropped
    y = jax.jit(wo.apply)(wvars, x)        # the model's apply, same arguments

    wo = weight_only_model(nnx_model, "mxfp4_e2m1")  # nnx: a transformed copy, nnx.Linear -> WeightOnlyLinear
    y = nnx.jit(lambda m, x: m(x))(wo, x)

Each selected layer computes y = x @ Q(W) + b, Q(W) the (K, N) kernel quantized along K (blocks of 32; NVFP4 16
with its tensor scale) and dequantized inside the kernel: x rounded to bf16, FP32 accumulation. On Hopper the
weight is ``prepare_weight_only``'s Mosaic GPU layout (the weight-only kernel up to ``wo_mgpu.KERNEL_ROWS`` rows,
W decoded to bf16 once + XLA's bf16 GEMM beyond); elsewhere the QArray, and XLA multiplies x by Q(W) in FP32.
The layer's ``dot_general`` / ``precision`` are not used; its ``dtype`` (else x's dtype) is the output dtype.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp

from mx_jax.matmul import _check_wo_weight, mx_weight_only_matmul, prepare_weight_only
from mx_jax.flax._paths import check_patterns, selected as _selected
from mx_jax.quantize import quantize

WEIGHTS = "mx_weights"  # the prepared variables' collection of quantized kernels, keyed by "/"-joined module path
FORMATS = ("mxfp4_e2m1", "nvfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8")


def _path(mod: nn.Module) -> str:
  return "/".join(str(p) for p in mod.path)


def _check_args(fmt: str, include, exclude) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be a weight-only format of {FORMATS}; got {fmt!r}")
  check_patterns(include, exclude)


def _quantized(kernel, fmt: str):
  """A (K, N) kernel as the weight-only operand: quantized along K as (N, K); laid out for the kernel on Hopper."""
  q = quantize(jnp.asarray(kernel, jnp.float32).T, fmt, axis=1)
  return prepare_weight_only(q) if _on_hopper() else q


def _out_dtype(layer_dtype, x):
  return layer_dtype or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)


class WeightOnlyModel:
  """A linen model whose ``nn.Dense`` layers (exactly that class: a subclass may compute something else) run
  weight-only in ``fmt``: layers chosen by path (fnmatch patterns on "/"-joined module names), every Dense
  matching ``include`` (default: all) and no ``exclude`` pattern. ``prepare`` quantizes once; ``apply`` has the
  wrapped model's signature."""

  def __init__(self, module: nn.Module, fmt: str = "mxfp4_e2m1", include: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None):
    if not isinstance(module, nn.Module):
      raise TypeError(f"model must be a flax.linen Module; got {type(module).__name__}")
    _check_args(fmt, include, exclude)
    self.module, self.fmt = module, fmt
    self.include = tuple(include) if include is not None else None
    self.exclude = tuple(exclude or ())

  def selected(self, path: str) -> bool:
    return _selected(path, self.include, self.exclude)

  def dense_paths(self, variables, *args, **kwargs) -> list[str]:
    """The selected Dense layers' paths, found by tracing ``module.apply(variables, *args, **kwargs)``
    abstractly (nothing runs)."""
    found: list[str] = []

    def record(next_fun, a, kw, context):
      mod = context.module
      if context.method_name == "__call__" and type(mod) is nn.Dense and self.selected(_path(mod)):
        if _path(mod) not in found:
          found.append(_path(mod))
      return next_fun(*a, **kw)

    with nn.intercept_methods(record):
      jax.eval_shape(lambda v: self.module.apply(v, *args, **kwargs), variables)
    return found

  def prepare(self, variables: dict, *args, **kwargs) -> dict:
    """``variables`` with each selected Dense kernel replaced by its quantized, laid-out weight (in the
    ``WEIGHTS`` collection; the float kernel dropped). ``args`` / ``kwargs``: example inputs of ``apply``
    (their shapes find the Dense layers). Run eagerly, once."""
    if not isinstance(variables, dict) or "params" not in variables:
      raise TypeError(f"variables must be the model's variables dict (with 'params'); got {type(variables).__name__}")
    if WEIGHTS in variables:
      raise ValueError(f"variables already hold a {WEIGHTS!r} collection: prepare() runs once, on float variables")
    params = dict(variables["params"])  # copied along each edited path below
    weights = {}
    for path in self.dense_paths(variables, *args, **kwargs):
      node = params
      for name in path.split("/") if path else []:
        node[name] = dict(node[name])
        node = node[name]
      kernel = node.pop("kernel")
      if kernel.ndim != 2:
        raise ValueError(f"Dense {path!r}: kernel must be 2-D (K, N); got shape {kernel.shape}")
      weights[path] = _quantized(kernel, self.fmt)
    if not weights:
      raise ValueError("no nn.Dense layer matched include / exclude; nothing to quantize")
    return {**variables, "params": params, WEIGHTS: weights}

  def apply(self, variables: dict, *args, **kwargs):
    """The wrapped model's ``apply`` on ``prepare``'d variables."""
    if not isinstance(variables, dict) or WEIGHTS not in variables:
      raise ValueError(f"variables must come from prepare() (no {WEIGHTS!r} collection)")
    weights = variables[WEIGHTS]
    rest = {k: v for k, v in variables.items() if k != WEIGHTS}

    def run(next_fun, a, kw, context):
      mod = context.module
      path = _path(mod)
      if context.method_name != "__call__" or type(mod) is not nn.Dense or path not in weights:
        return next_fun(*a, **kw)
      x = jnp.asarray(a[0] if a else kw["inputs"])
      y = mx_weight_only_matmul(x, weights[path], out_dtype=_out_dtype(mod.dtype, x))
      if mod.use_bias:
        y = y + mod.get_variable("params", "bias").astype(y.dtype)
      return y

    with nn.intercept_methods(run):
      return self.module.apply(rest, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.module, name)


def _on_hopper() -> bool:
  from kernels import mx_matmul
  return mx_matmul.on_hopper()


class MxWeight(nnx.Variable):
  """An nnx weight-only layer's quantized (N, K) weight: a QArray, or on Hopper its laid-out ``MgpuWeight``."""


class WeightOnlyLinear(nnx.Module):
  """nnx: y = x @ Q(W) + b by ``mx_weight_only_matmul`` (what ``weight_only_model`` puts for an nnx.Linear)."""

  def __init__(self, weight, bias: nnx.Param | None = None, dtype=None):
    """``weight``: an (N, K) QArray quantized along K, or ``prepare_weight_only`` of one; ``bias``: None or an
    nnx.Param of shape (N,); ``dtype``: the output dtype (None: x's, at least bf16)."""
    _check_wo_weight(weight, "weight")
    if bias is not None and (not isinstance(bias, nnx.Param) or bias[...].shape != (weight.shape[0],)):
      raise ValueError(f"bias must be None or an nnx.Param of shape ({weight.shape[0]},) (N); got {bias!r}")
    if dtype is not None and not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
      raise TypeError(f"dtype must be None or a floating dtype; got {dtype!r}")
    self.weight = MxWeight(weight)
    self.bias = bias
    self.dtype = dtype

  def __call__(self, x):
    x = jnp.asarray(x)
    y = mx_weight_only_matmul(x, self.weight.get_value(), out_dtype=_out_dtype(self.dtype, x))
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)


def _nnx_weight_only(model: nnx.Module, fmt: str, include, exclude) -> nnx.Module:
  """A copy of ``model`` with each selected nnx.Linear (exactly that class) replaced by a WeightOnlyLinear."""
  new = nnx.clone(model)
  done = 0
  for path, mod in list(nnx.iter_modules(new)):
    if type(mod) is not nnx.Linear or not _selected("/".join(str(k) for k in path), include, exclude):
      continue
    layer = WeightOnlyLinear(_quantized(mod.kernel[...], fmt), mod.bias, mod.dtype)
    if not path:
      return layer
    parent = new
    for k in path[:-1]:
      parent = parent[k] if isinstance(k, int) else getattr(parent, k)
    if isinstance(path[-1], int):
      parent[path[-1]] = layer
    else:
      setattr(parent, path[-1], layer)
    done += 1
  if not done:
    raise ValueError("no nnx.Linear layer matched include / exclude; nothing to quantize")
  return new


def weight_only_model(model, fmt: str = "mxfp4_e2m1", include: Sequence[str] | None = None,
                      exclude: Sequence[str] | None = None):
  """Weight-only inference in ``fmt`` for a linen model (a ``WeightOnlyModel``: ``prepare`` then ``apply``) or an
  nnx model (a transformed copy, quantized now: each selected nnx.Linear becomes a ``WeightOnlyLinear``)."""
  if isinstance(model, nnx.Module):
    _check_args(fmt, include, exclude)
    return _nnx_weight_only(model, fmt, include, exclude)
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen or nnx Module; got {type(model).__name__}")
  return WeightOnlyModel(model, fmt, include, exclude)
