"""Checks of the oracle itself (tests/spec_reference.py), against hand-worked spec values and against
ml_dtypes' independent casts. No mx_jax here: if these fail, the oracle is wrong, not the library."""
import os
import sys

import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import spec_reference as R  # noqa: E402

# Spec grids, typed in from the OCP MX v1.0 tables (non-negative values).
E2M1_GRID = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
E2M3_GRID = [k / 8 for k in range(8)] + [1 + k / 8 for k in range(8)] + [2 + k / 4 for k in range(8)] + [
    4 + k / 2 for k in range(8)]
E3M2_GRID = ([k / 16 for k in range(4)] + [x * 2.0**E for E in range(-2, 5) for x in (1, 1.25, 1.5, 1.75)])


@pytest.mark.parametrize("name,grid", [("e2m1", E2M1_GRID), ("e2m3", E2M3_GRID), ("e3m2", E3M2_GRID)])
def test_grid_tables(name, grid):
  np.testing.assert_array_equal(R.grid_values(name), np.array(sorted(set(grid)), np.float64))


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"])
def test_grid_matches_ml_dtypes_table(name):
  codes = np.arange(256, dtype=np.uint8)
  dt = R.ELEM_DTYPE[name]
  nbits = ml_dtypes.finfo(dt).bits
  vals = codes[: 2 ** (nbits - 1)]
  v = (vals.view(dt) if nbits == 8 else vals.astype(np.uint8).view(dt)).astype(np.float64)
  v = np.unique(v[np.isfinite(v)])
  np.testing.assert_array_equal(R.grid_values(name), v)
  assert R.ELEM[name]["max"] == float(ml_dtypes.finfo(dt).max)
  assert R.ELEM[name]["emax"] == int(np.floor(np.log2(float(ml_dtypes.finfo(dt).max))))


def test_int8_grid():
  np.testing.assert_array_equal(R.grid_values("int8"), np.arange(128) / 64.0)


