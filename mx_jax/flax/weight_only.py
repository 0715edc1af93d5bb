"""Weight-only inference for an unmodified linen model: its ``nn.Dense`` kernels quantized once to an MX / NVFP4
format, laid out once for the weight-only kernel, and multiplied by ``mx_weight_only_matmul``.

    wo = weight_only_model(model, "mxfp4_e2m1")
    wvars = wo.prepare(variables, x)       # once, eagerly (x: example inputs, shapes only); float kernels dropped
    y = jax.jit(wo.apply)(wvars, x)        # the model's apply, same arguments

Each selected Dense computes y = x @ Q(W) + b, Q(W) the (K, N) kernel quantized along K (blocks of 32; NVFP4 16
with its tensor scale) and dequantized inside the kernel: x rounded to bf16, FP32 accumulation. On Hopper the
weight is ``prepare_weight_only``'s Mosaic GPU layout (the weight-only kernel up to ``wo_mgpu.KERNEL_ROWS`` rows,
W decoded to bf16 once + XLA's bf16 GEMM beyond); elsewhere the QArray, and XLA multiplies x by Q(W) in FP32.
The Dense's ``dot_general`` / ``precision`` are not used; its ``dtype`` (else x's dtype) is the output dtype.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mx_jax.matmul import mx_weight_only_matmul, prepare_weight_only
from mx_jax.flax.linen import _matches
from mx_jax.quantize import quantize

WEIGHTS = "mx_weights"  # the prepared variables' collection of quantized kernels, keyed by "/"-joined module path
FORMATS = ("mxfp4_e2m1", "nvfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8")


def _path(mod: nn.Module) -> str:
  return "/".join(str(p) for p in mod.path)


class WeightOnlyModel:
  """A linen model whose ``nn.Dense`` layers (exactly that class: a subclass may compute something else) run
  weight-only in ``fmt``: layers chosen by path (fnmatch patterns on "/"-joined module names), every Dense
  matching ``include`` (default: all) and no ``exclude`` pattern. ``prepare`` quantizes once; ``apply`` has the
  wrapped model's signature."""

  def __init__(self, module: nn.Module, fmt: str = "mxfp4_e2m1", include: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None):
    if not isinstance(module, nn.Module):
      raise TypeError(f"model must be a flax.linen Module; got {type(module).__name__}")
    if fmt not in FORMATS:
      raise ValueError(f"fmt must be a weight-only format of {FORMATS}; got {fmt!r}")
    for name, pats in (("include", include), ("exclude", exclude)):
      if pats is not None and (isinstance(pats, str) or not isinstance(pats, (list, tuple, set, frozenset))
                               or not all(isinstance(p, str) for p in pats)):
        raise TypeError(f"{name} must be a sequence of path patterns (strings); got {pats!r}")
    self.module, self.fmt = module, fmt
    self.include = tuple(include) if include is not None else None
    self.exclude = tuple(exclude or ())

  def selected(self, path: str) -> bool:
    return (self.include is None or _matches(path, self.include)) and not _matches(path, self.exclude)

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
      q = quantize(jnp.asarray(kernel, jnp.float32).T, self.fmt, axis=1)  # (N, K) in blocks along K
      weights[path] = prepare_weight_only(q) if _on_hopper() else q
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
      out = mod.dtype or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
      y = mx_weight_only_matmul(x, weights[path], out_dtype=out)
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


def weight_only_model(model: nn.Module, fmt: str = "mxfp4_e2m1", include: Sequence[str] | None = None,
                      exclude: Sequence[str] | None = None) -> WeightOnlyModel:
  """Wraps a linen model for weight-only inference in ``fmt`` (see WeightOnlyModel)."""
  return WeightOnlyModel(model, fmt, include, exclude)

