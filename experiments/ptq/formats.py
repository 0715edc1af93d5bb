"""Post-training direct-cast numerics for the PTQ study: dot_general hooks for every format and mode.

Every format row of the study becomes a pair ``(dense_dg, attn_dg)`` of lax.dot_general-compatible callables
for the model ports' ``dot_general=`` (Dense layers and glassllm's tied output projection: the rhs is a
weight) and ``attn_dot_general=`` (q.k^T and p.v: both operands are activations) hooks.

* MX formats, NVFP4 and per-tensor FP8 go through the library: ``mx_jax.dot_general(Recipe(x=..., w=...))``,
  which quantizes both operands along the contraction axes (MX/NVFP4 blocks along K; FP8 one FP32 scale
  per tensor, current scaling scale = 448 / amax).
* FP8 E4M3 per channel and INT8 per channel are not mx_jax recipes; ``FakeQuantDot`` below fake-quantizes
  the rhs per output channel (one scale per index not contracted: the Dense output column, the vocab row
  of glassllm's tied E) and the lhs per tensor, then runs a plain float32 ``lax.dot_general``. FP8 uses
  ``mx_jax.fake_quantize(granularity="channel"/"tensor")``; INT8 is the small symmetric quantizer
  ``int8_fake_quantize`` (scale = amax / 127, round-half-even, clip to ±127) -- the baseline the FP8
  paper compares against.
* ``mode="w"`` (weights only) quantizes only the rhs of the weight GEMMs; attention stays float32 (both of
  its operands are activations). ``mode="wa"`` quantizes every matmul input, attention's included; in
  attention, per-channel rows use per-tensor scales on both sides (there is no weight to scale per channel).
* ``PlainCast(bias=b)``: the FP8 paper's unscaled E4M3 cast with exponent bias ``b`` (see its docstring).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

import mx_jax


# ------------------------------------------------------------------------------------------ quantizers
def _move_to_end(x: jax.Array, axes: Sequence[int]):
  """Moves ``axes`` to the end and merges them into one: (array [..., K], inverse function)."""
  axes = tuple(a % x.ndim for a in axes)
  rest = tuple(a for a in range(x.ndim) if a not in axes)
  xt = jnp.transpose(x, rest + axes)
  lead, tail = xt.shape[:len(rest)], xt.shape[len(rest):]
  flat = xt.reshape(lead + (math.prod(tail),))
  inv = [0] * x.ndim
  for i, a in enumerate(rest + axes):
    inv[a] = i
  return flat, lambda y: jnp.transpose(y.reshape(lead + tail), inv)


def int8_fake_quantize(x: jax.Array, reduce_axes: Sequence[int] | None = None) -> jax.Array:
  """Symmetric INT8: scale = amax / 127 (amax over ``reduce_axes``, or the whole tensor when None),
  q = clip(round_half_even(x / scale), -127, 127), returns q * scale in x's dtype."""
  xf = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(xf), axis=None if reduce_axes is None else tuple(reduce_axes), keepdims=True)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  return (jnp.clip(jnp.round(xf / scale), -127.0, 127.0) * scale).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """Fake-quantizes one GEMM operand; ``kind``:

  "int8"      symmetric INT8, per channel (``per_channel``: amax over the contraction axes) or per tensor
  "fp8"       ``fmt`` (fp8_e4m3 / fp8_e5m2) through mx_jax.fake_quantize, per channel or per tensor;
              ``scale`` (a float) fixes the encode scale instead of 448 / amax (a plain cast, see PlainCast)
  "bf16"      round to bfloat16 (a reference for numerical noise)
  Also usable as a residual-stream hook (``q(x)``: per tensor).
  """

  kind: str
  per_channel: bool = False
  fmt: str = "fp8_e4m3"
  scale: float | None = None

  def __call__(self, x: jax.Array, contract: Sequence[int] | None = None) -> jax.Array:
    if self.kind == "bf16":
      return x.astype(jnp.bfloat16).astype(x.dtype)
    if self.kind == "int8":
      return int8_fake_quantize(x, contract if self.per_channel else None)
    if self.kind == "fp8":
      if self.scale is not None:
        return mx_jax.fake_quantize(x, self.fmt, scale=jnp.float32(self.scale))
      if not self.per_channel:
        return mx_jax.fake_quantize(x, self.fmt)
      flat, back = _move_to_end(x, contract)  # one scale per index of the non-contracted axes
      return back(mx_jax.fake_quantize(flat, self.fmt, granularity="channel", axis=-1))
    raise ValueError(f"unknown quantizer kind {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class FakeQuantDot:
  """lax.dot_general with fake-quantized operands (None = keep float32); float32 GEMM, HIGHEST precision."""

  lhs: Quantizer | None = None
  rhs: Quantizer | None = None

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    kw.pop("out_sharding", None)
    (lc, rc), _ = dimension_numbers
    if self.lhs is not None:
      lhs = self.lhs(lhs, lc)
    if self.rhs is not None:
      rhs = self.rhs(rhs, rc)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=lax.Precision.HIGHEST,
                           preferred_element_type=preferred_element_type)


