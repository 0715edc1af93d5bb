"""GPU check of the batched MX GEMM kernel (one launch for all batch elements): error against the XLA
reference (dequantize, FP32 HIGHEST) and time against bf16 ``jnp.einsum`` and ``lax.scaled_dot`` on the
attention shapes of the GPT benchmark (batch 8 x 12 heads).

    PYTHONPATH=. python -m benchmarks.check_batched_gemm
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import mx_jax
from benchmarks.profile_util import median_ms
from mx_jax.matmul import mx_dot_general


def main():
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  dn = (((2,), (2,)), ((0,), (0,)))
  for (b, m, n, k) in [(3, 70, 130, 96), (96, 1024, 1024, 64), (96, 1024, 64, 1024), (96, 64, 1024, 1024)]:
    ka, kb = jax.random.split(jax.random.key(b * m + n))
    x = jax.random.normal(ka, (b, m, k))
    y = jax.random.normal(kb, (b, n, k))
    qa, qb = mx_jax.quantize(x, "mxfp8_e4m3", axis=2), mx_jax.quantize(y, "mxfp8_e4m3", axis=2)
    ref = mx_dot_general(qa, qb, dn, out_dtype=jnp.float32, impl="xla")
    f = jax.jit(lambda a, c: mx_dot_general(a, c, dn, out_dtype=jnp.bfloat16, impl="mgpu"))
    got = jax.jit(lambda a, c: mx_dot_general(a, c, dn, out_dtype=jnp.float32, impl="mgpu"))(qa, qb)
    err = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
    xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    t_k = median_ms(f, qa, qb)
    t_bf = median_ms(jax.jit(lambda a, c: jnp.einsum("bmk,bnk->bmn", a, c, preferred_element_type=jnp.float32)
                         .astype(jnp.bfloat16)), xb, yb)
    t_sd = median_ms(jax.jit(lambda a, c: lax.scaled_dot(a.data, c.data, lhs_scale=a.scales, rhs_scale=c.scales,
                                                     dimension_numbers=dn, preferred_element_type=jnp.bfloat16)),
                 qa, qb)
    print(f"B={b} M={m} N={n} K={k}: rel err vs XLA {err:.2e} | kernel {t_k:.3f} ms, bf16 einsum {t_bf:.3f} ms, "
          f"scaled_dot {t_sd:.3f} ms (kernel x{t_bf / t_k:.2f} bf16, x{t_sd / t_k:.2f} scaled_dot)", flush=True)


if __name__ == "__main__":
  main()
