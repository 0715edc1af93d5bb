"""The cast-transpose kernel (kernels/mx_cast_transpose.py) against the paths it replaces, on the GPT step's shapes.

Per shape (device µs per call from the profiler, every kernel of the call; bytes = bf16 read + FP8 codes + E8M0
scales written once):
  col:  XLA's in-place quantization along the axis, then the 1-byte transpose into the kernels' layout (the
        kernel path's operand before) | the cast-transpose kernel;
  dual: the Pallas last-axis quantizer + the XLA col path (the gradient's two quantizations before) | the kernel
        with ``rowwise=True`` (both from one read).
Each kernel output is checked bit for bit against the path it replaces. ``--sweep``: tile shapes / warps.
``--smoke``: small shapes in the interpreter (a CPU check of this script).
"""
from __future__ import annotations

import argparse
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax
from benchmarks.profile_util import file_logger, median_ms, top_kernels
from kernels import mx_quantize
from kernels.mx_cast_transpose import mx_cast_transpose
from mx_jax import dot as D

# (shape, axis, what it is in the 135M GPT step)
COL = [((8192, 768), 0, "x / g (768 wide) for a weight gradient"),
       ((8192, 3072), 0, "x / g (3072 wide) for a weight gradient"),
       ((768, 3072), 0, "a weight along K (forward)"),
       ((96, 1024, 1024), 1, "P along q (dV)"),
       ((96, 1024, 64), 1, "Q / dO along q (dK / dV)")]
DUAL = [((8192, 768), 0, "a Dense layer's gradient (dgrad + wgrad)"),
        ((8192, 3072), 0, "mlp_in's gradient"),
        ((96, 1024, 1024), 1, "attention's dS"),
        ((96, 1024, 64), 1, "attention's dO")]


def _data(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 6, shape[:-1] + (1,)))
  return jnp.asarray(x, jnp.bfloat16)


def _xla_col(x, axis, spec):
  q = D.quantize_operand_q(x, spec, (axis,))[0]
  return jnp.moveaxis(q.data, axis, -1), jnp.moveaxis(q.scales, axis, -1)


def _device_us(fn, x, calls):
  """Device µs per call (the profiler); wall µs where it sees no device (the CPU smoke run)."""
  return top_kernels(fn, x, calls=calls, n=1)[1] or 1e3 * median_ms(fn, x, iters=calls)


def _pair(q):
  return q.data, q.scales


def _same(a, b):
  u = lambda v: np.asarray(jax.lax.bitcast_convert_type(v, jnp.uint8))  # noqa: E731
  return all(np.array_equal(u(p), u(q)) for p, q in zip(a, b))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--calls", type=int, default=10)
  p.add_argument("--sweep", action="store_true")
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  spec = mx_jax.recipe("mxfp8").operands["g_wgrad"]
  fmt = spec.fmt
  log = file_logger(a.out, "cast_transpose.log")
  shrink = (lambda s: tuple(max(d // 32, 32) if d > 64 else d for d in s)) if a.smoke else (lambda s: s)
  rows = []
  for (shape, axis, what), dual in itertools.chain(((c, False) for c in COL), ((c, True) for c in DUAL)):
    shape = shrink(shape)
    x = _data(shape)
    n = x.size
    if dual:
      old = jax.jit(lambda x: (_pair(mx_quantize(x, fmt, impl="pallas")), _xla_col(x, axis, spec)))
      new = jax.jit(lambda x: [_pair(q) for q in mx_cast_transpose(x, fmt, axis=axis, rowwise=True, impl="pallas")])
      nbytes = n * 2 + 2 * (n + n // 32)
    else:
      old = jax.jit(lambda x: _xla_col(x, axis, spec))
      new = jax.jit(lambda x: _pair(mx_cast_transpose(x, fmt, axis=axis, impl="pallas")[1]))
    if not dual:
      nbytes = n * 2 + n + n // 32
    o_old, o_new = old(x), new(x)
    same = _same(jax.tree.leaves(o_old), jax.tree.leaves(o_new))
    t_old = _device_us(old, x, a.calls)
    t_new = _device_us(new, x, a.calls)
    kind = "dual" if dual else "col "
    log(f"{kind} {str(shape):18s} axis {axis}  before {t_old:7.1f} µs ({nbytes / t_old / 1e6:4.2f} TB/s)  kernel "
        f"{t_new:7.1f} µs ({nbytes / t_new / 1e6:4.2f} TB/s)  x{t_old / t_new:.2f}  same bits {same}  [{what}]")
    row = dict(kind=kind.strip(), shape=shape, axis=axis, before_us=t_old, kernel_us=t_new, bytes=nbytes, same=same)
    if a.sweep:
      for tr, tc, nw in itertools.product((32, 64, 128), (64, 128), (4, 8)):
        f = jax.jit(lambda x, tr=tr, tc=tc, nw=nw: jax.tree.leaves(
            [_pair(q) for q in mx_cast_transpose(x, fmt, axis=axis, rowwise=dual, impl="pallas",
                                                         block_rows=tr, block_cols=tc, num_warps=nw) if q is not None]))
        try:
          us = _device_us(f, x, a.calls)
        except Exception as e:  # noqa: BLE001  (a tile that does not compile)
          log(f"      tr {tr:3d} tc {tc:3d} warps {nw}: ERR {type(e).__name__}: {str(e)[:80]}")
          continue
        row[f"t{tr}x{tc}w{nw}"] = us
        log(f"      tr {tr:3d} tc {tc:3d} warps {nw}: {us:7.1f} µs ({nbytes / us / 1e6:4.2f} TB/s)")
    rows.append(row)
  if a.out:
    with open(f"{a.out}/cast_transpose.json", "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
