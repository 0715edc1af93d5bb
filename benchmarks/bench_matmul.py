"""Block-scaled (MX) matmul on Hopper: correctness, design sweep, baselines, accuracy, weight-only.

One process; every number comes from this run. Run on the H100 machine:

  PYTHONUNBUFFERED=1 python3 benchmarks/bench_matmul.py --out $OUT            # everything
  python3 benchmarks/bench_matmul.py --sections check,sweep --out $OUT        # a subset
  JAX_PLATFORMS=cpu python benchmarks/bench_matmul.py --smoke                 # CPU dry run (interpret mode)

Sections: env, sass (the FP8 kernel's SASS opcode counts and ptxas resource report), check (kernels vs an
FP32-HIGHEST reference, poisoned outputs), sweep (tile configs of both designs at 8192^3), sizes (best configs vs jax.lax.scaled_dot, bf16 jnp.dot, cuBLAS FP8), acc (error vs an
exact float64 sum at K = 1024..16384), wo (weight-only at M = 1..256, K = N = 8192).

Timing: each measured function is jitted over R independent input sets (one dispatch, R launches back to
back, so host dispatch and L2 residency of a repeated operand stay out); the median over repeats of
(wall time / R) after warm-up. Times include the glue (scale re-layout) the public API runs.
Floors beside each time: FLOPs at the dense tensor-core peak (H100 SXM: 989 TFLOP/s bf16, 1979 FP8) and
bytes (each input read once, output written once) at 3.35 TB/s; "floor" is the larger.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if "--smoke" in sys.argv:  # Mosaic GPU's interpreter parks a host thread per warpgroup (see mx_matmul_mgpu)
  os.environ.setdefault("NPROC", "32")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import mx_jax  # noqa: E402
from kernels import mx_matmul as glue  # noqa: E402
from kernels import mx_matmul_mgpu as mg  # noqa: E402
from mx_jax.matmul import mx_matmul, mx_weight_only_matmul, prepare_weight_only  # noqa: E402

PEAK_BF16 = 989e12
PEAK_FP8 = 1979e12
HBM = 3.35e12
NT = (((1,), (1,)), ((), ()))

LOG = []
SMOKE = False
LOG_PATH = None
T_START = time.time()
BUDGET_S = 1e9


class OutOfTime(BaseException):  # not caught by the per-config "except Exception"
  pass


def log(*a):
  s = " ".join(str(x) for x in a)
  print(s, flush=True)
  LOG.append(s)
  if LOG_PATH:
    with open(LOG_PATH, "a") as f:
      f.write(s + "\n")


def guard():
  """Stops the run (cleanly, log kept) once the time budget is spent: the device call has a hard limit."""
  if time.time() - T_START > BUDGET_S:
    raise OutOfTime(f"time budget of {BUDGET_S:.0f} s spent")


def timeit(fn, sets, reps=7, min_time=None):
  """Median seconds per call of fn(*set) over the input sets (jitted together, one dispatch)."""
  guard()
  multi = jax.jit(lambda ss: [fn(*s) for s in ss])
  out = multi(sets)
  jax.block_until_ready(out)
  del out
  ts = []
  for _ in range(1 if SMOKE else reps):
    t0 = time.perf_counter()
    jax.block_until_ready(multi(sets))
    ts.append((time.perf_counter() - t0) / len(sets))
  return float(np.median(ts))


def floors(flops, nbytes, peak):
  tf, tb = flops / peak, nbytes / HBM
  return tf, tb, max(tf, tb)


def fmt_row(name, t, flops, nbytes, peak):
  tf, tb, fl = floors(flops, nbytes, peak)
  return (f"{name:<34s} {t * 1e3:9.3f} ms {flops / t / 1e12:8.1f} TFLOP/s {nbytes / t / 1e12:6.2f} TB/s | "
          f"floor {fl * 1e3:7.3f} ms (flops {tf * 1e3:.3f}, bytes {tb * 1e3:.3f}) = {fl / t * 100:5.1f}% of floor")


def rand_q(key, shape, fmt, dist="normal", packed=False):
  if dist == "normal":
    x = jax.random.normal(key, shape, jnp.float32)
  else:
    x = jax.random.uniform(key, shape, jnp.float32)
  return mx_jax.quantize(x, fmt, axis=1, packed=packed)


def q_bytes(q):
  return q.packed_nbytes


def gemm_fn(cfg):
  def f(a, b):
    return mx_matmul(a, b, out_dtype=jnp.bfloat16, impl="mgpu", config=cfg, interpret=SMOKE)
  return f


def scaled_dot_fn(a, b):
  return lax.scaled_dot(a.data, b.data, lhs_scale=a.scales, rhs_scale=b.scales, dimension_numbers=NT,
                        preferred_element_type=jnp.bfloat16)


def cublas_fp8_fn(a, b):
  return lax.dot_general(a.data, b.data, NT, preferred_element_type=jnp.float32)


def bf16_fn(x, y_kn):
  return jnp.dot(x, y_kn, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def xla_deq_fn(a, b):  # what a user gets from XLA: dequantize to bf16, bf16 GEMM
  return lax.dot_general(mx_jax.dequantize(a, jnp.bfloat16), mx_jax.dequantize(b, jnp.bfloat16), NT,
                         preferred_element_type=jnp.float32).astype(jnp.bfloat16)


# ----------------------------------------------------------------------------------------------------------


def section_env(args):
  d = jax.devices()[0]
  log(f"jax {jax.__version__}, device {d.device_kind} ({d.platform}), cc {getattr(d, 'compute_capability', None)}, "
      f"cores {getattr(d, 'core_count', None)}")


def poison():
  """Fill the allocator's free memory with NaN so an unwritten output element shows up."""
  if SMOKE:
    return
  x = jnp.full((1 << 28,), jnp.nan, jnp.float32)  # 1 GiB
  x.block_until_ready()
  del x


