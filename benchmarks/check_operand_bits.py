"""On the device: are the kernel GEMM path's quantized operands the spec's, on a real training step's tensors?

Runs one forward + backward of bench_train_step's GPT (``--layers``, attention quantized) with ``mxfp8@pallas``,
and for every operand the kernel path quantizes (``mx_jax.dot.quantize_operand_q`` and the gradients' one-read
``_dual_quantized``) also computes XLA's fast path and the spec path (``mx_jax.quantize``: integer rounding) of the
same tensor, and prints at run time how many element codes / scale bytes of each differ from the spec's, with the
first few differing inputs (bf16 bits). Layouts are normalized (quantized axis last) before comparing.

    python -m benchmarks.check_operand_bits --layers 2 [--no-pin]

Session 23 found the kernel quantizers "wrong" here by this check, and the cause in the reference instead: XLA:GPU
(excess precision allowed) folded the producers' f32 -> bf16 -> f32 pair inside the fused spec / fast paths, which
then quantized unrounded f32 values; ``mx_jax._bits.as_f32`` pins the bf16 rounding (``--no-pin`` undoes it).
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

import mx_jax
from benchmarks.bench_train_step import GPT, make_train_step
from mx_jax import dot as D
from mx_jax.formats import get_format


def _norm(q):
  """(codes as uint8 with the quantized axis last, flattened; scale bytes likewise)."""
  d = jnp.moveaxis(q.data, q.axis, -1)
  s = jnp.moveaxis(q.scales, q.axis, -1)
  return (jax.lax.bitcast_convert_type(d, jnp.uint8).reshape(-1, d.shape[-1]),
          jax.lax.bitcast_convert_type(s, jnp.uint8).reshape(-1, s.shape[-1]))


def _report(label, q, m, ax, spec):
  f = get_format(spec.fmt)
  ref = mx_jax.quantize(m, f.name, axis=ax, block_size=spec.block_size, scale_mode=spec.scale_mode)
  qd, qs = _norm(q)
  rd, rs = _norm(ref)
  n = rd.shape[-1]
  qd = qd[:, :n]
  bad_d = qd != rd
  bad_s = qs[:, :rs.shape[-1]] != rs
  xm = jax.lax.bitcast_convert_type(jnp.moveaxis(m, ax, -1).astype(jnp.bfloat16), jnp.uint16).reshape(-1, m.shape[ax])
  pad = rd.shape[-1] - xm.shape[-1]
  if pad:
    xm = jnp.pad(xm, ((0, 0), (0, pad)))
  idx = jnp.argmax(bad_d.reshape(-1))
  jax.debug.print(label + " {s}: codes != spec {a} / {n}, scales != spec {b} / {ns}; first: x bits {x:#06x} "
                  "got {g:#04x} spec {r:#04x}", s=str(m.shape), a=bad_d.sum(), n=bad_d.size, b=bad_s.sum(),
                  ns=bad_s.size, x=xm.reshape(-1)[idx], g=qd.reshape(-1)[idx], r=rd.reshape(-1)[idx])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--no-pin", action="store_true", help="mx_jax._bits.PIN_BF16_INPUTS = False (plain bf16 widening)")
  a = p.parse_args()
  from mx_jax import _bits
  _bits.PIN_BF16_INPUTS = not a.no_pin
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  real_q, real_dual = D.quantize_operand_q, D._dual_quantized

  def quantize_operand_q(x, spec, axes, *, key=None, salt="", pallas_quant=False):
    out = real_q(x, spec, axes, key=key, salt=salt, pallas_quant=pallas_quant)
    if get_format(spec.fmt).kind == "mx" and spec.rounding == "nearest_even":
      q, m, ax, _ = out
      _report(f"[{salt} {'pallas' if pallas_quant else 'xla'}]", q, m, ax, spec)
      if pallas_quant:  # XLA's fast path on the same tensor
        qx, mx_, axx, _ = real_q(x, spec, axes, key=key, salt=salt, pallas_quant=False)
        _report(f"[{salt} xla-fast]", qx, mx_, axx, spec)
    return out

  def _dual_quantized(g, spec, row_axes, col_axes):
    out = real_dual(g, spec, row_axes, col_axes)
    if out is not None:
      for nm, (q, m, ax, _) in zip(("dual-row", "dual-col"), out):
        _report(f"[g {nm}]", q, m, ax, spec)
    return out

  D.quantize_operand_q, D._dual_quantized = quantize_operand_q, _dual_quantized
  model = GPT(layers=a.layers)
  tok = jax.random.randint(jax.random.key(1), (a.batch, a.seq + 1), 0, model.vocab)
  _, st, _ = make_train_step("mxfp8@pallas", model, tok, ["embed", "head"])

  def loss_fn(p, tok):
    logits = st.apply_fn(p, tok[:, :-1]).astype(jnp.float32)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, 1:, None], -1))

  loss, _ = jax.jit(jax.value_and_grad(loss_fn))(st.params, tok)
  jax.block_until_ready(loss)
  print(f"loss {float(loss):.6f}", flush=True)


if __name__ == "__main__":
  main()
