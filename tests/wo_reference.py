"""The float64 reference for weight-only GEMMs (x rounded to bf16, W dequantized) and the FP32-accumulation check
shared by the weight-only kernel tests."""
import jax.numpy as jnp
import numpy as np

import mx_jax


def wo_ref(x, q):
  """(x_bf16 @ W^T, |x| @ |W|^T) in float64, W = mx_jax.dequantize(q)."""
  xd = np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float64)
  wd = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


def check_wo(out, x, q, rtol):
  """|out - ref| <= rtol * (|x| @ |W|^T) element-wise; NaN (an unwritten element) fails too."""
  ref, bound = wo_ref(x, q)
  out = np.asarray(out, np.float64)
  assert out.shape == ref.shape
  err = np.abs(out - ref)
  bad = ~(err <= rtol * bound)
  assert not bad.any(), (f"{bad.sum()} of {bad.size} outside tolerance; worst err {err[bad].max():.3g} "
                         f"bound {bound[bad][np.argmax(err[bad])]:.3g}")
