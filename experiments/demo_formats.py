"""Quantizes one tensor to every format and prints the error table.

    python -m experiments.demo_formats [--rows 256 --cols 4096 --dist normal|laplace|outliers]

Columns: bits per element including scales, relative RMS error, max relative error, SNR (dB), the
fraction of elements flushed to zero, and the fraction saturated (telemetry from mx_jax.telemetry).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import mx_jax
from mx_jax.telemetry import quant_stats


def make(dist: str, rows: int, cols: int) -> jax.Array:
  k = jax.random.key(0)
  if dist == "laplace":
    return jax.random.laplace(k, (rows, cols))
  x = jax.random.normal(k, (rows, cols))
  if dist == "outliers":  # a few large channels, as in LLM activations
    x = x.at[:, ::97].multiply(50.0)
  return x


def table(x: jax.Array) -> list[dict]:
  rows = []
  for fmt in mx_jax.FORMATS:
    q = mx_jax.quantize(x, fmt)
    d = mx_jax.dequantize(q)
    err = d - x
    rel = float(jnp.sqrt(jnp.mean(err ** 2) / jnp.mean(x ** 2)))
    st = quant_stats(x, q)
    rows.append(dict(fmt=fmt, bits=8 * mx_jax.pack(q).nbytes / x.size, rel_rms=rel,
                     max_rel=float(jnp.max(jnp.abs(err)) / jnp.max(jnp.abs(x))),
                     snr_db=-20 * np.log10(rel), flushed=float(st[1]), saturated=float(st[0])))
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=256)
  p.add_argument("--cols", type=int, default=4096)
  p.add_argument("--dist", default="normal", choices=["normal", "laplace", "outliers"])
  a = p.parse_args(argv)
  x = make(a.dist, a.rows, a.cols)
  print(f"x: {a.rows}x{a.cols} {a.dist}; blocks along the last axis\n")
  print("| format | bits/elem | rel. RMS err | max err / max|x| | SNR dB | flushed | saturated |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in table(x):
    print(f"| {r['fmt']} | {r['bits']:.2f} | {r['rel_rms']:.2e} | {r['max_rel']:.2e} | {r['snr_db']:.1f} | "
          f"{r['flushed']:.4f} | {r['saturated']:.4f} |")


if __name__ == "__main__":
  main()