def PlainCast(bias: int, fmt: str = "fp8_e4m3") -> Quantizer:
  """Unscaled E4M3 cast with exponent bias ``bias`` (standard E4M3: bias 7, max 448).

  An E4M3 code with exponent field e means 2^(e - bias) * 1.m, i.e. the standard (bias-7) value times
  2^(7 - bias): the grid is the standard grid scaled by 2^(7 - bias) (bias 10: max 56, smallest
  subnormal 2^-12). Casting x to that grid = casting x * 2^(bias - 7) to standard E4M3 and multiplying
  back, i.e. mx_jax's encode scale (x is multiplied by ``scale`` before the cast) is 2^(bias - 7): a fixed
  power-of-two scale independent of the data. Out-of-range values saturate to ±max (mx_jax's default).
  """
  return Quantizer("fp8", fmt=fmt, scale=float(2.0 ** (bias - 7)))


# ------------------------------------------------------------------------------------------- formats
@dataclasses.dataclass(frozen=True)
class FormatRow:
  key: str          # row id
  label: str        # table label
  bits: float       # bits per element including scale overhead (per-tensor/channel scales: ~0)
  family: str       # "ref", "mx", "nvfp4", "fp8", "int8"


FORMATS = (
    FormatRow("fp32", "FP32 (reference)", 32, "ref"),
    FormatRow("bf16", "BF16", 16, "ref"),
    FormatRow("mxint8", "MXINT8", 8.25, "mx"),
    FormatRow("mxfp8_e4m3", "MXFP8 E4M3", 8.25, "mx"),
    FormatRow("mxfp8_e5m2", "MXFP8 E5M2", 8.25, "mx"),
    FormatRow("mxfp6_e3m2", "MXFP6 E3M2", 6.25, "mx"),
    FormatRow("mxfp6_e2m3", "MXFP6 E2M3", 6.25, "mx"),
    FormatRow("mxfp4_e2m1", "MXFP4 E2M1", 4.25, "mx"),
    FormatRow("nvfp4", "NVFP4", 4.5, "nvfp4"),
    FormatRow("fp8_e4m3_tensor", "FP8 E4M3 per-tensor", 8, "fp8"),
    FormatRow("fp8_e4m3_channel", "FP8 E4M3 per-channel", 8, "fp8"),
    FormatRow("int8_channel", "INT8 per-channel", 8, "int8"),
)
FORMAT_BY_KEY = {f.key: f for f in FORMATS}
MODES = ("w", "wa")  # weights only; weights + activations (every matmul input)


def _recipe_dg(fmt: str, x: bool, w: bool, scale_mode: str = "floor"):
  spec = mx_jax.OperandSpec(fmt, scale_mode=scale_mode)
  return mx_jax.dot_general(mx_jax.Recipe(f"ptq_{fmt}_{scale_mode}_{'x' if x else ''}{'w' if w else ''}",
                                          x=spec if x else None, w=spec if w else None,
                                          compute_dtype="float32"))


def dot_generals(key: str, mode: str, scale_mode: str = "floor") -> tuple[Callable, Callable]:
  """(dense_dg, attn_dg) for format row ``key`` and ``mode`` in MODES. ``scale_mode`` (MX rows only): the
  E8M0 shared-exponent rule, "floor" (OCP MX v1.0, the default) or "rceil"/"ceil"/"even" (mx_jax options)."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
  wa = mode == "wa"
  plain = lax.dot_general
  if key == "fp32":
    return plain, plain
  if key == "bf16":
    q = Quantizer("bf16")
    return FakeQuantDot(q if wa else None, q), (FakeQuantDot(q, q) if wa else plain)
  if key in ("fp8_e4m3_channel", "int8_channel"):
    kind = "fp8" if key.startswith("fp8") else "int8"
    per_t, per_c = Quantizer(kind), Quantizer(kind, per_channel=True)
    return FakeQuantDot(per_t if wa else None, per_c), (FakeQuantDot(per_t, per_t) if wa else plain)
  fmt = "fp8_e4m3" if key == "fp8_e4m3_tensor" else key
  if key not in FORMAT_BY_KEY:
    raise ValueError(f"unknown format row {key!r}; one of {list(FORMAT_BY_KEY)}")
  if scale_mode != "floor" and FORMAT_BY_KEY[key].family != "mx":
    raise ValueError(f"scale_mode applies to MX rows only, not {key!r}")
  return (_recipe_dg(fmt, wa, True, scale_mode),
          _recipe_dg(fmt, True, True, scale_mode) if wa else plain)


# --------------------------------------------------------------------------- FP8 paper §4.3 configs
BIASES = (7, 8, 9, 10)


@dataclasses.dataclass(frozen=True)
class Fp8Config:
  """E4M3 on every GEMM input (W+A, attention included), optionally also on the residual stream."""

  scaling: str        # "tensor" (per-tensor current scaling) or "bias7".."bias10" (plain casts)
  residual: bool      # also cast the residual stream (after every sub-block) to FP8

  @property
  def quantizer(self) -> Quantizer:
    return Quantizer("fp8") if self.scaling == "tensor" else PlainCast(int(self.scaling[4:]))

  def hooks(self) -> dict:
    """Keyword arguments for the model constructors (dot_general, attn_dot_general, residual_q, ...)."""
    q = self.quantizer
    dg = FakeQuantDot(q, q)
    kw = dict(dot_general=dg, attn_dot_general=dg)
    if self.residual:
      kw.update(residual_q=q, residual_q_sublayers=True)
    return kw


def fp8_configs(biases: Sequence[int] = BIASES) -> list[Fp8Config]:
  return [Fp8Config(s, r) for r in (False, True) for s in ["tensor"] + [f"bias{b}" for b in biases]]
