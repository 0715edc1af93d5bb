"""Block-scaled MX GEMM in Pallas on the Triton backend: out (M, N) = dequant(a) (M, K) @ dequant(b) (N, K)^T.

Design (b) of issue 7 in Triton: each K step loads the (BM, BK) / (BN, BK) element codes and their E8M0 scale
bytes, dequantizes both tiles to bf16 in registers (value = elem * 2^(e - 127), one bf16 multiply by the
scale broadcast along its 32 elements) and feeds one bf16 ``tl.dot`` with an FP32 accumulator (Hopper wgmma;
Triton stages the dequantized B tile through shared memory and software-pipelines the code loads,
``num_stages``). This is the computation XLA emits for ``jax.lax.scaled_dot`` on Hopper (a Triton GEMM with
the dequantization fused into its operands), written as one kernel we control.

Elements (codes as uint8, row-major (rows, K)):
  * e4m3 / e5m2 (MXFP8; mixed pairs allowed): the byte is the FP8 code.
  * FP6 / FP4 (MXFP6 e2m3 / e3m2, MXFP4 e2m1): widened to e4m3 codes by one exact XLA pass before the call
    (every such value is an e4m3 value; ``gemm_operand``).
  * int8 (MXINT8, k * 2^-6): decoded to the integer k (exact in bf16: 8 significant bits); the 2^-6 of each
    int8 operand is applied to the FP32 accumulator in the epilogue (exact, a power of two).

Exactness: elem * 2^e is exact in bf16 whenever it is a normal or subnormal bf16 with all its bits
(``exact_scale_range``: e4m3 e in [-124, 119] on the GPU, which keeps bf16 subnormals; XLA:CPU flushes them,
so [-117, 119] in interpret mode). Every product of two such values is exact in FP32 and the tensor core sums
them in FP32, so the result equals the spec's FP32 block dot products up to FP32 summation order. Outside the
range (blocks whose amax is below ~2^-100) products below 2^-133 flush to zero, as in ``lax.scaled_dot``.

Grid: (batch, tiles_m * tiles_n) in grouped order (``group_m`` row tiles share each sweep of column tiles, so
the operands' tiles are re-read from L2). Each program loops over K_p / BK steps (``lax.fori_loop``).
M and N need not be tile multiples (masked stores); K is zero-padded to BK by ``gemm_operands``.
``interpret=True`` runs the same kernel body in the Pallas interpreter (CPU tests); outputs come back as their
bits there (XLA:CPU flushes subnormals in selects).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels._dispatch import pad_to, round_up
from kernels import wo_triton as wt

BLOCK = 32
ELEMS = ("e4m3", "e5m2", "int8")
_INT8_SHIFT = -6  # MXINT8 element k means k * 2^-6


@dataclasses.dataclass(frozen=True)
class TritonGemmConfig:
  """Tile / pipeline choice: block_m x block_n output tile per program, block_k K elements per step (a multiple
  of 32), group_m row tiles per L2 group, Triton's num_warps / num_stages; decode "jnp" (FP8 -> f32 -> bf16
  converts) or "asm" (e4m3: inline-PTX bit moves, compiled only; see wo_triton)."""
  block_m: int = 128
  block_n: int = 256
  block_k: int = 64
  group_m: int = 8
  num_warps: int = 8
  num_stages: int = 3
  decode: str = "jnp"
  scale: str = "bcast"  # "bcast": one dot per step, scales broadcast over (rows, block_k); "block": one dot per
                        # 32-block, each operand's (rows, 32) tile times its (rows, 1) scale column (no reshape)

  def __post_init__(self):
    for nm in ("block_m", "block_n", "block_k"):
      v = getattr(self, nm)
      if v < 16 or v & (v - 1):
        raise ValueError(f"{nm} must be a power of two >= 16; got {v}")
    if self.block_k < BLOCK:
      raise ValueError(f"block_k must be >= {BLOCK} (one scale block); got {self.block_k}")
    if self.group_m < 1 or self.num_warps < 1 or self.num_stages < 1:
      raise ValueError(f"group_m, num_warps, num_stages must be >= 1; got {self}")
    if self.decode not in ("jnp", "asm"):
      raise ValueError(f"decode must be 'jnp' or 'asm'; got {self.decode!r}")
    if self.scale not in ("bcast", "block"):
      raise ValueError(f"scale must be 'bcast' or 'block'; got {self.scale!r}")

  def name(self) -> str:
    return (f"m{self.block_m}n{self.block_n}k{self.block_k}g{self.group_m}w{self.num_warps}s{self.num_stages}"
            f"{'_asm' if self.decode == 'asm' else ''}{'_blk' if self.scale == 'block' else ''}")


DEFAULT_CONFIG = TritonGemmConfig()


def exact_scale_range(elem: str, interpret: bool = False) -> tuple[int, int]:
  """Scale exponents e for which every elem * 2^e is exact in bf16: every element is a multiple of 2^q below
  2^(p + 1) (e4m3 q = -9, p = 8; e5m2 -16, 15; int8 k: 0, 6), so it needs e + q >= -133 (bf16's smallest
  subnormal; -126 in interpret mode, XLA:CPU flushes subnormals) and e + p <= 127."""
  if elem not in ELEMS:
    raise ValueError(f"elem must be one of {ELEMS}; got {elem!r}")
  q, p = {"e4m3": (-9, 8), "e5m2": (-16, 15), "int8": (0, 6)}[elem]
  return max((-126 if interpret else -133) - q, -127), min(127 - p, 127)


def _decode(code, elem: str, use_asm: bool):
  """uint8 code tile -> bf16 element values (int8: the integer k)."""
  if elem == "e4m3" and use_asm:
    return wt._asm_decode(wt._ASM_E4M3, [code])
  if elem == "int8":
    return wt._decode(code, "int8")
  return wt._decode(code, elem)


def _scale_tile(sraw, rows: int, nb: int):
  """(rows, nb) E8M0 bytes -> (rows, nb * 32) bf16 scales 2^(b - 127), each broadcast over its block."""
  s = wt._scale_bf16(sraw, wt.SPECS["mxfp8_e4m3"])
  return lax.broadcast_in_dim(s, (rows, nb, BLOCK), (0, 1)).reshape(rows, nb * BLOCK)


def _kernel(a_ref, sa_ref, b_ref, sb_ref, o_ref, *, cfg: TritonGemmConfig, a_elem: str, b_elem: str, m: int,
            n: int, steps: int, tiles_n: int, out_mul: float, out_dtype, interpret: bool):
  from jax.experimental.pallas import triton as pltriton
  bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
  nb = bk // BLOCK
  use_asm = cfg.decode == "asm" and not interpret
  pm, pn = _tile_of(pl.program_id(1), pl.cdiv(m, bm), tiles_n, cfg.group_m)

  def dequant(code_ref, s_ref, rows, elem, t):
    code = pltriton.load(code_ref.at[:, pl.ds(t * bk, bk)])
    s = _scale_tile(pltriton.load(s_ref.at[:, pl.ds(t * nb, nb)]), rows, nb)
    return _decode(code, elem, use_asm) * s

  def dequant_blocks(code_ref, s_ref, elem, t):
    s = wt._scale_bf16(pltriton.load(s_ref.at[:, pl.ds(t * nb, nb)]), wt.SPECS["mxfp8_e4m3"])
    cols = jnp.split(s, nb, axis=1) if nb > 1 else [s]
    return [_decode(pltriton.load(code_ref.at[:, pl.ds(t * bk + BLOCK * j, BLOCK)]), elem, use_asm) * cols[j]
            for j in range(nb)]

  def step(t, acc):
    if cfg.scale == "block":
      for a, b in zip(dequant_blocks(a_ref, sa_ref, a_elem, t), dequant_blocks(b_ref, sb_ref, b_elem, t)):
        acc = acc + wt._dot_nt(a, b)
      return acc
    a = dequant(a_ref, sa_ref, bm, a_elem, t)
    b = dequant(b_ref, sb_ref, bn, b_elem, t)
    return acc + wt._dot_nt(a, b)

  acc = lax.fori_loop(0, steps, step, jnp.zeros((bm, bn), jnp.float32))
  if out_mul != 1.0:
    acc = acc * jnp.float32(out_mul)
  rows_ok = pm * bm + lax.broadcasted_iota(jnp.int32, (bm, 1), 0) < m
  cols_ok = pn * bn + lax.broadcasted_iota(jnp.int32, (1, bn), 1) < n
  out = acc.astype(out_dtype)
  if interpret:
    out = lax.bitcast_convert_type(out, wt._uint_of(out_dtype))
  pltriton.store(o_ref, out, mask=rows_ok & cols_ok)


def _tile_of(p, tiles_m, tiles_n: int, group_m: int):
  """Program p -> (row tile, column tile) in grouped order: group_m row tiles per sweep of the columns."""
  width = group_m * tiles_n
  first = (p // width) * group_m
  size = jnp.minimum(tiles_m - first, group_m)
  return first + lax.rem(p, width) % size, lax.rem(p, width) // size


def gemm(a, sa, b, sb, *, a_elem: str, b_elem: str, m: int, n: int, out_dtype=jnp.bfloat16,
         config: TritonGemmConfig = DEFAULT_CONFIG, interpret: bool = False) -> jax.Array:
  """The kernel on prepared operands: a (B, M_p, K_p) / b (B, N_p, K_p) uint8 codes, sa (B, M_p, K_p/32) / sb
  (B, N_p, K_p/32) uint8 E8M0 bytes, rows padded to the tile (M_p % block_m == 0, N_p % block_n == 0), K_p a
  multiple of block_k (zero codes). Returns (B, m, n) ``out_dtype``: the first m x n of the product."""
  cfg = config
  if not isinstance(cfg, TritonGemmConfig):
    raise TypeError(f"config must be a TritonGemmConfig; got {type(cfg).__name__}")
  for nm, e in (("a_elem", a_elem), ("b_elem", b_elem)):
    if e not in ELEMS:
      raise ValueError(f"{nm} must be one of {ELEMS}; got {e!r}")
  for nm, v in (("a", a), ("sa", sa), ("b", b), ("sb", sb)):
    if v.ndim != 3 or v.dtype != jnp.uint8:
      raise ValueError(f"{nm} must be a 3-D uint8 array (batch, rows, K or K/32); got {v.dtype}{v.shape}")
  bsz, m_p, k_p = a.shape
  n_p = b.shape[1]
  if b.shape != (bsz, n_p, k_p) or sa.shape != (bsz, m_p, k_p // BLOCK) or sb.shape != (bsz, n_p, k_p // BLOCK):
    raise ValueError(f"operand shapes disagree: a {a.shape}, sa {sa.shape}, b {b.shape}, sb {sb.shape}")
  if m_p % cfg.block_m or n_p % cfg.block_n or k_p % cfg.block_k or not (0 < m <= m_p and 0 < n <= n_p):
    raise ValueError(f"a {a.shape} / b {b.shape} are not padded to the tile {cfg.name()} for m={m}, n={n}")
  bm, bn = cfg.block_m, cfg.block_n
  tiles_m, tiles_n = m_p // bm, n_p // bn
  steps = k_p // cfg.block_k
  out_mul = 2.0 ** (_INT8_SHIFT * ((a_elem == "int8") + (b_elem == "int8")))
  o_dtype = jnp.dtype(out_dtype)
  store_dtype = wt._uint_of(o_dtype) if interpret else o_dtype
  tile = functools.partial(_tile_of, tiles_m=tiles_m, tiles_n=tiles_n, group_m=cfg.group_m)
  sq = pl.squeezed
  in_specs = [
      pl.BlockSpec((sq, bm, k_p), lambda bi, p: (bi, tile(p)[0], 0)),
      pl.BlockSpec((sq, bm, k_p // BLOCK), lambda bi, p: (bi, tile(p)[0], 0)),
      pl.BlockSpec((sq, bn, k_p), lambda bi, p: (bi, tile(p)[1], 0)),
      pl.BlockSpec((sq, bn, k_p // BLOCK), lambda bi, p: (bi, tile(p)[1], 0)),
  ]
  out_spec = pl.BlockSpec((sq, bm, bn), lambda bi, p: (bi, *tile(p)))
  kernel = functools.partial(_kernel, cfg=cfg, a_elem=a_elem, b_elem=b_elem, m=m, n=n, steps=steps,
                             tiles_n=tiles_n, out_mul=out_mul, out_dtype=o_dtype, interpret=interpret)
  params = None
  if not interpret:
    from jax.experimental.pallas import triton as pltriton
    params = pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  out = pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((bsz, m, n), store_dtype), grid=(bsz, tiles_m * tiles_n),
      in_specs=in_specs, out_specs=out_spec, interpret=interpret, compiler_params=params,
      name=f"mx_gemm_triton_{a_elem}_{b_elem}_{cfg.name()}")(a, sa, b, sb)
  if interpret:
    out = lax.bitcast_convert_type(out, o_dtype)
  return out


# ----------------------------------------------------------------------------------------------------------
# QArray glue
# ----------------------------------------------------------------------------------------------------------

_KIND = {"mxfp8_e4m3": "e4m3", "mxfp8_e5m2": "e5m2", "mxint8": "int8", "mxfp4_e2m1": "e4m3",
         "mxfp6_e2m3": "e4m3", "mxfp6_e3m2": "e4m3"}
FORMATS = tuple(_KIND)


def operand(q, rows_p: int, k_p: int):
  """A ([B,] rows, K) MX QArray quantized along its last axis -> (codes (B, rows_p, k_p) uint8, E8M0 bytes
  (B, rows_p, k_p/32) uint8, elem kind), zero-padded (padding scale bytes 127 = 1.0). FP4 / FP6 elements are
  widened to e4m3 codes (exact: each of their values is an e4m3 value)."""
  from mx_jax import _bits
  from mx_jax.packing import unpack
  from mx_jax.qarray import QArray
  if not isinstance(q, QArray):
    raise TypeError(f"operand must be a QArray; got {type(q).__name__}")
  if q.fmt not in _KIND or q.block_size != BLOCK or q.axis != q.ndim - 1:
    raise ValueError(f"the Triton GEMM takes MX formats {FORMATS} with 32-blocks along the last axis; got {q!r}")
  q = unpack(q)
  kind = _KIND[q.fmt]
  data = q.data
  if q.fmt.startswith(("mxfp4", "mxfp6")):
    data = _bits.from_elem_dtype(data, q.format.elem).astype(jnp.float8_e4m3fn)
  codes = lax.bitcast_convert_type(data, jnp.uint8)
  sbytes = lax.bitcast_convert_type(q.scales, jnp.uint8)
  if q.ndim == 2:
    codes, sbytes = codes[None], sbytes[None]
  return pad_to(codes, rows_p, k_p), pad_to(sbytes, rows_p, k_p // BLOCK, 127), kind


def fit_config(cfg: TritonGemmConfig, m: int, n: int, k: int) -> TritonGemmConfig:
  """Shrinks the tile for small problems: block_m / block_n to the next power of two >= the rows (>= 16),
  block_k to K's (>= 32)."""
  p2 = lambda v, lo: max(lo, 1 << max(0, int(v) - 1).bit_length())
  return dataclasses.replace(cfg, block_m=min(cfg.block_m, p2(m, 16)), block_n=min(cfg.block_n, p2(n, 16)),
                             block_k=min(cfg.block_k, p2(k, BLOCK)))


