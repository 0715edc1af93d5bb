"""Custom partitioning of the Pallas kernels, so that XLA shards them under ``jax.jit`` with NamedSharding inputs.

Each Pallas entry point is wrapped (the decorators below) in ``jax.experimental.custom_partitioning``: at
compile time XLA hands ``partition`` the operands' shardings, and it returns the shardings the kernel takes
plus a per-shard function that runs the unwrapped kernel on the local piece. Rules:

* quantize (MX / NVFP4 blocks along the last axis): leading axes shard freely; the last axis may be sharded
  only into pieces of whole blocks (piece % block == 0, no padding inside a piece), else ValueError. NVFP4's
  tensor amax and stochastic rounding's random bits are computed on the whole (sharded) tensor before the
  kernel, so every shard uses the global values.
* norm, norm+cast, RMSNorm backward (a row statistic over the last axis): rows shard freely; a sharded last
  axis is all-gathered (resharded to replicated along it) before the kernel. NVFP4 norm+cast runs as the
  partitioned norm, then the partitioned quantize. The gain gradient is a pairwise tree over the shards'
  partial sums (all-gathered: n floats per shard).
* matmul a ([B,] M, K) . b ([B,] N, K)^T: B, M and N shard freely (B: a's batch sharding, else b's); a
  sharded K must be cut into whole 32-blocks, else ValueError; each shard's partial product is kept in
  float32, summed over the K shards (psum), then cast.

Everything but a K-sharded matmul (and the gain gradient when shards change its row grouping, see
``rms_norm_bwd``) is bit for bit the unsharded kernel. A ValueError raised while XLA partitions reaches the
caller as ``jax.errors.JaxRuntimeError`` carrying its text; eager calls on sharded arrays raise it directly.
On one device (or with all mesh axes manual, e.g. inside shard_map) the wrappers inline the plain kernel.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

# ----------------------------------------------------------------------------------------------------------
# Sharding helpers
# ----------------------------------------------------------------------------------------------------------


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _specs(sharding, ndim: int, mesh=None) -> list[tuple[str, ...]]:
  """Mesh axes per dimension (() = replicated). The wrappers take XLA's shardings undecoded
  (``decode_shardings=False``): a proposal on sub-axes of a mesh axis (Shardy makes them for results
  of uneven splits) has no PartitionSpec and counts as replicated, so XLA reshards it."""
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec)
  else:
    from jax._src.sharding_impls import parse_flatten_op_sharding
    try:
      spec = tuple(parse_flatten_op_sharding(sharding._to_xla_hlo_sharding(ndim), mesh)[0])
    except Exception:  # noqa: BLE001  (sub-axis / non-mesh shardings)
      return [()] * ndim
  return [_axes(e) for e in spec + (None,) * (ndim - len(spec))]


def _named(mesh, dims) -> NamedSharding:
  return NamedSharding(mesh, P(*[None if not a else (a[0] if len(a) == 1 else a) for a in dims]))


def _ways(mesh, axes) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def check_blocked_axis(name: str, shape, axis: int, axes, mesh_shape, block: int) -> None:
  """ValueError unless splitting ``shape[axis]`` over mesh ``axes`` leaves whole ``block``-element blocks."""
  axes = _axes(axes)
  if not axes:
    return
  n = shape[axis]
  ways = math.prod(mesh_shape[a] for a in axes)
  if ways == 1 or (n % ways == 0 and (n // ways) % block == 0):
    return
  over = f"mesh axis {axes[0]!r}" if len(axes) == 1 else f"mesh axes {axes!r}"
  piece = n // ways if n % ways == 0 else f"~{-(-n // ways)} (uneven)"
  raise ValueError(
      f"{name}: axis {axis} of length {n} is split {ways} ways over {over} into pieces of {piece}, which cuts "
      f"{block}-element MX blocks; shard on another axis or make each piece a multiple of {block}")


def _eager_check(name, x, axis, block) -> None:
  """The block check for a concrete (not traced) sharded array, so eager calls raise a plain ValueError."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and isinstance(x.sharding, NamedSharding):
    axis = axis % x.ndim
    check_blocked_axis(name, x.shape, axis, _specs(x.sharding, x.ndim)[axis], dict(x.sharding.mesh.shape),
                       block)


