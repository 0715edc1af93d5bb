"""Fused norm kernels (Pallas, interpret mode on CPU) == mx_jax.norms' XLA path, bit for bit."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mx_jax
from kernels import _dispatch
from kernels import norm_quantize as kn
from mx_jax import norms


def _raw(a):
  a = np.asarray(a)
  return a.shape, a.dtype, np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_bits(a, b, what=""):
  sa, da, ba = _raw(a)
  sb, db, bb = _raw(b)
  assert (sa, da) == (sb, db), f"{what}: {sa}{da} vs {sb}{db}"
  np.testing.assert_array_equal(ba, bb, err_msg=f"{what} differ")


def assert_same_q(q1, q2):
  assert (q1.fmt, q1.axis, q1.shape, q1.block_size) == (q2.fmt, q2.axis, q2.shape, q2.block_size)
  assert_bits(q1.data, q2.data, "codes")
  assert_bits(q1.scales, q2.scales, "scales")
  assert (q1.tensor_scale is None) == (q2.tensor_scale is None)
  if q1.tensor_scale is not None:
    assert_bits(q1.tensor_scale, q2.tensor_scale, "tensor scale")


def data(shape, dtype, seed=0, specials=True):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp(rng.standard_normal(shape[:-1] + (1,)) * 2)
  x = x.astype(np.float32)
  flat = x.reshape(-1, shape[-1])
  if specials and flat.shape[0] >= 6:
    flat[0, 3] = np.nan  # a NaN row
    flat[1, 5] = np.inf  # an Inf row
    flat[2, :] = 0.0  # an all-zero row (inv = 1/sqrt(eps))
    fi = ml_dtypes.finfo(dtype) if dtype != jnp.float32 else np.finfo(np.float32)
    flat[3, ::3] = float(fi.smallest_subnormal)  # subnormals
    flat[4, :] *= 1e-30  # tiny row (extreme blocks after normalization? no: normalized ~1)
    flat[5, :7] = 3e4  # outliers
  return jnp.asarray(x, dtype), jnp.asarray(1.0 + 0.25 * rng.standard_normal(shape[-1]), jnp.float32)


CASES = [  # (kind, fmt, p, dtype, shape)
    ("rms", "mxfp8_e4m3", 2, jnp.bfloat16, (37, 200)),
    ("mx", "mxfp8_e4m3", 2, jnp.bfloat16, (37, 200)),
    ("mx", "mxfp4_e2m1", 1, jnp.float32, (19, 96)),
    ("rms", "nvfp4", 2, jnp.float16, (2, 5, 80)),
]


@pytest.mark.parametrize("kind,fmt,p,dtype,shape", CASES)
def test_fused_norm_quantize_bit_exact(kind, fmt, p, dtype, shape):
  x, g = data(shape, dtype, seed=hash((kind, fmt)) % 1000)
  fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
  kw = {} if kind == "rms" else dict(p=p)
  q_ref = fn(x, g, fmt, impl="xla", **kw)
  q_ker = fn(x, g, fmt, impl="pallas", **kw)
  assert_same_q(q_ref, q_ker)


def test_fused_options_tiles_and_stats():
  x, g = data((21, 130), jnp.bfloat16, seed=3)
  key = jax.random.key(1)
  for kind in ("rms", "mx"):
    fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
    # stochastic rounding, scale mode, bf16 intermediate rounding, no gain
    ref = fn(x, None, "mxfp6_e3m2", rounding="stochastic", key=key, scale_mode="rceil",
             intermediate_dtype=jnp.bfloat16, impl="xla")
    q, inv = kn.norm_quantize_pallas(x, None, "mxfp6_e3m2", eps=1e-6, kind=kind, p=2, norm_block=32,
                                     block_size=32, rounding="stochastic", key=key, scale_mode="rceil",
                                     intermediate_dtype=jnp.bfloat16, block_rows=4, return_inv=True)
    assert_same_q(ref, q)
    _, inv_ref = norms._xla_norm_f32(x, None, 1e-6, kind, 2, 32)
    assert_bits(inv_ref, inv, "inverse rms")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_norm_forward_kernels(dtype):
  x, g = data((13, 3, 72), dtype, seed=5)
  assert_bits(norms.rms_norm(x, g, impl="xla"), norms.rms_norm(x, g, impl="pallas"), "rms_norm")
  assert_bits(norms.mx_norm(x, g, p=1, impl="xla"), norms.mx_norm(x, g, p=1, impl="pallas"), "mx_norm")
  assert_bits(norms.rms_norm(x, None, out_dtype=jnp.float32, impl="xla"),
              norms.rms_norm(x, None, out_dtype=jnp.float32, impl="pallas"), "rms_norm f32 out")


def test_rms_norm_backward_kernel():
  dtype, shape = jnp.bfloat16, (37, 200)
  x, g = data(shape, dtype, seed=7, specials=False)
  w = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)

  def loss(impl):
    return lambda x, g: jnp.sum(norms.rms_norm(x, g, impl=impl).astype(jnp.float32) * w)

  gx_ref, gg_ref = jax.grad(loss("xla"), (0, 1))(x, g)
  gx, gg = jax.grad(loss("pallas"), (0, 1))(x, g)
  assert_bits(gx_ref, gx, "dx")
  assert_bits(gg_ref, gg, "dgain")
  # float32, 3-D, 300 rows: 256 groups of 2 rows (sequential within a group, a tree over groups), padded
  x, g = data((3, 100, 40), jnp.float32, seed=8, specials=False)
  assert norms.bwd_groups(300) == (256, 2)
  _, inv = norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)
  dy = jnp.asarray(np.random.default_rng(2).standard_normal((3, 100, 40)), jnp.float32)
  dx1, dg1 = norms.rms_norm_bwd(x, g, inv, dy, impl="xla")
  dx2, dg2 = jax.jit(kn.rms_norm_bwd_pallas)(x, g, inv, dy)
  assert_bits(dx1, dx2, "dx (groups of 2 rows)")
  assert_bits(dg1, dg2, "dgain (groups of 2 rows)")


def test_fake_quantize_gradients_use_norm_backward():
  x, g = data((8, 64), jnp.float32, seed=9, specials=False)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((8, 64)), jnp.float32)
  for kind in ("rms", "mx"):
    fq = norms.rms_norm_fake_quantize if kind == "rms" else norms.mx_norm_fake_quantize
    plain = norms.rms_norm if kind == "rms" else norms.mx_norm
    for impl in (("pallas",) if kind == "rms" else ("xla",)):
      gq = jax.grad(lambda x, g: jnp.sum(fq(x, g, "mxfp8_e4m3", impl=impl) * w), (0, 1))(x, g)
      gp = jax.grad(lambda x, g: jnp.sum(plain(x, g, impl=impl) * w), (0, 1))(x, g)
      assert_bits(gq[0], gp[0], f"{kind} {impl} STE dx")
      assert_bits(gq[1], gp[1], f"{kind} {impl} STE dgain")
    # forward of the fake-quant path is dequantize(norm_quantize)
    y = fq(x, g, "mxfp8_e4m3", impl="pallas")
    fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
    assert_bits(y, mx_jax.dequantize(fn(x, g, "mxfp8_e4m3", impl="xla"), x.dtype), "fake forward")


def test_lowers_for_triton():
  S = jax.ShapeDtypeStruct
  xs, gs = S((64, 1000), jnp.bfloat16), S((1000,), jnp.float32)
  for fn in (lambda x, g: norms.rms_norm_quantize(x, g, impl="pallas"),
             lambda x, g: norms.mx_norm_quantize(x, g, "mxfp4_e2m1", p=1, impl="pallas"),
             lambda x, g: jax.grad(lambda x, g: norms.rms_norm(x, g, impl="pallas").astype(jnp.float32).sum(),
                                   (0, 1))(x, g)):
    assert "xla.gpu.triton" in _dispatch.lower_for_cuda(fn, xs, gs)
