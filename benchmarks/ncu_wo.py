"""One weight-only kernel call for Nsight Compute (hardware counters: stall reasons, issue rate, bytes).

  ncu --clock-control none --kernel-name regex:wo_triton --launch-skip 1 --launch-count 1 --set full \
      -o rep python3 benchmarks/ncu_wo.py --fmt mxfp4_e2m1 --cand 2

Runs ``kernels.wo_triton.wo_matmul`` with ``CANDIDATES[cand]`` on an (N, K) weight of N(0, 1) values quantized to
``fmt`` and x (M, K) bf16, three times (the first compiles). Used by benchmarks/gpu_session8.sh.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mx_jax  # noqa: E402
from kernels import wo_triton as wt  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--fmt", default="mxfp4_e2m1", choices=wt.FORMATS)
  p.add_argument("--cand", type=int, default=2, help="index into kernels.wo_triton.CANDIDATES")
  p.add_argument("--m", type=int, default=16)
  p.add_argument("--k", type=int, default=8192)
  p.add_argument("--n", type=int, default=8192)
  a = p.parse_args()
  cfg = wt.CANDIDATES[a.cand]
  w = jax.random.normal(jax.random.key(0), (a.n, a.k), jnp.float32)
  pw = wt.prepare_weight_for(mx_jax.quantize(w, a.fmt, axis=1), cfg)
  x = jax.random.normal(jax.random.key(1), (a.m, a.k), jnp.float32).astype(jnp.bfloat16)
  f = jax.jit(lambda x, w: wt.wo_matmul(x, w, config=cfg))
  for _ in range(3):
    out = jax.block_until_ready(f(x, pw))
  print(f"{a.fmt} {cfg.name()} M={a.m}: out {out.shape} {out.dtype}, elem_ok={pw.elem_ok} fold_ok={pw.fold_ok} "
        f"group={pw.group or 'default'} layout={pw.layout}")


if __name__ == "__main__":
  main()
