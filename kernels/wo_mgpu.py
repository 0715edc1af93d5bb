"""MXFP4 / NVFP4 / MXFP8 / MXFP6 / MXINT8 weight-only GEMM on Hopper in Pallas on Mosaic GPU: out = x bf16 @ W^T.

W is an (N, K) MXFP4 weight (E2M1 codes, blocks of 32 along K, E8M0 scales), NVFP4 (E2M1, blocks of 16 with
E4M3 scales, an FP32 tensor scale applied in the epilogue), MXFP8 (E4M3 / E5M2 bytes), MXFP6 (E2M3 / E3M2) or
MXINT8. A
producer warpgroup streams it with TMA (``plgpu.emit_pipeline_warp_specialized``); one or two consumer
warpgroups decode it in registers straight into the A operand of bf16 ``wgmma`` (m64 x n=Mp x k16, x^T the B
operand in shared memory). One CTA per 64 weight rows walks all of K: no split-K, no second kernel.
``MgpuWOConfig``: ``wgs=2`` splits each step's blocks between two consumer warpgroups, whose FP32 partials are
added in the epilogue through shared memory (an mbarrier orders them); ``cluster=2`` multicasts each x tile to
the two CTAs of a cluster.

Weight layout (``prepare_weight_mgpu``, done once). Each (64-row tile, 32-block) is 256 uint32 words in
*thread order*: thread i = 32 w + 4 q + t of the warpgroup holds word 2i + h for row 16 w + 8 h + q, which
packs the 8 codes of that row at columns 8 g + 2 t + v (g < 4, v < 2) -- exactly the thread's slice of the
wgmma A fragment (Mosaic GPU's ``WGMMA_LAYOUT``). Half v of the word is a ``wo_triton.pack_fp4`` uint16
(code g's magnitude at ``FP4_MAG[g]``, its sign at ``FP4_SIGN[g]``), so one shift and one mask (two more for
g = 2, 3) put a code's bits at bf16 bits 8..6 and 15: the value elem * 2^-126 (code 0.5 a bf16 subnormal,
which sm_90's ``mul.rn.bf16x2`` keeps). Then, with every E8M0 byte in 1..134 (``fold_ok``, true of trained
weights), one ``mul.rn.bf16x2`` by 2^(e + 120) gives elem * 2^(e - 6) and the epilogue multiplies the FP32
accumulator by 2^6; otherwise ×2^126 then ×2^e (the scale's bf16: byte 0 is 2^-127, 255 NaN) gives elem * 2^e.
Both are exact (the product is representable: bf16 has FP32's exponent range) except byte 0 with codes 0.5 /
1.5, below bf16's least subnormal. NVFP4 with ``fold_ok`` (every E4M3 byte normal, or 0 over a block of zero
codes): one ``mad`` makes the bf16 bits ``(b << 4) + (239 << 7)`` = s * 2^119 of the byte b, so the multiply
gives elem * s * 2^-7 and the epilogue multiplies by 2^7 and the tensor scale; otherwise the byte converts
exactly (E4M3 -> f16 -> f32 -> bf16: subnormal scales, 0 and NaN included) for the unfolded path.

MXFP8 (``pack_words8``): 512 words per (tile, block), thread i's words 4 i + 2 h + j holding row 16 w + 8 h + q's
bytes of columns 8 g + 2 t + v for g = 2 j, 2 j + 1 (one 16-byte load). Integer ops split each byte into a
high-byte word (sign, top exponent bits) and a low-byte word, one PRMT interleaves them into a bf16x2 of
elem * 2^-r (r = 120 for E4M3, 112 for E5M2), and one multiply by 2^(e - 127 + r) gives elem * 2^e when every
scale byte is in ``FP8_FOLD_BYTES``; otherwise ×2^r then ×2^e. MXINT8 (value k * 2^-6, the same word layout)
flips each byte's sign bit and goes through f16 (``_INT8_BF16``): r = 106.

MXFP6 (``pack_words6``): a thread's 16 codes of a (tile, block) are 96 bits, three word-planes (plane p at word
128 p + i, so each plane is one conflict-free 4-byte load). Its 8 bf16 pairs (h, g) keep both codes' 5 magnitude
bits 16 apart (``FP6_MAG``: three pairs per word at bits 0, 5, 10 of each half) and both sign bits 16 apart
(``FP6_SIGN``). Per pair: one shift and one mask put the magnitudes at bf16 bits 4..8 (E2M3) / 5..9 (E3M2), which
reads elem * 2^-126 / 2^-124 (subnormal codes as bf16 subnormals); a shift and a masked OR add the signs; one
multiply by 2^(e - 127 + r) finishes when every scale byte is in ``FP6_FOLD_BYTES`` (0..128 / 0..130), otherwise
×2^r then ×2^e.

A thread's two words are one 8-byte shared-memory load, its two scale bytes (rows r, r + 8; byte order 16 w +
2 q + h) one 2-byte load (NVFP4: four bytes, byte 32 w + 4 q + 2 h + c for 16-block c of the 32-block, one
4-byte load). Stored as words (K_p / (32 S), N_p / 64 * 8 S (FP6 12 S, FP8 16 S), 32) and scales
(K_p / (32 S), N_p / 64 * S, 64 or 128): S blocks per pipeline step, one contiguous run per (step, tile), the
tiles of a step adjacent (the group-major order of session 10).

The FP32 accumulator is written transposed (x rows major) through shared memory and one TMA store per CTA,
so the result is (Mp, N) with no transpose kernel. ``interpret=True`` (CPU tests) decodes with jnp from the
same words into shared memory (the interpreter's wgmma takes A from shared memory only); the compiled kernel
uses the inline PTX (``_decode_regs``), which only the GPU runs: ``benchmarks/bench_wo_mgpu.py`` checks it
against a float64 reference on every code at extreme scales before timing.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from kernels._dispatch import pad_to, round_up
from kernels.wo_triton import FP4_MAG, FP4_SIGN, fp4_bits_ptx, fp4_codes
from mx_jax import _bits
from mx_jax.formats import get_format
from mx_jax.packing import element_codes, unpack
from mx_jax.qarray import QArray

TILE_N = 64        # weight rows per CTA (the wgmma M)
BLOCK = 32         # MX block
FOLD = 120         # folded decode: 2^(e + FOLD) is the bf16 scale the decode multiplies by
SHIFT = -6         # folded decode: value = elem * 2^(e + SHIFT); the epilogue multiplies by 2^-SHIFT
NV_SHIFT = -7      # NVFP4 folded: value = elem * s * 2^NV_SHIFT (s * 2^(126 + NV_SHIFT) <= 448 * 2^119 is finite)
NV_FOLD_BITS = (126 + NV_SHIFT + 120) << 7  # added to an E4M3 byte << 4 (s * 2^-120 as bf16 bits): s * 2^119
FORMATS = {"mxfp4_e2m1": 32, "nvfp4": 16, "mxfp8_e4m3": 32, "mxfp8_e5m2": 32, "mxint8": 32, "mxfp6_e2m3": 32,
           "mxfp6_e3m2": 32}  # -> scale block
# FP8: the decode's bf16 bits read elem * 2^-FP8_RESCALE; (lowest, highest) E8M0 byte of the folded decode (the
# scale 2^(e - 127 + rescale) a finite normal bf16, elem * 2^(e - 127) inside bf16's range, least subnormal included)
FP8_RESCALE = {"mxfp8_e4m3": 120, "mxfp8_e5m2": 112, "mxint8": 106}
FP8_FOLD_BYTES = {"mxfp8_e4m3": (8, 134), "mxfp8_e5m2": (16, 142), "mxint8": (0, 148)}
# FP8 byte b -> bf16 bits (b & 0x80 | (b >> sh) & mh) << 8 | (b << sl) & ml: elem * 2^-FP8_RESCALE (subnormal
# codes as bf16 subnormals)
FP8_BITS = {"mxfp8_e4m3": (4, 0x07, 4, 0xF0), "mxfp8_e5m2": (3, 0x0F, 5, 0xE0)}
# FP6 (``pack_words6``): a code's 5 magnitude bits land at bf16 bits FP6_LOW .. FP6_LOW + 4 (its mantissa at the top
# of bf16's), which reads elem * 2^-FP6_RESCALE (subnormal codes as bf16 subnormals); fold window as FP8's.
FP6_LOW = {"mxfp6_e2m3": 4, "mxfp6_e3m2": 5}
FP6_RESCALE = {"mxfp6_e2m3": 126, "mxfp6_e3m2": 124}
FP6_FOLD_BYTES = {f: (0, 254 - r) for f, r in FP6_RESCALE.items()}
# Pair (h, g) of a thread (row 16 w + 8 h + q, columns 8 g + 2 t + v, v the bf16 half): its magnitudes at bits
# o .. o + 4 of both halves of word-plane p (FP6_MAG[h, g] = (p, o)); its signs at bit b of both halves of plane p
# (FP6_SIGN[h, g] = (p, b)).
FP6_MAG = {(0, 0): (0, 0), (0, 1): (0, 5), (0, 2): (0, 10), (1, 0): (1, 0), (1, 1): (1, 5), (1, 2): (1, 10),
           (0, 3): (2, 0), (1, 3): (2, 5)}
FP6_SIGN = {(0, 0): (0, 15), (1, 0): (1, 15), (0, 1): (2, 10), (0, 2): (2, 11), (0, 3): (2, 12), (1, 1): (2, 13),
            (1, 2): (2, 14), (1, 3): (2, 15)}

UNFOLD_RESCALE = 126  # FP4 unfolded decode: elem * 2^-126 times 2^126, then times the scale 2^e itself
# Every E8M0-scaled format's (lowest, highest) scale byte of the folded decode (MXFP4: 2^(e + FOLD) a normal finite
# bf16 and elem * 2^(e - 6) >= 2^-133, bf16's least subnormal, for elem >= 0.5); NVFP4 has ``nv_fold_ok``.
FOLD_BYTES = {"mxfp4_e2m1": (1, 254 - FOLD), **FP8_FOLD_BYTES, **FP6_FOLD_BYTES}
MAX_ROWS = 128     # x rows per call (wgmma N <= 256; 64 FP32 accumulator registers per thread at 128)
ONE_TILE_ROWS = 48  # up to this many rows (rounded up to 8), one row tile (session 17: 21.8 us; as 2 x 32: 37.2)
ROW_TILE = 32      # x rows per CTA beyond that: row tiles side by side, 4 stages + multicast (M = 64: 33.8 us
                   # against 37.0 as one 64-row tile with 2 stages; M = 128: 65.2 against 88.8 as 72 + 56 rows)
KERNEL_ROWS = 192  # beyond this many x rows, wo_matmul_mgpu decodes W to bf16 once and runs XLA's bf16 GEMM
                   # (session 20, K = N = 8192: the two paths tie at 256 rows for MXFP4 / NVFP4, MXFP8 between
                   # 192 and 256; at 2048 rows the decode path is 2.2-2.8x faster than the kernel)
SMEM_LIMIT = 220 * 1024  # of the H100's 227 KB per CTA (the pipeline's barriers need a little)


def word_rows(fmt: str) -> int:
  """Rows of 32 uint32 words per (64-row tile, 32-block): 256 words of FP4, 384 of FP6, 512 of FP8 / INT8."""
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {sorted(FORMATS)}; got {fmt!r}")
  return 16 if fmt in FP8_RESCALE else 12 if fmt in FP6_RESCALE else 8


@dataclasses.dataclass(frozen=True)
class MgpuWOConfig:
  steps: int = 16              # 32-blocks per pipeline step (fixes the weight layout)
  max_concurrent_steps: int = 4
  lag: bool = True             # release a step's buffers one step late; wait for the previous step's wgmmas only
  wgs: int = 2                 # consumer warpgroups; 2 split each step's blocks and sum through shared memory
  cluster: int = 1             # CTAs per cluster sharing each x tile (TMA multicast); 2 needs N_p % 128 == 0

  def __post_init__(self):
    if self.steps not in (2, 4, 8, 16, 32):
      raise ValueError(f"steps must be 2, 4, 8, 16 or 32; got {self.steps!r}")
    if self.wgs not in (1, 2):
      raise ValueError(f"wgs must be 1 or 2; got {self.wgs!r}")
    if self.cluster not in (1, 2):
      raise ValueError(f"cluster must be 1 or 2; got {self.cluster!r}")
    if not 2 <= self.max_concurrent_steps <= 12 or self.max_concurrent_steps <= int(self.lag):
      raise ValueError(f"max_concurrent_steps must be in 2..12; got {self.max_concurrent_steps!r}")

  def name(self) -> str:
    return (f"mgpu_s{self.steps}_c{self.max_concurrent_steps}{'_lag' if self.lag else ''}"
            f"{'_wg2' if self.wgs == 2 else ''}{'_cl2' if self.cluster == 2 else ''}")


def smem_bytes(cfg: MgpuWOConfig, mp: int, fmt: str = "mxfp4_e2m1") -> int:
  """Shared memory of one CTA: the pipeline's stages (x tile; words, 1 KB per 32-block (FP8 2 KB); scales, 64
  bytes per 32-block (NVFP4 128)), the output tile and, with two consumer warpgroups, the FP32 partial sum."""
  if not isinstance(cfg, MgpuWOConfig):
    raise TypeError(f"cfg must be an MgpuWOConfig; got {type(cfg).__name__}")
  words = 128 * word_rows(fmt)  # (validates fmt)
  per_step = mp * BLOCK * cfg.steps * 2 + words * cfg.steps + (128 if fmt == "nvfp4" else 64) * cfg.steps
  return per_step * cfg.max_concurrent_steps + mp * TILE_N * (4 + 4 * (cfg.wgs == 2))


def max_rows(steps: int, fmt: str = "mxfp4_e2m1") -> int:
  """The most x rows (a multiple of 8, <= MAX_ROWS) whose tiles fit two pipeline stages."""
  cfg = MgpuWOConfig(steps=steps, max_concurrent_steps=2)
  return max(m for m in range(8, MAX_ROWS + 1, 8) if smem_bytes(cfg, m, fmt) <= SMEM_LIMIT)


def default_config(w: "MgpuWeight", mp: int, interpret: bool = False) -> MgpuWOConfig:
  """Session 16's fastest at M = 8..32: steps 16, 4 stages, two consumer warpgroups, x multicast to a cluster
  of two CTAs where N_p and the rows allow (not in the interpreter, which deadlocks on clusters with few host
  threads); fewer stages where the x tile needs the room."""
  if not isinstance(w, MgpuWeight):
    raise TypeError(f"w must be a prepare_weight_mgpu(...) result; got {type(w).__name__}")
  if not (isinstance(mp, int) and 0 < mp <= MAX_ROWS and mp % 8 == 0):
    raise ValueError(f"mp must be a multiple of 8 in 8..{MAX_ROWS} (x rows after padding); got {mp!r}")
  cluster = 2 if (w.n_padded % (2 * TILE_N) == 0 and mp % 16 == 0 and not interpret) else 1
  cfg = MgpuWOConfig(steps=w.steps, cluster=cluster)
  while smem_bytes(cfg, mp, w.fmt) > SMEM_LIMIT and cfg.max_concurrent_steps > 2:
    cfg = dataclasses.replace(cfg, max_concurrent_steps=cfg.max_concurrent_steps - 1)
  return cfg


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MgpuWeight:
  """An (N, K) MXFP4, NVFP4, MXFP8, MXFP6 or MXINT8 weight in the kernel's layout (module docstring): ``words``
  uint32, ``scales`` uint8 (E8M0 or E4M3 bytes), ``tensor_scale`` (1,) float32 for NVFP4 (None otherwise)."""
  words: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None
  n: int = dataclasses.field(metadata=dict(static=True))
  k: int = dataclasses.field(metadata=dict(static=True))
  steps: int = dataclasses.field(metadata=dict(static=True))
  fold_ok: bool = dataclasses.field(default=False, metadata=dict(static=True))
  fmt: str = dataclasses.field(default="mxfp4_e2m1", metadata=dict(static=True))

  @property
  def nv(self) -> bool:
    return self.fmt == "nvfp4"

  @property
  def fp8(self) -> bool:
    """One byte per element (MXFP8 or MXINT8): the ``pack_words8`` layout."""
    return self.fmt in FP8_RESCALE

  @property
  def fp6(self) -> bool:
    """MXFP6 (E2M3 or E3M2): the ``pack_words6`` layout."""
    return self.fmt in FP6_RESCALE

  @property
  def shape(self) -> tuple[int, int]:
    return (self.n, self.k)

  @property
  def n_padded(self) -> int:
    return self.words.shape[1] // (word_rows(self.fmt) * self.steps) * TILE_N

  @property
  def k_padded(self) -> int:
    return self.scales.shape[0] * self.steps * BLOCK

  @property
  def nbytes(self) -> int:
    return int(self.words.size * 4 + self.scales.size + (4 if self.nv else 0))


def _thread_codes(codes: jax.Array, steps: int):
  """(N, K) codes -> (uint32 codes as (tiles, w, h, q, K blocks, g, t, v): row 64 tile + 16 w + 8 h + q, column
  32 block + 8 g + 2 t + v, i.e. thread 32 w + 4 q + t's A-fragment slots), tiles, K blocks; checks the shape."""
  if codes.ndim != 2 or codes.shape[0] % TILE_N or codes.shape[1] % (BLOCK * steps):
    raise ValueError(f"codes must be (N, K) with N % {TILE_N} == 0 and K % {BLOCK * steps} == 0 (steps={steps}); "
                     f"got shape {codes.shape}")
  nt, kb = codes.shape[0] // TILE_N, codes.shape[1] // BLOCK
  return codes.astype(jnp.uint32).reshape(nt, 4, 2, 8, kb, 4, 4, 2), nt, kb


def pack_words(codes: jax.Array, steps: int) -> jax.Array:
  """(N, K) FP4 codes (N % 64 == 0, K % (32 steps) == 0) -> (K / (32 steps), N / 64 * 8 steps, 32) uint32."""
  c, nt, kb = _thread_codes(codes, steps)                          # (nt, w, h, q, kb, g, t, v)
  half = jnp.zeros((nt, 4, 2, 8, kb, 4, 2), jnp.uint32)            # (nt, w, h, q, kb, t, v)
  for g in range(4):
    cg = c[:, :, :, :, :, g]
    half = half | ((cg & 7) << FP4_MAG[g]) | ((cg >> 3) << FP4_SIGN[g])
  word = half[..., 0] | (half[..., 1] << 16)                       # (nt, w, h, q, kb, t)
  word = word.reshape(nt, 4, 2, 8, kb // steps, steps, 4)
  word = word.transpose(4, 0, 5, 1, 3, 6, 2)                       # (ks, nt, s, w, q, t, h)
  return word.reshape(kb // steps, nt * 8 * steps, 32)


def pack_words8(codes: jax.Array, steps: int) -> jax.Array:
  """(N, K) FP8 codes (N % 64 == 0, K % (32 steps) == 0) -> (K / (32 steps), N / 64 * 16 steps, 32) uint32:
  word 4 i + 2 h + j of a (tile, block) (thread i = 32 w + 4 q + t) holds row 16 w + 8 h + q's bytes at columns
  16 j + 2 t, 16 j + 2 t + 1, 16 j + 8 + 2 t, 16 j + 9 + 2 t (low byte first): the thread's A-fragment pairs
  (8 g + 2 t + v, g = 2 j, 2 j + 1)."""
  c, nt, kb = _thread_codes(codes, steps)
  c = c.reshape(nt, 4, 2, 8, kb, 2, 2, 4, 2)                       # (nt, w, h, q, kb, j, gl, t, v)
  word = (c[..., 0, :, 0] | c[..., 0, :, 1] << 8 | c[..., 1, :, 0] << 16 | c[..., 1, :, 1] << 24)  # (.., kb, j, t)
  word = word.reshape(nt, 4, 2, 8, kb // steps, steps, 2, 4)
  word = word.transpose(4, 0, 5, 1, 3, 7, 2, 6)                     # (ks, nt, s, w, q, t, h, j)
  return word.reshape(kb // steps, nt * 16 * steps, 32)


def pack_words6(codes: jax.Array, steps: int) -> jax.Array:
  """(N, K) FP6 codes (N % 64 == 0, K % (32 steps) == 0) -> (K / (32 steps), N / 64 * 12 steps, 32) uint32:
  word 128 p + i of a (tile, block) (thread i = 32 w + 4 q + t; stored at row 4 p + w, column 4 q + t) is
  word-plane p of thread i: for each of its pairs (h, g) (row 16 w + 8 h + q, columns 8 g + 2 t + v, v = 0 in the
  low half) the magnitudes at ``FP6_MAG[h, g]`` and the signs at ``FP6_SIGN[h, g]``."""
  c, nt, kb = _thread_codes(codes, steps)                          # (nt, w, h, q, kb, g, t, v)
  planes = [jnp.zeros((nt, 4, 8, kb, 4), jnp.uint32) for _ in range(3)]  # (nt, w, q, kb, t)
  for (h, g), (p, o) in FP6_MAG.items():
    for v in range(2):
      planes[p] = planes[p] | ((c[:, :, h, :, :, g, :, v] & 0x1F) << (o + 16 * v))
  for (h, g), (p, b) in FP6_SIGN.items():
    for v in range(2):
      planes[p] = planes[p] | ((c[:, :, h, :, :, g, :, v] >> 5) << (b + 16 * v))
  word = jnp.stack(planes)                                            # (p, nt, w, q, kb, t)
  word = word.reshape(3, nt, 4, 8, kb // steps, steps, 4)
  word = word.transpose(4, 1, 5, 0, 2, 3, 6)                          # (ks, nt, s, p, w, q, t)
  return word.reshape(kb // steps, nt * 12 * steps, 32)


def pack_scales(sb: jax.Array, steps: int, block: int = BLOCK) -> jax.Array:
  """(N, K / 32) E8M0 bytes -> (K / (32 steps), N / 64 * steps, 64) uint8, byte 16 w + 2 q + h of a 32-block
  holding row 16 w + 8 h + q. ``block=16`` (NVFP4): (N, K / 16) E4M3 bytes -> (..., 128), byte 32 w + 4 q + 2 h
  + c holding 16-block c of that row's 32-block."""
  if block not in (16, 32):
    raise ValueError(f"block must be 16 or 32; got {block!r}")
  per = BLOCK // block
  if sb.ndim != 2 or sb.shape[0] % TILE_N or sb.shape[1] % (steps * per):
    raise ValueError(f"sb must be (N, K / {block}) with N % {TILE_N} == 0 and K / 32 % steps == 0 "
                     f"(steps={steps}); got shape {sb.shape}")
  n, kb = sb.shape[0], sb.shape[1] // per
  nt = n // TILE_N
  s = sb.astype(jnp.uint8).reshape(nt, 4, 2, 8, kb // steps, steps, per)  # (nt, w, h, q, ks, s, c)
  return s.transpose(4, 0, 5, 1, 3, 2, 6).reshape(kb // steps, nt * steps, 64 * per)


def fold_ok_bytes(sb, fmt: str = "mxfp4_e2m1") -> bool:
  """True when every E8M0 byte b of ``sb`` keeps ``fmt``'s folded decode exact: lo <= b <= hi for
  ``FOLD_BYTES[fmt]`` = (lo, hi) (MXFP4 1..134, MXFP8 E4M3 8..134, E5M2 16..142, MXINT8 0..148, MXFP6 E2M3 0..128,
  E3M2 0..130)."""
  if fmt not in FOLD_BYTES:
    raise ValueError(f"fmt must be an E8M0-scaled format of {sorted(FOLD_BYTES)} (NVFP4: nv_fold_ok); got {fmt!r}")
  lo, hi = FOLD_BYTES[fmt]
  sb = np.asarray(sb).astype(np.int32)
  return bool(np.all((sb >= lo) & (sb <= hi)))


def nv_fold_ok(sb, codes) -> jax.Array:
  """True where NVFP4's folded scale conversion is exact everywhere: every E4M3 byte normal and finite
  (0x08..0x7E), or 0 over a 16-block of zero codes (its elements are ±0 whatever the scale). ``sb`` (N, K/16)
  uint8, ``codes`` (N, K) uint8 E2M1 codes."""
  sb, codes = jnp.asarray(sb), jnp.asarray(codes)
  if sb.ndim != 2 or codes.shape != (sb.shape[0], 16 * sb.shape[1]):
    raise ValueError(f"sb must be (N, K/16) and codes (N, K); got sb {sb.shape} and codes {codes.shape}")
  sb = sb.astype(jnp.int32)
  normal = (sb >= 0x08) & (sb <= 0x7E)
  zero_block = jnp.all((codes & 7).reshape(sb.shape + (16,)) == 0, axis=-1)
  return jnp.all(normal | ((sb == 0) & zero_block))


def prepare_weight_mgpu(w: QArray, steps: int = 16) -> MgpuWeight:
  """Lays out an (N, K) MXFP4, NVFP4, MXFP8, MXFP6 or MXINT8 QArray quantized along K (axis 1) for
  ``wo_matmul_mgpu`` (do it once, eagerly: ``fold_ok`` is read on the host)."""
  if not isinstance(w, QArray):
    raise TypeError(f"w must be a QArray (mx_jax.quantize(...)); got {type(w).__name__}")
  if w.fmt not in FORMATS:
    raise ValueError(f"w has format {w.fmt!r}; the Mosaic GPU weight-only kernel takes {sorted(FORMATS)}")
  if w.ndim != 2 or w.axis != 1 or w.block_size != FORMATS[w.fmt]:
    raise ValueError(f"w must be an (N, K) QArray quantized along axis 1 in blocks of {FORMATS[w.fmt]}; got {w!r}")
  MgpuWOConfig(steps=steps)  # validates steps
  words, scales, ts, nv_ok = _prepare(w, steps)
  try:
    ok = bool(nv_ok) if w.fmt == "nvfp4" else fold_ok_bytes(scales, w.fmt)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
          jax.errors.TracerBoolConversionError):
    ok = False
  n, k = w.shape
  return MgpuWeight(words, scales, ts, n, k, steps, ok, w.fmt)


@functools.partial(jax.jit, static_argnums=1)
def _prepare(w: QArray, steps: int):
  w = unpack(w)
  codes = element_codes(w)
  n = codes.shape[0]
  nv, block = w.fmt == "nvfp4", FORMATS[w.fmt]
  n_p, k_p = round_up(n, TILE_N), round_up(max(codes.shape[1], 1), BLOCK * steps)
  codes = pad_to(codes, n_p, k_p)
  sb = pad_to(lax.bitcast_convert_type(w.scales, jnp.uint8), n_p, k_p // block, 0x38 if nv else 127)  # 1.0
  ts = w.tensor_scale.astype(jnp.float32).reshape(1) if nv else None
  nv_ok = nv_fold_ok(sb, codes) if nv else jnp.bool_(False)
  pack = pack_words8 if w.fmt in FP8_RESCALE else pack_words6 if w.fmt in FP6_RESCALE else pack_words
  words = pack(codes, steps)
  return words, pack_scales(sb, steps, block), ts, nv_ok


# ----------------------------------------------------------------------------------------------------------
# Decode: inline PTX on the thread's registers (compiled), jnp from the same words (interpreter)
# ----------------------------------------------------------------------------------------------------------


def _asm_scaled(body: str, rescale: int, fold: bool, scale: str) -> str:
  """The decode's shared tail: ``body`` leaves bf16x2 elem * 2^-rescale in t (u free as scratch); times the
  folded scale register ``scale`` (2^(e - 127 + rescale)), or unfolded times 2^rescale, then the scale 2^e."""
  if not fold:
    r = (rescale + 127) << 7
    body += f" mov.b32 u, 0x{r:04X}{r:04X}; mul.rn.bf16x2 t, t, u;"
  return "{ .reg .b32 t, u; " + body + f" mul.rn.bf16x2 $0, t, {scale}; }}"


def _asm_decode(g: int, fold: bool) -> str:
  """Code g of the word $1 (one code per bf16 half) -> bf16x2 $0: the bits masked into place (elem * 2^-126,
  ``wo_triton.fp4_bits_ptx``), then times the folded scale $2 (``fold``) or times 2^126 and the scale $2."""
  return _asm_scaled(fp4_bits_ptx(g, "t"), UNFOLD_RESCALE, fold, "$2")


# E4M3 byte (low 8 bits of $1) -> its exact value as bf16 in both halves of $0 (for the unfolded NVFP4 decode):
# E4M3 -> f16 (exact, subnormals and NaN included) -> f32 -> bf16 (exact: 4 significant bits, E4M3's range).
_ASM_E4M3_BF16X2 = ("{ .reg .b16 l, lo, hi; .reg .b32 h; .reg .f32 f; cvt.u16.u32 l, $1; "
                    "cvt.rn.f16x2.e4m3x2 h, l; mov.b32 {lo, hi}, h; cvt.f32.f16 f, lo; cvt.rn.bf16x2.f32 $0, f, f; }")


def _lane_helpers():
  """For inline_mgpu bodies: (i32 constant maker, i32 -> index cast, thread index within the warpgroup)."""
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith
  from jax.experimental.mosaic.gpu import utils as mu

  i32, index = ir.IntegerType.get_signless(32), ir.IndexType.get()
  c = lambda v: arith.constant(i32, v)  # noqa: E731
  ix = lambda v: arith.index_cast(index, v)  # noqa: E731
  return c, ix, arith.remui(mu.thread_idx(), c(128))


# MXINT8 (code k, value k * 2^-6): from the word with its bytes' sign bits flipped (k + 128), PRMT makes the f16
# 1024 + k + 128 of bytes 2 gl, 2 gl + 1, minus 1152 (exact) is k; its bits >> 3 (sign kept) read k * 2^-112 as bf16.
_INT8_BF16 = ("mov.b32 u, 0x64806480; sub.rn.f16x2 t, t, u; shr.b32 u, t, 3; and.b32 u, u, 0x0FFF0FFF; "
              "and.b32 t, t, 0x80008000; or.b32 t, t, u;")


def _asm_decode8(gl: int, fmt: str, fold: bool) -> str:
  """Bytes 2 gl, 2 gl + 1 of the high-byte word $1 and low-byte word $2 -> bf16x2 $0 (PRMT interleaves them),
  times the folded scale $3 (2^(e - 127 + rescale)), or times 2^rescale and the scale $3. MXINT8: $1 is the word
  with each byte's sign bit flipped (``_INT8_BF16``), $2 unused."""
  if fmt == "mxint8":
    body = f"prmt.b32 t, $1, 0x64646464, {0x4342 if gl else 0x4140:#x}; " + _INT8_BF16
  else:
    body = f"prmt.b32 t, $2, $1, {0x7362 if gl else 0x5140:#x};"
  return _asm_scaled(body, FP8_RESCALE[fmt], fold, "$3")


def _asm_decode6(mag: int, sign: int, fmt: str, fold: bool) -> str:
  """The pair whose magnitudes sit at bits ``mag`` .. ``mag`` + 4 of both halves of $1 and whose signs at bit ``sign``
  of both halves of $2 -> bf16x2 $0: shifted and masked into place (elem * 2^-FP6_RESCALE), the signs OR-ed in,
  times the folded scale $3 (2^(e - 127 + rescale)), or times 2^rescale and the scale $3."""
  low = FP6_LOW[fmt]
  sh = (f"shl.b32 t, $1, {low - mag};" if mag < low else f"shr.b32 t, $1, {mag - low};" if mag > low
        else "mov.b32 t, $1;")
  body = (f"{sh} and.b32 t, t, {0x1F * 0x10001 << low:#x}; shl.b32 u, $2, {15 - sign}; "
          "and.b32 u, u, 0x80008000; or.b32 t, t, u;")
  return _asm_scaled(body, FP6_RESCALE[fmt], fold, "$3")


def _decode_regs(w_ref, s_ref, b: int, fmt: str, wg_blocks: int = 0, fold: bool = True):
  """inline_mgpu body: block b (+ wg_blocks per consumer warpgroup before this one) of a stage of a ``fmt``
  weight -> (64, 32) bf16 WGMMA_LAYOUT array. MXFP4: elem * 2^(e - 6) (``fold``) or elem * 2^e; NVFP4:
  elem * s * 2^-7 or elem * s, s the E4M3 scale of the element's 16-block; MXFP8 / MXINT8 / MXFP6: elem * 2^e."""
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith, llvm, vector
  import jax.experimental.mosaic.gpu as mgpu
  from jax.experimental.mosaic.gpu import utils as mu

  nv, fp8, fp6 = _format_flags(fmt)
  i32, i8 = ir.IntegerType.get_signless(32), ir.IntegerType.get_signless(8)
  c, ix, tid = _lane_helpers()
  blk = c(b)
  if wg_blocks:
    blk = arith.addi(blk, arith.muli(arith.divui(mu.thread_idx(), c(128)), c(wg_blocks)))
  warp, lane = arith.divui(tid, c(32)), arith.remui(tid, c(32))
  if fp6:  # word-plane p at row 12 blk + 4 p + warp, column lane: three conflict-free 4-byte loads
    row = lambda p: ix(arith.addi(arith.muli(blk, c(12)), arith.addi(warp, c(4 * p))))  # noqa: E731
    planes = [vector.extract(vector.load(ir.VectorType.get((1,), i32), w_ref, [row(p), ix(lane)]), [], [0])
              for p in range(3)]
  else:
    nw = 4 if fp8 else 2  # words per thread and block (one 16- or 8-byte load)
    words = vector.load(ir.VectorType.get((nw,), i32), w_ref,
                        [ix(arith.addi(arith.muli(blk, c(4 * nw)), arith.divui(tid, c(32 // nw)))),
                         ix(arith.muli(arith.remui(tid, c(32 // nw)), c(nw)))])
  per = 2 if nv else 1  # scale bytes per row: one per 16-block (NVFP4), one per 32-block (MX)
  sbyte = arith.addi(arith.muli(warp, c(16 * per)), arith.muli(arith.divui(lane, c(4)), c(2 * per)))
  sv = vector.load(ir.VectorType.get((2 * per,), i8), s_ref, [ix(blk), ix(sbyte)])
  bf2 = ir.VectorType.get((2,), ir.BF16Type.get())
  layout = mgpu.WGMMA_LAYOUT
  shape = layout.registers_shape((TILE_N, BLOCK))
  assert shape == (1, 4, 1, 1, 2, 1, 1, 1, 1), shape
  regs = np.empty(shape, dtype=object)

  def scale_reg(byte):
    """The decode's $2 for one scale byte, in both bf16 halves."""
    e = arith.extui(i32, byte)
    if nv and fold:  # bf16 bits (b << 4) + NV_FOLD_BITS = s * 2^119 in both halves: one multiply-add
      return arith.addi(arith.muli(e, c(0x00100010)), c(NV_FOLD_BITS * 0x00010001))
    if nv:
      return llvm.inline_asm(i32, [e], _ASM_E4M3_BF16X2, "=r,r")
    if fold:  # bf16 bits of 2^(e - 127 + FOLD) in both halves: (e + FOLD) << 7 | (e + FOLD) << 23
      rescale = FP8_RESCALE[fp8] if fp8 else FP6_RESCALE[fp6] if fp6 else FOLD
      return arith.muli(arith.addi(e, c(rescale)), c(0x00800080))
    # bf16 of the E8M0 scale: e << 7, with 0x40 added for byte 0 (2^-127, subnormal) and 255 (NaN)
    special = arith.ori(arith.cmpi(arith.CmpIPredicate.eq, e, c(0)), arith.cmpi(arith.CmpIPredicate.eq, e, c(255)))
    bits = arith.addi(arith.shli(e, c(7)), arith.select(special, c(0x40), c(0)))
    return arith.muli(bits, c(0x00010001))

  def set_reg(g, h, out):
    regs[0, g, 0, 0, h, 0, 0, 0, 0] = vector.bitcast(bf2, vector.broadcast(ir.VectorType.get((1,), i32), out))

  if fp6:
    for h in range(2):
      k = scale_reg(vector.extract(sv, [], [h]))
      for g in range(4):
        (pm, mag), (ps, sign) = FP6_MAG[h, g], FP6_SIGN[h, g]
        set_reg(g, h, llvm.inline_asm(i32, [planes[pm], planes[ps], k], _asm_decode6(mag, sign, fp6, fold),
                                      "=r,r,r,r"))
    return mgpu.FragmentedArray(_registers=regs, _layout=layout, _is_signed=None)

  if fp8:  # word 2 h + j: columns (8 g + 2 t + v) of g = 2 j, 2 j + 1 (pack_words8)
    for h in range(2):
      k = scale_reg(vector.extract(sv, [], [h]))
      for j in range(2):
        word = vector.extract(words, [], [2 * h + j])
        if fp8 == "mxint8":  # each byte's sign bit flipped: k + 128
          hi = lo = arith.xori(word, c(-0x7F7F7F80))  # 0x80808080 as a signed i32
        else:
          sh, mh, sl, ml = FP8_BITS[fp8]
          hi = arith.ori(arith.andi(word, c(-0x7F7F7F80)),
                         arith.andi(arith.shrui(word, c(sh)), c(mh * 0x01010101)))
          lo = arith.andi(arith.shli(word, c(sl)), c(ml * 0x01010101 - (1 << 32 if ml >= 0x80 else 0)))
        for gl in range(2):
          set_reg(2 * j + gl, h, llvm.inline_asm(i32, [hi, lo, k], _asm_decode8(gl, fp8, fold), "=r,r,r,r"))
    return mgpu.FragmentedArray(_registers=regs, _layout=layout, _is_signed=None)

  for h in range(2):
    word = vector.extract(words, [], [h])
    ks = [scale_reg(vector.extract(sv, [], [per * h + j])) for j in range(per)]
    for g in range(4):
      k = ks[g // 2] if nv else ks[0]  # columns 8 g + 2 t + v: g < 2 in the first 16-block
      set_reg(g, h, llvm.inline_asm(i32, [word, k], _asm_decode(g, fold), "=r,r,r"))
  return mgpu.FragmentedArray(_registers=regs, _layout=layout, _is_signed=None)


def _format_flags(fmt: str) -> tuple[bool, str | None, str | None]:
  """(NVFP4?, the MXFP8 / MXINT8 format or None, the MXFP6 format or None) of a weight format."""
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {sorted(FORMATS)}; got {fmt!r}")
  return fmt == "nvfp4", (fmt if fmt in FP8_RESCALE else None), (fmt if fmt in FP6_RESCALE else None)


def decode_block_jnp(words, sbytes, fmt: str = "mxfp4_e2m1", fold: bool = True):
  """One (tile, block) of a ``fmt`` weight, (word_rows(fmt), 32) uint32 words and its scale bytes -> (64, 32)
  bf16, by the layout's definition (the interpreter's decode; tests check it against the codes). MXFP4: (64,)
  E8M0 bytes, elem * 2^(e - 6) (``fold``) or elem * 2^e; NVFP4: (128,) E4M3 bytes, elem * s * 2^-7 (``fold``)
  or elem * s; MXFP8 / MXINT8 / MXFP6: (64,) bytes, elem * 2^e. Exact where the result is a normal number
  (XLA:CPU flushes subnormals)."""
  nv, fp8, fp6 = _format_flags(fmt)
  rows, nbytes = word_rows(fmt), (2 if nv else 1) * TILE_N
  if words.shape != (rows, 32) or sbytes.shape != (nbytes,):
    raise ValueError(f"words must be ({rows}, 32) and sbytes ({nbytes},) for {fmt}; got {words.shape} and "
                     f"{sbytes.shape}")
  if fp8:  # word 4 i + 2 h + j, i = 32 w + 4 q + t: byte 2 gl + v is column 16 j + 8 gl + 2 t + v
    wd = words.reshape(4, 8, 4, 2, 2)                          # (w, q, t, h, j)
    code = jnp.stack([(wd >> (8 * b)) & 0xFF for b in range(4)]).reshape(2, 2, 4, 8, 4, 2, 2)  # (gl, v, w, q, t, h, j)
    code = code.transpose(2, 5, 3, 6, 0, 4, 1).reshape(TILE_N, BLOCK)  # rows (w, h, q), cols (j, gl, t, v)
    val = _bits.code_to_elem(code.astype(jnp.uint8), get_format(fp8).elem)
  elif fp6:  # word-plane p of thread i = 32 w + 4 q + t at row 4 p + w, column 4 q + t
    pl_ = words.reshape(3, 4, 8, 4)                          # (p, w, q, t)
    code = jnp.zeros((4, 2, 8, 4, 4, 2), jnp.uint32)          # (w, h, q, g, t, v)
    for (h, g), (p, o) in FP6_MAG.items():
      ps, b = FP6_SIGN[h, g]
      for v in range(2):
        cv = (pl_[p] >> (o + 16 * v)) & 0x1F | ((pl_[ps] >> (b + 16 * v)) & 1) << 5
        code = code.at[:, h, :, g, :, v].set(cv)
    val = _bits.code_to_elem(code.reshape(TILE_N, BLOCK).astype(jnp.uint8), get_format(fp6).elem)
  else:
    wd = words.reshape(4, 8, 4, 2)                            # (w, q, t, h)
    cols = []
    for v in range(2):
      half = (wd >> (16 * v)) & 0xFFFF
      cols += [fp4_codes(half, g) for g in range(4)]         # column 8 g + 2 t + v
    code = jnp.stack(cols).reshape(2, 4, 4, 8, 4, 2)         # (v, g, w, q, t, h)
    code = code.transpose(2, 5, 3, 1, 4, 0).reshape(TILE_N, BLOCK)  # rows (w, h, q), cols (g, t, v)
    val = _bits.code_to_elem(code, get_format("mxfp4_e2m1").elem)
  if nv:  # byte 32 w + 4 q + 2 h + c: row 16 w + 8 h + q, columns 16 c .. 16 c + 15
    s = lax.bitcast_convert_type(sbytes.astype(jnp.uint8), jnp.float8_e4m3fn).astype(jnp.float32)
    s = jnp.repeat(s.reshape(4, 8, 2, 2).transpose(0, 2, 1, 3).reshape(TILE_N, 2), 16, axis=1)
    return (val * s * jnp.float32(2.0 ** (NV_SHIFT if fold else 0))).astype(jnp.bfloat16)
  sb = sbytes.reshape(4, 8, 2).transpose(0, 2, 1).reshape(TILE_N).astype(jnp.int32)
  val = _bits.mul_pow2(val, (sb - 127 + (SHIFT if fold and not (fp8 or fp6) else 0))[:, None])
  return jnp.where((sb == 255)[:, None], jnp.nan, val).astype(jnp.bfloat16)


def _store_transposed(acc, o_ref, out_dtype, scale: float, add_ref=None, ts_ref=None):
  """inline_mgpu body: ((64, Mp) FP32 WGMMA_LAYOUT accumulator [+ add_ref (Mp, 64) FP32, transposed]) * scale
  [* ts_ref[0], NVFP4's tensor scale] -> o_ref (Mp, 64)."""
  from jax._src.lib.mlir import ir
  from jax._src.lib.mlir.dialects import arith, memref, vector
  from jax.experimental.mosaic.gpu import utils as mu

  f32 = ir.F32Type.get()
  c, ix, tid = _lane_helpers()
  warp, lane = arith.divui(tid, c(32)), arith.remui(tid, c(32))
  row0 = arith.addi(arith.muli(warp, c(16)), arith.divui(lane, c(4)))
  col0 = arith.muli(arith.remui(lane, c(4)), c(2))
  odt = mu.dtype_to_ir_type(out_dtype)
  mul = arith.constant(f32, float(scale))
  if ts_ref is not None:  # (scale * tensor scale), exact: scale is a power of two
    mul = arith.mulf(mul, memref.load(ts_ref, [ix(c(0))]))
  regs = acc.registers
  for idx in np.ndindex(regs.shape):
    g, h = idx[1], idx[4]
    reg = regs[idx]
    for v in range(2):
      val = vector.extract(reg, [], [v])
      col = ix(arith.addi(col0, c(8 * g + v)))
      row = ix(arith.addi(row0, c(8 * h)))
      if add_ref is not None:
        val = arith.addf(val, memref.load(add_ref, [col, row]))
      if scale != 1.0 or ts_ref is not None:
        val = arith.mulf(val, mul)
      if odt != f32:
        val = arith.truncf(odt, val)
      memref.store(val, o_ref, [col, row])
  return None


# ----------------------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------------------


def wo_call(x, w: MgpuWeight, *, config: MgpuWOConfig, out_dtype=jnp.bfloat16,
           interpret=False, rows=None, row_tiles: int = 1):
  """(M, N_p) = x (M, K_p) bf16 @ W^T, K_p = the weight's padded K. Each CTA works on ``rows`` = Mp rows (a
  multiple of 8, <= MAX_ROWS; default M).

  One row tile (``row_tiles=1``): M <= Mp; the TMA reads x's rows M..Mp-1 out of bounds (zeros; each output row
  depends on its own x row only) and the store writes rows 0..M-1, so no pad or slice kernel runs around it.
  ``row_tiles=R`` > 1: M = R * Mp exactly; the grid is (N tiles, R), the R CTAs of one weight tile adjacent in
  launch order, each with its own Mp rows of x. The decode is folded (one multiply per pair fewer) when
  ``w.fold_ok``. NVFP4: the epilogue multiplies by the tensor scale, read from ``w.tensor_scale`` in the kernel."""
  cfg = config
  if w.steps != cfg.steps:
    raise ValueError(f"w was laid out for steps={w.steps}; config has steps={cfg.steps}")
  mx, kp = x.shape
  mp = mx if rows is None else rows
  if not (isinstance(row_tiles, int) and row_tiles >= 1):
    raise ValueError(f"row_tiles must be a positive int; got {row_tiles!r}")
  if mp % 8 or mp > MAX_ROWS or kp != w.k_padded or not 0 < mx <= mp * row_tiles:
    raise ValueError(f"x must be (M, {w.k_padded}) with 0 < M <= rows, rows a multiple of 8 <= {MAX_ROWS}; got "
                     f"x {x.shape}, rows={rows}")
  if row_tiles > 1 and mx != mp * row_tiles:
    raise ValueError(f"row_tiles={row_tiles} needs x with exactly rows * row_tiles = {mp * row_tiles} rows; got {mx}")
  s = cfg.steps
  ks, nt = w.words.shape[0], w.n_padded // TILE_N
  if nt % cfg.cluster:
    raise ValueError(f"cluster={cfg.cluster} needs the weight's padded N ({w.n_padded}) to be a multiple of "
                     f"{TILE_N * cfg.cluster}")
  if cfg.cluster > 1 and mp % 16:  # the multicast x copy is split between the CTAs along its 8-row tiles
    raise ValueError(f"cluster={cfg.cluster} needs x rows padded to a multiple of 16; got {mp}")
  tile_k = BLOCK * s
  interp = plgpu.InterpretGPUParams() if interpret else None
  bf16 = jnp.bfloat16
  dr = 1 if cfg.lag else 0
  x_tr = (plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64))  # also the interpreter's A tile

  wgs = cfg.wgs
  per_wg = s // wgs
  fold, fmt, nv = w.fold_ok, w.fmt, w.nv
  scale = float(2.0 ** -(NV_SHIFT if nv else SHIFT)) if fold and not (w.fp8 or w.fp6) else 1.0
  wr = word_rows(fmt)
  sbytes = 128 if nv else 64  # scale bytes per (tile, 32-block)

  def kernel(x_g, w_g, s_g, *rest, **scratch):
    t_g, (o_g,) = (rest[0], rest[1:]) if nv else (None, rest)
    _kernel(x_g, w_g, s_g, t_g, o_g, **scratch)

  def _kernel(x_g, w_g, s_g, t_g, o_g, o_smem, aq=None, red=None, bar=None):
    ni = lax.axis_index("n") * cfg.cluster + (lax.axis_index("cluster") if cfg.cluster > 1 else 0)
    if row_tiles > 1:
      rows_t = pl.ds(lax.axis_index("r") * mp, mp)
      x_g, o_g = x_g.at[rows_t], o_g.at[rows_t]

    def pipeline(body, ctx):
      return plgpu.emit_pipeline_warp_specialized(
          body, grid=(ks,), memory_registers=40,
          in_specs=[
              plgpu.BlockSpec((mp, tile_k), lambda kk: (0, kk), transforms=x_tr, delay_release=dr,
                              collective_axes=("cluster",) if cfg.cluster > 1 else ()),
              plgpu.BlockSpec((None, wr * s, 32), lambda kk: (kk, 0, 0), delay_release=dr),
              plgpu.BlockSpec((None, s, sbytes), lambda kk: (kk, 0, 0), delay_release=dr),
          ],
          wg_axis="wg", num_compute_wgs=wgs, max_concurrent_steps=cfg.max_concurrent_steps, compute_context=ctx)

    def store(acc, target, dtype, sc, add=None, ts=None):
      if interp is None:
        opt = {k: r for k, r in (("add_ref", add), ("ts_ref", ts)) if r is not None}
        types = (plgpu.Layout.WGMMA,) + (plgpu.RefType(),) * (1 + len(opt))
        plgpu.inline_mgpu(arg_types=types)(
            lambda _, a, o, *r: _store_transposed(a, o, dtype, sc, **dict(zip(opt, r))))(acc, target, *opt.values())
      else:
        v = acc.T if add is None else acc.T + add[...]
        mul = jnp.float32(sc) if ts is None else jnp.float32(sc) * ts[...][0]
        target[...] = (v * mul).astype(dtype)

    def write_out(acc, add=None):
      store(acc, o_smem, o_smem.dtype, scale, add, t_g)
      plgpu.commit_smem()
      src = o_smem if mx >= mp else o_smem.at[pl.ds(0, mx)]  # one row tile of M < Mp rows: M rows stored
      plgpu.copy_smem_to_gmem(src, o_g.at[:, pl.ds(ni * TILE_N, TILE_N)])
      plgpu.wait_smem_to_gmem(0)

    def ctx(run):
      def scope(acc_ref):
        run(acc_ref)
        plgpu.wgmma_wait(0)
        return acc_ref[...]
      acc = pl.run_scoped(scope, plgpu.ACC((TILE_N, mp), jnp.float32))
      if wgs == 1:
        write_out(acc)
        return
      wg = lax.axis_index("wg")

      @pl.when(wg == 1)  # hands its partial to warpgroup 0
      def _():
        store(acc, red, jnp.float32, 1.0)
        plgpu.barrier_arrive(bar)

      @pl.when(wg == 0)
      def _():
        plgpu.barrier_wait(bar)
        write_out(acc, red)

    def body(_, x_s, w_s, s_s, acc_ref):
      wg0 = lax.axis_index("wg") * per_wg if wgs == 2 else 0
      for b in range(per_wg):
        xb = x_s.at[:, pl.ds(BLOCK * (wg0 + b), BLOCK)].T
        if interp is None:
          a = plgpu.inline_mgpu(
              arg_types=(plgpu.RefType(), plgpu.RefType()),
              return_type=plgpu.ShapeDtypeStruct((TILE_N, BLOCK), bf16, layout=plgpu.Layout.WGMMA),
          )(lambda _, wr_, sr, b=b: _decode_regs(wr_, sr, b, fmt, per_wg if wgs == 2 else 0,
                                                              fold))(w_s, s_s)
          plgpu.wgmma(acc_ref, a, xb)
        else:
          aw = aq.at[lax.axis_index("wg")] if wgs == 2 else aq
          aw[...] = decode_block_jnp(w_s[pl.ds(wr * (wg0 + b), wr), :], s_s[wg0 + b, :], fmt, fold)
          plgpu.commit_smem()
          plgpu.wgmma(acc_ref, aw, xb)
          plgpu.wgmma_wait(0)
      plgpu.wgmma_wait(per_wg if cfg.lag else 0)
      return acc_ref

    pipeline(body, ctx)(x_g, w_g.at[:, pl.ds(ni * wr * s, wr * s)], s_g.at[:, pl.ds(ni * s, s)])

  scratch = dict(o_smem=plgpu.SMEM((mp, TILE_N), out_dtype))
  if interp is not None:
    scratch["aq"] = plgpu.SMEM(((wgs,) if wgs == 2 else ()) + (TILE_N, BLOCK), bf16, transforms=x_tr)
  if wgs == 2:
    scratch["red"] = plgpu.SMEM((mp, TILE_N), jnp.float32)
    scratch["bar"] = plgpu.Barrier(num_arrivals=1)

  cl = dict(cluster=(cfg.cluster,), cluster_names=("cluster",)) if cfg.cluster > 1 else {}
  grid, names = ((nt // cfg.cluster,), ("n",)) if row_tiles == 1 else ((nt // cfg.cluster, row_tiles), ("n", "r"))
  f = plgpu.kernel(
      kernel, out_type=jax.ShapeDtypeStruct((mx, w.n_padded), out_dtype), grid=grid,
      grid_names=names, num_threads=wgs + 1, thread_name="wg", **cl,
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      scratch_types=scratch, interpret=interp)
  return f(x.astype(bf16), w.words, w.scales, *((w.tensor_scale,) if nv else ()))


def wo_matmul_mgpu(x: jax.Array, w: MgpuWeight, *, out_dtype=jnp.bfloat16,
                   config: MgpuWOConfig | None = None, interpret: bool = False,
                   row_tile: int | None = None, kernel_rows: int | None = None) -> jax.Array:
  """(..., N) = x (..., K) @ W^T for a ``prepare_weight_mgpu`` weight; x rounded to bf16, FP32 accumulation.

  Beyond ``kernel_rows`` x rows (default ``KERNEL_ROWS``), where the kernel is slower than a bf16 GEMM, the
  weight is decoded to bf16 once (``wo_mgpu_decode.decode_weight``, a Mosaic GPU kernel with the same decode)
  and XLA's bf16 GEMM runs: same products, same FP32 accumulation. Otherwise one kernel call. Up to
  ``ONE_TILE_ROWS`` rows (or ``row_tile``) run in one row tile of M rounded up to 8 without padding x; more rows
  run in tiles of ``row_tile`` (default ``ROW_TILE``; a multiple of 8, at most ``max_rows(w.steps)``) side by
  side in the grid, x padded to whole tiles (no pad or slice when M is a multiple of the tile). ``config`` defaults to ``default_config``. Runs on Hopper (Mosaic GPU), or in the
  Pallas interpreter with ``interpret=True``."""
  if not isinstance(w, MgpuWeight):
    raise TypeError(f"w must be a prepare_weight_mgpu(...) result; got {type(w).__name__}")
  if config is not None and not isinstance(config, MgpuWOConfig):
    raise TypeError(f"config must be an MgpuWOConfig; got {type(config).__name__}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array; got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[-1] != w.k:
    raise ValueError(f"x's last dim ({x.shape[-1] if x.ndim else None}) does not match the weight's K={w.k}")
  out_dtype = jnp.dtype(out_dtype)
  if out_dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16)):
    raise TypeError(f"out_dtype must be bfloat16, float16 or float32; got {out_dtype}")
  lead = x.shape[:-1]
  x2 = x.reshape((-1, w.k)).astype(jnp.bfloat16)
  m = x2.shape[0]
  if m == 0:
    return jnp.zeros(lead + (w.n,), out_dtype)
  if kernel_rows is not None and not (isinstance(kernel_rows, int) and kernel_rows >= 0):
    raise ValueError(f"kernel_rows must be a non-negative int or None; got {kernel_rows!r}")
  if m > (KERNEL_ROWS if kernel_rows is None else kernel_rows):
    from kernels.wo_mgpu_decode import _dequant_matmul  # (imports this module)
    return _dequant_matmul(x2, w, out_dtype, interpret).reshape(lead + (w.n,))
  top = max_rows(w.steps, w.fmt)
  if row_tile is not None and not (isinstance(row_tile, int) and 8 <= row_tile <= top and row_tile % 8 == 0):
    raise ValueError(f"row_tile must be a multiple of 8 in 8..{top} (max_rows at steps={w.steps}); got {row_tile!r}")
  mp = round_up(m, 8)
  if mp > (row_tile or min(ONE_TILE_ROWS, top)):  # several row tiles
    mp = row_tile or min(ROW_TILE, top)
  tiles = -(-m // mp)
  cfg = config or default_config(w, mp, interpret)
  if smem_bytes(cfg, mp, w.fmt) > SMEM_LIMIT:
    raise ValueError(f"config {cfg.name()} needs {smem_bytes(cfg, mp, w.fmt)} bytes of shared memory at {mp} rows "
                     f"(limit {SMEM_LIMIT}); use fewer max_concurrent_steps")
  xp = pad_to(x2, m if tiles == 1 else tiles * mp, w.k_padded)
  o = wo_call(xp, w, config=cfg, out_dtype=out_dtype, interpret=interpret, rows=mp, row_tiles=tiles)
  if o.shape != (m, w.n):
    o = o[:m, :w.n]
  return o.reshape(lead + (w.n,))
