"""Each kernel of a 2-layer Dense-only GPT train step, measured beside its byte/FLOP floor.

    PYTHONPATH=. python -m benchmarks.diag_step_kernels --recipes bf16,mxfp8 --out $OUT

The step is compiled on the GPU and profiled (device time per kernel, median-free: the mean of 3 calls);
each kernel is joined by name with ``aot_gpu.kernel_table`` of the same compiled module (bytes read + written,
FLOPs, roofline µs at 2.9 TB/s / 660 TFLOP/s + 2 µs launch). Printed per recipe: totals by kind (GEMM,
reduction, loop/elementwise, other) and the kernels that lose the most time against their floor, with the
bandwidth they reach. That is where an MX step's extra time over bf16 goes.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re

import jax

from benchmarks.aot_gpu import kernel_table
from benchmarks.diag_operand_variants import _summary
from benchmarks.profile_util import file_logger, top_kernels


def measure(recipe: str, layers: int = 2, attn: bool = False):
  from benchmarks.bench_train_step import GPT, make_train_step
  model = GPT(layers=layers)
  tok = jax.random.randint(jax.random.key(1), (8, 1025), 0, model.vocab)
  step, st, _ = make_train_step(recipe, model, tok, ["embed", "head"] + ([] if attn else ["*attn"]))
  compiled = jax.jit(step, donate_argnums=0).lower(st, tok).compile()
  text = compiled.as_text()
  state = {"st": st}

  def call(_, t):
    s, out = compiled(state["st"], t)
    state["st"] = s
    return out

  rows, total = top_kernels(call, None, tok, calls=3, n=5000)
  return rows, total, text


def report(log, recipe, rows, total, text, top, match="/block"):
  # the profiler names HLO instruction "fusion.2" "fusion_2"
  est = {re.sub(r"\.(\d+)$", r"_\1", r["name"]): r for r in kernel_table(text)}
  by_kind = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
  joined = []
  for name, us, c in rows:
    e = est.get(name)
    kind = e["kind"] if e else "?"
    k = by_kind[kind]
    k[0] += us
    k[1] += e["us"] * c if e else 0.0
    k[2] += int(round(c))
    k[3] += e["bytes"] * c if e else 0
    if e:
      joined.append((us - e["us"] * c, name, us, c, e, _summary(text, name)))
  log(f"\n== {recipe}: device {total:.0f} us per step, {sum(int(round(c)) for _, _, c in rows)} launches")
  log(f"   {'kind':10s} {'meas us':>9s} {'floor us':>9s} {'launches':>8s} {'GB':>7s} {'TB/s':>6s}")
  for kind, (us, fl, n, b) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
    log(f"   {kind:10s} {us:9.0f} {fl:9.0f} {n:8d} {b / 1e9:7.2f} {b / max(us, 1e-9) / 1e6:6.2f}")
  inside = [j for j in joined if match in j[5]]
  log(f"   inside the layers ({match!r} in op_name): {sum(j[2] for j in inside):.0f} us measured, "
      f"{sum(j[4]['us'] * j[3] for j in inside):.0f} floor, {len(inside)} kernels; top {top} by (measured - floor):")
  for lost, name, us, c, e, summary in sorted(inside, key=lambda j: -j[0])[:top]:
    bw = e["bytes"] * c / us / 1e6
    log(f"   {us:7.1f} us x{c:2.0f} lost {lost:6.1f}  {e['bytes'] / 1e6:7.1f} MB {bw:5.2f} TB/s  {e['kind']:9s} "
        f"{name[:28]:28s} {summary[:150]}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--recipes", default="bf16,mxfp8")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--top", type=int, default=40)
  p.add_argument("--attn", action="store_true", help="quantize attention's q.k and p.v too")
  p.add_argument("--out", default=None)
  p.add_argument("--dump", action="store_true", help="also write each compiled module's text to --out (gzip)")
  a = p.parse_args()
  log = file_logger(a.out, "step_kernels.log")
  log(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  for r in a.recipes.split(","):
    rows, total, text = measure(r, a.layers, a.attn)
    report(log, r, rows, total, text, a.top)
    if a.out:
      with open(os.path.join(a.out, f"step_{r}_{a.layers}l{'_attn' if a.attn else ''}_kernels.json"), "w") as f:
        json.dump(dict(total_us=total, rows=rows), f)
    if a.dump and a.out:
      with gzip.open(os.path.join(a.out, f"step_{r}_{a.layers}l.hlo.txt.gz"), "wt") as f:
        f.write(text)


if __name__ == "__main__":
  main()
