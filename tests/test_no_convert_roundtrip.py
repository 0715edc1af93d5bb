"""Pitfall (H100, session 4): XLA:GPU folds an ``f32 -> f8 -> f32`` convert pair away (excess precision allowed,
its default), so rounding by a convert round trip silently does nothing there, although it is exact on CPU.
This test cannot see the GPU; it checks the jaxprs of the library's quantizers for the pattern itself: no
value converted to an 8-bit float may be converted back to a wider float inside the same computation."""
import jax
import jax.extend
import jax.numpy as jnp
import pytest

import mx_jax
from mx_jax import mx_block, nvfp4
from mx_jax import formats as F
from mx_jax.dot import quantize_operand

_F8 = {jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2)}


def _roundtrips(jaxpr):
  found = []
  narrowed = set()
  for eqn in jaxpr.eqns:
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _roundtrips(sub)
    if eqn.primitive.name == "convert_element_type":
      src = eqn.invars[0]
      if jnp.dtype(eqn.params["new_dtype"]) in _F8:
        narrowed.add(eqn.outvars[0])
      elif src in narrowed:
        found.append(str(eqn))
  return found


X = jnp.linspace(-3, 3, 4 * 64, dtype=jnp.float32).reshape(4, 64)


@pytest.mark.parametrize("name,fn", [
    ("nvfp4_quantize_blocks", lambda x: nvfp4.nvfp4_quantize_blocks(x, 1, 16, "nearest_even", None, fast=True)),
    ("nvfp4 exact", lambda x: nvfp4.nvfp4_quantize_blocks(x, 1, 16, "nearest_even", None)),
    ("mx fake-quantize fast e4m3", lambda x: mx_block.mx_fake_quantize_fast(x, F.FORMATS["mxfp8_e4m3"].elem, 1,
                                                                            32, "floor")),
    ("operand mxfp8", lambda x: quantize_operand(x, mx_jax.recipe("mxfp8").operands["x"], (1,))[0]),
    ("operand fp8_current", lambda x: quantize_operand(x, mx_jax.recipe("fp8_current").operands["x"], (1,))[0]),
    ("operand nvfp4", lambda x: quantize_operand(x, mx_jax.recipe("nvfp4").operands["x"], (1,))[0]),
])
def test_no_fp8_convert_roundtrip(name, fn):
  assert _roundtrips(jax.make_jaxpr(fn)(X).jaxpr) == [], name


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8_e4m3", "mxfp4_e2m1"])
def test_kernel_bodies_have_no_fp8_convert_roundtrip(fmt):
  """The Pallas quantize kernel's body (inside the pallas_call) is held to the same rule: a convert round trip
  is only safe where no compiler may fold it, and the kernels share their tile code with interpret-mode runs
  that XLA compiles."""
  import importlib
  kq = importlib.import_module("kernels.mx_quantize")  # the package re-exports the function under this name
  jaxpr = jax.make_jaxpr(lambda x: kq.mx_quantize(x, fmt, impl="pallas").data)(X).jaxpr
  assert "pallas_call" in str(jaxpr)  # the detector must reach the kernel body
  assert _roundtrips(jaxpr) == [], fmt


def test_detector_sees_a_roundtrip():
  bad = lambda x: x.astype(jnp.float8_e4m3fn).astype(jnp.float32)
  assert _roundtrips(jax.make_jaxpr(bad)(X).jaxpr)
