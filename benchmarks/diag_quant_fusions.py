"""Where the MX emulation time goes: block-amax variants on an attention-probability-sized tensor, and the
HLO of the slowest fusions of a (short) mxfp8 GPT train step.

    PYTHONPATH=. python -m benchmarks.diag_quant_fusions --layers 2 --out $OUT

Part 1 times MXFP8 operand quantization of a bf16 (8, 12, 1024, 1024) tensor along the minor axis (3) and a
non-minor one (2), whole and amax-only, with several formulations of the amax (median of 20 after warm-up).
Part 2 profiles the train step of benchmarks/bench_train_step.GPT and prints, for each of the top fusions,
its HLO instruction (with the JAX source location in its metadata) and its fused computation.
"""
from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
from jax import lax

import mx_jax
from benchmarks.profile_util import file_logger, hlo_instruction, median_ms
from mx_jax import _bits
from mx_jax._blocks import to_blocks
from mx_jax.dot import quantize_operand


def amax_variants(axis):
  def bits_f32(x):  # the current formulation: integer max of |f32 bits|
    return jnp.max(_bits.abs_bits(to_blocks(x.astype(jnp.float32), axis, 32)), axis=axis + 1)

  def float_bf16(x):
    return jnp.max(jnp.abs(to_blocks(x, axis, 32)), axis=axis + 1)

  def bits_u16(x):
    b = lax.bitcast_convert_type(x, jnp.uint16) & jnp.uint16(0x7FFF)
    return jnp.max(to_blocks(b, axis, 32), axis=axis + 1)

  def window(x):
    dims = [1] * x.ndim
    dims[axis] = 32
    return lax.reduce_window(jnp.abs(x), -jnp.inf, lax.max, dims, dims, "VALID")

  def two_stage(x):  # 32 = 4 x 8: two reductions over small strided groups
    xb = jnp.abs(to_blocks(x, axis, 32))
    sh = xb.shape[:axis + 1] + (4, 8) + xb.shape[axis + 2:]
    return jnp.max(jnp.max(xb.reshape(sh), axis=axis + 2), axis=axis + 1)

  def transposed(x):  # move the axis minor, reduce there
    xt = jnp.moveaxis(x, axis, -1)
    return jnp.max(jnp.abs(to_blocks(xt, xt.ndim - 1, 32)), axis=-1)

  return dict(bits_f32=bits_f32, float_bf16=float_bf16, bits_u16=bits_u16, reduce_window=window,
              two_stage=two_stage, transposed=transposed)


def part1(log):
  x = jax.random.normal(jax.random.key(0), (8, 12, 1024, 1024), jnp.bfloat16)
  nbytes = x.size * 2
  spec = mx_jax.recipe("mxfp8").operands["x"]
  copy = jax.jit(lambda x: x * 2)
  tc = 1e-3 * median_ms(copy, x)
  log(f"bf16 x*2 copy of {x.shape}: {tc * 1e3:.3f} ms ({2 * nbytes / tc / 1e12:.2f} TB/s)")
  for axis in (3, 2):
    q = jax.jit(lambda x, axis=axis: quantize_operand(x, spec, (axis,), dtype=jnp.bfloat16)[0])
    t = 1e-3 * median_ms(q, x)
    log(f"axis {axis}: quantize_operand (fake-quant, bf16 out) {t * 1e3:.3f} ms = {t / tc:.2f} copies")
    for name, fn in amax_variants(axis).items():
      try:
        t = 1e-3 * median_ms(jax.jit(fn), x)
        log(f"axis {axis}: amax {name:14s} {t * 1e3:.3f} ms ({nbytes / t / 1e12:.2f} TB/s read)")
      except Exception as e:  # noqa: BLE001
        log(f"axis {axis}: amax {name:14s} ERR {type(e).__name__}: {str(e)[:200]}")


def _fusion_hlo(text: str, name: str) -> str:
  line, body = hlo_instruction(text, name)
  if line is None:
    return f"  (instruction {name} not found)"
  return "\n".join([line[:3000]] + ([body[:12000]] if body else []))


def part2(log, layers, recipe, exclude_attn, top, hlo_grep=None, hlo_max=6):
  from benchmarks.bench_train_step import GPT, make_train_step
  from benchmarks.profile_util import top_kernels
  model = GPT(layers=layers)
  tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
  exclude = ["embed", "head"] + (["*attn"] if exclude_attn else [])
  step, st, _ = make_train_step(recipe, model, tok, exclude)
  compiled = jax.jit(step).lower(st, tok).compile()
  text = compiled.as_text()
  rows, total = top_kernels(lambda s, t: compiled(s, t)[1], st, tok, calls=3, n=top)
  log(f"\n== {recipe} (layers={layers}, exclude_attn={exclude_attn}): device total {total:.0f} us per step")
  for name, us, c in rows:
    log(f"   {us:9.1f} us  x{c:4.0f}  {name[:110]}")
  shown = 0
  for name, us, c in rows if hlo_grep else rows[:6]:
    if shown >= hlo_max:
      break
    if "nvjet" in name or "cutlass" in name or (not hlo_grep and "gemm" in name):
      continue
    hlo = _fusion_hlo(text, name)
    if hlo_grep and not re.search(hlo_grep, hlo):
      continue  # e.g. the attention softmax or the loss: fusions every recipe has
    shown += 1
    log(f"\n--- {name} ({us:.0f} us per step)\n{hlo}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--parts", default="1,2")
  p.add_argument("--recipes", default="mxfp8")
  p.add_argument("--top", type=int, default=16)
  p.add_argument("--hlo-grep", default=None,
                 help="print the HLO of the top fusions whose text matches this regex (default: top 6 non-GEMM)")
  p.add_argument("--hlo-max", type=int, default=6)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  log = file_logger(a.out, "diag_quant_fusions.log")
  if "1" in a.parts.split(","):
    part1(log)
  if "2" in a.parts.split(","):
    for r in a.recipes.split(","):
      ex = r.endswith("-noattn")
      part2(log, a.layers, r.removesuffix("-noattn"), ex, a.top, a.hlo_grep, a.hlo_max)


if __name__ == "__main__":
  main()
