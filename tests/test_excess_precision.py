"""Pitfall (session 23): XLA allows excess precision by default and folds a producer's f32 -> bf16 -> f32 convert
pair away, so a quantizer fused with the producer of its bf16 input rounded the unrounded f32 values instead of the
bf16 tensor the model handed it (3 % of a GPT step's MXFP8 codes on the H100, where the Pallas kernels, which read
the materialized bf16 tensor, disagreed with the XLA path; on XLA:CPU too). The quantizers widen bf16 inputs
through ``mx_jax._bits.as_f32``: a reduce_precision to bf16 that no rewrite can drop."""
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import mx_jax
from mx_jax import _bits, fp8_tensor, mx_block, norms, nvfp4
from mx_jax import formats as F
from mx_jax.dot import quantize_operand

_BF16, _F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def _unpinned_widenings(jaxpr):
  """bf16 -> f32 converts whose result is used by anything but a reduce_precision to bf16 (8, 7)."""
  bad, widened = [], {}
  for eqn in jaxpr.eqns:
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      bad += _unpinned_widenings(sub)
    if (eqn.primitive.name == "convert_element_type" and eqn.invars[0].aval.dtype == _BF16
        and jnp.dtype(eqn.params["new_dtype"]) == _F32):
      widened[eqn.outvars[0]] = str(eqn)
      continue
    pin = (eqn.primitive.name == "reduce_precision" and eqn.params["exponent_bits"] == 8
           and eqn.params["mantissa_bits"] == 7)
    for v in eqn.invars:
      if not pin and isinstance(v, jax.extend.core.Var) and v in widened:
        bad.append(widened[v] + "  used by  " + eqn.primitive.name)
  return bad


X = jnp.linspace(-3, 3, 4 * 64, dtype=jnp.float32).reshape(4, 64).astype(jnp.bfloat16)
E4M3 = F.FORMATS["mxfp8_e4m3"].elem


@pytest.mark.parametrize("name,fn", [
    ("quantize mxfp8", lambda x: mx_jax.quantize(x, "mxfp8_e4m3", axis=0).data),
    ("quantize mxfp4", lambda x: mx_jax.quantize(x, "mxfp4_e2m1").data),
    ("fake_quantize mxfp8", lambda x: mx_jax.fake_quantize(x, "mxfp8_e4m3")),
    ("mx fast path", lambda x: mx_block.mx_quantize_fast(x, E4M3, 1, 32, "floor")[0]),
    ("nvfp4", lambda x: nvfp4.nvfp4_quantize_blocks(x, 1, 16, "nearest_even", None)[0]),
    ("fp8 per-tensor", lambda x: fp8_tensor.fp8_quantize(x, fp8_tensor.compute_scale(fp8_tensor.finite_amax(x),
                                                                                        E4M3), E4M3,
                                                         "nearest_even", None, True)[0]),
    ("operand mxfp8", lambda x: quantize_operand(x, mx_jax.recipe("mxfp8").operands["x"], (1,))[0]),
    ("operand fp8_current", lambda x: quantize_operand(x, mx_jax.recipe("fp8_current").operands["x"], (1,))[0]),
    ("operand nvfp4", lambda x: quantize_operand(x, mx_jax.recipe("nvfp4").operands["x"], (1,))[0]),
    ("rms_norm_quantize via bf16", lambda x: norms.rms_norm_quantize(x * jnp.float32(1.5), None,  # f32 in
                                                                     intermediate_dtype=jnp.bfloat16,
                                                                     impl="xla").data),
])
def test_bf16_inputs_are_pinned(name, fn):
  x = X.astype(jnp.float32) if name.startswith("rms_norm") else X
  jaxpr = jax.make_jaxpr(fn)(x).jaxpr
  assert _unpinned_widenings(jaxpr) == [], name
  assert "reduce_precision" in str(jaxpr), name  # the detector saw a pinned widening


class _Block(nn.Module):
  @nn.compact
  def __call__(self, h):
    a = nn.MultiHeadDotProductAttention(2, dtype=jnp.bfloat16)(nn.RMSNorm(dtype=jnp.bfloat16)(h))
    h = h + a
    up = nn.Dense(256, dtype=jnp.bfloat16, use_bias=False)(nn.RMSNorm(dtype=jnp.bfloat16)(h))
    return h + nn.Dense(128, dtype=jnp.bfloat16, use_bias=False)(nn.gelu(up))


@pytest.mark.slow  # CI: suite time (three compiles of a transformer block); the jaxpr check above runs in CI
def test_transformer_block_quantizes_the_bf16_tensors(monkeypatch):
  """A Flax transformer block (bf16 compute, every Dense and attention matmul in MXFP8 on XLA's path): its output
  with the pin equals the output with every quantizer input materialized (an optimization barrier: the bf16
  tensor the program defines); without the pin XLA:CPU folds roundings away and the output differs."""
  h = jax.random.normal(jax.random.key(0), (1, 64, 128), jnp.float32)
  m = mx_jax.quantize_model(_Block(), "mxfp8")
  v = m.init(jax.random.key(1), h)
  real = _bits.as_f32

  def run(mode):
    monkeypatch.setattr(_bits, "PIN_BF16_INPUTS", mode == "pin")
    monkeypatch.setattr(_bits, "as_f32", (lambda x: real(lax.optimization_barrier(x))) if mode == "barrier" else real)
    jax.clear_caches()
    return np.asarray(jax.jit(m.apply)(v, h), np.float32)

  barrier, pin, plain = run("barrier"), run("pin"), run("plain")
  np.testing.assert_array_equal(pin, barrier)
  assert not np.array_equal(plain, barrier), "XLA no longer folds the pair here: the pin may be unnecessary"
