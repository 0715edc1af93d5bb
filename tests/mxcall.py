"""Thin, cached jax.jit wrappers around the public mx_jax transforms, for the oracle tests.

mx_jax's eager path compiles op by op for every new shape (seconds on CPU), so the property and specials
tests call the transforms under one jit per (format, options), which is also how training code uses them.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax


@functools.lru_cache(maxsize=None)
def _jfake(fmt, items):
  kw = dict(items)
  return jax.jit(lambda x: mx_jax.fake_quantize(x, fmt, **kw))


@functools.lru_cache(maxsize=None)
def _jquant(fmt, items):
  kw = dict(items)
  return jax.jit(lambda x: mx_jax.quantize(x, fmt, **kw))


@functools.lru_cache(maxsize=None)
def _jfake_key(fmt, items):
  kw = dict(items)
  return jax.jit(lambda x, key: mx_jax.fake_quantize(x, fmt, key=key, **kw))


@functools.lru_cache(maxsize=None)
def _jquant_key(fmt, items):
  kw = dict(items)
  return jax.jit(lambda x, key: mx_jax.quantize(x, fmt, key=key, **kw))


@functools.lru_cache(maxsize=None)
def _jdeq(dtype):
  return jax.jit(lambda q: mx_jax.dequantize(q, dtype))


def fake(x, fmt, key=None, **kw):
  """np.asarray(jit(fake_quantize)(x))."""
  items = tuple(sorted(kw.items()))
  if key is None:
    return np.asarray(_jfake(fmt, items)(jnp.asarray(x)))
  return np.asarray(_jfake_key(fmt, items)(jnp.asarray(x), key))


def quant(x, fmt, key=None, **kw):
  items = tuple(sorted(kw.items()))
  if key is None:
    return _jquant(fmt, items)(jnp.asarray(x))
  return _jquant_key(fmt, items)(jnp.asarray(x), key)


def deq(q, dtype=jnp.float32):
  return np.asarray(_jdeq(jnp.dtype(dtype))(q))