def section_check(args, gemm_cfgs, wo_cfgs):
  if args.check_wo == "min":
    wo_cfgs = wo_cfgs[:1] + [c for c in wo_cfgs if c.decode == "denorm"]
  elif args.check_wo == "none":
    wo_cfgs = []
  """Every config against an FP32 HIGHEST reference; poisoned output memory; odd shapes; all formats."""
  log("\n## check")
  key = jax.random.key(1)
  cases = [((256, 256, 256), "mxfp8_e4m3", "mxfp8_e5m2", gemm_cfgs)] if SMOKE else [
      ((1000, 520, 1000), "mxfp8_e4m3", "mxfp8_e5m2", gemm_cfgs),
      ((1024, 1024, 1024), "mxfp8_e4m3", "mxfp8_e4m3", [glue.DEFAULT_FP8, glue.DEFAULT_BF16])]
  ok_all = True
  ref_fn = jax.jit(lambda a, b: mx_matmul(a, b, out_dtype=jnp.float32, impl="xla"))
  for (m, n, k), fa, fb, cfgs in cases:
    a = rand_q(jax.random.fold_in(key, 1), (m, k), fa)
    b = rand_q(jax.random.fold_in(key, 2), (n, k), fb)
    ref = np.asarray(ref_fn(a, b), np.float64)
    for cfg in cfgs:
      guard()
      try:
        poison()
        f = jax.jit(lambda a, b, cfg=cfg: mx_matmul(a, b, out_dtype=jnp.float32, impl="mgpu", config=cfg,
                                                    interpret=SMOKE))
        out = np.asarray(f(a, b), np.float64)
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        fin = bool(np.isfinite(out).all())
        ok = fin and err < 2e-3
        ok_all &= ok
        log(f"  {'OK ' if ok else 'BAD'} {cfg.name():<40s} {fa}x{fb} {m}x{n}x{k}: rel err {err:.2e} all-finite {fin}")
      except Exception as e:  # keep going: report which configs fail to build
        ok_all = False
        log(f"  ERR {cfg.name()} {m}x{n}x{k}: {type(e).__name__}: {str(e)[:600]}")
  # other formats through the default design choice and the bf16 design (packed FP4/FP6 in-kernel)
  m, n, k = (256, 256, 256) if SMOKE else (512, 384, 1024)
  for fa, fb, pk in [("mxfp4_e2m1", "mxfp6_e3m2", True), ("mxint8", "mxfp4_e2m1", True),
                     ("mxfp6_e2m3", "mxfp8_e5m2", False)]:
    a = rand_q(jax.random.fold_in(key, 3), (m, k), fa, packed=pk)
    b = rand_q(jax.random.fold_in(key, 4), (n, k), fb, packed=pk)
    ref = np.asarray(ref_fn(a, b), np.float64)
    for impl in ("mgpu", "mgpu_bf16"):
      try:
        poison()
        out = np.asarray(jax.jit(lambda a, b, impl=impl: mx_matmul(a, b, out_dtype=jnp.float32, impl=impl,
                                                                   interpret=SMOKE))(a, b), np.float64)
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        ok = np.isfinite(out).all() and err < 2e-3
        ok_all &= bool(ok)
        log(f"  {'OK ' if ok else 'BAD'} {impl:<10s} {fa}x{fb} packed={pk}: rel err {err:.2e}")
      except Exception as e:
        ok_all = False
        log(f"  ERR {impl} {fa}x{fb}: {type(e).__name__}: {str(e)[:600]}")
  # weight-only, every weight format (--check-wo none: skipped)
  n, k = (128, 512) if SMOKE else (1024, 2048)
  for fmt in ("mxfp8_e4m3", "mxfp4_e2m1", "mxfp6_e2m3", "mxfp6_e3m2", "mxint8", "nvfp4") if wo_cfgs else ():
    guard()
    w = rand_q(jax.random.fold_in(key, 5), (n, k), fmt, packed=fmt == "mxfp4_e2m1")
    pw = prepare_weight_only(w)
    for mrows in (1, 16):
      x = jax.random.normal(jax.random.fold_in(key, 6), (mrows, k), jnp.bfloat16)
      ref = np.asarray(mx_weight_only_matmul(x, w, out_dtype=jnp.float32, impl="xla"), np.float64)
      for cfg in wo_cfgs:
        if SMOKE and cfg.decode == "denorm":
          continue
        try:
          poison()
          out = np.asarray(jax.jit(lambda x, pw, cfg=cfg: glue.weight_only_matmul(
              x, pw, out_dtype=jnp.float32, config=cfg, interpret=SMOKE))(x, pw), np.float64)
          err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
          ok = np.isfinite(out).all() and err < 1e-3
          ok_all &= bool(ok)
          log(f"  {'OK ' if ok else 'BAD'} {cfg.name():<34s} {fmt} M={mrows}: rel err {err:.2e}")
        except Exception as e:
          ok_all = False
          log(f"  ERR {cfg.name()} {fmt}: {type(e).__name__}: {str(e)[:600]}")
  log(f"check: {'ALL OK' if ok_all else 'FAILURES ABOVE'}")
  return ok_all


