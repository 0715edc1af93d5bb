"""One block-scaled GEMM kernel call for Nsight Compute (stall reasons, issue rate, pipe use, shared-memory traffic).

  ncu --clock-control none --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --set full \\
      -o rep python3 benchmarks/ncu_gemm.py --variant bf16

Runs ``kernels.mx_matmul.mx_gemm`` with the default config of ``--variant`` (design (a) "fp8" or (b) "bf16") on
MXFP8 E4M3 operands of N(0, 1) values, M = N = K = ``--size``, three times (the first compiles). Used by
benchmarks/gpu_session17.sh call 6.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mx_jax  # noqa: E402
from kernels import mx_matmul  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="fp8", choices=("fp8", "bf16"))
  p.add_argument("--size", type=int, default=4096)
  args = p.parse_args()
  n = args.size
  qa = mx_jax.quantize(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), "mxfp8_e4m3", axis=1)
  qb = mx_jax.quantize(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), "mxfp8_e4m3", axis=1)
  f = jax.jit(lambda a, b: mx_matmul.mx_gemm(a, b, out_dtype=jnp.bfloat16, variant=args.variant))
  for _ in range(3):
    out = jax.block_until_ready(f(qa, qb))
  print(f"mx_gemm {args.variant} {n}^3: out {out.shape} {out.dtype}")


if __name__ == "__main__":
  main()
