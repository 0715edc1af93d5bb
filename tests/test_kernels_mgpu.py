"""Mosaic GPU quantize kernel (kernels/mgpu_quantize.py) in Mosaic GPU's interpret mode on CPU == the XLA
path (mx_jax.quantize), bit for bit; and it lowers for CUDA on this host (no GPU needed).

The kernel reads the inputs' bits and works on the FP32 bit pattern with integer ops, so planted FP32 / bf16
subnormals are checked too (XLA:CPU's flushing never touches them). NVFP4's float steps (x * 1/scale) run
as float ops in both the kernel and the reference, on the same backend.
"""
import os

# Mosaic GPU's interpreter parks one host thread per simulated warpgroup (see test_kernels_matmul.py).
if int(os.environ.get("NPROC", "0") or 0) < 32:
  os.environ["NPROC"] = "32"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mx_jax  # noqa: E402
from kernels import _dispatch, _mgpu_common as mc  # noqa: E402
from kernels.mgpu_quantize import mx_quantize_mgpu  # noqa: E402
from mx_jax import _bits  # noqa: E402
from mx_jax.formats import FORMATS  # noqa: E402
from test_kernels_quantize import BLOCK_FORMATS, assert_same, planted  # noqa: E402


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
def test_formats_odd_shape_specials(fmt):
  # 37 rows x 200 columns: the last block of each row is padded, 37 * 7 blocks is not a multiple of the tile.
  x = planted((37, 200), jnp.bfloat16, seed=1)
  assert_same(mx_jax.quantize(x, fmt), mx_quantize_mgpu(x, fmt))


@pytest.mark.parametrize("fmt,mode,dtype", [("mxfp8_e4m3", "ceil", jnp.float32), ("mxfp4_e2m1", "even", jnp.float16),
                                            ("mxint8", "rceil", jnp.float32), ("mxfp6_e2m3", "floor", jnp.float32)])
def test_scale_modes_and_dtypes(fmt, mode, dtype):
  x = planted((16, 96), dtype, seed=2)
  assert_same(mx_jax.quantize(x, fmt, scale_mode=mode), mx_quantize_mgpu(x, fmt, scale_mode=mode))


@pytest.mark.parametrize("fmt,rounding", [("mxfp8_e4m3", "stochastic"), ("nvfp4", "stochastic"),
                                          ("mxfp6_e3m2", "nearest_away"), ("mxint8", "stochastic")])
def test_roundings(fmt, rounding):
  x = planted((9, 70), jnp.bfloat16, seed=3)
  key = jax.random.key(7) if rounding == "stochastic" else None
  ref = mx_jax.quantize(x, fmt, rounding=rounding, key=key)
  assert_same(ref, mx_quantize_mgpu(x, fmt, rounding=rounding, key=key))
  if fmt == "mxfp8_e4m3":  # caller-given random bits
    rbits = jax.random.bits(key, (9, 3, 32), jnp.uint32)
    assert_same(ref, mx_quantize_mgpu(x, fmt, rounding=rounding, rbits=rbits))


def test_block_sizes_3d_and_saturation():
  x = planted((3, 5, 48), jnp.float16, seed=4)
  for bs in (16, 64):
    assert_same(mx_jax.quantize(x, "mxfp8_e4m3", block_size=bs), mx_quantize_mgpu(x, "mxfp8_e4m3", block_size=bs))
  # max-normal and saturating values (ceil scaling pushes the block max above the grid's max_normal)
  y = np.array(planted((8, 64), jnp.float32, seed=5))
  y[6, :32] = 2.0 ** 127 * np.linspace(-1.99, 1.99, 32)
  y[7, :32] = np.float32(448.0) * np.linspace(-1, 1, 32)
  y = jnp.asarray(y)
  for fmt, mode in (("mxfp8_e4m3", "ceil"), ("mxint8", "ceil"), ("mxfp8_e5m2", "even")):
    assert_same(mx_jax.quantize(y, fmt, scale_mode=mode), mx_quantize_mgpu(y, fmt, scale_mode=mode))


