"""Timing helpers: per-kernel device time of a jitted function, from JAX's own profiler (no TensorBoard needed).

``top_kernels(fn, *args)`` traces a few calls with ``jax.profiler.trace``, reads the XSpace back with
``jax.profiler.ProfileData`` and sums event durations by name on the device planes (on a GPU: the
"XLA Ops" line; fusions, GEMMs and custom calls), per call.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import statistics
import tempfile
import time

import jax


def file_logger(out_dir, name):
  """log(line): print it and, when ``out_dir`` is given, append it to ``out_dir/name``; the header line first."""
  path = os.path.join(out_dir, name) if out_dir else None

  def log(s):
    print(s, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(s + "\n")

  log(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}")
  return log


def hlo_instruction(text: str, name: str):
  """(the compiled HLO line of the instruction behind profiler kernel ``name``, the text of the computation it
  calls) from ``compiled.as_text()``; None for what is not there. The profiler writes "fusion_2" for the HLO
  instruction "fusion.2"."""
  pat = re.sub(r"_(\d+)$", r"[._]\1", re.escape(name))
  m = re.search(rf"^\s*(?:ROOT )?%?{pat} = .*$", text, re.M)
  if not m:
    return None, None
  line = m.group(0).strip()
  c = re.search(r"calls=%?([\w.\-]+)", line)
  body = re.search(rf"^%?{re.escape(c.group(1))} .*?^}}", text, re.M | re.S) if c else None
  return line, body.group(0) if body else None


def median_ms(fn, *args, iters: int = 20, warmup: int = 1) -> float:
  """Median wall milliseconds of ``fn(*args)`` (``block_until_ready`` each call) after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t)
  return 1e3 * statistics.median(ts)


def _device_events(pd):
  for plane in pd.planes:
    if not plane.name.startswith("/device:"):
      continue
    lines = list(plane.lines)
    ops = [ln for ln in lines if ln.name == "XLA Ops"]
    for ln in ops or [ln for ln in lines if ln.name != "XLA Modules"]:
      for ev in ln.events:
        yield ev.name, ev.duration_ns


def top_kernels(fn, *args, calls: int = 3, n: int = 25):
  """[(name, µs per call, count per call)] sorted by time, and the total device µs per call."""
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(calls):
        out = fn(*args)
      jax.block_until_ready(out)
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
      return [], 0.0
    pd = jax.profiler.ProfileData.from_file(files[0])
    tot, cnt = collections.Counter(), collections.Counter()
    for name, ns in _device_events(pd):
      tot[name] += ns
      cnt[name] += 1
  rows = [(k, v / 1e3 / calls, cnt[k] / calls) for k, v in tot.most_common(n)]
  return rows, sum(tot.values()) / 1e3 / calls


def print_top(title, fn, *args, calls=3, n=25):
  rows, total = top_kernels(fn, *args, calls=calls, n=n)
  print(f"-- {title}: device total {total:.0f} µs per call; top {len(rows)} kernels", flush=True)
  for name, us, c in rows:
    print(f"   {us:9.1f} µs  x{c:4.0f}  {name[:110]}", flush=True)
