"""Per-tensor FP8 scaling state: current scaling and delayed scaling (amax history), as pure pytrees.

Delayed scaling (TransformerEngine, Micikevicius et al. 2022): step t quantizes with the scale derived
from the amax history of steps < t, then pushes this step's amax:
  history <- [amax_t, history[:-1]]   (non-finite amax_t enters as 0: one NaN must not freeze the scale)
  amax    <- max(history)  ("max")  or  history[0]  ("most_recent")
  scale   <- max_elem / amax / 2^margin, or the previous scale when amax is 0
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mx_jax import fp8_tensor
from mx_jax.formats import get_format
from mx_jax.qarray import QArray
from mx_jax.quantize import quantize

AMAX_ALGOS = ("max", "most_recent")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DelayedScalingState:
  """amax_history: (H,) float32, newest first. scale: () float32 encode scale used by the next step."""

  amax_history: jax.Array
  scale: jax.Array


def init_delayed(history_len: int = 16) -> DelayedScalingState:
  if isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1:
    raise ValueError(f"history_len must be a positive int; got {history_len!r}")
  return DelayedScalingState(jnp.zeros((history_len,), jnp.float32), jnp.ones((), jnp.float32))


def update_delayed(state: DelayedScalingState, amax: jax.Array, fmt: str, *, margin: int = 0,
                   algo: str = "max", power_of_two: bool = False) -> DelayedScalingState:
  """Pushes ``amax`` into the history and recomputes the scale (see module docstring)."""
  if not isinstance(state, DelayedScalingState):
    raise TypeError(f"state must be a DelayedScalingState; got {type(state).__name__}")
  if algo not in AMAX_ALGOS:
    raise ValueError(f"algo must be one of {AMAX_ALGOS}; got {algo!r}")
  f = get_format(fmt)
  if f.kind != "tensor":
    raise ValueError(f"delayed scaling applies to per-tensor formats ('fp8_e4m3', 'fp8_e5m2'); got {f.name!r}")
  amax = jnp.asarray(amax, jnp.float32).reshape(())
  amax = jnp.where(jnp.isfinite(amax), amax, 0.0)
  hist = jnp.concatenate([amax[None], state.amax_history[:-1]])
  ref = jnp.max(hist) if algo == "max" else hist[0]
  scale = fp8_tensor.compute_scale(ref, f.elem, margin, power_of_two, fallback=state.scale)
  return DelayedScalingState(hist, scale)


def quantize_delayed(x: jax.Array, fmt: str, state: DelayedScalingState, *, margin: int = 0,
                     algo: str = "max", power_of_two: bool = False, saturate: bool = True,
                     rounding: str = "nearest_even", key=None) -> tuple[QArray, DelayedScalingState]:
  """Quantizes with ``state.scale`` (from past steps) and returns the state updated with amax(x)."""
  q = quantize(x, fmt, scale=state.scale, saturate=saturate, rounding=rounding, key=key)
  new = update_delayed(state, fp8_tensor.finite_amax(x), fmt, margin=margin, algo=algo,
                       power_of_two=power_of_two)
  return q, new
