"""Shared pieces of the Pallas TPU (Mosaic) kernels: mode selection, bit-exact input decoding, lane tricks.

Layout convention: a kernel tile is 2D (rows on sublanes, a flat run of elements on the 128 lanes). An MX block
of ``bs`` elements is ``bs`` adjacent lanes (bs a power of two dividing 128 or a multiple of 128), so nothing is
reshaped across the lane axis: per-block reductions are XOR butterflies of lane rotations (``pltpu.roll``), and
per-block values are compacted to / expanded from one lane per block by a 0/1 matmul on the MXU (exact: the
values are integers <= 255 or bf16-exact numbers, and each output sums a single nonzero product).

Off-TPU the kernels run in the TPU interpreter (``pltpu.InterpretParams``: buffers start as NaN, so an unwritten
output element shows). Float inputs always travel as their bits (same-width unsigned ints) and are widened to
float32 bits with integer ops; XLA:CPU would flush FP32/bf16 subnormals in converts, pads and selects.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from kernels._dispatch import as_bits, uint_of  # noqa: F401  (the kernels' float-as-bits I/O)
from kernels._dispatch import round_up  # noqa: F401

LANES = 128
# Rows of a tile are a multiple of 32: uint8 arrays are tiled (32, 128) on TPU.
ROW_ALIGN = 32


def on_tpu() -> bool:
  return jax.default_backend() == "tpu"


def interpret() -> bool:
  """Interpret (CPU) unless on a TPU; MX_JAX_TPU_INTERPRET=1 forces it."""
  return (not on_tpu()) or os.environ.get("MX_JAX_TPU_INTERPRET", "0") not in ("", "0")


_LOWER_FOR_TPU = [False]


def interpret_arg():
  """The pallas_call ``interpret=`` argument."""
  if _LOWER_FOR_TPU[0] or not interpret():
    return False
  return pltpu.InterpretParams()


def compiler_params(*sems: str):
  return pltpu.CompilerParams(dimension_semantics=tuple(sems))


def lower_for_tpu(fn, *avals, device_kind: str = "TPU v6 lite") -> str:
  """Lowers ``fn`` for the TPU platform on any host (runs every Pallas->Mosaic lowering rule; the Mosaic
  layout passes themselves run in libtpu at compile time and are *not* checked). Returns the StableHLO text."""
  from jax.sharding import AbstractDevice, AbstractMesh
  ad = AbstractDevice(device_kind=device_kind, num_cores=1, platform="tpu")
  mesh = AbstractMesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=ad)
  _LOWER_FOR_TPU[0] = True
  try:
    with jax.sharding.use_abstract_mesh(mesh):
      low = jax.jit(fn).trace(*avals).lower(lowering_platforms=("tpu",))
    return low.as_text()
  finally:
    _LOWER_FOR_TPU[0] = False


def f32_bits_of(bits: jax.Array, src_dtype) -> jax.Array:
  """int32 FP32 bit pattern of the value whose ``src_dtype`` bits are ``bits`` (exact, subnormals included)."""
  src_dtype = jnp.dtype(src_dtype)
  if src_dtype == jnp.float32:
    return lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.int32)
  b = bits.astype(jnp.int32)
  if src_dtype == jnp.bfloat16:
    return b << 16
  if src_dtype == jnp.float16:
    sign = (b >> 15) << 31
    e5 = (b >> 10) & 0x1F
    man = b & 0x3FF
    normal = ((e5 + 112) << 23) | (man << 13)
    special = (0xFF << 23) | (man << 13)
    p = 31 - lax.clz(jnp.maximum(man, 1))  # subnormal: man * 2^-24 = 2^(p-24) * (man / 2^p)
    sub = ((p + 103) << 23) | ((man << (23 - p)) & 0x7FFFFF)
    mag = jnp.where(e5 == 0x1F, special, jnp.where(e5 > 0, normal, jnp.where(man > 0, sub, 0)))
    return sign | mag
  raise TypeError(f"unsupported input dtype {src_dtype}")


def f32_of_bits(b32: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(b32, jnp.float32)


def lane_iota(shape) -> jax.Array:
  return lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


def _partner(v, lane, s: int):
  """v at lane (lane XOR s) (s a power of two smaller than the lane count)."""
  n = v.shape[-1]
  left = pltpu.roll(v, s, v.ndim - 1)       # left[i] = v[i - s]
  right = pltpu.roll(v, n - s, v.ndim - 1)  # right[i] = v[i + s]
  return jnp.where((lane & s) == 0, right, left)


def group_max(v: jax.Array, group: int) -> jax.Array:
  """Max over aligned groups of ``group`` lanes, broadcast to every lane of the group (log2(group) steps)."""
  lane = lane_iota(v.shape)
  s = 1
  while s < group:
    v = jnp.maximum(v, _partner(v, lane, s))
    s *= 2
  return v


def lane_tree_sum(v: jax.Array, length: int, stride: int = 1) -> jax.Array:
  """Pairwise tree sum of the ``length // stride`` entries v[:, 0], v[:, stride], v[:, 2 stride], ... (length a
  power of two, pairs (2i, 2i+1) first) -> (rows, 1). Within a 128-lane chunk by rotations (the sum of a pair
  lands on its lower lane), then across chunks by vreg-aligned slices. Each addition is one IEEE a + b."""
  rows, n = v.shape
  d = stride
  while d < min(length, LANES):
    v = v + pltpu.roll(v, n - d, 1)  # lane i += lane i + d
    d *= 2
  if length <= LANES:
    return v[:, 0:1]
  chunks = [v[:, c * LANES:c * LANES + 1] for c in range(0, length // LANES, max(1, stride // LANES))]
  while len(chunks) > 1:
    chunks = [chunks[i] + chunks[i + 1] for i in range(0, len(chunks), 2)]
  return chunks[0]


def onehot(rows: int, cols: int, group: int, transpose: bool = False) -> jax.Array:
  """bf16 (rows, cols) 0/1 matrix: [c, j] = (c == group * j) (compaction), or with ``transpose`` [j, c] =
  (c // group == j) (expansion)."""
  if transpose:
    r = lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
    c = lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
    return (c // group == r).astype(jnp.bfloat16)
  r = lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
  c = lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
  return (r == group * c).astype(jnp.bfloat16)


def mxu_select(v_int: jax.Array, sel: jax.Array) -> jax.Array:
  """Exact v (ints in [0, 255]) @ sel (0/1, one nonzero per output) on the MXU -> int32."""
  out = jnp.dot(v_int.astype(jnp.float32).astype(jnp.bfloat16), sel, preferred_element_type=jnp.float32)
  return out.astype(jnp.int32)


def row_tile(r: int, target_rows: int) -> int:
  """Rows per tile: the full row count when it is small, else a multiple of ROW_ALIGN."""
  if r <= ROW_ALIGN:
    return r
  return max(ROW_ALIGN, min(target_rows, r) // ROW_ALIGN * ROW_ALIGN)
