"""Is the MXFP8 GEMM-operand quantization ALU- or memory-bound, and what does a leaner rounding buy?

    XLA_FLAGS="--xla_gpu_enable_command_buffer= --xla_dump_to=/tmp/qv --xla_dump_hlo_module_re=.*qv_.*" \
      PYTHONPATH=. python -m benchmarks.diag_operand_variants --ptx /tmp/qv --out $OUT

Part 1: device time (profiler) of a bf16 (8192, 3072) tensor fake-quantized along both axes (both blockings,
as the train step does for activations and gradients) with the current scaled rounding
(``mx_fake_quantize_fast``) and the in-place grid rounding (``mx_fake_quantize_direct``), beside a two-output
copy (the memory floor) and the two block-amax reductions alone; then the PTX of each kernel: instruction
count and vector loads/stores. Part 2: the per-kernel lists of a 2-layer Dense-only train step (bf16 and both
mxfp8 roundings, written to JSON), and the 12-layer step times of the three, in one process.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.profile_util import top_kernels
from mx_jax import _bits, formats as F, mx_block
from mx_jax._blocks import to_blocks

E4M3 = F.FORMATS["mxfp8_e4m3"].elem


def variants():
  def qv_copy2(x):
    return (x * 2).astype(jnp.bfloat16), (x * 3).astype(jnp.bfloat16)

  def qv_amax2(x):
    xf = x.astype(jnp.float32)
    return (mx_block._block_max(_bits.abs_bits(to_blocks(xf, 1, 32)), 2),
            mx_block._block_max(_bits.abs_bits(to_blocks(xf, 0, 32)), 1))

  def mk(fn):
    def both(x):
      return fn(x, E4M3, 1, 32, "floor").astype(jnp.bfloat16), fn(x, E4M3, 0, 32, "floor").astype(jnp.bfloat16)

    def one(x):
      return fn(x, E4M3, 1, 32, "floor").astype(jnp.bfloat16)
    return both, one

  cb, co = mk(mx_block.mx_fake_quantize_fast)
  db, do = mk(mx_block.mx_fake_quantize_direct)
  fns = dict(qv_copy2=qv_copy2, qv_amax2=qv_amax2, qv_scaled_both=cb, qv_scaled_k=co, qv_direct_both=db,
             qv_direct_k=do)
  for k, f in fns.items():
    f.__name__ = k
  return fns


def ptx_stats(dump_dir, name):
  out = []
  for path in sorted(glob.glob(os.path.join(dump_dir, f"*{name}*.ptx"))):
    text = open(path).read()
    for m in re.finditer(r"\.entry\s+(\S+?)\(.*?\n\{(.*?)\n\}", text, re.S):
      body = [ln.strip() for ln in m.group(2).splitlines()]
      ins = [ln for ln in body if ln.endswith(";") and not ln.startswith((".reg", ".shared", ".local", "//"))]
      cnt = lambda p: sum(1 for ln in ins if re.match(p, ln))  # noqa: E731
      out.append(f"{m.group(1)[:40]}: {len(ins)} instr, ld.global {cnt(r'ld\.global')} "
                 f"(vector {cnt(r'ld\.global\S*\.v[248]')}), st.global {cnt(r'st\.global')} "
                 f"(vector {cnt(r'st\.global\S*\.v[248]')}), mul.hi/div/rem {cnt(r'(mul\.hi|div|rem)')}, "
                 f"bra {cnt(r'(@\S+\s+)?bra')}")
  return out or [f"(no PTX for {name} under {dump_dir})"]


def part1(log, ptx):
  x = jax.random.normal(jax.random.key(0), (8192, 3072), jnp.bfloat16)
  nb = x.size * 2
  for name, fn in variants().items():
    f = jax.jit(fn)
    rows, total = top_kernels(f, x, calls=10, n=8)
    kern = ", ".join(f"{n[:28]} {us:.1f}" for n, us, _ in rows)
    bw = nb / (total * 1e-6) / 1e12 if total else float("nan")
    log(f"{name:16s} device {total:7.1f} us  ({bw:.2f} TB/s of input read)  [{kern}]")
    if ptx:
      for s in ptx_stats(ptx, name):
        log(f"    {s}")


def part2(log, out, iters, layer_list, batch, seq):
  from benchmarks.bench_train_step import GPT, make_train_step
  fast = mx_block.mx_fake_quantize_fast
  res = {}

  def use(kind):
    import mx_jax.dot as dot
    dot.mx_block.mx_fake_quantize_fast = fast if kind == "scaled" else mx_block.mx_fake_quantize_direct

  for layers in layer_list:
    model = GPT(layers=layers)
    tok = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, model.vocab)
    for name, kind in (("bf16", "scaled"), ("mxfp8", "scaled"), ("mxfp8", "direct")):
      use(kind)
      step, st, _ = make_train_step(name, model, tok, ["embed", "head", "*attn"])
      step = jax.jit(step, donate_argnums=0)
      tag = f"{name}/{kind}/L{layers}"
      if layers == layer_list[0]:
        holder = [st]

        def one(t):
          holder[0], loss = step(holder[0], t)
          return loss
        rows, total = top_kernels(one, tok, calls=3, n=400)
        res[tag] = dict(total_us=total, kernels=rows)
        log(f"{tag}: device {total:.0f} us per step, {len(rows)} kernels")
      else:
        for _ in range(3):
          st, loss = step(st, tok)
        jax.block_until_ready(loss)
        ts = []
        for _ in range(iters):
          t = time.perf_counter()
          st, loss = step(st, tok)
          jax.block_until_ready(loss)
          ts.append(time.perf_counter() - t)
        res[tag] = dict(median_ms=1e3 * statistics.median(ts), loss=float(loss))
        log(f"{tag}: median {1e3 * statistics.median(ts):.2f} ms (loss {float(loss):.4f})")
  use("scaled")
  last = layer_list[-1]
  b = res[f"bf16/scaled/L{last}"]["median_ms"]
  for k in (f"mxfp8/scaled/L{last}", f"mxfp8/direct/L{last}"):
    log(f"{k}: {res[k]['median_ms'] / b:.3f}x bf16")
  if out:
    with open(os.path.join(out, "operand_variants.json"), "w") as f:
      json.dump(res, f, indent=1)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--parts", default="1,2")
  p.add_argument("--ptx", default=None, help="the --xla_dump_to folder, to read the variants' PTX back")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--layers", default="2,12", help="profiled depth, timed depth")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  path = os.path.join(a.out, "operand_variants.log") if a.out else None

  def log(s):
    print(s, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(s + "\n")

  log(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}")
  if "1" in a.parts.split(","):
    part1(log, a.ptx)
  if "2" in a.parts.split(","):
    part2(log, a.out, a.iters, [int(v) for v in a.layers.split(",")], a.batch, a.seq)


if __name__ == "__main__":
  main()
