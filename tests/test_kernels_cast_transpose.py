"""kernels.mx_cast_transpose (Pallas, interpret mode on CPU) against the float64 spec model (tests/spec_reference.py):
every bf16 bit pattern in both orientations, planted specials on shapes with partial tiles and padded blocks,
the argument checks, and the Triton lowering."""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import spec_reference as R  # noqa: E402
from test_formats_exhaustive import bf16_sweep_input  # noqa: E402
from test_kernels_quantize import planted  # noqa: E402

from kernels import _dispatch  # noqa: E402
from kernels.mx_cast_transpose import mx_cast_transpose  # noqa: E402


def _check(q, x64, fmt, bs, mode, rounding, what):
  """q == the spec model's quantization of x64 (the QArray's logical tensor) along its last axis: E8M0 scale bytes
  and element values outside NaN blocks; padding dropped."""
  elems, _, byte = R.ref_mx_quantize(x64, fmt, axis=-1, block_size=bs, scale_mode=mode, rounding=rounding)
  assert q.fmt == fmt and q.axis == x64.ndim - 1 and tuple(q.shape) == x64.shape and q.block_size == bs
  R.assert_bytes(R.e8m0_bytes(q.scales), byte, what + " scale bytes")
  vals = R.codes_to_values(q.data, fmt)[..., :x64.shape[-1]]
  R.assert_same(np.where(np.isnan(elems), np.nan, vals), elems, what + " element codes", inputs=x64)


@pytest.mark.parametrize("fmt", R.MX_FORMATS)
def test_all_bf16_patterns_both_orientations(fmt):
  """Every bf16 bit pattern, each in a block of 2 with a controlled partner (test_formats_exhaustive's sweep): the
  sweep laid out so that the blocks run down the columns (col output) and, from the same call, across rows."""
  x = bf16_sweep_input(fmt).reshape(640, 1024)  # the partner pairs are adjacent along the last axis
  xt = jnp.asarray(np.ascontiguousarray(x.T))  # (1024, 640): the pairs now run down axis 0
  row, col = mx_cast_transpose(xt, fmt, axis=0, rowwise=True, block_size=2, impl="pallas")
  _check(col, x.astype(np.float64), fmt, 2, "floor", "nearest_even", f"{fmt} col")
  _check(row, np.asarray(xt, np.float64), fmt, 2, "floor", "nearest_even", f"{fmt} row")


@pytest.mark.parametrize("fmt,mode,rounding", [("mxfp8_e4m3", "floor", "nearest_even"),
                                               ("mxfp6_e3m2", "even", "nearest_away"),
                                               ("mxint8", "rceil", "nearest_away")])
def test_planted_specials_partial_tiles(fmt, mode, rounding):
  """NaN / Inf / zero / subnormal / tiny / huge blocks and ties; R and C not multiples of the block (padded) or of
  the tile (masked); bf16 and f32; the col output alone for a middle axis of a 4-D tensor."""
  cases = [((70, 100), 0, True, jnp.bfloat16), ((3, 40, 96), 1, True, jnp.float32),
           ((2, 45, 3, 7), 1, False, jnp.bfloat16), ((130, 64), 0, False, jnp.float32)]
  for i, (shape, axis, rowwise, dt) in enumerate(cases):
    x = planted(shape, dt, seed=i)
    row, col = mx_cast_transpose(x, fmt, axis=axis, rowwise=rowwise, scale_mode=mode, rounding=rounding,
                                 impl="pallas")
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    what = f"{fmt} {shape} axis {axis}"
    _check(col, np.moveaxis(x64, axis, -1), fmt, 32, mode, rounding, what + " col")
    if rowwise:
      _check(row, x64, fmt, 32, mode, rounding, what + " row")
    else:
      assert row is None


def test_xla_impl_and_jit():
  x = planted((64, 96), jnp.bfloat16, seed=9)
  a = jax.jit(lambda x: mx_cast_transpose(x, "mxfp8_e4m3", axis=0, rowwise=True, impl="xla"))(x)
  b = mx_cast_transpose(x, "mxfp8_e4m3", axis=0, rowwise=True, impl="pallas")
  for p, q in zip(a, b):
    for u, v in ((p.data, q.data), (p.scales, q.scales)):
      np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8))


def test_argument_checks():
  x = jnp.zeros((64, 64), jnp.bfloat16)
  bad = [((x, "nvfp4"), {}, "fmt must be an MX"),
         ((x, "fp8_e4m3"), {}, "fmt must be an MX"),
         ((x, "mxfp8_e4m3"), dict(rounding="stochastic"), "rounding must be one of"),
         ((x, "mxfp8_e4m3"), dict(axis=1), "axis must be a non-last axis"),
         ((x, "mxfp8_e4m3"), dict(axis=-1), "axis must be a non-last axis"),
         ((x, "mxfp8_e4m3"), dict(axis=2), "axis must be a non-last axis"),
         ((x, "mxfp8_e4m3"), dict(axis=0.0), "axis must be a non-last axis"),
         ((jnp.zeros((2, 64, 64)), "mxfp8_e4m3"), dict(axis=0, rowwise=True), "rowwise=True needs axis"),
         ((jnp.zeros((64,)), "mxfp8_e4m3"), {}, "x must have rank >= 2"),
         ((x, "mxfp8_e4m3"), dict(block_size=24), "block_size for .mxfp8_e4m3. must be one of"),
         ((x, "mxfp8_e4m3"), dict(block_size=256), "block_size must be a power of two"),
         ((x, "mxfp8_e4m3"), dict(impl="cuda"), "impl must be one of"),
         ((x, "mxfp8_e4m3"), dict(impl="pallas", block_rows=48), "block_rows / block_cols must be powers of two"),
         ((x, "mxfp8_e4m3"), dict(impl="pallas", block_cols=16), "block_rows / block_cols must be powers of two")]
  for args, kw, msg in bad:
    with pytest.raises(ValueError, match=msg):
      mx_cast_transpose(*args, **kw)
  raw = importlib.import_module("kernels.mx_cast_transpose").cast_transpose_pallas  # (the package: the function)
  for shape, rowwise in (((64, 64), False), ((1, 40, 64), False), ((1, 64, 40), True)):
    with pytest.raises(ValueError, match="x3 must be"):
      raw(jnp.zeros(shape, jnp.bfloat16), "mxfp8_e4m3", rowwise=rowwise)
  with pytest.raises((TypeError, ValueError), match="x"):
    mx_cast_transpose(np.zeros((64, 64), np.int32), "mxfp8_e4m3")


@pytest.mark.parametrize("rowwise", [False, True])
def test_lowers_for_triton(rowwise):
  """The compiled (Triton) kernel lowers for CUDA on this CPU host, at a step shape and a masked one."""
  for shape in ((8192, 768), (100, 70)):
    fn = lambda x: mx_cast_transpose(x, "mxfp8_e4m3", axis=0, rowwise=rowwise, impl="pallas")  # noqa: E731
    assert "xla.gpu.triton" in _dispatch.lower_for_cuda(fn, jax.ShapeDtypeStruct(shape, jnp.bfloat16))