def test_skinny_rows_and_tile_multiple():
  x = planted((1, 8192), jnp.bfloat16, seed=6)  # 256 blocks: exactly one tile
  assert_same(mx_jax.quantize(x, "mxfp8_e4m3"), mx_quantize_mgpu(x, "mxfp8_e4m3"))
  z = jnp.asarray(np.random.default_rng(0).standard_normal(40), jnp.float32)  # rank 1
  assert_same(mx_jax.quantize(z, "nvfp4"), mx_quantize_mgpu(z, "nvfp4"))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"])
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "stochastic"])
def test_scaled_codes_random_bits(fmt, rounding):
  """The kernels' integer element path (no kernel) == exact_codes(round_to_elem(x, e)) on random finite
  FP32 patterns (subnormals included) and shared exponents around and far below the block's."""
  import sys
  kq = sys.modules["kernels.mx_quantize"]
  elem = FORMATS[fmt].elem
  rng = np.random.default_rng(hash((fmt, rounding)) % 2 ** 32)
  u = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32)
  u = np.where((u & 0x7F800000) == 0x7F800000, u & 0x807FFFFF, u)
  fl = ((u >> 23) & 0xFF).astype(np.int32) - 127
  e = np.clip(fl - elem.emax + rng.integers(-30, 3, u.size), -127, 127).astype(np.int32)
  rb = rng.integers(0, 2 ** 32, u.size, dtype=np.uint64).astype(np.uint32)
  ref = jax.jit(lambda x, e, r: kq.exact_codes(_bits.round_to_elem(x, e, elem, rounding, rbits=r), elem))(
      u.view(np.float32), e, rb)
  got = jax.jit(lambda u, e, r: mc.scaled_codes(u, e, elem, rounding, r).astype(jnp.uint8))(u, e, rb)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_backend_choice():
  assert set(_dispatch.DEFAULT_GPU_BACKEND.values()) <= set(_dispatch.GPU_BACKENDS)
  with _dispatch.use_gpu_backend("mosaic"):
    assert _dispatch.gpu_backend() == "mosaic"
    assert _dispatch.impl_key("pallas").startswith("pallas:mosaic")
    assert _dispatch.impl_key("xla") == "xla"
  with _dispatch.use_gpu_backend("triton"):
    assert not _dispatch.impl_key("pallas").startswith("pallas:mosaic")
  with pytest.raises(ValueError, match="backend"):
    with _dispatch.use_gpu_backend("cuda"):
      pass


@pytest.mark.parametrize("fmt,kw,dtype", [
    ("mxfp8_e4m3", {}, jnp.bfloat16), ("mxfp4_e2m1", dict(scale_mode="ceil"), jnp.float32),
    ("nvfp4", dict(rounding="stochastic"), jnp.bfloat16), ("mxint8", dict(rounding="nearest_away"), jnp.float16),
    ("mxfp6_e3m2", dict(rounding="stochastic", scale_mode="rceil"), jnp.bfloat16)])
def test_lowers_for_cuda(fmt, kw, dtype):
  """The compiled Mosaic GPU kernel lowers for CUDA on this CPU host (layout inference and every lowering
  rule run at lowering time)."""
  if kw.get("rounding") == "stochastic":
    kw = dict(kw, key=jax.random.key(0))
  text = _dispatch.lower_for_cuda(lambda x: mx_quantize_mgpu(x, fmt, **kw),
                                  jax.ShapeDtypeStruct((100, 1000), dtype), backend="mosaic")
  assert "mosaic_gpu" in text


def test_public_entry_point_dispatch_lowers_for_cuda():
  """kernels.mx_quantize.mx_quantize compiled for CUDA runs the Mosaic GPU kernel with backend "mosaic" and
  the Triton kernel with backend "triton" (through whatever wrapper the entry point has)."""
  from kernels import mx_quantize
  aval = jax.ShapeDtypeStruct((100, 1000), jnp.bfloat16)
  # two lambdas: jit's trace cache is keyed on the function, not on the (global) backend choice
  mosaic = _dispatch.lower_for_cuda(lambda x: mx_quantize(x, "mxfp8_e4m3", impl="pallas"), aval, backend="mosaic")
  assert "mosaic_gpu" in mosaic and "xla.gpu.triton" not in mosaic
  triton = _dispatch.lower_for_cuda(lambda x: mx_quantize(x, "mxfp8_e4m3", impl="pallas"), aval, backend="triton")
  assert "xla.gpu.triton" in triton and "mosaic_gpu" not in triton
