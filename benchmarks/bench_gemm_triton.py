"""The Pallas-Triton block-scaled GEMM (kernels/gemm_triton.py) on the GPU: exactness, then speed beside
``jax.lax.scaled_dot``, bf16 ``jnp.dot`` and the Mosaic GPU kernel, all in this process.

  python3 benchmarks/bench_gemm_triton.py --sections check,sweep,sizes --out $OUT [--smoke]

check: every config against an exact float64 product of the dequantized operands (f32 out, relative max error
<= 1e-5; odd shapes, mixed formats, a batch, scales near the ends of ``exact_scale_range``). sweep: the tile
configs (``--cfgs``, indices into ``CFGS``) at 8192^3 MXFP8 -> bf16. sizes: the best config over ``--sizes``.
Timing: bench_matmul.timeit (inputs sets jitted together, median of 7 wall times per set).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mx_jax  # noqa: E402
from benchmarks import bench_matmul as bm  # noqa: E402
from kernels import gemm_triton as gt  # noqa: E402
from mx_jax.matmul import mx_matmul  # noqa: E402

C = gt.TritonGemmConfig
CFGS = (
    C(128, 256, 64, 8, 8, 3),    # 0 the default
    C(128, 256, 64, 8, 8, 4),
    C(128, 128, 64, 8, 4, 4),
    C(128, 128, 128, 8, 8, 3),
    C(256, 128, 64, 8, 8, 3),
    C(128, 256, 128, 8, 8, 3),   # 5
    C(64, 256, 64, 8, 4, 4),
    C(128, 128, 64, 8, 8, 4),
    C(128, 256, 64, 8, 8, 3, "asm"),
    C(128, 256, 64, 16, 8, 3),
    C(256, 256, 64, 8, 8, 3),    # 10
    C(128, 256, 32, 8, 8, 5),
    C(128, 256, 64, 8, 8, 3, scale="block"),    # 12
    C(128, 256, 128, 8, 8, 3, scale="block"),
    C(128, 128, 64, 8, 4, 4, scale="block"),
    C(128, 128, 128, 8, 4, 3, scale="block"),   # 15
)


def plain_bf16_gemm(a, b, cfg, out_dtype=jnp.bfloat16):
  """Diagnostic: the same grid and K loop on bf16 operands (no decode, no scales): Pallas-Triton's own bf16
  GEMM at this tile, the ceiling of the dequantizing kernel."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as pltriton
  m, k = a.shape
  n = b.shape[0]
  bm_, bn_, bk = cfg.block_m, cfg.block_n, cfg.block_k
  tm, tn = m // bm_, n // bn_
  tile = lambda p: gt._tile_of(p, tm, tn, cfg.group_m)

  def kernel(a_ref, b_ref, o_ref):
    def step(t, acc):
      at = pltriton.load(a_ref.at[:, pl.ds(t * bk, bk)])
      bt = pltriton.load(b_ref.at[:, pl.ds(t * bk, bk)])
      return acc + jax.lax.dot_general(at, bt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    acc = jax.lax.fori_loop(0, k // bk, step, jnp.zeros((bm_, bn_), jnp.float32))
    o_ref[...] = acc.astype(out_dtype)

  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((m, n), out_dtype), grid=(tm * tn,),
      in_specs=[pl.BlockSpec((bm_, k), lambda p: (tile(p)[0], 0)), pl.BlockSpec((bn_, k), lambda p: (tile(p)[1], 0))],
      out_specs=pl.BlockSpec((bm_, bn_), lambda p: tile(p)),
      compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages))(a, b)


def section_diag(args, cfgs):
  """Pallas-Triton's bf16 GEMM at the same tiles, and the dequantizing kernel without its scale multiply."""
  m = n = k = 256 if bm.SMOKE else 8192
  bm.log(f"\n## diag ({m}x{n}x{k}): plain bf16 Pallas-Triton GEMM; MXFP8 kernel with the scales left out")
  sets = bm.gemm_inputs(m, n, k)
  flops = 2 * m * n * k
  bsets = [(mx_jax.dequantize(a, jnp.bfloat16), mx_jax.dequantize(b, jnp.bfloat16)) for a, b in sets]
  for cfg in cfgs:
    try:
      t = bm.timeit(lambda a, b, cfg=cfg: plain_bf16_gemm(a, b, cfg), bsets)
      bm.log(f"  bf16 plain {cfg.name():28s} {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s")
    except Exception as e:
      bm.log(f"  ERR bf16 plain {cfg.name()}: {type(e).__name__}: {str(e)[:300]}")
  real = gt._scale_tile
  gt._scale_tile = lambda sraw, rows, nb: jnp.ones((rows, nb * gt.BLOCK), jnp.bfloat16)
  try:
    for cfg in cfgs:
      if cfg.scale != "bcast":
        continue
      try:
        t = bm.timeit(gemm_fn(cfg), sets)
        bm.log(f"  no-scale   {cfg.name():28s} {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s")
      except Exception as e:
        bm.log(f"  ERR no-scale {cfg.name()}: {type(e).__name__}: {str(e)[:300]}")
  finally:
    gt._scale_tile = real


