"""Why is the Mosaic GPU MXFP4 weight-only call slower at M = 1 than at M = 2 (session 17: 17.8 vs 16.1 us)?

  PYTHONPATH=. python3 benchmarks/check_wo_m1.py --out $OUT      # on the GPU

Times (``bench_wo.measure``, kernels per call listed) at K = N = 8192: the public call at M = 1, 2 and 8; M = 1
with x padded to 2 rows and to 8 rows (output sliced back); and the bf16 GEMM at M = 1.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import bench_wo as bw  # noqa: E402
from kernels import wo_mgpu as wm  # noqa: E402
from kernels._dispatch import pad_to  # noqa: E402
from mx_jax.matmul import mx_weight_only_matmul  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None)
  args = p.parse_args()
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    bw.LOG_PATH = os.path.join(args.out, "check_wo_m1.log")
    open(bw.LOG_PATH, "w").close()
  bw.SHOW_KERNELS = True
  k = n = 8192
  qs = bw.quantized_copies("mxfp4_e2m1", n, k, bw.COPIES)
  pws = [wm.prepare_weight_mgpu(q) for q in qs]
  wb = [jax.random.normal(jax.random.key(200 + c), (n, k), jnp.float32).astype(jnp.bfloat16)
        for c in range(bw.COPIES)]
  for m in (1, 2, 8):
    x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(jnp.bfloat16)
    d, w_ = bw.measure(lambda x, w: jnp.dot(x, w.T), x, wb)
    bw.log(bw.row(f"M={m} bf16", d, w_, n * k * 2))
    d, w_ = bw.measure(lambda x, w: mx_weight_only_matmul(x, w), x, pws)
    bw.log(bw.row(f"M={m} public", d, w_, n * k // 2))
    if m == 1:
      for rows in (2, 8):
        cfg = wm.default_config(pws[0], 8)
        f = lambda x, w, rows=rows: wm.wo_fp4(pad_to(x, rows, k), w, config=cfg, rows=8)[:1]
        d, w_ = bw.measure(f, x, pws)
        bw.log(bw.row(f"M=1 x padded to {rows} rows", d, w_, n * k // 2))


if __name__ == "__main__":
  main()
