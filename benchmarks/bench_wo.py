"""Weight-only GEMM on an H100: the Pallas Triton kernel (kernels/wo_triton.py) vs bf16 GEMMs, K = N = 8192.

  PYTHONUNBUFFERED=1 python benchmarks/bench_wo.py --out $OUT --budget 290      # on the GPU
  JAX_PLATFORMS=cpu python benchmarks/bench_wo.py --smoke                       # CPU dry run (interpreter)

One process, every number from this run. Steps:
  1. per format, exactness on the GPU: a small weight holding every element code (and subnormal codes) with
     rows scaled 2^-120 .. 2^100, run through one config of each (scale_mode, decode) kind, vs a float64 host
     reference (|err| <= 1e-5 * |x| @ |W|^T element-wise); then the first config at K = N = 8192, M = 16 vs
     the XLA reference (mx_weight_only_matmul impl="xla": W dequantized to FP32, HIGHEST). A candidate whose
     own result at the anchor M misses the reference is reported WRONG and never picked.
  2. per (M, format): the candidate configs (``kernels.wo_triton.CANDIDATES``) at the anchor Ms (16 and 128),
     the best two of the nearest anchor elsewhere; the best by device time is reported.
  3. bf16 baselines in the same process: jnp.dot(x, w.T) with w (N, K), and x @ w with w stored (K, N).

Timing: each measured function is one jit holding REPS = 16 calls, each with its own weight copy and its own x
(XLA's CSE merges identical calls, and its dot merger turns bf16 dots that share a weight into one GEMM reading
it once: both made the first runs' bf16 times per *distinct* weight; the weight is never L2-resident). "dev" = device kernel time from the profiler (benchmarks/profile_util.top_kernels: the sum of all
device kernels, so the split-K reduction and x's cast / pad count), per call; "wall" = median over 20 runs of
(wall time / REPS) after warm-up. TB/s = (weight + scale bytes + x + out) / dev time; "floor%" = that byte
count at 3.35 TB/s over dev time; "x bf16" = bf16 (N, K) dev time / this dev time, same M.

--budget SECONDS stops cleanly (log kept; remaining rows skipped); --out DIR writes DIR/bench_wo.log.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mx_jax  # noqa: E402
from benchmarks.profile_util import top_kernels  # noqa: E402
from kernels import wo_triton as wt  # noqa: E402
from mx_jax.formats import get_format  # noqa: E402
from mx_jax.matmul import mx_weight_only_matmul  # noqa: E402
from mx_jax.qarray import QArray  # noqa: E402

HBM = 3.35e12
COPIES = 16
LOG_PATH = None
T_START = time.time()
BUDGET_S = 1e9
INTERPRET = False
REPS = 16
WALL_RUNS = 20
SHOW_KERNELS = False


class OutOfTime(BaseException):  # not caught by the per-config "except Exception"
  pass


def log(*a):
  s = " ".join(str(x) for x in a)
  print(s, flush=True)
  if LOG_PATH:
    with open(LOG_PATH, "a") as f:
      f.write(s + "\n")


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """The weight-only benchmarks' shared options: --out (log folder), --budget (seconds), --smoke (CPU dry run)."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--out", default=None)
  p.add_argument("--budget", type=float, default=1e9)
  p.add_argument("--smoke", action="store_true")
  return p


def start_log(out: str | None, name: str, budget: float = 1e9) -> None:
  """Sets the time budget and, with ``out``, logs to a fresh ``out/name``."""
  global LOG_PATH, BUDGET_S
  BUDGET_S = budget
  if out:
    os.makedirs(out, exist_ok=True)
    LOG_PATH = os.path.join(out, name)
    open(LOG_PATH, "w").close()


def guard(need_s: float = 0.0):
  if time.time() - T_START + need_s > BUDGET_S:
    raise OutOfTime(f"time budget of {BUDGET_S:.0f} s: {time.time() - T_START:.0f} s used, not enough left for "
                    f"the next step")


def left() -> float:
  return BUDGET_S - (time.time() - T_START)


# ------------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------------


