"""An unmodified linen MLP run weight-only (``mx_jax.flax.weight_only_model``) against its bf16 self, on an H100.

  PYTHONUNBUFFERED=1 python benchmarks/bench_flax_weight_only.py --out $OUT      # on the GPU
  JAX_PLATFORMS=cpu python benchmarks/bench_flax_weight_only.py --smoke          # CPU dry run (XLA path)

The model: ``--layers`` Dense(``--width``) layers with GELU between them, bf16 parameters and activations (a
decoder MLP stack at decode-time batch sizes). For each format: ``prepare`` once, then the jitted ``apply`` at
each M, checked against the model applied with each kernel replaced by its quantize -> dequantize round trip
(max |diff| / max |ref|), and timed as device µs per call (profiler: every kernel of 20 calls, one jit per
call so that XLA cannot merge the calls' GEMMs), beside the bf16 model's apply in the same process.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mx_jax  # noqa: E402
from benchmarks import bench_wo as bw  # noqa: E402
from benchmarks.profile_util import top_kernels  # noqa: E402
from mx_jax.flax.weight_only import WEIGHTS, weight_only_model  # noqa: E402

log = bw.log


class MLP(nn.Module):
  width: int
  layers: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = nn.Dense(self.width, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, name=f"fc{i}")(x)
      if i < self.layers - 1:
        x = nn.gelu(x)
    return x


def device_us(fn, *args):
  _, tot = top_kernels(fn, *args, calls=20)
  return tot


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--width", type=int, default=8192)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--ms", default="1,16,64,1024")
  p.add_argument("--fmts", default="mxfp4_e2m1,nvfp4,mxfp8_e4m3")
  args = p.parse_args()
  bw.start_log(args.out, "bench_flax_weight_only.log")
  width, ms = args.width, [int(v) for v in args.ms.split(",")]
  if args.smoke:
    width, ms = 256, [4, 40]
  model = MLP(width, args.layers)
  x0 = jnp.zeros((ms[0], width), jnp.bfloat16)
  variables = model.init(jax.random.key(0), x0)
  dev = jax.devices()[0]
  log(f"bench_flax_weight_only: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, {args.layers} x "
      f"Dense({width}), Ms {ms}")
  base = jax.jit(model.apply)
  xs = {m: jax.random.normal(jax.random.key(m), (m, width), jnp.float32).astype(jnp.bfloat16) for m in ms}
  t_bf16 = {}
  for m in ms:
    t_bf16[m] = device_us(base, variables, xs[m]) if dev.platform == "gpu" else float("nan")
    log(f"  bf16 model M={m:<5d} {t_bf16[m]:8.1f} us")
  for fmt in args.fmts.split(","):
    wo = weight_only_model(model, fmt)
    wvars = wo.prepare(variables, x0)
    kinds = sorted({type(w).__name__ for w in wvars[WEIGHTS].values()})
    nbytes = sum(getattr(w, "nbytes", 0) for w in wvars[WEIGHTS].values())
    log(f"\n== {fmt}: {len(wvars[WEIGHTS])} Dense layers as {kinds}, {nbytes / 2**20:.1f} MiB of weights "
        f"(bf16: {args.layers * width * width * 2 / 2**20:.1f} MiB)")
    ref_params = {k: (dict(v, kernel=mx_jax.dequantize(mx_jax.quantize(v["kernel"].astype(jnp.float32).T, fmt,
                                                                      axis=1), jnp.bfloat16).T)
                      if k in wvars[WEIGHTS] else v) for k, v in variables["params"].items()}
    run = jax.jit(wo.apply)
    for m in ms:
      got = np.asarray(run(wvars, xs[m]), np.float64)
      ref = np.asarray(base({"params": ref_params}, xs[m]), np.float64)
      err = np.abs(got - ref).max() / np.abs(ref).max()
      t = device_us(run, wvars, xs[m]) if dev.platform == "gpu" else float("nan")
      log(f"  {fmt:<11s} M={m:<5d} {t:8.1f} us  {t_bf16[m] / t:5.2f}x bf16 model   vs fake-quant bf16 model: "
          f"max |diff| / max |ref| {err:.2e}")


if __name__ == "__main__":
  main()
