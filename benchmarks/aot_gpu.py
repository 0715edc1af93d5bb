"""XLA:GPU compilation for an H100 on a machine without a GPU, and a static byte/FLOP table of the result.

XLA's deviceless AOT path: the CUDA PJRT plugin builds a compile-only H100 from a ``GpuTargetConfigProto``
(``H100_SPEC`` below: the H100 SXM's published limits) and ``jax.jit(f).lower(...).compile()`` runs the whole
GPU pipeline (fusion, layout assignment, scheduling, Triton/PTX codegen) with no device attached.
``kernel_table`` then lists the entry computation's launches with the bytes each reads and writes, and a
roofline estimate ``max(bytes / BW, flops / PEAK) + LAUNCH`` per kernel.

Needs ``jax[cuda12]==0.11.2`` (the plugin and ptxas; no driver) in the interpreter that runs it:

    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=. <venv with jax[cuda12]>/bin/python \\
        -m benchmarks.aot_gpu --variants bf16,mxfp8 --layers 2
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
from unittest import mock

import jax
import jax.numpy as jnp

# The H100 SXM's limits (NVIDIA H100 datasheet, cudaDeviceProp on the GPU machine). Enough for XLA's cost
# models and codegen; a field missing here only makes XLA use its defaults.
H100_SPEC = """
gpu_device_info {
  threads_per_block_limit: 1024  threads_per_warp: 32  shared_memory_per_block: 49152
  shared_memory_per_core: 233472  threads_per_core_limit: 2048  core_count: 132  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000  l2_cache_size: 52428800  clock_rate_ghz: 1.98
  device_memory_size: 84942979072  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

BW = 2.9e12        # bytes/s: the measured copy ceiling on the GPU machine (BENCHMARKS.md session 5: copy2)
PEAK = 660e12      # FLOP/s: the measured bf16 GEMM rate at the GPT step's shapes (8192x768x3072 class)
LAUNCH_US = 2.0    # per kernel: launch and tail


def h100():
  """A compile-only H100 (jax.Device). Raises with what to install when the CUDA plugin is missing."""
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc("", platform="cuda", target_config=H100_SPEC, topology="1x1x1")
  except NotImplementedError as e:
    raise RuntimeError("deviceless GPU compilation needs the CUDA plugin: pip install 'jax[cuda12]==0.11.2', "
                       "and run with JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1") from e
  return topo.devices[0]


@contextlib.contextmanager
def as_gpu_backend():
  """Make mx_jax's backend checks (``jax.default_backend()``) see "gpu" while a function is traced for it."""
  with mock.patch.object(jax, "default_backend", lambda: "gpu"):
    yield


def compile_for(device, fn, *args, donate_argnums=()):
  """``fn`` compiled for ``device`` (a compile-only device is fine) on abstract copies of ``args``."""
  s = jax.sharding.SingleDeviceSharding(device)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=s), args)
  with as_gpu_backend():
    return jax.jit(fn, donate_argnums=donate_argnums).lower(*abstract).compile()


_DT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e8m0fnu": 1, "bf16": 2, "f16": 2,
             "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\](?:\{[^}]*\})?")


def _bytes(shape_text: str) -> int:
  """Bytes of every array type written in ``shape_text`` (a tuple counts its members)."""
  n = 0
  for m in _ARRAY.finditer(shape_text):
    if m.group(1) in _DT_BYTES:
      n += _DT_BYTES[m.group(1)] * math.prod(int(d) for d in m.group(2).split(",") if d)
  return n


def _computations(text: str) -> dict[str, str]:
  return {m.group(1): m.group(0) for m in re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n.*?^\}", text, re.M | re.S)}


def _dot_flops(body: str, defs: dict[str, str]) -> int:
  """2·M·N·K summed over the dots written in ``body``."""
  flops = 0
  for m in re.finditer(r"= (\w+\[[\d,]*\])\{?[^ ]* dot\(%?([\w.\-]+), .*?lhs_contracting_dims=\{([\d,]*)\}", body):
    out = math.prod(int(d) for d in re.search(r"\[([\d,]*)\]", m.group(1)).group(1).split(",") if d)
    lhs = re.search(r"\[([\d,]*)\]", defs.get(m.group(2), "[]")).group(1).split(",")
    k = math.prod(int(lhs[int(i)]) for i in m.group(3).split(",") if i)
    flops += 2 * out * k
  return flops


