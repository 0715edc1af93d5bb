"""Pallas kernels I (issue 8): MX quantize and norm+cast vs XLA, timed and checked in one process.

Run on a GPU (H100) from the repository root:
    PYTHONPATH=. python3 benchmarks/bench_quantize_norm.py [--out DIR] [--quick] [--no-sweep]

What it does, in order:
  1. bit-exactness on this GPU: every kernel against the XLA path (mx_jax.quantize / mx_jax.norms impl="xla")
     on random data with planted NaN/Inf/zero/subnormal/tiny/huge blocks and odd shapes, plus the benchmark
     inputs themselves;
  2. a small tile sweep (rows x blocks per program, warps) for the quantize and fused-norm kernels;
  3. timings, median of R repetitions of K back-to-back calls (async dispatch, one block_until_ready per
     repetition) after warm-up: MX quantize bf16 8192x8192 and 16384x8192 for every block format; RMSNorm +
     MXFP8 fused vs XLA's RMSNorm then quantize; MXNorm + cast vs RMSNorm + cast; skinny shapes 4096x1024 and
     1x8192; RMSNorm backward; a bf16 copy (x * 2) as the bandwidth ceiling measured in the same process.
Every quantize step runs the Triton kernels ("Pallas") and the Mosaic GPU kernel ("Mosaic", kernels/mgpu_quantize.py,
with its own small tile sweep) beside XLA; each variant fails soft (error logged, run continues). RMSNorm /
MXNorm + MXFP8 and the RMSNorm backward also run the Mosaic GPU norm kernels (kernels/mgpu_norm.py, rows of
>= 128 blocks: not 4096x1024, whose Mosaic rows are skipped since it runs on Triton).
Effective TB/s = (bytes read once + bytes written once) / time, the minimum traffic of the operation.
Prints a table at the end; writes DIR/bench_quantize_norm.json when --out (or $OUT) is given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mx_jax  # noqa: E402
from kernels import _dispatch, mx_quantize  # noqa: E402
from kernels import norm_quantize as kn  # noqa: E402
from kernels import mgpu_quantize as mq  # noqa: E402
from kernels import mgpu_norm as mn  # noqa: E402
from mx_jax import norms  # noqa: E402

SMOKE = False  # --smoke: tiny shapes, to check the script itself on a CPU (interpret mode)
FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4"]
RESULTS: dict = {"device": None, "exact": [], "sweep": [], "timing": [], "errors": []}


def log(*a):
  print(*a, flush=True)


# ---------------------------------------------------------------------------------------------------------
def qbytes(q):
  out = []
  for a in (q.data, q.scales) + ((q.tensor_scale,) if q.tensor_scale is not None else ()):
    a = np.asarray(a)
    out.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
  return out


def n_mismatch(q1, q2) -> int:
  a, b = qbytes(q1), qbytes(q2)
  if len(a) != len(b) or any(u.shape != v.shape for u, v in zip(a, b)):
    return -1
  return int(sum(int((u != v).sum()) for u, v in zip(a, b)))


def planted(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape[:-1] + (1,)))).astype(np.float32)
  f = x.reshape(-1, shape[-1])
  n = f.shape[1]
  f[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
  f[1, :32] = 0.0
  f[2, :32] = 9.2e-41 * rng.integers(-3, 4, 32)  # bf16/f32 subnormals
  f[3, :32] = rng.standard_normal(32) * 1e-37
  f[4, :32] = rng.standard_normal(32) * 1e37
  f[5, :64] = np.resize([1.0, 1.0625, 1.125, 1.1875, 3.0, 5.0, -0.75, 0.25], 64)
  f[6, 1::7] = 9.2e-41
  del n
  return jnp.asarray(x, dtype)


def normal(shape, dtype, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  sig = jnp.exp(jax.random.normal(k2, shape[:-1] + (1,)))
  return (jax.random.normal(k1, shape, jnp.float32) * sig).astype(dtype)


def record_exact(name, mism, total, extra="", mism_cpu=None):
  """mism: kernel vs the XLA path on this GPU; mism_cpu: kernel vs the XLA path on the CPU (the tests'
  reference, IEEE arithmetic)."""
  ok = mism == 0
  RESULTS["exact"].append(dict(name=name, mismatches=mism, total=total, ok=ok, extra=extra,
                               mismatches_vs_cpu=mism_cpu))
  c = "" if mism_cpu is None else f"; vs XLA on CPU: {mism_cpu}"
  log(f"[exact] {'OK  ' if ok else 'FAIL'} {name}: {mism} / {total} differ{c} {extra}")


_CPU = None


def on_cpu(fn, *args):
  """fn(*args) with XLA on the host CPU (the reference semantics the CPU tests use)."""
  global _CPU
  _CPU = _CPU or jax.devices("cpu")[0]
  args = jax.tree.map(lambda a: jax.device_put(a, _CPU) if isinstance(a, jax.Array) else a, args)
  with jax.default_device(_CPU):
    return fn(*args)


def guarded(name, fn):
  try:
    return fn()
  except Exception as e:  # keep going: report every failure in one run
    msg = f"{type(e).__name__}: {str(e)[:1500]}"
    RESULTS["errors"].append(dict(name=name, error=msg, tb=traceback.format_exc()[-4000:]))
    log(f"[error] {name}: {msg}")
    return None


# ---------------------------------------------------------------------------------------------------------
def check_exactness(quick: bool):
  shapes = [((1000, 4000), jnp.bfloat16), ((37, 200), jnp.bfloat16), ((129, 1000), jnp.float32),
            ((3, 5, 96), jnp.float16)]
  if quick or SMOKE:
    shapes = shapes[1:3]
  for (shape, dt) in shapes:
    x = planted(shape, dt, seed=sum(shape))
    for fmt in FORMATS:
      def one():
        q_ref = jax.jit(lambda x: mx_jax.quantize(x, fmt))(x)
        q = jax.jit(lambda x: mx_quantize(x, fmt, impl="pallas"))(x)
        q_cpu = on_cpu(lambda x: mx_jax.quantize(x, fmt), x)
        record_exact(f"quantize {fmt} {dt.__name__}{shape}", n_mismatch(q_ref, q), x.size,
                     mism_cpu=n_mismatch(q_cpu, q))
      guarded(f"exact quantize {fmt} {shape}", one)

      def one_mosaic():
        q_ref = jax.jit(lambda x: mx_jax.quantize(x, fmt))(x)
        q = jax.jit(lambda x: mq.mx_quantize_mgpu(x, fmt))(x)
        q_cpu = on_cpu(lambda x: mx_jax.quantize(x, fmt), x)
        record_exact(f"mosaic quantize {fmt} {dt.__name__}{shape}", n_mismatch(q_ref, q), x.size,
                     mism_cpu=n_mismatch(q_cpu, q))
      guarded(f"exact mosaic quantize {fmt} {shape}", one_mosaic)
  # scale modes / roundings on one shape
  x = planted((37, 100) if SMOKE else (257, 1000), jnp.bfloat16, seed=5)
  key = jax.random.key(0)
  for fmt, kw in [("mxfp8_e4m3", dict(scale_mode="rceil")), ("mxfp4_e2m1", dict(scale_mode="ceil")),
                  ("mxint8", dict(scale_mode="even")), ("mxfp6_e2m3", dict(rounding="nearest_away")),
                  ("mxfp8_e4m3", dict(rounding="stochastic", key=key)),
                  ("nvfp4", dict(rounding="stochastic", key=key))]:
    def one():
      q_ref = mx_jax.quantize(x, fmt, **kw)
      q = mx_quantize(x, fmt, impl="pallas", **kw)
      q_cpu = on_cpu(lambda x, k: mx_jax.quantize(x, fmt, **dict(kw, **({"key": k} if k is not None else {}))),
                     x, kw.get("key"))
      record_exact(f"quantize {fmt} {kw.get('scale_mode', '')}{kw.get('rounding', '')}", n_mismatch(q_ref, q),
                   x.size, mism_cpu=n_mismatch(q_cpu, q))
      qm = mq.mx_quantize_mgpu(x, fmt, **kw)
      record_exact(f"mosaic quantize {fmt} {kw.get('scale_mode', '')}{kw.get('rounding', '')}",
                   n_mismatch(q_ref, qm), x.size, mism_cpu=n_mismatch(q_cpu, qm))
    guarded(f"exact quantize {fmt} {kw}", one)
  # fused norms
  nshapes = [((257, 1000), jnp.bfloat16), ((64, 8192), jnp.bfloat16), ((129, 700), jnp.float32)]
  if SMOKE:
    nshapes = [((37, 100), jnp.bfloat16), ((9, 70), jnp.float32)]
  for shape, dt in nshapes:
    x = planted(shape, dt, seed=11) if shape[0] > 30 else normal(shape, dt, seed=12)
    g = jnp.asarray(1 + 0.2 * np.random.default_rng(0).standard_normal(shape[-1]), jnp.float32)
    for kind, p, fmt in [("rms", 2, "mxfp8_e4m3"), ("mx", 2, "mxfp8_e4m3"), ("mx", 1, "mxfp4_e2m1"),
                         ("rms", 2, "nvfp4")]:
      fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
      kw = {} if kind == "rms" else dict(p=p)

      def one():
        q_ref = fn(x, g, fmt, impl="xla", **kw)
        q = fn(x, g, fmt, impl="pallas", **kw)
        q_cpu = on_cpu(lambda x, g: fn(x, g, fmt, impl="xla", **kw), x, g)
        _, inv_ref = jax.jit(lambda x, g: norms._xla_norm_f32(x, g, 1e-6, kind, p, 32))(x, g)
        _, inv = jax.jit(lambda x, g: kn.norm_pallas(x, g, eps=1e-6, kind=kind, p=p, block_size=32))(x, g)
        fin = np.isfinite(np.asarray(inv_ref))
        di = int((np.asarray(inv_ref).view(np.uint32) != np.asarray(inv).view(np.uint32))[fin].sum())
        record_exact(f"{kind}norm(p={p})+{fmt} {dt.__name__}{shape}", n_mismatch(q_ref, q), x.size,
                     f"(finite rows whose inverse RMS differs: {di}/{int(fin.sum())})", n_mismatch(q_cpu, q))
      guarded(f"exact norm {kind} {fmt} {shape}", one)
    # forward float output and backward
    def fb():
      y_ref = norms.rms_norm(x, g, impl="xla")
      y = norms.rms_norm(x, g, impl="pallas")
      y_cpu = on_cpu(lambda x, g: norms.rms_norm(x, g, impl="xla"), x, g)
      dif = lambda a, b: int((np.asarray(a).view(np.uint8) != np.asarray(b).view(np.uint8)).sum())
      record_exact(f"rms_norm fwd {dt.__name__}{shape}", dif(y_ref, y), y.size, mism_cpu=dif(y_cpu, y))
      w = normal(shape, jnp.float32, seed=3)
      gr = jax.grad(lambda x, g: jnp.sum(norms.rms_norm(x, g, impl="xla").astype(jnp.float32) * w), (0, 1))(x, g)
      gk = jax.grad(lambda x, g: jnp.sum(norms.rms_norm(x, g, impl="pallas").astype(jnp.float32) * w),
                    (0, 1))(x, g)
      gc = on_cpu(lambda x, g, w: jax.grad(lambda x, g: jnp.sum(norms.rms_norm(x, g, impl="xla").astype(
          jnp.float32) * w), (0, 1))(x, g), x, g, w)
      record_exact(f"rms_norm bwd dx {dt.__name__}{shape}", dif(gr[0], gk[0]), x.size, mism_cpu=dif(gc[0], gk[0]))
      record_exact(f"rms_norm bwd dgain {dt.__name__}{shape}", dif(gr[1], gk[1]), g.size,
                   mism_cpu=dif(gc[1], gk[1]))
    if shape[0] < 200 and shape[0] != 37:
      guarded(f"exact rms fwd/bwd {shape}", fb)
  # Mosaic GPU norm kernels (called directly: the benchmark pins the public entry points to Triton)
  mshapes = [((8, 4096), jnp.bfloat16)] if SMOKE else [((64, 8192), jnp.bfloat16), ((129, 4000), jnp.float32),
                                                       ((8192, 8192), jnp.bfloat16)]
  for shape, dt in mshapes:
    x = planted(shape, dt, seed=13)
    g = jnp.asarray(1 + 0.2 * np.random.default_rng(1).standard_normal(shape[-1]), jnp.float32)
    dif = lambda a, b: int((np.asarray(a).view(np.uint8) != np.asarray(b).view(np.uint8)).sum())
    for kind, p, fmt in [("rms", 2, "mxfp8_e4m3"), ("mx", 2, "mxfp8_e4m3"), ("mx", 1, "mxfp8_e5m2")]:
      fn = norms.rms_norm_quantize if kind == "rms" else norms.mx_norm_quantize
      kw = {} if kind == "rms" else dict(p=p)

      def one_m(kind=kind, p=p, fmt=fmt, fn=fn, kw=kw):
        q_ref = fn(x, g, fmt, impl="xla", **kw)
        q_cpu = on_cpu(lambda x, g: fn(x, g, fmt, impl="xla", **kw), x, g)
        q, inv = jax.jit(lambda x, g: mn.norm_quantize_mgpu(x, g, fmt, eps=1e-6, kind=kind, p=p, block_size=32))(x, g)
        _, inv_ref = jax.jit(lambda x, g: norms._xla_norm_f32(x, g, 1e-6, kind, p, 32))(x, g)
        record_exact(f"mosaic {kind}norm(p={p})+{fmt} {dt.__name__}{shape}", n_mismatch(q_ref, q), x.size,
                     f"(inverse RMS bytes differing: {dif(inv_ref, inv)})", n_mismatch(q_cpu, q))
      guarded(f"exact mosaic norm {kind} {fmt} {shape}", one_m)

    def fb_m():
      y_ref, _ = norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)
      y, _ = jax.jit(lambda x, g: mn.norm_pallas_mgpu(x, g, eps=1e-6, kind="rms", p=2, block_size=32))(x, g)
      record_exact(f"mosaic rms_norm fwd f32 out {dt.__name__}{shape}", dif(y_ref.reshape(x.shape), y), y.size)
      xs_, _ = (normal(shape, dt, seed=5), None)
      _, inv = norms._xla_norm_f32(xs_, g, 1e-6, "rms", 2, 32)
      dy = normal(shape, dt, seed=6)
      r = norms.rms_norm_bwd(xs_, g, inv, dy, impl="xla")
      rc = on_cpu(lambda x, g, i, d: norms.rms_norm_bwd(x, g, i, d, impl="xla"), xs_, g, inv, dy)
      k = jax.jit(mn.rms_norm_bwd_mgpu)(xs_, g, inv, dy)
      record_exact(f"mosaic rms_norm bwd dx {dt.__name__}{shape}", dif(r[0], k[0]), x.size, mism_cpu=dif(rc[0], k[0]))
      record_exact(f"mosaic rms_norm bwd dgain {dt.__name__}{shape}", dif(r[1], k[1]), g.size,
                   mism_cpu=dif(rc[1], k[1]))
    if mn.supported(shape[-1], 32, dt, "bwd"):
      guarded(f"exact mosaic rms fwd/bwd {shape}", fb_m)


# ---------------------------------------------------------------------------------------------------------
def bench(fn, args, reps=15, inner=10, warm=3, rotate=None):
  """Median and min seconds per call. ``rotate``: extra argument tuples cycled through (inputs that fit in
  L2 would otherwise be timed from the cache)."""
  if SMOKE:
    reps, inner, warm = 2, 1, 1
  sets = [args] + list(rotate or [])
  for a in sets:
    for _ in range(warm):
      jax.block_until_ready(fn(*a))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = None
    for i in range(inner):
      out = fn(*sets[i % len(sets)])
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t0) / inner)
  return statistics.median(ts), min(ts)


def nbytes_tree(t):
  return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(t)))


def record_time(group, name, t, nbytes, ref_t=None, extra=None):
  row = dict(group=group, name=name, ms=t * 1e3, tbps=nbytes / t / 1e12, bytes=nbytes,
             vs_xla=(ref_t / t) if ref_t else None)
  if extra:
    row.update(extra)
  RESULTS["timing"].append(row)
  rat = f"  x{ref_t / t:5.2f} vs XLA" if ref_t else ""
  log(f"[time] {group:28s} {name:46s} {t * 1e3:8.4f} ms {row['tbps']:6.3f} TB/s{rat}")
  return row


def sweep(quick: bool):
  best = {}
  x = normal((256, 1024) if SMOKE else (16384, 8192), jnp.bfloat16, seed=1)
  cfgs = [(4, 64, 4), (8, 32, 4), (8, 64, 8), (4, 32, 4), (2, 64, 4), (16, 32, 8)]
  if quick:
    cfgs = cfgs[:3]
  res = []
  for br, bb, nw in cfgs:
    f = jax.jit(lambda x, br=br, bb=bb, nw=nw: mx_quantize(x, "mxfp8_e4m3", impl="pallas", block_rows=br,
                                                           block_blocks=bb, num_warps=nw))
    r = guarded(f"sweep quantize {br},{bb},{nw}", lambda: bench(f, (x,), reps=7, inner=5))
    if r:
      nb = x.size * 2 + nbytes_tree(f(x))
      res.append((r[0], (br, bb, nw)))
      RESULTS["sweep"].append(dict(kernel="quantize mxfp8_e4m3 16384x8192", cfg=(br, bb, nw), ms=r[0] * 1e3,
                                   tbps=nb / r[0] / 1e12))
      log(f"[sweep] quantize rows={br} blocks={bb} warps={nw}: {r[0] * 1e3:.4f} ms {nb / r[0] / 1e12:.3f} TB/s")
  best["quantize"] = min(res)[1] if res else (None, None, None)
  res = []
  for tile, steps in [(256, 1), (128, 1), (512, 1), (256, 2), (256, 4), (128, 4)][:3 if quick else 6]:
    def run_cfg(tile=tile, steps=steps):
      mq.CONFIG.update(tile=tile, steps=steps)
      f = jax.jit(lambda x: mq.mx_quantize_mgpu(x, "mxfp8_e4m3"))
      r = bench(f, (x,), reps=7, inner=5)
      nb = x.size * 2 + nbytes_tree(f(x))
      res.append((r[0], (tile, steps)))
      RESULTS["sweep"].append(dict(kernel="mosaic quantize mxfp8_e4m3 16384x8192", cfg=(tile, steps),
                                   ms=r[0] * 1e3, tbps=nb / r[0] / 1e12))
      log(f"[sweep] mosaic quantize tile={tile} steps={steps}: {r[0] * 1e3:.4f} ms {nb / r[0] / 1e12:.3f} TB/s")
    guarded(f"sweep mosaic quantize {tile},{steps}", run_cfg)
  best["mosaic"] = min(res)[1] if res else (256, 1)
  mq.CONFIG.update(tile=best["mosaic"][0], steps=best["mosaic"][1])
  g = jnp.ones((x.shape[-1],), jnp.float32)
  res = []
  ncfgs = [(1, 4), (1, 8), (2, 8)]
  if quick:
    ncfgs = ncfgs[:3]
  for br, nw in ncfgs:
    f = jax.jit(lambda x, g, br=br, nw=nw: kn.norm_quantize_pallas(
        x, g, "mxfp8_e4m3", eps=1e-6, kind="rms", p=2, norm_block=32, block_size=32, block_rows=br,
        num_warps=nw))
    r = guarded(f"sweep norm {br},{nw}", lambda: bench(f, (x, g), reps=7, inner=5))
    if r:
      nb = x.size * 2 + g.size * 4 + nbytes_tree(f(x, g))
      res.append((r[0], (br, nw)))
      RESULTS["sweep"].append(dict(kernel="rmsnorm+mxfp8 16384x8192", cfg=(br, nw), ms=r[0] * 1e3,
                                   tbps=nb / r[0] / 1e12))
      log(f"[sweep] rmsnorm+cast rows={br} warps={nw}: {r[0] * 1e3:.4f} ms {nb / r[0] / 1e12:.3f} TB/s")
  best["norm"] = min(res)[1] if res else (None, None)
  # backward kernel vs XLA autodiff of the flax formula, same input
  dy = normal(x.shape, jnp.bfloat16, seed=4)
  _, inv = norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)
  for name, fn in [("Pallas rms_norm bwd", jax.jit(lambda x, g, i, d: kn.rms_norm_bwd_pallas(x, g, i, d))),
                   ("XLA autodiff of flax-RMSNorm", jax.jit(lambda x, g, i, d: jax.vjp(flax_rmsnorm, x, g)[1](d)))]:
    r = guarded(f"sweep {name}", lambda: bench(fn, (x, g, inv, dy), reps=7, inner=5))
    if r:
      nb = 3 * x.size * 2 + 2 * g.size * 4
      RESULTS["sweep"].append(dict(kernel=name, ms=r[0] * 1e3, tbps=nb / r[0] / 1e12))
      log(f"[sweep] {name}: {r[0] * 1e3:.4f} ms {nb / r[0] / 1e12:.3f} TB/s")
  log(f"[sweep] best: {best}")
  return best


def flax_rmsnorm(x, g, eps=1e-6):
  """flax.linen.RMSNorm's formula (f32 statistics, rsqrt), output in x's dtype."""
  xf = x.astype(jnp.float32)
  ms = jnp.mean(jax.lax.square(xf), axis=-1, keepdims=True)
  return (xf * (jax.lax.rsqrt(ms + eps) * g)).astype(x.dtype)


def timings(best, quick: bool):
  br, bb, nw = best.get("quantize", (None, None, None))
  nbr, nnw = best.get("norm", (None, None))
  shapes = [(8192, 8192), (16384, 8192)] + ([] if quick else [(4096, 1024), (1, 8192)])
  if SMOKE:
    shapes = [(64, 512), (128, 256), (1, 256)]
  for shape in shapes:
    x = normal(shape, jnp.bfloat16, seed=2)
    # inputs of <= 32 MiB are rotated over 8 copies (the H100's L2 is 50 MB)
    xs = ([normal(shape, jnp.bfloat16, seed=10 + i) for i in range(7)]
          if 1 < shape[0] and shape[0] * shape[1] * 2 <= 2 ** 25 else [])
    # bandwidth ceiling: bf16 copy
    f = jax.jit(lambda x: x * 2)
    r = guarded("copy", lambda: bench(f, (x,), rotate=[(a,) for a in xs]))
    if r:
      record_time(f"{shape[0]}x{shape[1]}", "bf16 copy (x*2), ceiling", r[0], 2 * x.size * 2)
    for fmt in FORMATS:
      fx = jax.jit(lambda x, fmt=fmt: mx_jax.quantize(x, fmt))
      fk = jax.jit(lambda x, fmt=fmt: mx_quantize(x, fmt, impl="pallas", block_rows=br, block_blocks=bb,
                                                  num_warps=nw))
      def one():
        q = fk(x)
        nb = x.size * 2 + nbytes_tree(q)
        tx = bench(fx, (x,), rotate=[(a,) for a in xs])[0]
        tk = bench(fk, (x,), rotate=[(a,) for a in xs])[0]
        record_time(f"{shape[0]}x{shape[1]} quantize", f"{fmt} XLA", tx, nb)
        record_time(f"{shape[0]}x{shape[1]} quantize", f"{fmt} Pallas", tk, nb, tx)
      guarded(f"time quantize {fmt} {shape}", one)
      fm = jax.jit(lambda x, fmt=fmt: mq.mx_quantize_mgpu(x, fmt))

      def one_mosaic():
        q = fm(x)
        nb = x.size * 2 + nbytes_tree(q)
        tx = bench(fx, (x,), rotate=[(a,) for a in xs])[0]
        tm = bench(fm, (x,), rotate=[(a,) for a in xs])[0]
        record_time(f"{shape[0]}x{shape[1]} quantize", f"{fmt} Mosaic GPU", tm, nb, tx)
      guarded(f"time mosaic quantize {fmt} {shape}", one_mosaic)
    # norms
    g = jnp.asarray(1 + 0.1 * np.random.default_rng(0).standard_normal(shape[-1]), jnp.float32)
    nb_norm = x.size * 2 + g.size * 4 + x.size + x.size // 32
    cases = [
        ("XLA flax-RMSNorm(bf16) -> quantize", jax.jit(lambda x, g: mx_jax.quantize(flax_rmsnorm(x, g),
                                                                                   "mxfp8_e4m3"))),
        ("XLA mx_jax rms_norm_quantize (det.)", jax.jit(lambda x, g: norms.rms_norm_quantize(x, g, impl="xla"))),
        ("XLA mx_jax mx_norm_quantize (det.)", jax.jit(lambda x, g: norms.mx_norm_quantize(x, g, impl="xla"))),
        ("Pallas RMSNorm+MXFP8 fused", jax.jit(lambda x, g: kn.norm_quantize_pallas(
            x, g, "mxfp8_e4m3", eps=1e-6, kind="rms", p=2, norm_block=32, block_size=32, block_rows=nbr,
            num_warps=nnw))),
        ("Pallas MXNorm(p=2)+MXFP8 fused", jax.jit(lambda x, g: kn.norm_quantize_pallas(
            x, g, "mxfp8_e4m3", eps=1e-6, kind="mx", p=2, norm_block=32, block_size=32, block_rows=nbr,
            num_warps=nnw))),
        ("Pallas MXNorm(p=1)+MXFP8 fused", jax.jit(lambda x, g: kn.norm_quantize_pallas(
            x, g, "mxfp8_e4m3", eps=1e-6, kind="mx", p=1, norm_block=32, block_size=32, block_rows=nbr,
            num_warps=nnw))),
        ("XLA flax-RMSNorm alone (bf16 out)", jax.jit(flax_rmsnorm)),
        ("Pallas rms_norm alone (bf16 out)", jax.jit(lambda x, g: norms.rms_norm(x, g, impl="pallas"))),
    ]
    if mn.supported(shape[-1], 32, x.dtype):
      cases += [
          ("Mosaic RMSNorm+MXFP8 fused", jax.jit(lambda x, g: mn.norm_quantize_mgpu(
              x, g, "mxfp8_e4m3", eps=1e-6, kind="rms", p=2, block_size=32))),
          ("Mosaic MXNorm(p=2)+MXFP8 fused", jax.jit(lambda x, g: mn.norm_quantize_mgpu(
              x, g, "mxfp8_e4m3", eps=1e-6, kind="mx", p=2, block_size=32))),
          ("Mosaic rms_norm alone (bf16 out)", jax.jit(lambda x, g: mn.norm_pallas_mgpu(
              x, g, eps=1e-6, kind="rms", p=2, block_size=32, out_dtype=x.dtype))),
      ]
    else:
      log(f"[mosaic] {shape}: rows of < 128 blocks run on Triton; no Mosaic norm rows")
    ref_t = None
    for name, fn in cases:
      def one(name=name, fn=fn):
        nonlocal ref_t
        t = bench(fn, (x, g), rotate=[(a, g) for a in xs])[0]
        nbytes = nb_norm if "alone" not in name else 2 * x.size * 2 + g.size * 4
        if name.startswith("XLA flax-RMSNorm(bf16)"):
          ref_t = t
        record_time(f"{shape[0]}x{shape[1]} norm+cast", name, t, nbytes,
                    ref_t if name.startswith(("Pallas", "Mosaic")) and "alone" not in name else None)
      guarded(f"time {name} {shape}", one)
    # backward
    dy = normal(shape, jnp.bfloat16, seed=4)
    _, inv = norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)
    for name, fn in [("XLA rms_norm bwd (det.)", jax.jit(lambda x, g, i, d: norms.rms_norm_bwd(x, g, i, d,
                                                                                             impl="xla"))),
                     ("Pallas rms_norm bwd", jax.jit(lambda x, g, i, d: kn.rms_norm_bwd_pallas(x, g, i, d))),
                     *([("Mosaic rms_norm bwd", jax.jit(mn.rms_norm_bwd_mgpu))]
                       if mn.supported(shape[-1], 32, x.dtype, "bwd") else []),
                     ("XLA autodiff of flax-RMSNorm", jax.jit(lambda x, g, i, d: jax.vjp(flax_rmsnorm, x, g)[1](d)))]:
      def one(name=name, fn=fn):
        t = bench(fn, (x, g, inv, dy), rotate=[(a, g, inv, dy) for a in xs])[0]
        record_time(f"{shape[0]}x{shape[1]} rmsnorm bwd", name, t, 3 * x.size * 2 + 2 * g.size * 4)
      guarded(f"time {name} {shape}", one)


def diag():
  """Which side deviates when the kernel and XLA-on-GPU differ: both against XLA on the CPU (IEEE, the
  reference the tests use); and the GPU's sqrt / division / Triton inline ops against numpy."""
  cpu = jax.devices("cpu")[0]
  key = jax.random.key(0)
  for shape, fmt, kw in [((37, 200), "mxfp4_e2m1", {}), ((37, 200), "mxfp6_e2m3", {}),
                         ((257, 1000), "mxfp4_e2m1", dict(scale_mode="ceil")),
                         ((257, 1000), "mxfp6_e2m3", dict(rounding="nearest_away")),
                         ((257, 1000), "mxfp8_e4m3", dict(rounding="stochastic", key=key)),
                         ((257, 1000), "nvfp4", dict(rounding="stochastic", key=key))]:
    def one():
      x = planted(shape, jnp.bfloat16, seed=5 if shape[0] == 257 else sum(shape))
      qg = mx_jax.quantize(x, fmt, **kw)
      qk = mx_quantize(x, fmt, impl="pallas", **kw)
      kwc = dict(kw)
      if "key" in kwc:
        kwc["key"] = jax.device_put(kwc["key"], cpu)
      qc = mx_jax.quantize(jax.device_put(x, cpu), fmt, **kwc)
      a, b, c = qbytes(qg)[0], qbytes(qk)[0], qbytes(qc)[0]
      xs = np.asarray(jax.device_put(x, cpu)).astype(np.float32).reshape(-1)
      log(f"[diag] {fmt} {kw.get('scale_mode', '')}{kw.get('rounding', '')} {shape}: kernel!=cpu {int((b != c).sum())}"
          f"  xla_gpu!=cpu {int((a != c).sum())}  kernel!=xla_gpu {int((a != b).sum())}")
      sc = qbytes(qc)[1]
      bs = 16 if fmt == "nvfp4" else 32
      for i in np.nonzero((a != c) | (b != c))[0][:6]:
        r, col = divmod(int(i), qc.data.shape[-1])
        log(f"    elem {r},{col}: x={xs[r * shape[-1] + col] if col < shape[-1] else 0.0!r} "
            f"bits={np.float32(xs[r * shape[-1] + col] if col < shape[-1] else 0).view(np.uint32):08x} "
            f"xla_gpu={a[i]:#04x} kernel={b[i]:#04x} cpu={c[i]:#04x} scale={sc[r * (qc.scales.shape[-1]) + col // bs]}")
    guarded(f"diag {fmt}", one)
  # per-row statistic
  for dt in (jnp.bfloat16, jnp.float32):
    def one(dt=dt):
      x = planted((257, 1000), dt, seed=11)
      g = jnp.asarray(1 + 0.2 * np.random.default_rng(0).standard_normal(1000), jnp.float32)
      f = lambda x, g: norms._xla_norm_f32(x, g, 1e-6, "rms", 2, 32)[1]
      ig = jax.jit(f)(x, g)
      ik = jax.jit(lambda x, g: kn.norm_pallas(x, g, eps=1e-6, kind="rms", p=2, block_size=32)[1])(x, g)
      ic = jax.jit(f)(jax.device_put(x, cpu), jax.device_put(g, cpu))
      u = lambda v: np.asarray(jax.device_put(v, cpu)).view(np.uint32)
      log(f"[diag] rms inv {dt.__name__}: kernel!=cpu {int((u(ik) != u(ic)).sum())} xla_gpu!=cpu "
          f"{int((u(ig) != u(ic)).sum())} kernel!=xla_gpu {int((u(ik) != u(ig)).sum())} of 257")
    guarded("diag rms inv", one)

  def ops():
    rng = np.random.default_rng(0)
    v = (rng.random(1 << 20) * np.exp2(rng.integers(-60, 60, 1 << 20))).astype(np.float32)
    w = (rng.random(1 << 20) * np.exp2(rng.integers(-60, 60, 1 << 20))).astype(np.float32)
    vg, wg = jnp.asarray(v), jnp.asarray(w)
    ref_sqrt, ref_div, ref_rcp = np.sqrt(v), v / w, np.float32(1) / w
    bar = jax.lax.optimization_barrier
    res = {
        "xla sqrt": jax.jit(jax.lax.sqrt)(vg), "xla a/b": jax.jit(lambda a, b: a / bar(b))(vg, wg),
        "xla 1/b": jax.jit(lambda b: 1.0 / bar(b))(wg),
        "xla 1/sqrt(b) via barrier": jax.jit(lambda b: 1.0 / bar(jax.lax.sqrt(b)))(wg),
    }
    refs = {"xla sqrt": ref_sqrt, "xla a/b": ref_div, "xla 1/b": ref_rcp,
            "xla 1/sqrt(b) via barrier": np.float32(1) / np.sqrt(w)}
    from jax.experimental import pallas as pl
    ar = _dispatch.TritonArith()
    def kern(a_ref, b_ref, s_ref, d_ref, m_ref):
      a, b = a_ref[...], b_ref[...]
      s_ref[...] = ar.sqrt(a)
      d_ref[...] = ar.div(a, b)
      m_ref[...] = ar.mul(a, b)
    blk = pl.BlockSpec((1024,), lambda i: (i,))
    sq, dv, ml = pl.pallas_call(kern, out_shape=[jax.ShapeDtypeStruct(v.shape, jnp.float32)] * 3,
                                grid=(v.size // 1024,), in_specs=[blk, blk], out_specs=[blk] * 3)(vg, wg)
    res.update({"triton sqrt.rn": sq, "triton div.rn": dv, "triton mul.rn": ml})
    refs.update({"triton sqrt.rn": ref_sqrt, "triton div.rn": ref_div, "triton mul.rn": v * w})
    def kern2(a_ref, b_ref, d_ref, s_ref):
      d_ref[...] = a_ref[...] / b_ref[...]
      s_ref[...] = a_ref[...] / jnp.float32(6.0)
    nd, n6 = pl.pallas_call(kern2, out_shape=[jax.ShapeDtypeStruct(v.shape, jnp.float32)] * 2,
                            grid=(v.size // 1024,), in_specs=[blk, blk], out_specs=[blk] * 2)(vg, wg)
    xla_div = np.asarray(jax.jit(lambda a, b: a / bar(b))(vg, wg)).view(np.uint32)
    xla6 = np.asarray(jax.jit(lambda a: a / jnp.float32(6.0))(vg)).view(np.uint32)
    rcp6 = (v * (np.float32(1) / np.float32(6))).view(np.uint32)
    log(f"[diag] op triton native a/b vs XLA-GPU a/b: {int((np.asarray(nd).view(np.uint32) != xla_div).sum())} differ;"
        f" vs IEEE {int((np.asarray(nd).view(np.uint32) != ref_div.view(np.uint32)).sum())}")
    log(f"[diag] op XLA-GPU a/6 vs a*RN(1/6): {int((xla6 != rcp6).sum())} differ; triton a/6 vs a*RN(1/6): "
        f"{int((np.asarray(n6).view(np.uint32) != rcp6).sum())}")
    for k in res:
      got = np.asarray(res[k]).view(np.uint32)
      log(f"[diag] op {k}: {int((got != np.asarray(refs[k]).view(np.uint32)).sum())} / {v.size} differ from IEEE")
  guarded("diag ops", ops)


def probe():
  """Compile each kernel family once on a small input (reports compile time); if the fused norm kernel does
  not build with the split-based tree, fall back to the reduction-based pair sum."""
  x = normal((64, 1024), jnp.bfloat16, seed=0)
  g = jnp.ones((1024,), jnp.float32)
  for name, fn in [("mosaic quantize mxfp8_e4m3", lambda: mq.mx_quantize_mgpu(x, "mxfp8_e4m3")),
                   ("mosaic quantize nvfp4", lambda: mq.mx_quantize_mgpu(x, "nvfp4")),
                   ("quantize mxfp8_e4m3", lambda: mx_quantize(x, "mxfp8_e4m3", impl="pallas")),
                   ("quantize mxfp4_e2m1", lambda: mx_quantize(x, "mxfp4_e2m1", impl="pallas")),
                   ("quantize nvfp4", lambda: mx_quantize(x, "nvfp4", impl="pallas")),
                   ("rmsnorm+mxfp8", lambda: norms.rms_norm_quantize(x, g, impl="pallas")),
                   ("mxnorm+mxfp8", lambda: norms.mx_norm_quantize(x, g, impl="pallas")),
                   ("rmsnorm bwd", lambda: jax.grad(lambda x: norms.rms_norm(x, g, impl="pallas").astype(
                       jnp.float32).sum())(x))]:
    t = time.time()
    ok = guarded(f"probe {name}", lambda: jax.block_until_ready(fn()))
    if ok is None and "norm" in name and _dispatch.TritonArith.pair == "sum":
      log(f"[probe] {name} failed with Triton pair sums as reductions; retrying with splits")
      _dispatch.TritonArith.pair = "split"
      jax.clear_caches()
      ok = guarded(f"probe {name} (split)", lambda: jax.block_until_ready(fn()))
    log(f"[probe] {name}: {'ok' if ok is not None else 'FAILED'} ({time.time() - t:.1f} s)")
  # the fast-only element path assumes the GPU keeps FP32 subnormals: check on planted data
  xp = planted((64, 256), jnp.bfloat16, seed=1)
  for fmt in ("mxfp8_e4m3", "mxfp4_e2m1", "mxint8"):
    def chk():
      q = mx_quantize(xp, fmt, impl="pallas")
      return n_mismatch(on_cpu(lambda x: mx_jax.quantize(x, fmt), xp), q)
    m = guarded(f"probe fast-only {fmt}", chk)
    if m and _dispatch.TRITON_FAST_ONLY[0]:
      log(f"[probe] fast-only path differs from the CPU reference for {fmt} ({m}): using the guarded path")
      _dispatch.TRITON_FAST_ONLY[0] = False
      jax.clear_caches()
    log(f"[probe] fast-only check {fmt}: {m} mismatches")
  RESULTS["tree_pair"] = _dispatch.TritonArith.pair
  RESULTS["fast_only"] = _dispatch.TRITON_FAST_ONLY[0]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT"))
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--no-sweep", action="store_true")
  ap.add_argument("--skip-exact", action="store_true")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes: check the script on a CPU")
  ap.add_argument("--diag", action="store_true", help="locate kernel / XLA-on-GPU differences")
  ap.add_argument("--only-sweep", action="store_true")
  ap.add_argument("--tree", choices=["split", "sum"], default=None, help="kernels._dispatch.TritonArith.pair")
  args = ap.parse_args()
  # rows labelled "Pallas" are the Triton kernels; the Mosaic GPU kernel is called explicitly ("Mosaic GPU")
  _dispatch._FORCE_BACKEND[0] = "triton"
  global SMOKE
  SMOKE = args.smoke
  dev = jax.devices()[0]
  RESULTS["device"] = f"{dev.platform} {dev.device_kind}"
  RESULTS["jax"] = jax.__version__
  log(f"device: {RESULTS['device']}  jax {jax.__version__}  backend {jax.default_backend()}")
  t0 = time.time()
  if args.tree:
    _dispatch.TritonArith.pair = args.tree
  probe()
  if args.diag:
    diag()
  if not args.skip_exact:
    check_exactness(args.quick)
  log(f"exactness checks: {time.time() - t0:.1f} s")
  best = {"quantize": (None, None, None), "norm": (None, None)} if args.no_sweep else sweep(args.quick)
  if not args.only_sweep:
    timings(best, args.quick)
  log(f"total: {time.time() - t0:.1f} s")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_quantize_norm.json"), "w") as fh:
      json.dump(RESULTS, fh, indent=1, default=str)
  # summary table
  log("\n== bit-exactness (kernel vs XLA path on this device) ==")
  bad = [r for r in RESULTS["exact"] if not r["ok"]]
  log(f"{len(RESULTS['exact']) - len(bad)} / {len(RESULTS['exact'])} checks bit-exact")
  for r in bad:
    log(f"  FAIL {r['name']}: {r['mismatches']} / {r['total']} (vs CPU: {r['mismatches_vs_cpu']}) {r['extra']}")
  badc = [r for r in RESULTS["exact"] if r["mismatches_vs_cpu"]]
  log(f"{len(RESULTS['exact']) - len(badc)} / {len(RESULTS['exact'])} checks bit-exact against the XLA path on the CPU")
  for r in badc:
    log(f"  vs CPU: {r['name']}: {r['mismatches_vs_cpu']} / {r['total']}")
  log("\n== timings (median) ==")
  log(f"{'group':28s} {'what':46s} {'ms':>9s} {'TB/s':>7s} {'vs XLA':>7s}")
  for r in RESULTS["timing"]:
    v = f"{r['vs_xla']:.2f}" if r["vs_xla"] else ""
    log(f"{r['group']:28s} {r['name']:46s} {r['ms']:9.4f} {r['tbps']:7.3f} {v:>7s}")
  if RESULTS["errors"]:
    log(f"\n== {len(RESULTS['errors'])} errors ==")
    for e in RESULTS["errors"]:
      log(f"  {e['name']}: {e['error'][:300]}")


if __name__ == "__main__":
  main()
