"""Public transforms: argument validation, transforms (jit/vmap/grad/sharding), packing, storage size,
odd shapes and axes, per-channel FP8, delayed scaling. Numerics vs the spec live in test_formats_*."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

import mx_jax
from mx_jax import _bits, scaling

from covering import covering

BLOCK_FMTS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4"]


def _x(shape, seed=0, scale=3.0):
  return jax.random.normal(jax.random.key(seed), shape) * scale


@pytest.mark.parametrize("call,exc,match", [
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp9"), ValueError, "fmt must be one of"),
    (lambda: mx_jax.quantize(jnp.ones(32, jnp.int32), "mxfp8_e4m3"), TypeError, "x must be a floating"),
    (lambda: mx_jax.quantize(jnp.ones((4, 32)), "mxfp8_e4m3", axis=2), ValueError, "axis=2 is out of range"),
    (lambda: mx_jax.quantize(jnp.ones((4, 32)), "mxfp8_e4m3", axis=1.0), TypeError, "axis must be an int"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", block_size=24), ValueError, "block_size for 'mxfp8_e4m3'"),
    (lambda: mx_jax.quantize(jnp.ones(32), "nvfp4", block_size=32), ValueError, "block_size for 'nvfp4'"),
    (lambda: mx_jax.quantize(jnp.ones(32), "fp8_e4m3", block_size=32), ValueError, "block_size does not apply"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", rounding="stochastic"), ValueError, "needs key"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", rounding="up"), ValueError, "rounding must be one of"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", scale_mode="round"), ValueError, "scale_mode must be one of"),
    (lambda: mx_jax.quantize(jnp.ones(32), "nvfp4", scale_mode="ceil"), ValueError, "applies to MX formats only"),
    (lambda: mx_jax.quantize(jnp.ones(32), "fp8_e4m3", granularity="block"), ValueError, "granularity must be"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", granularity="tensor"), ValueError, "granularity must be 'block'"),
    (lambda: mx_jax.quantize(jnp.float32(1.0), "mxfp8_e4m3"), ValueError, "rank >= 1"),
    (lambda: mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3", scale=2.0), ValueError, "scale= applies"),
    (lambda: mx_jax.quantize(jnp.ones(32), "fp8_e4m3", scale=jnp.ones(2)), ValueError, "scale must be a scalar"),
    (lambda: mx_jax.quantize(jnp.ones(32), "fp8_e4m3", margin=-1), ValueError, "margin must be"),
    (lambda: mx_jax.dequantize(jnp.ones(3)), TypeError, "q must be a QArray"),
    (lambda: mx_jax.dequantize(mx_jax.quantize(jnp.ones(32), "mxfp8_e4m3"), jnp.int8), TypeError, "dtype must be"),
    (lambda: mx_jax.pack(jnp.ones(3)), TypeError, "q must be a QArray"),
    (lambda: mx_jax.fake_quantize(jnp.ones(32), "mxint8", rounding="stochastic"), ValueError, "needs key"),
    (lambda: mx_jax.quantized_dot_general(jnp.ones((2, 32)), jnp.ones((32, 4)), (((1,), (0,)), ((), ())),
                                          "mxfp8", out_sharding="data"), TypeError, "out_sharding must be"),
    (lambda: mx_jax.dot_general("mxfp8")(jnp.ones((2, 32)), jnp.ones((32, 4)), (((1,), (0,)), ((), ())),
                                         out_sharding=0), TypeError, "out_sharding must be"),
    (lambda: scaling.init_delayed(0), ValueError, "history_len"),
    (lambda: scaling.update_delayed(scaling.init_delayed(4), 1.0, "mxfp8_e4m3"), ValueError, "per-tensor"),
    (lambda: scaling.update_delayed(scaling.init_delayed(4), 1.0, "fp8_e4m3", algo="mean"), ValueError, "algo"),
])
def test_bad_input_names_the_argument(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


# Each format with 2 of the 5 shapes in CI (every shape meets 2-3 formats); the full 7 x 5 grid is slow.
@pytest.mark.parametrize("fmt,shape_axis", covering(
    BLOCK_FMTS, [((70,), 0), ((3, 45), 1), ((33, 5), 0), ((2, 37, 3), 1), ((4, 2, 50), -1)], per=2, ids=str))
def test_any_axis_any_length_round_trips_shape(fmt, shape_axis):
  shape, axis = shape_axis
  x = _x(shape)
  q = mx_jax.quantize(x, fmt, axis=axis)
  d = mx_jax.dequantize(q)
  assert d.shape == x.shape and q.shape == x.shape
  # Quantizing along `axis` equals quantizing the moved-to-last copy along -1 (padding is internal).
  d2 = mx_jax.fake_quantize(jnp.moveaxis(x, axis, -1), fmt)
  np.testing.assert_array_equal(np.asarray(jnp.moveaxis(d, axis, -1)), np.asarray(d2))
  if fmt != "nvfp4":  # nvfp4's tensor scale is global; MX blocks are independent of zero padding
    xp = jnp.concatenate([x, jnp.zeros_like(x)], axis=axis)
    dp = mx_jax.fake_quantize(xp, fmt, axis=axis)
    np.testing.assert_array_equal(np.asarray(lax.slice_in_dim(dp, 0, x.shape[axis], axis=axis)), np.asarray(d))


@pytest.mark.parametrize("fmt", BLOCK_FMTS + ["fp8_e4m3", "fp8_e5m2"])
def test_pack_unpack_and_true_storage_size(fmt):
  x = _x((6, 64))
  q = mx_jax.quantize(x, fmt)
  p = mx_jax.pack(q)
  u = mx_jax.unpack(p)
  np.testing.assert_array_equal(np.asarray(u.data).view(np.uint8), np.asarray(q.data).view(np.uint8))
  np.testing.assert_array_equal(np.asarray(mx_jax.dequantize(p)), np.asarray(mx_jax.dequantize(q)))
  bits = q.format.elem.bits
  scale_bytes = q.scales.size * q.scales.dtype.itemsize + (4 if q.tensor_scale is not None else 0)
  assert p.nbytes == 6 * 64 * bits // 8 + scale_bytes
  assert p.data.dtype == jnp.uint8


def test_fp4_packing_layout_is_low_nibble_first():
  x = jnp.array([0.5, 6.0] + [0.0] * 30)  # amax 6 -> scale 2^0 for E2M1: codes 0x1 and 0x7
  p = mx_jax.quantize(x, "mxfp4_e2m1", packed=True)
  assert int(p.data[0]) == 0x71
  q6 = mx_jax.quantize(jnp.array([28.0, -0.0625, 1.0, 0.25] + [0.0] * 28), "mxfp6_e3m2", packed=True)
  w = int(q6.data[0]) | int(q6.data[1]) << 8 | int(q6.data[2]) << 16
  codes = [(w >> (6 * i)) & 0x3F for i in range(4)]
  ref = np.array([28.0, -0.0625, 1.0, 0.25], np.float32).astype(ml_dtypes.float6_e3m2fn).view(np.uint8)
  assert codes == list(ref)


def test_fp6_data_view_as_ml_dtypes_on_host():
  x = _x((2, 32))
  q = mx_jax.quantize(x, "mxfp6_e2m3")
  vals = np.asarray(q.data).view(ml_dtypes.float6_e2m3fn).astype(np.float32)
  np.testing.assert_array_equal(vals, np.asarray(mx_jax.mx_block.__dict__ and
                                                 mx_jax._bits.from_elem_dtype(q.data, q.format.elem)))


@pytest.mark.parametrize("fmt", BLOCK_FMTS + ["fp8_e4m3"])
def test_jit_vmap_grad(fmt):
  x = _x((4, 64), seed=1)
  f = lambda x: mx_jax.fake_quantize(x, fmt)
  np.testing.assert_array_equal(np.asarray(jax.jit(f)(x)), np.asarray(f(x)))
  if fmt != "nvfp4" and fmt != "fp8_e4m3":  # global scales: vmap rows != whole-tensor scale
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(x)), np.asarray(f(x)))
  else:
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(x)[2]), np.asarray(f(x[2])))
  g = jax.grad(lambda x: jnp.sum(f(x) * jnp.arange(64.0)))(x)  # straight-through
  np.testing.assert_array_equal(np.asarray(g), np.broadcast_to(np.arange(64.0), x.shape))
  q = jax.jit(lambda x: mx_jax.quantize(x, fmt))(x)  # QArray crosses jit boundaries as a pytree
  assert isinstance(q, mx_jax.QArray)


def test_fake_quantize_under_jit_is_not_folded_away():
  x = jnp.full((32,), 1.0001, jnp.float32)
  y = jax.jit(lambda x: mx_jax.fake_quantize(x, "mxfp8_e4m3"))(x)
  assert bool(jnp.all(y == 1.0))
  y = jax.jit(lambda x: mx_jax.fake_quantize(x, "fp8_e5m2", scale=jnp.float32(1.0)))(x)
  assert bool(jnp.all(y == 1.0))


def test_bf16_input_and_output_dtypes():
  x = _x((4, 64)).astype(jnp.bfloat16)
  for fmt in BLOCK_FMTS:
    y = mx_jax.fake_quantize(x, fmt)
    assert y.dtype == jnp.bfloat16
    d32 = mx_jax.dequantize(mx_jax.quantize(x, fmt))
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(d32.astype(jnp.bfloat16), np.float32))


def test_per_channel_fp8():
  w = _x((64, 8)) * jnp.arange(1, 9.0)
  q = mx_jax.quantize(w, "fp8_e4m3", granularity="channel", axis=0)
  assert q.scales.shape == (1, 8)
  np.testing.assert_allclose(np.asarray(1 / q.scales[0]), 448.0 / np.max(np.abs(np.asarray(w)), 0), rtol=1e-6)
  d = mx_jax.dequantize(q)
  assert float(jnp.max(jnp.abs(d - w) / jnp.max(jnp.abs(w), 0))) < 2 ** -4


def test_delayed_scaling_history_and_nan_filter():
  st = scaling.init_delayed(3)
  xs = [jnp.full((8,), v) for v in (2.0, 8.0, 1.0, 1.0, 1.0)]
  scales = []
  for x in xs:
    q, st = scaling.quantize_delayed(x, "fp8_e4m3", st)
    scales.append(float(st.scale))
  # max over the last 3 amaxes: [2], [8,2], [1,8,2], [1,1,8], [1,1,1]
  np.testing.assert_allclose(scales, [224.0, 56.0, 56.0, 56.0, 448.0])
  st2 = scaling.update_delayed(st, jnp.float32(jnp.nan), "fp8_e4m3")
  assert bool(jnp.all(jnp.isfinite(st2.amax_history))) and float(st2.scale) == 448.0
  zero = scaling.update_delayed(scaling.init_delayed(2), 0.0, "fp8_e4m3")
  assert float(zero.scale) == 1.0  # amax 0 keeps the previous scale (initially 1)
  mr = scaling.update_delayed(scaling.update_delayed(scaling.init_delayed(4), 8.0, "fp8_e4m3"), 2.0,
                              "fp8_e4m3", algo="most_recent")
  assert float(mr.scale) == 224.0
  jax.jit(lambda s, a: scaling.update_delayed(s, a, "fp8_e5m2", margin=1))(st, jnp.float32(3.0))


def test_zero_amax_per_tensor_gives_scale_one_and_zeros():
  q = mx_jax.quantize(jnp.zeros((4, 4)), "fp8_e4m3")
  assert float(q.scales) == 1.0 and bool(jnp.all(mx_jax.dequantize(q) == 0))


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import mx_jax
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    x = jax.random.normal(jax.random.key(0), (64, 128))
    xs = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    for fmt in ["mxfp8_e4m3", "mxfp4_e2m1", "mxfp6_e3m2", "nvfp4", "fp8_e4m3"]:
        f = jax.jit(lambda x: mx_jax.fake_quantize(x, fmt))
        np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(f(xs)))
        q = jax.jit(lambda x: mx_jax.quantize(x, fmt))(xs)
        np.testing.assert_array_equal(np.asarray(mx_jax.dequantize(q)), np.asarray(f(x)))
    print("SHARDED_OK")
""")