def kernel_table(text: str) -> list[dict]:
  """One row per launch of the compiled entry computation: name, kind, bytes (operands read + result written),
  flops, estimated µs. Parameters, tuples, bitcasts and the like launch nothing and are left out."""
  comps = _computations(text)
  entry = next(v for v in comps.values() if v.startswith("ENTRY"))
  defs: dict[str, str] = {}
  for c in comps.values():
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ", c, re.M):
      defs[m.group(1)] = m.group(2)
  rows = []
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$", entry, re.M):
    name, shape, op, operands, rest = m.groups()
    if op in ("parameter", "tuple", "get-tuple-element", "bitcast", "constant", "after-all", "opt-barrier",
              "partition-id", "replica-id", "add-dependency"):
      continue
    read = sum(_bytes(defs.get(o.strip().lstrip("%"), "")) for o in operands.split(",") if o.strip())
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = comps.get(called.group(1), "") if called else ""
    flops = _dot_flops(body, defs) if body else 0
    if op == "custom-call" and "matmul" in rest:
      a, b = [defs.get(o.strip().lstrip("%"), "") for o in operands.split(",")[:2]]
      ka = re.search(r'"lhs_contracting_dimensions":\["?(\d+)', rest)
      dims = re.search(r"\[([\d,]*)\]", a).group(1).split(",")
      out = re.search(r"\[([\d,]*)\]", shape).group(1).split(",")
      flops = 2 * math.prod(int(d) for d in out if d) * int(dims[int(ka.group(1))] if ka else dims[-1])
    kind = op if op != "fusion" else re.search(r"kind=(\w+)", rest).group(1)
    if "__triton_gemm" in rest or "gemm_fusion" in name or flops:
      kind = "gemm"
    nbytes = read + _bytes(shape)
    us = max(nbytes / BW, flops / PEAK) * 1e6 + LAUNCH_US
    rows.append(dict(name=name, kind=kind, bytes=nbytes, flops=flops, us=us, shape=shape[:80]))
  return rows


def summarize(rows: list[dict]) -> dict:
  gemm = [r for r in rows if r["kind"] == "gemm"]
  other = [r for r in rows if r["kind"] != "gemm"]
  return dict(kernels=len(rows), gemms=len(gemm), us=sum(r["us"] for r in rows),
              gemm_us=sum(r["us"] for r in gemm), other_us=sum(r["us"] for r in other),
              other_gb=sum(r["bytes"] for r in other) / 1e9)


def gpt_step_table(recipe: str, layers: int, exclude=("embed", "head", "*attn"), donate=True):
  """(kernel rows, compiled text) of bench_train_step's GPT AdamW step at ``layers`` layers, for an H100."""
  from benchmarks.bench_train_step import GPT, make_train_step
  jax.clear_caches()  # mx_jax's _qdot is jitted and traced per backend view
  model = GPT(layers=layers)
  tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
  with as_gpu_backend():
    step, st, _ = make_train_step(recipe, model, tok, list(exclude) if recipe != "bf16" else [])
  compiled = compile_for(h100(), step, st, tok, donate_argnums=(0,) if donate else ())
  text = compiled.as_text()
  return kernel_table(text), text


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variants", default="bf16,mxfp8")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--top", type=int, default=0, help="also list the N costliest non-GEMM kernels")
  p.add_argument("--dump", default=None, help="write each variant's compiled HLO into this folder")
  a = p.parse_args()
  for v in a.variants.split(","):
    rows, text = gpt_step_table(v, a.layers)
    s = summarize(rows)
    print(f"{v}: {s['kernels']} kernels ({s['gemms']} GEMMs), est. {s['us']:.0f} us = GEMMs {s['gemm_us']:.0f} + "
          f"rest {s['other_us']:.0f} us ({s['other_gb']:.2f} GB)", flush=True)
    if a.top:
      for r in sorted((r for r in rows if r["kind"] != "gemm"), key=lambda r: -r["us"])[:a.top]:
        print(f"    {r['us']:7.1f} us {r['bytes'] / 1e6:8.1f} MB  {r['kind']:>10} {r['name']:<28} {r['shape']}")
    if a.dump:
      os.makedirs(a.dump, exist_ok=True)
      with open(os.path.join(a.dump, f"{v}_{a.layers}l.hlo.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
  main()
