"""Glue between ``mx_jax.QArray`` operands and the Pallas block-scaled matmul kernels.

* ``gemm_operand``: a ([B,] rows, K) MX QArray quantized along K -> (element data, (K/32, [B,] rows) float32
  scales, element kind) in a kernel's layout, zero-padded to the tile grid (each batch element alike).
* ``mx_gemm``: pads, picks a kernel design + tile config for the shape, runs it (one launch, batched or
  not), crops.
* ``PreparedWeight`` / ``prepare_weight``: a weight QArray (N, K) re-laid out once for the weight-only
  kernel (FP4/FP6 packed in the kernel's byte order, scales transposed to float32); inference stores this.
* ``weight_only_matmul``: bf16 activations (M, K) x prepared weight -> (M, N).

The Hopper kernels themselves live in ``kernels/mx_matmul_mgpu.py``. Element handling:
  - MXFP8 (e4m3/e5m2, mixed allowed): used as stored by both designs.
  - MXFP6 / MXFP4: the bf16 design and the weight-only kernel unpack them inside the kernel (integer ops);
    the FP8-wgmma design takes them widened to e4m3 by one exact XLA pass (every FP6/FP4 value is an e4m3).
  - MXINT8: bf16 design / weight-only only (k/64 needs 7 significant bits, e4m3 has 4); its 2^-6 is folded
    into the float32 scales.
  - NVFP4 (weight-only only): E2M1 with 16-wide E4M3 scales times the FP32 tensor scale, folded to float32.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels import mx_matmul_mgpu as mgpu
from kernels import partitioning
from kernels._dispatch import pad_to, round_up
from mx_jax import _bits
from mx_jax.packing import element_codes, unpack
from mx_jax.qarray import QArray

BLOCK = mgpu.BLOCK
GemmConfig = mgpu.GemmConfig
WeightOnlyConfig = mgpu.WeightOnlyConfig

_MX_ELEM = {"mxfp8_e4m3": "fp8", "mxfp8_e5m2": "fp8", "mxint8": "int8", "mxfp4_e2m1": "e2m1",
            "mxfp6_e3m2": "e3m2", "mxfp6_e2m3": "e2m3", "nvfp4": "e2m1"}


def on_hopper() -> bool:
  """True when the default backend is an NVIDIA GPU of compute capability 9.x (H100 / H200)."""
  from mx_jax.matmul import gpu_compute_major
  return gpu_compute_major() == 9


def kernel_supports(a: QArray, b: QArray | None = None) -> str | None:
  """None when the kernels take these operands, else the reason they don't."""
  for q in (a, b):
    if q is None:
      continue
    if q.fmt not in _MX_ELEM or q.fmt == "nvfp4" and b is not None:
      return f"format {q.fmt!r} (kernels take MX formats; NVFP4 in the weight-only kernel only)"
    if q.block_size != (16 if q.fmt == "nvfp4" else BLOCK):
      return f"block_size {q.block_size} (kernels take 32, NVFP4 16)"
  return None


def e8m0_to_f32(s: jax.Array) -> jax.Array:
  """E8M0 scales -> exact float32 2^(b-127) (NaN for 0xFF; 2^-127 is an FP32 subnormal)."""
  b = lax.bitcast_convert_type(s, jnp.uint8).astype(jnp.int32)
  normal = lax.bitcast_convert_type(jnp.maximum(b, 1) << 23, jnp.float32)
  v = jnp.where(b == 0, jnp.float32(2.0 ** -127), normal)
  return jnp.where(b == 255, jnp.float32(jnp.nan), v)


