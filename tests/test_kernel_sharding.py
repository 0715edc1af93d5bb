"""Pallas kernels under jax.jit with NamedSharding inputs (kernels/partitioning.py), 8 fake CPU devices.

Each case compares the sharded call with the unsharded one bit for bit (DP: rows sharded; TP: Megatron column /
row sharding of a Dense weight; a 2-D data x model mesh), checks that every block-straddling sharding raises the
block error, and reads the compiled HLO for collectives. Runs in subprocesses (the device count is fixed when
the CPU backend starts): ``python tests/test_kernel_sharding.py GROUP[,GROUP...]`` runs groups by hand.
"""
import os
import subprocess
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  os.environ.setdefault("NPROC", "32")  # Mosaic GPU's interpreter parks a host thread per warpgroup

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_ERR = "cuts"


def _setup():
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  assert jax.device_count() == 8, jax.devices()
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  # From host memory: device_put of a device-0 array onto a mesh compiles a resharding program per shape and
  # spec (a quarter of group_matmul's time); the same values, the same NamedSharding either way.
  return mesh, lambda x, *spec: jax.device_put(np.asarray(x), NamedSharding(mesh, P(*spec)))


def _same(a, b):
  import numpy as np
  if hasattr(a, "data"):  # QArray
    assert (a.fmt, a.axis, a.shape, a.block_size) == (b.fmt, b.axis, b.shape, b.block_size)
    _same(a.data, b.data)
    _same(a.scales, b.scales)
    assert (a.tensor_scale is None) == (b.tensor_scale is None)
    if a.tensor_scale is not None:
      _same(a.tensor_scale, b.tensor_scale)
    return
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def _hlo(f, *args):
  """The compiled HLO text of ``f`` at ``args``. A jitted ``f`` is lowered as itself: after the test has called
  ``f(*args)`` this is a compile-cache hit that reads the very executable that ran (re-wrapping it in
  ``jax.jit`` would compile a second, equivalent program: a quarter of this file's time)."""
  return (f if hasattr(f, "lower") else jax_mod().jit(f)).lower(*args).compile().as_text()


