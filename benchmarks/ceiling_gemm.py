"""The block-scaled GEMM designs' compute ceilings, measured: their K loops with no memory pipeline.

Each CTA loads one (128, TK) FP8 tile of A and B and their (TK/32, 128) scales into shared memory once, then
runs the kernel's K loop over those same tiles ``k_iters`` times: per 32-deep block one FP8 ``wgmma`` (m64n128k32
per warpgroup, two compute warpgroups, as ``kernels/mx_matmul_mgpu.py``) and a promotion. Nothing is fetched
inside the loop, so the rate it reaches bounds what any memory pipeline around the same instructions can reach.
Promotion variants (``acc``: running FP32 accumulator, ``p``: the block's partial, ``sa``/``sb``: the blocks' row
and column scales, loaded from shared memory per block as the real kernel does):

* ``mma``     no promotion: every block's wgmma accumulates into one accumulator (an FP8 GEMM's rate);
* ``fadd``    ``acc + p``: one FP32 instruction per output and block (what a scale-free promotion costs);
* ``row``     ``acc + p * sa``: one FFMA (as if the scale product came for free);
* ``promote`` ``acc + (p * sa) * sb``: FMUL + FFMA, the MX promotion the kernel runs;
* ``smma``    ``acc + p * S``, one FFMA, with the scale product S = sa (x) sb made on the tensor cores by a bf16
  ``wgmma`` m64n128k16 per block (A: the row scales in column 0 of a (64, 16) tile, B: the column scales in
  column 0 of a (128, 16) tile, both exact in bf16), session 19's idea.

Design (b) (``kernels/mx_matmul_mgpu.py``, ``variant="bf16"``), the same way:

* ``bf16mma``  bf16 tiles resident, one bf16 ``wgmma`` per 32-block into one accumulator (a bf16 GEMM's rate);
* ``deq``      FP8 tiles resident; each stage dequantizes B (codes x column scales -> bf16) into a shared-memory
  slot and A into registers (the wgmma A operand), then bf16 ``wgmma`` per block and a wait (design (b)).

The result is ``k_iters * sum_j (a_j @ b_j^T) (x) scales`` per tile (checked against numpy in ``--check``). The
timed call includes its small XLA prologue (bf16mma's cast of the (M, TK) tiles, smma's (TK/32, M, 16) scale
tiles: about 1 MB each, against the loop's 2.4 ms at 8192^3).

    python -m benchmarks.ceiling_gemm [--check] [--m 8192 --n 8192 --k 8192]
"""
from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from benchmarks import profile_util
from kernels import mx_matmul_mgpu as mg

VARIANTS = ("mma", "fadd", "row", "promote", "smma", "bf16mma", "deq")
PAIRED = ("fadd", "row", "promote")  # variants with a paired-MMA form (``pair``)
TM, TN = 64, 128  # one compute warpgroup's output tile; the CTA is 2 * TM rows


