"""Block-scaled matmul (issue 7): mx_matmul / mx_dot_general / mx_weight_only_matmul.

The Hopper kernels (kernels/mx_matmul_mgpu.py) run here in Mosaic GPU's interpret mode on CPU, whose
wgmma is an exact FP32 matmul: results must equal float64 dot products of the dequantized operands up to
FP32 accumulation-order error (relative 1e-5). Every output element is checked written: the interpreter
fills fresh buffers (outputs included) with NaN, so an unwritten element fails the all-finite check.
Accumulation precision of the real tensor cores is measured on the GPU by benchmarks/bench_matmul.py.
"""
import os

# Mosaic GPU's interpreter parks one host thread per simulated warpgroup inside XLA:CPU callbacks; with
# XLA's default pool (one thread per core) that deadlocks on a 2-core machine. NPROC sizes the pool and
# must be set before the CPU backend starts (pytest imports every test module before running any test;
# no module starts the backend at import). scripts/test.sh may set it too.
if int(os.environ.get("NPROC", "0") or 0) < 32:
  os.environ["NPROC"] = "32"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from covering import covering  # noqa: E402

import mx_jax  # noqa: E402
from kernels import mx_matmul as glue  # noqa: E402
from kernels import mx_matmul_mgpu as mg  # noqa: E402
from mx_jax.matmul import mx_dot_general, mx_matmul, mx_weight_only_matmul, prepare_weight_only  # noqa: E402

MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"]
RTOL = 1e-5
# Variants CI leaves to scripts/test_all.sh (each mechanism keeps a CI case; BUILD.md, "Test suite time").
SLOW = pytest.mark.slow
# Small tiles keep the interpreter quick; shapes below are deliberately not tile multiples.
FP8_CFG = mg.GemmConfig("fp8", tile_m=64, tile_n=64, tile_k=64, wg_dim="M", max_concurrent_steps=2)
FP8_CFG_N = mg.GemmConfig("fp8", tile_m=64, tile_n=64, tile_k=128, wg_dim="N", max_concurrent_steps=2, pair=True)
BF16_CFG = mg.GemmConfig("bf16", tile_m=64, tile_n=64, tile_k=128, wg_dim="N", max_concurrent_steps=2)
# two dequantized-tile slots per warpgroup: the slot index alternates with the K step (and restarts per tile)
BF16_CFG_DQ2 = dataclasses.replace(BF16_CFG, deq_slots=2)


def _data(shape, seed, spread=True):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape)
  if spread:  # different block scales along rows and K
    x = x * np.exp2(rng.integers(-6, 7, shape[:-1] + (1,))) * np.exp2(rng.integers(-3, 4, shape))
  return jnp.asarray(x, jnp.float32)


def _q(shape, fmt, seed, packed=False, axis=1):
  return mx_jax.quantize(_data(shape, seed), fmt, axis=axis, packed=packed)


def _f64(q):
  return np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)


def _rel(out, ref):
  out = np.asarray(out, np.float64)
  assert np.isfinite(out).all(), "non-finite output (unwritten element or NaN)"
  return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300)


# ---------------------------------------------------------------------------------------------- XLA path


# Each format as a meets 2 formats as b in CI, every b met on both sides (the other 24 pairs are slow).
@pytest.mark.parametrize("fa,fb", covering(MX, MX, per=2, ids=str))
def test_xla_path_every_format_pair(fa, fb):
  a, b = _q((24, 70), fa, 1), _q((20, 70), fb, 2)
  out = mx_matmul(a, b, out_dtype=jnp.float32, impl="xla")
  assert out.shape == (24, 20) and out.dtype == jnp.float32
  assert _rel(out, _f64(a) @ _f64(b).T) < RTOL


def test_xla_path_nvfp4_and_bf16_out():
  a, b = _q((16, 96), "nvfp4", 3), _q((8, 96), "mxfp8_e4m3", 4)
  ref = _f64(a) @ _f64(b).T
  assert _rel(mx_matmul(a, b, out_dtype=jnp.float32, impl="xla"), ref) < RTOL
  out = mx_matmul(a, b, impl="xla")
  assert out.dtype == jnp.bfloat16 and _rel(out, ref) < 1e-2


