"""RMSNorm / MXNorm (plain, fused with the MX cast) and RMSNorm backward as Mosaic GPU (``plgpu``) kernels.

Same bits as ``kernels/norm_quantize.py`` and ``mx_jax.norms``' XLA path. A row (zero-padded to
L = bs * next_pow2(ceil(n / bs)) elements) is viewed as L / bs rows of one block each, in groups of 128: thread
t of the warpgroup holds block 128 j + t of group j (``_mgpu_common.row_layout(1)``). Row sum = pairwise tree:
a thread-local tree over the block's columns (column slices), then across the 128 threads, then a tree over
the groups. Across threads, compiled: ``jnp.sum(axis=0)`` = Mosaic GPU's lane butterfly (xor 1, 2, .., 16)
and (w0 + w1) + (w2 + w3) across warps, i.e. the pairwise tree over t (tests simulate it); interpreted: the
tree is written out (``norms.tree_sum_last``). Products feeding an addition are ``mul.rn.f32`` (Mosaic GPU
marks its f32 ops ``contract``, so LLVM / ptxas would form FMAs). Rows shorter than 128 blocks, or too long
for shared memory, are not taken (``supported``): the Triton kernels run them.

One CTA walks ``steps`` rows (``plgpu.emit_pipeline`` over rows GMEM -> SMEM), writes codes / scale bytes /
float rows from two alternating SMEM slots by TMA, and its rows' inverse RMS at the end. Backward: one CTA per
group of ``norms.bwd_groups`` rows, the gain gradient summed row by row in SMEM (``norms.dgain_groups``' order).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from kernels import _dispatch
from kernels import _mgpu_common as mc
from kernels.mgpu_quantize import mx_block_codes
from mx_jax import norms
from mx_jax.formats import get_format

R = mc.ROWS
CONFIG = {"steps": 8}  # rows per CTA in the forward kernels (a multiple of 4: the inv TMA is >= 16 bytes)
SMEM_BYTES = 200 * 1024


def row_len(n: int, bs: int) -> int:
  return bs * norms.next_pow2(-(-n // bs))


def supported(n: int, bs: int, dtype, kind: str = "fwd") -> bool:
  """Rows of n elements (blocks of bs) of ``dtype`` run here: the padded row L holds >= 128 blocks (one per
  thread; shorter rows: Triton) and its SMEM (double-buffered in / out, f32 gain, bwd: dy and the dgain
  accumulator) fits."""
  L, it = row_len(n, bs), jnp.dtype(dtype).itemsize
  per = 2 * it + 4 + 2 * 4 if kind == "fwd" else 6 * it + 8
  return bs in (16, 32) and L >= R * bs and L * per <= SMEM_BYTES


def _interp() -> bool:
  return mc.interpret_params() is not None


def _lay(ndim: int):
  return {0: plgpu.Layout.WG_SPLAT(()), 1: mc.row_layout(1).reduce(1), 2: mc.row_layout(1)}[ndim]


class _Arith:
  """``norms._Arith`` for the kernel bodies: ``mul`` = ``mul.rn.f32`` compiled, a barriered product interpreted."""

  pair = "split"

  def mul(self, a, b):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    if _interp():
      return lax.optimization_barrier(a * b)
    lay = _lay(len(shape))
    # (a 0-d operand may be a constant: the barrier makes it an SSA value inline_mgpu accepts)
    a, b = (plgpu.layout_cast(jnp.broadcast_to(lax.optimization_barrier(v) if v.ndim == 0 else v, shape), lay)
            for v in (a, b))

    @plgpu.inline_mgpu(arg_types=(lay, lay), return_type=plgpu.ShapeDtypeStruct(shape, jnp.float32, lay))
    def mul_rn(ctx, x, y):
      del ctx
      from jax.experimental.mosaic.gpu import fragmented_array as fa
      return x._pointwise(fa.FragmentedArray._lift_fast_instr("mul.rn.f32"), y)

    return _pin(mul_rn(a, b))


ARITH = _Arith()


def _pin(v: jax.Array) -> jax.Array:
  """Fixes a register array's layout (keeps Mosaic GPU's layout inference from searching)."""
  return v if _interp() else plgpu.layout_cast(v, _lay(v.ndim))


def _tree(vals: list):
  """Pairwise tree of a power-of-two list (adjacent pairs first)."""
  vals = [_pin(v) for v in vals]
  while len(vals) > 1:
    vals = [_pin(vals[i] + vals[i + 1]) for i in range(0, len(vals), 2)]
  return vals[0]


def _group_sum(v: jax.Array) -> jax.Array:
  """(128, bs) -> pairwise tree over the flat (block-major) group: columns per thread, then across threads."""
  if _interp():
    pairs = [v[:, c] + v[:, c + 1] for c in range(0, v.shape[1], 2)]
  else:  # a 2-element reduction is one a + b (no init; Mosaic GPU rejects 1-wide column slices)
    pairs = [jnp.sum(v[:, c:c + 2], axis=1) for c in range(0, v.shape[1], 2)]
  return _xthread_sum(_tree(pairs))


def _xthread_sum(v: jax.Array) -> jax.Array:
  """(128,) one value per thread -> the pairwise tree over threads (see the module docstring), as (128,)
  (every thread holds it: per-row math stays in registers of ``row_layout``)."""
  return _per_thread(norms.tree_sum_last(v) if _interp() else jnp.sum(v, axis=0))


def _per_thread(s: jax.Array) -> jax.Array:
  """0-d -> (128,) in ``row_layout(1).reduce(1)`` (Mosaic GPU's 0-d splats reject integer bit ops)."""
  v = jnp.broadcast_to(s, (R,))
  return v if _interp() else plgpu.layout_cast(v, _lay(1))


def _ld(ref):
  """SMEM (128, bs) -> registers in ``row_layout(1)``, read as 16-byte vectors."""
  w = 16 // jnp.dtype(ref.dtype).itemsize
  v = plgpu.load(ref, layout=mc.row_layout(w))
  return v if _interp() else plgpu.layout_cast(v, mc.row_layout(1))


def _st(ref, v):
  """registers (128, bs) -> SMEM, written as 16-byte vectors."""
  if not _interp():
    v = plgpu.layout_cast(v, mc.row_layout(16 // jnp.dtype(v.dtype).itemsize))
  ref[...] = v


def _load_f32(ref, src_dtype):
  return _pin(mc.f32_of(mc.f32_bits_of(_ld(ref), src_dtype)))


def _inv_rms(ssq, n, eps):
  return _pin(norms.rsqrt_det(_pin(ARITH.mul(ssq, norms._recip(n)) + jnp.float32(eps)), ARITH))


def _inv_mx(s, nb, eps, p, c):
  """mx_jax.norms.mx_inv_from_tile from the tree sum s of amax^p over blocks."""
  m = ARITH.mul(s, norms._recip(nb))
  if p == 2:
    ms = ARITH.mul(jnp.float32(c * c), m)
  else:
    t = m * jnp.float32(c)
    ms = ARITH.mul(t, t)
  return _pin(norms.rsqrt_det(_pin(ms + jnp.float32(eps)), ARITH))


def _prep(x, bs, rows_to):
  """x (..., n) -> bits (Rp * L / bs, bs), rows zero-padded to a multiple of ``rows_to``; (r, n, L, Rp)."""
  n = x.shape[-1]
  r = math.prod(x.shape[:-1])
  L = row_len(n, bs)
  rp = rows_to * -(-r // rows_to)
  xb = jnp.pad(mc.as_bits(x).reshape(r, n), ((0, rp - r), (0, L - n)))
  return xb.reshape(rp * L // bs, bs), r, n, L, rp


def _gain_bits(gain, n, L, bs):
  g = jnp.pad(gain.astype(jnp.float32).reshape(n), (0, L - n))
  return mc.as_bits(g).reshape(L // bs, bs)


def _load_gain(g_g, g_s, bar):
  plgpu.copy_gmem_to_smem(g_g, g_s, bar)
  plgpu.barrier_wait(bar)


def norm_mgpu(x, gain, *, kind, eps, p, bs, out_dtype=jnp.float32, quant=None, intermediate_dtype=None,
              rbits=None, steps=None):
  """Norm (kind "rms" | "mx") of x's rows; ``quant=(elem, scale_mode, rounding)``: fused MX cast.
  Returns (y (r, L) in out_dtype | (codes uint8 (r, L), scale bytes uint8 (r, L / bs)), inv (r,) float32);
  ``rbits``: uint32 (r, L) random bits for stochastic rounding (rows already padded to L)."""
  steps = int(steps or CONFIG["steps"])
  xb, r, n, L, rp = _prep(x, bs, steps)
  nbr, grp = L // bs, L // (R * bs)  # blocks per row, groups of 128 blocks per row
  nb = -(-n // bs)
  c = norms.mxnorm_constant(p, bs) if kind == "mx" else 0.0
  exact_sq = norms._exact_squares(x.dtype)
  has_g, sr = gain is not None, rbits is not None
  out_dtype = jnp.dtype(out_dtype)

  def kernel(*refs):
    refs = list(refs)
    x_g = refs.pop(0)
    g_g = refs.pop(0) if has_g else None
    rb_g = refs.pop(0) if sr else None
    if quant is None:
      y_g, inv_g, y_s, inv_s = refs[:4]
      outs_s = (y_s,)
    else:
      c_g, s_g, inv_g, c_s, s_s, inv_s = refs[:6]
      outs_s = (c_s, s_s)
    g_s, bar = refs[-2:] if has_g else (None, None)
    cta = lax.axis_index("c")
    if has_g:
      _load_gain(g_g, g_s, bar)

    def body(idx, x_s, *rest):
      (i,) = idx
      slot = i % 2
      grp_ref = lambda ref, j: ref.at[pl.ds(j * R, R)]
      xs = lambda j: _load_f32(grp_ref(x_s, j), x.dtype)
      if kind == "rms":
        sums = []
        for j in range(grp):
          v = xs(j)
          sums.append(_group_sum(v * v if exact_sq else ARITH.mul(v, v)))
        inv = _inv_rms(_tree(sums), n, eps)
      else:
        sums = []
        for j in range(grp):
          ab = _ld(grp_ref(x_s, j))
          ab = mc.f32_bits_of(ab, x.dtype) & jnp.uint32(0x7FFFFFFF)
          a = mc.f32_of(jnp.max(ab, axis=1))
          sums.append(_xthread_sum(ARITH.mul(a, a) if p == 2 else a))
        inv = _inv_mx(_tree(sums), nb, eps, p, c)
      plgpu.wait_smem_to_gmem(len(outs_s), wait_read_only=True)  # this slot's copies of two rows ago
      for j in range(grp):
        v = xs(j)
        k = mc.bcast_rows(inv, v.shape)
        if has_g:
          k = k * mc.f32_of(_ld(grp_ref(g_s, j)))
        y = v * k
        if quant is None:
          yb = mc.as_bits(y.astype(out_dtype))
          _st(grp_ref(y_s.at[slot], j), yb)
          continue
        if intermediate_dtype is not None:
          y = y.astype(intermediate_dtype).astype(jnp.float32)
        rb = _ld(grp_ref(rest[0], j)) if sr else None
        codes, sb = mx_block_codes(lax.bitcast_convert_type(y, jnp.uint32), quant[0], quant[1], quant[2], rb)
        _st(grp_ref(c_s.at[slot], j), codes.astype(jnp.uint8))
        grp_ref(s_s.at[slot], j)[...] = sb.astype(jnp.uint8)
      inv_s[i] = jnp.max(inv)  # identical in every thread
      plgpu.commit_smem()
      row = cta * steps + i
      if quant is None:
        plgpu.copy_smem_to_gmem(y_s.at[slot], y_g.at[pl.ds(row * nbr, nbr)])
      else:
        plgpu.copy_smem_to_gmem(c_s.at[slot], c_g.at[pl.ds(row * nbr, nbr)])
        plgpu.copy_smem_to_gmem(s_s.at[slot], s_g.at[pl.ds(row * nbr, nbr)])

    spec = plgpu.BlockSpec((nbr, bs), lambda i: (i, 0))
    ins = [x_g.at[pl.ds(cta * steps * nbr, steps * nbr)]]
    if sr:
      ins.append(rb_g.at[pl.ds(cta * steps * nbr, steps * nbr)])
    plgpu.emit_pipeline(body, grid=(steps,), in_specs=[spec] * len(ins), max_concurrent_steps=2)(*ins)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(inv_s, inv_g.at[pl.ds(cta * steps, steps)])
    plgpu.wait_smem_to_gmem(0)

  args = [xb]
  if has_g:
    args.append(_gain_bits(gain, n, L, bs))
  if sr:
    args.append(jnp.pad(rbits.reshape(r, L), ((0, rp - r), (0, 0))).reshape(rp * nbr, bs))
  inv_t = jax.ShapeDtypeStruct((rp,), jnp.float32)
  if quant is None:
    ob = mc.uint_of(out_dtype)
    out_type = (jax.ShapeDtypeStruct((rp * nbr, bs), ob), inv_t)
    scratch = [plgpu.SMEM((2, nbr, bs), ob)]
  else:
    out_type = (jax.ShapeDtypeStruct((rp * nbr, bs), jnp.uint8), jax.ShapeDtypeStruct((rp * nbr,), jnp.uint8),
                inv_t)
    scratch = [plgpu.SMEM((2, nbr, bs), jnp.uint8), plgpu.SMEM((2, nbr), jnp.uint8)]
  scratch.append(plgpu.SMEM((steps,), jnp.float32))
  if has_g:
    scratch += [plgpu.SMEM((nbr, bs), jnp.uint32), plgpu.Barrier()]
  outs = plgpu.kernel(kernel, out_type=out_type, grid=(rp // steps,), grid_names=("c",),
                      scratch_types=tuple(scratch), interpret=mc.interpret_params())(*args)
  inv = outs[-1][:r]
  if quant is None:
    return lax.bitcast_convert_type(outs[0], out_dtype).reshape(rp, L)[:r], inv
  return (outs[0].reshape(rp, L)[:r], outs[1].reshape(rp, nbr)[:r]), inv


def norm_pallas_mgpu(x, gain, *, eps, kind, p, block_size, out_dtype=jnp.float32, steps=None):
  """``kernels.norm_quantize.norm_pallas`` on this kernel: (y with x's shape in out_dtype, inv (R,))."""
  bs = block_size if kind == "mx" else norms._TREE_BLOCK
  y, inv = norm_mgpu(x, gain, kind=kind, eps=eps, p=p, bs=bs, out_dtype=out_dtype, steps=steps)
  return y[:, :x.shape[-1]].reshape(x.shape), inv


def norm_quantize_mgpu(x, gain, fmt, *, eps, kind, p, block_size, scale_mode="floor", rounding="nearest_even",
                       key=None, rbits=None, intermediate_dtype=None, steps=None):
  """Fused norm + MX cast -> (QArray, inv (R,)), as ``kernels.norm_quantize.norm_quantize_pallas`` (MX
  formats; rms needs block_size 32, the tree block)."""
  from kernels.mx_quantize import codes_to_storage, scale_bytes_to_storage, stochastic_bits
  from mx_jax.qarray import QArray
  f = get_format(fmt)
  n, bs = x.shape[-1], block_size
  lead = tuple(x.shape[:-1])
  nb = -(-n // bs)
  L = row_len(n, bs)
  rb = None
  if rounding == "stochastic":
    rb3 = stochastic_bits(key, rbits, lead, nb, bs).reshape(-1, nb * bs)
    rb = jnp.pad(rb3, ((0, 0), (0, L - nb * bs)))
  (codes, sb), inv = norm_mgpu(x, gain, kind=kind, eps=eps, p=p, bs=bs, quant=(f.elem, scale_mode, rounding),
                               intermediate_dtype=intermediate_dtype, rbits=rb, steps=steps)
  data = codes_to_storage(codes[:, :nb * bs].reshape(lead + (nb * bs,)), f.elem)
  scales = scale_bytes_to_storage(sb[:, :nb].reshape(lead + (nb,)), "mx")
  return QArray(data, scales, None, f.name, len(lead), tuple(x.shape), bs, False), inv


def rms_norm_bwd_mgpu(x, gain, inv, dy):
  """(dx in x.dtype, dgain float32 (n,)) = ``mx_jax.norms.rms_norm_bwd``: dx = inv * (h - x * (inv^2 * c)),
  h = gain * dy, c = mean(h * x); dgain = sum over rows of dy * x * inv (in ``norms.dgain_groups``' order)."""
  bs = norms._TREE_BLOCK
  r = math.prod(x.shape[:-1])
  groups, crow = norms.bwd_groups(r)
  xb, r, n, L, rp = _prep(x, bs, groups * crow)
  dyb = _prep(dy, bs, groups * crow)[0]
  nbr, grp = L // bs, L // (R * bs)
  cpad = max(crow, 4)
  inv2 = jnp.pad(inv.reshape(r).astype(jnp.float32), (0, rp - r)).reshape(groups, crow)
  inv2 = jnp.pad(inv2, ((0, 0), (0, cpad - crow)))
  has_g = gain is not None
  ob = mc.uint_of(x.dtype)

  def kernel(*refs):
    refs = list(refs)
    x_g = refs.pop(0)
    g_g = refs.pop(0) if has_g else None
    dy_g, inv_g, dx_g, dg_g, dx_s, acc_s, inv_s, g_s, bar = refs
    cta = lax.axis_index("c")
    plgpu.copy_gmem_to_smem(inv_g.at[cta], inv_s, bar)
    plgpu.barrier_wait(bar)
    if has_g:
      plgpu.copy_gmem_to_smem(g_g, g_s, bar)
      plgpu.barrier_wait(bar)
    for j in range(grp):
      _st(acc_s.at[pl.ds(j * R, R)], _pin(jnp.zeros((R, bs), jnp.float32)))

    def body(idx, x_s, dy_s):
      (i,) = idx
      slot = i % 2
      inv_r = _per_thread(inv_s[i])
      at = lambda ref, j: ref.at[pl.ds(j * R, R)]

      def load(j):
        xv = _load_f32(at(x_s, j), x.dtype)
        dyv = _load_f32(at(dy_s, j), dy.dtype)
        h = ARITH.mul(mc.f32_of(_ld(at(g_s, j))), dyv) if has_g else dyv
        return xv, dyv, h

      sums = []
      for j in range(grp):
        xv, _, h = load(j)
        sums.append(_group_sum(ARITH.mul(h, xv)))
      cc = ARITH.mul(_tree(sums), norms._recip(n))
      k = ARITH.mul(inv_r * inv_r, cc)
      plgpu.wait_smem_to_gmem(1, wait_read_only=True)
      for j in range(grp):
        xv, dyv, h = load(j)
        ib = mc.bcast_rows(inv_r, xv.shape)
        dx = ib * (h - ARITH.mul(xv, mc.bcast_rows(k, xv.shape)))
        _st(at(dx_s.at[slot], j), mc.as_bits(dx.astype(x.dtype)))
        acc = at(acc_s, j)
        _st(acc, _ld(acc) + ARITH.mul(dyv, xv * ib))
      plgpu.commit_smem()
      row = cta * crow + i
      plgpu.copy_smem_to_gmem(dx_s.at[slot], dx_g.at[pl.ds(row * nbr, nbr)])

    spec = plgpu.BlockSpec((nbr, bs), lambda i: (i, 0))
    sl = pl.ds(cta * crow * nbr, crow * nbr)
    plgpu.emit_pipeline(body, grid=(crow,), in_specs=[spec, spec], max_concurrent_steps=2)(
        x_g.at[sl], dy_g.at[sl])
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(acc_s, dg_g.at[cta])
    plgpu.wait_smem_to_gmem(0)

  args = [xb] + ([_gain_bits(gain, n, L, bs)] if has_g else []) + [dyb, inv2]
  scratch = (plgpu.SMEM((2, nbr, bs), ob), plgpu.SMEM((nbr, bs), jnp.float32), plgpu.SMEM((cpad,), jnp.float32),
             plgpu.SMEM((nbr if has_g else R, bs), jnp.uint32), plgpu.Barrier())
  dxb, dgp = plgpu.kernel(
      kernel, out_type=(jax.ShapeDtypeStruct((rp * nbr, bs), ob), jax.ShapeDtypeStruct((groups, nbr, bs), jnp.float32)),
      grid=(groups,), grid_names=("c",), scratch_types=scratch, interpret=mc.interpret_params())(*args)
  dx = lax.bitcast_convert_type(dxb, x.dtype).reshape(rp, L)[:r, :n].reshape(x.shape)
  return dx, norms.tree_sum_last(dgp.reshape(groups, L)[:, :n].T)