def gemm_operand(q: QArray, rows_p: int, k_p: int, *, widen_to_fp8: bool):
  """(data ([B,] rows_p, k_p elements), scales (k_p/32, [B,] rows_p) float32, elem kind) for the GEMM kernels,
  zero-padded (padding scales 1.0); q is ([B,] rows, K) quantized along its last axis."""
  q = unpack(q)
  kind = _MX_ELEM[q.fmt]
  scales = e8m0_to_f32(q.scales)
  if kind == "int8":
    if widen_to_fp8:
      raise ValueError("MXINT8 elements are not exact in e4m3; use the bf16 design")
    scales = scales * jnp.float32(2.0 ** -6)
  scales = jnp.moveaxis(pad_to(scales, rows_p, k_p // BLOCK, 1.0), -1, 0)  # K-block-major (2D: the transpose)
  if kind == "fp8":
    data = pad_to(q.data, rows_p, k_p)
  elif kind == "int8":
    data = pad_to(q.data, rows_p, k_p)
  elif widen_to_fp8:
    vals = _bits.from_elem_dtype(q.data, q.format.elem)
    data = pad_to(vals.astype(jnp.float8_e4m3fn), rows_p, k_p)
    kind = "fp8"
  else:
    codes = pad_to(element_codes(q), rows_p, k_p)
    data = mgpu.pack_fp4_kernel(codes) if kind == "e2m1" else mgpu.pack_fp6_kernel(codes)
  return data, scales, kind


def default_gemm_config(m: int, n: int, k: int, a_fmt: str, b_fmt: str, variant: str | None = None, *,
                        bsz: int = 1, num_sms: int = 132) -> GemmConfig:
  """Tile config for a ([bsz x] m, n, k) problem (from the H100 sweeps recorded in BENCHMARKS.md), with the
  split-K that ``split_k_for`` predicts fastest on ``num_sms`` SMs."""
  for name, v in (("bsz", bsz), ("num_sms", num_sms)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int; got {v!r}")
  fp8_ok = all(_MX_ELEM[f] != "int8" for f in (a_fmt, b_fmt))
  if variant is None:
    variant = DEFAULT_VARIANT if fp8_ok else "bf16"
  if variant == "fp8":
    if not fp8_ok:
      raise ValueError("the FP8-wgmma design cannot take MXINT8 operands")
    cfg = DEFAULT_FP8
    if k <= 128:  # a short K (attention's head dim) in one stage of its own depth, not zero-padded to 256
      cfg = dataclasses.replace(cfg, tile_k=64 if k <= 64 else 128)
    elif k <= 768:  # 6 stages of 128, not 3 of 256: 8192 x {768, 3072} x 768 7-11 % faster (session 22)
      cfg = dataclasses.replace(cfg, tile_k=128)
    if n <= 64:  # a 64-wide side (attention's head dim as N, or as M) is not padded to 128
      cfg = dataclasses.replace(cfg, tile_n=64)
    elif m <= 64:
      cfg = dataclasses.replace(cfg, tile_n=64, wg_dim="N")
  else:
    packed = {_MX_ELEM[f] for f in (a_fmt, b_fmt)}
    cfg = DEFAULT_BF16
    if packed & {"e3m2", "e2m3"} and cfg.tile_k % 128:
      cfg = dataclasses.replace(cfg, tile_k=128)
    elif "e2m1" in packed and cfg.tile_k % 64:
      cfg = dataclasses.replace(cfg, tile_k=64)
  tiles = bsz * -(-m // cfg.cta_m) * -(-n // cfg.cta_n)
  split = split_k_for(tiles, -(-max(k, 1) // cfg.tile_k), cfg, 4 * bsz * round_up(m, cfg.cta_m)
                      * round_up(n, cfg.cta_n), num_sms)
  return dataclasses.replace(cfg, split_k=split)


# The cost model's rates: the FP8 design's measured 8192^3 throughput per SM (447 TFLOP/s on 132 SMs), the bf16
# design's (385), and the HBM bandwidth an XLA elementwise fusion reaches (BENCHMARKS.md, GPU_FACTS.md).
_SM_FLOPS = {"fp8": 447e12 / 132, "bf16": 385e12 / 132}
_HBM_BYTES = 2.5e12
MAX_SPLIT_K = 16


def split_k_for(tiles: int, k_iters: int, cfg: GemmConfig, partial_bytes: int, num_sms: int) -> int:
  """Split-K S (1 = none) minimising the modelled time of a persistent GEMM with ``tiles`` output tiles of
  ``k_iters`` K stages: ceil(S tiles / SMs) waves x (ceil(k_iters / S) + 1) stage times (+1: the pipeline's
  fill and the epilogue), plus writing and re-reading S FP32 partials of ``partial_bytes`` each when S > 1.
  Only divisors of ``k_iters`` (a split that pads K copies both operands: on the H100, 768 x 768 x 8192 took
  61.7 µs at S = 3 against 51.3 at S = 2, BENCHMARKS.md session 22); at most ``MAX_SPLIT_K``."""
  for name, v in (("tiles", tiles), ("k_iters", k_iters), ("num_sms", num_sms)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int; got {v!r}")
  if not isinstance(partial_bytes, int) or partial_bytes < 0:
    raise ValueError(f"partial_bytes must be a non-negative int; got {partial_bytes!r}")
  stage_s = 2 * cfg.cta_m * cfg.cta_n * cfg.tile_k / _SM_FLOPS[cfg.variant]

  def cost(s):
    waves = -(-tiles * s // num_sms)
    return waves * (-(-k_iters // s) + 1) * stage_s + (2 * s * partial_bytes / _HBM_BYTES if s > 1 else 0.0)

  ok = [s for s in range(1, min(MAX_SPLIT_K, k_iters) + 1) if k_iters % s == 0]
  return min(ok, key=lambda s: (cost(s), s))


def fit_gemm_config(cfg: GemmConfig, a_fmt: str, b_fmt: str, out_dtype, interpret: bool = False) -> GemmConfig:
  """Lowers the pipeline depth (down to 2), then tile_m, until the kernel fits in shared memory."""
  ae, be = _MX_ELEM[a_fmt], _MX_ELEM[b_fmt]
  if cfg.variant == "fp8":
    ae = be = "fp8"
  if cfg.split_k > 1:
    out_dtype = jnp.float32  # split-K's kernel writes FP32 partials
  fits = lambda c: mgpu.gemm_smem_bytes(c, ae, be, out_dtype, interpret) <= mgpu.SMEM_LIMIT
  while not fits(cfg) and cfg.max_concurrent_steps > 2:
    cfg = dataclasses.replace(cfg, max_concurrent_steps=cfg.max_concurrent_steps - 1)
  if not fits(cfg) and cfg.tile_m > 64:  # then a smaller tile
    return fit_gemm_config(dataclasses.replace(cfg, tile_m=64), a_fmt, b_fmt, out_dtype, interpret)
  return cfg


# Defaults, set from the H100 runs (see BENCHMARKS.md, "Pallas kernels II").
DEFAULT_VARIANT = "fp8"
# 8192^3 MXFP8 on H100: fp8 pair k256 447 TFLOP/s, fp8 k256 439, bf16 m128n128k64 385 (run 2).
DEFAULT_FP8 = GemmConfig("fp8", tile_m=64, tile_n=128, tile_k=256, wg_dim="M", max_concurrent_steps=2, pair=True)
DEFAULT_BF16 = GemmConfig("bf16", tile_m=128, tile_n=128, tile_k=64, wg_dim="N", max_concurrent_steps=4)


@partitioning.gemm
def mx_gemm(a: QArray, b: QArray, *, out_dtype=jnp.bfloat16, variant: str | None = None,
            config: GemmConfig | None = None, interpret=False, num_sms: int | None = None) -> jax.Array:
  """(M, N) = a (M, K) @ b (N, K)^T through the Hopper kernels; both quantized along K (the last axis).

  Batched: a (B, M, K), b (B, N, K) -> (B, M, N), out[i] = a[i] @ b[i]^T, in one kernel launch (every batch
  element padded to the same tile grid at once; equal bit for bit to the per-element 2D calls with the same
  ``config``: the default one may differ, since its split-K counts the tiles of the whole batch).
  """
  if a.ndim != b.ndim or a.ndim not in (2, 3) or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f"mx_gemm takes a (M, K), b (N, K) or a (B, M, K), b (B, N, K); got {a.shape}, {b.shape}")
  m, k = a.shape[-2:]
  n = b.shape[-2]
  bsz = a.shape[0] if a.ndim == 3 else 1
  if config is None:  # the interpreter models an H100's SM count, so it runs the configs the GPU would
    sms = num_sms or (132 if interpret else mgpu.num_sms_default())
    config = fit_gemm_config(default_gemm_config(m, n, k, a.fmt, b.fmt, variant, bsz=bsz, num_sms=sms), a.fmt,
                             b.fmt, out_dtype, bool(interpret))
  cfg = config
  k_p = round_up(max(k, 1), cfg.tile_k * cfg.split_k)  # tile_k: a multiple of 32 and of the packing group
  m_p, n_p = round_up(m, cfg.cta_m), round_up(n, cfg.cta_n)
  widen = cfg.variant == "fp8"
  ad, sa, ak = gemm_operand(a, m_p, k_p, widen_to_fp8=widen)
  bd, sb, bk = gemm_operand(b, n_p, k_p, widen_to_fp8=widen)
  out = mgpu.gemm(ad, bd, sa, sb, a_elem=ak, b_elem=bk, out_dtype=out_dtype, config=cfg, interpret=interpret,
                  num_sms=num_sms)
  if (m_p, n_p) != (m, n):
    out = out[..., :m, :n]
  return out


# ----------------------------------------------------------------------------------------------------------
# Weight-only
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreparedWeight:
  """A (N, K) weight laid out for the weight-only kernel: element data (kernel packing), float32 scales
  (K_p/block, N_p), NVFP4's FP32 tensor scale (applied to the FP32 output: the E2M1 x E4M3 products are exact
  in bf16, times an arbitrary FP32 factor they would not be). ``n``, ``k``: the logical shape; ``elem``:
  kernel element kind; ``block``: 32 or 16."""
  data: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None
  elem: str = dataclasses.field(metadata=dict(static=True))
  block: int = dataclasses.field(metadata=dict(static=True))
  n: int = dataclasses.field(metadata=dict(static=True))
  k: int = dataclasses.field(metadata=dict(static=True))
  fmt: str = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self):
    return (self.n, self.k)

  @property
  def nbytes(self) -> int:
    return int(self.data.size * self.data.dtype.itemsize + self.scales.size * self.scales.dtype.itemsize)

  @property
  def ndim(self) -> int:
    return 2


WO_N_ALIGN = 128
WO_K_ALIGN = 256


def prepare_weight(w: QArray, *, n_align: int = WO_N_ALIGN, k_align: int = WO_K_ALIGN) -> PreparedWeight:
  """Lays out a (N, K) weight QArray (quantized along K) for ``weight_only_matmul`` (do it once)."""
  if w.ndim != 2 or w.axis != 1:
    raise ValueError(f"the weight must be a (N, K) QArray quantized along axis 1; got {w!r}")
  why = kernel_supports(w)
  if why:
    raise ValueError(f"weight-only kernel does not take {why}")
  n, k = w.shape
  w = unpack(w)
  kind = _MX_ELEM[w.fmt]
  n_p, k_p = round_up(n, n_align), round_up(max(w.data.shape[1], 1), k_align)
  if w.fmt == "nvfp4":
    block = 16
    scales = w.scales.astype(jnp.float32)
    tensor_scale = w.tensor_scale.astype(jnp.float32)
  else:
    tensor_scale = None
    block = BLOCK
    scales = e8m0_to_f32(w.scales)
    if kind == "int8":
      scales = scales * jnp.float32(2.0 ** -6)
  scales = pad_to(scales, n_p, k_p // block, 1.0).T
  if kind in ("fp8", "int8"):
    data = pad_to(w.data, n_p, k_p)
  else:
    codes = pad_to(element_codes(w), n_p, k_p)
    data = mgpu.pack_fp4_kernel(codes) if kind == "e2m1" else mgpu.pack_fp6_kernel(codes)
  return PreparedWeight(data, scales, tensor_scale, kind, block, n, k, w.fmt)


def default_weight_only_config(m: int, pw: PreparedWeight, interpret: bool = False) -> WeightOnlyConfig:
  """DEFAULT_WO fitted to the weight; the sub-byte decode is the denormal bit trick on the GPU (checked
  exact there by benchmarks/bench_matmul.py) and the select form in interpret mode (XLA:CPU flushes)."""
  n_p, k_p = pw.scales.shape[1], pw.scales.shape[0] * pw.block
  cfg = dataclasses.replace(DEFAULT_WO, decode="select" if interpret else "denorm")
  while k_p % (cfg.tile_k * cfg.split_k) and cfg.split_k > 1:
    cfg = dataclasses.replace(cfg, split_k=cfg.split_k // 2)
  if k_p % cfg.tile_k:
    cfg = dataclasses.replace(cfg, tile_k=math.gcd(k_p, cfg.tile_k))
  if n_p % cfg.tile_n:
    cfg = dataclasses.replace(cfg, tile_n=64)
  return cfg


# M=16, K=N=8192 on H100 (run 2): MXFP8 64.1 us, MXFP6 64.7, MXFP4 55.6 with this config.
DEFAULT_WO = WeightOnlyConfig(tile_n=64, tile_k=256, split_k=2, max_concurrent_steps=4)
SMEM_BUDGET = 220 * 1024


def weight_only_smem(cfg: WeightOnlyConfig, mp: int, elem: str, block: int) -> int:
  """Shared-memory bytes of the weight-only kernel (pipeline stages + output tile + optional W tile)."""
  stage = mp * cfg.tile_k * 2 + cfg.tile_n * mgpu.row_bytes(cfg.tile_k, elem) + cfg.tile_k // block * cfg.tile_n * 4
  total = cfg.max_concurrent_steps * stage + cfg.tile_n * mp * 4 + 1024
  if not cfg.a_regs:
    total += cfg.tile_n * cfg.tile_k * 2
  return total


def fit_weight_only_config(cfg: WeightOnlyConfig, mp: int, elem: str, block: int, k_p: int) -> WeightOnlyConfig:
  """Shrinks pipeline depth, then tile_k, until the kernel fits shared memory (large M needs it)."""
  group = max(mgpu.ELEM_GROUP[elem][0], 64 if block == 16 else 32)
  while weight_only_smem(cfg, mp, elem, block) > SMEM_BUDGET:
    if cfg.max_concurrent_steps > 2:
      cfg = dataclasses.replace(cfg, max_concurrent_steps=cfg.max_concurrent_steps - 1)
    elif cfg.tile_k // 2 >= group and (cfg.tile_k // 2) % group == 0:
      cfg = dataclasses.replace(cfg, tile_k=cfg.tile_k // 2)
    else:
      break
  while k_p % (cfg.tile_k * cfg.split_k):
    if cfg.split_k > 1:
      cfg = dataclasses.replace(cfg, split_k=cfg.split_k // 2)
    else:
      cfg = dataclasses.replace(cfg, tile_k=math.gcd(k_p, cfg.tile_k))
  return cfg
WO_MAX_ROWS = 256


def weight_only_matmul(x: jax.Array, pw: PreparedWeight, *, out_dtype=jnp.bfloat16,
                       config: WeightOnlyConfig | None = None, interpret=False) -> jax.Array:
  """(M, N) = x (M, K) @ W^T for a prepared weight; x is cast to bf16 (the kernel's MMA input)."""
  m, k = x.shape
  if k != pw.k:
    raise ValueError(f"x has K={k} but the weight has K={pw.k}")
  k_p = pw.scales.shape[0] * pw.block
  rows = WO_MAX_ROWS
  while rows > 8:  # the x tile and the output tile grow with the rows: fall back to row chunks
    c = fit_weight_only_config(config or default_weight_only_config(rows, pw, bool(interpret)), rows, pw.elem,
                               pw.block, k_p)
    if weight_only_smem(c, min(rows, round_up(max(m, 8), 8)), pw.elem, pw.block) <= SMEM_BUDGET:
      break
    rows //= 2
  outs = []
  for r0 in range(0, max(m, 1), rows):
    xr = x[r0:r0 + rows]
    mr = xr.shape[0]
    mp = round_up(max(mr, 8), 8)
    cfg = fit_weight_only_config(config or default_weight_only_config(mp, pw, bool(interpret)), mp, pw.elem,
                                 pw.block, k_p)
    xp = pad_to(xr.astype(jnp.bfloat16), mp, k_p)
    part = mgpu.weight_only(xp, pw.data, pw.scales, elem=pw.elem, block=pw.block, config=cfg,
                            out_dtype=jnp.float32, interpret=interpret)
    acc = part[0] if part.shape[0] == 1 else jnp.sum(part, axis=0)
    if pw.tensor_scale is not None:
      acc = acc * pw.tensor_scale
    outs.append(acc[:pw.n, :mr].T.astype(out_dtype))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