def gemm_inputs(m, n, k, fa="mxfp8_e4m3", fb="mxfp8_e4m3", nsets=2):
  key = jax.random.key(m * 7 + n * 3 + k)
  return [(rand_q(jax.random.fold_in(key, 2 * i), (m, k), fa), rand_q(jax.random.fold_in(key, 2 * i + 1), (n, k), fb))
          for i in range(nsets)]


def section_sweep(args, cfgs):
  log("\n## sweep (MXFP8 x MXFP8, 8192^3 unless --smoke)")
  m = n = k = 256 if SMOKE else 8192
  sets = gemm_inputs(m, n, k)
  flops = 2 * m * n * k
  nbytes = q_bytes(sets[0][0]) + q_bytes(sets[0][1]) + m * n * 2
  best = {}
  ref = np.asarray(jax.jit(lambda a, b: mx_matmul(a, b, out_dtype=jnp.float32, impl="xla"))(*sets[0]), np.float32)
  for cfg in cfgs:
    try:
      t = timeit(gemm_fn(cfg), sets)
      out = np.asarray(jax.jit(gemm_fn(cfg))(*sets[0]), np.float32)
      err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
      ok = bool(np.isfinite(out).all()) and err < 1e-2  # bf16 output rounding ~ 2^-9
      log("  " + fmt_row(cfg.name(), t, flops, nbytes, PEAK_FP8) + f" | vs ref {err:.1e} {'OK' if ok else 'BAD'}")
      if not ok:
        continue
      if cfg.variant not in best or t < best[cfg.variant][1]:
        best[cfg.variant] = (cfg, t)
    except Exception as e:
      log(f"  ERR {cfg.name()}: {type(e).__name__}: {str(e)[:400]}")
  for v, (cfg, t) in best.items():
    log(f"  best {v}: {cfg.name()} {flops / t / 1e12:.1f} TFLOP/s")
  return {v: c for v, (c, _) in best.items()}


