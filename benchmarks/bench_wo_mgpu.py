"""MX / NVFP4 weight-only on an H100: the Mosaic GPU kernel (kernels/wo_mgpu.py) vs the Triton kernel and bf16.

  PYTHONUNBUFFERED=1 python benchmarks/bench_wo_mgpu.py --out $OUT --budget 400    # on the GPU
  JAX_PLATFORMS=cpu python benchmarks/bench_wo_mgpu.py --smoke                     # CPU dry run (interpreter)

One process, every number from this run, timed as ``bench_wo.py`` does (``bench_wo.measure``: one jit of 16
calls, each with its own weight copy and its own x; "dev" = all device kernels per call from the profiler).
Steps: (1) exactness, every E2M1 code at row scales 2^-100 .. 2^7 (the folded decode's window) against a
float64 host reference, per config layout; the window's edges (2^-126, 2^-120) are reported, not gated
(``--fmt nvfp4``: every code with normal E4M3 scales (folded), and with subnormal / zero ones (unfolded));
(2) K = N = 8192, M = 16 against XLA's reference (W dequantized, FP32 HIGHEST) and against the Triton kernel;
(3) at --anchor M every config, then the best --top configs at the other Ms, beside bf16 ``x @ W^T`` and the
Triton kernel's default in the same process.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mx_jax  # noqa: E402
from benchmarks import bench_wo as bw  # noqa: E402
from kernels import wo_mgpu as wm  # noqa: E402
from kernels import wo_triton as wt  # noqa: E402
from mx_jax.matmul import mx_weight_only_matmul  # noqa: E402

FMT = "mxfp4_e2m1"


def configs():
  """Session 16: run 2 timed steps 4..16 x 3..8 stages x lag with one consumer warpgroup (best s16 c4, 18.7 us
  at M = 16), run 3 two warpgroups and steps 32 (best s16 c4 wg2, 17.1 us), run 4 x multicast to a cluster of
  two (best s16 c4 wg2 cl2, 16.6 us: ``default_config``); these are the candidates since."""
  C = wm.MgpuWOConfig
  return [C(16, 4, wgs=2, cluster=2), C(16, 4, wgs=2, cluster=1), C(16, 4, wgs=1, cluster=1),
          C(16, 3, wgs=2, cluster=2), C(16, 4, lag=False, wgs=2, cluster=2)]


def exactness(cfgs, interpret):
  k = 512
  x = jax.random.uniform(jax.random.key(7), (16, k), jnp.float32, 0.5, 2.0).astype(jnp.bfloat16)
  rows = [-100, -50, 0, 7, -20, 3, -3, 5] * 16       # every byte in 1..134: the folded decode
  wide = [-120, -100, 0, 60, 100, 112, -60, 8] * 16   # the unfolded decode (2^112: 512 * 2 * 6 * 2^112 < FP32 max)
  if FMT.startswith("mxfp8") or FMT == "mxint8":  # e5m2's least code 2^-16 times 2^-110 is bf16's least
    wide = [-110, -100, 0, 60, 90, 96, -60, 8] * 16  # subnormal; 512 * 2 * 57344 * 2^96 < FP32 max
  if FMT.startswith("mxfp6"):  # the folded window ends at byte 128 (E2M3) / 130 (E3M2): 2^1 / 2^3
    rows = [-100, -50, 0, 1, -20, -3, -1, 1] * 16
  edge = [-127, 127, -127, 127] * 32                  # byte 0 (codes 0.5, 1.5 fall below bf16) and 2^127 (Inf)
  if FMT == "nvfp4":
    return exactness_nv(cfgs, interpret, x, k)
  ok = {}
  for s, g, cl in sorted({(c.steps, c.wgs, c.cluster) for c in cfgs}):
    cfg = next(c for c in cfgs if (c.steps, c.wgs, c.cluster) == (s, g, cl))
    for name, r in (("window", rows), ("wide", wide), ("edge", edge)):
      q = bw.all_codes_weight(FMT, r, k)
      ref, bound = bw.host_ref(x, q)
      try:
        pw = wm.prepare_weight_mgpu(q, steps=s)
        out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, config=cfg, interpret=interpret)
        e = bw.rel_err(out, ref, bound)
        if name != "edge":
          ok[s, g, cl] = ok.get((s, g, cl), True) and e <= 1e-5
        bw.log(f"  exact  steps={s:<2d} wgs={g} {cfg.name():<24s} {name:6s} (fold_ok={pw.fold_ok}): max |err| / "
               f"(|x||W|) = {e:.2e} {'EXACT' if e <= 1e-5 else 'MISMATCH'}{' (not gated)' if name == 'edge' else ''}")
      except Exception as ex:  # noqa: BLE001
        if name != "edge":
          ok[s, g, cl] = False
        bw.log(f"  exact  steps={s:<2d} wgs={g} {name}: FAILED {type(ex).__name__}: {str(ex)[:600]}")
  return ok


def exactness_nv(cfgs, interpret, x, k):
  """NVFP4: every code against E4M3 scale bytes normal only (0x08..0x7E: the folded decode) and cycling through
  subnormal, zero and largest bytes (``bench_wo.all_codes_weight``: the exact unfolded conversion)."""
  import dataclasses
  ok = {}
  base = bw.all_codes_weight(FMT, [0] * 128, k)
  normal = np.arange(0x08, 0x7F, dtype=np.uint8)[(np.arange(128)[:, None] * 3 + np.arange(k // 16)) % 0x77]
  kinds = (("normal", dataclasses.replace(base, scales=jax.lax.bitcast_convert_type(jnp.asarray(normal),
                                                                                    jnp.float8_e4m3fn))),
           ("subnormal", base))
  for s, g, cl in sorted({(c.steps, c.wgs, c.cluster) for c in cfgs}):
    cfg = next(c for c in cfgs if (c.steps, c.wgs, c.cluster) == (s, g, cl))
    for name, q in kinds:
      ref, bound = bw.host_ref(x, q)
      try:
        pw = wm.prepare_weight_mgpu(q, steps=s)
        out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, config=cfg, interpret=interpret)
        e = bw.rel_err(out, ref, bound)
        ok[s, g, cl] = ok.get((s, g, cl), True) and e <= 1e-5
        bw.log(f"  exact  steps={s:<2d} wgs={g} {cfg.name():<24s} {name:9s} (fold_ok={pw.fold_ok}): max |err| / "
               f"(|x||W|) = {e:.2e} {'EXACT' if e <= 1e-5 else 'MISMATCH'}")
      except Exception as ex:  # noqa: BLE001
        ok[s, g, cl] = False
        bw.log(f"  exact  steps={s:<2d} wgs={g} {name}: FAILED {type(ex).__name__}: {str(ex)[:600]}")
  return ok


def extras(x, qs, weights, base, tri_t, nbytes, interpret):
  """At the anchor M: the default path through the public API three times, and a weight whose scales need
  the unfolded decode (every weight times 2^20: E8M0 bytes above 134)."""
  from mx_jax.matmul import mx_weight_only_matmul as wom
  pw = weights(16)
  for i in range(3):
    d, w_ = bw.measure(lambda x, w: wom(x, w, interpret=interpret), x, pw)
    t = d if d == d else w_
    bw.log(bw.row(f"M={x.shape[0]:<4d} mx_weight_only_matmul(x, prepare_weight_mgpu(w)) #{i + 1}", d, w_, nbytes,
                  base) + f"  {tri_t / t:5.2f}x triton")
  if FMT == "nvfp4":  # scales are relative to the tensor's amax: no unfolded weight from rescaling
    return
  big = [mx_jax.quantize(mx_jax.dequantize(q, jnp.float32) * 2.0 ** 20, FMT, axis=1) for q in qs]
  pb = [wm.prepare_weight_mgpu(q) for q in big]
  bw.log(f"  unfolded weight: fold_ok={pb[0].fold_ok}")
  d, w_ = bw.measure(lambda x, w: wom(x, w, interpret=interpret), x, pb)
  t = d if d == d else w_
  bw.log(bw.row(f"M={x.shape[0]:<4d} same, unfolded decode (weights x 2^20)", d, w_, nbytes, base)
         + f"  {tri_t / t:5.2f}x triton")


def main():
  p = bw.arg_parser(__doc__)
  p.add_argument("--ms", default="16,1,2,4,8,32,64,128")
  p.add_argument("--anchor", type=int, default=16)
  p.add_argument("--top", type=int, default=2)
  p.add_argument("--cfgs", default="all", help="indices into configs(), comma-separated, or 'all'")
  p.add_argument("--row-tiles", default="", help="row_tile values to time beside the default where M > row_tile")
  p.add_argument("--fmt", default="mxfp4_e2m1", choices=sorted(wm.FORMATS))
  args = p.parse_args()
  global FMT
  FMT = args.fmt
  bw.start_log(args.out, "bench_wo_mgpu.log", args.budget)
  k = n = 8192
  ms = [int(v) for v in args.ms.split(",")]
  cfgs = configs() if args.cfgs == "all" else [configs()[int(i)] for i in args.cfgs.split(",")]
  interpret = False
  copies = bw.COPIES
  if args.smoke:
    bw.INTERPRET = interpret = True
    bw.REPS, bw.WALL_RUNS = 2, 2
    k, n, ms, copies = 512, 128, [16, 3], 2
    cfgs = [wm.MgpuWOConfig(steps=4, max_concurrent_steps=3), wm.MgpuWOConfig(steps=8, max_concurrent_steps=2, wgs=2)]
  dev = jax.devices()[0]
  bw.log(f"bench_wo_mgpu: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, K={k} N={n}, Ms {ms}, "
         f"{len(cfgs)} configs, REPS={bw.REPS}, {copies} weight copies")
  for i, c in enumerate(cfgs):
    bw.log(f"  cfg {i}: {c.name()}")
  summary = []
  try:
    bw.log("\n== exactness")
    ok = exactness(cfgs, interpret)
    qs = bw.quantized_copies(FMT, n, k, copies)
    pws = {}

    def weights(s):
      if s not in pws:
        pws[s] = [wm.prepare_weight_mgpu(q, steps=s) for q in qs]
        jax.block_until_ready(pws[s])
      return pws[s]

    tws = [wt.prepare_weight_for(q) for q in qs]
    xref = jax.random.normal(jax.random.key(16), (16, k), jnp.float32).astype(jnp.bfloat16)
    ref = np.asarray(mx_weight_only_matmul(xref, qs[0], out_dtype=jnp.float32, impl="xla"), np.float64)
    wd = jnp.abs(mx_jax.dequantize(qs[0], jnp.float32))
    bound = np.asarray(jnp.dot(jnp.abs(xref.astype(jnp.float32)), wd.T, precision="highest"), np.float64)
    tri = np.asarray(wt.wo_matmul(xref, tws[0], out_dtype=jnp.float32, interpret=interpret), np.float64)
    bw.log(f"  triton default vs XLA: {bw.rel_err(tri, ref, bound):.2e}")
    wrong = set()
    cfgs = [c for c in cfgs if wm.smem_bytes(c, 16, FMT) <= wm.SMEM_LIMIT]
    for c in cfgs:
      if not ok.get((c.steps, c.wgs, c.cluster), False):
        wrong.add(c.name())
        continue
      o = np.asarray(wm.wo_matmul_mgpu(xref, weights(c.steps)[0], out_dtype=jnp.float32, config=c,
                                       interpret=interpret), np.float64)
      e, et = bw.rel_err(o, ref, bound), bw.rel_err(o, tri, bound)
      same = np.array_equal(o, tri)
      bw.log(f"  check {c.name():<22s} M=16 vs XLA {e:.2e}, vs Triton {et:.2e}{' (bit-identical)' if same else ''}"
             f" {'OK' if e <= 5e-5 else 'MISMATCH'}")
      if not e <= 5e-5:
        wrong.add(c.name())
    ranked = []
    for m in ms:
      bw.log(f"\n== M={m}")
      x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(jnp.bfloat16)
      nbytes = pws[next(iter(pws))][0].nbytes + m * k * 2 + m * n * 2 if pws else 0
      wb = [jax.random.normal(jax.random.key(200 + c), (n, k), jnp.float32).astype(jnp.bfloat16) * 0.02
            for c in range(copies)]
      d, w_ = bw.measure(lambda x, w: jnp.dot(x, w.T), x, wb)
      base = d if d == d else w_
      del wb
      bw.log(bw.row(f"M={m:<4d} bf16 x @ W^T", d, w_, n * k * 2 + m * k * 2 + m * n * 2, base))
      d, w_ = bw.measure(lambda x, w: wt.wo_matmul(x, w, interpret=interpret), x, tws)
      tri_t = d if d == d else w_
      bw.log(bw.row(f"M={m:<4d} triton default", d, w_, nbytes, base))
      todo = cfgs if m == args.anchor or not ranked else ranked[:args.top]
      res = []
      for c in todo:
        if c.name() in wrong or wm.smem_bytes(c, -(-m // 8) * 8, FMT) > wm.SMEM_LIMIT:
          continue
        bw.guard(10)
        try:
          d, w_ = bw.measure(lambda x, w, c=c: wm.wo_matmul_mgpu(x, w, config=c, interpret=interpret), x,
                             weights(c.steps))
          t = d if d == d else w_
          res.append((t, c))
          bw.log(bw.row(f"M={m:<4d} {c.name()}", d, w_, nbytes, base) + f"  {tri_t / t:5.2f}x triton")
        except bw.OutOfTime:
          raise
        except Exception as ex:  # noqa: BLE001
          bw.log(f"  M={m:<4d} {c.name():<24s} FAILED {type(ex).__name__}: {str(ex)[:600]}")
      if m == args.anchor and not interpret or (args.smoke and m == args.anchor):
        extras(x, qs, weights, base, tri_t, nbytes, interpret)
      else:  # the public entry point with its default config (x unpadded, chunks of max_rows), checked first
        bw.guard(10)
        o = np.asarray(mx_weight_only_matmul(x, weights(16)[0], out_dtype=jnp.float32, interpret=interpret),
                       np.float64)
        r = np.asarray(mx_weight_only_matmul(x, qs[0], out_dtype=jnp.float32, impl="xla"), np.float64)
        bd = np.asarray(jnp.dot(jnp.abs(x.astype(jnp.float32)), wd.T, precision="highest"), np.float64)
        e = bw.rel_err(o, r, bd)
        bw.log(f"  check public API M={m}: vs XLA {e:.2e} {'OK' if e <= 5e-5 else 'MISMATCH'}")
        d, w_ = bw.measure(lambda x, w: mx_weight_only_matmul(x, w, interpret=interpret), x, weights(16))
        pub = d if d == d else w_
        bw.log(bw.row(f"M={m:<4d} mx_weight_only_matmul(x, prepare_weight_mgpu(w))", d, w_, nbytes, base)
               + f"  {tri_t / pub:5.2f}x triton")
        summary.append((m, base, tri_t, pub, "public API, default config"))
        for rt in [int(v) for v in args.row_tiles.split(",") if v]:
          if m <= rt or rt > wm.max_rows(16, FMT):
            continue
          bw.guard(10)
          d, w_ = bw.measure(lambda x, w, rt=rt: wm.wo_matmul_mgpu(x, w, interpret=interpret, row_tile=rt), x,
                             weights(16))
          t_rt = d if d == d else w_
          bw.log(bw.row(f"M={m:<4d} same, row_tile={rt}", d, w_, nbytes, base) + f"  {tri_t / t_rt:5.2f}x triton")
      res.sort(key=lambda r: r[0])
      if m == args.anchor:
        ranked = [c for _, c in res]
      if res:
        summary.append((m, base, tri_t, res[0][0], res[0][1].name()))
  except bw.OutOfTime as e:
    bw.log(f"\n!! stopped: {e}")
  except Exception:  # noqa: BLE001
    bw.log("\n!! error:\n" + traceback.format_exc())
  bw.log("\n== summary (device us per call; x = bf16 time / this)")
  for m, base, tri_t, t, name in summary:
    bw.log(f"  M={m:<4d} bf16 {base:7.1f}  triton {tri_t:6.1f} ({base / tri_t:4.2f}x)  mgpu {t:6.1f} "
           f"({base / t:4.2f}x) {name}")
  bw.log(f"\ntotal {time.time() - bw.T_START:.0f} s")


if __name__ == "__main__":
  main()