def _all_f32_sample(n=1 << 18, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m2", "e2m3", "e2m1"])
def test_elem_round_rne_matches_ml_dtypes(name):
  """ml_dtypes casts are RNE; inside the saturating range they must agree with the oracle bit for bit."""
  dt = R.ELEM_DTYPE[name]
  mx = R.ELEM[name]["max"]
  # dense values around the grid of this format: all bf16 patterns scaled into range, plus random f32.
  b = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
  x = np.concatenate([b, _all_f32_sample()]).astype(np.float32)
  x = x[np.isfinite(x) & (np.abs(x) <= mx)]
  got = x.astype(dt).astype(np.float64)
  exp = R.ref_elem_round(x.astype(np.float64), name, "nearest_even")
  R.assert_same(exp, got, f"oracle vs ml_dtypes {name}", inputs=x)


def test_elem_round_ties():
  # E4M3 at scale 1: 1.0625 is halfway 1.0 (even) / 1.125; 1.1875 halfway 1.125 / 1.25 (even).
  v = np.array([1.0625, 1.1875, -1.0625, 2.5, -2.5, 0.25, 0.75, 5.0])
  np.testing.assert_array_equal(R.ref_elem_round(v[:3], "e4m3", "nearest_even"), [1.0, 1.25, -1.0])
  np.testing.assert_array_equal(R.ref_elem_round(v[:3], "e4m3", "nearest_away"), [1.125, 1.25, -1.125])
  # E2M1: 2.5 -> 2 (RNE) / 3 (away); 0.25 -> 0 / 0.5; 0.75 -> 1 / 1; 5 -> 4 / 6.
  np.testing.assert_array_equal(R.ref_elem_round(v[3:], "e2m1", "nearest_even"), [2, -2, 0, 1, 4])
  np.testing.assert_array_equal(R.ref_elem_round(v[3:], "e2m1", "nearest_away"), [3, -3, 0.5, 1, 6])
  # MXINT8: step 1/64 everywhere; 1.5/64 -> 2/64 (RNE) ; 0.5/64 -> 0 (RNE) / 1/64 (away); saturation.
  v = np.array([1.5, 0.5, 2.5, 200.0, -200.0]) / 64
  np.testing.assert_array_equal(R.ref_elem_round(v, "int8", "nearest_even") * 64, [2, 0, 2, 127, -127])
  np.testing.assert_array_equal(R.ref_elem_round(v, "int8", "nearest_away") * 64, [2, 1, 3, 127, -127])


def test_elem_round_saturation_and_signs():
  for name, s in R.ELEM.items():
    mx = s["max"]
    v = np.array([mx * 1.01, -mx * 1e6, np.inf, -np.inf, np.nan, 0.0, -0.0, -1e-30])
    r = R.ref_elem_round(v, name)
    np.testing.assert_array_equal(r[:4], [mx, -mx, mx, -mx])
    assert np.isnan(r[4])
    assert r[5] == 0 and not np.signbit(r[5])
    assert r[6] == 0 and np.signbit(r[6])
    assert r[7] == 0 and np.signbit(r[7])


def test_scale_hand_values():
  # amax = 150, E4M3: floor(log2 150) = 7 -> floor e = -1; ceil -> 8 - 8 = 0; rceil ceil(log2(150/448)) = -1.
  a = np.array([150.0])
  assert R.ref_mx_scale_exp(a, "e4m3", "floor")[1][0] == 126
  assert R.ref_mx_scale_exp(a, "e4m3", "ceil")[1][0] == 127
  assert R.ref_mx_scale_exp(a, "e4m3", "rceil")[1][0] == 126
  assert R.ref_mx_scale_exp(a, "e4m3", "even")[1][0] == 126
  # amax = 1.5*2^k floor -> k - emax (what astype(float8_e8m0fnu) would round up to k+1).
  k = np.arange(-100, 100)
  for name, s in R.ELEM.items():
    e, b = R.ref_mx_scale_exp(1.5 * 2.0**k, name, "floor")
    np.testing.assert_array_equal(e, k - s["emax"])
  # even: E4M3 (M=3): 1.9375*2^k rounds up to 2^(k+1) (ties up), 1.875*2^k does not.
  assert R.ref_mx_scale_exp(np.array([1.9375 * 4]), "e4m3", "even")[0][0] == 3 - 8
  assert R.ref_mx_scale_exp(np.array([1.875 * 4]), "e4m3", "even")[0][0] == 2 - 8
  # E2M1 (M=1): 1.75*2^k -> up; 1.7 no.
  assert R.ref_mx_scale_exp(np.array([1.75]), "e2m1", "even")[0][0] == 1 - 2
  assert R.ref_mx_scale_exp(np.array([1.7]), "e2m1", "even")[0][0] == 0 - 2
  # rceil with amax exactly max*2^k -> k; one ulp above -> k + 1.
  for name, s in R.ELEM.items():
    a = np.array([s["max"] * 2.0**-3, np.nextafter(np.float32(s["max"] * 2.0**-3), np.float32(1e30))],
                 np.float64)
    np.testing.assert_array_equal(R.ref_mx_scale_exp(a, name, "rceil")[0], [-3, -2])
  # specials
  e, b = R.ref_mx_scale_exp(np.array([0.0, np.nan, np.inf, 2.0**-149, 3.4e38]), "int8", "ceil")
  np.testing.assert_array_equal(b, [0, 255, 255, 0, 254])


def test_scale_modes_disagree_somewhere():
  """Perturbation check: the modes are really different functions on ordinary amaxes."""
  a = np.abs(R._to_f64(_all_f32_sample(1 << 16)))
  a = a[np.isfinite(a) & (a > 1e-30) & (a < 1e30)]
  for name in R.ELEM:
    bytes_ = {m: R.ref_mx_scale_exp(a, name, m)[1] for m in R.SCALE_MODES}
    for m1 in R.SCALE_MODES:
      for m2 in R.SCALE_MODES:
        if m1 < m2:
          assert (bytes_[m1] != bytes_[m2]).any(), (name, m1, m2)


def test_mx_quantize_padding_and_axis():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((5, 37)).astype(np.float32)
  full = R.ref_mx_fake(x, "mxfp4_e2m1", axis=1, block_size=32)
  # padding is zeros: quantizing a zero-padded copy gives the same values
  xp = np.concatenate([x, np.zeros((5, 27), np.float32)], axis=1)
  np.testing.assert_array_equal(R.ref_mx_fake(xp, "mxfp4_e2m1", axis=1, block_size=32)[:, :37], full)
  # axis handling = transpose
  np.testing.assert_array_equal(R.ref_mx_fake(x.T, "mxfp4_e2m1", axis=0, block_size=32), full.T)
  # independent per-block recomputation for the first block of row 0 (floor, E2M1)
  blk = x[0, :32].astype(np.float64)
  e = int(np.floor(np.log2(np.abs(blk).max()))) - 2
  vals = blk / 2.0**e
  expect = np.array([min(R.grid_values("e2m1"), key=lambda g: (abs(g - abs(v)), g * 2 % 2 != 0))
                     * np.sign(v) for v in vals]) * 2.0**e
  # the key's tie-break prefers even codes: for E2M1, even codes are 0, 1, 2, 4 (x2 values 0,2,4,8 -> all
  # integers with even code); ties in this random sample are measure-zero anyway.
  np.testing.assert_allclose(full[0, :32], expect, rtol=0, atol=0)


def test_nvfp4_reference_hand_example():
  # One block [6, 3, 1.5, ...]: A = 6 -> S = 448; d = 1 * 448 = 448 -> e4m3 448; enc = 1/(448/448) = 1.
  x = np.zeros(16, np.float32)
  x[:4] = [6, 3, 1.5, -0.25]
  r = R.ref_nvfp4(x)
  assert r["s_enc"] == np.float32(448)
  assert float(r["block_scale"][0]) == 448
  np.testing.assert_array_equal(r["elems"][:4], [6, 3, 1.5, -0.0])
  # decode: elem * 448 * float32(1/448); float32(1/448) is inexact, so 6 -> 6.0000005 (per the op order).
  inv = np.float32(1) / np.float32(448)
  assert r["tensor_scale"] == inv
  np.testing.assert_array_equal(r["deq"][:4], np.float32([6 * 448, 3 * 448, 1.5 * 448, -0.0]) * inv)
  assert r["deq"][0] != 6.0
  assert np.signbit(r["deq"][3])


def test_fp8_reference_hand_example():
  x = np.array([1.0, -2.0, 0.3, 0.0], np.float32)
  r = R.ref_fp8_tensor(x, "fp8_e4m3")
  assert r["scale"].ravel()[0] == np.float32(224.0)
  np.testing.assert_array_equal(r["elems"], [224, -448, np.float32(0.3 * 224).astype(ml_dtypes.float8_e4m3fn)
                                            .astype(np.float64), 0])
  r = R.ref_fp8_tensor(x, "fp8_e4m3", margin=1, power_of_two=True)
  assert r["scale"].ravel()[0] == np.float32(64.0)  # 224/2 = 112 -> 64
  r = R.ref_fp8_tensor(np.zeros(3, np.float32), "fp8_e5m2")
  assert r["scale"].ravel()[0] == 1.0
  # non-saturating overflow (explicit scale): E4M3 -> NaN, E5M2 -> Inf
  big = np.array([500.0, -70000.0, np.inf], np.float32)
  assert np.isnan(R.ref_fp8_tensor(big, "fp8_e4m3", saturate=False, scale=1.0)["elems"]).all()
  np.testing.assert_array_equal(R.ref_fp8_tensor(big, "fp8_e5m2", saturate=False, scale=1.0)["elems"],
                                [512, -np.inf, np.inf])  # 500 -> 512 (E5M2 step 128 there)
  np.testing.assert_array_equal(R.ref_fp8_tensor(big, "fp8_e4m3", saturate=True, scale=1.0)["elems"],
                                [448, -448, 448])


def test_fp8_reference_matches_ml_dtypes_nonsaturating():
  x = _all_f32_sample(1 << 16, seed=3)
  x = x[~np.isnan(x)]
  for name, dt in (("fp8_e4m3", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)):
    r = R.ref_fp8_tensor(x, name, saturate=False, scale=1.0)
    with np.errstate(invalid="ignore", over="ignore"):
      R.assert_same(r["elems"], x.astype(dt).astype(np.float64), name, inputs=x)


# ---------------------------------------------------------------------------------------------------- mutants
# The comparisons used by the mx_jax tests must be able to fail: each known pitfall, implemented on purpose
# in numpy, is caught by the same helpers on the same kind of inputs.
def _bf16_pairs(partner):
  v = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
  return np.stack([v, np.full_like(v, partner)], axis=-1)


def test_helpers_detect_sign_nan_and_byte_differences():
  with pytest.raises(AssertionError):
    R.assert_same(np.array([0.0]), np.array([-0.0]))
  R.assert_same(np.array([0.0]), np.array([-0.0]), signed_zeros=False)
  with pytest.raises(AssertionError):
    R.assert_same(np.array([np.nan]), np.array([1.0]))
  R.assert_same(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
  with pytest.raises(AssertionError):
    R.assert_bytes(np.array([126], np.uint8), np.array([127], np.uint8))
  # ftz_ok accepts exactly a signed flush of a subnormal, nothing else
  R.assert_same(np.float32([-0.0]), np.array([-(2.0**-130)]), ftz_ok=True)
  with pytest.raises(AssertionError):
    R.assert_same(np.float32([0.0]), np.array([-(2.0**-130)]), ftz_ok=True)
  with pytest.raises(AssertionError):
    R.assert_same(np.float32([0.0]), np.array([2.0**-125]), ftz_ok=True)


def test_mutant_e8m0_astype_is_caught():
  x = _bf16_pairs(1.0)
  amax = np.abs(x).max(-1).astype(np.float64)
  ok = np.isfinite(amax) & (amax > 2.0**-100) & (amax < 2.0**100)
  mutant = (amax[ok] / 2.0**8).astype(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
  ref = R.ref_mx_scale_exp(amax[ok], "e4m3", "floor")[1]
  assert (mutant != ref).sum() > 1000
  assert np.isnan(np.float32([0.0]).astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)[0])  # 0 -> NaN


def test_mutant_e4m3_astype_without_clip_is_caught():
  x = np.array([[500.0, 470.0, 464.0, 1.0]], np.float32)
  with np.errstate(invalid="ignore"):
    mutant = x.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)  # scale is 1 here (floor)
  ref = R.ref_mx_fake(x, "mxfp8_e4m3", -1, 4, "floor")
  assert R.mismatch_mask(mutant, ref).any() and not np.isnan(ref).any()


def test_mutant_nan_hidden_by_fp4_cast_is_caught():
  with np.errstate(invalid="ignore"):
    mutant = np.float32([np.nan, np.inf]).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
  ref = R.ref_mx_fake(np.float32([[np.nan, 1.0], [np.inf, 1.0]]), "mxfp4_e2m1", -1, 2)
  assert np.isnan(ref).all() and not np.isnan(mutant).any()


def test_mutant_nan_amax_ignored_is_caught():
  x = np.float32([[np.nan, 1.0, 100.0, 3.0]])
  _, _, byte = R.ref_mx_quantize(x, "mxfp8_e4m3", -1, 4)
  mutant_amax = np.nanmax(np.abs(x))
  assert byte[0, 0] == 255 and R.ref_mx_scale_exp(np.array([mutant_amax]), "e4m3")[1][0] != 255


def test_mutant_ties_away_is_caught_on_bf16_sweep():
  for fmt in R.MX_FORMATS:
    x = _bf16_pairs(R.elem_spec(fmt)["max"])
    a = R.ref_mx_fake(x, fmt, -1, 2, "floor", "nearest_even")
    b = R.ref_mx_fake(x, fmt, -1, 2, "floor", "nearest_away")
    assert R.mismatch_mask(a, b).sum() > 100, fmt


def test_mutant_fp32_division_rceil_agrees_for_fp32_inputs():
  """The NVIDIA hardware formula (biased_exp(amax / max) + (mantissa != 0), amax/max in float32) equals the
  exact-math oracle for every float32 amax: checked on all bf16 values and random float32."""
  rng = np.random.default_rng(5)
  a = np.concatenate([np.abs(np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)),
                      np.abs(rng.integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
                             .view(np.float32))])
  a = a[np.isfinite(a) & (a >= 2.0**-100)]
  for name, s in R.ELEM.items():
    with np.errstate(over="ignore"):
      r = (a / np.float32(s["max"])).astype(np.float32)
    bits = r.view(np.uint32)
    hw = ((bits >> 23) & 0xFF).astype(np.int64) - 127 + ((bits & 0x7FFFFF) != 0)
    e = R.ref_mx_scale_exp(a.astype(np.float64), name, "rceil")[0]
    keep = (hw > -127) & (hw < 127)
    np.testing.assert_array_equal(np.clip(hw, -127, 127)[keep], e[keep])
