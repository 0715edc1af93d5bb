"""Weight-only at many rows on an H100: where the Mosaic GPU kernel stops paying, and what replaces it.

  PYTHONUNBUFFERED=1 python benchmarks/bench_wo_large_m.py --out $OUT --budget 300   # on the GPU
  JAX_PLATFORMS=cpu python benchmarks/bench_wo_large_m.py --smoke                     # CPU dry run

For a ``mx_jax.prepare_weight_only(w)`` weight (on Hopper: ``kernels.wo_mgpu.MgpuWeight``), K = N = 8192, one
process, timed as ``bench_wo.py`` does (one jit of 16 calls, each with its own x and weight copy; device µs from
the profiler), at each M: bf16 ``x @ W^T``; the kernel forced (``kernel_rows`` huge); the decode-then-bf16-GEMM
path forced (``kernel_rows=0``: ``wo_mgpu_decode.decode_weight`` + XLA's GEMM); the public call with its default
(``KERNEL_ROWS``); the decode kernel alone (bytes: the weight read, bf16 written). First, ``decode_weight``
against ``mx_jax.dequantize`` (must be equal; also for every format of ``--check-fmts``) and the public call
against XLA's reference at the smallest and largest M.
"""
from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mx_jax  # noqa: E402
from benchmarks import bench_wo as bw  # noqa: E402
from kernels import wo_mgpu as wm  # noqa: E402
from kernels import wo_mgpu_decode as wmd  # noqa: E402
from mx_jax.matmul import mx_weight_only_matmul  # noqa: E402

HUGE = 1 << 30


def check(fmt, q, pw, xs, interpret):
  """decode_weight == dequantize (NVFP4: times the tensor scale) and the public call vs XLA at each x."""
  got = np.asarray(wmd.decode_weight(pw, interpret=interpret), np.float64)
  if fmt == "nvfp4":
    got = got * float(q.tensor_scale)
  want = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  diff = np.abs(got - want).max() / np.abs(want).max()
  bw.log(f"  decode_weight vs dequantize: max |diff| / max |W| {diff:.2e} {'OK' if diff <= 2 ** -24 else 'MISMATCH'}")
  wd = jnp.abs(mx_jax.dequantize(q, jnp.float32))
  for x in xs:
    o = np.asarray(mx_weight_only_matmul(x, pw, out_dtype=jnp.float32, interpret=interpret), np.float64)
    r = np.asarray(mx_weight_only_matmul(x, q, out_dtype=jnp.float32, impl="xla"), np.float64)
    bd = np.asarray(jnp.dot(jnp.abs(x.astype(jnp.float32)), wd.T, precision="highest"), np.float64)
    e = bw.rel_err(o, r, bd)
    bw.log(f"  check public call M={x.shape[0]}: vs XLA {e:.2e} {'OK' if e <= 5e-5 else 'MISMATCH'}")


def main():
  p = bw.arg_parser(__doc__)
  p.add_argument("--fmts", default="mxfp4_e2m1,mxfp8_e4m3")
  p.add_argument("--ms", default="64,128,192,256,384,512,1024,4096")
  p.add_argument("--check-fmts", default="", help="formats whose decode_weight is only checked (all: 'all')")
  args = p.parse_args()
  bw.start_log(args.out, "bench_wo_large_m.log", args.budget)
  k = n = 8192
  ms = [int(v) for v in args.ms.split(",")]
  # A weight copy per call: with fewer, XLA's CSE and dot merger fold the calls sharing one weight into a
  # single decode and GEMM (session 20 call 1 with 2 copies: bf16 at M = 128 read 5.8 TB/s).
  copies, interpret = bw.COPIES, False
  if args.smoke:
    bw.INTERPRET = interpret = True
    bw.REPS, bw.WALL_RUNS = 2, 2
    k, n, ms, copies = 256, 128, [8, 24], 2
  dev = jax.devices()[0]
  bw.log(f"bench_wo_large_m: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, K={k} N={n}, Ms {ms}, "
         f"KERNEL_ROWS={wm.KERNEL_ROWS}, REPS={bw.REPS}, {copies} weight copies")
  summary = []
  try:
    cf = sorted(wm.FORMATS) if args.check_fmts == "all" else [f for f in args.check_fmts.split(",") if f]
    for fmt in cf:
      bw.log(f"\n== check {fmt}")
      q = bw.quantized_copies(fmt, n, k, 1)[0]
      check(fmt, q, mx_jax.prepare_weight_only(q, kernel="wo_mgpu"), [], interpret)
    for fmt in args.fmts.split(","):
      bw.log(f"\n== {fmt}")
      qs = bw.quantized_copies(fmt, n, k, copies)
      pws = [mx_jax.prepare_weight_only(q, kernel="auto" if not interpret else "wo_mgpu") for q in qs]
      bw.log(f"  prepare_weight_only(w) -> {type(pws[0]).__name__}")
      jax.block_until_ready(pws)
      wb = [mx_jax.dequantize(q, jnp.bfloat16) for q in qs]
      xs = {m: jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(jnp.bfloat16) for m in ms}
      check(fmt, qs[0], pws[0], [xs[ms[0]], xs[ms[-1]]], interpret)
      d, w_ = bw.measure(lambda x, w: wmd.decode_weight(w, interpret=interpret), xs[ms[0]], pws)
      bw.log(bw.row(f"{fmt} decode_weight alone (N, K) bf16", d, w_, pws[0].nbytes + n * k * 2))
      for m in ms:
        bw.guard(20)
        x = xs[m]
        io = m * k * 2 + m * n * 2
        d, w_ = bw.measure(lambda x, w: jnp.dot(x, w.T), x, wb)
        base = d if d == d else w_
        bw.log(bw.row(f"{fmt} M={m:<5d} bf16 x @ W^T", d, w_, n * k * 2 + io, base))
        ts = {}
        for name, kr in (("kernel", HUGE), ("decode + bf16 GEMM", 0), ("public default", None)):
          d, w_ = bw.measure(lambda x, w, kr=kr: wm.wo_matmul_mgpu(x, w, kernel_rows=kr, interpret=interpret),
                             x, pws)
          ts[name] = d if d == d else w_
          bw.log(bw.row(f"{fmt} M={m:<5d} {name}", d, w_, pws[0].nbytes + io, base))
        summary.append((fmt, m, base, ts))
  except bw.OutOfTime as e:
    bw.log(f"\n!! stopped: {e}")
  except Exception:  # noqa: BLE001
    bw.log("\n!! error:\n" + traceback.format_exc())
  bw.log("\n== summary (device us per call; x = bf16 time / this)")
  for fmt, m, base, ts in summary:
    bw.log(f"  {fmt:<11s} M={m:<5d} bf16 {base:8.1f}  " + "  ".join(
        f"{nm} {t:8.1f} ({base / t:4.2f}x)" for nm, t in ts.items()))


if __name__ == "__main__":
  main()
