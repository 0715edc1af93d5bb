"""Cost of the quantized GEMM operands on the GPU: one MX operand quantization (exact integer path vs
fast FPU path) against an elementwise copy, and one Dense layer's forward+backward vs bf16.

    PYTHONPATH=. python -m benchmarks.bench_dot_overhead
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax
from mx_jax import dot as D
from mx_jax.recipes import OperandSpec
from benchmarks.profile_util import median_ms


def bench(f, *args, iters=30, warmup=3):
  return median_ms(f, *args, iters=iters, warmup=warmup)


def main():
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  m, k, n = 8192, 768, 3072
  x = jax.random.normal(jax.random.key(0), (m, n), jnp.bfloat16)
  gb = x.size * 2 * 2 / 1e9
  t_copy = bench(jax.jit(lambda x: x * 2), x)
  print(f"copy x*2 bf16 {m}x{n}: {t_copy:.3f} ms ({gb / t_copy:.2f} TB/s)")
  for fast in (False, True):
    D.FAST_OPERANDS = fast
    for fmt in ("mxfp8_e4m3", "mxfp4_e2m1", "fp8_e4m3", "nvfp4"):
      spec = OperandSpec(fmt)
      for axes in ((1,), (0,)):
        f = jax.jit(lambda x: D.quantize_operand(x, spec, axes, dtype=jnp.bfloat16)[0])
        t = bench(f, x)
        print(f"fast={fast!s:5s} {fmt:11s} axis={axes[0]}: {t:.3f} ms  x{t / t_copy:.2f} copy  "
              f"({gb / t:.2f} TB/s eff.)")
    # bit-exactness of the fast path on the GPU against the exact path on the same input
  D.FAST_OPERANDS = True
  spec = OperandSpec("mxfp8_e4m3")
  a = np.asarray(jax.jit(lambda x: D.quantize_operand(x, spec, (1,))[0])(x))
  D.FAST_OPERANDS = False
  b = np.asarray(jax.jit(lambda x: D.quantize_operand(x, spec, (1,))[0])(x))
  print("fast == exact on GPU (mxfp8, random bf16):", bool(np.array_equal(a.view(np.uint32), b.view(np.uint32))))
  D.FAST_OPERANDS = True
  xa = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(2), (k, n), jnp.float32) * 0.02
  dn = (((1,), (0,)), ((), ()))
  for name in ("bf16", "fp8_current", "mxfp8", "mxfp8@scaled_dot", "mxfp4_weights", "nvfp4"):
    base, _, impl = name.partition("@")
    dg = mx_jax.dot_general(dataclasses.replace(mx_jax.recipe(base), impl=impl) if impl else base)
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(dg(x, w.astype(jnp.bfloat16) if name == "bf16" else w, dn,
                                                             preferred_element_type=jnp.bfloat16).astype(jnp.float32) ** 2), (0, 1)))
    t = bench(f, xa, w)
    if name == "bf16":
      t_bf16 = t
    print(f"dense {m}x{k}@{k}x{n} fwd+bwd {name:14s}: {t:.3f} ms  x{t / t_bf16:.2f} bf16")


if __name__ == "__main__":
  main()