def section_sizes(args, best):
  log("\n## sizes (MXFP8 x MXFP8 -> bf16; bf16 and FP8 baselines on the same shapes)")
  if SMOKE:
    shapes = [(256, 256, 256)]
  else:
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.sizes.split(",")]
  results = []
  for (m, n, k) in shapes:
    nsets = 1 if m * n * k >= 16384 ** 3 else (8 if m * n * k <= 2048 ** 3 else 2)
    sets = gemm_inputs(m, n, k, nsets=nsets)
    flops = 2 * m * n * k
    mx_bytes = q_bytes(sets[0][0]) + q_bytes(sets[0][1]) + m * n * 2
    log(f"  M={m} N={n} K={k}")
    row = {"m": m, "n": n, "k": k}
    for v, cfg in best.items():
      if args.sizes_lite and v != "fp8" and (m, n, k) != (8192, 8192, 8192):
        continue
      try:
        t = timeit(gemm_fn(cfg), sets)
        row[f"mx_{v}"] = t
        log("    " + fmt_row(f"mx {v} ({cfg.name()})", t, flops, mx_bytes, PEAK_FP8))
      except Exception as e:
        log(f"    ERR {cfg.name()}: {type(e).__name__}: {str(e)[:300]}")
    for name, fn, mk, nbytes, peak in [
        ("lax.scaled_dot (XLA)", scaled_dot_fn, lambda s: s, mx_bytes, PEAK_BF16),
        ("XLA dequant->bf16 dot", xla_deq_fn, lambda s: s, mx_bytes, PEAK_BF16),
        ("cuBLAS FP8 (f32 out)", cublas_fp8_fn, lambda s: s, m * k + n * k + m * n * 4, PEAK_FP8),
        ("bf16 jnp.dot (bf16 out)", bf16_fn,
         lambda s: (mx_jax.dequantize(s[0], jnp.bfloat16), mx_jax.dequantize(s[1], jnp.bfloat16).T),
         2 * (m * k + n * k + m * n), PEAK_BF16)]:
      if args.sizes_lite and name.startswith("XLA dequant") and (m, n, k) != (8192, 8192, 8192):
        continue
      try:
        isets = [tuple(mk(s)) for s in sets]
        t = timeit(fn, isets)
        row[name] = t
        log("    " + fmt_row(name, t, flops, nbytes, peak))
        del isets
      except Exception as e:
        log(f"    ERR {name}: {type(e).__name__}: {str(e)[:300]}")
    if "lax.scaled_dot (XLA)" in row:
      for v in best:
        if f"mx_{v}" in row:
          log(f"    speedup mx {v} vs scaled_dot: {row['lax.scaled_dot (XLA)'] / row[f'mx_{v}']:.2f}x")
    results.append(row)
    del sets
  return results