def _compiles(f):
  """How many XLA programs calling f() compiles."""
  seen = []
  def on(event, secs, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      seen.append(secs)
  jax.monitoring.register_event_duration_secs_listener(on)
  try:
    f()
  finally:
    jax.monitoring.unregister_event_duration_listener(on)
  return len(seen)


def test_eager_calls_compile_one_program():
  """An eager call runs its glue (dequantize, layout, dot, cast) as one compiled program, not op by op."""
  a, b = _q((40, 64), "mxfp8_e4m3", 3), _q((24, 64), "mxint8", 4)
  x = jnp.ones((5, 64), jnp.bfloat16)
  assert _compiles(lambda: mx_matmul(a, b, impl="xla")) == 1
  a3 = mx_jax.quantize(_data((2, 6, 64), 5), "mxfp8_e4m3", axis=2)
  b3 = mx_jax.quantize(_data((2, 7, 64), 6), "mxfp8_e5m2", axis=2)
  assert _compiles(lambda: mx_dot_general(a3, b3, (((2,), (2,)), ((0,), (0,))), impl="xla")) == 1
  assert _compiles(lambda: mx_weight_only_matmul(x, b, impl="xla")) == 1
  assert _compiles(lambda: mx_weight_only_matmul(x, b, impl="xla")) == 0  # cached


def test_auto_on_cpu_is_xla():
  a, b = _q((10, 40), "mxfp8_e4m3", 5), _q((6, 40), "mxfp4_e2m1", 6)
  np.testing.assert_array_equal(np.asarray(mx_matmul(a, b, out_dtype=jnp.float32)),
                                np.asarray(mx_matmul(a, b, out_dtype=jnp.float32, impl="xla")))


# ------------------------------------------------------------------------------ kernels, interpret mode


@pytest.mark.parametrize("fa,fb,cfg,packed", [
    ("mxfp8_e4m3", "mxfp8_e5m2", FP8_CFG, False),      # mixed FP8, design (a)
    pytest.param("mxfp8_e5m2", "mxfp8_e4m3", FP8_CFG_N, False, marks=SLOW),  # warpgroups split N (not default)
    ("mxfp4_e2m1", "mxfp6_e3m2", FP8_CFG, True),       # FP4/FP6 widened to e4m3 for FP8 wgmma
    ("mxint8", "mxfp4_e2m1", BF16_CFG, True),          # design (b): FP4 unpacked inside the kernel
    ("mxfp6_e2m3", "mxfp6_e3m2", BF16_CFG, True),      # FP6 unpacked inside the kernel
    pytest.param("mxfp8_e4m3", "mxint8", BF16_CFG, False, marks=SLOW),
    pytest.param("mxfp4_e2m1", "mxfp8_e5m2", BF16_CFG, False, marks=SLOW),     # unpacked FP4 input
    ("mxfp4_e2m1", "mxfp8_e4m3", BF16_CFG_DQ2, True),  # double-buffered dequantized tiles, 2 K steps
])
def test_kernel_matches_f64(fa, fb, cfg, packed):
  m, n, k = 100, 70, 200  # not tile multiples; K not a multiple of 32 (quantize zero-pads it)
  a, b = _q((m, k), fa, 7, packed), _q((n, k), fb, 8, packed)
  out = mx_matmul(a, b, out_dtype=jnp.float32, impl="mgpu", config=cfg, interpret=True)
  assert out.shape == (m, n)
  assert _rel(out, _f64(a) @ _f64(b).T) < RTOL


def test_gemm_config_rejects_bad_deq_slots():
  with pytest.raises(ValueError, match="deq_slots must be 1 or 2"):
    dataclasses.replace(BF16_CFG, deq_slots=3)
  with pytest.raises(ValueError, match="deq_slots=2 applies to the bf16"):
    dataclasses.replace(FP8_CFG, deq_slots=2)


def test_kernel_default_config_and_bf16_output():
  a, b = _q((130, 64), "mxfp8_e4m3", 9), _q((40, 64), "mxfp8_e4m3", 10)
  ref = _f64(a) @ _f64(b).T
  out = mx_matmul(a, b, impl="mgpu_fp8", interpret=True)  # default tiles, bf16 out
  assert out.dtype == jnp.bfloat16 and _rel(out, ref) < 8e-3


@pytest.mark.parametrize("cfg", [FP8_CFG, BF16_CFG, BF16_CFG_DQ2])
def test_kernel_writes_every_element(cfg):
  """Straight at the kernel (no crop): a 2x2 tile grid on one simulated SM (persistent loop)."""
  m, n, k = 2 * cfg.cta_m, 2 * cfg.cta_n, 2 * cfg.tile_k
  rng = np.random.default_rng(11)
  a = jnp.asarray(rng.standard_normal((m, k)) * 8, jnp.float8_e4m3fn)
  b = jnp.asarray(rng.standard_normal((n, k)) * 8, jnp.float8_e5m2)
  sa = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32, m))), jnp.float32)
  sb = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32, n))), jnp.float32)
  out = mg.gemm(a, b, sa, sb, out_dtype=jnp.float32, config=cfg, num_sms=1, interpret=True)
  da = np.asarray(a, np.float64) * np.repeat(np.asarray(sa, np.float64).T, 32, axis=1)
  db = np.asarray(b, np.float64) * np.repeat(np.asarray(sb, np.float64).T, 32, axis=1)
  assert _rel(out, da @ db.T) < RTOL


