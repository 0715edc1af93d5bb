"""Flax linen integration: quantized dot_general as a module, drop-in layers, and ``quantize_model``.

State (delayed-scaling amax histories and scales, telemetry) lives in Flax's ``_overwrite_with_gradient``
collection, as in ``flax.linen.fp8_ops``: the gradient w.r.t. those variables *is* their new value, so
``flax.training.train_state.TrainState.apply_gradients`` (or any step that copies that collection's grads
over it) updates it inside the jitted step. Optax never sees it.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax._src import core as jax_core  # the current trace: guards the per-apply state threading

from mx_jax.dot import dot_general as _stateless_dot_general
from mx_jax.dot import init_state, quantized_dot_general
from mx_jax.einsum import einsum as _einsum2
from mx_jax.flax._paths import check_patterns, selected
from mx_jax.recipes import Recipe, recipe as get_recipe

OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"


def _flat_names(state: dict) -> dict[str, Any]:
  out = {}
  for k, v in state.items():
    for k2, v2 in v.items():
      out[f"{k}_{k2}"] = v2
  return out


def _unflat(names: dict[str, Any], template: dict) -> dict:
  return {k: {k2: names[f"{k}_{k2}"] for k2 in v} for k, v in template.items()}


class MxDotGeneral(nn.Module):
  """``dot_general_cls`` running ``recipe``'s quantized GEMMs; state in ``_overwrite_with_gradient``."""

  recipe: Any = "mxfp8"

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    out_sharding = kw.pop("out_sharding", None)
    rec = get_recipe(self.recipe)
    template = init_state(rec)
    if not template:
      return quantized_dot_general(lhs, rhs, dimension_numbers, rec, None, precision, preferred_element_type,
                                   out_sharding=out_sharding)
    flat = {name: self.variable(OVERWRITE_WITH_GRADIENT, name, lambda v=v: v).value
            for name, v in _flat_names(template).items()}
    # A layer called twice in one step (weight sharing) threads its state from the earlier call, so the
    # amax "gradients" of its uses merge by max rather than sum (see quantized_dot_general).
    state = _threaded_state(self)
    if state is None:
      state = _unflat(flat, template)
    out, state_out = quantized_dot_general(lhs, rhs, dimension_numbers, rec, state, precision,
                                           preferred_element_type, return_state=True,
                                           out_sharding=out_sharding)
    _thread(self, state_out)
    if self.is_mutable_collection(OVERWRITE_WITH_GRADIENT) and not self.is_initializing():
      # Same values (a pass-through), written so that a transform *carrying* the collection
      # (nn.scan(..., variable_carry=OVERWRITE_WITH_GRADIENT)) threads the state across iterations too.
      for name, v in _flat_names(state_out).items():
        self.put_variable(OVERWRITE_WITH_GRADIENT, name, v)
    return out


# Per apply (keyed by the root scope): the state a layer's last call passed on, with the trace it lives in;
# a call under another trace (e.g. inside a lifted transform) ignores it and reads the variables.
_THREADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _threaded_state(mod: nn.Module):
  entry = _THREADS.get(mod.scope.root, {}).get(mod.scope.path)
  if entry is None or entry[0] is not jax_core.trace_ctx.trace:
    return None
  return entry[1]


def _thread(mod: nn.Module, state) -> None:
  _THREADS.setdefault(mod.scope.root, {})[mod.scope.path] = (jax_core.trace_ctx.trace, state)


def _dg_cls(rec) -> Callable[[], nn.Module]:
  return functools.partial(MxDotGeneral, recipe=rec)


def mx_dense(features: int, recipe: Any = "mxfp8", **kwargs) -> nn.Dense:
  """An ``nn.Dense`` whose GEMMs (forward, dgrad, wgrad) run ``recipe``; same params as nn.Dense."""
  return nn.Dense(features, dot_general_cls=_dg_cls(get_recipe(recipe)), **kwargs)


def _inject_recipe(layer) -> None:
  """Sets ``dot_general_cls`` from ``layer.recipe`` unless the user gave a dot_general of their own."""
  if layer.dot_general is None and layer.dot_general_cls is None:
    object.__setattr__(layer, "dot_general_cls", _dg_cls(get_recipe(layer.recipe)))


class MxDense(nn.Dense):
  """nn.Dense with a ``recipe`` field (default mxfp8); parameters identical to nn.Dense."""

  recipe: Any = "mxfp8"

  def __post_init__(self):
    _inject_recipe(self)
    super().__post_init__()


class MxDenseGeneral(nn.DenseGeneral):
  """nn.DenseGeneral with a ``recipe`` field; contraction over several axes blocks the flattened axes."""

  recipe: Any = "mxfp8"

  def __post_init__(self):
    _inject_recipe(self)
    super().__post_init__()


