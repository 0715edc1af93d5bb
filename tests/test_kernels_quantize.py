"""kernels.mx_quantize (Pallas, interpret mode on CPU) == mx_jax.quantize (XLA path), bit for bit."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import sys

import mx_jax
from kernels import _dispatch, mx_quantize
from mx_jax import _bits
from mx_jax.formats import FORMATS

kq = sys.modules["kernels.mx_quantize"]  # the module (kernels.mx_quantize is the function)

BLOCK_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4"]


def _bytes(a):
  a = np.asarray(a)
  return a.shape, np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def qbytes(q):
  """(data, scales, tensor scale) of a QArray as (shape, raw bytes) pairs, for exact comparison."""
  return _bytes(q.data), _bytes(q.scales), None if q.tensor_scale is None else _bytes(q.tensor_scale)


def assert_same(q1, q2):
  assert (q1.fmt, q1.axis, q1.shape, q1.block_size, q1.packed) == (q2.fmt, q2.axis, q2.shape, q2.block_size,
                                                                   q2.packed)
  assert q1.data.dtype == q2.data.dtype and q1.scales.dtype == q2.scales.dtype
  a, b = qbytes(q1), qbytes(q2)
  for what, u, v in (("element codes", a[0], b[0]), ("scales", a[1], b[1])):
    assert u[0] == v[0], f"{what}: shapes {u[0]} vs {v[0]}"
    np.testing.assert_array_equal(u[1], v[1], err_msg=f"{what} differ")
  assert (a[2] is None) == (b[2] is None)
  if a[2] is not None:
    np.testing.assert_array_equal(a[2][1], b[2][1], err_msg="tensor scales differ")


def planted(shape, dtype, seed=0):
  """Random data with a per-row scale spread plus planted NaN, ±Inf, zero blocks, subnormals, tiny and
  huge blocks, and exact ties."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape[:-1] + (1,)))
  x = x.astype(np.float32)
  flat = x.reshape(-1, shape[-1])
  r, n = flat.shape
  fi = np.finfo(np.float32) if dtype == jnp.float32 else ml_dtypes.finfo(dtype)
  tiny = float(fi.smallest_subnormal)
  if r > 1:
    flat[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    flat[1, :min(n, 32)] = 0.0  # an all-zero block
  if r > 3:
    flat[2, :min(n, 32)] = tiny * rng.integers(-3, 4, min(n, 32))  # subnormal-only block (generic path)
    flat[3, :min(n, 32)] = rng.standard_normal(min(n, 32)) * 1e-37  # tiny normal block (e < threshold)
  if r > 5:
    flat[4, :min(n, 32)] = rng.standard_normal(min(n, 32)) * float(fi.max) / 4  # huge block
    flat[5, :min(n, 64)] = np.resize([1.0, 1.0625, 1.125, 1.1875, 3.0, 5.0, -0.75, 0.25], min(n, 64))  # ties
  if r > 6:
    flat[6, 1::7] = tiny  # subnormals mixed into a normal row (below the grid)
  return jnp.asarray(x.reshape(shape), dtype)


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
def test_formats_odd_shape_specials(fmt):
  # 37 rows (tiles of 8 rows: a partial last tile), 200 columns (not a multiple of 32: padded last block).
  x = planted((37, 200), jnp.bfloat16, seed=1)
  assert_same(mx_jax.quantize(x, fmt), mx_quantize(x, fmt, impl="pallas", block_rows=8, block_blocks=4))


@pytest.mark.parametrize("fmt,mode", [("mxfp8_e4m3", "ceil"), ("mxfp4_e2m1", "even"), ("mxint8", "rceil")])
def test_scale_modes(fmt, mode):
  x = planted((16, 96), jnp.float32, seed=2)
  assert_same(mx_jax.quantize(x, fmt, scale_mode=mode),
              mx_quantize(x, fmt, scale_mode=mode, impl="pallas", block_rows=8))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "nvfp4"])
def test_stochastic_key_and_rbits(fmt):
  x = planted((9, 70), jnp.bfloat16, seed=3)
  key = jax.random.key(7)
  q_ref = mx_jax.quantize(x, fmt, rounding="stochastic", key=key)
  assert_same(q_ref, mx_quantize(x, fmt, rounding="stochastic", key=key, impl="pallas", block_rows=4))
  if fmt == "mxfp8_e4m3":  # caller-given random bits, kernel and XLA path
    rbits = jax.random.bits(key, (9, 3, 32), jnp.uint32)
    assert_same(q_ref, mx_quantize(x, fmt, rounding="stochastic", rbits=rbits, impl="pallas", block_rows=4))
    assert_same(q_ref, mx_quantize(x, fmt, rounding="stochastic", rbits=rbits, impl="xla"))


def test_nearest_away_f16_3d_and_block_sizes():
  x = planted((3, 5, 48), jnp.float16, seed=4)
  assert_same(mx_jax.quantize(x, "mxfp6_e2m3", rounding="nearest_away"),
              mx_quantize(x, "mxfp6_e2m3", rounding="nearest_away", impl="pallas"))
  for bs in (16, 64):
    assert_same(mx_jax.quantize(x, "mxfp8_e4m3", block_size=bs),
                mx_quantize(x, "mxfp8_e4m3", block_size=bs, impl="pallas"))