def _gemm_inputs(lead, m, n, k, seed):
  """FP8 element data and float32 power-of-two scales in the kernel's layout (scales K-block-major)."""
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.standard_normal(lead + (m, k)) * 8, jnp.float8_e4m3fn)
  b = jnp.asarray(rng.standard_normal(lead + (n, k)) * 8, jnp.float8_e5m2)
  sa = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32,) + lead + (m,))), jnp.float32)
  sb = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32,) + lead + (n,))), jnp.float32)
  return a, b, sa, sb


@pytest.mark.parametrize("lead", [(), pytest.param((2,), marks=SLOW)])  # CI: the unbatched split
def test_split_k_sums_the_ranges_in_order(lead):
  """Split-K 3 (a 2x1 tile grid per batch element, 2 K stages per range, 3 simulated SMs): every partial
  written, and the result is bit for bit p0 + p1 + p2 of the unsplit kernel on each K range; f64 within 1e-5."""
  cfg = dataclasses.replace(FP8_CFG, split_k=3)
  m, n, k = 2 * cfg.cta_m, cfg.cta_n, 6 * cfg.tile_k
  a, b, sa, sb = _gemm_inputs(lead, m, n, k, 41)
  out = mg.gemm(a, b, sa, sb, out_dtype=jnp.float32, config=cfg, num_sms=3, interpret=True)
  assert out.shape == lead + (m, n)
  da = np.asarray(a, np.float64) * np.repeat(np.moveaxis(np.asarray(sa, np.float64), 0, -1), 32, axis=-1)
  db = np.asarray(b, np.float64) * np.repeat(np.moveaxis(np.asarray(sb, np.float64), 0, -1), 32, axis=-1)
  assert _rel(out, np.einsum("...mk,...nk->...mn", da, db)) < RTOL
  one = dataclasses.replace(cfg, split_k=1)
  kc, bc = k // 3, k // 96
  parts = [mg.gemm(a[..., r * kc:(r + 1) * kc], b[..., r * kc:(r + 1) * kc], sa[r * bc:(r + 1) * bc],
                   sb[r * bc:(r + 1) * bc], out_dtype=jnp.float32, config=one, num_sms=3, interpret=True)
           for r in range(3)]
  np.testing.assert_array_equal(np.asarray(out), np.asarray((parts[0] + parts[1]) + parts[2]))
  out16 = mg.gemm(a, b, sa, sb, out_dtype=jnp.bfloat16, config=cfg, num_sms=3, interpret=True)
  np.testing.assert_array_equal(np.asarray(out16), np.asarray(out.astype(jnp.bfloat16)))


