"""Issue 5 PTQ study: the quantizers do what they claim, and the reduced study (``--quick``) is sane.

The reduced study runs FP32, MXFP8 E4M3 and MXFP4 (weights only and W+A) on MiniLM-L6 (64 sentences) and glassllm
(8 windows), plus the §4.3 E4M3 configs at per-tensor scale and plain-cast bias 10, and writes the markdown + plot.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from experiments.ptq import formats as F  # noqa: E402


# ------------------------------------------------------------------------------------------- numerics
def test_int8_fake_quantize_per_channel_and_tensor():
  u = 2.0 ** -7
  w = np.array([[1.0, -63.5 * u], [0.5, 127 * u], [-0.25, 0.0]], np.float32)  # [in=3, out=2]
  q = np.asarray(F.int8_fake_quantize(jnp.asarray(w), (0,)))  # per output channel: amax over the contraction axis
  s0 = np.float32(1.0) / np.float32(127)
  np.testing.assert_allclose(q[:, 0], np.round(w[:, 0] / s0) * s0, rtol=1e-6)
  np.testing.assert_array_equal(q[:, 1], [-64 * u, 127 * u, 0.0])  # scale 2^-7 exactly; -63.5 -> -64 (half to even)
  qt = np.asarray(F.int8_fake_quantize(jnp.asarray(w)))  # per tensor: one scale 1 / 127, the small column is coarse
  np.testing.assert_allclose(qt, np.round(w / s0) * s0, rtol=1e-6)
  # round half to even at the grid level, clipping at ±127
  x = jnp.array([127.0, 0.5, 1.5, 2.5, -0.5], jnp.float32)
  np.testing.assert_array_equal(np.asarray(F.int8_fake_quantize(x)), [127, 0, 2, 2, -0])


def test_plain_cast_bias_grid():
  """Bias b: max 448 * 2^(7-b), smallest subnormal 2^(-9 + 7 - b); bias 7 is the standard E4M3 cast."""
  for b in (4, 7, 10):
    q = F.PlainCast(b)
    mx, sub = 448 * 2.0 ** (7 - b), 2.0 ** (-9 + 7 - b)
    x = jnp.array([1e6, -1e6, sub, sub * 0.49, 1.0 + 2 ** -4 * 1.01], jnp.float32)
    got = np.asarray(jax.jit(q)(x))
    np.testing.assert_array_equal(got[:4], [mx, -mx, sub, 0.0])
    assert got[4] == 1.125  # 3 mantissa bits at 1.x (1.0632 rounds up to 1.125)
  x = jax.random.normal(jax.random.key(0), (1000,)) * 3
  ref = x.astype(jnp.float8_e4m3fn).astype(jnp.float32)
  np.testing.assert_array_equal(np.asarray(F.PlainCast(7)(x)), np.asarray(ref))


def test_fake_quant_dot_per_channel_matches_manual():
  k1, k2 = jax.random.split(jax.random.key(1))
  x = jax.random.normal(k1, (4, 5, 64))
  w = jax.random.normal(k2, (64, 24)) * jnp.linspace(0.01, 3, 24)  # very different column scales
  dn = (((2,), (0,)), ((), ()))
  dg, _ = F.dot_generals("fp8_e4m3_channel", "wa")
  got = dg(x, w, dn)
  import mx_jax
  wq = jnp.stack([mx_jax.fake_quantize(w[:, j], "fp8_e4m3") for j in range(24)], 1)
  xq = mx_jax.fake_quantize(x, "fp8_e4m3")
  np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.einsum("abk,kn->abn", xq, wq)), rtol=1e-5, atol=1e-5)
  # weights-only leaves the lhs alone
  dgw, adg = F.dot_generals("int8_channel", "w")
  assert adg is jax.lax.dot_general
  wq8 = F.int8_fake_quantize(w, (0,))
  np.testing.assert_allclose(np.asarray(dgw(x, w, dn)), np.asarray(jnp.einsum("abk,kn->abn", x, wq8)), rtol=1e-5,
                             atol=1e-5)


def test_every_row_builds():
  for f in F.FORMATS:
    for mode in F.MODES:
      dg, adg = F.dot_generals(f.key, mode)
      out = dg(jnp.ones((2, 64)), jnp.ones((64, 3)), (((1,), (0,)), ((), ())))
      assert out.shape == (2, 3) and np.isfinite(np.asarray(out)).all(), f.key
  assert len(F.fp8_configs()) == 10


# ---------------------------------------------------------------------------------------- quick study
# The end-to-end reduced study (both models, 12 quantized forwards: ~55 s of one CI worker on 2 cores) is slow:
# run by `bash scripts/test_all.sh` (BUILD.md, "Test suite time"). The quantizers it uses are checked above.
quick_study = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(fetched, tmp_path_factory):  # fetched: the data first (skips with the reason when it cannot be had)
  from experiments.ptq import study
  out = tmp_path_factory.mktemp("ptq")
  res = study.main(["--quick", "--out", str(out / "R.md"), "--plot", str(out / "p.png"), "--json",
                    str(out / "r.json")])
  return res, out


@quick_study
def test_quick_reference_rows(quick):
  res, _ = quick
  m, g = res["formats"]["minilm"]["fp32"]["w"], res["formats"]["glassllm"]["fp32"]["w"]
  assert m["cos_mean"] == pytest.approx(1.0, abs=1e-6) and m["knn10"] == 1.0
  assert g["kl"] == pytest.approx(0.0, abs=1e-7) and g["top1"] == 1.0
  assert 20 < g["ppl"] < 1000  # out-of-domain text for a tiny Carroll model: high but finite


@quick_study
def test_quick_orderings(quick):
  res, _ = quick
  fm, fg = res["formats"]["minilm"], res["formats"]["glassllm"]
  for mode in F.MODES:
    assert fg["mxfp8_e4m3"][mode]["kl"] < fg["mxfp4_e2m1"][mode]["kl"]
    assert fg["mxfp8_e4m3"][mode]["top1"] > fg["mxfp4_e2m1"][mode]["top1"]
    assert fm["mxfp8_e4m3"][mode]["cos_mean"] > fm["mxfp4_e2m1"][mode]["cos_mean"]
  for key in ("mxfp8_e4m3", "mxfp4_e2m1"):  # weights-only beats weights + activations
    assert fg[key]["w"]["kl"] < fg[key]["wa"]["kl"]
    assert fm[key]["w"]["cos_mean"] > fm[key]["wa"]["cos_mean"]
  assert fm["mxfp8_e4m3"]["wa"]["cos_mean"] > 0.98 and fg["mxfp8_e4m3"]["wa"]["kl"] < 0.05  # near-lossless
  assert fm["mxfp4_e2m1"]["wa"]["cos_mean"] < 0.98  # MXFP4 direct cast degrades


@quick_study
def test_quick_fp8_study(quick):
  res, _ = quick
  d = res["fp8"]["glassllm"]
  for s in ("tensor", "bias10"):
    assert d[s]["gemm"]["kl"] < d[s]["gemm+res"]["kl"]  # casting the residual stream too adds error
    assert d[s]["gemm"]["kl"] < 0.05
  assert 0 < d["tensor"]["gemm"]["kl"]
  r = res["meta"]["ranges"]["glassllm"]
  assert r["x_max"] < 56 and r["res_max"] < 56  # why bias 10 (max 56) does not clip this model


@quick_study
def test_quick_outputs(quick):
  _, out = quick
  md = (out / "R.md").read_text()
  assert "| MXFP8 E4M3 |" in md and "§4.3" in md and "python -m experiments.ptq.study --quick" in md
  png = out / "p.png"
  assert png.is_file() and png.stat().st_size < 200_000