def section_dump(args, cfgs):
  """Compiles and runs each config once at 1024^3 (run with XLA_FLAGS=--xla_dump_to=... to keep Triton's IR)."""
  sets = bm.gemm_inputs(1024, 1024, 1024, nsets=1)
  for cfg in cfgs:
    jax.block_until_ready(jax.jit(gemm_fn(cfg))(*sets[0]))
    bm.log(f"  dumped {cfg.name()}")


def gemm_fn(cfg):
  def f(a, b):
    return gt.mx_gemm(a, b, out_dtype=jnp.bfloat16, config=cfg, interpret=bm.SMOKE)
  return f


def section_check(args, cfgs):
  bm.log("\n## check (f32 out vs exact f64 of the dequantized operands)")
  key = jax.random.key(7)
  cases = [((1000, 520, 1000), "mxfp8_e4m3", "mxfp8_e5m2", 0), ((256, 384, 4096), "mxfp4_e2m1", "mxfp6_e3m2", 0),
           ((200, 256, 512), "mxint8", "mxfp8_e4m3", 0), ((3, 70, 130, 96), "mxfp8_e4m3", "mxfp8_e4m3", 0),
           ((256, 256, 1024), "mxfp8_e4m3", "mxfp8_e4m3", 1)]
  if bm.SMOKE:
    cases = [((70, 40, 96), "mxfp8_e4m3", "mxfp8_e5m2", 0), ((2, 33, 20, 64), "mxint8", "mxfp4_e2m1", 1)]
  ok_all = True
  for shape, fa, fb, extreme in cases:
    *bat, m, n, k = shape
    ka, kb = jax.random.split(jax.random.fold_in(key, m * n + k))
    x = jax.random.normal(ka, (*bat, m, k), jnp.float32)
    w = jax.random.normal(kb, (*bat, n, k), jnp.float32)
    if extreme:  # per-row magnitudes 2^-100 .. 2^100 (scales near the ends of the exact range)
      x = x * 2.0 ** jnp.linspace(-100, 100, m)[:, None]
      w = w * 2.0 ** jnp.linspace(100, -100, n)[:, None]
    qa = mx_jax.quantize(x, fa, axis=-1)
    qb = mx_jax.quantize(w, fb, axis=-1)
    da = np.asarray(mx_jax.dequantize(qa, jnp.float32), np.float64)
    db = np.asarray(mx_jax.dequantize(qb, jnp.float32), np.float64)
    ref = np.einsum("...mk,...nk->...mn", da, db)
    for cfg in cfgs:
      try:
        out = np.asarray(jax.jit(lambda a, b, cfg=cfg: gt.mx_gemm(a, b, out_dtype=jnp.float32, config=cfg,
                                                                    interpret=bm.SMOKE))(qa, qb), np.float64)
        # each element's error against the FP32 summation bound's scale sum |a| |b| (where that is inside
        # FP32's normal range: the extreme rows' products span 2^-200 .. 2^200)
        mag = np.einsum("...mk,...nk->...mn", np.abs(da), np.abs(db))
        sel = (mag >= 2.0 ** -100) & (mag <= 2.0 ** 100)
        err = float(np.max(np.abs(out - ref)[sel] / mag[sel]))
        tol = 1e-5
        ok = bool(np.isfinite(out[sel]).all()) and err <= tol
        ok_all &= ok
        bm.log(f"  {shape} {fa} x {fb}{' extreme' if extreme else ''} {cfg.name()}: rel err {err:.2e} "
               f"{'OK' if ok else 'BAD'}")
      except Exception as e:
        ok_all = False
        bm.log(f"  ERR {shape} {fa} x {fb} {cfg.name()}: {type(e).__name__}: {str(e)[:400]}")
  bm.log(f"check: {'ALL OK' if ok_all else 'FAILURES ABOVE'}")


def _baselines(sets, m, n, k, flops, mx_bytes, row, mgpu=True):
  base = [("lax.scaled_dot (XLA)", bm.scaled_dot_fn, lambda s: s, mx_bytes, bm.PEAK_BF16),
          ("bf16 jnp.dot (bf16 out)", bm.bf16_fn,
           lambda s: (mx_jax.dequantize(s[0], jnp.bfloat16), mx_jax.dequantize(s[1], jnp.bfloat16).T),
           2 * (m * k + n * k + m * n), bm.PEAK_BF16)]
  if mgpu:
    base.append(("mgpu design (a) default", lambda a, b: mx_matmul(a, b, out_dtype=jnp.bfloat16, impl="mgpu"),
                 lambda s: s, mx_bytes, bm.PEAK_FP8))
  for name, fn, mk, nbytes, peak in base:
    try:
      isets = [tuple(mk(s)) for s in sets]
      t = bm.timeit(fn, isets)
      row[name] = t
      bm.log("    " + bm.fmt_row(name, t, flops, nbytes, peak))
      del isets
    except Exception as e:
      bm.log(f"    ERR {name}: {type(e).__name__}: {str(e)[:300]}")