def _shape(ir_type) -> tuple[int, ...]:
  """Shape of an MLIR tensor type (what a callable sharding rule receives)."""
  from jax._src.lib.mlir import ir
  return tuple(ir.RankedTensorType(ir_type).shape)


def _in_order(rule: str, factors: str) -> tuple[str, ...]:
  """The one-letter ``factors`` present in ``rule``, in order of first appearance (Shardy wants them sorted)."""
  return tuple(sorted({c for c in rule if c in factors}, key=rule.index))


def _opts(**kw):
  return tuple(sorted(kw.items()))


# ----------------------------------------------------------------------------------------------------------
# Quantize: kernels.mx_quantize._mx_quantize_jit
# ----------------------------------------------------------------------------------------------------------
# static opts: (jit_fn, fmt, bs, scale_mode, rounding, impl, block_rows, block_blocks, num_warps, fast)


def _q_body(x, rbits, amax, opts):
  jit_fn, fmt, bs, *rest = opts
  q = jit_fn(x, None, rbits, amax, fmt, bs, *rest)
  return q.data, q.scales


def _q_rule(opts, mesh, ops, res):
  """x (..., n) -> data (..., nb * bs) (zero-padded blocks), scales (..., nb); rbits (..., nb, bs)."""
  n, bs, stochastic = _shape(ops[0])[-1], opts[2], opts[4] == "stochastic"
  last = "(b k)" if n % bs == 0 else "n"
  lhs = [f"... {last}"] + (["... b k"] if stochastic else []) + ([""] if opts[1] == "nvfp4" else [])
  sizes = {} if stochastic else {"k": bs}
  return ", ".join(lhs) + " -> ... (b k), ... b", dict(need_replication_factors=("k",), **sizes)


def _q_partition(opts, mesh, arg_shapes, result_shape):
  x, rbits, amax = arg_shapes
  dims = _specs(x.sharding, x.ndim, mesh)
  check_blocked_axis("x", x.shape, x.ndim - 1, dims[-1], dict(mesh.shape), opts[2])
  xs = _named(mesh, dims)
  args = (xs, None if rbits is None else _named(mesh, dims + [()]), None if amax is None else _named(mesh, []))
  return mesh, lambda x, r, a: _q_body(x, r, a, opts), (xs, xs), args


def _make_cp(body, static_arg: int, partition, rule):
  """``body`` under custom partitioning (its options pytree static at ``static_arg``)."""
  cp = custom_partitioning(body, static_argnums=(static_arg,))
  cp.def_partition(decode_shardings=False, partition=partition, sharding_rule=rule)
  return cp


@functools.cache
def _q_cp():
  return _make_cp(_q_body, 3, _q_partition, _q_rule)


