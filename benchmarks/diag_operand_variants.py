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


def part2(log, out, iters, layer_list, batch, seq, kinds):
  from benchmarks.bench_train_step import GPT, make_train_step
  fast = mx_block.mx_fake_quantize_fast
  res = {}

  def use(kind):
    import mx_jax.dot as dot
    jax.clear_caches()  # dot._qdot is jitted: a knob only takes effect on a fresh trace
    dot.mx_block.mx_fake_quantize_fast = mx_block.mx_fake_quantize_direct if kind == "direct" else fast
    dot.PIN_OPERAND_LAYOUT = kind.removeprefix("pin_").replace("+", ",") if kind.startswith("pin_") else ""

  for layers in layer_list:
    model = GPT(layers=layers)
    tok = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, model.vocab)
    for name, kind in [("bf16", "scaled")] + [("mxfp8", k) for k in kinds]:
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
        tr = sum(us for n, us, _ in rows if "transpose" in n)
        log(f"{tag}: device {total:.0f} us per step, {len(rows)} kernels, {tr:.0f} us in transpose fusions")
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
  for k in (f"mxfp8/{k}/L{last}" for k in kinds):
    log(f"{k}: {res[k]['median_ms'] / b:.3f}x bf16")
  if out:
    with open(os.path.join(out, "operand_variants.json"), "w") as f:
      json.dump(res, f, indent=1)


def _summary(text, name):
  """One line for the HLO instruction behind a profiler kernel name: its shape, operands and op_name."""
  pat = re.sub(r"_(\d+)$", r"[._]\1", re.escape(name))
  m = re.search(rf"^\s*(?:ROOT )?%?{pat} = (.*)$", text, re.M)
  if not m:
    return "(not found)"
  line = m.group(1)
  shape = line.split(" fusion(")[0].split(" custom-call(")[0][:160]
  op = re.search(r'op_name="([^"]*)"', line)
  body_n, ops = 0, []
  c = re.search(r"calls=%?([\w.\-]+)", line)
  if c:
    b = re.search(rf"^%?{re.escape(c.group(1))} (\(.*?\)) -> .*?^}}", text, re.M | re.S)
    if b:
      body_n = b.group(0).count("\n")
      ops = re.findall(r"\b[a-z0-9]+\[[\d,]*\]", b.group(1))
  big = sorted(ops, key=lambda t: -eval("*".join(t.split("[")[1][:-1].split(",")) or "1"))[:3]
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
  p.add_argument("--parts", default="1,2")
  p.add_argument("--ptx", default=None, help="the --xla_dump_to folder, to read the variants' PTX back")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--layers", default="2,12", help="profiled depth, timed depth")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--kinds", default="scaled,direct", help="part 2: mxfp8 operand paths (scaled, direct, "
                 "pin_in, pin_out, pin_in+out)")
  p.add_argument("--recipes", default="bf16,mxfp8", help="part 3")
  p.add_argument("--min-us", type=float, default=10.0, help="part 3")
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
    part2(log, a.out, a.iters, [int(v) for v in a.layers.split(",")], a.batch, a.seq, a.kinds.split(","))
  if "3" in a.parts.split(","):
    for r in a.recipes.split(","):
      part3(log, r, a.min_us)


if __name__ == "__main__":
  main()
