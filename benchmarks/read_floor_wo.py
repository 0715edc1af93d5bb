"""What a kernel that only reads the weight costs at K = N = 8192: the practical floor under the weight-only GEMM.

In one process (bench_wo.measure: 16 calls per jit over 16 weight copies, device time from the profiler):
  * XLA reductions (max) over the prepared MXFP4 weight's bytes (group-major uint16 words + E8M0 bytes, what the
    kernel streams) and over the bf16 weight (what the bf16 GEMM streams);
  * the MXFP4 kernel's default at M = 16 and the bf16 GEMM x @ W^T.
A reduction reads each byte once and writes nothing, like the kernel's W stream, so its time is the floor a
kernel of this size reaches on this GPU (launch, ramp and tail included), against HBM's 3.35 TB/s.

  python3 benchmarks/read_floor_wo.py --out $OUT
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import mx_jax as mx  # noqa: E402
from benchmarks import bench_wo as bw  # noqa: E402
from kernels import wo_triton as wt  # noqa: E402


def _salt(x, dtype):
  """A per-call scalar from x (so XLA cannot merge the calls that share a weight copy)."""
  return lax.bitcast_convert_type(x[0, 0], jnp.uint16).astype(dtype)


def read_mx(x, w):
  return jnp.max(w.data ^ _salt(x, w.data.dtype)), jnp.max(w.scales ^ _salt(x, w.scales.dtype))


def read_bf16(x, w):
  return jnp.max(w * x[0, 0])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=None)
  p.add_argument("--fmt", default="mxfp4_e2m1")
  p.add_argument("--m", type=int, default=16)
  p.add_argument("--smoke", action="store_true", help="CPU dry run: 512 x 512, 2 copies, interpreted kernel")
  args = p.parse_args()
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    bw.LOG_PATH = os.path.join(args.out, "read_floor_wo.log")
  n = k = 8192
  bw.SHOW_KERNELS = True
  if args.smoke:
    n = k = 512
    bw.COPIES, bw.REPS, bw.WALL_RUNS, bw.INTERPRET = 2, 2, 2, True
  x = jax.random.normal(jax.random.key(0), (args.m, k), jnp.bfloat16)
  qs = bw.quantized_copies(args.fmt, n, k, bw.COPIES)
  pws = [wt.prepare_weight_triton(q) for q in qs]
  wb = [mx.dequantize(q, jnp.bfloat16) for q in qs]
  del qs
  nbytes = pws[0].nbytes
  bf_bytes = n * k * 2
  bw.log(f"{jax.devices()[0].device_kind}: {args.fmt} weight {nbytes / 1e6:.1f} MB prepared, bf16 {bf_bytes / 1e6:.1f} MB")
  rows = [("XLA max over the prepared weight's bytes", read_mx, pws, nbytes),
          (f"{args.fmt} kernel default, M={args.m}", lambda x, w: wt.wo_matmul(x, w, interpret=bw.INTERPRET), pws, nbytes),
          ("XLA max over the bf16 weight", read_bf16, wb, bf_bytes),
          (f"bf16 x @ W^T, M={args.m}", lambda x, w: x @ w.T, wb, bf_bytes)]
  for _ in range(2):  # twice, interleaved, for the spread
    for name, fn, ws, nb in rows:
      dev, wall = bw.measure(fn, x, ws)
      bw.log("  " + bw.row(name, dev, wall, nb))


if __name__ == "__main__":
  main()
