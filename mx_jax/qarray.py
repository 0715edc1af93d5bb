"""QArray: a quantized tensor as a JAX pytree.

Layout: ``data`` keeps the input's layout with the quantized ``axis`` zero-padded to a multiple of the block
(packed along that axis when ``packed``); ``scales`` has the input's shape with ``axis`` replaced by the
number of blocks (MX, NVFP4), or the per-tensor / per-channel shape (FP8). Dequantized value:
``elem * scale`` (and ``* tensor_scale`` for NVFP4). ``fmt``, ``axis``, ``shape``, ``block_size`` and
``packed`` are static (pytree aux data), so QArrays pass through jit, vmap, scan and shard_map.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
  data: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None
  fmt: str = dataclasses.field(metadata=dict(static=True))
  axis: int | None = dataclasses.field(metadata=dict(static=True))
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  block_size: int | None = dataclasses.field(metadata=dict(static=True))
  packed: bool = dataclasses.field(default=False, metadata=dict(static=True))

  @property
  def format(self):
    from mx_jax.formats import get_format
    return get_format(self.fmt)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    """Bytes actually held (data + scales + tensor scale): the true storage size when packed."""
    total = self.data.size * self.data.dtype.itemsize + self.scales.size * self.scales.dtype.itemsize
    if self.tensor_scale is not None:
      total += self.tensor_scale.size * self.tensor_scale.dtype.itemsize
    return int(total)

  @property
  def packed_nbytes(self) -> int:
    """Storage size at the format's bit width (what ``pack`` gives), whether or not this copy is packed."""
    bits = self.format.elem.bits
    total = (self.data.size if not self.packed else self.data.size * 8 // bits) * bits // 8
    total += self.scales.size * self.scales.dtype.itemsize
    if self.tensor_scale is not None:
      total += self.tensor_scale.size * self.tensor_scale.dtype.itemsize
    return int(total)

  def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
    from mx_jax.quantize import dequantize
    return dequantize(self, dtype)

  def __repr__(self) -> str:
    return (f"QArray(fmt={self.fmt!r}, shape={self.shape}, axis={self.axis}, block_size={self.block_size}, "
            f"packed={self.packed}, data={self.data.dtype}{tuple(self.data.shape)}, "
            f"scales={self.scales.dtype}{tuple(self.scales.shape)})")
