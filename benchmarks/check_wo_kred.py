"""On the GPU: split-K summed in the weight-only kernel (``WOConfig(reduce="kernel")``) against the same config
summed by XLA ("xla"), bit for bit, over shapes with ragged M / N / K and many repeats (a race between a tile's
programs would show as a run that differs).

  PYTHONPATH=. python benchmarks/check_wo_kred.py [--repeats 30] [--out DIR]
  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/check_wo_kred.py --smoke --repeats 1   # CPU dry run
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax
from kernels import wo_triton as wt

SHAPES = ((16, 8192, 8192), (33, 1000, 3000), (100, 520, 4096))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--pairs", default="mxfp4_e2m1:75,mxfp4_e2m1:77,mxfp4_e2m1:79,nvfp4:75,mxfp8_e4m3:81",
                 help="fmt:index pairs, index into CANDIDATES (a reduce='kernel' config)")
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="CPU dry run: small shapes in the Pallas interpreter")
  a = p.parse_args()
  lines = []

  def log(s):
    print(s, flush=True)
    lines.append(s)

  bad = 0
  for pair in a.pairs.split(","):
    fmt, ci = pair.split(":")
    ci = int(ci)
    kc = wt.CANDIDATES[ci]
    if kc.reduce != "kernel":
      raise SystemExit(f"candidate {ci} does not reduce in the kernel: {kc}")
    xc = dataclasses.replace(kc, reduce="xla")
    for m, n, k in ((5, 200, 700),) if a.smoke else SHAPES:
      w = jax.random.normal(jax.random.key(m + n), (n, k), jnp.float32)
      q = mx_jax.quantize(w, fmt, axis=1)
      x = jax.random.normal(jax.random.key(k), (m, k), jnp.float32).astype(jnp.bfloat16)
      pw = wt.prepare_weight_for(q, kc)
      for od in (jnp.float32, jnp.bfloat16):
        ref = np.asarray(wt.wo_matmul(x, pw, out_dtype=od, config=xc, interpret=a.smoke).astype(jnp.float32))
        f = jax.jit(lambda x, pw, kc=kc, od=od: wt.wo_matmul(x, pw, out_dtype=od, config=kc, interpret=a.smoke).astype(jnp.float32))
        diffs = sum(int(not np.array_equal(np.asarray(f(x, pw)), ref, equal_nan=True)) for _ in range(a.repeats))
        bad += diffs
        log(f"{fmt:<11s} M={m:<4d} N={n:<5d} K={k:<5d} {jnp.dtype(od).name:<8s} cand {ci} {kc.name():<44s} "
            f"{'IDENTICAL' if diffs == 0 else f'DIFFERS in {diffs}/{a.repeats}'}")
  log(f"kernel-reduce vs xla-reduce: {'all identical' if bad == 0 else f'{bad} runs differ'}")
  if a.out:
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "check_wo_kred.log"), "w") as fh:
      fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
