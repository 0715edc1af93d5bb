"""The block-scaled kernel on the GEMM shapes of the 135M GPT train step (bench_train_step), one process.

For each ([B x] M, N, K) the step runs on the kernel (forward, input and weight gradients, attention's q.k and
p.v): device µs per call (every kernel of the call, profiler) of
  * ``bf16``: XLA's bf16 GEMM (cuBLAS), FP32 accumulation, bf16 out, on the dequantized operands;
  * ``s21``: the kernel as session 21 ran it (no split-K, 128-wide tiles, FP32 out cast by XLA);
  * ``new``: today's default config (split-K from the wave model, 64-wide tiles for a 64-wide side, bf16 out
    rounded in the epilogue), and ``--splits`` forced split-K values on the few-tile shapes.
Checks on the GPU: ``new`` against an f64 dot of the dequantized operands, and the epilogue's bf16 rounding
bit for bit against the FP32 kernel output cast by XLA.

    python -m benchmarks.bench_step_gemms [--splits 1,2,3,4,6,8] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import mx_jax
from benchmarks.profile_util import file_logger, top_kernels
from kernels import mx_matmul as glue

# (B, M, N, K) of the step's kernel GEMMs (B = 1: unbatched), from tracing bench_train_step's mxfp8@pallas step.
SHAPES = [(1, 8192, 768, 768), (1, 8192, 3072, 768), (1, 8192, 768, 3072),  # forward and input gradients
          (1, 768, 768, 8192), (1, 768, 3072, 8192), (1, 3072, 768, 8192),  # weight gradients (K = tokens)
          (96, 1024, 1024, 64), (96, 1024, 64, 1024), (96, 64, 1024, 1024)]  # q.k, p.v and their gradients


def _operands(b, m, n, k, seed=0):
  rng = np.random.default_rng(seed)
  lead = (b,) if b > 1 else ()
  x = jnp.asarray(rng.standard_normal(lead + (m, k)), jnp.bfloat16)
  y = jnp.asarray(rng.standard_normal(lead + (n, k)), jnp.bfloat16)
  return (mx_jax.quantize(x, "mxfp8_e4m3", axis=-1), mx_jax.quantize(y, "mxfp8_e4m3", axis=-1))


def session21_config(cfg, k: int):
  """Today's default ``cfg`` for a K of ``k`` as session 21 chose it: no split-K and, for the FP8 design,
  128-wide tiles with the warpgroups split along M and a 256-deep stage unless K <= 128."""
  cfg = dataclasses.replace(cfg, split_k=1)
  if cfg.variant != "fp8":
    return cfg
  return dataclasses.replace(cfg, tile_n=128, wg_dim="M", tile_k=cfg.tile_k if k <= 128 else 256)


def _sweep_configs(base):
  r = dataclasses.replace
  return [r(base, tile_k=128, max_concurrent_steps=s) for s in (2, 3, 4)] + [
      r(base, tile_k=64, max_concurrent_steps=s) for s in (4, 6)] + [
      r(base, pair=False), r(base, grid_minor="M"), r(base, grid_tile_width=4), r(base, grid_tile_width=16),
      r(base, tile_k=128, max_concurrent_steps=4, grid_minor="M")]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--splits", default="1,2,3,4,6,8", help="forced split-K values on the weight-gradient shapes")
  p.add_argument("--calls", type=int, default=5)
  p.add_argument("--sweep", action="store_true", help="other tile configs on the M = 8192 shapes")
  p.add_argument("--out", default=None)
  p.add_argument("--smoke", action="store_true", help="CPU check of this script: small shapes, interpreted")
  a = p.parse_args()
  shapes = SHAPES
  if a.smoke:  # the same shapes / 32 (attention's 64-wide sides kept), in the kernel interpreter
    shapes = [(min(b, 2), max(m // 32, 64 if m == 64 else 1), max(n // 32, 64 if n == 64 else 1), k if k == 64
               else max(k // 32, 32)) for b, m, n, k in SHAPES]
    glue.mx_gemm = functools.partial(glue.mx_gemm, interpret=True)
  log = file_logger(a.out, "step_gemms.log")
  rows = []
  for (bsz, m, n, k) in shapes:
    qa, qb = _operands(bsz, m, n, k)
    da, db = mx_jax.dequantize(qa, jnp.bfloat16), mx_jax.dequantize(qb, jnp.bfloat16)
    bd = ((0,), (0,)) if bsz > 1 else ((), ())
    cd = ((qa.ndim - 1,), (qb.ndim - 1,))
    bf16 = jax.jit(lambda x, y: lax.dot_general(x, y, (cd, bd), preferred_element_type=jnp.float32)
                   .astype(jnp.bfloat16))
    cfg_new = glue.fit_gemm_config(glue.default_gemm_config(m, n, k, qa.fmt, qb.fmt, bsz=bsz), qa.fmt, qb.fmt,
                                   jnp.bfloat16)
    if a.smoke and k >= 32 * 8:
      cfg_new = dataclasses.replace(cfg_new, split_k=2)
    cfg21 = glue.fit_gemm_config(session21_config(glue.default_gemm_config(m, n, k, qa.fmt, qb.fmt, bsz=bsz), k),
                                 qa.fmt, qb.fmt, jnp.float32)
    kern = lambda cfg, dt: jax.jit(lambda x, y: glue.mx_gemm(x, y, out_dtype=dt, config=cfg))  # noqa: E731
    s21 = jax.jit(lambda x, y: glue.mx_gemm(x, y, out_dtype=jnp.float32, config=cfg21).astype(jnp.bfloat16))
    new, new32 = kern(cfg_new, jnp.bfloat16), kern(cfg_new, jnp.float32)
    flops = 2 * bsz * m * n * k
    ref = np.einsum("...mk,...nk->...mn", np.asarray(da, np.float64), np.asarray(db, np.float64))
    out16, out32 = new(qa, qb), new32(qa, qb)
    got = np.asarray(out32, np.float64)  # the accumulation, before the bf16 rounding
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    same = bool(np.array_equal(np.asarray(out16), np.asarray(out32.astype(jnp.bfloat16))))
    t = {nm: max(top_kernels(f, qa, qb, calls=a.calls, n=1)[1], 1e-9) for nm, f in (("s21", s21), ("new", new))}
    t["bf16"] = top_kernels(bf16, da, db, calls=a.calls, n=1)[1]
    line = (f"B{bsz:3d} M{m:5d} N{n:5d} K{k:5d}  bf16 {t['bf16']:7.1f} µs  s21 {t['s21']:7.1f} ({cfg21.name()})  "
            f"new {t['new']:7.1f} ({cfg_new.name()})  new/bf16 x{t['bf16'] / t['new']:.2f}  s21->new "
            f"x{t['s21'] / t['new']:.2f}  {flops / t['new'] / 1e6:.0f} TFLOP/s  rel.err {rel:.1e}  "
            f"epilogue-bf16==cast {same}")
    log(line)
    row = dict(shape=(bsz, m, n, k), bf16_us=t["bf16"], s21_us=t["s21"], new_us=t["new"], cfg=cfg_new.name(),
               cfg21=cfg21.name(), rel_err=rel, epilogue_cast_equal=same)
    if m * n * bsz <= 3072 * 768:  # few output tiles: the forced split-K values
      for s in map(int, a.splits.split(",")):
        c = dataclasses.replace(cfg_new, split_k=s)
        us = top_kernels(kern(c, jnp.bfloat16), qa, qb, calls=a.calls, n=1)[1]
        row[f"split{s}_us"] = us
        log(f"      split_k {s:2d}: {us:7.1f} µs")
    if a.sweep and (bsz, m) == (1, 8192):  # forward / input-gradient shapes: other tile configs
      for c in _sweep_configs(cfg_new):
        try:
          us = top_kernels(kern(c, jnp.bfloat16), qa, qb, calls=a.calls, n=1)[1]
        except Exception as e:  # noqa: BLE001  (a config that does not fit or lower)
          log(f"      {c.name():40s} ERR {type(e).__name__}: {str(e)[:80]}")
          continue
        row[c.name()] = us
        log(f"      {c.name():40s} {us:7.1f} µs  x{t['bf16'] / us:.2f} bf16")
    rows.append(row)
  if a.out:
    import json
    with open(f"{a.out}/step_gemms.json", "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
