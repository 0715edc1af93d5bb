"""Public transforms: quantize, dequantize, fake_quantize (pure functions; jit/vmap/grad/sharding safe).

``quantize`` validates its arguments and dispatches on the format's kind: OCP MX blocks (mx_block.py),
NVFP4 (nvfp4.py) or per-tensor / per-channel FP8 (fp8_tensor.py). ``fake_quantize(x) =
dequantize(quantize(x))`` in x's dtype with a straight-through gradient (d/dx = identity).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mx_jax import _bits, fp8_tensor, mx_block, nvfp4
from mx_jax.formats import Format, get_format
from mx_jax.packing import pack as _pack
from mx_jax.packing import unpack as _unpack
from mx_jax.qarray import QArray

GRANULARITIES = ("block", "tensor", "channel")


def _check_array(x: Any, name: str = "x") -> jax.Array:
  if isinstance(x, QArray):
    raise TypeError(f"{name} is already a QArray; dequantize it first")
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array (float32, bfloat16, float16, ...); got dtype {x.dtype}")
  return jnp.asarray(x)


def _check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise TypeError(f"{name} must be an int; got {axis!r}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}={axis} is out of range for an array of rank {ndim} (allowed: {-ndim}..{ndim - 1})")
  return int(axis) % ndim


def _check_options(f: Format, block_size, scale_mode, rounding, key, granularity):
  if rounding not in _bits.ROUNDINGS:
    raise ValueError(f"rounding must be one of {_bits.ROUNDINGS}; got {rounding!r}")
  if rounding == "stochastic" and key is None:
    raise ValueError("rounding='stochastic' needs key= (a jax.random key)")
  if scale_mode not in mx_block.SCALE_MODES:
    raise ValueError(f"scale_mode must be one of {mx_block.SCALE_MODES}; got {scale_mode!r}")
  if f.kind != "mx" and scale_mode != "floor":
    raise ValueError(f"scale_mode={scale_mode!r} applies to MX formats only; {f.name} takes the default 'floor'")
  if granularity is not None and granularity not in GRANULARITIES:
    raise ValueError(f"granularity must be one of {GRANULARITIES} or None; got {granularity!r}")
  if f.kind == "tensor":
    if block_size is not None:
      raise ValueError(f"block_size does not apply to per-tensor format {f.name!r}; use granularity=")
    if granularity == "block":
      raise ValueError(f"granularity must be 'tensor' or 'channel' for {f.name!r}; got 'block'")
    return None, granularity or "tensor"
  if granularity not in (None, "block"):
    raise ValueError(f"granularity must be 'block' for block format {f.name!r}; got {granularity!r}")
  bs = f.block_size if block_size is None else block_size
  if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs not in f.allowed_block_sizes:
    raise ValueError(f"block_size for {f.name!r} must be one of {f.allowed_block_sizes}; got {block_size!r}")
  return int(bs), "block"


def quantize(x: jax.Array, fmt: str | Format, *, axis: int = -1, block_size: int | None = None,
             scale_mode: str = "floor", rounding: str = "nearest_even", key: jax.Array | None = None,
             granularity: str | None = None, margin: int = 0, power_of_two: bool = False,
             saturate: bool = True, scale: jax.Array | None = None, amax: jax.Array | None = None,
             packed: bool = False) -> QArray:
  """Quantizes ``x`` to ``fmt`` along ``axis`` and returns a QArray.

  MX formats: blocks of ``block_size`` (default 32) along ``axis``, E8M0 scale by ``scale_mode``, elements
  by ``rounding``, saturated. ``nvfp4``: blocks of 16, E4M3 block scales, FP32 tensor scale (``amax``
  overrides the tensor amax). ``fp8_*``: per-tensor (or ``granularity='channel'``: amax reduced along
  ``axis``) scale = max/amax/2^margin, or the given ``scale`` (delayed scaling). ``packed`` stores FP4/FP6
  at their true bit width.
  """
  x = _check_array(x)
  f = get_format(fmt)
  bs, gran = _check_options(f, block_size, scale_mode, rounding, key, granularity)
  if x.ndim == 0 and f.kind != "tensor":
    raise ValueError(f"x must have rank >= 1 for block format {f.name!r}")
  if f.kind != "tensor" and scale is not None:
    raise ValueError(f"scale= applies to per-tensor fp8 formats only, not {f.name!r}")
  if f.kind == "mx" and amax is not None:
    raise ValueError(f"amax= applies to nvfp4 and fp8 formats, not {f.name!r}")
  if gran == "channel" and x.ndim == 0:
    raise ValueError("granularity='channel' needs x of rank >= 1")
  ax = _check_axis(axis, x.ndim) if (f.kind != "tensor" or gran == "channel") else None
  if gran == "tensor" and scale is not None and jnp.ndim(scale) != 0:
    raise ValueError(f"scale must be a scalar for granularity='tensor'; got shape {jnp.shape(scale)}")
  for name, v in (("margin", margin),):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 64:
      raise ValueError(f"{name} must be an int in [0, 64]; got {v!r}")
  return _quantize_jit(x, key, scale, amax, f.name, ax, bs, gran, scale_mode, rounding, int(margin),
                       bool(power_of_two), bool(saturate), bool(packed))


@functools.partial(jax.jit, static_argnums=tuple(range(4, 14)))
def _quantize_jit(x, key, scale, amax, fmt, ax, bs, gran, scale_mode, rounding, margin, power_of_two,
                  saturate, packed):
  f = get_format(fmt)
  if f.kind == "tensor":
    if scale is None:
      red = dict(axis=ax, keepdims=True) if gran == "channel" else {}
      a = fp8_tensor.finite_amax(x, **red) if amax is None else jnp.asarray(amax)
      s = fp8_tensor.compute_scale(a, f.elem, margin, power_of_two)
    else:
      s = jnp.asarray(scale, jnp.float32)
    v, dec = fp8_tensor.fp8_quantize(x, s, f.elem, rounding, key, saturate)
    q = QArray(_bits.to_elem_dtype(v, f.elem), dec, None, f.name, ax, tuple(x.shape), None, False)
    return _pack(q) if packed else q
  if f.kind == "nvfp4":
    v, s, ts = nvfp4.nvfp4_quantize_blocks(x, ax, bs, rounding, key, amax=amax)
    q = QArray(_bits.to_elem_dtype(v, f.elem), s, ts, f.name, ax, tuple(x.shape), bs, False)
  else:
    v, sb = mx_block.mx_quantize_blocks(x, f.elem, ax, bs, scale_mode, rounding, key)
    q = QArray(_bits.to_elem_dtype(v, f.elem), mx_block.scale_bytes_to_e8m0(sb), None, f.name, ax,
               tuple(x.shape), bs, False)
  return _pack(q) if packed else q


def dequantize(q: QArray, dtype: Any = jnp.float32) -> jax.Array:
  """Decodes ``q`` to ``dtype`` (exact in float32, then one rounding to ``dtype``); original shape."""
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray; got {type(q).__name__}")
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating dtype; got {dtype}")
  return _dequantize_jit(q, dtype)


@functools.partial(jax.jit, static_argnums=(1,))
def _dequantize_jit(q, dtype):
  q = _unpack(q)
  f = q.format
  v = _bits.from_elem_dtype(q.data, f.elem)
  if f.kind == "tensor":
    out = v * q.scales
  elif f.kind == "nvfp4":
    out = nvfp4.nvfp4_dequantize_blocks(v, q.scales, q.tensor_scale, q.axis, q.block_size)
  else:
    out = mx_block.mx_dequantize_blocks(v, mx_block.e8m0_to_bytes(q.scales), q.axis, q.block_size)
  if q.axis is not None and out.shape[q.axis] != q.shape[q.axis]:
    out = jax.lax.slice_in_dim(out, 0, q.shape[q.axis], axis=q.axis)
  return out.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fake_quantize_ste(x, key, arrays, opts):
  kw = dict(opts)
  fmt = kw.pop("fmt")
  return dequantize(quantize(x, fmt, key=key, **arrays, **kw), x.dtype)


def _fq_fwd(x, key, arrays, opts):
  return _fake_quantize_ste(x, key, arrays, opts), arrays


def _fq_bwd(opts, arrays, g):
  return g, None, jax.tree.map(jnp.zeros_like, arrays)  # straight-through for x; scale/amax get none


_fake_quantize_ste.defvjp(_fq_fwd, _fq_bwd)


def fake_quantize(x: jax.Array, fmt: str | Format, *, key: jax.Array | None = None, **kwargs) -> jax.Array:
  """dequantize(quantize(x, fmt, **kwargs)) in x.dtype; gradient is straight-through (identity in x).

  Takes the same keyword arguments as ``quantize``; ``scale`` / ``amax`` arrays get zero gradient.
  """
  x = _check_array(x)
  f = get_format(fmt)
  arrays = {k: kwargs.pop(k) for k in ("scale", "amax") if kwargs.get(k) is not None}
  kwargs.pop("scale", None), kwargs.pop("amax", None), kwargs.pop("packed", None)  # packing: same values
  # Validate eagerly so errors name the argument (inside custom_vjp they would surface at trace time).
  _check_options(f, kwargs.get("block_size"), kwargs.get("scale_mode", "floor"),
                 kwargs.get("rounding", "nearest_even"), key, kwargs.get("granularity"))
  return _fake_quantize_ste(x, key, arrays, tuple(sorted(dict(kwargs, fmt=f.name).items())))
