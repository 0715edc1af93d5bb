"""SASS of the Pallas-Triton weight-only kernel for an H100, without one: instructions per K step of its loop.

``kernels.wo_triton.wo_matmul`` (x (M, K) bf16, an (N, K) weight) is compiled for a compile-only H100
(``aot_gpu.h100``; Pallas-Triton is told it targets an H100) with XLA's PTX dump on; the module's PTX goes
through ``aot_sass.sass`` (CUDA 13 ptxas for sm_90a, nvdisasm). Printed: ptxas' register report and the
instruction mix of the kernel's K loop (the longest backward branch) per iteration and warp -- the counts
quoted for the weight-only candidates in BENCHMARKS.md.

    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 CUDA13_BIN=<dir with ptxas, nvdisasm> PYTHONPATH=. \\
        <venv with jax[cuda12]>/bin/python -m benchmarks.aot_sass_wo --fmt mxfp4_e2m1 \\
        --config 64,256,1,4,4,elem,xw,asm[,fold]
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile

from benchmarks.aot_sass import _OP, sass

_LABEL = re.compile(r"^\.(L_x_\d+):")
_BRA = re.compile(r"BRA `?\(?\.(L_x_\d+)")


def compile_ptx(fmt: str, cfg, m: int, n: int, k: int, out_dir: str) -> str:
  """Compiles wo_matmul for the H100 with ``cfg`` (every scale allowing per-element scaling and the fold) and
  returns the dumped module PTX's path."""
  os.environ["XLA_FLAGS"] = f"--xla_dump_to={out_dir} --xla_dump_emitter_re=.*"
  import dataclasses
  import jax
  import jax.numpy as jnp
  import mx_jax
  from jax._src.pallas.triton import gpu_info
  from benchmarks.aot_gpu import compile_for, h100
  from kernels import wo_triton as wt
  h = gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100)
  gpu_info.get_gpu_info = lambda: h
  # the weight cfg runs on (its packing group and layout), as zeros whose scales allow "elem" and the fold
  q = jax.eval_shape(lambda v: mx_jax.quantize(v, fmt, axis=1), jax.ShapeDtypeStruct((n, k), jnp.float32))
  shapes = jax.eval_shape(lambda q: wt.prepare_weight_for(q, cfg), q)
  pw = dataclasses.replace(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), elem_ok=True,
                           fold_ok=fmt in wt.FOLDABLE)
  compile_for(h100(), lambda x, w: wt.wo_matmul(x, w, config=cfg), jnp.zeros((m, k), jnp.bfloat16), pw)
  return max(glob.glob(os.path.join(out_dir, "*.ptx")), key=os.path.getsize)


def kernel_loop(listing: str, name: str = "wo_triton") -> collections.Counter:
  """Opcode counts of the longest backward-branch loop inside the kernel whose name contains ``name``."""
  sections = re.split(r"^\s*\.section\s+\.text\.", listing, flags=re.M)
  text = next(s for s in sections[1:] if name in s.split(",", 1)[0])
  lines = text.splitlines()
  labels = {m.group(1): i for i, ln in enumerate(lines) for m in [_LABEL.match(ln.strip())] if m}
  spans = [(labels[m.group(1)], i) for i, ln in enumerate(lines) for m in [_BRA.search(ln)]
           if m and m.group(1) in labels and labels[m.group(1)] < i]
  lo, hi = max(spans, key=lambda s: s[1] - s[0])
  return collections.Counter(m.group(1).split(".")[0] for ln in lines[lo:hi + 1] for m in [_OP.match(ln)] if m)


def main():
  from kernels import wo_triton as wt
  p = argparse.ArgumentParser()
  p.add_argument("--fmt", default="mxfp4_e2m1")
  p.add_argument("--config", default="64,256,1,4,4,elem,xw,asm",
                 help="block_n,block_k,split_k,num_warps,num_stages,scale_mode,orient,decode[,fold]")
  p.add_argument("--cand", type=int, default=None, help="index into wo_triton.CANDIDATES (instead of --config)")
  p.add_argument("--m", type=int, default=16)
  p.add_argument("--n", type=int, default=8192)
  p.add_argument("--k", type=int, default=8192)
  p.add_argument("--listing", default=None, help="also write the whole SASS listing to this file")
  a = p.parse_args()
  bindir = os.environ.get("CUDA13_BIN")
  if not bindir:
    raise SystemExit("set CUDA13_BIN to a directory holding CUDA 13's ptxas and nvdisasm")
  f = a.config.split(",")
  cfg = wt.WOConfig(*map(int, f[:5]), f[5], f[6], decode=f[7], fold=len(f) > 8 and f[8] == "fold")
  if a.cand is not None:
    cfg = wt.CANDIDATES[a.cand]
  with tempfile.TemporaryDirectory() as d:
    report, listing = sass(compile_ptx(a.fmt, cfg, a.m, a.n, a.k, d), bindir)
  if a.listing:
    with open(a.listing, "w") as fh:
      fh.write(listing)
  print(f"{a.fmt} {cfg.name()} at M={a.m}, N={a.n}, K={a.k}")
  print("\n".join(ln for ln in report.splitlines() if "wo_triton" in ln or "registers" in ln))
  mix = kernel_loop(listing)
  print(f"K loop: {sum(mix.values())} instructions per iteration ({cfg.block_k}-deep step) and warp")
  print("  " + ", ".join(f"{op}:{c}" for op, c in mix.most_common(16)))


if __name__ == "__main__":
  main()