def test_split_k_choice():
  """The split-K cost model: few output tiles over a long K split (into equal whole-stage ranges: no padding),
  a full GPU does not."""
  cfg = glue.DEFAULT_FP8
  wgrad = glue.default_gemm_config(768, 768, 8192, "mxfp8_e4m3", "mxfp8_e5m2")  # 36 tiles on 132 SMs
  assert wgrad.split_k == 2  # the fastest on the H100 (BENCHMARKS.md, session 22)
  assert glue.split_k_for(36, 33, cfg, 4 * 768 * 768, 132) in (1, 3, 11)  # divisors of 33 only
  assert glue.default_gemm_config(8192, 8192, 8192, "mxfp8_e4m3", "mxfp8_e4m3").split_k == 1
  assert glue.split_k_for(1, 1, cfg, 4 << 20, 132) == 1  # one K stage: nothing to split
  assert glue.split_k_for(1, 64, cfg, 4 * 128 * 128, 132) == glue.MAX_SPLIT_K
  assert glue.split_k_for(36, 32, cfg, 4 * 768 * 768, 36) == 1  # a full wave already
  # 64-wide sides are not padded to 128: attention's p.v (N = head dim) and its transpose (M = head dim)
  assert glue.default_gemm_config(1024, 64, 1024, "mxfp8_e4m3", "mxfp8_e4m3", bsz=96).cta_n == 64
  t = glue.default_gemm_config(64, 1024, 1024, "mxfp8_e4m3", "mxfp8_e4m3", bsz=96)
  assert (t.cta_m, t.cta_n) == (64, 128)
  with pytest.raises(ValueError, match="split_k must be a positive int"):
    dataclasses.replace(cfg, split_k=0)
  for kw, name in ((dict(tiles=0), "tiles"), (dict(k_iters=0), "k_iters"), (dict(num_sms=0), "num_sms"),
                   (dict(partial_bytes=-1), "partial_bytes")):
    args = {**dict(tiles=36, k_iters=32, cfg=cfg, partial_bytes=4, num_sms=132), **kw}
    with pytest.raises(ValueError, match=f"{name} must be a"):
      glue.split_k_for(**args)
  for kw in ("bsz", "num_sms"):
    with pytest.raises(ValueError, match=f"{kw} must be a positive int"):
      glue.default_gemm_config(64, 64, 64, "mxfp8_e4m3", "mxfp8_e4m3", **{kw: 0})


def test_split_k_through_the_public_call():
  """mx_matmul with a split-K config (K = 200 padded to 3 ranges of one 128-deep stage) equals f64."""
  a, b = _q((100, 200), "mxfp8_e4m3", 12), _q((70, 200), "mxfp8_e5m2", 13)
  cfg = dataclasses.replace(FP8_CFG_N, split_k=3)
  out = mx_matmul(a, b, out_dtype=jnp.float32, impl="mgpu", config=cfg, interpret=True)
  assert out.shape == (100, 70) and _rel(out, _f64(a) @ _f64(b).T) < RTOL


def _slice(q, i):
  """Batch element i of a (B, rows, K) QArray quantized along K, as a 2D QArray."""
  return dataclasses.replace(q, data=q.data[i], scales=q.scales[i], axis=1, shape=q.shape[1:])


