"""Quantized ``dot_general`` with a custom VJP: all three training GEMMs in low precision.

Each GEMM quantizes its two operands along *its own* contraction axes (six quantizations per layer; see
recipes.py), from the high-precision tensors saved for the backward pass. The GEMM reads the quantized
values in ``recipe.compute_dtype`` (bf16 holds every MX/FP8/NVFP4 value exactly: at most 8 significant
bits) and accumulates in FP32; per-tensor factors (FP8 ``scale_inv``, NVFP4's tensor scale) are applied
to the FP32 output, as a real FP8 GEMM does. Contraction over several axes blocks the flattened axes.

Delayed scaling and telemetry live in a ``state`` pytree whose cotangent *is* the new state (Flax's
``_overwrite_with_gradient`` convention), so it updates inside a jitted train step with no side effects.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Mapping
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.layout import Layout, with_layout_constraint
from jax.sharding import NamedSharding, PartitionSpec

from mx_jax import _bits, fp8_tensor, mx_block, nvfp4, scaling, telemetry
from mx_jax._blocks import from_blocks, to_blocks
from mx_jax.formats import get_format
from mx_jax.qarray import QArray
from mx_jax.quantize import quantize
from mx_jax.recipes import OperandSpec, Recipe, recipe as get_recipe

# GEMM operands use the float-scaling / FPU-rounding MX path (mx_block.mx_fake_quantize_fast): same bits
# as the exact integer path except for FP32-subnormal inputs on flushing backends. Set False to force the
# integer path everywhere.
FAST_OPERANDS = True
# Kernel-path operands quantized in their own layout, then moved to the kernels' (rest..., K) layout as 1-byte
# elements (False: transposed in the input dtype first, then quantized; kept to measure both on a GPU).
KERNEL_QUANT_IN_PLACE = True
# On a GPU, kernel-path operands quantized along their last axis with at least this many elements go through the
# Pallas MX quantize kernel (kernels/mx_quantize.py: one pass, bit for bit the spec path; XLA splits it into a
# block-max fusion and a quantize fusion). None: XLA's fast path for all.
KERNEL_OPERAND_QUANT_MIN = 1 << 20
# The same along a non-last axis: the cast-transpose kernel (kernels/mx_cast_transpose.py) writes the operand
# quantized along that axis with it moved last, the kernels' layout (XLA: block max, quantize, then a transpose of
# the 1-byte elements). A gradient quantized along its last axis and the axes just before it (a Dense layer's, or
# attention's dS / dO) gets both from one read of it. False: XLA's path for these.
KERNEL_OPERAND_CAST_TRANSPOSE = True
# Kernel modes whose operands take the Pallas quantizers ("interpret" too in the tests: the same bits).
PALLAS_QUANT_MODES = ("mgpu",)

# Pin the emulated GEMM's operands to row-major layouts on GPU: "in" (the high-precision operand), "out" (its
# fake-quantized copy), both ("in,out") or neither (""). See _pinned.
PIN_OPERAND_LAYOUT = "in"
_PIN_BACKENDS = ("gpu",)

_TENSOR_OF = {"x": "x", "x_wgrad": "x", "w": "w", "w_dgrad": "w", "g_dgrad": "g", "g_wgrad": "g"}


# ----------------------------------------------------------------------------------------------- state
def init_state(rec: Recipe) -> dict[str, Any]:
  """Zero state for ``rec``: {"x"|"w"|"g": {"amax_history", "scale"}} and {"telemetry": {op: stats}}."""
  st: dict[str, Any] = {}
  for t in rec.delayed_tensors:
    s = scaling.init_delayed(rec.amax_history_len)
    st[t] = {"amax_history": s.amax_history, "scale": s.scale}
  if rec.telemetry:
    st["telemetry"] = {op: jnp.zeros((telemetry.SIZE,), jnp.float32)
                       for op, spec in rec.operands.items() if spec is not None}
  return st


def _updated(entry, amax, spec: OperandSpec, rec: Recipe):
  s = scaling.DelayedScalingState(entry["amax_history"], entry["scale"])
  n = scaling.update_delayed(s, amax, spec.fmt, margin=spec.margin, algo=rec.amax_algo)
  return {"amax_history": n.amax_history, "scale": n.scale}


# ------------------------------------------------------------------------------------------ operands
def _content_key(x: jax.Array, salt: str) -> jax.Array:
  """A PRNG key derived from the tensor's bits and a stable salt (stochastic rounding without RNG
  plumbing: deterministic for a given tensor, so a resumed run repeats itself exactly)."""
  h = jnp.sum(_bits.f32_bits(x) * jnp.uint32(2654435761), dtype=jnp.uint32)
  return jax.random.fold_in(jax.random.key(zlib.crc32(salt.encode()), impl="unsafe_rbg"), h)


def _flatten_axes(x: jax.Array, axes: Sequence[int]):
  """Moves ``axes`` to the end and merges them: returns (2-D-or-more array, inverse function)."""
  axes = tuple(a % x.ndim for a in axes)
  rest = tuple(a for a in range(x.ndim) if a not in axes)
  perm = rest + axes
  xt = jnp.transpose(x, perm)
  lead = xt.shape[:len(rest)]
  tail = xt.shape[len(rest):]
  flat = xt.reshape(lead + (math.prod(tail),))
  inv = np.argsort(perm)

  def unflatten(y):
    return jnp.transpose(y.reshape(lead + tail), inv)

  return flat, unflatten


def _merge_axes(x: jax.Array, axes: Sequence[int]):
  """Merges the contraction ``axes`` into one: returns (array, merged axis index, inverse function).

  In place (a reshape: no data movement) when the axes are adjacent and ascending, the common case (one
  axis; a (B, S, K) activation's (B, S) in a weight gradient); otherwise moved to the end first.
  """
  axes = tuple(a % x.ndim for a in axes)
  a0 = axes[0]
  if axes == tuple(range(a0, a0 + len(axes))):
    shape = x.shape
    merged = x.reshape(shape[:a0] + (math.prod(shape[a0:a0 + len(axes)]),) + shape[a0 + len(axes):])
    return merged, a0, lambda y: y.reshape(shape)
  flat, unflatten = _flatten_axes(x, axes)
  return flat, flat.ndim - 1, unflatten


def quantize_operand(x: jax.Array, spec: OperandSpec | None, axes: Sequence[int], *, scale=None,
                     key=None, salt: str = "", want_stats: bool = False, dtype=jnp.float32):
  """Quantizes ``x`` along ``axes`` (its contraction axes in this GEMM), blocks in the order of ``axes``.

  Returns (values in ``dtype`` without per-tensor factors — exact in float32 and bfloat16 for every
  format —, per-tensor factor or None, telemetry vector or None). Works on the element values directly
  (no code packing, no transposition for adjacent axes); the QArray for telemetry is built only when
  ``want_stats``.
  """
  if spec is None or len(axes) == 0:
    return x.astype(dtype), None, None
  f = get_format(spec.fmt)
  if spec.rounding == "stochastic" and key is None:
    key = _content_key(x, salt + spec.fmt)
  stats = None
  if f.kind == "tensor":  # one scale for the whole tensor: the axes don't matter
    s = scale if scale is not None else fp8_tensor.compute_scale(fp8_tensor.finite_amax(x), f.elem,
                                                                  spec.margin)
    v, post = fp8_tensor.fp8_quantize(x, s, f.elem, spec.rounding, key, saturate=True, fast=FAST_OPERANDS)
    if want_stats:
      stats = telemetry.quant_stats(x, quantize(x, f, scale=s, rounding=spec.rounding, key=key))
    return v.astype(dtype), post, stats
  m, ax, unmerge = _merge_axes(x, axes)
  n = m.shape[ax]
  bs = spec.block_size or f.block_size
  if f.kind == "nvfp4":
    v, sc, ts = nvfp4.nvfp4_quantize_blocks(m, ax, bs, spec.rounding, key, fast=FAST_OPERANDS)
    vb = to_blocks(v, ax, bs) * jnp.expand_dims(sc.astype(jnp.float32), ax + 1)
    v, post = from_blocks(vb, ax), ts
  elif spec.rounding == "nearest_even" and FAST_OPERANDS:
    v, post = mx_block.mx_fake_quantize_fast(m, f.elem, ax, bs, spec.scale_mode), None
  else:
    v, sb = mx_block.mx_quantize_blocks(m, f.elem, ax, bs, spec.scale_mode, spec.rounding, key)
    v, post = mx_block.mx_dequantize_blocks(v, sb, ax, bs), None
  if v.shape[ax] != n:
    v = lax.slice_in_dim(v, 0, n, axis=ax)
  if want_stats:
    q = quantize(m, f, axis=ax, block_size=spec.block_size, scale_mode=spec.scale_mode,
                 rounding=spec.rounding, key=key)
    stats = telemetry.quant_stats(m, q)
  return unmerge(v.astype(dtype)), post, stats


def quantize_operand_q(x: jax.Array, spec: OperandSpec, axes: Sequence[int], *, key=None, salt: str = "",
                       pallas_quant: bool = False):
  """(QArray, the tensor it quantizes, its quantized axis, {x's kept axis: its axis}): ``x`` quantized along its
  contraction ``axes`` merged into one, in place (a free reshape when the axes are adjacent; see ``_merge_axes``).

  RNE MX operands take the fast path (block amax, x * 2^-e rounded by the FPU; same bits as ``quantize`` on
  inputs without FP32 subnormals, as the XLA GEMM path's operands). The kernels' (rest..., K) layout is made
  afterwards from the 1-byte elements (``mx_dot_general``), not by transposing the wider input first.
  ``pallas_quant``: large RNE MX operands quantized along their last axis take the Pallas quantize kernel
  (``KERNEL_OPERAND_QUANT_MIN``; the same bits); along another axis, the cast-transpose kernel, which returns
  the operand with that axis moved last (the tensor, axis and mapping returned describe that layout).
  """
  f = get_format(spec.fmt)
  bs = spec.block_size or f.block_size
  if KERNEL_QUANT_IN_PLACE:
    m, ax, where = _merged_operand(x, axes)
  else:  # the layout first, then quantize along the last axis (kept to compare both on a GPU)
    m, _ = _flatten_axes(x, axes)
    rest = [d for d in range(x.ndim) if d not in tuple(a % x.ndim for a in axes)]
    ax, where = m.ndim - 1, {d: i for i, d in enumerate(rest)}
  if spec.rounding == "stochastic" and key is None:
    key = _content_key(x, salt + spec.fmt)
  big = pallas_quant and _pallas_quantizable(spec, m.size)
  if big and ax == m.ndim - 1:
    from kernels import mx_quantize as pallas_mx_quantize  # the function (kernels/__init__.py)
    q = pallas_mx_quantize(m, f.name, block_size=bs, scale_mode=spec.scale_mode, impl="pallas")
  elif big and KERNEL_OPERAND_CAST_TRANSPOSE:
    from kernels.mx_cast_transpose import mx_cast_transpose
    q = mx_cast_transpose(m, f.name, axis=ax, block_size=bs, scale_mode=spec.scale_mode, impl="pallas")[1]
    return _moved_last(q, m, ax, where)
  elif f.kind == "mx" and spec.rounding == "nearest_even" and FAST_OPERANDS:
    data, scales = mx_block.mx_quantize_fast(m, f.elem, ax, bs, spec.scale_mode)
    q = QArray(data, scales, None, f.name, ax, tuple(m.shape), bs, False)
  else:
    q = quantize(m, f, axis=ax, block_size=spec.block_size, scale_mode=spec.scale_mode, rounding=spec.rounding,
                 key=key)
  return q, m, ax, where


def _pallas_quantizable(spec: OperandSpec, size: int) -> bool:
  """Whether an operand of ``size`` elements goes through the Pallas quantizers (RNE MX; the kernel GEMM path only
  admits 32-element blocks, see ``_kernel_mode``)."""
  return (get_format(spec.fmt).kind == "mx" and spec.rounding == "nearest_even"
          and KERNEL_OPERAND_QUANT_MIN is not None and size >= KERNEL_OPERAND_QUANT_MIN)


def _moved_last(q: QArray, m: jax.Array, ax: int, where: dict):
  """A ``quantize_operand_q`` result for ``q``, which quantizes the merged operand ``m`` along ``ax`` with that
  axis moved last (the cast-transpose kernel's layout): the moved tensor, its last axis, {x's kept axis: its axis}."""
  return q, jnp.moveaxis(m, ax, -1), m.ndim - 1, {d: (i if i < ax else i - 1) for d, i in where.items()}


def _dual_quantized(g: jax.Array, spec: OperandSpec, row_axes: Sequence[int], col_axes: Sequence[int]):
  """``g`` quantized for two GEMMs at once, or None: along its last axis (``row_axes``) and along the adjacent
  axes just before it (``col_axes``, merged), from one read by the cast-transpose kernel. Returns the two
  ``quantize_operand_q`` results (row, col), the same bits; None when the axes are not of that shape or the
  operand is not one for the Pallas quantizers."""
  nd = g.ndim
  row_axes = tuple(sorted(a % nd for a in row_axes))
  col_axes = tuple(a % nd for a in col_axes)
  if (not KERNEL_OPERAND_CAST_TRANSPOSE or row_axes != (nd - 1,) or not col_axes
      or col_axes != tuple(range(nd - 1 - len(col_axes), nd - 1)) or not _pallas_quantizable(spec, g.size)):
    return None
  from kernels.mx_cast_transpose import mx_cast_transpose
  f = get_format(spec.fmt)
  m, ax, where = _merged_operand(g, col_axes)
  row, col = mx_cast_transpose(m, f.name, axis=ax, rowwise=True, block_size=spec.block_size or f.block_size,
                               scale_mode=spec.scale_mode, impl="pallas")
  row = dataclasses.replace(row, data=row.data.reshape(g.shape[:-1] + row.data.shape[-1:]),
                            scales=row.scales.reshape(g.shape[:-1] + row.scales.shape[-1:]), axis=nd - 1,
                            shape=tuple(g.shape))
  return (row, g, nd - 1, {d: d for d in range(nd - 1)}), _moved_last(col, m, ax, where)


# --------------------------------------------------------------------------------------- dimensions
def _kept(ndim, contract, batch):
  return [a for a in range(ndim) if a not in contract and a not in batch]


def _grad_dims(dn, x_ndim, y_ndim, x_is_lhs: bool):
  """For d/dx of dot_general(lhs, rhs): dims of the GEMM g · y, and the permutation back to x's layout.

  Returns (g_contract, y_contract, g_batch, y_batch, out_perm).
  """
  (lc, rc), (lb, rb) = dn
  lc, rc, lb, rb = map(list, (lc, rc, lb, rb))
  if x_is_lhs:
    xc, yc, xb, yb = lc, rc, lb, rb
  else:
    xc, yc, xb, yb = rc, lc, rb, lb
  x_kept, y_kept = _kept(x_ndim, xc, xb), _kept(y_ndim, yc, yb)
  nb = len(xb)
  # Output layout of the forward GEMM: batch, lhs kept, rhs kept.
  if x_is_lhs:
    ans_y = list(range(nb + len(x_kept), nb + len(x_kept) + len(y_kept)))
  else:
    ans_y = list(range(nb, nb + len(y_kept)))
  ans_b = list(range(nb))
  # Result of dot_general(g, y, ((ans_y, y_kept), (ans_b, yb))): batch, g kept (= x kept), y kept
  # (= y's contract dims, i.e. x's contract dims in y's order). Map back to x's axis order.
  xc_by_y = [xc[i] for i in np.argsort(yc)] if yc else []
  out_perm = np.argsort(list(xb) + x_kept + xc_by_y)
  return ans_y, y_kept, ans_b, yb, tuple(int(i) for i in out_perm)


def _grad_sharding(x, perm):
  """The sharding of d/dx's GEMM output (before its transpose by ``perm``): x's own, as JAX's dot_general
  transpose rule gives it. Needed under explicit sharding, where a GEMM contracting a sharded axis (the
  weight gradient over a data-parallel batch) must be told its output sharding; None where no mesh is set."""
  xs = jax.typeof(x).sharding
  if xs is None:
    return None
  if xs.mesh.empty:  # x unsharded (e.g. a weight): replicated over the current mesh, if one is set
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh._any_axis_explicit:
      return None
    return NamedSharding(mesh, PartitionSpec(*[None] * x.ndim))
  if not xs.mesh._any_axis_explicit:
    return None
  unsorted = np.argsort(perm)
  return xs.update(spec=xs.spec.update(partitions=tuple(xs.spec.partitions[o] for o in unsorted)))


# ------------------------------------------------------------------------------------------ the GEMM
def _gemm(a, b, dims, post_a, post_b, out_sharding=None):
  out = lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, out_sharding=out_sharding)
  for p in (post_a, post_b):
    if p is not None:
      out = out * p
  return out


def _operand_dtype(rec: Recipe):
  cdt = jnp.dtype(rec.compute_dtype)
  if cdt == jnp.bfloat16 and jax.default_backend() == "cpu":
    return jnp.dtype(jnp.float32)  # XLA:CPU has no bf16 x bf16 -> f32 batched dot; the values are exact either way
  return cdt


def _kernel_mode(rec: Recipe, sa: OperandSpec | None, sb: OperandSpec | None) -> str | None:
  """"mgpu" / "interpret" when this GEMM runs on the block-scaled Pallas kernel, "native" on Blackwell's
  block-scaled tensor cores (MXFP8, ``impl="auto"``), None for the XLA GEMM.

  The kernel takes two MX operands with 32-element blocks (per-tensor FP8 and NVFP4 GEMMs stay on XLA).
  ``impl="auto"``: the kernel on Hopper only; ``"pallas"``: also elsewhere, in the kernel interpreter.
  """
  if rec.impl in ("xla", "scaled_dot") or sa is None or sb is None:
    return None
  fa, fb = get_format(sa.fmt), get_format(sb.fmt)
  if fa.kind != "mx" or fb.kind != "mx" or (sa.block_size or 32) != 32 or (sb.block_size or 32) != 32:
    return None
  from mx_jax.matmul import _NATIVE_FMTS, on_blackwell
  if rec.impl == "auto" and on_blackwell():  # block-scaled tensor cores (jax.nn.scaled_matmul) for MXFP8
    return "native" if sa.fmt in _NATIVE_FMTS and sb.fmt in _NATIVE_FMTS else None
  from kernels import mx_matmul
  if mx_matmul.on_hopper():
    return "mgpu"
  return "interpret" if rec.impl == "pallas" else None


def _native_fp8(rec: Recipe, sa: OperandSpec | None, sb: OperandSpec | None):
  """(dtype_a, dtype_b) when this GEMM reads real FP8 operands (XLA's FP8 GEMM: cuBLASLt on Hopper, FP8
  tensor cores with their reduced-precision accumulation), None to read them as bf16 (emulation, FP32
  accumulation). Per-tensor FP8 operands only; ``impl="auto"`` on a GPU or ``"pallas"``; not E5M2 x E5M2
  (no such Hopper GEMM)."""
  if rec.impl in ("xla", "scaled_dot") or sa is None or sb is None:
    return None
  fa, fb = get_format(sa.fmt), get_format(sb.fmt)
  if fa.kind != "tensor" or fb.kind != "tensor" or fa.elem.mbits == fb.elem.mbits == 2:
    return None
  if rec.impl == "auto" and jax.default_backend() != "gpu":
    return None
  return fa.elem.dtype, fb.elem.dtype


def _kernel_gemm(a, b, dims, sa, sb, salt_a, salt_b, mode, want_stats, out_dtype=jnp.float32, pre_a=None):
  """The GEMM on the Pallas kernel: both operands quantized in place along their (merged) contraction axes and
  contracted per 32-block with FP32 accumulation (MX DotGeneral); same output layout as lax.dot_general.
  ``out_dtype``: the caller's final dtype; the kernel's epilogue rounds its FP32 result to it (RNE, the same
  bits as an FP32 output converted afterwards, without writing and re-reading the FP32 array). ``pre_a``: ``a``
  already quantized along ``ac`` (a ``quantize_operand_q`` result, see ``_dual_quantized``)."""
  from mx_jax.matmul import mx_dot_general
  (ac, bc), (ab, bb) = dims
  pq = mode in PALLAS_QUANT_MODES  # on the GPU (the interpreter keeps the XLA path: same bits, quicker on a CPU)
  qa, fa, axa, wa = pre_a or quantize_operand_q(a, sa, ac, salt=salt_a, pallas_quant=pq)
  qb, fb, axb, wb = quantize_operand_q(b, sb, bc, salt=salt_b, pallas_quant=pq)
  dn = (((axa,), (axb,)), (tuple(wa[d % a.ndim] for d in ab), tuple(wb[d % b.ndim] for d in bb)))
  out = mx_dot_general(qa, qb, dn, out_dtype=out_dtype, impl="native" if mode == "native" else "mgpu",
                       interpret=mode == "interpret")
  stats = (telemetry.quant_stats(fa, qa), telemetry.quant_stats(fb, qb)) if want_stats else (None, None)
  return out, stats


def _scaled_dot_ok(rec: Recipe, sa: OperandSpec | None, sb: OperandSpec | None) -> bool:
  """True when this GEMM runs as ``lax.scaled_dot`` (``impl="scaled_dot"``): both operands MXFP8 (E4M3/E5M2,
  32-blocks, RNE)."""
  if rec.impl != "scaled_dot" or sa is None or sb is None:
    return False
  return all(get_format(s.fmt).kind == "mx" and get_format(s.fmt).elem.name in ("e4m3", "e5m2")
             and (s.block_size or 32) == 32 and s.rounding == "nearest_even" for s in (sa, sb))


def _merged_layout(ndim, axes):
  """Where ``_merge_axes`` puts things: (new ndim, merged axis, {old kept axis: new axis})."""
  axes = tuple(a % ndim for a in axes)
  rest = [d for d in range(ndim) if d not in axes]
  ax = axes[0] if axes == tuple(range(axes[0], axes[0] + len(axes))) else len(rest)
  return len(rest) + 1, ax, {d: (i if i < ax else i + 1) for i, d in enumerate(rest)}


def _merged_operand(x, axes):
  """(x with its contraction ``axes`` merged into one, the merged axis, {old kept axis: new axis})."""
  m, ax, _ = _merge_axes(x, axes)
  n, ax2, where = _merged_layout(x.ndim, axes)
  assert (n, ax2) == (m.ndim, ax)
  return m, ax, where


def _lax_scaled_dot() -> bool:
  """lax.scaled_dot itself, or (XLA:CPU, which lacks its decomposition's batched bf16 dot) the same math
  written out in float32."""
  return jax.default_backend() != "cpu"


def _free_dims(ndim, contract, batch):
  return [d for d in range(ndim) if d != contract and d not in batch]


def _merge_free(q, sc, contract, batch):
  """(q, scales, contract axis, batch axes) with q's free dims (adjacent, ascending) merged into one."""
  free = _free_dims(q.ndim, contract, batch)
  if len(free) == 1:
    return q, sc, contract, batch
  f0, nf = free[0], len(free)
  shape = lambda t: t.shape[:f0] + (math.prod(t.shape[f0:f0 + nf]),) + t.shape[f0 + nf:]
  fix = lambda d: d if d < f0 else d - nf + 1
  return q.reshape(shape(q)), sc.reshape(shape(sc)), fix(contract), tuple(fix(d) for d in batch)


def _scaled_dot_dims_ok(a, b, dims) -> bool:
  """XLA's scaled_dot takes one free dim per operand: true when each side's free dims are adjacent."""
  (ac, bc), (ab, bb) = dims
  for x, c, bt in ((a, ac, ab), (b, bc, bb)):
    n, ax, where = _merged_layout(x.ndim, c)
    free = _free_dims(n, ax, tuple(where[d % x.ndim] for d in bt))
    if not free or free != list(range(free[0], free[0] + len(free))):
      return False
  return True


def _scaled_gemm(a, b, dims, sa, sb, want_stats):
  """The GEMM as XLA's block-scaled dot: each operand quantized along its (merged) contraction axis in place
  to FP8 elements + E8M0 scales, then ``lax.scaled_dot`` (on Hopper XLA fuses the dequantization into the
  GEMM's operand load, so the GEMM reads 1 byte per element instead of bf16's 2); FP32 result."""
  (ac, bc), (ab, bb) = dims
  ops, stats = [], []
  for x, axes, spec in ((a, ac, sa), (b, bc, sb)):
    m, ax, where = _merged_operand(x, axes)
    f = get_format(spec.fmt)
    q, s = mx_block.mx_quantize_fast(m, f.elem, ax, 32, spec.scale_mode)
    ops.append((q, s, ax, where))
    stats.append(telemetry.quant_stats(m, quantize(m, f, axis=ax, scale_mode=spec.scale_mode))
                 if want_stats else None)
  (qa, sca, axa, wa), (qb, scb, axb, wb) = ops
  ba, bb_ = tuple(wa[d] for d in ab), tuple(wb[d] for d in bb)
  out_shape = ([qa.shape[d] for d in ba] + [n for d, n in enumerate(qa.shape) if d != axa and d not in ba]
               + [n for d, n in enumerate(qb.shape) if d != axb and d not in bb_])
  # XLA's scaled_dot wants one free dim per operand: merge adjacent free dims in place.
  qa, sca, axa, ba = _merge_free(qa, sca, axa, ba)
  qb, scb, axb, bb_ = _merge_free(qb, scb, axb, bb_)
  # scaled_dot wants operands of equal rank: lead the shorter one with unit free dims (a free reshape).
  pad_a, pad_b = max(qb.ndim - qa.ndim, 0), max(qa.ndim - qb.ndim, 0)
  qa, sca = (lax.expand_dims(t, tuple(range(pad_a))) for t in (qa, sca))
  qb, scb = (lax.expand_dims(t, tuple(range(pad_b))) for t in (qb, scb))
  dn = (((axa + pad_a,), (axb + pad_b,)), (tuple(d + pad_a for d in ba), tuple(d + pad_b for d in bb_)))
  if not _lax_scaled_dot():
    deq = lambda q, sc, ax: mx_block.mx_dequantize_blocks(q.astype(jnp.float32), mx_block.e8m0_to_bytes(sc), ax, 32)
    out = lax.dot_general(deq(qa, sca, dn[0][0][0]), deq(qb, scb, dn[0][1][0]), dn,
                          preferred_element_type=jnp.float32)
  else:
    out = lax.scaled_dot(qa, qb, lhs_scale=sca, rhs_scale=scb, dimension_numbers=dn,
                         preferred_element_type=jnp.float32)
  return out.reshape(out_shape), tuple(stats)


def _quantized_gemm(a, b, dims, rec: Recipe, state, op_a: str, op_b: str, out_sharding=None,
                    out_dtype=jnp.float32, pre_a=None):
  """One training GEMM: operands ``a`` (recipe operand ``op_a``) and ``b`` quantized along their contraction
  dims in ``dims``; the result (FP32 accumulation; in ``out_dtype`` from the kernels, else FP32 for the caller
  to cast) and the two telemetry vectors (or None). ``pre_a``: see ``_kernel_gemm`` (kernel path only)."""
  sa, sb = rec.operands[op_a], rec.operands[op_b]
  (ac, bc), _ = dims
  mode = _kernel_mode(rec, sa, sb)
  if mode == "native" and math.prod(a.shape[d] for d in ac) % 32:
    mode = None  # cuDNN's block-scaled GEMM wants whole 32-blocks along K: emulate this one
  if mode is not None:
    return _kernel_gemm(a, b, dims, sa, sb, op_a, op_b, mode, rec.telemetry, out_dtype, pre_a)
  if _scaled_dot_ok(rec, sa, sb) and _scaled_dot_dims_ok(a, b, dims):
    return _scaled_gemm(a, b, dims, sa, sb, rec.telemetry)
  fp8 = _native_fp8(rec, sa, sb)
  cdt = _operand_dtype(rec)
  a, b = _pinned(a, "in"), _pinned(b, "in")
  qa, pa, ta = quantize_operand(a, sa, ac, scale=_scale_of(state, op_a, rec), salt=op_a,
                                want_stats=rec.telemetry, dtype=fp8[0] if fp8 else cdt)
  qb, pb, tb = quantize_operand(b, sb, bc, scale=_scale_of(state, op_b, rec), salt=op_b,
                                want_stats=rec.telemetry, dtype=fp8[1] if fp8 else cdt)
  return _gemm(_pinned(qa, "out"), _pinned(qb, "out"), dims, pa, pb, out_sharding), (ta, tb)


def _pinned(x: jax.Array, where: str) -> jax.Array:
  """``x`` held in the default (row-major) layout when PIN_OPERAND_LAYOUT names ``where``.

  Without it XLA:GPU's layout assignment, free to pick any layout for the elementwise quantization, lays a GPT's
  whole residual stream out tokens-minor and pays in transposes (1.04 ms of transpose fusions per 2-layer step
  against 0.14 ms pinned, BENCHMARKS.md session 5). The pin lowers to XLA's LayoutConstraint custom call; it
  changes no value. Off the GPU it is skipped (XLA:CPU keeps row-major anyway, and the call splits fusions).
  """
  if where not in PIN_OPERAND_LAYOUT.split(",") or x.ndim < 2 or jax.default_backend() not in _PIN_BACKENDS:
    return x
  return with_layout_constraint(x, Layout(tuple(range(x.ndim))))


def _delayed_spec(rec: Recipe, t: str) -> OperandSpec:
  """The operand spec that defines tensor ``t``'s delayed scaling (its first delayed use)."""
  return next(s for op, s in rec.operands.items()
              if _TENSOR_OF[op] == t and s is not None and s.scaling == "delayed")


def _scale_of(state, op, rec):
  spec = rec.operands[op]
  t = _TENSOR_OF[op]
  if spec is not None and spec.scaling == "delayed":
    return state[t]["scale"]
  return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _qdot(lhs, rhs, state, dn, rec, out_dtype, out_sharding):
  """Returns (output, state passed through). The pass-through threads the state into a later use of the same
  layer; its cotangent (that later use's new state) is merged into this use's by max (see _qdot_bwd)."""
  return _quantized_gemm(lhs, rhs, dn, rec, state, "x", "w", out_sharding, out_dtype)[0].astype(out_dtype), state


def _qdot_fwd(lhs, rhs, state, dn, rec, out_dtype, out_sharding):
  out, (ta, tb) = _quantized_gemm(lhs, rhs, dn, rec, state, "x", "w", out_sharding, out_dtype)
  own = {t: fp8_tensor.finite_amax(x) for t, x in (("x", lhs), ("w", rhs)) if t in state}
  tel = {k: v for k, v in (("x", ta), ("w", tb)) if v is not None}
  return (out.astype(out_dtype), state), (lhs, rhs, state, own, tel)


def _qdot_bwd(dn, rec, out_dtype, out_sharding, res, cts):
  del out_sharding  # each gradient GEMM's output takes its primal's sharding (_grad_sharding)
  lhs, rhs, state, own, tel = res
  g, later = cts
  tel = dict(tel)

  pre = _dual_g(g, dn, lhs, rhs, rec)

  def one_side(x, y, x_is_lhs, g_op, y_op):
    g_c, y_c, g_b, y_b, perm = _grad_dims(dn, x.ndim, y.ndim, x_is_lhs)
    out, (tg, ty) = _quantized_gemm(g, y, ((g_c, y_c), (g_b, y_b)), rec, state, g_op, y_op,
                                    _grad_sharding(x, perm), x.dtype, pre.get(g_op))
    tel.update({k: v for k, v in ((g_op, tg), (y_op, ty)) if v is not None})
    return jnp.transpose(out, perm).astype(x.dtype)

  dlhs = one_side(lhs, rhs, True, "g_dgrad", "w_dgrad")
  drhs = one_side(rhs, lhs, False, "g_wgrad", "x_wgrad")
  if "g" in state:
    own = {**own, "g": fp8_tensor.finite_amax(g)}
  # The state's cotangent is the new state (Flax's overwrite-with-gradient). A later use of the same state
  # (``later``: its new state; zeros when there is none) saw the same old state, so this step's amax is the
  # max over the uses: merged here instead of summed by autodiff.
  st_bar = dict(state)
  for t, a in own.items():
    st_bar[t] = _updated(state[t], jnp.maximum(a, later[t]["amax_history"][0]), _delayed_spec(rec, t), rec)
  if rec.telemetry:
    st_bar["telemetry"] = {**state["telemetry"], **tel}
  return dlhs, drhs, st_bar


_qdot.defvjp(_qdot_fwd, _qdot_bwd)


def _dual_g(g, dn, lhs, rhs, rec: Recipe) -> dict:
  """{recipe operand: pre-quantized g} when both gradient GEMMs run on the kernel with the Pallas quantizers
  and one quantization of g (the one along its last axis) and the other (along the axes just before it) can
  share a read (``_dual_quantized``); else {}."""
  sg, sg2 = rec.operands["g_dgrad"], rec.operands["g_wgrad"]
  if sg is None or sg != sg2:
    return {}
  if any(_kernel_mode(rec, sg, rec.operands[y]) not in PALLAS_QUANT_MODES for y in ("w_dgrad", "x_wgrad")):
    return {}
  c_l = _grad_dims(dn, lhs.ndim, rhs.ndim, True)[0]
  c_r = _grad_dims(dn, rhs.ndim, lhs.ndim, False)[0]
  for row_op, row_c, col_op, col_c in (("g_dgrad", c_l, "g_wgrad", c_r), ("g_wgrad", c_r, "g_dgrad", c_l)):
    both = _dual_quantized(g, sg, row_c, col_c)
    if both is not None:
      return {row_op: both[0], col_op: both[1]}
  return {}


# ----------------------------------------------------------------------------------------- public
def _check_dn(dimension_numbers, lhs, rhs):
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = (tuple(int(a) % n for a in t) for t, n in
                      ((lc, lhs.ndim), (rc, rhs.ndim), (lb, lhs.ndim), (rb, rhs.ndim)))
  except (TypeError, ValueError) as e:
    raise ValueError(f"dimension_numbers must be ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)); "
                     f"got {dimension_numbers!r}") from e
  if len(lc) != len(rc) or len(lb) != len(rb):
    raise ValueError(f"dimension_numbers pair unequal numbers of axes: {dimension_numbers!r}")
  for a, b in zip(lc, rc):
    if lhs.shape[a] != rhs.shape[b]:
      raise ValueError(f"contracting dims differ: lhs axis {a} has {lhs.shape[a]}, rhs axis {b} has "
                       f"{rhs.shape[b]}")
  return ((lc, rc), (lb, rb))


def quantized_dot_general(lhs, rhs, dimension_numbers, rec: Recipe | str, state: dict | None = None,
                          precision=None, preferred_element_type=None, *, return_state: bool = False,
                          out_sharding=None):
  """``lax.dot_general`` with every training GEMM quantized per ``rec`` (see module docstring).

  ``state`` (from ``init_state``) is needed for delayed scaling / telemetry; its gradient is the new state.
  ``return_state``: return (output, state to pass to the next use of the same layer in this step). Threading
  the state through the uses makes its gradient the max-merged new state (amax of the step = max over the
  uses) instead of the sum that autodiff would form if the uses shared ``state`` directly.
  ``out_sharding``: as ``lax.dot_general``'s (explicit-sharding meshes: needed when a contracted axis is
  sharded); the gradient GEMMs give each gradient its primal's sharding, as JAX's own transpose rule does.
  """
  del precision  # the recipe fixes the GEMM's input precision; accumulation is always FP32
  if not isinstance(return_state, bool):
    raise TypeError(f"return_state must be a bool; got {type(return_state).__name__}")
  if state is not None and not isinstance(state, Mapping):
    raise TypeError(f"state must be a dict from mx_jax.init_state (or None); got {type(state).__name__}")
  if out_sharding is not None and not isinstance(out_sharding, (NamedSharding, PartitionSpec)):
    raise TypeError(f"out_sharding must be a NamedSharding, a PartitionSpec or None; got "
                    f"{type(out_sharding).__name__}")
  rec = get_recipe(rec)
  for name, v in (("lhs", lhs), ("rhs", rhs)):
    if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating):
      raise TypeError(f"{name} must be a floating-point array; got dtype {jnp.asarray(v).dtype}")
  lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
  dn = _check_dn(dimension_numbers, lhs, rhs)
  out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else \
      jnp.result_type(lhs.dtype, rhs.dtype)
  if rec.is_noop:
    cdt = jnp.dtype(rec.compute_dtype)
    cdt = jnp.promote_types(cdt, jnp.result_type(lhs.dtype, rhs.dtype)) if rec.name == "fp32" else cdt
    out = lax.dot_general(lhs.astype(cdt), rhs.astype(cdt), dn, preferred_element_type=jnp.float32,
                          out_sharding=out_sharding)
    return (out.astype(out_dtype), state) if return_state else out.astype(out_dtype)
  if state is None:
    if rec.delayed_tensors:
      raise ValueError(f"recipe {rec.name!r} uses delayed scaling: pass state= (see mx_jax.init_state) or "
                       "use the Flax layers, which keep it in the '_overwrite_with_gradient' collection")
    state = init_state(rec) if rec.telemetry else {}
  out, state_out = _qdot_jit(lhs, rhs, state, dn, rec, out_dtype, out_sharding)
  return (out, state_out) if return_state else out


_qdot_jit = jax.jit(_qdot, static_argnums=(3, 4, 5, 6))


def dot_general(rec: Recipe | str):
  """A callable with ``jax.lax.dot_general``'s signature running ``rec``'s quantized GEMMs.

  For stateless recipes (current scaling, MX, NVFP4); drop into ``nn.Dense(dot_general=...)``,
  ``nn.DenseGeneral``, ``nn.Einsum`` or ``jnp.einsum(..., _dot_general=...)``. Delayed-scaling and
  telemetry recipes need state: use ``mx_jax.flax.MxDotGeneral`` (``dot_general_cls=``) instead.
  """
  rec = get_recipe(rec)
  if rec.delayed_tensors or rec.telemetry:
    raise ValueError(f"recipe {rec.name!r} keeps state (delayed scaling or telemetry): use "
                     "mx_jax.flax.MxDotGeneral as dot_general_cls, or quantized_dot_general(..., state=)")

  return RecipeDotGeneral(rec)


@dataclasses.dataclass(frozen=True)
class RecipeDotGeneral:
  """Hashable dot_general callable for a stateless recipe (so jnp.einsum can take it as a static arg)."""

  recipe: Recipe

  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    out_sharding = kwargs.pop("out_sharding", None)
    if kwargs:
      raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    return quantized_dot_general(lhs, rhs, dimension_numbers, self.recipe, None, precision,
                                 preferred_element_type, out_sharding=out_sharding)
