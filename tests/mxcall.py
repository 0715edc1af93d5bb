"""Thin, cached jax.jit wrappers around the public mx_jax transforms, for the oracle tests.

The property and specials tests call the transforms inside one jax.jit per (format, options) -- how training
code uses them, and cheap to compile once per shape; the exhaustive tests call the public functions directly.
Array-valued options (key, scale, amax) are passed as traced arguments; the others are static.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax

_DYNAMIC = ("key", "scale", "amax")


def _split(kw):
  dyn = {k: v for k, v in kw.items() if k in _DYNAMIC and v is not None}
  static = tuple(sorted((k, v) for k, v in kw.items() if k not in dyn))
  return static, tuple(sorted(dyn)), tuple(dyn[k] for k in sorted(dyn))


@functools.lru_cache(maxsize=None)
def _jit(kind, fmt, static, dyn_names):
  fn = {"fake": mx_jax.fake_quantize, "quant": mx_jax.quantize}[kind]
  skw = dict(static)
  return jax.jit(lambda x, *dyn: fn(x, fmt, **skw, **dict(zip(dyn_names, dyn))))


@functools.lru_cache(maxsize=None)
def _jdeq(dtype):
  return jax.jit(lambda q: mx_jax.dequantize(q, dtype))


def fake(x, fmt, **kw):
  """np.asarray(jit(fake_quantize)(x, fmt, **kw))."""
  static, names, vals = _split(kw)
  return np.asarray(_jit("fake", fmt, static, names)(jnp.asarray(x), *vals))


def quant(x, fmt, **kw):
  static, names, vals = _split(kw)
  return _jit("quant", fmt, static, names)(jnp.asarray(x), *vals)


def deq(q, dtype=jnp.float32):
  return np.asarray(_jdeq(jnp.dtype(dtype))(q))