@pytest.mark.parametrize("fa,fb,cfg,packed", [
    ("mxfp8_e4m3", "mxfp8_e5m2", FP8_CFG, False),   # design (a), mixed FP8
    pytest.param("mxfp4_e2m1", "mxfp8_e4m3", BF16_CFG, True, marks=SLOW),  # design (b), FP4 unpacked in the kernel
])
def test_batched_kernel_equals_2d_and_f64(fa, fb, cfg, packed):
  """dot_general with a batch dim runs one batched launch: bit for bit the per-element 2D kernel."""
  bsz, m, n, k = 3, 70, 130, 96  # nothing a tile multiple: every batch element padded alike
  a = mx_jax.quantize(_data((bsz, m, k), 31), fa, axis=2, packed=packed)
  b = mx_jax.quantize(_data((bsz, n, k), 32), fb, axis=2, packed=packed)
  out = mx_dot_general(a, b, (((2,), (2,)), ((0,), (0,))), out_dtype=jnp.float32, impl="mgpu", config=cfg,
                       interpret=True)
  assert out.shape == (bsz, m, n)
  assert _rel(out, np.einsum("bmk,bnk->bmn", _f64(a), _f64(b))) < RTOL
  for i in range(bsz):
    one = mx_matmul(_slice(a, i), _slice(b, i), out_dtype=jnp.float32, impl="mgpu", config=cfg, interpret=True)
    np.testing.assert_array_equal(np.asarray(out[i]), np.asarray(one))