def quantize(jit_fn):
  """Wraps ``_mx_quantize_jit`` (same signature): the Pallas path runs under custom partitioning."""

  @functools.partial(jax.jit, static_argnums=tuple(range(4, 13)))
  def traced(x, key, rbits, amax, fmt, bs, scale_mode, rounding, impl, *tiling):
    from kernels import _dispatch
    from kernels.mx_quantize import stochastic_bits
    from mx_jax.formats import get_format
    from mx_jax.qarray import QArray
    from mx_jax import fp8_tensor, nvfp4
    f = get_format(fmt)
    if _dispatch.resolve_impl(impl) == "xla" or x.ndim == 0 or x.size == 0 or f.kind not in ("mx", "nvfp4"):
      return jit_fn(x, key, rbits, amax, fmt, bs, scale_mode, rounding, impl, *tiling)
    lead, n = tuple(x.shape[:-1]), x.shape[-1]
    rb = stochastic_bits(key, rbits, lead, -(-n // bs), bs) if rounding == "stochastic" else None
    s_dec = None
    if f.kind == "nvfp4":  # the global amax (XLA all-reduces it), as the kernel path computes it
      amax = fp8_tensor.finite_amax(x) if amax is None else amax
      s_dec = nvfp4.tensor_scales(x, amax)[1]
    else:
      amax = None
    opts = (jit_fn, fmt, bs, scale_mode, rounding, impl) + tuple(tiling)
    data, scales = _q_cp()(x, rb, amax, opts)
    return QArray(data, scales, s_dec, f.name, len(lead), tuple(x.shape), bs, False)

  @functools.wraps(jit_fn)
  def entry(x, key, rbits, amax, fmt, bs, *rest):
    _eager_check("x", x, -1, bs)
    return traced(x, key, rbits, amax, fmt, bs, *rest)

  entry.unwrapped = jit_fn
  return entry


# ----------------------------------------------------------------------------------------------------------
# Norms: kernels.norm_quantize.norm_pallas / norm_quantize_pallas / rms_norm_bwd_pallas
# ----------------------------------------------------------------------------------------------------------


# Every operand keeps x's leading (row) axes; inv travels in x's leading shape inside the custom call (a flat
# (R,) would make XLA reshape sharded rows, and Shardy then prefers to gather the minor row axes).


def _row_shardings(mesh, x):
  """(leading-axis specs of x, x's sharding with the last axis replicated, the leading shape's sharding)."""
  lead = _specs(x.sharding, x.ndim, mesh)[:-1]
  return lead, _named(mesh, lead + [()]), _named(mesh, lead)


def _norm_body(x, gain, opts):
  fn, kw = opts
  y, inv = fn(x, gain, **dict(kw))
  return y, inv.reshape(x.shape[:-1])


def _norm_partition(opts, mesh, arg_shapes, result_shape):
  x, gain = arg_shapes
  _, xs, ls = _row_shardings(mesh, x)
  args = (xs, None if gain is None else _named(mesh, [()]))
  return mesh, lambda x, g: _norm_body(x, g, opts), (xs, ls), args


@functools.cache
def _norm_cp():
  return _make_cp(_norm_body, 2, _norm_partition, lambda opts, mesh, ops, res: (
      "... n, n -> ... n, ..." if len(ops) == 2 else "... n -> ... n, ...", dict(need_replication_factors=("n",))))


def norm(fn):
  """Wraps ``norm_pallas(x, gain, **kw) -> (y, inv)``: rows shard, the normalized axis is gathered."""

  @functools.wraps(fn)
  def wrapped(x, gain, **kw):
    if x.ndim < 2 or x.size == 0:
      return fn(x, gain, **kw)
    y, inv = _norm_cp()(x, gain, (fn, _opts(**kw)))
    return y, inv.reshape(-1)

  wrapped.unwrapped = fn
  return wrapped


def _nq_body(x, gain, rbits, opts):
  fn, fmt, kw = opts
  q, inv = fn(x, gain, fmt, rbits=rbits, return_inv=True, **dict(kw))
  return q.data, q.scales, inv.reshape(x.shape[:-1])


def _nq_partition(opts, mesh, arg_shapes, result_shape):
  x, gain, rbits = arg_shapes
  lead, xs, ls = _row_shardings(mesh, x)
  args = (xs, None if gain is None else _named(mesh, [()]), None if rbits is None else _named(mesh, lead + [(), ()]))
  return mesh, lambda x, g, r: _nq_body(x, g, r, opts), (xs, xs, ls), args


def _nq_rule(opts, mesh, ops, res):
  nd = len(_shape(ops[0]))
  ranks = [len(_shape(t)) for t in ops[1:]]  # gain (n,), rbits (..., nb, bs)
  lhs = ["... n"] + (["n"] if 1 in ranks else []) + (["... b k"] if nd + 1 in ranks else [])
  rule = ", ".join(lhs) + " -> ... d, ... b, ..."
  return rule, dict(need_replication_factors=_in_order(rule, "nbdk"))


@functools.cache
def _nq_cp():
  return _make_cp(_nq_body, 3, _nq_partition, _nq_rule)


def norm_quantize(fn):
  """Wraps ``norm_quantize_pallas``: MX formats fused per row shard; NVFP4 (global tensor scale) as the
  partitioned norm followed by the partitioned quantize."""

  @functools.wraps(fn)
  def wrapped(x, gain, fmt, *, key=None, rbits=None, return_inv=False, **kw):
    from kernels.mx_quantize import stochastic_bits
    from mx_jax.formats import get_format
    from mx_jax.qarray import QArray
    f = get_format(fmt)
    if f.kind != "mx" or x.ndim < 2 or x.size == 0:  # nvfp4: fn runs the wrapped norm and quantize
      return fn(x, gain, fmt, key=key, rbits=rbits, return_inv=return_inv, **kw)
    bs, lead = kw["block_size"], tuple(x.shape[:-1])
    rb = None
    if kw.get("rounding", "nearest_even") == "stochastic":
      rb = stochastic_bits(key, rbits, lead, -(-x.shape[-1] // bs), bs)
    data, scales, inv = _nq_cp()(x, gain, rb, (fn, f.name, _opts(**kw)))
    q = QArray(data, scales, None, f.name, len(lead), tuple(x.shape), bs, False)
    return (q, inv.reshape(-1)) if return_inv else q

  wrapped.unwrapped = fn
  return wrapped


def _tree_over_shards(dg, rows):
  """Pairwise tree (adjacent pairs, in shard order) over the row shards' partial gain gradients."""
  if not rows:
    return dg
  from mx_jax import norms
  parts = lax.all_gather(dg, rows if len(rows) > 1 else rows[0])  # (D, n)
  d = parts.shape[0]
  if d & (d - 1):
    parts = jnp.pad(parts, ((0, norms.next_pow2(d) - d), (0, 0)))
  return norms.tree_sum_last(parts.T)


def _bwd_body(x, gain, inv, dy, opts):
  fn, kw = opts
  return fn(x, gain, inv.reshape(-1), dy, **dict(kw))


def _bwd_partition(opts, mesh, arg_shapes, result_shape):
  x, gain, inv, dy = arg_shapes
  lead, xs, ls = _row_shardings(mesh, x)
  args = (xs, None if gain is None else _named(mesh, [()]), ls, xs)
  rows = tuple(a for d in lead for a in d)

  def lower(x, g, i, dy):
    dx, dg = _bwd_body(x, g, i, dy, opts)
    return dx, _tree_over_shards(dg, rows)

  return mesh, lower, (xs, _named(mesh, [()])), args


@functools.cache
def _bwd_cp():
  return _make_cp(_bwd_body, 4, _bwd_partition, lambda opts, mesh, ops, res: (
      "... n, n, ..., ... n -> ... n, n" if len(ops) == 4 else "... n, ..., ... n -> ... n, n",
      dict(need_replication_factors=("n",))))


def rms_norm_bwd(fn):
  """Wraps ``rms_norm_bwd_pallas``: dx per row shard (bit for bit); dgain = pairwise tree over the shards'
  partial sums: bit for bit when only the first axis is sharded and ``norms.bwd_groups`` gives a shard the
  whole tensor's group size C (e.g. <= 256 rows per shard), else equal up to float32 reassociation."""

  @functools.wraps(fn)
  def wrapped(x, gain, inv, dy, **kw):
    if x.ndim < 2 or x.size == 0:
      return fn(x, gain, inv, dy, **kw)
    return _bwd_cp()(x, gain, inv.reshape(x.shape[:-1]), dy, (fn, _opts(**kw)))

  wrapped.unwrapped = fn
  return wrapped


# ----------------------------------------------------------------------------------------------------------
# Matmul: kernels.mx_matmul.mx_gemm (a ([B,] M, K), b ([B,] N, K), both quantized along K = the last axis)
# ----------------------------------------------------------------------------------------------------------


def _meta(q):
  return (q.fmt, q.axis, tuple(q.shape), q.block_size, q.packed)


def _gemm_body(ad, as_, bd, bs_, opts):
  return _gemm_shard(ad, as_, bd, bs_, opts, opts[1][2][-1], ())


def _gemm_shard(ad, as_, bd, bs_, opts, k, k_axes):
  """The kernel on one shard (K-local length k); partial sums are psum-ed over the K mesh axes."""
  fn, ma, mb, out_dtype, kw = opts
  qa = _rebuild(ma, ad, as_, k)
  qb = _rebuild(mb, bd, bs_, k)
  if not k_axes:
    return fn(qa, qb, out_dtype=out_dtype, **dict(kw))
  part = fn(qa, qb, out_dtype=jnp.float32, **dict(kw))
  return lax.psum(part, k_axes if len(k_axes) > 1 else k_axes[0]).astype(out_dtype)


def _rebuild(meta, data, scales, k):
  from mx_jax.qarray import QArray
  fmt, axis, shape, bsz, packed = meta
  return QArray(data, scales, None, fmt, axis, tuple(data.shape[:-1]) + (k,), bsz, packed)


def _gemm_rule(opts, mesh, ops, res):
  _, ma, mb, _, _ = opts
  k, bsz = ma[2][-1], ma[3]
  ka, kb, nb = _shape(ops[0])[-1], _shape(ops[2])[-1], _shape(ops[1])[-1]
  z = "z " if len(ma[2]) == 3 else ""  # the batch factor
  if k % bsz == 0 and ka % nb == 0 and kb % nb == 0:
    return (f"{z}m (b s), {z}m b, {z}n (b t), {z}n b -> {z}m n",
            dict(reduction_factors=("b",), need_replication_factors=("s", "t"), s=ka // nb, t=kb // nb))
  return f"{z}m i, {z}m b, {z}n j, {z}n c -> {z}m n", {}


def _gemm_partition(opts, mesh, arg_shapes, result_shape):
  _, ma, mb, _, _ = opts
  nd = len(ma[2])
  sa, ssa, sb, ssb = (_specs(a.sharding, nd, mesh) for a in arg_shapes)
  z_axes = (sa[0] or sb[0]) if nd == 3 else ()  # batch: a's sharding, else b's
  k_axes = next((d[-1] for d in (sa, ssa, sb, ssb) if d[-1] and not set(d[-1]) & set(z_axes)), ())
  check_blocked_axis("a (lhs, quantized along K)", ma[2], nd - 1, k_axes, dict(mesh.shape), ma[3])
  m_axes = tuple(a for a in sa[-2] if a not in z_axes + k_axes)
  n_axes = tuple(a for a in sb[-2] if a not in z_axes + k_axes + m_axes)
  z = [z_axes] if nd == 3 else []
  a_s, b_s = _named(mesh, z + [m_axes, k_axes]), _named(mesh, z + [n_axes, k_axes])
  k_local = ma[2][-1] // _ways(mesh, k_axes)
  lower = lambda ad, as_, bd, bs_: _gemm_shard(ad, as_, bd, bs_, opts, k_local, k_axes)
  return mesh, lower, _named(mesh, z + [m_axes, n_axes]), (a_s, a_s, b_s, b_s)


@functools.cache
def _gemm_cp():
  return _make_cp(_gemm_body, 4, _gemm_partition, _gemm_rule)


def gemm(fn):
  """Wraps ``mx_gemm(a, b, **kw)`` (2D, or batched 3D): B / M / N shard freely; a K split must keep whole
  blocks (psum over it)."""

  @functools.wraps(fn)
  def wrapped(a, b, *, out_dtype=jnp.bfloat16, **kw):
    # Mosaic GPU's interpreter runs on ordered IO callbacks, which custom_partitioning cannot carry: the
    # interpreted kernel is called as is (tests check this wrapper's rules with an XLA stand-in for fn).
    if a.tensor_scale is not None or b.tensor_scale is not None or kw.get("interpret"):
      return fn(a, b, out_dtype=out_dtype, **kw)
    for q, nm in ((a, "a"), (b, "b")):
      _eager_check(f"{nm} (quantized along K)", q.data, -1, q.block_size * q.data.shape[-1] // q.shape[-1])
    opts = (fn, _meta(a), _meta(b), jnp.dtype(out_dtype), _opts(**kw))
    return _gemm_cp()(a.data, a.scales, b.data, b.scales, opts)

  wrapped.unwrapped = fn
  return wrapped
