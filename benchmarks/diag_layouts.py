"""Which formulation of the MX operand quantization makes XLA:GPU lay activations out tokens-minor?

    PYTHONPATH=. python -m benchmarks.diag_layouts --out $OUT

For each variant (a knob of mx_jax's operand path, set before tracing) the 2-layer Dense-only mxfp8 GPT train
step of bench_train_step is compiled and profiled: device time, time in transpose fusions, and how many of
its large arrays (>= 1M elements) the compiled HLO keeps in a non-row-major layout.
"""
from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp

from benchmarks.profile_util import file_logger, top_kernels
from mx_jax import mx_block

_ORIG_BLOCK_MAX = mx_block._block_max


def _plain_max(ab, ax):
  return jnp.max(ab, axis=ax, keepdims=True)


# Block exponent of a block holding NaN or Inf: above every real one (<= 127), so the block max keeps it.
NONFINITE_E = 255


def element_exponent(ab, elem, scale_mode):
  """mx_block.shared_exponent of each element's own |x| bits ``ab`` (NONFINITE_E for NaN/Inf), elementwise.

  shared_exponent is non-decreasing in the amax, so a block's max of these equals shared_exponent(block amax)
  (tests/test_fast_operand_path.py). For emax >= 1, FP32 subnormals skip frexp's count-leading-zeros: they
  clamp to -127 either way.
  """
  from mx_jax import _bits
  if elem.emax >= 1:  # a zero or subnormal |x| read as 2^-127 * (1 + frac): every mode then gives e <= -127
    e = mx_block._exponent_of((ab >> 23) - 127, ab & 0x7FFFFF, elem, scale_mode)
  else:
    e = mx_block.shared_exponent(jnp.where(_bits.is_nonfinite_bits(ab), 0, ab), elem, scale_mode)
  return jnp.where(_bits.is_nonfinite_bits(ab), NONFINITE_E, e)


def _fast_blocks_elem_exp_max(x, elem, axis, bs, scale_mode):
  """Session 6's operand path (not shipped: 367 us slower per 2-layer step on the H100, though a deviceless
  compile counts 2 launches fewer per tensor): the block exponent is the block max of element_exponent;
  broadcast back through min(e, NONFINITE_E + biased exponent of x), the same e but element-dependent, so
  XLA cannot hoist the NaN-block test into a per-block kernel."""
  from mx_jax import _bits
  from mx_jax._blocks import to_blocks
  xb = to_blocks(x.astype(jnp.float32), axis, bs)
  ab = _bits.abs_bits(xb)
  eb = mx_block._block_max(element_exponent(ab, elem, scale_mode), axis + 1)
  ef = jnp.minimum(eb, (ab >> 23) + NONFINITE_E)
  bad = ef == NONFINITE_E
  e = jnp.where(bad, 0, ef)
  return _bits.round_to_elem_rne_fast(_bits.mul_pow2(xb, -e), elem), e, bad


_ORIG_FAST_BLOCKS = mx_block._fast_blocks

KNOBS = {  # atomic settings; a variant joins them with "+"
    "current": {},
    "elem_exp_max": {"_fast_blocks": _fast_blocks_elem_exp_max},
    "plain_max": {"_block_max": _plain_max},
    "window_max": {"_block_max": mx_block._window_block_max},    # the CUDA form, on every platform
    "halving_max": {"_block_max": mx_block._halving_block_max},  # sessions 3-5's form, on every platform
    "pin_none": {"PIN_OPERAND_LAYOUT": ""},
    "pin_in": {"PIN_OPERAND_LAYOUT": "in"},
    "pin_out": {"PIN_OPERAND_LAYOUT": "out"},
    "pin_inout": {"PIN_OPERAND_LAYOUT": "in,out"},
}


def transposed_arrays(text, min_elems=1 << 20):
  """Distinct (shape, layout) of large dense arrays whose layout is not {n-1, ..., 0}."""
  out = set()
  for m in re.finditer(r"\b(bf16|f32|s32|u32|pred)\[([\d,]+)\]\{([\d,]+)\}", text):
    dims = [int(d) for d in m.group(2).split(",")]
    lay = [int(d) for d in m.group(3).split(",")]
    n = 1
    for d in dims:
      n *= d
    big = [i for i in lay if dims[i] > 1]
    if n >= min_elems and big != sorted(big, reverse=True):
      out.add(f"{m.group(1)}[{m.group(2)}]{{{m.group(3)}}}")
  return sorted(out)


def run(log, name, recipe, layers, exclude, time_layers=0, iters=10):
  from benchmarks.bench_train_step import GPT, make_train_step
  import mx_jax.dot as dot
  saved = {"PIN_OPERAND_LAYOUT": dot.PIN_OPERAND_LAYOUT}
  jax.clear_caches()  # mx_jax's _qdot is jitted: a knob only takes effect on a fresh trace
  knobs = {}
  for part in name.split("+"):
    knobs.update(KNOBS[part])
  for k, v in knobs.items():
    setattr(mx_block if k.startswith("_") else dot, k, v)
  try:
    model = GPT(layers=layers)
    tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
    step, st, _ = make_train_step(recipe, model, tok, exclude)
    compiled = jax.jit(step).lower(st, tok).compile()
    text = compiled.as_text()
    rows, total = top_kernels(lambda s, t: compiled(s, t)[1], st, tok, calls=3, n=400)
    wall = None
    if time_layers:
      from benchmarks.bench_train_step import time_recipe
      wall = time_recipe(recipe, GPT(layers=time_layers), tok, 3, iters, exclude)["median_ms"]
  finally:
    mx_block._block_max = _ORIG_BLOCK_MAX
    mx_block._fast_blocks = _ORIG_FAST_BLOCKS
    for k, v in saved.items():
      setattr(dot, k, v)
  tr = sum(us for n, us, _ in rows if "transpose" in n)
  bad = transposed_arrays(text)
  log(f"{recipe}/{name}: device {total:.0f} us ({layers} layers), transpose fusions {tr:.0f} us, {len(bad)} large "
      f"non-row-major arrays: {' '.join(bad[:6])}")
  if wall is not None:
    log(f"    {time_layers} layers: median {wall:.2f} ms per step")
  return wall


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variants", default=",".join(KNOBS))
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--time-layers", type=int, default=0, help="also time each variant's step at this depth")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  log = file_logger(a.out, "layouts.log")
  base = run(log, "current", "bf16", a.layers, [], a.time_layers, a.iters)
  for v in a.variants.split(","):
    w = run(log, v, "mxfp8", a.layers, ["embed", "head", "*attn"], a.time_layers, a.iters)
    if w and base:
      log(f"    {w / base:.3f}x bf16")


if __name__ == "__main__":
  main()