def test_sharded_inputs_give_identical_results():
  r = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"),
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "SHARDED_OK" in r.stdout, r.stderr[-3000:]


def test_einsum_and_quantize_model_reject_bad_input():
  a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
  with pytest.raises(ValueError, match="eqn must be an explicit two-operand einsum"):
    mx_jax.einsum("ab,bc", a, b)
  with pytest.raises(ValueError, match="eqn labels 'abc'"):
    mx_jax.einsum("abc,bc->ac", a, b)
  with pytest.raises(TypeError, match="model must be"):
    mx_jax.quantize_model(object(), "mxfp8")
  import flax.linen as nn
  with pytest.raises(TypeError, match="include must be a sequence"):
    mx_jax.quantize_model(nn.Dense(4), "mxfp8", include="mlp")
  with pytest.raises(ValueError, match="recipe name"):
    mx_jax.quantize_model(nn.Dense(4), "mxfp9")


def test_element_codes_match_the_spec_codes_and_reject_bad_input():
  """packing.element_codes (the kernels' uint8 element codes) equals the codes of the spec reference for every
  MX element format, and names its argument when misused."""
  from mx_jax.packing import element_codes, pack
  from tests.spec_reference import ref_mx_quantize
  x = jax.random.normal(jax.random.key(7), (4, 64)) * 3
  for fmt in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"):
    q = mx_jax.quantize(x, fmt, axis=1)
    elems, _, _ = ref_mx_quantize(np.asarray(x), fmt, axis=1)
    got = np.asarray(element_codes(q))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(_bits.code_to_elem(jnp.asarray(got), q.format.elem)), elems, err_msg=fmt)
  with pytest.raises(TypeError, match="q must be a QArray"):
    element_codes(np.zeros((2, 32)))
  with pytest.raises(ValueError, match="packed"):
    element_codes(pack(mx_jax.quantize(x, "mxfp4_e2m1", axis=1)))