def test_skinny_and_short_rows():
  x = planted((1, 300), jnp.bfloat16, seed=5)
  assert_same(mx_jax.quantize(x, "mxfp8_e4m3"), mx_quantize(x, "mxfp8_e4m3", impl="pallas"))
  y = planted((6, 7), jnp.float32, seed=6)  # a single partial block per row
  assert_same(mx_jax.quantize(y, "mxfp4_e2m1"), mx_quantize(y, "mxfp4_e2m1", impl="pallas"))
  z = jnp.asarray(np.random.default_rng(0).standard_normal(40), jnp.float32)  # rank 1
  assert_same(mx_jax.quantize(z, "nvfp4"), mx_quantize(z, "nvfp4", impl="pallas"))


def test_fast_and_generic_paths_agree():
  # Tiles of 1 row: normal rows take the fast path, planted rows the generic one; fast=False is all generic.
  x = planted((8, 64), jnp.float32, seed=8)
  ref = mx_jax.quantize(x, "mxfp8_e4m3")
  assert_same(ref, mx_quantize(x, "mxfp8_e4m3", impl="pallas", block_rows=1))
  assert_same(ref, mx_quantize(x, "mxfp8_e4m3", impl="pallas", fast=False))


@pytest.mark.parametrize("fmt", ["mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "mxfp8_e4m3"])
def test_int_codes_match_round_to_elem(fmt):
  """The fast path's integer RNE (no kernel): every grid point, midpoint and neighbours, both signs."""
  elem = FORMATS[fmt].elem
  grid = mx_jax.formats.grid_table(elem)
  mids = (grid[1:] + grid[:-1]) / 2
  v = np.concatenate([grid, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf), grid * 1.01,
                      [elem.max_normal * 1.5, 1e30, 1e-30, np.float32(2.0 ** -140), np.inf]])
  v = np.concatenate([v, -v]).astype(np.float32)
  want = jax.jit(lambda v: kq.exact_codes(_bits.round_to_elem(v, jnp.int32(0), elem, "nearest_even"), elem))
  got = jax.jit(lambda v: kq.int_codes(v, elem))
  np.testing.assert_array_equal(np.asarray(got(jnp.asarray(v))), np.asarray(want(jnp.asarray(v))))


def test_impl_dispatch_and_validation():
  assert _dispatch.resolve_impl("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")
  with pytest.raises(ValueError, match="impl"):
    mx_quantize(jnp.ones((2, 32)), "mxfp8_e4m3", impl="cuda")
  with pytest.raises(ValueError, match="stochastic"):
    mx_quantize(jnp.ones((2, 32)), "mxfp8_e4m3", rounding="stochastic", impl="pallas")
  with pytest.raises(ValueError, match="rbits"):
    mx_quantize(jnp.ones((2, 32)), "mxfp8_e4m3", rounding="stochastic", rbits=jnp.zeros((2, 32), jnp.uint32),
                impl="pallas")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)
  assert_same(mx_jax.quantize(x, "fp8_e4m3"), mx_quantize(x, "fp8_e4m3", impl="pallas"))  # per-tensor: XLA
  assert_same(mx_jax.quantize(x, "mxfp8_e4m3"), mx_quantize(x, "mxfp8_e4m3"))  # auto


def test_jit_and_dequantize():
  x = planted((12, 64), jnp.bfloat16, seed=9)
  f = jax.jit(lambda x: mx_quantize(x, "mxfp8_e4m3", impl="pallas"))
  q = f(x)
  assert_same(mx_jax.quantize(x, "mxfp8_e4m3"), q)
  np.testing.assert_array_equal(np.asarray(mx_jax.dequantize(q)),
                                np.asarray(mx_jax.dequantize(mx_jax.quantize(x, "mxfp8_e4m3"))))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4_e2m1", "nvfp4"])
def test_lowers_for_triton(fmt):
  """The compiled (Triton) kernels lower for CUDA on this CPU host: every primitive has a Triton rule."""
  rounding = "stochastic" if fmt == "nvfp4" else "nearest_even"
  key = jax.random.key(0) if rounding == "stochastic" else None
  fn = lambda x: mx_quantize(x, fmt, rounding=rounding, key=key, impl="pallas")
  text = _dispatch.lower_for_cuda(fn, jax.ShapeDtypeStruct((100, 1000), jnp.bfloat16))
  assert "xla.gpu.triton" in text


@pytest.mark.parametrize("fmt,mode", [("mxfp8_e4m3", "floor"), ("mxfp6_e3m2", "even"), ("mxint8", "ceil")])
def test_fast_only_path_without_subnormals(fmt, mode):
  """The GPU kernels' unguarded fast path (exact where FP32 subnormals are kept) on data without any:
  planted NaN/Inf/zero/tiny/huge blocks, and MX INT8 with a shared exponent of 127 (two-step scaling)."""
  x = np.asarray(planted((16, 64), jnp.float32, seed=12))
  x = np.where(np.abs(x) < 2.0 ** -126, 0.0, x).astype(np.float32)
  x[7, :32] = 2.0 ** 127 * np.linspace(-1.9, 1.9, 32)  # ceil mode: e = 128 - emax, clamped to 127 for INT8
  elem = FORMATS[fmt].elem

  def fast(x):
    codes, sb = kq.mx_tile(x.reshape(16, 2, 32), elem, mode, "nearest_even", fast_only=True)
    return codes.reshape(16, 64), sb

  codes, sb = jax.jit(fast)(jnp.asarray(x))
  q = mx_jax.quantize(jnp.asarray(x), fmt, scale_mode=mode)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(q.data).view(np.uint8))
  np.testing.assert_array_equal(np.asarray(sb), np.asarray(q.scales).view(np.uint8))
