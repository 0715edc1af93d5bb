"""Train-step cost of every recipe vs bf16 on a ~100M-parameter GPT (seq 1024), pure-XLA path.

A stock Flax pre-norm decoder (nn.Dense / nn.MultiHeadDotProductAttention, bf16 compute, fp32 master
weights) is made quantized with ``mx_jax.quantize_model`` (embedding and LM head kept in bf16), and the
jitted AdamW step is timed: median of ``--iters`` steps after ``--warmup``, ``jax.block_until_ready``.
Every ratio is against the bf16 step measured in the same process.

    python -m benchmarks.bench_train_step --recipes bf16,mxfp8,mxfp8@pallas,... [--profile] --out results.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import mx_jax
from mx_jax.flax import OVERWRITE_WITH_GRADIENT


class Block(nn.Module):
  d: int
  heads: int

  @nn.compact
  def __call__(self, h, mask):
    a = nn.MultiHeadDotProductAttention(self.heads, dtype=jnp.bfloat16, name="attn")(
        nn.RMSNorm(dtype=jnp.bfloat16)(h), mask=mask)
    h = h + a
    x = nn.RMSNorm(dtype=jnp.bfloat16)(h)
    up = nn.Dense(4 * self.d, dtype=jnp.bfloat16, use_bias=False, name="mlp_in")(x)
    return h + nn.Dense(self.d, dtype=jnp.bfloat16, use_bias=False, name="mlp_out")(nn.gelu(up))


class GPT(nn.Module):
  vocab: int = 32768
  d: int = 768
  layers: int = 12
  heads: int = 12

  @nn.compact
  def __call__(self, tok):
    h = nn.Embed(self.vocab, self.d, dtype=jnp.bfloat16, name="embed")(tok)
    mask = nn.make_causal_mask(tok)
    for i in range(self.layers):
      h = Block(self.d, self.heads, name=f"block{i}")(h, mask)
    return nn.Dense(self.vocab, dtype=jnp.bfloat16, use_bias=False, name="head")(nn.RMSNorm(dtype=jnp.bfloat16)(h))


def _recipe(name: str):
  """A preset name, optionally with "@pallas" / "@auto" (the recipe's GEMMs on the block-scaled kernel); a
  "-t" suffix ("mxfp8@pallas-t") transposes the kernel operands in bf16 before quantizing them (the operand order
  before session 21, ``mx_jax.dot.KERNEL_QUANT_IN_PLACE = False``; same quantizer) to compare both in one process;
  "-s21" runs the kernel GEMMs as session 21 did (see ``_session21_gemms``); "-xq" quantizes every kernel operand
  with XLA's fast path (``mx_jax.dot.KERNEL_OPERAND_QUANT_MIN = None``), not the Pallas quantize kernel; "-nct"
  quantizes kernel operands along a non-last axis on XLA's path, not the cast-transpose kernel
  (``mx_jax.dot.KERNEL_OPERAND_CAST_TRANSPOSE = False``: session 22's operand path); "-np" widens bf16 quantizer
  inputs without the reduce_precision pin (``mx_jax._bits.PIN_BF16_INPUTS = False``, before session 23)."""
  base, _, impl = (name.removesuffix("-t").removesuffix("-s21").removesuffix("-xq").removesuffix("-nct")
                   .removesuffix("-np").partition("@"))
  rec = mx_jax.recipe(base)
  return dataclasses.replace(rec, impl=impl) if impl else rec


_CURRENT = {}


def _session21_gemms(on: bool):
  """Session 21's kernel GEMMs (on) or today's (off): no split-K, no 64-wide tiles, 256-deep stages unless K <= 128,
  and an FP32 kernel output that XLA casts afterwards. Patched in here so that one process can time both."""
  from benchmarks.bench_step_gemms import session21_config
  from kernels import mx_matmul
  from mx_jax import dot
  if "cfg" not in _CURRENT:
    _CURRENT.update(cfg=mx_matmul.default_gemm_config, gemm=dot._kernel_gemm)
  if not on:
    mx_matmul.default_gemm_config, dot._kernel_gemm = _CURRENT["cfg"], _CURRENT["gemm"]
    return

  def cfg21(m, n, k, a_fmt, b_fmt, variant=None, **_):
    return session21_config(_CURRENT["cfg"](m, n, k, a_fmt, b_fmt, variant), k)

  def gemm21(*args):
    return _CURRENT["gemm"](*args[:9])  # without the caller's out_dtype: FP32 out, cast by the caller
  mx_matmul.default_gemm_config, dot._kernel_gemm = cfg21, gemm21


def _set_operand_path(name: str):
  from mx_jax import dot
  in_place = not name.endswith("-t")
  legacy = name.endswith("-s21")
  _CURRENT.setdefault("qmin", dot.KERNEL_OPERAND_QUANT_MIN)
  qmin = None if name.endswith("-xq") else _CURRENT["qmin"]
  ct = not name.endswith("-nct")
  from mx_jax import _bits
  pin = not name.endswith("-np")
  if (dot.KERNEL_QUANT_IN_PLACE != in_place or _CURRENT.get("legacy", False) != legacy
      or dot.KERNEL_OPERAND_QUANT_MIN != qmin or dot.KERNEL_OPERAND_CAST_TRANSPOSE != ct
      or _bits.PIN_BF16_INPUTS != pin):
    _bits.PIN_BF16_INPUTS = pin
    dot.KERNEL_QUANT_IN_PLACE = in_place
    dot.KERNEL_OPERAND_QUANT_MIN = qmin
    dot.KERNEL_OPERAND_CAST_TRANSPOSE = ct
    _session21_gemms(legacy)
    _CURRENT["legacy"] = legacy
    jax.clear_caches()  # the jitted dispatch bodies were traced with the other path


def make_train_step(name, model, tok, exclude):
  """(un-jitted AdamW step(state, tok) -> (state, loss), initial state, param count) for recipe ``name``."""
  _set_operand_path(name)
  m = model if name == "bf16" else mx_jax.quantize_model(model, _recipe(name), exclude=exclude)
  v = m.init(jax.random.key(0), tok[:1, :16])
  params = {"params": v["params"]}
  if OVERWRITE_WITH_GRADIENT in v:
    params[OVERWRITE_WITH_GRADIENT] = v[OVERWRITE_WITH_GRADIENT]
  st = train_state.TrainState.create(apply_fn=m.apply, params=params, tx=optax.adamw(1e-4))

  def step(st, tok):
    def loss_fn(p):
      logits = st.apply_fn(p, tok[:, :-1]).astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()
    loss, g = jax.value_and_grad(loss_fn)(st.params)
    return st.apply_gradients(grads=g), loss

  return step, st, sum(x.size for x in jax.tree.leaves(v["params"]))


def time_recipe(name, model, tok, warmup, iters, exclude, profile=False, donate=True):
  step, st, nparams = make_train_step(name, model, tok, exclude)
  step = jax.jit(step, donate_argnums=0 if donate else ())  # donated state: in-place updates, as a training loop

  t0 = time.perf_counter()
  st, loss = step(st, tok)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    st, loss = step(st, tok)
  jax.block_until_ready(loss)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    st, loss = step(st, tok)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  if profile:
    from benchmarks.profile_util import print_top
    holder = [st]

    def one(tok):
      holder[0], loss = step(holder[0], tok)
      return loss
    print_top(f"{name} train step", one, tok, calls=3, n=30)
  return dict(recipe=name, median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times),
              compile_s=compile_s, loss=float(loss), params=nparams)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--recipes", default="bf16,fp8_current,fp8_delayed,mxfp8,mxfp8_e5m2grad,mxfp6,mxfp4_weights,nvfp4")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--exclude_attn", action="store_true", help="keep attention's q.k and p.v in bf16")
  p.add_argument("--profile", action="store_true", help="print the top device kernels of each step")
  p.add_argument("--no_donate", action="store_true", help="do not donate the train state to the step")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  model = GPT(d=a.d, layers=a.layers, heads=a.d // 64)
  tok = jax.random.randint(jax.random.key(1), (a.batch, a.seq + 1), 0, model.vocab)
  exclude = ["embed", "head"] + (["*attn"] if a.exclude_attn else [])
  rows = []
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  for name in a.recipes.split(","):
    r = time_recipe(name, model, tok, a.warmup, a.iters, exclude, a.profile, not a.no_donate)
    r["exclude_attn"] = a.exclude_attn
    rows.append(r)
    base = rows[0]["median_ms"]
    print(f"{name:16s} {r['median_ms']:8.2f} ms  x{r['median_ms'] / base:6.3f} vs {rows[0]['recipe']}  "
          f"compile {r['compile_s']:.0f}s  loss {r['loss']:.3f}  params {r['params'] / 1e6:.1f}M", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