@pytest.mark.parametrize("cfg", [FP8_CFG, pytest.param(BF16_CFG, marks=SLOW)])
def test_batched_kernel_writes_every_element(cfg):
  """Straight at the batched kernel (no crop): 2 batch elements x 2 tiles on 3 simulated SMs, so one CTA's
  persistent loop crosses from one batch element into the next."""
  bsz, m, n, k = 2, cfg.cta_m, 2 * cfg.cta_n, 2 * cfg.tile_k
  rng = np.random.default_rng(33)
  a = jnp.asarray(rng.standard_normal((bsz, m, k)) * 8, jnp.float8_e4m3fn)
  b = jnp.asarray(rng.standard_normal((bsz, n, k)) * 8, jnp.float8_e5m2)
  sa = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32, bsz, m))), jnp.float32)
  sb = jnp.asarray(np.exp2(rng.integers(-5, 5, (k // 32, bsz, n))), jnp.float32)
  out = mg.gemm(a, b, sa, sb, out_dtype=jnp.float32, config=cfg, num_sms=3, interpret=True)
  da = np.asarray(a, np.float64) * np.repeat(np.moveaxis(np.asarray(sa, np.float64), 0, -1), 32, axis=-1)
  db = np.asarray(b, np.float64) * np.repeat(np.moveaxis(np.asarray(sb, np.float64), 0, -1), 32, axis=-1)
  assert out.shape == (bsz, m, n)
  assert _rel(out, np.einsum("bmk,bnk->bmn", da, db)) < RTOL
  one = mg.gemm(a[1], b[1], sa[:, 1], sb[:, 1], out_dtype=jnp.float32, config=cfg, num_sms=3, interpret=True)
  np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(one))


def test_nan_scale_propagates():
  x = np.array(_data((64, 64), 12))
  x[3, 5] = np.nan  # block (3, 0) gets the NaN scale
  a = mx_jax.quantize(jnp.asarray(x), "mxfp8_e4m3", axis=1)
  b = _q((32, 64), "mxfp8_e4m3", 13)
  out = np.asarray(mx_matmul(a, b, out_dtype=jnp.float32, impl="mgpu", config=FP8_CFG, interpret=True))
  assert np.isnan(out[3]).all() and np.isfinite(np.delete(out, 3, axis=0)).all()


# --------------------------------------------------------------------------------------- dot_general


def test_dot_general_batch_dims_kernel_and_xla():
  bsz, m, n, k = 2, 40, 24, 96
  a = mx_jax.quantize(_data((m, bsz, k), 14), "mxfp8_e4m3", axis=2)   # (M, B, K)
  b = mx_jax.quantize(_data((bsz, k, n), 15), "mxfp8_e5m2", axis=1)   # (B, K, N)
  dn = (((2,), (1,)), ((1,), (0,)))
  ref = np.einsum("mbk,bkn->bmn", _f64(a), _f64(b))
  for impl in ("xla", "mgpu"):
    out = mx_dot_general(a, b, dn, out_dtype=jnp.float32, impl=impl, config=FP8_CFG, interpret=True)
    assert out.shape == (bsz, m, n)
    assert _rel(out, ref) < RTOL


def test_dot_general_free_dims_fold():
  a = mx_jax.quantize(_data((3, 5, 64), 16), "mxfp8_e5m2", axis=2)   # two free dims on the left
  b = mx_jax.quantize(_data((7, 64), 17), "mxfp8_e4m3", axis=1)
  dn = (((2,), (1,)), ((), ()))
  ref = np.einsum("ijk,nk->ijn", _f64(a), _f64(b))
  out = mx_dot_general(a, b, dn, out_dtype=jnp.float32, impl="mgpu_fp8", config=FP8_CFG, interpret=True)
  assert out.shape == (3, 5, 7) and _rel(out, ref) < RTOL
  assert _rel(mx_dot_general(a, b, dn, out_dtype=jnp.float32, impl="xla"), ref) < RTOL


# --------------------------------------------------------------------------------------- weight-only


@pytest.mark.parametrize("fmt,m,packed,cfg", [
    ("mxfp8_e4m3", 1, False, mg.WeightOnlyConfig(64, 128, 1, 2)),
    ("mxfp4_e2m1", 5, True, mg.WeightOnlyConfig(64, 128, 2, 2)),   # split K
    pytest.param("mxfp4_e2m1", 3, False, mg.WeightOnlyConfig(128, 128, 1, 2), marks=SLOW),
    pytest.param("mxfp6_e3m2", 16, False, mg.WeightOnlyConfig(64, 128, 1, 2), marks=SLOW),
    ("mxfp6_e2m3", 9, True, mg.WeightOnlyConfig(64, 128, 1, 2)),
    ("mxint8", 2, False, mg.WeightOnlyConfig(64, 128, 1, 2)),
    ("nvfp4", 3, False, mg.WeightOnlyConfig(64, 128, 1, 2)),
])
def test_weight_only_matches_f64(fmt, m, packed, cfg):
  n, k = 120, 200
  w = _q((n, k), fmt, 18, packed)
  x = jnp.asarray(np.random.default_rng(19).standard_normal((m, k)), jnp.bfloat16)
  ref = np.asarray(x, np.float64) @ _f64(w).T
  pw = prepare_weight_only(w)
  out = mx_weight_only_matmul(x, pw, out_dtype=jnp.float32, impl="mgpu", config=cfg, interpret=True)
  assert out.shape == (m, n) and _rel(out, ref) < RTOL
  assert _rel(mx_weight_only_matmul(x, w, out_dtype=jnp.float32, impl="xla"), ref) < RTOL


def test_weight_only_leading_dims_and_qarray_input():
  w = _q((64, 96), "mxfp8_e5m2", 20)
  x = jnp.asarray(np.random.default_rng(21).standard_normal((2, 3, 96)), jnp.bfloat16)
  ref = np.einsum("abk,nk->abn", np.asarray(x, np.float64), _f64(w))
  out = mx_weight_only_matmul(x, w, out_dtype=jnp.float32, impl="mgpu", interpret=True)
  assert out.shape == (2, 3, 64) and _rel(out, ref) < RTOL
  out = mx_weight_only_matmul(x, w)  # auto on CPU: XLA path, bf16 out
  assert out.dtype == jnp.bfloat16 and _rel(out, ref) < 1e-2


def test_weight_only_kernel_writes_every_element():
  n, k, mp = 128, 256, 16
  rng = np.random.default_rng(22)
  codes = jnp.asarray(rng.integers(0, 16, (n, k)), jnp.uint8)
  w = mg.pack_fp4_kernel(codes)
  sw = jnp.asarray(np.exp2(rng.integers(-4, 4, (k // 32, n))), jnp.float32)
  x = jnp.asarray(rng.standard_normal((mp, k)), jnp.bfloat16)
  out = mg.weight_only(x, w, sw, elem="e2m1", config=mg.WeightOnlyConfig(64, 128, 2, 2), interpret=True)
  wv = np.asarray(codes).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
  wv = wv * np.repeat(np.asarray(sw, np.float64).T, 32, axis=1)
  assert out.shape == (2, n, mp)
  assert _rel(np.asarray(out).sum(0), wv @ np.asarray(x, np.float64).T) < RTOL


# ------------------------------------------------------------------------------- pieces, exhaustively


@pytest.mark.parametrize("elem,dt,bits", [("e2m1", ml_dtypes.float4_e2m1fn, 4),
                                          ("e3m2", ml_dtypes.float6_e3m2fn, 6),
                                          ("e2m3", ml_dtypes.float6_e2m3fn, 6)])
def test_subbyte_decode_every_code(elem, dt, bits):
  codes = np.arange(2 ** bits, dtype=np.uint8)
  got = np.asarray(jax.jit(lambda c: mg.decode_subbyte(c, elem))(jnp.asarray(codes, jnp.int32)))
  ref = codes.view(dt).astype(np.float32)
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))


def test_kernel_packings_round_trip():
  rng = np.random.default_rng(23)
  c4 = rng.integers(0, 16, (3, 128)).astype(np.uint8)
  p4 = np.asarray(mg.pack_fp4_kernel(jnp.asarray(c4)))
  assert p4.shape == (3, 64)
  g = c4.reshape(3, 2, 2, 32)
  np.testing.assert_array_equal(p4.reshape(3, 2, 32) & 0xF, g[:, :, 0])
  np.testing.assert_array_equal(p4.reshape(3, 2, 32) >> 4, g[:, :, 1])
  c6 = rng.integers(0, 64, (2, 256)).astype(np.uint8)
  p6 = np.asarray(mg.pack_fp6_kernel(jnp.asarray(c6))).astype(np.uint32).reshape(2, 2, 3, 32)
  word = p6[:, :, 0] | (p6[:, :, 1] << 8) | (p6[:, :, 2] << 16)
  for q in range(4):
    np.testing.assert_array_equal((word >> (6 * q)) & 63, c6.reshape(2, 2, 4, 32)[:, :, q])


def test_e8m0_to_f32_every_byte():
  b = np.arange(256, dtype=np.uint8)
  got = np.asarray(glue.e8m0_to_f32(jnp.asarray(b).view(jnp.float8_e8m0fnu)))
  ref = b.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
  np.testing.assert_array_equal(got, ref)


# ------------------------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
  a, b = _q((8, 64), "mxfp8_e4m3", 24), _q((4, 64), "mxfp8_e4m3", 25)
  with pytest.raises(TypeError, match="QArray"):
    mx_matmul(np.ones((8, 64)), b)
  with pytest.raises(ValueError, match="impl must be one of"):
    mx_matmul(a, b, impl="cuda")
  with pytest.raises(ValueError, match="contracting dims differ"):
    mx_matmul(a, _q((4, 32), "mxfp8_e4m3", 26))
  with pytest.raises(ValueError, match="axis=1"):
    mx_matmul(a, mx_jax.quantize(_data((4, 64), 27), "mxfp8_e4m3", axis=0))
  with pytest.raises(ValueError, match="quantized along axis"):
    mx_dot_general(a, _q((4, 8), "mxfp8_e4m3", 30), (((0,), (1,)), ((), ())))
  with pytest.raises(ValueError, match="kernels do not take"):
    mx_matmul(_q((8, 64), "nvfp4", 28), b, impl="mgpu", interpret=True)
  with pytest.raises(ValueError, match="cannot take MXINT8"):
    mx_matmul(_q((8, 64), "mxint8", 29), b, impl="mgpu_fp8", interpret=True)
  with pytest.raises(ValueError, match="does not match the weight"):
    mx_weight_only_matmul(jnp.ones((2, 32)), b)
  with pytest.raises(ValueError, match=r"w must be an \(N, K\) QArray quantized along axis 1"):
    mx_weight_only_matmul(jnp.ones((2, 64)), mx_jax.quantize(_data((2, 8, 64), 31), "mxfp8_e4m3"))  # 3-D
  with pytest.raises(TypeError, match=r"w must be a QArray or a prepare_weight_only\(...\) result"):
    mx_weight_only_matmul(jnp.ones((2, 64)), jnp.ones((8, 64)))