def section_sass(args):
  """Instruction mix of the default FP8 kernel's SASS (MOSAIC_GPU_DUMP_SASS / _PTXAS; nvdisasm must be on PATH)."""
  import collections
  import re
  import tempfile
  cfg = glue.DEFAULT_FP8
  log(f"\n## sass: opcode counts of the FP8 GEMM kernel ({cfg.name()})")
  os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/cuda/bin"
  sets = gemm_inputs(1024, 1024, 1024, nsets=1)
  with tempfile.TemporaryDirectory() as d:
    os.environ.update(MOSAIC_GPU_DUMP_SASS="1", MOSAIC_GPU_DUMP_PTXAS="1", MOSAIC_GPU_DUMP_TO=d)
    try:
      jax.block_until_ready(jax.jit(gemm_fn(cfg))(*sets[0]))
    finally:
      for v in ("MOSAIC_GPU_DUMP_SASS", "MOSAIC_GPU_DUMP_PTXAS", "MOSAIC_GPU_DUMP_TO"):
        os.environ.pop(v)
    texts = {f: open(os.path.join(d, f), errors="replace").read() for f in sorted(os.listdir(d))}
  sass = "".join(t for f, t in texts.items() if "sass" in f.lower())
  for f, t in texts.items():
    if "ptxas" in f.lower():
      log("  ptxas: " + " | ".join(ln.strip() for ln in t.splitlines() if re.search(r"registers|spill|stack", ln))[:600])
  ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass))
  keys = ["QGMMA", "FFMA", "FMUL", "FADD", "MOV", "CS2R", "IMAD", "LDS", "LDSM", "BAR", "SYNCS", "WARPGROUP"]
  log(f"  {len(texts)} dump files, {sum(ops.values())} SASS instructions (whole kernel, unrolled loop bodies): "
      + ", ".join(f"{k} {ops.get(k, 0)}" for k in keys))
  log("  top: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(20)))
  if args.out and sass:
    with open(os.path.join(args.out, "sass_fp8_gemm.txt"), "w") as f:
      f.write(sass[:8_000_000])


def section_acc(args, best):
  log("\n## accuracy: relative Frobenius error vs an exact float64 sum of the same quantized inputs")
  ks = [256, 512] if SMOKE else [int(v) for v in args.acc_ks.split(",")]
  m = n = 256
  for dist in ("normal", "uniform"):
    for k in ks:
      key = jax.random.key(k + (0 if dist == "normal" else 1))
      a = rand_q(jax.random.fold_in(key, 1), (m, k), "mxfp8_e4m3", dist)
      b = rand_q(jax.random.fold_in(key, 2), (n, k), "mxfp8_e4m3", dist)
      da = np.asarray(mx_jax.dequantize(a), np.float64)
      db = np.asarray(mx_jax.dequantize(b), np.float64)
      exact = da @ db.T
      ea = np.asarray(a.data.astype(jnp.float32), np.float64)
      eb = np.asarray(b.data.astype(jnp.float32), np.float64)
      exact_raw = ea @ eb.T
      res = {}
      for v, cfg in best.items():
        try:
          o = np.asarray(jax.jit(lambda a, b, cfg=cfg: mx_matmul(a, b, out_dtype=jnp.float32, impl="mgpu",
                                                                 config=cfg, interpret=SMOKE))(a, b), np.float64)
          res[f"mx {v}"] = np.linalg.norm(o - exact) / np.linalg.norm(exact)
        except Exception as e:
          res[f"mx {v}"] = float("nan")
          log(f"    ERR {v}: {str(e)[:200]}")
      o = np.asarray(jax.jit(lambda a, b: lax.scaled_dot(a.data, b.data, lhs_scale=a.scales, rhs_scale=b.scales,
                                                         dimension_numbers=NT,
                                                         preferred_element_type=jnp.float32))(a, b), np.float64)
      res["scaled_dot f32"] = np.linalg.norm(o - exact) / np.linalg.norm(exact)
      o = np.asarray(jax.jit(cublas_fp8_fn)(a, b), np.float64)
      res["cuBLAS FP8 (raw elems)"] = np.linalg.norm(o - exact_raw) / np.linalg.norm(exact_raw)
      if not args.sizes_lite:
        o = np.asarray(jax.jit(lambda a, b: mx_matmul(a, b, out_dtype=jnp.float32, impl="xla"))(a, b), np.float64)
        res["XLA f32 HIGHEST"] = np.linalg.norm(o - exact) / np.linalg.norm(exact)
      log(f"  {dist:7s} K={k:6d}: " + "  ".join(f"{kk} {vv:.2e}" for kk, vv in res.items()))


def section_wo(args):
  log("\n## weight-only: x (M, K) bf16 @ W^T, W (N, K) quantized; K = N = 8192")
  n = k = 512 if SMOKE else 8192
  ms = [1, 16] if SMOKE else [int(v) for v in args.wo_ms.split(",")]
  nsets = 2 if SMOKE else 4  # 4 weight copies: >= 128 MB for every format, more than the 50 MB L2
  key = jax.random.key(7)
  fmts = ["mxfp8_e4m3", "mxfp4_e2m1"] if SMOKE else args.wo_fmts.split(",")
  # mini sweep at M=16 per format
  W = mg.WeightOnlyConfig
  cands = [W(64, 256, 2, 4, decode="denorm"), W(64, 256, 4, 2, decode="denorm"), W(64, 128, 4, 3, decode="denorm"),
           W(64, 256, 2, 2, decode="denorm"), W(64, 256, 2, 4), W(64, 256, 1, 4)]
  if SMOKE:
    cands = cands[:2]
  elif args.wo_cands != "all":
    cands = cands[:int(args.wo_cands)]
  ws = {}
  for fmt in fmts:
    qs = [rand_q(jax.random.fold_in(key, i), (n, k), fmt, packed=fmt == "mxfp4_e2m1") for i in range(nsets)]
    ws[fmt] = ([prepare_weight_only(q) for q in qs], qs)
  wbf = [mx_jax.dequantize(q, jnp.bfloat16) for q in ws[fmts[0]][1]]
  best_cfg = {}
  for fmt in fmts:
    pws = ws[fmt][0]
    x = jax.random.normal(key, (16, k), jnp.bfloat16)
    best = None
    ref = np.asarray(mx_weight_only_matmul(x, ws[fmt][1][0], out_dtype=jnp.float32, impl="xla"), np.float32)
    for cfg in cands:
      if cfg.decode == "select" and fmt in ("mxfp8_e4m3", "mxint8") and any(
          c.decode == "denorm" and dataclasses.replace(c, decode="select") == cfg for c in cands):
        continue  # decode only matters for FP4/FP6
      try:
        t = timeit(lambda x, pw, cfg=cfg: glue.weight_only_matmul(x, pw, config=cfg, interpret=SMOKE),
                   [(x, pw) for pw in pws])
        out = np.asarray(jax.jit(lambda x, pw, cfg=cfg: glue.weight_only_matmul(
            x, pw, out_dtype=jnp.float32, config=cfg, interpret=SMOKE))(x, pws[0]), np.float32)
        err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        ok = bool(np.isfinite(out).all()) and err < 1e-4
        log(f"  sweep {fmt:<11s} M=16 {cfg.name():<30s} {t * 1e6:8.1f} us  {pws[0].nbytes / t / 1e12:5.2f} TB/s"
            f" | vs ref {err:.1e} {'OK' if ok else 'BAD'}")
        if not ok:
          continue
        if best is None or t < best[1]:
          best = (cfg, t)
      except Exception as e:
        log(f"  ERR {fmt} {cfg.name()}: {type(e).__name__}: {str(e)[:300]}")
    if best:
      best_cfg[fmt] = best[0]
  log("  M     " + "".join(f"{c:>24s}" for c in ["bf16 GEMM", "XLA dequant+dot"] + fmts))
  for mrows in ms:
    x = jax.random.normal(jax.random.fold_in(key, mrows), (mrows, k), jnp.bfloat16)
    flops = 2 * mrows * n * k
    cells = []
    t_bf = timeit(lambda x, w: lax.dot_general(x, w, NT, preferred_element_type=jnp.float32).astype(jnp.bfloat16),
                  [(x, w) for w in wbf])
    cells.append(f"{t_bf * 1e6:8.1f}us (fl {max(flops / PEAK_BF16, (2 * n * k + 4 * mrows * (n + k)) / HBM) * 1e6:5.1f})")
    t_x = timeit(lambda x, w: mx_weight_only_matmul(x, w, impl="xla"), [(x, q) for q in ws[fmts[0]][1]])
    cells.append(f"{t_x * 1e6:8.1f}us          ")
    for fmt in fmts:
      if fmt not in best_cfg:
        cells.append(" " * 24)
        continue
      pws = ws[fmt][0]
      try:
        t = timeit(lambda x, pw, cfg=best_cfg[fmt]: glue.weight_only_matmul(x, pw, config=cfg, interpret=SMOKE),
                   [(x, pw) for pw in pws])
        floor = max(flops / PEAK_BF16, (pws[0].nbytes + 4 * mrows * (n + k)) / HBM)
        cells.append(f"{t * 1e6:7.1f}us {t_bf / t:4.2f}x (fl {floor * 1e6:4.1f})")
      except Exception as e:
        cells.append(f"{'ERR':>24s}")
        log(f"  ERR {fmt} M={mrows}: {str(e)[:300]}")
    log(f"  {mrows:<5d} " + "".join(f"{c:>24s}" for c in cells))
  log("  (cells: time, speedup vs the bf16 GEMM, floor = max(FLOPs / 989 TFLOP/s, bytes / 3.35 TB/s))")
  log("  best configs: " + ", ".join(f"{f}: {c.name()}" for f, c in best_cfg.items()))


def main():
  global SMOKE
  p = argparse.ArgumentParser()
  p.add_argument("--sections", default="env,check,sweep,sizes,acc,wo")
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode (CPU dry run)")
  p.add_argument("--sizes", default="2048x2048x2048,4096x4096x4096,8192x8192x8192,16384x16384x16384,"
                 "8192x2048x2048,8192x2048x8192,8192x8192x2048", help="MxNxK list")
  p.add_argument("--acc-ks", default="1024,2048,4096,8192,16384")
  p.add_argument("--sizes-lite", action="store_true", help="fewer impls per size (MX fp8 + baselines)")
  p.add_argument("--sweep-set", default="all",
                 help="'all', 'final' (the configs kept after run 1), 'dq2' (sets 'coop' and 'roll': commit 1e8896c; "
                      "'wg4': 293a30c; 'cluster', 'cluster2': a30ad65)")
  p.add_argument("--wo-ms", default="1,2,4,8,16,32,64,128,256")
  p.add_argument("--wo-fmts", default="mxfp8_e4m3,mxfp6_e2m3,mxfp4_e2m1,mxint8,nvfp4")
  p.add_argument("--wo-cands", default="all", help="'all' or a count: first N weight-only sweep configs")
  p.add_argument("--check-wo", default="all", help="'all', 'min' (fewer weight-only checks) or 'none'")
  p.add_argument("--budget", type=float, default=1e9, help="seconds; stop cleanly after this")
  args = p.parse_args()
  SMOKE = args.smoke
  global LOG_PATH, BUDGET_S
  BUDGET_S = args.budget
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    LOG_PATH = os.path.join(args.out, "bench_matmul.log")
    open(LOG_PATH, "w").close()
  secs = args.sections.split(",")
  G = mg.GemmConfig
  sweep_cfgs = [
      G("fp8", 64, 128, 128, "M", 4), G("fp8", 64, 128, 128, "M", 4, pair=True), G("fp8", 64, 128, 128, "N", 4),
      G("fp8", 128, 64, 128, "M", 3), G("fp8", 64, 128, 64, "M", 6), G("fp8", 64, 64, 128, "N", 4),
      G("fp8", 64, 128, 256, "M", 2),
      G("bf16", 128, 128, 64, "N", 4), G("bf16", 128, 128, 64, "N", 3, a_regs=False), G("bf16", 128, 64, 64, "N", 4),
      G("bf16", 64, 128, 64, "N", 4), G("bf16", 64, 128, 128, "N", 2), G("bf16", 128, 128, 64, "N", 3),
  ]
  if args.sweep_set == "final":
    sweep_cfgs = [G("fp8", 64, 128, 256, "M", 2), G("fp8", 64, 128, 256, "M", 2, pair=True),
                  G("bf16", 128, 128, 64, "N", 4)]
  if args.sweep_set == "dq2":  # design (b) with double-buffered dequantized tiles (session 6, not yet timed)
    sweep_cfgs = [G("fp8", 64, 128, 256, "M", 2, pair=True), G("bf16", 128, 128, 64, "N", 4),
                  G("bf16", 64, 128, 64, "N", 3, a_regs=False),
                  G("bf16", 64, 128, 64, "N", 3, a_regs=False, deq_slots=2),
                  G("bf16", 64, 128, 64, "N", 2, a_regs=False, deq_slots=2),
                  G("bf16", 64, 128, 64, "N", 4, a_regs=False, deq_slots=2)]
  if SMOKE:
    sweep_cfgs = [G("fp8", 64, 64, 64, "M", 2), G("bf16", 64, 64, 64, "N", 2)]
  check_cfgs = sweep_cfgs
  wo_check = [mg.WeightOnlyConfig(64, 256, 1, 4), mg.WeightOnlyConfig(128, 256, 2, 4),
              mg.WeightOnlyConfig(64, 256, 1, 4, decode="denorm")]
  if SMOKE:
    wo_check = [mg.WeightOnlyConfig(64, 128, 1, 2)]
  t0 = time.time()
  try:
    best = {"fp8": glue.DEFAULT_FP8, "bf16": glue.DEFAULT_BF16}
    if SMOKE:
      best = {"fp8": sweep_cfgs[0], "bf16": sweep_cfgs[1]}
    run = {"env": lambda: section_env(args), "check": lambda: section_check(args, check_cfgs, wo_check),
           "sweep": lambda: best.update(section_sweep(args, sweep_cfgs)), "wo": lambda: section_wo(args),
           "sizes": lambda: section_sizes(args, best), "acc": lambda: section_acc(args, best),
           "sass": lambda: section_sass(args)}
    for sec in secs:  # in the order given
      if sec not in run:
        raise SystemExit(f"--sections: unknown section {sec!r}; choose from {sorted(run)}")
      run[sec]()
      log(f"[{time.time() - t0:.0f} s]")
  except OutOfTime as e:
    log(f"STOPPED: {e}")
  except Exception:
    log(traceback.format_exc())
  finally:
    log(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
