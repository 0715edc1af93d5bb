"""The GEMM-operand MX path (float scaling + FPU rounding) gives the same bits as the exact integer path
for every bf16 input pattern that is not an FP32 subnormal (where flushing backends may differ)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mx_jax import formats as F
from mx_jax import mx_block


def _inputs():
  x = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
  x = x[np.isfinite(x) & ((np.abs(x) >= 2.0 ** -126) | (x == 0))]
  rng = np.random.default_rng(0)
  n = len(x) // 32 * 32
  blocks = [x[:n].reshape(-1, 32), rng.permutation(x)[:n].reshape(-1, 32),
            (rng.standard_normal((2048, 32)) * np.exp2(rng.integers(-60, 60, (2048, 1)))).astype(np.float32)]
  special = np.zeros((4, 32), np.float32)
  special[1, 3] = np.nan
  special[2, 0] = np.inf
  special[3, :] = -0.0
  return jnp.asarray(np.concatenate(blocks + [special]))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"])
def test_fast_path_is_bit_identical(fmt):
  x = _inputs()
  el = F.FORMATS[fmt].elem
  for mode in mx_block.SCALE_MODES:
    fast = np.asarray(mx_block.mx_fake_quantize_fast(x, el, 1, 32, mode))
    v, sb = mx_block.mx_quantize_blocks(x, el, 1, 32, mode, "nearest_even", None)
    exact = np.asarray(mx_block.mx_dequantize_blocks(v, sb, 1, 32))
    same = (fast.view(np.uint32) == exact.view(np.uint32)) | (np.isnan(fast) & np.isnan(exact))
    flushed = (np.abs(exact) < 2.0 ** -126) & (fast == 0) & (np.signbit(fast) == np.signbit(exact))
    assert np.all(same | flushed), (fmt, mode, int(np.sum(~(same | flushed))))
    assert np.sum(same) > 0.99 * same.size


@pytest.mark.parametrize("form", ["_block_max", "_window_block_max", "_halving_block_max"])
@pytest.mark.parametrize("dtype", [np.uint32, np.int32])
def test_block_max_forms_are_exact(form, dtype):
  """Each form of the block max (the platform dispatcher, the reduce_window that CUDA gets, the halving reduce
  other backends get) equals a plain max for every block length and axis position, NaN/Inf bit patterns
  included, for the unsigned and signed bit types the paths use."""
  fn = getattr(mx_block, form)
  rng = np.random.default_rng(0)
  for n in (1, 2, 3, 4, 6, 16, 32):
    bits = rng.integers(0, 2 ** 31, size=(5, n, 7)).astype(dtype)
    bits[0, 0, 0] = 0x7FC00000  # NaN
    bits[1, -1, 1] = 0x7F800000  # Inf
    for ax in (0, 1, 2):
      got = np.asarray(fn(jnp.asarray(bits), ax))
      np.testing.assert_array_equal(got, bits.max(axis=ax, keepdims=True), err_msg=f"{form} n={n} axis={ax}")


def test_block_max_is_a_window_on_cuda_only():
  """Lowered for CUDA (on this CPU host) the block max is the measured reduce_window; lowered for CPU it is not."""
  from kernels import _dispatch
  x = jax.ShapeDtypeStruct((64, 96), jnp.uint32)
  f = lambda v: mx_block._block_max(v.reshape(64, 3, 32), 2)  # noqa: E731
  assert "reduce_window" in _dispatch.lower_for_cuda(f, x)
  assert "reduce_window" not in jax.jit(f).lower(x).as_text()


def _abs_patterns():
  """Every bf16 |x| pattern as float32 bits (zero, subnormals, normals, Inf, NaNs), and float32 neighbours of
  every binade boundary and of each format's max_normal (where ceil/rceil/even change their answer)."""
  ab = np.arange(32768, dtype=np.int64) << 16
  edges = (np.arange(256, dtype=np.int64) << 23)[:, None] + np.array([-1, 0, 1, 0x7FFFFF, 0x400000])
  maxes = np.array([np.float32(F.FORMATS[f].elem.max_normal).view(np.int32) for f in F.FORMATS
                    if F.FORMATS[f].kind == "mx"], np.int64)[:, None] + np.arange(-3, 4)
  rng = np.random.default_rng(1)
  allv = np.concatenate([ab, edges.ravel(), maxes.ravel(), rng.integers(0, 0x7FFFFFFF, 20000)])
  return np.unique(np.clip(allv, 0, 0x7FFFFFFF)).astype(np.int32)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"])
def test_block_exponent_is_max_of_element_exponents(fmt):
  from benchmarks.diag_layouts import NONFINITE_E, element_exponent
  """benchmarks.diag_layouts' "elem_exp_max" variant (timed against the shipped path) takes a block's exponent
  as the max of each element's own (element_exponent). It computes the same values only if element_exponent
  equals shared_exponent on every finite |x| (FP32 subnormals included), shared_exponent is non-decreasing in
  the amax bits (checked on a sorted sweep), and NaN/Inf give a value above every finite one."""
  el = F.FORMATS[fmt].elem
  ab = _abs_patterns()  # sorted
  finite = ab < 0x7F800000
  for mode in mx_block.SCALE_MODES:
    ref = np.asarray(mx_block.shared_exponent(jnp.asarray(ab[finite]), el, mode))
    got = np.asarray(element_exponent(jnp.asarray(ab), el, mode))
    np.testing.assert_array_equal(got[finite], ref, err_msg=f"{fmt} {mode}")
    assert np.all(np.diff(ref) >= 0), (fmt, mode, "shared_exponent not monotone")
    assert np.all(got[~finite] == NONFINITE_E) and ref.max() < NONFINITE_E