def section_sweep(args, cfgs):
  m = n = k = 256 if bm.SMOKE else 8192
  bm.log(f"\n## sweep (MXFP8 e4m3 x e4m3 -> bf16, {m}x{n}x{k})")
  sets = bm.gemm_inputs(m, n, k)
  flops = 2 * m * n * k
  mx_bytes = bm.q_bytes(sets[0][0]) + bm.q_bytes(sets[0][1]) + m * n * 2
  row = {}
  _baselines(sets, m, n, k, flops, mx_bytes, row, mgpu=not bm.SMOKE)
  ref = np.asarray(jax.jit(lambda a, b: mx_matmul(a, b, out_dtype=jnp.float32, impl="xla"))(*sets[0]), np.float32)
  best = None
  for cfg in cfgs:
    try:
      t = bm.timeit(gemm_fn(cfg), sets)
      out = np.asarray(jax.jit(gemm_fn(cfg))(*sets[0]), np.float32)
      err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
      ok = bool(np.isfinite(out).all()) and err < 1e-2
      sd = row.get("lax.scaled_dot (XLA)")
      bm.log("  " + bm.fmt_row(cfg.name(), t, flops, mx_bytes, bm.PEAK_BF16) + f" | vs ref {err:.1e} "
             f"{'OK' if ok else 'BAD'}" + (f" | {sd / t:.3f}x scaled_dot" if sd else ""))
      if ok and (best is None or t < best[1]):
        best = (cfg, t)
    except Exception as e:
      bm.log(f"  ERR {cfg.name()}: {type(e).__name__}: {str(e)[:400]}")
  # the baselines again, after the configs (clock / thermal drift between the two ends of the sweep)
  row2 = {}
  _baselines(sets, m, n, k, flops, mx_bytes, row2, mgpu=False)
  if best:
    bm.log(f"  best: {best[0].name()} {flops / best[1] / 1e12:.1f} TFLOP/s")
  return best[0] if best else None


def section_sizes(args, cfg):
  bm.log(f"\n## sizes ({cfg.name()})")
  shapes = [(256, 256, 256)] if bm.SMOKE else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
  for (m, n, k) in shapes:
    nsets = 1 if m * n * k >= 16384 ** 3 else (8 if m * n * k <= 2048 ** 3 else 2)
    sets = bm.gemm_inputs(m, n, k, nsets=nsets)
    flops = 2 * m * n * k
    mx_bytes = bm.q_bytes(sets[0][0]) + bm.q_bytes(sets[0][1]) + m * n * 2
    bm.log(f"  M={m} N={n} K={k}")
    row = {}
    try:
      t = bm.timeit(gemm_fn(cfg), sets)
      row["triton"] = t
      bm.log("    " + bm.fmt_row(f"triton {cfg.name()}", t, flops, mx_bytes, bm.PEAK_BF16))
    except Exception as e:
      bm.log(f"    ERR {cfg.name()}: {type(e).__name__}: {str(e)[:300]}")
    _baselines(sets, m, n, k, flops, mx_bytes, row, mgpu=not bm.SMOKE)
    if "triton" in row and "lax.scaled_dot (XLA)" in row:
      bm.log(f"    triton vs scaled_dot: {row['lax.scaled_dot (XLA)'] / row['triton']:.3f}x")
    del sets


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--sections", default="check,sweep,sizes")
  p.add_argument("--cfgs", default=",".join(str(i) for i in range(len(CFGS))))
  p.add_argument("--check-cfgs", default="0")
  p.add_argument("--sizes", default="8192x8192x8192,2048x2048x2048,4096x4096x4096,16384x16384x16384,"
                                    "8192x2048x2048,8192x2048x8192,8192x8192x2048")
  p.add_argument("--budget", type=float, default=540)
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true")
  args = p.parse_args()
  bm.SMOKE = args.smoke
  bm.BUDGET_S = args.budget
  bm.T_START = time.time()
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    bm.LOG_PATH = os.path.join(args.out, "bench_gemm_triton.log")
  bm.log(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}")
  cfgs = [CFGS[int(i)] for i in args.cfgs.split(",")]
  best = CFGS[0]
  try:
    for s in args.sections.split(","):
      if s == "check":
        section_check(args, [CFGS[int(i)] for i in args.check_cfgs.split(",")])
      elif s == "sweep":
        best = section_sweep(args, cfgs) or best
      elif s == "sizes":
        section_sizes(args, best)
      elif s == "diag":
        section_diag(args, cfgs)
      elif s == "dump":
        section_dump(args, cfgs)
  except bm.OutOfTime as e:
    bm.log(f"stopped: {e}")


if __name__ == "__main__":
  main()
