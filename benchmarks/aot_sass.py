"""SASS of the block-scaled Mosaic GPU GEMM for an H100, without one: where its main loop's issue slots go.

The GEMM is compiled for a compile-only H100 (``aot_gpu.h100``) with Mosaic GPU's PTX dump on; the PTX is
assembled with ptxas for sm_90a and disassembled with nvdisasm. Printed: ptxas' register/spill report and the
instruction mix per 32-deep K block of the FP8 design's main loop (between its first and last QGMMA), with
the issue-bound ceiling it implies (one warp instruction per scheduler per clock, one warp of each compute
warpgroup per scheduler).

    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 CUDA13_BIN=<dir with ptxas, nvdisasm> PYTHONPATH=. \\
        <venv with jax[cuda12]>/bin/python -m benchmarks.aot_sass [--variant fp8] [--size 8192]

CUDA 13's ptxas and nvdisasm (pip: nvidia-cuda-nvcc==13.0.*, nvidia-cuda-nvdisasm; unzip the wheels) are
needed because Mosaic GPU emits PTX 9.0.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import tempfile

SM_CLOCK_GHZ = 1.755  # H100 SXM under sustained tensor-core load (the 8192^3 runs of BENCHMARKS.md)
NUM_SMS = 132


def dump_ptx(variant: str, size: int, out_dir: str, overrides: dict | None = None) -> str:
  """Compiles the MXFP8 x MXFP8 GEMM (size^3, default config of ``variant`` with ``overrides`` of its fields)
  and returns its PTX path."""
  import dataclasses
  os.environ.update(MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_TO=out_dir)
  import jax.numpy as jnp
  import kernels.mx_matmul_mgpu as mg
  from benchmarks.aot_gpu import compile_for, h100
  from kernels import mx_matmul
  from mx_jax.quantize import quantize
  mg.num_sms_default = lambda: NUM_SMS

  def f(a, b):
    qa, qb = quantize(a, "mxfp8_e4m3", axis=-1), quantize(b, "mxfp8_e4m3", axis=-1)
    if not overrides:
      return mx_matmul.mx_gemm(qa, qb, out_dtype=jnp.bfloat16, variant=variant)
    base = mx_matmul.DEFAULT_FP8 if variant == "fp8" else mx_matmul.DEFAULT_BF16
    return mx_matmul.mx_gemm(qa, qb, out_dtype=jnp.bfloat16, config=dataclasses.replace(base, **overrides))

  x = jnp.zeros((size, size), jnp.bfloat16)
  compile_for(h100(), f, x, x)
  return sorted(glob.glob(os.path.join(out_dir, "*.ptx")))[-1]


def sass(ptx: str, bindir: str) -> tuple[str, str]:
  cubin = ptx[:-4] + ".cubin"
  rep = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-O3", "-v", ptx, "-o", cubin],
                       capture_output=True, text=True, check=True)
  dis = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True)
  return rep.stderr, dis.stdout


_OP = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[0-9T] )?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)?)")


def loop_mix(text: str) -> tuple[collections.Counter, int]:
  """(opcode counts, wgmma count) of the K loop's body: from its first wgmma to the last FFMA after its last
  one (the promotion of the last block; the loop body holds one pipeline stage, unrolled)."""
  lines = text.splitlines()
  idx = [i for i, l in enumerate(lines) if "QGMMA" in l or "HGMMA" in l]
  end = max([i for i, l in enumerate(lines) if " FFMA " in l and i > idx[-1]] or [idx[-1]])
  mix = collections.Counter()
  for l in lines[idx[0]:end + 1]:
    m = _OP.match(l)
    if m:
      mix[m.group(1)] += 1
  return mix, len(idx)


def _field(kv: str):
  """ "name=value" -> (name, value as int, bool or str)."""
  k, v = kv.split("=", 1)
  if v in ("True", "False"):
    return k, v == "True"
  return k, int(v) if v.lstrip("-").isdigit() else v


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variant", default="fp8")
  p.add_argument("--size", type=int, default=8192)
  p.add_argument("--set", action="append", default=[], help="a GemmConfig field of the default, e.g. deq_slots=2")
  a = p.parse_args()
  overrides = dict(_field(kv) for kv in a.set)
  bindir = os.environ.get("CUDA13_BIN")
  if not bindir:
    raise SystemExit("set CUDA13_BIN to a directory holding CUDA 13's ptxas and nvdisasm")
  with tempfile.TemporaryDirectory() as d:
    report, dis = sass(dump_ptx(a.variant, a.size, d, overrides), bindir)
  print(report.strip())
  # ptxas says so when it must serialize wgmma (e.g. register operands it cannot keep live while in flight)
  warn = [ln for ln in report.splitlines() if "arning" in ln or "serializ" in ln]
  print(f"ptxas warnings: {len(warn)}" + "".join(f"\n  {ln}" for ln in warn))
  waits = collections.Counter(m.group(1) for m in re.finditer(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", dis))
  print(f"wgmma waits (DEPBAR.LE gsb0, n -> count): {dict(waits)}")
  if a.variant != "fp8":
    return
  mix, nmma = loop_mix(dis)
  blocks = nmma
  total = sum(mix.values())
  print(f"main loop: {nmma} wgmma, {total} instructions; per 32-deep block (per warp):")
  for op, n in mix.most_common(12):
    print(f"  {op:24s} {n / blocks:6.1f}")
  per_block = total / blocks
  # Two compute warpgroups: each scheduler issues one warp of each, so 2 * per_block issue slots per pair of
  # 64 x tile_n x 32 blocks (tile_n from the QGMMA shape).
  tile_n = int(re.search(r"MMA\.64x(\d+)x", dis).group(1))
  flops_per_clk_sm = 2 * (2 * 64 * tile_n * 32) / (2 * per_block)
  print(f"issue-bound ceiling: {flops_per_clk_sm:.0f} FLOP/clk/SM = "
        f"{flops_per_clk_sm * NUM_SMS * SM_CLOCK_GHZ / 1e3:.0f} TFLOP/s at {SM_CLOCK_GHZ} GHz")


if __name__ == "__main__":
  main()
