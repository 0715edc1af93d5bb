"""Pallas TPU kernels (kernels/tpu_*.py) in the TPU interpreter on CPU.

Quantize and norm kernels equal the XLA path bit for bit (planted NaN/±Inf/zero/subnormal/huge blocks, odd
shapes, ragged tiles); the matmul kernels equal float64 dots of the dequantized operands up to FP32
accumulation-order error. The interpreter fills fresh buffers with NaN (all-ones bits for the integer-typed
outputs), so the all-finite checks also prove every output element was written. Lowering tests run every
Pallas -> Mosaic lowering rule for a TPU on this CPU host (libtpu's layout passes are not run here).
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mx_jax
from kernels import _tpu
from kernels import tpu_matmul as tmm
from kernels import tpu_norm as tn
from kernels import tpu_quantize as tq
from mx_jax import norms
from test_kernels_norm import assert_bits, assert_same_q, data
from test_kernels_quantize import assert_same, planted

MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"]

# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("fmt", MX + ["nvfp4"])
def test_quantize_formats_specials_odd_shape(fmt):
  x = planted((37, 200), jnp.bfloat16, seed=1)  # 37 rows: a ragged row tile; 200: a padded last block
  assert_same(mx_jax.quantize(x, fmt), tq.mx_quantize(x, fmt, block_rows=32))


@pytest.mark.parametrize("fmt,mode", [("mxfp8_e4m3", "ceil"), ("mxfp4_e2m1", "even"), ("mxint8", "rceil"),
                                      ("mxfp6_e3m2", "rceil")])
def test_quantize_scale_modes(fmt, mode):
  x = planted((16, 96), jnp.float32, seed=2)
  assert_same(mx_jax.quantize(x, fmt, scale_mode=mode), tq.mx_quantize(x, fmt, scale_mode=mode))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "nvfp4"])
def test_quantize_stochastic(fmt):
  x = planted((9, 70), jnp.bfloat16, seed=3)
  key = jax.random.key(7)
  ref = mx_jax.quantize(x, fmt, rounding="stochastic", key=key)
  assert_same(ref, tq.mx_quantize(x, fmt, rounding="stochastic", key=key))
  bs = ref.block_size
  rbits = jax.random.bits(key, (9, -(-70 // bs), bs), jnp.uint32)
  assert_same(ref, tq.mx_quantize(x, fmt, rounding="stochastic", rbits=rbits))


def test_quantize_f16_nearest_away_small_blocks():
  x = planted((3, 5, 48), jnp.float16, seed=4)
  assert_same(mx_jax.quantize(x, "mxfp6_e2m3", rounding="nearest_away"),
              tq.mx_quantize(x, "mxfp6_e2m3", rounding="nearest_away"))
  y = planted((40, 1000), jnp.bfloat16, seed=5)  # bs 4: 512-lane tiles, two column tiles (ragged)
  assert_same(mx_jax.quantize(y, "mxfp8_e4m3", block_size=4), tq.mx_quantize(y, "mxfp8_e4m3", block_size=4))


def test_quantize_multi_column_tiles_and_rank1():
  x = planted((40, 2500), jnp.bfloat16, seed=11)  # nvfp4: 2048-lane tiles, the second ragged
  assert_same(mx_jax.quantize(x, "nvfp4"), tq.mx_quantize(x, "nvfp4"))
  z = jnp.asarray(np.random.default_rng(0).standard_normal(40), jnp.float32)
  assert_same(mx_jax.quantize(z, "mxfp4_e2m1"), tq.mx_quantize(z, "mxfp4_e2m1"))


@pytest.mark.slow
@pytest.mark.parametrize("bs", [2, 8, 16, 64, 128, 256])
def test_quantize_block_sizes(bs):
  x = planted((40, 1000), jnp.float32, seed=bs)
  assert_same(mx_jax.quantize(x, "mxfp6_e3m2", block_size=bs), tq.mx_quantize(x, "mxfp6_e3m2", block_size=bs))


def test_quantize_fallbacks_and_support():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)
  assert_same(mx_jax.quantize(x, "fp8_e4m3"), tq.mx_quantize(x, "fp8_e4m3"))  # per-tensor: XLA
  assert tq.supported(4096, "mxfp8_e4m3") and tq.supported(10 ** 6, "nvfp4")
  assert not tq.supported(100000, "mxfp8_e4m3", 256) and not tq.supported(64, "fp8_e4m3")
  with pytest.raises(ValueError, match="stochastic"):
    tq.mx_quantize(x, "mxfp8_e4m3", rounding="stochastic")


# ------------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("kind,fmt,p,dtype,shape", [
    ("rms", "mxfp8_e4m3", 2, jnp.bfloat16, (37, 200)),
    ("mx", "mxfp4_e2m1", 1, jnp.float32, (19, 96)),
    pytest.param("mx", "mxint8", 2, jnp.bfloat16, (33, 300), marks=pytest.mark.slow),  # "mx" kind: MXFP4 above
    ("rms", "nvfp4", 2, jnp.float16, (2, 5, 80)),  # norm kernel then quantize kernel
])
def test_norm_quantize_bit_exact(kind, fmt, p, dtype, shape):
  x, g = data(shape, dtype, seed=len(fmt) + p)
  fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
  ref = fn(x, g, fmt, impl="xla", **({} if kind == "rms" else dict(p=p)))
  q, inv = tn.norm_quantize(x, g, fmt, eps=1e-6, kind=kind, p=p, norm_block=32, block_size=ref.block_size,
                            return_inv=True)
  assert_same_q(ref, q)
  assert_bits(norms._xla_norm_f32(x, g, 1e-6, kind, p, 32)[1], inv, "inverse rms")


def test_norm_quantize_options():
  x, _ = data((21, 130), jnp.bfloat16, seed=3)
  key = jax.random.key(1)
  for kind in ("rms", "mx"):
    fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
    kw = dict(rounding="stochastic", key=key, scale_mode="rceil", intermediate_dtype=jnp.bfloat16)
    ref = fn(x, None, "mxfp6_e3m2", impl="xla", **kw)
    assert_same_q(ref, tn.norm_quantize(x, None, "mxfp6_e3m2", eps=1e-6, kind=kind, p=2, norm_block=32,
                                        block_size=32, block_rows=8, **kw))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_norm_forward(dtype):
  x, g = data((13, 3, 72), dtype, seed=5)
  for kind, p in (("rms", 2), ("mx", 1)):
    y_ref, inv_ref = norms._xla_norm_f32(x, g, 1e-6, kind, p, 32)
    y, inv = tn.norm(x, g, eps=1e-6, kind=kind, p=p, block_size=32, out_dtype=dtype)
    assert_bits(y_ref.reshape(x.shape).astype(dtype), y, f"{kind} y")
    assert_bits(inv_ref, inv, f"{kind} inv")


@pytest.mark.parametrize("shape,dtype,block_rows", [
    ((37, 200), jnp.bfloat16, None),    # 37 rows: groups of 1 row, a ragged tile
    ((3, 100, 40), jnp.float32, None),  # 300 rows: 256 groups of 2 rows, read with strided loads
    pytest.param((3000, 40), jnp.float32, 8, marks=pytest.mark.slow),  # groups of 16 rows over two tiles
])
def test_rms_norm_backward(shape, dtype, block_rows):
  x, g = data(shape, dtype, seed=7, specials=False)
  _, inv = norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)
  dy = jnp.asarray(np.random.default_rng(2).standard_normal(shape), dtype)
  assert norms.bwd_groups(x.size // shape[-1])[1] == {37: 1, 300: 2, 3000: 16}[x.size // shape[-1]]
  for gain in (g, None):
    dx1, dg1 = norms.rms_norm_bwd(x, gain, inv, dy, impl="xla")
    dx2, dg2 = tn.rms_norm_bwd(x, gain, inv, dy, block_rows=block_rows)
    assert_bits(dx1, dx2, "dx")
    if gain is not None:
      assert_bits(dg1, dg2, "dgain")


# ------------------------------------------------------------------------------------------------ matmul

RTOL = 1e-5
SMALL = tmm.TpuGemmConfig(tm=64, tn=128, tk=128)  # several M, N and K tiles; ragged edges


def _q(shape, fmt, seed, packed=False, axis=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 7, shape[:-1] + (1,))) * np.exp2(
      rng.integers(-3, 4, shape))
  return mx_jax.quantize(jnp.asarray(x, jnp.float32), fmt, axis=axis, packed=packed)


def _f64(q):
  return np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)


def _rel(out, ref):
  out = np.asarray(out, np.float64)
  assert np.isfinite(out).all(), "non-finite output (an unwritten element or NaN)"
  return np.linalg.norm(out - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("fa,fb,packed", [
    ("mxfp8_e4m3", "mxfp8_e5m2", False),
    ("mxfp4_e2m1", "mxfp6_e3m2", True),   # packed QArrays: unpacked by the wrapper
    pytest.param("mxint8", "mxfp6_e2m3", False, marks=pytest.mark.slow),
])
def test_matmul_matches_f64(fa, fb, packed):
  a, b = _q((100, 200), fa, 7, packed), _q((170, 200), fb, 8, packed)  # K = 200: not a multiple of 32
  out = tmm.mx_gemm(a, b, out_dtype=jnp.float32, config=SMALL)
  assert out.shape == (100, 170) and _rel(out, _f64(a) @ _f64(b).T) < RTOL


@pytest.mark.slow
@pytest.mark.parametrize("fa", MX)
def test_matmul_every_format(fa):
  a, b = _q((40, 70), fa, 1), _q((33, 70), MX[(MX.index(fa) + 1) % len(MX)], 2)
  assert _rel(tmm.mx_gemm(a, b, out_dtype=jnp.float32), _f64(a) @ _f64(b).T) < RTOL


def test_matmul_default_tiles_bf16_out_and_nan_scale():
  x = np.array(np.random.default_rng(12).standard_normal((64, 96)), np.float32)
  x[3, 5] = np.nan  # block (3, 0) gets the NaN scale
  a = mx_jax.quantize(jnp.asarray(x), "mxfp8_e4m3", axis=1)
  b = _q((48, 96), "mxfp4_e2m1", 13)
  out = tmm.mx_gemm(a, b)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.isnan(out[3]).all()
  rest = np.delete(out, 3, axis=0)
  ref = np.delete(_f64(a) @ _f64(b).T, 3, axis=0)
  assert np.isfinite(rest).all() and np.linalg.norm(rest - ref) / np.linalg.norm(ref) < 8e-3


def test_dot_general_batch_dims():
  bsz, m, n, k = 2, 40, 24, 96
  a = mx_jax.quantize(jnp.asarray(np.random.default_rng(14).standard_normal((m, bsz, k)), jnp.float32),
                      "mxfp8_e4m3", axis=2)
  b = mx_jax.quantize(jnp.asarray(np.random.default_rng(15).standard_normal((bsz, k, n)), jnp.float32),
                      "mxfp6_e3m2", axis=1)
  out = tmm.mx_dot_general(a, b, (((2,), (1,)), ((1,), (0,))), out_dtype=jnp.float32)
  assert out.shape == (bsz, m, n)
  assert _rel(out, np.einsum("mbk,bkn->bmn", _f64(a), _f64(b))) < RTOL


@pytest.mark.parametrize("fmt,m", [("nvfp4", 3), ("mxfp4_e2m1", 5), pytest.param("mxint8", 70, marks=pytest.mark.slow)])
def test_weight_only(fmt, m):
  w = _q((120, 200), fmt, 18)
  x = jnp.asarray(np.random.default_rng(19).standard_normal((m, 200)), jnp.bfloat16)
  out = tmm.weight_only_matmul(x, w, out_dtype=jnp.float32, config=SMALL)
  assert out.shape == (m, 120)
  assert _rel(out, np.asarray(x, np.float64) @ _f64(w).T) < RTOL
  assert not tmm.supported(_q((8, 64), "nvfp4", 1), _q((8, 64), "nvfp4", 2))


# ---------------------------------------------------------------------------------------------- lowering


def test_kernels_lower_for_tpu():
  bf = jax.ShapeDtypeStruct((100, 1000), jnp.bfloat16)
  g = jax.ShapeDtypeStruct((1000,), jnp.float32)
  key = jax.random.key(0)
  fns = [
      (lambda x: tq.mx_quantize(x, "mxfp8_e4m3"), (bf,)),
      (lambda x: tq.mx_quantize(x, "nvfp4", rounding="stochastic", key=key), (bf,)),
      (lambda x: tq.mx_quantize(x, "mxfp6_e3m2"), (jax.ShapeDtypeStruct((64, 5000), jnp.float16),)),
      (lambda x, g: tn.norm_quantize(x, g, "mxfp4_e2m1", eps=1e-6, kind="mx", p=2, norm_block=32,
                                     block_size=32), (bf, g)),
      (lambda x, g: tn.norm(x, g, eps=1e-6, kind="rms", p=2, block_size=32, out_dtype=jnp.bfloat16), (bf, g)),
      (lambda x, g: tn.rms_norm_bwd(x, g, jnp.ones((100,), jnp.float32), x, block_rows=8), (bf, g)),
      (lambda a, b: tmm.mx_gemm(a, b), (_q((256, 1024), "mxfp8_e4m3", 1), _q((512, 1024), "mxint8", 2))),
      (lambda x, w: tmm.weight_only_matmul(x, w), (jax.ShapeDtypeStruct((8, 200), jnp.bfloat16),
                                                   _q((120, 200), "nvfp4", 3))),
  ]
  for fn, avals in fns:
    assert "tpu_custom_call" in _tpu.lower_for_tpu(fn, *avals)


def test_auto_dispatch_routes_to_tpu_kernels(monkeypatch):
  """With a TPU backend, impl="auto" reaches the TPU kernels from the public entry points (backend faked,
  kernels interpreted via MX_JAX_TPU_INTERPRET)."""
  import mx_jax.matmul as mm
  from kernels import _dispatch, tpu_matmul, tpu_quantize
  mq = importlib.import_module("kernels.mx_quantize")  # the package re-exports a function of that name
  monkeypatch.setenv("MX_JAX_TPU_INTERPRET", "1")
  monkeypatch.setattr(_dispatch, "on_tpu", lambda: True)
  monkeypatch.setattr(mm.jax, "default_backend", lambda: "tpu")
  calls = []
  for mod, name in ((tpu_quantize, "mx_quantize"), (tpu_matmul, "mx_gemm"), (tpu_matmul, "weight_only_matmul")):
    fn = getattr(mod, name)
    monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 64)), jnp.float32)
  q = mq.mx_quantize(x, "mxfp8_e4m3", impl="auto")
  ref = mx_jax.quantize(x, "mxfp8_e4m3")
  np.testing.assert_array_equal(np.asarray(q.data).view(np.uint8), np.asarray(ref.data).view(np.uint8))
  mm.mx_matmul(q, q, impl="auto")
  mm.mx_weight_only_matmul(x, q, impl="auto")
  assert calls == ["mx_quantize", "mx_gemm", "weight_only_matmul"]
