"""Where an MXFP8 GEMM operand's quantization time goes, against its memory floor, and what each kernel of a
train step is.

    XLA_FLAGS="--xla_gpu_enable_command_buffer=" PYTHONPATH=. python -m benchmarks.diag_operand_variants --out $OUT

Part 1: device time (profiler) of a bf16 (8192, 3072) tensor fake-quantized along both axes (both blockings,
as the train step does for activations and gradients) and along one, beside a two-output copy (the memory
floor) and the two block-amax reductions alone. Part 3: every kernel of a 2-layer Dense-only GPT train step above
``--min-us`` with its shape, operands and source op (``--recipes``).
"""
from __future__ import annotations

import argparse
import math
import re

import jax
import jax.numpy as jnp

from benchmarks.profile_util import file_logger, hlo_instruction, top_kernels
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
  fns = dict(qv_copy2=qv_copy2, qv_amax2=qv_amax2, qv_scaled_both=cb, qv_scaled_k=co)
  for k, f in fns.items():
    f.__name__ = k
  return fns


def part1(log):
  x = jax.random.normal(jax.random.key(0), (8192, 3072), jnp.bfloat16)
  nb = x.size * 2
  for name, fn in variants().items():
    f = jax.jit(fn)
    rows, total = top_kernels(f, x, calls=10, n=8)
    kern = ", ".join(f"{n[:28]} {us:.1f}" for n, us, _ in rows)
    bw = nb / (total * 1e-6) / 1e12 if total else float("nan")
    log(f"{name:16s} device {total:7.1f} us  (input bytes / time: {bw:.2f} TB/s)  [{kern}]")


def _summary(text, name):
  """One line for the HLO instruction behind a profiler kernel name: its shape, largest operands and op_name."""
  line, body = hlo_instruction(text, name)
  if line is None:
    return "(not found)"
  line = line.split(" = ", 1)[1]
  shape = line.split(" fusion(")[0].split(" custom-call(")[0][:160]
  op = re.search(r'op_name="([^"]*)"', line)
  body_n, ops = 0, []
  sig = re.match(r"%?\S+ (\(.*?\)) -> ", body) if body else None
  if sig:
    body_n = body.count("\n")
    ops = re.findall(r"\b[a-z0-9]+\[[\d,]*\]", sig.group(1))
  size = lambda t: math.prod(int(d) for d in t.split("[")[1][:-1].split(",") if d)  # noqa: E731
  big = sorted(ops, key=lambda t: -size(t))[:3]
  return f"{shape} <- {' '.join(big)}; {body_n} ops; {op.group(1)[-90:] if op else ''}"


def part3(log, recipe, min_us):
  """Each kernel of a 2-layer Dense-only step above ``min_us``: shape, operands and source op."""
  from benchmarks.bench_train_step import GPT, make_train_step
  model = GPT(layers=2)
  tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
  step, st, _ = make_train_step(recipe, model, tok, ["embed", "head", "*attn"])
  compiled = jax.jit(step).lower(st, tok).compile()
  text = compiled.as_text()
  rows, total = top_kernels(lambda s, t: compiled(s, t)[1], st, tok, calls=3, n=400)
  log(f"\n== {recipe} 2 layers: device {total:.0f} us")
  for name, us, c in rows:
    if us >= min_us:
      log(f"  {us:7.1f} x{c:3.0f} {name[:40]:40s} {_summary(text, name)}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--parts", default="1,3")
  p.add_argument("--recipes", default="bf16,mxfp8", help="part 3")
  p.add_argument("--min-us", type=float, default=10.0, help="part 3")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  log = file_logger(a.out, "operand_variants.log")
  if "1" in a.parts.split(","):
    part1(log)
  if "3" in a.parts.split(","):
    for r in a.recipes.split(","):
      part3(log, r, a.min_us)


if __name__ == "__main__":
  main()
