"""Reshaping a tensor into blocks along one axis, and back (private).

``to_blocks`` zero-pads ``axis`` to a multiple of ``bs`` and splits it into (nblocks, bs) in place, so the
block's elements sit on axis ``axis + 1``; ``from_blocks`` merges them and crops to the original length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def padded_len(n: int, bs: int) -> int:
  return -(-n // bs) * bs


def pad_axis(x: jax.Array, axis: int, bs: int) -> jax.Array:
  n = x.shape[axis]
  extra = padded_len(n, bs) - n
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def to_blocks(x: jax.Array, axis: int, bs: int) -> jax.Array:
  x = pad_axis(x, axis, bs)
  shape = x.shape[:axis] + (x.shape[axis] // bs, bs) + x.shape[axis + 1:]
  return x.reshape(shape)


def from_blocks(xb: jax.Array, axis: int, length: int | None = None) -> jax.Array:
  shape = xb.shape[:axis] + (xb.shape[axis] * xb.shape[axis + 1],) + xb.shape[axis + 2:]
  x = xb.reshape(shape)
  if length is not None and length != x.shape[axis]:
    x = jax.lax.slice_in_dim(x, 0, length, axis=axis)
  return x
