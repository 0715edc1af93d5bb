"""Element and block formats as data.

Nothing else in mx_jax types in a format's numbers: every constant (bias, emax, max normal, ...) is derived
here from ``ml_dtypes.finfo`` where the type exists (all floats), and from the OCP MX v1.0 spec for MXINT8
(two's complement with an implicit 2^-6, symmetric range ±127/64).

A value of an element format with ``M = mbits`` and ``emin = 1 - bias`` lies on the grid
``k * 2^(max(floor(log2|v|), emin) - M)``; ``emax = floor(log2(max_normal))`` is the exponent the OCP
shared-scale rule subtracts from ``floor(log2(amax))``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class ElemFormat:
  """One scalar element encoding (FP8/FP6/FP4, MX INT8, or a scale type)."""

  name: str
  dtype: Any  # ml_dtypes / jnp dtype of the stored code
  bits: int
  ebits: int
  mbits: int
  bias: int
  emax: int  # floor(log2(max_normal))
  emin: int  # exponent of the smallest normal (1 - bias); grid floor
  max_normal: float
  min_normal: float
  min_subnormal: float
  has_inf: bool
  has_nan: bool
  is_int: bool = False


def _from_finfo(name: str, dtype: Any, has_inf: bool, has_nan: bool) -> ElemFormat:
  fi = ml_dtypes.finfo(dtype)
  max_normal = float(fi.max)
  min_normal = float(fi.smallest_normal)
  return ElemFormat(
      name=name,
      dtype=jnp.dtype(dtype),
      bits=int(fi.bits),
      ebits=int(fi.nexp),
      mbits=int(fi.nmant),
      bias=1 - int(math.log2(min_normal)),
      emax=int(math.floor(math.log2(max_normal))),
      emin=int(math.log2(min_normal)),
      max_normal=max_normal,
      min_normal=min_normal,
      min_subnormal=float(fi.smallest_subnormal),
      has_inf=has_inf,
      has_nan=has_nan,
  )


E4M3 = _from_finfo("e4m3", ml_dtypes.float8_e4m3fn, has_inf=False, has_nan=True)
E5M2 = _from_finfo("e5m2", ml_dtypes.float8_e5m2, has_inf=True, has_nan=True)
E3M2 = _from_finfo("e3m2", ml_dtypes.float6_e3m2fn, has_inf=False, has_nan=False)
E2M3 = _from_finfo("e2m3", ml_dtypes.float6_e2m3fn, has_inf=False, has_nan=False)
E2M1 = _from_finfo("e2m1", ml_dtypes.float4_e2m1fn, has_inf=False, has_nan=False)
# MX INT8 (OCP MX v1.0 §5.3): int8 code k means k * 2^-6; symmetric, the code -128 is never produced.
# It behaves as a one-binade float with M = 6 fractional bits and emin = emax = 0.
INT8 = ElemFormat(
    name="int8", dtype=jnp.dtype(jnp.int8), bits=8, ebits=0, mbits=6, bias=0, emax=0, emin=0,
    max_normal=127 / 64, min_normal=1 / 64, min_subnormal=1 / 64, has_inf=False, has_nan=False,
    is_int=True)
# E8M0 scale: value 2^(b - 127), b in [0, 254]; b = 255 is NaN. No sign, no zero.
E8M0 = ElemFormat(
    name="e8m0", dtype=jnp.dtype(ml_dtypes.float8_e8m0fnu), bits=8, ebits=8, mbits=0, bias=127,
    emax=127, emin=-127, max_normal=2.0**127, min_normal=2.0**-127, min_subnormal=2.0**-127,
    has_inf=False, has_nan=True)

ELEM_FORMATS = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1, INT8)}

E8M0_NAN = 255
E8M0_BIAS = 127


@dataclasses.dataclass(frozen=True)
class Format:
  """A block (or tensor) format: element encoding plus how the scale is shared.

  kind: "mx" (OCP MX: E8M0 scale per ``block_size`` elements), "nvfp4" (E4M3 scale per 16 elements plus one
  FP32 tensor scale) or "tensor" (one FP32 scale per tensor or per channel).
  """

  name: str
  elem: ElemFormat
  kind: str
  block_size: int | None
  scale_elem: ElemFormat | None
  allowed_block_sizes: tuple[int, ...] = ()

  @property
  def is_mx(self) -> bool:
    return self.kind == "mx"


_MX_BLOCKS = (2, 4, 8, 16, 32, 64, 128, 256)

FORMATS: dict[str, Format] = {
    "mxfp8_e4m3": Format("mxfp8_e4m3", E4M3, "mx", 32, E8M0, _MX_BLOCKS),
    "mxfp8_e5m2": Format("mxfp8_e5m2", E5M2, "mx", 32, E8M0, _MX_BLOCKS),
    "mxfp6_e3m2": Format("mxfp6_e3m2", E3M2, "mx", 32, E8M0, _MX_BLOCKS),
    "mxfp6_e2m3": Format("mxfp6_e2m3", E2M3, "mx", 32, E8M0, _MX_BLOCKS),
    "mxfp4_e2m1": Format("mxfp4_e2m1", E2M1, "mx", 32, E8M0, _MX_BLOCKS),
    "mxint8": Format("mxint8", INT8, "mx", 32, E8M0, _MX_BLOCKS),
    "nvfp4": Format("nvfp4", E2M1, "nvfp4", 16, E4M3, (16,)),
    "fp8_e4m3": Format("fp8_e4m3", E4M3, "tensor", None, None, ()),
    "fp8_e5m2": Format("fp8_e5m2", E5M2, "tensor", None, None, ()),
}

MX_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "mx")


def get_format(fmt: "str | Format") -> Format:
  """Returns the Format named ``fmt`` (or ``fmt`` itself); ValueError naming the allowed names."""
  if isinstance(fmt, Format):
    return fmt
  if not isinstance(fmt, str) or fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {sorted(FORMATS)}; got {fmt!r}")
  return FORMATS[fmt]


def grid_table(elem: ElemFormat) -> np.ndarray:
  """All non-negative finite values of an element format, ascending (float64); for tests and docs."""
  if elem.is_int:
    return np.arange(128) / 64.0
  codes = np.arange(2 ** (elem.bits - 1), dtype=np.uint8)
  vals = codes.view(elem.dtype).astype(np.float64) if elem.bits == 8 else (
      codes.astype(np.uint8).view(np.dtype(elem.dtype)).astype(np.float64))
  return np.unique(vals[np.isfinite(vals)])