def ceiling_gemm(a, b, sa, sb, *, variant: str, k_iters: int, pair: bool = True, wgs: int = 2,
                 interpret: bool = False):
  """a (M, TK), b (N, TK) FP8, sa (TK/32, M), sb (TK/32, N) float32 -> (M, N) bf16, each CTA's tile summed
  over its TK columns ``k_iters`` times (see the module docstring)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
  m, tk = a.shape
  n = b.shape[0]
  nblk = tk // mg.BLOCK
  if m % (wgs * TM) or n % TN or tk % 64 or b.shape[1] != tk:
    raise ValueError(f"a {a.shape} / b {b.shape}: M must divide by {wgs * TM}, N by {TN}, TK by 64")
  shape = (TM, TN)

  bf16 = jnp.bfloat16
  a_regs = not interpret  # the interpreter's wgmma takes A from shared memory only
  if variant == "bf16mma":
    a, b = a.astype(bf16), b.astype(bf16)

  smma = variant == "smma"
  sam = sbm = None
  if smma:  # (nblk, rows, 16) bf16: each block's scales in column 0
    sam = jnp.zeros((nblk, m, 16), bf16).at[:, :, 0].set(sa.astype(bf16))
    sbm = jnp.zeros((nblk, n, 16), bf16).at[:, :, 0].set(sb.astype(bf16))

  def kernel(*gm, a_s, b_s, sa_s, sb_s, o_s, bar, bq=None, aq=None, sam_s=None, sbm_s=None):  # scratch by name
    if smma:
      a_g, b_g, sa_g, sb_g, sam_g, sbm_g, o_g = gm
    else:
      a_g, b_g, sa_g, sb_g, o_g = gm
    mi, ni, wg = lax.axis_index("m"), lax.axis_index("n"), lax.axis_index("wg")
    r0 = mi * wgs * TM + wg * TM
    plgpu.copy_gmem_to_smem(a_g.at[pl.ds(r0, TM)], a_s.at[wg], bar.at[wg])
    plgpu.copy_gmem_to_smem(b_g.at[pl.ds(ni * TN, TN)], b_s.at[wg], bar.at[wg])
    plgpu.copy_gmem_to_smem(sa_g.at[:, pl.ds(r0, TM)], sa_s.at[wg], bar.at[wg])
    plgpu.copy_gmem_to_smem(sb_g.at[:, pl.ds(ni * TN, TN)], sb_s.at[wg], bar.at[wg])
    if smma:
      plgpu.copy_gmem_to_smem(sam_g.at[:, pl.ds(r0, TM)], sam_s.at[wg], bar.at[wg])
      plgpu.copy_gmem_to_smem(sbm_g.at[:, pl.ds(ni * TN, TN)], sbm_s.at[wg], bar.at[wg])
    plgpu.barrier_wait(bar.at[wg])
    a_w, b_w, sa_w, sb_w = a_s.at[wg], b_s.at[wg], sa_s.at[wg], sb_s.at[wg]

    def blk(j):
      return a_w.at[:, pl.ds(mg.BLOCK * j, mg.BLOCK)], b_w.at[:, pl.ds(mg.BLOCK * j, mg.BLOCK)].T

    def promote(acc, p, j):
      if variant == "fadd":
        return acc + p
      sa_j = plgpu.load(sa_w.at[j], layout=plgpu.Layout.WGMMA.reduce(1))
      if variant == "row":
        return acc + p * mg._row(sa_j, shape)
      sb_j = plgpu.load(sb_w.at[j], layout=plgpu.Layout.WGMMA.reduce(0))
      return acc + (p * mg._row(sa_j, shape)) * mg._col(sb_j, shape)

    if smma:
      def step(_, acc):
        for j in range(nblk):
          def part(p_ref, s_ref, j=j):
            plgpu.wgmma(p_ref, *blk(j))
            plgpu.wgmma(s_ref, sam_s.at[wg, j], sbm_s.at[wg, j].T)
            return p_ref[...], s_ref[...]
          p, sc = pl.run_scoped(part, plgpu.ACC(shape, jnp.float32), plgpu.ACC(shape, jnp.float32))
          acc = acc + p * sc
        return acc
      acc0 = plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)
      acc = lax.fori_loop(0, k_iters, step, acc0)
    elif variant == "deq":
      def scope(acc_ref):
        bq_w, aq_w = bq.at[wg], (None if a_regs else aq.at[wg])
        def step(_, c):
          b_scale = lambda i: plgpu.load(sb_w.at[i], layout=plgpu.Layout.WGMMA.reduce(1))
          for off, bt in mg.dequant_blocks(b_w, "fp8", tk, b_scale):
            bq_w.at[:, pl.ds(off, mg.BLOCK)][...] = bt
          plgpu.commit_smem()
          a_scale = lambda i: plgpu.load(sa_w.at[i], layout=plgpu.Layout.WGMMA.reduce(1))
          for off, at in mg.dequant_blocks(a_w, "fp8", tk, a_scale):
            if not a_regs:
              aq_w.at[:, pl.ds(off, mg.BLOCK)][...] = at
              plgpu.commit_smem()
              at = aq_w.at[:, pl.ds(off, mg.BLOCK)]
            plgpu.wgmma(acc_ref, at, bq_w.at[:, pl.ds(off, mg.BLOCK)].T)
          plgpu.wgmma_wait(0)
          return c
        lax.fori_loop(0, k_iters, step, 0)
        return acc_ref[...]
      acc = pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))
    elif variant in ("mma", "bf16mma"):
      def scope(acc_ref):
        def step(_, c):
          for j in range(nblk):
            plgpu.wgmma(acc_ref, *blk(j))
          plgpu.wgmma_wait(nblk)  # at most one step's wgmmas in flight
          return c
        lax.fori_loop(0, k_iters, step, 0)
        return acc_ref[...]
      acc = pl.run_scoped(scope, plgpu.ACC(shape, jnp.float32))
    else:
      def step(_, acc):
        if not pair:
          for j in range(nblk):
            def part(p_ref, j=j):
              plgpu.wgmma(p_ref, *blk(j))
              return p_ref[...]
            acc = promote(acc, pl.run_scoped(part, plgpu.ACC(shape, jnp.float32)), j)
          return acc
        for j in range(0, nblk, 2):
          def part2(p0, p1, j=j, acc=acc):
            plgpu.wgmma(p0, *blk(j))
            plgpu.wgmma(p1, *blk(j + 1))
            acc = promote(acc, plgpu.wgmma_accumulator_load(p0, wait_n=1), j)
            return promote(acc, plgpu.wgmma_accumulator_load(p1, wait_n=0), j + 1)
          acc = pl.run_scoped(part2, plgpu.ACC(shape, jnp.float32), plgpu.ACC(shape, jnp.float32))
        return acc
      acc0 = plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)
      acc = lax.fori_loop(0, k_iters, step, acc0)
    o_s.at[wg][...] = acc.astype(jnp.bfloat16)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_s.at[wg], o_g.at[pl.ds(r0, TM), pl.ds(ni * TN, TN)])
    plgpu.wait_smem_to_gmem(0)

  scratch = dict(
      a_s=plgpu.SMEM((wgs, TM, tk), a.dtype, transforms=mg._block_tiled(a.dtype)),
      b_s=plgpu.SMEM((wgs, TN, tk), b.dtype, transforms=mg._block_tiled(b.dtype)),
      sa_s=plgpu.SMEM((wgs, nblk, TM), jnp.float32), sb_s=plgpu.SMEM((wgs, nblk, TN), jnp.float32),
      o_s=plgpu.SMEM((wgs, TM, TN), bf16, transforms=mg._tiled(TN, bf16)),
      bar=plgpu.Barrier(num_arrivals=6 if smma else 4, num_barriers=wgs))
  if variant == "deq":  # the dequantized B tile, and A's where the wgmma cannot take it from registers
    scratch["bq"] = plgpu.SMEM((wgs, TN, tk), bf16, transforms=mg._block_tiled(bf16))
    if not a_regs:
      scratch["aq"] = plgpu.SMEM((wgs, TM, tk), bf16, transforms=mg._block_tiled(bf16))
  if smma:
    scratch["sam_s"] = plgpu.SMEM((wgs, nblk, TM, 16), bf16, transforms=mg._tiled(16, bf16))
    scratch["sbm_s"] = plgpu.SMEM((wgs, nblk, TN, 16), bf16, transforms=mg._tiled(16, bf16))
  f = plgpu.kernel(
      kernel, out_type=jax.ShapeDtypeStruct((m, n), jnp.bfloat16), grid=(m // (wgs * TM), n // TN),
      grid_names=("m", "n"), num_threads=wgs, thread_name="wg",
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      scratch_types=scratch,
      interpret=plgpu.InterpretGPUParams() if interpret else None)
  return f(a, b, sa, sb, sam, sbm) if smma else f(a, b, sa, sb)


def reference(a, b, sa, sb, k_iters: int, variant: str) -> np.ndarray:
  """float64 model of the kernel's sum (per-block partials times the variant's scales), k_iters times."""
  if variant == "bf16mma":
    sa, sb = jnp.ones_like(sa), jnp.ones_like(sb)
  a64, b64 = np.asarray(a.astype(jnp.float32), np.float64), np.asarray(b.astype(jnp.float32), np.float64)
  sa64, sb64 = np.asarray(sa, np.float64), np.asarray(sb, np.float64)
  out = np.zeros((a.shape[0], b.shape[0]))
  for j in range(a.shape[1] // mg.BLOCK):
    p = a64[:, 32 * j:32 * j + 32] @ b64[:, 32 * j:32 * j + 32].T
    if variant in ("row", "promote", "smma", "deq"):
      p = p * sa64[j][:, None]
    if variant in ("promote", "smma", "deq"):
      p = p * sb64[j][None, :]
    out += p
  return out * k_iters


def inputs(m, n, tk, seed=0):
  ka, kb, ksa, ksb = jax.random.split(jax.random.key(seed), 4)
  a = jax.random.normal(ka, (m, tk), jnp.float32).astype(jnp.float8_e4m3fn)
  b = jax.random.normal(kb, (n, tk), jnp.float32).astype(jnp.float8_e4m3fn)
  sa = jnp.exp2(jax.random.randint(ksa, (tk // 32, m), -3, 4).astype(jnp.float32))
  sb = jnp.exp2(jax.random.randint(ksb, (tk // 32, n), -3, 4).astype(jnp.float32))
  return a, b, sa, sb


def check(interpret: bool, m=256, n=256, tk=128, k_iters=3) -> bool:
  a, b, sa, sb = inputs(m, n, tk)
  ok = True
  for v in VARIANTS:
    out = np.asarray(ceiling_gemm(a, b, sa, sb, variant=v, k_iters=k_iters, interpret=interpret), np.float64)
    ref = reference(a, b, sa, sb, k_iters, v)
    err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    good = err < 1e-2  # bf16 output
    ok &= bool(good)
    print(f"check {v}: max err / max |ref| = {err:.2e} {'OK' if good else 'BAD'}", flush=True)
  return ok


def timeit(fn, args, reps=9):
  """Median seconds of the jitted ``fn(*args)`` over ``reps`` calls after one (compiling) call."""
  return profile_util.median_ms(jax.jit(fn), *args, iters=reps) / 1e3


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--check", action="store_true")
  ap.add_argument("--m", type=int, default=8192)
  ap.add_argument("--n", type=int, default=8192)
  ap.add_argument("--k", type=int, default=8192)
  ap.add_argument("--tks", default="128,256")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--wgs3", action="store_true", help="also promote / row with three compute warpgroups")
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  args = ap.parse_args()
  on_gpu = jax.default_backend() == "gpu"
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  if args.check and not check(interpret=not on_gpu):
    raise SystemExit("check failed")
  if not on_gpu:
    return
  m, n, k = args.m, args.n, args.k
  flops = 2 * m * n * k
  rows = {}
  # baselines in the same process, on full-size MX operands
  import mx_jax
  key = jax.random.key(1)
  qa = mx_jax.quantize(jax.random.normal(key, (m, k), jnp.float32), "mxfp8_e4m3", axis=1)
  qb = mx_jax.quantize(jax.random.normal(jax.random.fold_in(key, 1), (n, k), jnp.float32), "mxfp8_e4m3", axis=1)
  nt = (((1,), (1,)), ((), ()))
  base = {
      "lax.scaled_dot": lambda x, y: lax.scaled_dot(x.data, y.data, lhs_scale=x.scales, rhs_scale=y.scales,
                                                    dimension_numbers=nt, preferred_element_type=jnp.bfloat16),
      "mx_matmul (kernel default)": lambda x, y: mx_jax.mx_matmul(x, y, out_dtype=jnp.bfloat16, impl="mgpu"),
      "cuBLAS FP8 per-tensor": lambda x, y: lax.dot_general(x.data, y.data, nt, preferred_element_type=jnp.bfloat16),
  }
  for name, fn in base.items():
    t = timeit(fn, (qa, qb))
    rows[name] = t
    print(f"{name:<34s} {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s", flush=True)
  del qa, qb
  for tk in [int(v) for v in args.tks.split(",")]:
    a, b, sa, sb = inputs(m, n, tk)
    runs = [(v, p, 2) for v in VARIANTS for p in ((True, False) if v in PAIRED else (True,))]
    runs += [("promote", True, 3), ("row", True, 3)] if args.wgs3 else []
    for v, pair, wgs in runs:
      if v not in args.variants.split(",") or (v in ("deq", "bf16mma", "smma") and tk > 128):  # SMEM
        continue
      name = f"ceiling {v} tk{tk}{' pair' if pair and v in PAIRED else ''}{' wgs3' if wgs == 3 else ''}"
      mr = m - m % (wgs * TM)  # 8064 rows for 3 warpgroups
      try:
        fn = functools.partial(ceiling_gemm, variant=v, k_iters=k // tk, pair=pair, wgs=wgs)
        t = timeit(fn, (a[:mr], b, sa[:, :mr], sb))
        rows[name] = t
        fl = 2 * mr * n * k
        print(f"{name:<34s} {t * 1e3:8.3f} ms {fl / t / 1e12:7.1f} TFLOP/s "
              f"{rows['lax.scaled_dot'] / flops * fl / t:5.2f}x scaled_dot's rate", flush=True)
      except Exception as e:  # a config that does not build is reported, the rest still run
        print(f"{name}: ERR {type(e).__name__}: {str(e)[:300]}", flush=True)
  with open(os.path.join(args.out, "ceiling_gemm.json"), "w") as f:
    json.dump({"m": m, "n": n, "k": k, "seconds": rows}, f, indent=1)


if __name__ == "__main__":
  main()
