"""Which formulation of the MX operand quantization makes XLA:GPU lay activations out tokens-minor?

    PYTHONPATH=. python -m benchmarks.diag_layouts --out $OUT

For each variant (a knob of mx_jax's operand path, set before tracing) the 2-layer Dense-only mxfp8 GPT train
step of bench_train_step is compiled and profiled: device time, time in transpose fusions, and how many of
its large arrays (>= 1M elements) the compiled HLO keeps in a non-row-major layout.
"""
from __future__ import annotations

import argparse
import os
import re

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.profile_util import top_kernels
from mx_jax import mx_block

_ORIG_BLOCK_MAX = mx_block._block_max


def _plain_max(ab, ax):
  return jnp.max(ab, axis=ax, keepdims=True)


def _window_max(ab, ax):
  n = ab.shape[ax]
  dims = [1] * ab.ndim
  dims[ax] = n
  return lax.reduce_window(ab, jnp.iinfo(ab.dtype).min, lax.max, dims, dims, "VALID")


KNOBS = {
    "current": {},
    "plain_max": {"_block_max": _plain_max},
    "window_max": {"_block_max": _window_max},
    "pin_in": {"PIN_OPERAND_LAYOUT": "in"},
    "pin_out": {"PIN_OPERAND_LAYOUT": "out"},
    "pin_in+out": {"PIN_OPERAND_LAYOUT": "in,out"},
    "contract_last": {"CONTRACT_LAST": True},
    "contract_last+pin_in": {"CONTRACT_LAST": True, "PIN_OPERAND_LAYOUT": "in"},
    "direct": {"mx_fake_quantize_fast": mx_block.mx_fake_quantize_direct},
}
_ORIG_FAST = mx_block.mx_fake_quantize_fast


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


def run(log, name, recipe, layers, exclude):
  from benchmarks.bench_train_step import GPT, make_train_step
  import mx_jax.dot as dot
  saved = {k: getattr(dot, k) for k in ("PIN_OPERAND_LAYOUT", "CONTRACT_LAST")}
  jax.clear_caches()  # mx_jax's _qdot is jitted: a knob only takes effect on a fresh trace
  for k, v in KNOBS.get(name, {}).items():
    setattr(mx_block if k in ("_block_max", "mx_fake_quantize_fast") else dot, k, v)
  try:
    model = GPT(layers=layers)
    tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
    step, st, _ = make_train_step(recipe, model, tok, exclude)
    compiled = jax.jit(step).lower(st, tok).compile()
    text = compiled.as_text()
    rows, total = top_kernels(lambda s, t: compiled(s, t)[1], st, tok, calls=3, n=400)
  finally:
    mx_block._block_max = _ORIG_BLOCK_MAX
    mx_block.mx_fake_quantize_fast = _ORIG_FAST
    for k, v in saved.items():
      setattr(dot, k, v)
  tr = sum(us for n, us, _ in rows if "transpose" in n)
  bad = transposed_arrays(text)
  log(f"{recipe}/{name}: device {total:.0f} us, transpose fusions {tr:.0f} us, {len(bad)} large non-row-major "
      f"arrays: {' '.join(bad[:8])}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variants", default=",".join(KNOBS))
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  path = os.path.join(a.out, "layouts.log") if a.out else None

  def log(s):
    print(s, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(s + "\n")

  log(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}")
  run(log, "current", "bf16", a.layers, [])
  for v in a.variants.split(","):
    run(log, v, "mxfp8", a.layers, ["embed", "head", "*attn"])


if __name__ == "__main__":
  main()
