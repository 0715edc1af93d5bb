"""Mosaic GPU norm kernels (kernels/mgpu_norm.py) in Mosaic GPU's interpret mode on CPU == mx_jax.norms' XLA
path, bit for bit; they lower for CUDA on this host; and the cross-thread sum order they rely on when compiled
(lane butterfly, then (w0 + w1) + (w2 + w3)) is the pairwise tree of mx_jax.norms."""
import os

if int(os.environ.get("NPROC", "0") or 0) < 32:
  os.environ["NPROC"] = "32"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels import _dispatch, mgpu_norm as mn  # noqa: E402
from mx_jax import norms  # noqa: E402
from test_kernels_norm import assert_bits, assert_same_q, data  # noqa: E402

EPS = 1e-6


def _planted(shape, dtype, seed):
  """test_kernels_norm.data (NaN / Inf / zero / subnormal / tiny / outlier rows) plus a huge row."""
  x, g = data(shape, dtype, seed=seed)
  if shape[0] >= 7:
    big = float(jnp.finfo(dtype).max) / 4
    x = x.at[6].set(jnp.asarray(np.linspace(-big, big, shape[-1]), dtype))
  return x, g


@pytest.mark.parametrize("kind,fmt,p,dtype,shape,kw", [
    ("mx", "mxfp8_e4m3", 2, jnp.bfloat16, (7, 4096), {}),
    ("rms", "mxfp8_e4m3", 2, jnp.bfloat16, (7, 4096), {}),
    ("rms", "mxfp8_e5m2", 2, jnp.float32, (5, 4000), dict(scale_mode="ceil")),  # n % 32 != 0, padded row
    ("mx", "mxfp4_e2m1", 1, jnp.float16, (3, 4096), dict(rounding="nearest_away")),
    ("mx", "mxfp8_e4m3", 2, jnp.bfloat16, (2, 3, 2048), dict(block_size=16)),
])
def test_fused_norm_quantize(kind, fmt, p, dtype, shape, kw):
  x, g = _planted(shape, dtype, seed=len(shape) + shape[-1])
  fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
  pk = {} if kind == "rms" else dict(p=p)
  ref = fn(x, g, fmt, impl="xla", **pk, **kw)
  bs = kw.pop("block_size", 32)
  q, inv = mn.norm_quantize_mgpu(x, g, fmt, eps=EPS, kind=kind, p=p, block_size=bs, steps=4, **kw)
  assert_same_q(ref, q)
  _, inv_ref = norms._xla_norm_f32(x, g, EPS, kind, p, 32 if kind == "rms" else bs)
  assert_bits(inv_ref, inv, "inverse rms")


def test_fused_stochastic_intermediate_no_gain():
  x, _ = _planted((6, 4096), jnp.bfloat16, seed=3)
  key = jax.random.key(1)
  for kind in ("rms", "mx"):
    fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
    ref = fn(x, None, "mxfp6_e3m2", rounding="stochastic", key=key, scale_mode="rceil",
             intermediate_dtype=jnp.bfloat16, impl="xla")
    q, _ = mn.norm_quantize_mgpu(x, None, "mxfp6_e3m2", eps=EPS, kind=kind, p=2, block_size=32, rounding="stochastic",
                                 key=key, scale_mode="rceil", intermediate_dtype=jnp.bfloat16, steps=4)
    assert_same_q(ref, q)