def _einsum_body(mod: nn.Einsum, inputs, einsum_str, dg):
  """nn.Einsum's computation with ``dg`` as the einsum's dot_general (same params and bias logic)."""
  einsum_str = nn.module.merge_param("einsum_str", mod.einsum_str, einsum_str).replace(" ", "")
  if "->" not in einsum_str or einsum_str.count(",") != 1:
    raise ValueError(f"einsum_str must be explicit ('->') with exactly two operands; got {einsum_str!r}")
  kernel = mod.param("kernel", mod.kernel_init, mod.shape, mod.param_dtype)
  bias = None
  if mod.use_bias:
    bias_shape, bcast_shape = mod._get_bias_shape(einsum_str, inputs, kernel)
    bias = mod.param("bias", mod.bias_init, bias_shape, mod.param_dtype)
  inputs, kernel, bias = mod.promote_dtype(inputs, kernel, bias, dtype=mod.dtype)
  y = _einsum2(einsum_str, inputs, kernel, dg, preferred_element_type=mod.preferred_element_type)
  if bias is not None:
    y = y + jnp.reshape(bias, bcast_shape)
  return y


class MxEinsum(nn.Einsum):
  """nn.Einsum whose contraction runs ``recipe``'s quantized GEMMs; same params as nn.Einsum."""

  recipe: Any = "mxfp8"

  @nn.compact
  def __call__(self, inputs, einsum_str: str | None = None):
    return _einsum_body(self, inputs, einsum_str, MxDotGeneral(self.recipe, name="mx_dot_general"))


class MxEinsumOp(nn.Module):
  """A two-operand ``einsum(eqn, a, b)`` callable module for attention's q·k and p·v
  (``nn.MultiHeadDotProductAttention(qk_attn_weights_einsum_cls=..., attn_weights_value_einsum_cls=...)``)."""

  recipe: Any = "mxfp8"

  @nn.compact
  def __call__(self, eqn, a, b, **kw):
    kw.pop("precision", None)
    return _einsum2(eqn, a, b, MxDotGeneral(self.recipe, name="mx_dot_general"),
                    preferred_element_type=kw.pop("preferred_element_type", None))


# --------------------------------------------------------------------------------- quantize_model
class QuantizedModel:
  """A linen model whose Dense / DenseGeneral / Einsum / attention GEMMs run a recipe, without editing
  its source. Same ``init`` / ``apply`` signatures as the wrapped module; layers chosen by path
  (``"/"``-joined module names, fnmatch patterns): quantized iff it matches ``include`` (default: all) and
  no ``exclude`` pattern."""

  def __init__(self, module: nn.Module, recipe: Any, include: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None):
    if not isinstance(module, nn.Module):
      raise TypeError(f"model must be a flax.linen Module; got {type(module).__name__}")
    check_patterns(include, exclude)
    self.module = module
    self.recipe = get_recipe(recipe)
    self.include = tuple(include) if include is not None else None
    self.exclude = tuple(exclude or ())
    self.quantized_paths: set[str] = set()

  def selected(self, path: str) -> bool:
    return selected(path, self.include, self.exclude)

  def _interceptor(self, next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != "__call__" or isinstance(mod, (MxDotGeneral, MxEinsumOp)):
      return next_fun(*args, **kwargs)
    path = "/".join(str(p) for p in mod.path)
    if not self.selected(path):
      return next_fun(*args, **kwargs)
    if isinstance(mod, (nn.Dense, nn.DenseGeneral)) and mod.dot_general is None and mod.dot_general_cls is None:
      object.__setattr__(mod, "dot_general_cls", _dg_cls(self.recipe))
      self.quantized_paths.add(path)
    elif isinstance(mod, nn.Einsum) and not isinstance(mod, MxEinsum):
      self.quantized_paths.add(path)
      inputs = args[0] if args else kwargs.pop("inputs")
      eqn = args[1] if len(args) > 1 else kwargs.pop("einsum_str", None)
      return _einsum_body(mod, inputs, eqn, MxDotGeneral(self.recipe, name="mx_dot_general"))
    elif isinstance(mod, nn.MultiHeadDotProductAttention) and mod.qk_attn_weights_einsum_cls is None:
      op = functools.partial(MxEinsumOp, self.recipe)
      object.__setattr__(mod, "qk_attn_weights_einsum_cls", op)
      object.__setattr__(mod, "attn_weights_value_einsum_cls", op)
      self.quantized_paths.add(path)
    return next_fun(*args, **kwargs)

  def init(self, *args, **kwargs):
    with nn.intercept_methods(self._interceptor):
      return self.module.init(*args, **kwargs)

  def apply(self, *args, **kwargs):
    with nn.intercept_methods(self._interceptor):
      return self.module.apply(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.module, name)


def quantize_model(model: nn.Module, recipe: Any, include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> QuantizedModel:
  """Wraps a linen model so its matmul layers run ``recipe`` (see QuantizedModel)."""
  return QuantizedModel(model, recipe, include, exclude)
