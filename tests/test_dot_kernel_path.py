"""Recipe(impl="pallas"): the quantized dot_general's three training GEMMs on the block-scaled kernel.

On CPU the Hopper kernel runs in Mosaic GPU's interpreter (exact FP32 wgmma), so forward and both gradients
must equal the XLA path (same quantized operands, one bf16/f32 GEMM) up to FP32 accumulation order
(relative 1e-5 of the output scale). GEMMs the kernel does not take (per-tensor FP8, NVFP4) stay on XLA.
"""
import os

if int(os.environ.get("NPROC", "0") or 0) < 32:  # see tests/test_kernels_matmul.py
  os.environ["NPROC"] = "32"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mx_jax  # noqa: E402
from mx_jax import dot as D  # noqa: E402


def _run(rec, x, w, dn):
  f = lambda x, w: mx_jax.quantized_dot_general(x, w, dn, rec)  # noqa: E731
  out = f(x, w)
  g = jax.random.normal(jax.random.key(3), out.shape, jnp.float32)
  _, vjp = jax.vjp(f, x, w)
  return (out,) + tuple(vjp(g))


def _close(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  assert np.all(np.isfinite(a))
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.max(np.abs(b)))


@pytest.mark.parametrize("name", ["mxfp8", pytest.param("mxfp4_weights", marks=pytest.mark.slow)])  # CI: its
@pytest.mark.parametrize("case", ["dense", "attention", "two_axis_k", pytest.param("batched", marks=pytest.mark.slow)])
def test_pallas_impl_matches_xla(name, case):
  rng = np.random.default_rng(0)
  if case == "dense":  # K = 72 (not a multiple of 32), token dim 40 (wgrad blocks along it: padded)
    x = jnp.asarray(rng.standard_normal((2, 20, 72)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((72, 48)) * 0.1, jnp.float32)
    dn = (((2,), (0,)), ((), ()))
  elif case == "attention":  # q.k as Flax writes it, "bqhd,bkhd->bhqk": two batch dims around the free one; K = 64
    # (one 64-deep stage); its gradients contract q / k over the middle axis and the scores over q or k
    x = jnp.asarray(rng.standard_normal((2, 24, 3, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((2, 40, 3, 64)), jnp.float32)
    dn = (((3,), (3,)), ((0, 2), (0, 2)))
  elif case == "two_axis_k":  # two adjacent contraction axes before a batch axis: merging them moves the batch
    # axis (x: 2 -> 1), so the kernel's dimension numbers must follow it; K = 3 * 16 = 48 (padded)
    x = jnp.asarray(rng.standard_normal((3, 16, 2, 20)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((2, 3, 16, 24)) * 0.1, jnp.float32)
    dn = (((0, 1), (1, 2)), ((2,), (0,)))
  else:  # attention-like batch dim and a contraction that is not the last axis of rhs
    x = jnp.asarray(rng.standard_normal((3, 24, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 64, 40)), jnp.float32)
    dn = (((2,), (1,)), ((0,), (0,)))
  rec_x = mx_jax.recipe(name)
  rec_p = dataclasses.replace(rec_x, impl="pallas")
  assert D._kernel_mode(rec_p, rec_p.x, rec_p.w) == "interpret"
  for a, b in zip(_run(rec_p, x, w, dn), _run(rec_x, x, w, dn)):
    _close(a, b)


def test_kernel_mode_choice():
  rec = mx_jax.recipe("mxfp8")
  assert D._kernel_mode(rec, rec.x, rec.w) is None  # impl="xla" (default)
  auto = dataclasses.replace(rec, impl="auto")
  assert D._kernel_mode(auto, auto.x, auto.w) is None  # auto: the kernel only on Hopper
  for name in ("fp8_current", "nvfp4"):  # the kernel takes MX operands only
    r = dataclasses.replace(mx_jax.recipe(name), impl="pallas")
    assert D._kernel_mode(r, r.x, r.w) is None


@pytest.mark.parametrize("name", ["fp8_current", "fp8_delayed"])
def test_native_fp8_gemm_matches_emulation(name):
  """Per-tensor FP8 GEMMs with impl != "xla" read real float8 operands (XLA's FP8 dot; exact f32 dot on
  CPU): same values as the bf16 emulation up to accumulation order."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((16, 48)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((48, 24)) * 0.1, jnp.float32)
  dn = (((1,), (0,)), ((), ()))
  rec_x = mx_jax.recipe(name)
  rec_p = dataclasses.replace(rec_x, impl="pallas")
  assert D._native_fp8(rec_p, rec_p.x, rec_p.w) == (jnp.float8_e4m3fn, jnp.float8_e4m3fn)
  assert D._native_fp8(rec_p, rec_p.g_dgrad, rec_p.w_dgrad)[0] == jnp.float8_e5m2
  st = mx_jax.init_state(rec_x)

  def run(rec):
    f = lambda x, w, s: mx_jax.quantized_dot_general(x, w, dn, rec, s)  # noqa: E731
    out, vjp = jax.vjp(f, x, w, st)
    return (out,) + tuple(vjp(jnp.ones_like(out))[:2])

  for a, b in zip(run(rec_p), run(rec_x)):
    _close(a, b)


def test_short_k_runs_in_one_stage_of_its_depth():
  from kernels import mx_matmul as glue
  ks = {k: glue.default_gemm_config(8192, 8192, k, "mxfp8_e4m3", "mxfp8_e4m3").tile_k
        for k in (32, 64, 96, 128, 200, 768, 800)}
  assert ks == {32: 64, 64: 64, 96: 128, 128: 128, 200: 128, 768: 128, 800: 256}


def test_pallas_operand_quantizer_same_bits(monkeypatch):
  """Large kernel operands contracted along their last axis take the Pallas MX quantize kernel on a GPU (here
  interpreted): the same QArray bits as XLA's fast path (K = 80: a padded last block)."""
  monkeypatch.setattr(D, "KERNEL_OPERAND_QUANT_MIN", 0)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((6, 80)) * np.exp2(rng.integers(-8, 8, (6, 1))), jnp.bfloat16)
  spec = mx_jax.recipe("mxfp8").x
  for x0 in (x, x.reshape(2, 3, 80)):
    q1 = D.quantize_operand_q(x0, spec, (x0.ndim - 1,), pallas_quant=True)[0]
    q0 = D.quantize_operand_q(x0, spec, (x0.ndim - 1,), pallas_quant=False)[0]
    assert (q1.axis, q1.shape, q1.block_size) == (q0.axis, q0.shape, q0.block_size)
    np.testing.assert_array_equal(np.asarray(q1.data.view(np.uint8)), np.asarray(q0.data.view(np.uint8)))
    np.testing.assert_array_equal(np.asarray(q1.scales.view(np.uint8)), np.asarray(q0.scales.view(np.uint8)))


@pytest.mark.parametrize("case", ["dense", "scores", "values"])
def test_cast_transpose_operands_in_the_gemm(monkeypatch, case):
  """Kernel operands quantized along a non-last axis through the cast-transpose kernel (here interpreted), and a
  gradient's two quantizations from one call (``rowwise``): the forward and both gradients equal those of XLA's
  quantizer up to FP32 summation order (1e-6 of the output scale; one FP8 code off by one step moves an output by
  ~1e-2 of it). Dense: K = 72 and 40 tokens (padded blocks);
  "scores": q.k as Flax writes it ("bqhd,bkhd->bhqk": dS quantized along k and q; its forward operands through
  the last-axis Pallas quantizer); "values": p.v ("bhqk,bkhd->bqhd"). The GEMM itself runs as mx_dot_general's
  XLA path here (the kernel's own equality: test_pallas_impl_matches_xla)."""
  import importlib
  CT = importlib.import_module("kernels.mx_cast_transpose")  # the module (kernels.mx_cast_transpose: the function)
  M = importlib.import_module("mx_jax.matmul")
  rng = np.random.default_rng(7)
  x, w, dn = {
      "dense": ((2, 20, 72), (72, 48), (((2,), (0,)), ((), ()))),
      "scores": ((2, 24, 3, 64), (2, 40, 3, 64), (((3,), (3,)), ((0, 2), (0, 2)))),
      "values": ((2, 3, 24, 40), (2, 40, 3, 64), (((3,), (1,)), ((0, 1), (0, 2)))),
  }[case]
  x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x, w))
  rec = dataclasses.replace(mx_jax.recipe("mxfp8"), impl="pallas")
  monkeypatch.setattr(D, "KERNEL_OPERAND_QUANT_MIN", 0)
  real_dot = M.mx_dot_general
  monkeypatch.setattr(M, "mx_dot_general",
                      lambda qa, qb, dn, **kw: real_dot(qa, qb, dn, out_dtype=kw["out_dtype"], impl="xla"))
  ref = _run(rec, x, w, dn)  # PALLAS_QUANT_MODES = ("mgpu",): the interpreter quantizes on XLA's path
  calls = []
  real = CT.mx_cast_transpose
  monkeypatch.setattr(CT, "mx_cast_transpose", lambda *a, **k: calls.append(k.get("rowwise", False)) or real(*a, **k))
  monkeypatch.setattr(D, "PALLAS_QUANT_MODES", ("mgpu", "interpret"))
  jax.clear_caches()
  got = _run(rec, x, w, dn)
  assert True in calls and False in calls  # a gradient's dual call and a col-only operand
  for a, b in zip(got, ref):
    b = np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=0, atol=1e-6 * np.max(np.abs(b)))
