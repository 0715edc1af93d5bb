"""Training recipes: how each of the six GEMM operands of a linear layer is quantized.

A layer ``y = x @ w`` runs three GEMMs in training, each quantizing its two operands along that GEMM's
own contraction axis (MX quantization does not commute with transposition, so every copy is quantized
from the high-precision tensor):
  forward  y  = x  · w    -> ``x`` and ``w`` blocked along K
  dgrad    dx = dy · wᵀ   -> ``g_dgrad`` and ``w_dgrad`` blocked along N
  wgrad    dw = xᵀ · dy   -> ``x_wgrad`` and ``g_wgrad`` blocked along the token axis
"""
from __future__ import annotations

import dataclasses

from mx_jax.formats import get_format
from mx_jax.mx_block import SCALE_MODES
from mx_jax._bits import ROUNDINGS

SCALINGS = ("current", "delayed")
IMPLS = ("xla", "scaled_dot", "pallas", "auto")


@dataclasses.dataclass(frozen=True)
class OperandSpec:
  """How one GEMM operand is quantized. ``scaling`` applies to per-tensor fp8 formats only."""

  fmt: str
  scale_mode: str = "floor"
  rounding: str = "nearest_even"
  block_size: int | None = None
  scaling: str = "current"
  margin: int = 0

  def __post_init__(self):
    f = get_format(self.fmt)
    if self.scale_mode not in SCALE_MODES:
      raise ValueError(f"scale_mode must be one of {SCALE_MODES}; got {self.scale_mode!r}")
    if self.rounding not in ROUNDINGS:
      raise ValueError(f"rounding must be one of {ROUNDINGS}; got {self.rounding!r}")
    if self.scaling not in SCALINGS:
      raise ValueError(f"scaling must be one of {SCALINGS}; got {self.scaling!r}")
    if self.scaling == "delayed" and f.kind != "tensor":
      raise ValueError(f"scaling='delayed' needs a per-tensor fp8 format; got {self.fmt!r}")


_OPERANDS = ("x", "w", "g_dgrad", "w_dgrad", "x_wgrad", "g_wgrad")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Per-operand specs (None = keep high precision) plus layer-wide options. Frozen and hashable."""

  name: str
  x: OperandSpec | None = None
  w: OperandSpec | None = None
  g_dgrad: OperandSpec | None = None
  w_dgrad: OperandSpec | None = None
  x_wgrad: OperandSpec | None = None
  g_wgrad: OperandSpec | None = None
  compute_dtype: str = "bfloat16"  # dtype the GEMM reads (quantized values are exact in bf16)
  amax_history_len: int = 16
  amax_algo: str = "max"
  telemetry: bool = False
  impl: str = "xla"

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise ValueError(f"impl must be one of {IMPLS}; got {self.impl!r}")
    for op in _OPERANDS:
      s = getattr(self, op)
      if s is not None and not isinstance(s, OperandSpec):
        raise TypeError(f"Recipe.{op} must be an OperandSpec or None; got {type(s).__name__}")

  @property
  def operands(self) -> dict[str, OperandSpec | None]:
    return {op: getattr(self, op) for op in _OPERANDS}

  @property
  def is_noop(self) -> bool:
    return all(s is None for s in self.operands.values())

  @property
  def delayed_tensors(self) -> tuple[str, ...]:
    """Which of the tensors "x", "w", "g" carry delayed-scaling state."""
    out = []
    for t, ops in (("x", ("x", "x_wgrad")), ("w", ("w", "w_dgrad")), ("g", ("g_dgrad", "g_wgrad"))):
      if any(getattr(self, o) is not None and getattr(self, o).scaling == "delayed" for o in ops):
        out.append(t)
    return tuple(out)

  def replace(self, **kw) -> "Recipe":
    return dataclasses.replace(self, **kw)


def _uniform(name: str, xw: OperandSpec, g: OperandSpec, w: OperandSpec | None = None, **kw) -> Recipe:
  w = w or xw
  return Recipe(name, x=xw, w=w, g_dgrad=g, w_dgrad=w, x_wgrad=xw, g_wgrad=g, **kw)


def _presets() -> dict[str, Recipe]:
  e4 = OperandSpec("mxfp8_e4m3")
  e5 = OperandSpec("mxfp8_e5m2")
  f6 = OperandSpec("mxfp6_e3m2")
  f4 = OperandSpec("mxfp4_e2m1")
  nv = OperandSpec("nvfp4")
  nv_sr = OperandSpec("nvfp4", rounding="stochastic")
  t4 = OperandSpec("fp8_e4m3")
  t5 = OperandSpec("fp8_e5m2")
  d4 = OperandSpec("fp8_e4m3", scaling="delayed")
  d5 = OperandSpec("fp8_e5m2", scaling="delayed")
  return {
      "fp32": Recipe("fp32", compute_dtype="float32"),
      "bf16": Recipe("bf16"),
      "fp8_current": _uniform("fp8_current", t4, t5),
      "fp8_delayed": _uniform("fp8_delayed", d4, d5),
      "mxfp8": _uniform("mxfp8", e4, e4),
      "mxfp8_e5m2grad": _uniform("mxfp8_e5m2grad", e4, e5),
      "mxfp6": _uniform("mxfp6", f6, f6),
      "mxfp4_weights": _uniform("mxfp4_weights", f6, f6, w=f4),
      "nvfp4": _uniform("nvfp4", nv, nv_sr),
  }


PRESETS = _presets()


def recipe(name: "str | Recipe", **overrides) -> Recipe:
  """The preset named ``name`` (see PRESETS), with optional field overrides (e.g. telemetry=True)."""
  if isinstance(name, Recipe):
    r = name
  elif isinstance(name, str) and name in PRESETS:
    r = PRESETS[name]
  else:
    raise ValueError(f"recipe name must be one of {sorted(PRESETS)}; got {name!r}")
  return r.replace(**overrides) if overrides else r
