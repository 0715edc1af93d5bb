"""RMSNorm and MXNorm, plain and fused with the MX cast (issue 8).

Public functions (pure JAX; ``impl="auto" | "xla" | "pallas"`` picks the Pallas kernels of ``kernels/`` on a
GPU and the XLA path elsewhere, see ``kernels._dispatch``):

  rms_norm(x, scale, eps)                          y = x * (rsqrt(mean(x^2) + eps) * scale), float32 math
  mx_norm(x, scale, eps, fmt, p, block_size)       the same with mean(x^2) replaced by MXNorm's estimate
  rms_norm_quantize(x, gain, fmt, ...) -> QArray   normalized tensor, already MX-quantized along the last axis
  mx_norm_quantize(x, gain, fmt, ...)  -> QArray
  rms_norm_fake_quantize / mx_norm_fake_quantize   dequantize(...) in x's dtype, differentiable
                                                   (straight-through the cast, exact backward of the norm)
  rms_estimate(x, p, block_size)                   MXNorm's per-row RMS estimate
  mx_norm_estimator_error(x=None, ...)             relative error of that estimate (Gaussian rows or real data)
  Flax: RMSNorm, MXNorm (linen; drop-in for flax.linen.RMSNorm: param "scale", same epsilon semantics) and
  RMSNormNNX, MXNormNNX (flax.nnx; drop-in for flax.nnx.RMSNorm).

MXNorm (row statistic from the block absmax values the MX cast computes anyway). For a row split into blocks
b = 1..B of k elements with absmax A_b:

    rms_est = c_p * ( (1/B) * sum_b A_b^p )^(1/p),       p = 2 (default) or p = 1,
    y       = x * rsqrt(rms_est^2 + eps) * scale.

Derivation of c_p. For i.i.d. X_i ~ N(0, s^2), A = max_{i<=k} |X_i| = s * M with M the max of k
half-normals, P(M <= t) = erf(t / sqrt 2)^k, so

    E[M^p] = integral_0^inf p t^(p-1) (1 - erf(t / sqrt 2)^k) dt.

Choosing c_p = E[M^p]^(-1/p) makes c_p^p * mean_b(A_b^p) an unbiased estimator of s^p: for p = 2 the
mean-square estimate c_2^2 * mean_b(A_b^2) is unbiased for s^2 = E[x^2] exactly (any number of blocks),
for p = 1 the RMS estimate c_1 * mean_b(A_b) is unbiased for s. The integral was evaluated once with
scipy.integrate.quad (absolute error < 1e-13) and the results are stored in ``MXNORM_C``;
``mxnorm_constant`` recomputes any entry with plain numpy (``_compute_c``) and the tests check both agree.
A last partial block (row length not a multiple of k) is averaged like a full one (a small bias).

Determinism (why the sums look the way they do). Every row statistic is a *pairwise tree sum* in element
order (pairs (2i, 2i+1) first) over the row zero-padded to ``k * next_pow2(ceil(n / k))``; IEEE addition is
commutative, so a tree of pair additions gives the same bits whatever the backend or tile shape. A mean is
``sum * RN(1/n)`` (what XLA makes of ``jnp.mean`` anyway); ``1/sqrt(ms + eps)`` is ``rsqrt_det``, Newton
steps made of IEEE multiplications and subtractions only (XLA:GPU's own f32 ``sqrt`` and ``/`` are not
IEEE-rounded, and ``rsqrt`` is approximate everywhere); a product that feeds an addition goes through
``_Arith.mul`` (an optimization barrier on XLA, ``mul.rn`` in the GPU kernels) so that no backend contracts
it into an FMA. With that the values do not depend on jit, fusion, vmap or the backend, and the
Pallas kernels reproduce this module's XLA path bit for bit (tests/test_kernels_norm.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mx_jax import _bits
from mx_jax.formats import get_format
from mx_jax.qarray import QArray

__all__ = [
    "rms_norm", "mx_norm", "rms_norm_quantize", "mx_norm_quantize", "rms_norm_fake_quantize",
    "mx_norm_fake_quantize", "rms_estimate", "mx_norm_estimator_error", "mxnorm_constant", "MXNORM_C",
    "RMSNorm", "MXNorm", "RMSNormNNX", "MXNormNNX",
]

# c_p = E[M^p]^(-1/p), M = max of k i.i.d. half-normal(1) variables; keys (p, k). scipy.integrate.quad.
MXNORM_C: dict[tuple[int, int], float] = {
    (1, 2): 0.886226925452758, (2, 2): 0.7816747855416964,
    (1, 4): 0.6827206229815845, (2, 4): 0.6362576662156902,
    (1, 8): 0.5607370531859308, (2, 8): 0.5378028052228933,
    (1, 16): 0.4814162543253121, (2, 16): 0.4688342448845424,
    (1, 32): 0.4260614641846185, (2, 32): 0.4185051047052006,
    (1, 64): 0.3851915771180554, (2, 64): 0.380310703605105,
    (1, 128): 0.3536620891079627, (2, 128): 0.35032229643692286,
    (1, 256): 0.32849077719673264, (2, 256): 0.32609842891026763,
}
_TREE_BLOCK = 32  # block used to lay out the RMSNorm tree sum (any power of two gives the same tree)


def _compute_c(p: int, k: int, upper: float = 14.0, steps: int = 1 << 16) -> float:
  """c_p = E[M^p]^(-1/p) by composite Simpson in float64 (no scipy needed); ~1e-12 accurate."""
  t = np.linspace(0.0, upper, steps + 1)
  erfc = np.array([math.erfc(v / math.sqrt(2.0)) for v in t])
  with np.errstate(divide="ignore"):  # log1p(-1) = -inf at t = 0, where 1 - erf^k = 1 exactly
    tail = -np.expm1(k * np.log1p(-erfc))  # 1 - erf^k, accurate where erf ~ 1
  f = p * t ** (p - 1) * tail
  h = upper / steps
  m = h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum())
  return float(m ** (-1.0 / p))


def mxnorm_constant(p: int, block_size: int) -> float:
  """The MXNorm constant c_p for blocks of ``block_size`` (stored table, else computed and cached)."""
  if p not in (1, 2):
    raise ValueError(f"p must be 1 or 2; got {p!r}")
  key = (int(p), int(block_size))
  if key not in MXNORM_C:
    MXNORM_C[key] = _compute_c(*key)
  return MXNORM_C[key]


# ----------------------------------------------------------------------------------------------------------
# Shared tile math (used verbatim by the Pallas kernels, which pass their own ``_Arith``).
# ----------------------------------------------------------------------------------------------------------


class _Arith:
  """The float operations whose rounding must not depend on the backend's code generator.

  ``mul``: a product that feeds an addition. XLA (CPU and GPU) contracts ``a * b + c`` inside a fusion into an
  FMA, so the same jnp code gives different bits eagerly, jitted, or fused differently; the product is put
  behind ``lax.optimization_barrier`` (the GPU kernels use ``mul.rn.f32``, which ptxas never contracts).
  ``div`` / ``sqrt``: IEEE round-to-nearest (Triton's own ``/`` and ``sqrt`` are approximate). XLA rewrites
  ``1 / sqrt(v)`` into its approximate ``rsqrt`` and ``a / broadcast(b)`` into ``a * (1 / b)``, so the
  divisor is made full-shape and goes behind the barrier too.
  """

  pair = "split"  # how tree pair sums are written (see pair_sum)

  def __init__(self, barrier: bool = True):
    self.barrier = barrier

  def mul(self, a, b):
    out = a * b
    return lax.optimization_barrier(out) if self.barrier else out

  def div(self, a, b):
    # The divisor is made full-shape: XLA rewrites ``a / broadcast(b)`` into ``a * (1 / b)``.
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    b = jnp.broadcast_to(b, jnp.broadcast_shapes(a.shape, b.shape))
    return a / (lax.optimization_barrier(b) if self.barrier else b)

  def sqrt(self, a):
    return lax.sqrt(a)


def _xla_arith() -> _Arith:
  return _Arith(barrier=True)


def _recip(n: int):
  """RN(1/n) in float32: means are ``sum * RN(1/n)`` (what XLA computes for jnp.mean too: it rewrites a
  division by a broadcast scalar into a multiplication by its reciprocal, also under vmap)."""
  return jnp.float32(np.float32(1.0) / np.float32(n))


def next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def pair_sum(v: jax.Array, axis: int = -1, how: str = "split") -> jax.Array:
  """v.shape[axis] == 2 -> the sum of its two entries (that axis removed), exactly ``a + b``.

  ``how="split"``: the two halves added (XLA and interpret mode). ``how="sum"``: a reduction over the
  length-2 axis; Triton reduces without an init value, so it is ``a + b`` bit for bit too (XLA would start
  from +0 and turn -0 + -0 into +0), and it lowers to in-register adds / shuffles instead of transposes.
  """
  axis = axis % v.ndim
  if how == "sum":
    return jnp.sum(v, axis=axis)
  a, b = jnp.split(v, 2, axis=axis)
  return (a + b).reshape(v.shape[:axis] + v.shape[axis + 1:])


def tree_sum_last(v: jax.Array, how: str = "split") -> jax.Array:
  """Pairwise tree sum over the last axis (length a power of two): v[2i] + v[2i+1], then again, ...

  Written with reshapes and length-2 pair sums so that the Triton lowering can run it.
  """
  n = v.shape[-1]
  if n & (n - 1):
    raise ValueError(f"tree_sum_last needs a power-of-two length; got {n}")
  while n > 1:
    v = pair_sum(v.reshape(v.shape[:-1] + (n // 2, 2)), how=how)
    n //= 2
  return v.reshape(v.shape[:-1])


def tile_sum(v: jax.Array, how: str = "split") -> jax.Array:
  """Tree sum of a blocked tile (..., nb_pow2, bs) over its last two axes (= tree over the flat row)."""
  return tree_sum_last(tree_sum_last(v, how), how)


def block_amax(xb: jax.Array) -> jax.Array:
  """Block absmax (..., nb) as float32 from the integer max of |x| bits (exact; NaN > Inf > finite)."""
  return lax.bitcast_convert_type(jnp.max(_bits.abs_bits(xb), axis=-1), jnp.float32)


_RSQRT_MAGIC = 0x5F375A86
RSQRT_ITERS = 4


def rsqrt_det(v: jax.Array, arith: _Arith) -> jax.Array:
  """1/sqrt(v) from IEEE multiplications and subtractions only (deterministic on every backend).

  XLA on a GPU computes f32 ``sqrt`` and ``/`` approximately (measured: 17% / 30% of results differ from
  IEEE on an H100), XLA:CPU exactly, Triton either way: an IEEE-only formula is the one that gives the
  same bits everywhere. Bit-trick start, then Newton steps y <- y * (1.5 - ((y v) y) / 2); within 2 ulp of
  1/sqrt(v) for normal v (73% exact); +Inf -> 0, 0 -> +Inf, NaN -> NaN. (v is ms + eps: keep eps >= 2^-126.)
  """
  v = v.astype(jnp.float32)
  y = lax.bitcast_convert_type(_RSQRT_MAGIC - (lax.bitcast_convert_type(v, jnp.int32) >> 1), jnp.float32)
  for _ in range(RSQRT_ITERS):
    t = arith.mul(arith.mul(y, v), y)  # (y v) y ~ 1: no intermediate leaves the normal range
    y = y * (jnp.float32(1.5) - t * jnp.float32(0.5))  # t/2 is exact: an FMA could not change it
  y = jnp.where(v == jnp.inf, jnp.float32(0.0), y)
  return jnp.where(v == 0, jnp.float32(jnp.inf), y)


def rms_inv_from_tile(xb: jax.Array, n: int, eps: float, arith: _Arith, exact_squares: bool) -> jax.Array:
  """1 / sqrt(mean(x^2) + eps) per row of a blocked float32 tile (zeros in the padding); shape (...,)."""
  sq = xb * xb if exact_squares else arith.mul(xb, xb)
  ms = arith.mul(tile_sum(sq, arith.pair), _recip(n))
  return rsqrt_det(ms + jnp.float32(eps), arith)


def mx_inv_from_tile(xb: jax.Array, nb: int, eps: float, p: int, c: float, arith: _Arith) -> jax.Array:
  """MXNorm: 1 / sqrt(rms_est^2 + eps) per row from the block absmax of a blocked float32 tile."""
  amax = block_amax(xb)  # (..., nb_pow2); padding blocks are 0
  if p == 2:
    m = arith.mul(tree_sum_last(arith.mul(amax, amax), arith.pair), _recip(nb))
    ms = arith.mul(jnp.float32(c * c), m)
  elif p == 1:
    m = arith.mul(tree_sum_last(amax, arith.pair), _recip(nb))
    t = m * jnp.float32(c)
    ms = arith.mul(t, t)
  else:
    raise ValueError(f"p must be 1 or 2; got {p!r}")
  return rsqrt_det(ms + jnp.float32(eps), arith)


def normalize_tile(xb: jax.Array, inv: jax.Array, gain: jax.Array | None) -> jax.Array:
  """y = x * (inv * gain) (flax's order), float32; inv broadcast over the tile's last two axes."""
  k = inv[..., None, None]
  if gain is not None:
    k = k * gain
  return xb * k


def rms_bwd_tile(xb, gain, dyb, inv, n: int, arith: _Arith):
  """RMSNorm backward on a blocked tile: (dx, per-element dgain contribution dy * x * inv).

  y = x * inv * g with inv = (mean(x^2) + eps)^(-1/2):  dx = inv * (h - x * (inv^2 * c)),
  h = g * dy, c = mean(h * x).
  """
  h = dyb if gain is None else arith.mul(gain, dyb)
  c = arith.mul(tile_sum(arith.mul(h, xb), arith.pair), _recip(n))
  k = arith.mul(inv * inv, c)[..., None, None]
  dx = inv[..., None, None] * (h - arith.mul(xb, jnp.broadcast_to(k, xb.shape)))
  dg = arith.mul(dyb, xb * inv[..., None, None])  # summed over rows afterwards
  return dx, dg


# ----------------------------------------------------------------------------------------------------------
# XLA path
# ----------------------------------------------------------------------------------------------------------


def _as_blocks(x2: jax.Array, bs: int) -> tuple[jax.Array, int, int]:
  """(R, n) float32 -> (R, nb_pow2, bs) zero-padded; returns (tile, nb, nb_pow2)."""
  n = x2.shape[-1]
  nb = -(-n // bs)
  nbp = next_pow2(nb)
  x2 = jnp.pad(x2, ((0, 0), (0, nbp * bs - n))) if nbp * bs != n else x2
  return x2.reshape(x2.shape[0], nbp, bs), nb, nbp


def _exact_squares(dtype) -> bool:
  """x*x is exact in float32 for inputs of at most 12 significand bits (bf16, f16, fp8)."""
  return jnp.finfo(dtype).nmant <= 11


def _check_x(x, name="x"):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[-1] == 0:
    raise ValueError(f"{name} must have rank >= 1 and a non-empty last axis; got shape {x.shape}")
  return x


def _check_gain(gain, n):
  if gain is None:
    return None
  gain = jnp.asarray(gain)
  if gain.shape != (n,):
    raise ValueError(f"scale/gain must have shape ({n},) (the last axis of x); got {gain.shape}")
  return gain


def _xla_norm_f32(x, gain, eps, kind, p, bs):
  """Normalized float32 (R, n) and the per-row inverse RMS (R,), on the XLA path."""
  n = x.shape[-1]
  x2 = x.reshape(-1, n).astype(jnp.float32)
  arith = _xla_arith()
  if kind == "rms":
    xb, nb, nbp = _as_blocks(x2, _TREE_BLOCK)
    inv = rms_inv_from_tile(xb, n, eps, arith, _exact_squares(x.dtype))
  else:
    xb, nb, nbp = _as_blocks(x2, bs)
    inv = mx_inv_from_tile(xb, nb, eps, p, mxnorm_constant(p, bs), arith)
  g = None if gain is None else gain.astype(jnp.float32)
  k = inv[:, None] if g is None else inv[:, None] * g
  return x2 * k, inv


def _resolve(impl):
  from kernels import _dispatch  # lazy: kernels imports mx_jax
  return _dispatch.resolve_impl(impl)


def _key(impl):
  from kernels import _dispatch
  return _dispatch.impl_key(impl)


def _norm_fwd_values(x, gain, eps, kind, p, bs, impl, out_dtype):
  """(y in out_dtype with x's shape, inv (R,)) by the chosen implementation."""
  if _resolve(impl) == "pallas":
    from kernels import norm_quantize as kn
    return kn.norm_pallas(x, gain, eps=eps, kind=kind, p=p, block_size=bs, out_dtype=out_dtype)
  y, inv = _xla_norm_f32(x, gain, eps, kind, p, bs)
  return y.reshape(x.shape).astype(out_dtype), inv


# ----- RMSNorm with an explicit backward (same formula for the XLA path and the kernel) -----


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _rms_norm(x, gain, eps, out_dtype, impl):
  return _norm_fwd_values(x, gain, eps, "rms", 2, _TREE_BLOCK, impl, out_dtype)[0]


def _rms_norm_fwd(x, gain, eps, out_dtype, impl):
  y, inv = _norm_fwd_values(x, gain, eps, "rms", 2, _TREE_BLOCK, impl, out_dtype)
  return y, (x, gain, inv)


def _rms_norm_bwd(eps, out_dtype, impl, res, dy):
  x, gain, inv = res
  dx, dg = rms_norm_bwd(x, gain, inv, dy, impl=impl)
  return dx, (None if gain is None else dg.astype(gain.dtype))


_rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def rms_norm_bwd(x, gain, inv, dy, *, impl="auto"):
  """RMSNorm backward: (dx in x.dtype, dgain float32 (n,)) from the saved per-row inverse RMS ``inv``.

  dgain's summation order over rows (the same in the kernel): rows split into ``bwd_groups(R)`` contiguous
  groups of C rows (zero-padded), each summed sequentially in row order, then a pairwise tree over groups.
  """
  if _resolve(impl) == "pallas":
    from kernels import norm_quantize as kn
    return kn.rms_norm_bwd_pallas(x, gain, inv, dy)
  n = x.shape[-1]
  arith = _xla_arith()
  xb, _, _ = _as_blocks(x.reshape(-1, n).astype(jnp.float32), _TREE_BLOCK)
  dyb, _, _ = _as_blocks(dy.reshape(-1, n).astype(jnp.float32), _TREE_BLOCK)
  gb = None
  if gain is not None:
    gb, _, _ = _as_blocks(gain.reshape(1, n).astype(jnp.float32), _TREE_BLOCK)
  dx, dg = rms_bwd_tile(xb, gb, dyb, inv, n, arith)
  dx = dx.reshape(dx.shape[0], -1)[:, :n].reshape(x.shape).astype(x.dtype)
  dg = dg.reshape(dg.shape[0], -1)[:, :n]
  return dx, dgain_groups(dg)


BWD_MAX_GROUPS = 256


def bwd_groups(r: int) -> tuple[int, int]:
  """(groups G, rows per group C) of the backward's gain-gradient sum; both powers of two, G * C >= r."""
  g = min(BWD_MAX_GROUPS, next_pow2(r))
  return g, next_pow2(-(-r // g))


def dgain_groups(dg_rows: jax.Array) -> jax.Array:
  """Sum (R, n) float32 per-row gain gradients: sequentially within each of G groups of C rows, then a
  pairwise tree over the groups (see ``rms_norm_bwd``)."""
  r, n = dg_rows.shape
  g, c = bwd_groups(r)
  if g * c != r:
    dg_rows = jnp.pad(dg_rows, ((0, g * c - r), (0, 0)))
  grouped = jnp.swapaxes(dg_rows.reshape(g, c, n), 0, 1)  # (C, G, n)
  acc = lax.scan(lambda a, row: (a + row, None), jnp.zeros((g, n), jnp.float32), grouped)[0]
  return tree_sum_last(acc.T)


def rms_norm(x, scale=None, eps: float = 1e-6, *, out_dtype=None, impl: str = "auto"):
  """RMSNorm over the last axis: ``x * (1/sqrt(mean(x^2) + eps) * scale)`` computed in float32.

  Same semantics as ``flax.linen.RMSNorm`` (which uses an approximate ``rsqrt`` and an unspecified
  reduction order; this one is deterministic, see the module docstring). Returns ``out_dtype`` (default
  x's dtype). Differentiable (explicit backward; a Pallas kernel on GPU).
  """
  x = _check_x(x)
  scale = _check_gain(scale, x.shape[-1])
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  return _rms_norm_jit(x, scale, float(eps), out_dtype, _key(impl))


_rms_norm_jit = jax.jit(_rms_norm, static_argnums=(2, 3, 4))


# ----- MXNorm -----


def _mx_norm_diff(x, gain, eps, p, bs):
  """Differentiable float formula of MXNorm (jnp.max: gradient split between tied maxima)."""
  n = x.shape[-1]
  x2 = x.reshape(-1, n).astype(jnp.float32)
  xb, nb, _ = _as_blocks(x2, bs)
  amax = jnp.max(jnp.abs(xb), axis=-1)[:, :nb]
  c = mxnorm_constant(p, bs)
  if p == 2:
    ms = (c * c) * jnp.mean(amax * amax, axis=-1)
  else:
    t = c * jnp.mean(amax, axis=-1)
    ms = t * t
  inv = lax.rsqrt(ms + eps)
  k = inv[:, None] if gain is None else inv[:, None] * gain.astype(jnp.float32)
  return (x2 * k).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _mx_norm(x, gain, eps, p, bs, out_dtype, impl):
  return _norm_fwd_values(x, gain, eps, "mx", p, bs, impl, out_dtype)[0]


def _mx_norm_fwd(x, gain, eps, p, bs, out_dtype, impl):
  return _mx_norm(x, gain, eps, p, bs, out_dtype, impl), (x, gain)


def _mx_norm_bwd(eps, p, bs, out_dtype, impl, res, dy):
  x, gain = res
  _, vjp = jax.vjp(lambda a, g: _mx_norm_diff(a, g, eps, p, bs), x, gain)
  dx, dg = vjp(dy.astype(jnp.float32))
  return dx.astype(x.dtype), (None if gain is None else dg.astype(gain.dtype))


_mx_norm.defvjp(_mx_norm_fwd, _mx_norm_bwd)


def _mx_block_size(fmt, block_size):
  f = get_format(fmt)
  if f.kind not in ("mx", "nvfp4"):
    raise ValueError(f"MXNorm needs a block format (MX or nvfp4); got {f.name!r}")
  bs = f.block_size if block_size is None else int(block_size)
  if bs not in f.allowed_block_sizes:
    raise ValueError(f"block_size for {f.name!r} must be one of {f.allowed_block_sizes}; got {block_size!r}")
  return f, bs


def mx_norm(x, scale=None, eps: float = 1e-6, fmt: str = "mxfp8_e4m3", p: int = 2,
            block_size: int | None = None, *, out_dtype=None, impl: str = "auto"):
  """MXNorm over the last axis: ``x * (1/sqrt(rms_est^2 + eps) * scale)``, float32 math.

  ``rms_est = c_p * mean_b(amax_b^p)^(1/p)`` over blocks of ``block_size`` (default: ``fmt``'s block) along
  the last axis. The backward is the exact derivative of this estimate formula.
  """
  x = _check_x(x)
  scale = _check_gain(scale, x.shape[-1])
  _, bs = _mx_block_size(fmt, block_size)
  if p not in (1, 2):
    raise ValueError(f"p must be 1 or 2; got {p!r}")
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  return _mx_norm_jit(x, scale, float(eps), int(p), bs, out_dtype, _key(impl))


_mx_norm_jit = jax.jit(_mx_norm, static_argnums=(2, 3, 4, 5, 6))


def rms_estimate(x, p: int = 2, block_size: int = 32) -> jax.Array:
  """MXNorm's RMS estimate per row (shape x.shape[:-1]), float32; no epsilon."""
  x = _check_x(x)
  n = x.shape[-1]
  xb, nb, _ = _as_blocks(x.reshape(-1, n).astype(jnp.float32), block_size)
  amax = block_amax(xb)[:, :nb]
  c = mxnorm_constant(p, block_size)
  est = c * (jnp.sqrt(jnp.mean(amax * amax, -1)) if p == 2 else jnp.mean(amax, -1))
  return est.reshape(x.shape[:-1])


def mx_norm_estimator_error(x: jax.Array | None = None, *, p: int = 2, block_size: int = 32,
                            rows: int = 4096, n: int = 4096, key: jax.Array | None = None) -> dict[str, float]:
  """Relative error of MXNorm's RMS estimate against the true RMS, ``est / rms - 1`` per row.

  With ``x=None``: i.i.d. Gaussian rows (``rows`` x ``n``, random scale per row). Pass real activations as
  ``x`` (any shape; rows are the last axis) to measure them instead. Returns mean (bias), std, rmse and
  max |error| over rows, plus the number of rows.
  """
  if x is None:
    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    sig = jnp.exp(jax.random.normal(k2, (rows, 1)))
    x = jax.random.normal(k1, (rows, n), jnp.float32) * sig
  x = _check_x(x)
  xf = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  rms = jnp.sqrt(jnp.mean(xf * xf, axis=-1))
  est = rms_estimate(xf, p, block_size)
  ok = rms > 0
  rel = jnp.where(ok, est / jnp.where(ok, rms, 1.0) - 1.0, 0.0)
  rel = np.asarray(rel)[np.asarray(ok)]
  return dict(mean=float(rel.mean()), std=float(rel.std()), rmse=float(np.sqrt((rel ** 2).mean())),
              max_abs=float(np.abs(rel).max()), rows=int(rel.size))


# ----------------------------------------------------------------------------------------------------------
# Fused with the MX cast
# ----------------------------------------------------------------------------------------------------------


def _quant_opts(fmt, block_size, scale_mode, rounding, key):
  from mx_jax.quantize import _check_options
  f = get_format(fmt)
  if f.kind not in ("mx", "nvfp4"):
    raise ValueError(f"fmt must be an MX format or 'nvfp4'; got {f.name!r}")
  bs, _ = _check_options(f, block_size, scale_mode, rounding, key, None)
  return f, bs


def _norm_quantize(x, gain, fmt, eps, kind, p, block_size, scale_mode, rounding, key, intermediate_dtype,
                   impl) -> QArray:
  x = _check_x(x)
  gain = _check_gain(gain, x.shape[-1])
  f, bs = _quant_opts(fmt, block_size, scale_mode, rounding, key)
  if kind == "mx" and p not in (1, 2):
    raise ValueError(f"p must be 1 or 2; got {p!r}")
  nbs = bs if kind == "mx" else _TREE_BLOCK
  idt = None if intermediate_dtype is None else jnp.dtype(intermediate_dtype)
  return _norm_quantize_jit(x, gain, key, f.name, float(eps), kind, int(p), nbs, bs, scale_mode, rounding, idt,
                            _key(impl))


@functools.partial(jax.jit, static_argnums=tuple(range(3, 13)))
def _norm_quantize_jit(x, gain, key, fmt, eps, kind, p, nbs, bs, scale_mode, rounding, intermediate_dtype,
                       impl):
  f = get_format(fmt)
  if _resolve(impl) == "pallas":
    from kernels import norm_quantize as kn
    return kn.norm_quantize_pallas(x, gain, f.name, eps=float(eps), kind=kind, p=p, norm_block=nbs,
                                   block_size=bs, scale_mode=scale_mode, rounding=rounding, key=key,
                                   intermediate_dtype=intermediate_dtype)
  from mx_jax.quantize import quantize
  y, _ = _xla_norm_f32(x, gain, float(eps), kind, p, nbs)
  y = y.reshape(x.shape)
  if intermediate_dtype is not None:
    y = _bits.as_f32(y.astype(intermediate_dtype))  # pinned: XLA may fold the rounding pair away
  return quantize(y, f.name, axis=-1, block_size=bs, scale_mode=scale_mode, rounding=rounding, key=key)


def rms_norm_quantize(x, gain=None, fmt: str = "mxfp8_e4m3", eps: float = 1e-6, *, block_size=None,
                      scale_mode: str = "floor", rounding: str = "nearest_even", key=None,
                      intermediate_dtype=None, impl: str = "auto") -> QArray:
  """RMSNorm of ``x`` (float32 math) quantized to ``fmt`` in blocks along the last axis -> QArray.

  Equals ``mx_jax.quantize(rms_norm(x, gain, eps, out_dtype=float32), fmt, axis=-1, ...)``: the float32
  normalized values are cast directly (pass ``intermediate_dtype=jnp.bfloat16`` to round them to bf16 first,
  as an unfused bf16 pipeline would). Not differentiable (see ``rms_norm_fake_quantize``).
  """
  return _norm_quantize(x, gain, fmt, eps, "rms", 2, block_size, scale_mode, rounding, key,
                        intermediate_dtype, impl)


def mx_norm_quantize(x, gain=None, fmt: str = "mxfp8_e4m3", eps: float = 1e-6, p: int = 2, *,
                     block_size=None, scale_mode: str = "floor", rounding: str = "nearest_even", key=None,
                     intermediate_dtype=None, impl: str = "auto") -> QArray:
  """MXNorm of ``x`` quantized to ``fmt`` (the norm's blocks are the cast's blocks) -> QArray."""
  return _norm_quantize(x, gain, fmt, eps, "mx", p, block_size, scale_mode, rounding, key,
                        intermediate_dtype, impl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fake_norm_q(x, gain, key, opts):
  kw = dict(opts)
  kind, out_dtype = kw.pop("kind"), kw.pop("out_dtype")
  fn = rms_norm_quantize if kind == "rms" else mx_norm_quantize
  if kind == "rms":
    kw.pop("p")
  q = fn(x, gain, key=key, **kw)
  from mx_jax.quantize import dequantize
  return dequantize(q, out_dtype)


def _fake_norm_q_fwd(x, gain, key, opts):
  return _fake_norm_q(x, gain, key, opts), (x, gain)


def _fake_norm_q_bwd(opts, res, dy):
  x, gain = res
  kw = dict(opts)
  if kw["kind"] == "rms":
    _, vjp = jax.vjp(lambda a, g: rms_norm(a, g, kw["eps"], out_dtype=jnp.float32, impl=kw["impl"]), x, gain)
  else:
    bs = _mx_block_size(kw["fmt"], kw["block_size"])[1]
    _, vjp = jax.vjp(lambda a, g: mx_norm(a, g, kw["eps"], kw["fmt"], kw["p"], bs, out_dtype=jnp.float32,
                                          impl=kw["impl"]), x, gain)
  dx, dg = vjp(dy.astype(jnp.float32))
  return dx, dg, None


_fake_norm_q.defvjp(_fake_norm_q_fwd, _fake_norm_q_bwd)
_fake_norm_q_jit = jax.jit(_fake_norm_q, static_argnums=(3,))


def _fake(kind, x, gain, fmt, eps, p, block_size, scale_mode, rounding, key, intermediate_dtype, out_dtype,
          impl):
  x = _check_x(x)
  gain = _check_gain(gain, x.shape[-1])
  _quant_opts(fmt, block_size, scale_mode, rounding, key)  # validate eagerly
  idt = None if intermediate_dtype is None else jnp.dtype(intermediate_dtype)
  opts = dict(kind=kind, fmt=get_format(fmt).name, eps=float(eps), p=int(p), block_size=block_size,
              scale_mode=scale_mode, rounding=rounding, intermediate_dtype=idt,
              out_dtype=jnp.dtype(out_dtype or x.dtype), impl=_key(impl))
  return _fake_norm_q_jit(x, gain, key, tuple(sorted(opts.items())))


def rms_norm_fake_quantize(x, gain=None, fmt: str = "mxfp8_e4m3", eps: float = 1e-6, *, block_size=None,
                           scale_mode="floor", rounding="nearest_even", key=None, intermediate_dtype=None,
                           out_dtype=None, impl="auto"):
  """dequantize(rms_norm_quantize(...)) in x's dtype; gradient: straight-through the cast, then RMSNorm's."""
  return _fake("rms", x, gain, fmt, eps, 2, block_size, scale_mode, rounding, key, intermediate_dtype,
               out_dtype, impl)


def mx_norm_fake_quantize(x, gain=None, fmt: str = "mxfp8_e4m3", eps: float = 1e-6, p: int = 2, *,
                          block_size=None, scale_mode="floor", rounding="nearest_even", key=None,
                          intermediate_dtype=None, out_dtype=None, impl="auto"):
  """dequantize(mx_norm_quantize(...)); gradient: straight-through the cast, then MXNorm's estimate formula."""
  return _fake("mx", x, gain, fmt, eps, p, block_size, scale_mode, rounding, key, intermediate_dtype,
               out_dtype, impl)


# ----------------------------------------------------------------------------------------------------------
# Flax modules
# ----------------------------------------------------------------------------------------------------------

try:  # flax is a dependency, but keep the pure functions importable without it
  import flax.linen as _nn
  from flax import nnx as _nnx
  from flax.linen import dtypes as _fdtypes
  _HAVE_FLAX = True
except Exception:  # pragma: no cover
  _HAVE_FLAX = False


def _check_axes(reduction_axes, feature_axes, ndim):
  ra = reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)
  fa = feature_axes if isinstance(feature_axes, int) else tuple(feature_axes)
  norm = lambda a: tuple(sorted(i % ndim for i in ((a,) if isinstance(a, int) else a)))
  if norm(ra) != (ndim - 1,) or norm(fa) != (ndim - 1,):
    raise NotImplementedError("only reduction_axes=-1 and feature_axes=-1 are supported")


if _HAVE_FLAX:

  class RMSNorm(_nn.Module):
    """Drop-in for ``flax.linen.RMSNorm`` (param "scale", epsilon inside the rsqrt, float32 statistics),
    computed by ``mx_jax.norms.rms_norm`` (deterministic; Pallas kernels on GPU with ``impl="auto"``)."""

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Callable = _nn.initializers.ones
    reduction_axes: Any = -1
    feature_axes: Any = -1
    impl: str = "auto"

    @_nn.compact
    def __call__(self, x):
      scale, dtype = self._scale_and_dtype(x)
      return rms_norm(x, scale, self.epsilon, out_dtype=dtype, impl=self.impl)

    def _scale_and_dtype(self, x):
      """The ``scale`` param (flax RMSNorm's name and init) and flax's output dtype rule."""
      _check_axes(self.reduction_axes, self.feature_axes, x.ndim)
      scale = self.param("scale", self.scale_init, (x.shape[-1],), self.param_dtype) if self.use_scale else None
      args = [x] if scale is None else [x, scale]
      return scale, _fdtypes.canonicalize_dtype(*args, dtype=self.dtype)

  class MXNorm(RMSNorm):
    """RMSNorm drop-in whose statistic is MXNorm's block-absmax estimate (see ``mx_norm``)."""

    fmt: str = "mxfp8_e4m3"
    p: int = 2
    block_size: int | None = None

    @_nn.compact
    def __call__(self, x):
      scale, dtype = self._scale_and_dtype(x)
      return mx_norm(x, scale, self.epsilon, self.fmt, self.p, self.block_size, out_dtype=dtype,
                     impl=self.impl)

  class RMSNormNNX(_nnx.Module):
    """Drop-in for ``flax.nnx.RMSNorm(num_features, *, epsilon, dtype, param_dtype, use_scale, scale_init,
    rngs)`` (attribute ``scale``), computed by ``mx_jax.norms.rms_norm``."""

    def __init__(self, num_features: int, *, epsilon: float = 1e-6, dtype=None, param_dtype=jnp.float32,
                 use_scale: bool = True, scale_init=_nnx.initializers.ones, reduction_axes=-1,
                 feature_axes=-1, impl: str = "auto", rngs: "_nnx.Rngs"):
      self.scale = (_nnx.Param(scale_init(rngs.params(), (num_features,), param_dtype)) if use_scale
                    else _nnx.data(None))
      self.num_features = num_features
      self.epsilon = epsilon
      self.dtype = dtype
      self.param_dtype = param_dtype
      self.use_scale = use_scale
      self.reduction_axes = reduction_axes
      self.feature_axes = feature_axes
      self.impl = impl

    def _scale_and_dtype(self, x):
      _check_axes(self.reduction_axes, self.feature_axes, x.ndim)
      scale = self.scale[...] if self.scale is not None else None
      args = [x] + ([scale] if scale is not None else [])
      return scale, _fdtypes.canonicalize_dtype(*args, dtype=self.dtype)

    def __call__(self, x):
      scale, dtype = self._scale_and_dtype(x)
      return rms_norm(x, scale, self.epsilon, out_dtype=dtype, impl=self.impl)

  class MXNormNNX(RMSNormNNX):
    """nnx MXNorm: as ``RMSNormNNX`` with MXNorm's statistic (``fmt``, ``p``, ``block_size``)."""

    def __init__(self, num_features: int, *, fmt: str = "mxfp8_e4m3", p: int = 2, block_size=None,
                 **kwargs):
      super().__init__(num_features, **kwargs)
      self.fmt = fmt
      self.p = p
      self.block_size = block_size

    def __call__(self, x):
      scale, dtype = self._scale_and_dtype(x)
      return mx_norm(x, scale, self.epsilon, self.fmt, self.p, self.block_size, out_dtype=dtype,
                     impl=self.impl)
