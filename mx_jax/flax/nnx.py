"""Flax NNX integration: a stateful quantized dot_general module, layers, and ``quantize_model``.

NNX keeps delayed-scaling / telemetry state in ``QuantState`` variables. As in the linen path, the
gradient w.r.t. that state *is* its new value: differentiate with ``nnx.grad(..., argnums=nnx.DiffState(0,
nnx.Any(nnx.Param, QuantState)))`` and call ``apply_quant_state(model, grads)`` after the optimizer step
(``nnx.Optimizer(model, tx, wrt=nnx.Param)`` updates Params only).
"""
from __future__ import annotations

import weakref
from typing import Any, Sequence

import jax
from flax import nnx
from jax._src import core as jax_core

from mx_jax.dot import dot_general as _stateless_dot_general
from mx_jax.dot import init_state, quantized_dot_general
from mx_jax.einsum import einsum as _einsum2
from mx_jax.flax._paths import check_patterns, selected
from mx_jax.recipes import recipe as get_recipe


class QuantState(nnx.Variable):
  """Recipe state (amax history, scale, telemetry): overwritten by its gradient, never optimized."""


class MxDotGeneral(nnx.Module):
  """Callable with lax.dot_general's signature running ``recipe``; holds its state as QuantState."""

  def __init__(self, recipe: Any = "mxfp8"):
    self.recipe = get_recipe(recipe)
    tmpl = init_state(self.recipe)
    self.state = nnx.data({k: {k2: QuantState(v2) for k2, v2 in v.items()} for k, v in tmpl.items()})

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    out_sharding = kw.pop("out_sharding", None)
    state = {k: {k2: v2[...] for k2, v2 in v.items()} for k, v in self.state.items()} or None
    if state is None:
      return quantized_dot_general(lhs, rhs, dimension_numbers, self.recipe, None, precision,
                                   preferred_element_type, out_sharding=out_sharding)
    # Called again under the same transformation trace (a reused layer inside one grad): thread the
    # state from the earlier call so the amax "gradients" of the uses merge by max, not sum.
    trace = jax_core.trace_ctx.trace
    entry = _THREADS.get(self)
    if entry is not None and entry[0] is trace:
      state = entry[1]
    out, state_out = quantized_dot_general(lhs, rhs, dimension_numbers, self.recipe, state, precision,
                                           preferred_element_type, return_state=True,
                                           out_sharding=out_sharding)
    if not isinstance(trace, jax_core.EvalTrace):  # eager calls are separate steps: never threaded
      _THREADS[self] = (trace, state_out)
    return out


# The state the module's last call passed on, with the trace it lives in (weakly keyed by the module).
_THREADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _dg(recipe):
  rec = get_recipe(recipe)
  return MxDotGeneral(rec) if (rec.delayed_tensors or rec.telemetry) else _stateless_dot_general(rec)


class _EinsumOp(nnx.Module):
  def __init__(self, recipe):
    self.dg = _dg(recipe)

  def __call__(self, eqn, a, b, precision=None, preferred_element_type=None, **kw):
    return _einsum2(eqn, a, b, self.dg, preferred_element_type=preferred_element_type)


def MxLinear(in_features: int, out_features: int, *, recipe: Any = "mxfp8", rngs: nnx.Rngs, **kw):
  """``nnx.Linear`` whose three GEMMs run ``recipe`` (same parameters as nnx.Linear)."""
  lin = nnx.Linear(in_features, out_features, rngs=rngs, **kw)
  _set_dg(lin, _dg(recipe))
  return lin


def MxEinsum(einsum_str: str, kernel_shape, bias_shape=None, *, recipe: Any = "mxfp8", rngs: nnx.Rngs, **kw):
  """``nnx.Einsum`` whose contraction runs ``recipe``."""
  ein = nnx.Einsum(einsum_str, kernel_shape, bias_shape, rngs=rngs, **kw)
  ein.einsum_op = nnx.data(_EinsumOp(recipe))
  return ein


def _set_dg(lin: nnx.Linear, dg) -> None:
  lin.dot_general = nnx.data(dg) if isinstance(dg, nnx.Module) else dg


def quantize_model(model: nnx.Module, recipe: Any, include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> nnx.Module:
  """A transformed copy of ``model`` whose nnx.Linear / nnx.Einsum layers run ``recipe``.

  Layers are chosen by "/"-joined attribute path with fnmatch patterns (``include`` default: all).
  Parameters are shared by value with the original (a deep copy; the original is untouched).
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module; got {type(model).__name__}")
  check_patterns(include, exclude)
  rec = get_recipe(recipe)
  new = nnx.clone(model)
  for path, mod in list(nnx.iter_modules(new)):
    p = "/".join(str(k) for k in path)
    if not selected(p, include, exclude):
      continue
    if isinstance(mod, nnx.Linear):
      _set_dg(mod, _dg(rec))
    elif isinstance(mod, nnx.Einsum):
      mod.einsum_op = nnx.data(_EinsumOp(rec))
  return new


def apply_quant_state(model: nnx.Module, grads: nnx.State) -> None:
  """Overwrites every QuantState of ``model`` with its gradient (its new value)."""
  new = nnx.state(grads, QuantState) if not isinstance(grads, dict) else grads
  nnx.update(model, new)