def _gathered(hlo):
  """Result shapes of the HLO's all-gathers."""
  import re
  return [tuple(int(d) for d in m.group(1).split(",") if d)
          for m in re.finditer(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", hlo)]


def jax_mod():
  import jax
  return jax


def _raises_block_error(f, *args):
  try:
    jax_mod().block_until_ready(f(*args))
  except Exception as e:  # noqa: BLE001 -- raised inside XLA's partitioner: JaxRuntimeError carrying the text
    assert BLOCK_ERR in str(e) and "over mesh ax" in str(e), str(e)[-2000:]
    return str(e)
  raise AssertionError("block-straddling sharding was accepted")


def group_quantize():
  import jax
  import jax.numpy as jnp
  from kernels import mx_quantize
  mesh, put = _setup()
  x = jax.random.normal(jax.random.key(0), (16, 256), jnp.float32) * 4
  w = jax.random.normal(jax.random.key(1), (64, 128), jnp.bfloat16)  # Dense weight (F, D) = W^T, blocks on D
  for fmt in ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4"):
    f = jax.jit(lambda v, fmt=fmt: mx_quantize(v, fmt, impl="pallas"))
    ref_x, ref_w = f(x), f(w)
    cases = [(x, ref_x, ("data", None)),            # DP: rows
             (x, ref_x, ("data", "model")),         # 2-D mesh: rows x blocked axis (128-element pieces)
             (x, ref_x, (None, ("data", "model"))),  # blocked axis 8 ways: 32-element pieces
             (w, ref_w, ("model", None)),           # column parallel: W (D, F) split on F = rows of W^T
             (w, ref_w, (None, "model"))]           # row parallel: W (F, D) split on F = blocked axis of W^T
    for v, ref, spec in cases:
      xs = put(v, *spec)
      q = f(xs)
      _same(q, ref)
      assert q.data.sharding.is_equivalent_to(xs.sharding, 2), (fmt, spec, q.data.sharding)
      hlo = _hlo(f, xs)
      assert not _gathered(hlo), (fmt, spec)
      assert ("all-reduce" in hlo) == (fmt == "nvfp4" and spec != (None, None)), (fmt, spec)  # NVFP4 amax only
  # stochastic rounding: the bits are drawn for the whole tensor, so every sharding rounds alike
  fs = jax.jit(lambda v, k: mx_quantize(v, "mxfp6_e2m3", rounding="stochastic", key=k, impl="pallas"))
  key = jax.random.key(7)
  _same(fs(put(x, "data", "model"), key), fs(x, key))
  # blocks cut across devices: the error names argument, axis, mesh axis, block size
  xb = jax.random.normal(jax.random.key(2), (8, 96), jnp.float32)
  f8 = jax.jit(lambda v: mx_quantize(v, "mxfp8_e4m3", impl="pallas"))
  msg = _raises_block_error(f8, put(xb, None, "model"))
  assert "x: axis 1 of length 96 is split 2 ways over mesh axis 'model' into pieces of 48" in msg, msg
  assert "multiple of 32" in msg
  _raises_block_error(f8, put(x[:, :200], None, "model"))  # 200 % 32 != 0: a padded last block
  _raises_block_error(jax.jit(lambda v: mx_quantize(v, "nvfp4", impl="pallas")), put(xb, None, "data"))
  _raises_block_error(jax.jit(lambda v: mx_quantize(v, "mxfp8_e4m3", impl="pallas")),
                      put(jax.random.normal(jax.random.key(3), (8, 64)), None, ("data", "model")))
  # eager call on a sharded array: a plain ValueError before dispatch
  with pytest.raises(ValueError, match="pieces of 48"):
    mx_quantize(put(xb, None, "model"), "mxfp8_e4m3", impl="pallas")
  # NVFP4 96 over 2 ways = 48 = 3 blocks of 16: fine
  fn = jax.jit(lambda v: mx_quantize(v, "nvfp4", impl="pallas"))
  _same(fn(put(xb, None, "model")), fn(xb))


def group_norm():
  import jax
  import jax.numpy as jnp
  from mx_jax import norms
  mesh, put = _setup()
  x = jax.random.normal(jax.random.key(0), (8, 4, 96), jnp.bfloat16) * 3
  g = (1 + 0.1 * jax.random.normal(jax.random.key(1), (96,))).astype(jnp.bfloat16)
  fns = {
      "rms": lambda v, g: norms.rms_norm(v, g, impl="pallas"),
      "mx": lambda v, g: norms.mx_norm(v, g, impl="pallas"),
      "rmsq": lambda v, g: norms.rms_norm_quantize(v, g, "mxfp8_e4m3", impl="pallas"),
      "mxq": lambda v, g: norms.mx_norm_quantize(v, g, "mxfp4_e2m1", impl="pallas"),
      "rmsq_nvfp4": lambda v, g: norms.rms_norm_quantize(v, g, "nvfp4", impl="pallas"),
      "rmsq_sr": lambda v, g: norms.rms_norm_quantize(v, g, "mxfp8_e5m2", rounding="stochastic",
                                                      key=jax.random.key(3), impl="pallas"),
      "grad": jax.grad(lambda v, g: jnp.sum(norms.rms_norm(v, g, impl="pallas").astype(jnp.float32) ** 2),
                       argnums=(0, 1)),
  }
  for name, fn in fns.items():
    f = jax.jit(fn)
    ref = f(x, g)
    for spec, gathers in ((("data", None, None), False), (("data", "model", None), False),
                          ((None, "data", "model"), True)):  # last axis sharded -> all-gathered (documented)
      xs = put(x, *spec)
      jax.tree.map(_same, f(xs, g), ref, is_leaf=lambda a: hasattr(a, "data") and hasattr(a, "fmt"))
      gathered = _gathered(_hlo(f, xs, g))
      # x is gathered only when its normalized axis is sharded; the gain gradient gathers one (n,) partial
      # sum per shard (2-D), the gain may be gathered (1-D)
      assert any(len(shape) == x.ndim for shape in gathered) == gathers, (name, spec, gathered)


def _xla_gemm(a, b, *, out_dtype, **kw):
  """Stand-in for kernels.mx_matmul.mx_gemm (same contract, batched or not; exact products, FP32 accumulation)."""
  import jax
  import jax.numpy as jnp
  import mx_jax
  nd = a.ndim
  batch = ((0,), (0,)) if nd == 3 else ((), ())
  out = jax.lax.dot_general(mx_jax.dequantize(a, jnp.float32), mx_jax.dequantize(b, jnp.float32),
                            (((nd - 1,), (nd - 1,)), batch), precision=jax.lax.Precision.HIGHEST)
  return out.astype(out_dtype)


def group_matmul():
  """The matmul wrapper's rules, with an XLA stand-in for the Mosaic GPU kernel: its interpreter runs on
  ordered IO callbacks, which custom_partitioning cannot carry (the compiled kernel has none)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import mx_jax
  from kernels import partitioning
  mesh, put = _setup()
  gemm = partitioning.gemm(_xla_gemm)
  a = mx_jax.quantize(jax.random.normal(jax.random.key(0), (64, 256)), "mxfp8_e4m3", axis=1)
  b = mx_jax.quantize(jax.random.normal(jax.random.key(1), (128, 256)), "mxfp4_e2m1", axis=1)

  def shard(q, *spec):
    return q.__class__(put(q.data, *spec), put(q.scales, *spec), None, q.fmt, q.axis, q.shape, q.block_size,
                       q.packed)

  f = jax.jit(lambda a, b: gemm(a, b, out_dtype=jnp.float32))
  ref = jax.jit(lambda a, b: _xla_gemm(a, b, out_dtype=jnp.float32))(a, b)
  _same(f(a, b), ref)
  for sa, sb in ((("data", None), (None, None)),        # DP: rows of the activations
                 ((None, None), ("model", None)),       # column parallel: the weight's N split
                 (("data", None), ("model", None))):    # 2-D: M x N
    a_s, b_s = shard(a, *sa), shard(b, *sb)
    out = f(a_s, b_s)
    _same(out, ref)
    assert out.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        sa[0], sb[0])), 2), out.sharding
    assert not _gathered(_hlo(f, a_s, b_s)), (sa, sb)
  # row parallel: K split over 'model' (128-element pieces): float32 partials + psum, no operand gather
  for ka in ("model", ("data", "model")):
    a_s, b_s = shard(a, None, ka), shard(b, None, ka)
    np.testing.assert_allclose(np.asarray(f(a_s, b_s)), np.asarray(ref), rtol=1e-6, atol=1e-5)
    hlo = _hlo(f, a_s, b_s)
    assert "all-reduce" in hlo and not _gathered(hlo), ka
  # K pieces that cut blocks: 96 over 2 ways
  a3 = mx_jax.quantize(jax.random.normal(jax.random.key(2), (64, 96)), "mxfp8_e4m3", axis=1)
  b3 = mx_jax.quantize(jax.random.normal(jax.random.key(3), (64, 96)), "mxfp8_e4m3", axis=1)
  a3s = a3.__class__(put(a3.data, None, "model"), a3.scales, None, a3.fmt, 1, a3.shape, 32, False)
  msg = _raises_block_error(f, a3s, b3)
  assert "axis 1 of length 96" in msg, msg
  # batched (B, M, K) x (B, N, K): B shards freely (alone, with M / N, or with a K split and its psum)
  a4 = mx_jax.quantize(jax.random.normal(jax.random.key(4), (4, 32, 256)), "mxfp8_e4m3", axis=2)
  b4 = mx_jax.quantize(jax.random.normal(jax.random.key(5), (4, 48, 256)), "mxfp4_e2m1", axis=2)
  ref4 = jax.jit(lambda a, b: _xla_gemm(a, b, out_dtype=jnp.float32))(a4, b4)
  for sa, sb, out_spec in ((("data", None, None), (None, None, None), ("data", None, None)),
                           ((None, None, None), ("data", "model", None), ("data", None, "model")),
                           (("data", "model", None), ("data", None, None), ("data", "model", None))):
    a_s, b_s = shard(a4, *sa), shard(b4, *sb)
    out = f(a_s, b_s)
    # FP32 summation order only: XLA:CPU's f32 batched dot can round an element differently at another batch
    # size (1 ulp of 24576 on an AMD host without AVX-512; bit-identical on others). A mis-sharded operand or
    # scale would be off by whole values.
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref4), rtol=1e-6, atol=1e-5)
    assert out.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*out_spec)),
                                         3), out.sharding
    assert not _gathered(_hlo(f, a_s, b_s)), (sa, sb)
  a_s, b_s = shard(a4, "data", None, "model"), shard(b4, "data", None, "model")
  np.testing.assert_allclose(np.asarray(f(a_s, b_s)), np.asarray(ref4), rtol=1e-6, atol=1e-5)
  hlo = _hlo(f, a_s, b_s)
  assert "all-reduce" in hlo and not _gathered(hlo)
  a5 = mx_jax.quantize(jax.random.normal(jax.random.key(6), (4, 32, 96)), "mxfp8_e4m3", axis=2)
  b5 = mx_jax.quantize(jax.random.normal(jax.random.key(7), (4, 8, 96)), "mxfp8_e4m3", axis=2)
  msg = _raises_block_error(f, a5.__class__(put(a5.data, None, None, "model"), a5.scales, None, a5.fmt, 2, a5.shape,
                                            32, False), b5)
  assert "axis 2 of length 96" in msg, msg


GROUPS = {"quantize": group_quantize, "norm": group_norm, "matmul": group_matmul}
SLOW = ("norm",)  # run with -m slow


def _run(groups):
  return subprocess.run([sys.executable, os.path.abspath(__file__), ",".join(groups)], capture_output=True,
                        text=True, timeout=300 * len(groups), cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))


@pytest.fixture(scope="module")
def fast_groups():
  """The groups not marked slow, in one subprocess (a python + jax + kernels start-up each is ~1-2 s)."""
  return _run([g for g in sorted(GROUPS) if g not in SLOW])


@pytest.mark.parametrize("group", [pytest.param(g, marks=pytest.mark.slow) if g in SLOW else g
                                   for g in sorted(GROUPS)])
def test_kernels_sharded_equal_unsharded(group, request):
  r = _run([group]) if group in SLOW else request.getfixturevalue("fast_groups")
  # a non-zero exit is only allowed when another group of the same run failed (its own FAILED line)
  ok = f"OK {group}" in r.stdout and (r.returncode == 0 or "FAILED " in r.stderr)
  assert ok, (r.stdout[-2000:], r.stderr[-6000:])


if __name__ == "__main__":
  import traceback
  sys.path.insert(0, ROOT)
  failed = False
  for g in sys.argv[1].split(","):  # each group on its own: one failing does not stop the others
    try:
      GROUPS[g]()
      print("OK", g, flush=True)
    except Exception:  # noqa: BLE001
      failed = True
      print(f"FAILED {g}:", file=sys.stderr, flush=True)
      traceback.print_exc()
  sys.exit(1 if failed else 0)