def measure(call, x, ws):
  """(device µs, wall µs) per call of call(x, w): one jit of REPS calls cycling through the weight copies."""
  guard(5)
  # Each call gets its own x (x scaled by a distinct power of two): identical (x, w) pairs would be merged by
  # XLA's CSE, and the time per call divided by REPS would count only the distinct ones.
  xs = [x * jnp.asarray(2.0 ** -(i // len(ws)), x.dtype) for i in range(REPS)]
  multi = jax.jit(lambda xs, ws: [call(xs[i], ws[i % len(ws)]) for i in range(REPS)])
  x = xs
  jax.block_until_ready(multi(x, ws))
  dev = float("nan")
  if not INTERPRET:
    kern, tot = top_kernels(multi, x, ws, calls=2)
    dev = tot / REPS if tot > 0 else float("nan")
    if SHOW_KERNELS:
      log("      kernels per call: "
          + ", ".join(f"{nm[:48]} {us / REPS:.2f} us x{c / REPS:g}" for nm, us, c in kern[:3]))
  ts = []
  for _ in range(WALL_RUNS):
    t0 = time.perf_counter()
    jax.block_until_ready(multi(x, ws))
    ts.append((time.perf_counter() - t0) / REPS)
  return dev, statistics.median(ts) * 1e6


def row(name, dev, wall, nbytes, base_dev=None):
  t = dev if dev == dev else wall  # device time when the profiler gave one
  tbs = nbytes / (t * 1e-6) / 1e12
  floor = nbytes / HBM * 1e6
  sp = f"{base_dev / t:5.2f}x" if base_dev and base_dev == base_dev else "   - "
  return (f"{name:<52s} dev {dev:8.1f} us  wall {wall:8.1f} us  {tbs:5.2f} TB/s  floor {floor:6.1f} us "
          f"({100 * floor / t:5.1f}%)  {sp} bf16")


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------


def quantized_copies(fmt, n, k, copies):
  qs = []
  for c in range(copies):
    w = jax.random.normal(jax.random.key(100 + c), (n, k), jnp.float32) * 0.02
    qs.append(mx_jax.quantize(w, fmt, axis=1))
  return qs


def all_codes_weight(fmt, row_exps, k):
  """(len(row_exps), k) QArray whose element codes cycle through every code of the format (both signs,
  subnormals), row r's scales all 2^row_exps[r] (MX), or mixed E4M3 scales + tensor scale 2^-8 (NVFP4).
  ``row_exps`` must be a multiple of 4 long (NVFP4 ignores the values)."""
  f = get_format(fmt)
  e = f.elem
  n = len(row_exps)
  idx = (np.arange(n)[:, None] * 7 + np.arange(k)[None, :]) % (2 ** e.bits)
  # rows at extreme scales get the codes' magnitudes only: a partial sum that cancels to below 2^-126 would be
  # an FP32 subnormal, flushed on XLA:CPU (--smoke); signed codes run at the moderate scales
  pos = (np.abs(np.asarray(row_exps)) >= 60)[:, None]
  if e.is_int:
    codes = ((idx % 255) - 127)
    codes = np.where(pos, np.abs(codes), codes).astype(np.int8)
    data = jnp.asarray(codes)
  else:
    from mx_jax import _bits
    codes = jnp.asarray(idx.astype(np.uint8))
    vals = _bits.code_to_elem(codes, e)
    vals = jnp.where(jnp.isfinite(vals), vals, 0.0)  # e4m3 / e5m2 NaN / Inf codes are never stored by quantize
    vals = jnp.where(jnp.asarray(pos), jnp.abs(vals), vals)
    data = _bits.to_elem_dtype(vals, e)
  if f.kind == "nvfp4":
    sb = np.asarray([0x01, 0x7E, 0x38, 0x08, 0x30], np.uint8)[(np.arange(n)[:, None] + np.arange(k // 16)) % 5]
    scales = jax.lax.bitcast_convert_type(jnp.asarray(sb), jnp.float8_e4m3fn)
    return QArray(data, scales, jnp.float32(2.0 ** -8), fmt, 1, (n, k), 16, False)
  sb = np.repeat(np.asarray(row_exps, np.int32)[:, None] + 127, k // 32, axis=1).astype(np.uint8)
  scales = jax.lax.bitcast_convert_type(jnp.asarray(sb), jnp.float8_e8m0fnu)
  return QArray(data, scales, None, fmt, 1, (n, k), 32, False)


def host_ref(x, q):
  xd = np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
  wd = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


def rel_err(out, ref, bound):
  out = np.asarray(out, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = np.abs(out - ref) / np.maximum(bound, 1e-300)
  r = np.where((out == ref) | (np.isnan(out) & np.isnan(ref)), 0.0, r)
  return float(np.nanmax(np.where(np.isnan(r), np.inf, r)))


# ------------------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------------------


def exactness(fmt, cands):
  """Every code x extreme scales on a small shape, one config per (scale_mode, decode, orient) kind."""
  k = 512
  lo, hi = wt.elem_exact_range(fmt)
  f = get_format(fmt).elem
  top = 127 - int(np.ceil(np.log2(f.max_normal * k * 4)))
  block_rows = [-120, -60, 0, 60, min(100, top), -110, 7, -7] * 4
  elem_rows = [max(lo, -100), -50, 0, 50, min(hi, top, 100), -20, 3, -3] * 4
  x = jax.random.uniform(jax.random.key(7), (16, k), jnp.float32, 0.5, 2.0).astype(jnp.bfloat16)
  ok = {}
  kinds = {}
  for c in cands:
    kinds.setdefault(_kind(c), c)
  for kind, c in kinds.items():
    mode, dec, orient, fold, layout, red = kind
    guard(10)
    rows = block_rows if mode == "block" else elem_rows
    if fold and fmt in wt.FOLDABLE:  # scales the fold accepts (2^(e + fold_shift) finite): the folded kernel runs
      rows = [min(r, 127 - wt.fold_shift(fmt)) for r in rows]
    q = all_codes_weight(fmt, rows, k)
    ref, bound = host_ref(x, q)
    label = (f"{mode:5s} {dec:3s} {orient}{' fold' if fold else ''}{' ' + layout if layout != 'rows' else ''}"
             f"{' kernel-reduce' if red == 'kernel' else ''}")
    try:
      pw = wt.prepare_weight_for(q, c)
      out = wt.wo_matmul(x, pw, out_dtype=jnp.float32, config=c, interpret=INTERPRET)
      e = rel_err(out, ref, bound)
      ok[kind] = e <= 1e-5
      log(f"  exact  {fmt:<11s} {label}: max |err| / (|x||W|) = {e:.2e} {'EXACT' if e <= 1e-5 else 'MISMATCH'}"
          + (f" (fold_ok={pw.fold_ok})" if fold else ""))
    except Exception as ex:  # noqa: BLE001
      ok[kind] = False
      log(f"  exact  {fmt:<11s} {label}: FAILED {type(ex).__name__}: {str(ex)[:300]}")
  return ok


def _kind(c):
  return (c.scale_mode, c.decode, c.orient, c.fold, c.layout, c.reduce if c.split_k > 1 else "xla")


def weights_for(st, cfg):
  """The prepared weight copies in the layout ``cfg`` steps over (FP4: its packing group; FP4 / FP6: its row- or
  group-major layout), prepared on first use."""
  key = (wt.packing_group(st["fmt"], cfg), wt.weight_layout(st["fmt"], cfg))
  if key not in st["pws"]:
    st["pws"][key] = [wt.prepare_weight_for(q, cfg) for q in st["qs"]]
    jax.block_until_ready(st["pws"][key])
  return st["pws"][key]


def check(st, cfg):
  out = wt.wo_matmul(st["xref"], weights_for(st, cfg)[0], out_dtype=jnp.float32, config=cfg, interpret=INTERPRET)
  return rel_err(out, st["ref"], st["bound"])


def sweep_one(st, fmt, m, k, n, cands, anchors, top, best, ranked, bf16_dev):
  """Times the configs for one (format, M): every candidate at an anchor M, else the best ``top`` of the
  nearest anchor. Records the best in ``best`` (and the ranking at anchors in ``ranked``)."""
  if m in anchors:
    todo = list(cands)
  else:
    anc = min(anchors, key=lambda a: abs(np.log2(a) - np.log2(m)))
    todo = list(ranked.get((fmt, anc), cands[:1]))[:top]
  x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(jnp.bfloat16)
  nbytes = next(iter(st["pws"].values()))[0].nbytes + m * k * 2 + m * n * 2  # the same bytes in every layout
  res = []
  for cfg in todo:
    if cfg.name() in st["wrong"]:
      continue
    if not st["exact_ok"].get(_kind(cfg), True):
      log(f"  M={m:<4d} {cfg.name():<40s} skipped: failed the exactness check")
      continue
    try:
      if m in anchors:
        e = check(st, cfg)
        if not e <= 5e-5:
          st["wrong"].add(cfg.name())
          log(f"  M={m:<4d} {cfg.name():<40s} WRONG: max |err| / (|x||W|) = {e:.2e} vs XLA")
          continue
      d, w_ = measure(lambda x, w, cfg=cfg: wt.wo_matmul(x, w, config=cfg, interpret=INTERPRET), x,
                      weights_for(st, cfg))
      res.append((d if d == d else w_, cfg))
      log("  " + row(f"M={m:<4d} {cfg.name()}", d, w_, nbytes, bf16_dev.get(m)))
    except OutOfTime:
      raise
    except Exception as ex:  # noqa: BLE001
      log(f"  M={m:<4d} {cfg.name():<40s} FAILED {type(ex).__name__}: {str(ex)[:400]}")
  if res:
    res.sort(key=lambda r: r[0])
    best[(fmt, m)] = res[0]
    if m in anchors:
      ranked[(fmt, m)] = [c for _, c in res]
    t = res[0][0]
    log(f"  -> best {fmt} M={m}: {res[0][1].name()}  {t:.1f} us  {nbytes / (t * 1e-6) / 1e12:.2f} TB/s  "
        f"{bf16_dev.get(m, float('nan')) / t:.2f}x bf16")


def main():
  global LOG_PATH, BUDGET_S, INTERPRET, REPS, WALL_RUNS, SHOW_KERNELS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None, help="directory for bench_wo.log")
  p.add_argument("--budget", type=float, default=1e9, help="seconds; stop cleanly after this")
  p.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode (CPU dry run)")
  p.add_argument("--ms", default="1,2,4,8,16,32,64,128,256")
  p.add_argument("--fmts", default="mxfp8_e4m3,mxfp6_e2m3,mxfp4_e2m1,mxint8,nvfp4")
  p.add_argument("--k", type=int, default=8192)
  p.add_argument("--n", type=int, default=8192)
  p.add_argument("--anchors", default="16,128", help="Ms where every candidate config runs")
  p.add_argument("--cands", default="all",
                 help="'all', a count (the first N of wo_triton.CANDIDATES) or indices into it ('0,2,12')")
  p.add_argument("--top", type=int, default=2, help="configs carried from the nearest anchor to other Ms")
  p.add_argument("--kernels", action="store_true", help="log each timing's top device kernels")
  p.add_argument("--exact-extra", default="mxfp8_e5m2,mxfp6_e3m2",
                 help="formats given the exactness check only (not timed)")
  p.add_argument("--smem-budget", type=int, default=None,
                 help="bytes of pipeline buffers fit_config allows (default wo_triton.SMEM_BUDGET)")
  args = p.parse_args()
  BUDGET_S = args.budget
  if args.smem_budget:
    wt.SMEM_BUDGET = args.smem_budget
  SHOW_KERNELS = args.kernels
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    LOG_PATH = os.path.join(args.out, "bench_wo.log")
    open(LOG_PATH, "w").close()
  if args.cands == "all":
    cands = list(wt.CANDIDATES)
  elif "," in args.cands:
    cands = [wt.CANDIDATES[int(i)] for i in args.cands.split(",")]
  else:
    cands = list(wt.CANDIDATES[:int(args.cands)])
  ms = [int(v) for v in args.ms.split(",")]
  anchors = [int(v) for v in args.anchors.split(",")]
  k, n = args.k, args.n
  if args.smoke:
    INTERPRET = True
    REPS, WALL_RUNS = 2, 2
    k, n = 512, 256
    ms = [1, 16, 33]
    anchors = [16]
    cands = cands[:3]
  fmts = args.fmts.split(",")
  dev = jax.devices()[0]
  log(f"bench_wo: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, K={k} N={n}, Ms {ms}, "
      f"anchors {anchors}, {len(cands)} candidates, REPS={REPS}, {COPIES} weight copies, budget {BUDGET_S:.0f} s")
  for i, c in enumerate(cands):
    log(f"  cand {i}: {c.name()}")

  best = {}     # (fmt, m) -> (dev, cfg)
  ranked = {}   # (fmt, anchor) -> [cfg by dev time]
  bf16_dev = {}
  try:
    # -------------------------------------------------------------------- bf16 baselines
    wb = [jax.random.normal(jax.random.key(200 + c), (n, k), jnp.float32).astype(jnp.bfloat16) * 0.02
          for c in range(COPIES)]
    wkn = [jnp.asarray(w.T) for w in wb]  # W stored (K, N): a materialized transpose
    log("\n== bf16 baselines (cuBLAS through XLA)")
    for m in ms:
      x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(jnp.bfloat16)
      nbytes = n * k * 2 + m * k * 2 + m * n * 2
      d, w_ = measure(lambda x, w: jnp.dot(x, w.T), x, wb)
      bf16_dev[m] = d if d == d else w_
      log(row(f"M={m:<4d} bf16 x @ W^T, W (N, K)", d, w_, nbytes, bf16_dev[m]))
      d2, w2 = measure(lambda x, w: jnp.dot(x, w), x, wkn)
      log(row(f"M={m:<4d} bf16 x @ W,   W (K, N)", d2, w2, nbytes, bf16_dev[m]))
    del wb, wkn

    # -------------------------------------------------------------------- per format: checks, then the Ms in
    # order of importance (the anchors first, so a spent budget still leaves the headline rows)
    state = {}
    for fmt in [f for f in args.exact_extra.split(",") if f and f not in fmts]:  # exactness only
      log(f"\n== {fmt}: exactness (not timed)")
      exactness(fmt, cands)
    for fmt in fmts:
      log(f"\n== {fmt}: checks")
      exact_ok = exactness(fmt, cands)
      qs = quantized_copies(fmt, n, k, COPIES)
      xref = jax.random.normal(jax.random.key(16), (16, k), jnp.float32).astype(jnp.bfloat16)
      ref = np.asarray(mx_weight_only_matmul(xref, qs[0], out_dtype=jnp.float32, impl="xla"), np.float64)
      wd = jnp.abs(mx_jax.dequantize(qs[0], jnp.float32))
      bound = np.asarray(jnp.dot(jnp.abs(xref.astype(jnp.float32)), wd.T, precision="highest"), np.float64)
      del wd
      st = state[fmt] = dict(fmt=fmt, qs=qs, pws={}, exact_ok=exact_ok, ref=ref, bound=bound, xref=xref,
                             wrong=set())
      e0 = check(st, cands[0])
      log(f"  check  {cands[0].name()} at M=16 vs XLA reference: max |err| / (|x||W|) = {e0:.2e} "
          f"{'OK' if e0 <= 5e-5 else 'MISMATCH'}")
    order = [m for m in anchors if m in ms] + [m for m in ms if m not in anchors]
    for m in order:
      for fmt in fmts:
        log(f"\n== {fmt} M={m}")
        sweep_one(state[fmt], fmt, m, k, n, cands, anchors, args.top, best, ranked, bf16_dev)
  except OutOfTime as e:
    log(f"\n!! stopped: {e}")
  except Exception:  # noqa: BLE001
    log("\n!! error:\n" + traceback.format_exc())

  log("\n== summary: best device time per (M, format), speedup over bf16 x @ W^T (N, K)")
  hdr = f"{'M':>5s} {'bf16 us':>9s} " + " ".join(f"{f:>22s}" for f in fmts)
  log(hdr)
  for m in ms:
    cells = []
    for f in fmts:
      if (f, m) in best:
        t, _ = best[(f, m)]
        cells.append(f"{t:8.1f} us {bf16_dev.get(m, float('nan')) / t:5.2f}x".rjust(22))
      else:
        cells.append("-".rjust(22))
    log(f"{m:>5d} {bf16_dev.get(m, float('nan')):9.1f} " + " ".join(cells))
  log("\nbest configs:")
  for (f, m), (t, c) in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    log(f"  {f:<11s} M={m:<4d} {c.name()}")
  log(f"\ntotal {time.time() - T_START:.0f} s")


if __name__ == "__main__":
  main()