def mx_gemm(a, b, *, out_dtype=jnp.bfloat16, config: TritonGemmConfig | None = None,
            interpret: bool = False) -> jax.Array:
  """(M, N) = a (M, K) @ b (N, K)^T, or batched (B, M, K) x (B, N, K) -> (B, M, N), both MX QArrays quantized
  along K (``FORMATS``, mixed allowed). ``config``: a ``TritonGemmConfig`` (fitted down for small shapes)."""
  from mx_jax.qarray import QArray
  for nm, q in (("a", a), ("b", b)):
    if not isinstance(q, QArray):
      raise TypeError(f"{nm} must be a QArray; got {type(q).__name__}")
  if a.ndim != b.ndim or a.ndim not in (2, 3) or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
    raise ValueError(f"a, b must be (M, K), (N, K) or (B, M, K), (B, N, K); got {a.shape}, {b.shape}")
  if config is not None and not isinstance(config, TritonGemmConfig):
    raise TypeError(f"config must be a TritonGemmConfig; got {type(config).__name__}")
  out_dtype = jnp.dtype(out_dtype)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise TypeError(f"out_dtype must be a floating dtype; got {out_dtype}")
  m, k = a.shape[-2:]
  n = b.shape[-2]
  cfg = fit_config(config or DEFAULT_CONFIG, m, n, k)
  m_p, n_p, k_p = round_up(m, cfg.block_m), round_up(n, cfg.block_n), round_up(max(k, 1), cfg.block_k)
  ad, sa, ak = operand(a, m_p, k_p)
  bd, sb, bk = operand(b, n_p, k_p)
  out = gemm(ad, sa, bd, sb, a_elem=ak, b_elem=bk, m=m, n=n, out_dtype=out_dtype, config=cfg,
             interpret=interpret)
  return out if a.ndim == 3 else out[0]