@pytest.mark.parametrize("dtype,out_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.float32)])
def test_plain_norms(dtype, out_dtype):
  x, g = _planted((9, 4096), dtype, seed=5)  # 9 rows: not a multiple of the 4 rows per CTA
  for kind, p, gain in (("rms", 2, g), ("mx", 1, g), ("rms", 2, None)):
    y, inv = mn.norm_pallas_mgpu(x, gain, eps=EPS, kind=kind, p=p, block_size=32, out_dtype=out_dtype, steps=4)
    yr, ir = norms._xla_norm_f32(x, gain, EPS, kind, p, 32)
    assert_bits(yr.reshape(x.shape).astype(out_dtype), y, f"{kind} y")
    assert_bits(ir, inv, f"{kind} inv")


@pytest.mark.parametrize("dtype,shape,gain", [(jnp.bfloat16, (5, 4096), True), (jnp.float32, (3, 4000), False)])
def test_rms_norm_backward(dtype, shape, gain):
  x, g = data(shape, dtype, seed=7, specials=False)
  g = g if gain else None
  _, inv = norms._xla_norm_f32(x, g, EPS, "rms", 2, 32)
  dy = jnp.asarray(np.random.default_rng(2).standard_normal(shape), dtype)
  dx1, dg1 = norms.rms_norm_bwd(x, g, inv, dy, impl="xla")
  dx2, dg2 = mn.rms_norm_bwd_mgpu(x, g, inv, dy)
  assert_bits(dx1, dx2, "dx")
  if gain:
    assert_bits(dg1, dg2, "dgain")


def test_cross_thread_order_is_the_pairwise_tree():
  """Mosaic GPU's FragmentedArray.reduce("add") over a (128,) row_layout(1).reduce(1) array: shfl_bfly with lane
  strides 1, 2, 4, 8, 16 (minor to major), then (w0 + w1) + (w2 + w3) from SMEM; simulated in float32 ==
  norms.tree_sum_last, bit for bit, on values whose sums round (so any other order would show)."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    v = (rng.standard_normal(128) * np.exp(rng.standard_normal(128) * 8)).astype(np.float32)
    lanes = v.reshape(4, 32).copy()
    for s in (1, 2, 4, 8, 16):
      lanes = lanes + lanes[:, np.arange(32) ^ s]  # a + b == b + a: each lane's value of the butterfly
    w = lanes[:, 0]
    got = np.float32(np.float32(w[0] + w[1]) + np.float32(w[2] + w[3]))
    ref = np.asarray(norms.tree_sum_last(jnp.asarray(v)))
    assert got.view(np.uint32) == ref.view(np.uint32)


def test_supported():
  assert mn.supported(4096, 32, jnp.bfloat16) and mn.supported(8192, 32, jnp.float32)
  assert mn.supported(2048, 16, jnp.bfloat16) and not mn.supported(2048, 32, jnp.bfloat16)  # < 128 blocks
  assert mn.supported(8192, 32, jnp.bfloat16) and not mn.supported(32768, 32, jnp.bfloat16)  # SMEM
  assert mn.supported(8192, 32, jnp.bfloat16, "bwd") and not mn.supported(8192, 32, jnp.float32, "bwd")


S = jax.ShapeDtypeStruct


@pytest.mark.parametrize("name", ["rms_q", "mx_q_e5m2_sr", "rms_plain", "mx_plain", "bwd"])
def test_lowers_for_cuda(name):
  xs, gs = S((64, 8192), jnp.bfloat16), S((8192,), jnp.float32)
  fns = {
      "rms_q": lambda x, g: mn.norm_quantize_mgpu(x, g, "mxfp8_e4m3", eps=EPS, kind="rms", p=2, block_size=32),
      "mx_q_e5m2_sr": lambda x, g: mn.norm_quantize_mgpu(x, g, "mxfp8_e5m2", eps=EPS, kind="mx", p=2, block_size=32,
                                                         rounding="stochastic", key=jax.random.key(0)),
      "rms_plain": lambda x, g: mn.norm_pallas_mgpu(x, g, eps=EPS, kind="rms", p=2, block_size=32),
      "mx_plain": lambda x, g: mn.norm_pallas_mgpu(x, None, eps=EPS, kind="mx", p=1, block_size=32,
                                                   out_dtype=jnp.bfloat16),
      "bwd": lambda x, g: mn.rms_norm_bwd_mgpu(x, g, jnp.ones((64,), jnp.float32), x),
  }
  assert "mosaic_gpu" in _dispatch.lower_for_cuda(fns[name], xs, gs, backend="mosaic")


def test_public_entry_points_dispatch_lowers_for_cuda():
  """norms.* with impl="pallas" compiled for CUDA: Mosaic GPU kernels with backend "mosaic" (rows >= 128
  blocks), Triton with "triton" or for short rows."""
  gs = S((8192,), jnp.float32)
  fns = [lambda x, g: norms.rms_norm_quantize(x, g, impl="pallas"),
         lambda x, g: norms.mx_norm_quantize(x, g, impl="pallas"),
         lambda x, g: jax.grad(lambda x, g: norms.rms_norm(x, g, impl="pallas").astype(jnp.float32).sum(),
                               (0, 1))(x, g)]
  for fn in fns:
    mosaic = _dispatch.lower_for_cuda(lambda x, g: fn(x, g), S((64, 8192), jnp.bfloat16), gs, backend="mosaic")
    assert "mosaic_gpu" in mosaic and "xla.gpu.triton" not in mosaic
    triton = _dispatch.lower_for_cuda(lambda x, g: fn(x, g), S((64, 8192), jnp.bfloat16), gs, backend="triton")
    assert "xla.gpu.triton" in triton and "mosaic_gpu" not in triton
  short = _dispatch.lower_for_cuda(lambda x, g: norms.rms_norm_quantize(x, g, impl="pallas"),
                                   S((64, 1024), jnp.bfloat16), S((1024,), jnp.float32), backend="mosaic")
  assert "xla.gpu.triton" in short
