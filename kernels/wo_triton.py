"""Weight-only GEMM for small batches in Pallas on the Triton backend: out (M, N) = x (M, K) bf16 @ W^T.

W is an (N, K) MX-quantized weight (MXFP8 e4m3/e5m2, MXFP6 e2m3/e3m2, MXFP4 e2m1, MXINT8: blocks of 32 along K
with E8M0 scales; NVFP4: E2M1, blocks of 16 with E4M3 scales and an FP32 tensor scale). Small M makes this a
stream over the weight bytes, so the kernel is a plain K loop that Triton software-pipelines (``num_stages``):
every load in the loop body is a separate pointer load of a power-of-two tile, issued ``num_stages - 1``
iterations ahead by Triton's pipeliner.

Prepared layout (``prepare_weight_triton``; once per weight): N is zero-padded to a multiple of 128, K to a
multiple of 256 (zero elements, scale 1.0). K is cut into *groups* of G elements whose bytes form *planes* of
TW bytes; decoding a group's planes gives S *tiles* of TW = G / S consecutive elements (tile j: elements
G g + TW j + i, i < TW), byte i of every plane holding element i of every tile:

  format        G    S  TW   planes  bytes/elem  plane p of group g (TW bytes, byte i)
  8-bit         32   1  32   1       1           code[32g + i]   (row-major: any G; the "elem" kernel uses G = BK)
  FP4 (MX/NV)   256  4  64   1 (u16) 1/2         word i: code[256g + 64j + i], j < 4, bits FP4_MAG / FP4_SIGN
                (512-groups with prepare_weight_triton(group=512): four 128-wide tiles)
  FP6           128  4  32   3       3/4         byte p of w_i = c[i] | c[32+i] << 6 | c[64+i] << 12 | c[96+i] << 18

(a tile comes out of one or three loads with shifts and masks, no interleaving). Row-major ("rows") weights
put each row's groups one after another; group-major ("groups", FP4 / FP6; ``prepare_weight_triton``'s
default for FP4) put group g of every row one after another, (K_p/G, N_p, planes * TW), so the tile of BN
rows a K step reads is one contiguous run (BN x 128 B for FP4) instead of BN runs K_p/2 bytes apart (session
10: MXFP4 at M = 16 19.2 -> 18.0 us). The kernel views row-major W as (N_p, K_p/G, planes, TW) bytes,
group-major W as (K_p/G, N_p, planes, TW) (every step then exactly one group), x as (M, K_p/G, S, TW) bf16
(a free reshape), so tile j of group g of x is a contiguous row slice. When a K step is one group (8-bit and
FP4 at BK = G = 256) every tile is loaded as a 2-D (rows, TW) block: Triton lays 2-D shared tiles out for the
MMA, while the 3-D (rows, T, TW) tiles of a multi-group step came out unswizzled (Nsight Compute, session 8:
2-4 way bank conflicts on every shared load). Scales stay 1 byte: (N_p, K_p/block) uint8 (E8M0 bytes, or
NVFP4's E4M3 bytes; group-major (K_p/G, N_p, G/block)); NVFP4's FP32 tensor scale multiplies the FP32
accumulator in the kernel's epilogue.

Decode (``WOConfig.decode``), value = elem * 2^c with a per-format constant c, 2^-c applied to the FP32
accumulator at the end (exact, a power of two):
  * "jnp" (default; the same code runs in the CPU interpreter, no arithmetic on subnormals):
    - e4m3 / e5m2: the byte is the FP8 code: bitcast, ``astype(f32).astype(bf16)`` (exact; the f32 hop makes
      Triton emit F2FP + HADD2.F32 + F2FP.BF16.PACK_AB instead of the quarter-rate F2F.BF16.F16 per element).
    - e2m1 / e2m3 / e3m2: sign and exponent|mantissa bits moved into an e4m3 byte (``_fp8_byte``): elem * 2^c
      (c = -6, -6, -4), subnormal codes landing on e4m3 subnormals, so the hardware convert is exact.
    - MXINT8 (k * 2^-6): f16 bits 0x6400 | (k ^ 0x80) = 1152 + k, minus 1152 in f16 (exact): k (c = 6).
  * "asm" (compiled only; the interpreter uses "jnp"): inline PTX on 32-bit registers. FP6 / e4m3 / MXINT8
    (4 bytes per register, ``_ASM_E4M3`` etc.): byte-parallel shifts/masks build bf16 high/low bytes, PRMT
    interleaves them; FP4 (two uint16 words per register, ``_asm_fp4``): one shift (or none) and a mask put a
    tile's magnitude bits at bf16 bits 8..6 and its sign at 15 in both halves (no PRMT, no 8-bit operand, so
    Triton loads x with LDSM: 621 -> 382 loop instructions per 256-deep step, session 9). Then one
    mul.rn.bf16x2 by 2^120 (2^112 for MXINT8) rescales: the same values as "jnp".
    Relies on sm_90 keeping bf16 subnormal inputs of mul.bf16x2 (FP4 0.5, FP6 / e4m3 subnormal codes);
    benchmarks/bench_wo.py checks every code against the XLA reference on the GPU before timing.
    ``WOConfig(fold=True)`` (with "elem" scaling) drops that final multiply and applies 2^(e + 120) (2^(e + 112)
    for MXINT8) as the bf16 scale instead, one multiply per element fewer; only for weights whose every scale
    keeps it finite (``TritonWeight.fold_ok``: e <= 7, or 15 for MXINT8; no NaN scale), else the kernel is built
    unfolded. NVFP4 folds 2^119 into its E4M3 scale (448 * 2^120 would overflow) and the epilogue the other 2.

Scaling (``WOConfig.scale_mode``):
  * "block" (promotion): one dot per 32-element block (16 for NVFP4) on the unscaled element values, then
    acc += partial * scale (FP32). Exact for every E8M0 scale (2^-127 .. 2^127) up to FP32 range of the
    result; FP32 accumulation as the XLA reference.
  * "elem": W tile * scale in bf16 (the scale broadcast along its 32 elements), one dot per K step. Exact when
    every nonzero |elem| * 2^(e + c) is a normal bf16 (and the weight finite), i.e. e in
    ``elem_exact_range(fmt)`` (e4m3: -117..119, e5m2: -110..112, e2m3: -117..125, e3m2: -118..123,
    e2m1: -119..125, int8: -126..121 — far wider than trained weights' scales). Below it, products that land
    on bf16 subnormals rely on the GPU keeping them (XLA:CPU in interpret mode flushes them); above it,
    overflow becomes Inf. NVFP4 is always exact here (|e2m1 * e4m3| in [2^-10, 2688]).

Grid (cdiv(N, BN), SPLIT_K); each program loops over K_p / SPLIT_K in BK steps (``lax.fori_loop`` -> scf.for).
``orient``: "xw" computes (Mp, BN) = x_tile @ W_tile^T (x is the MMA A operand, mma.sync for Mp < 64);
"wt" computes (BN, Mp) = W_tile @ x_tile^T (the decoded W is the A operand, so Hopper wgmma can take it from
registers) and transposes the tile before the store. Output: SPLIT_K == 1 writes ``out_dtype`` (M, N)
directly (masked rows / columns: no padding or slicing kernels); SPLIT_K > 1 writes FP32 partials
(SPLIT_K, M, N) that XLA sums (one small fusion), or with ``WOConfig(reduce="kernel")`` stores them to a
workspace and counts arrivals per N tile (CTA barrier, then a GPU-scope acq_rel atomic on a counter XLA
zeroes); the last program of the tile reads the others' partials and writes p_0 + p_1 + ... in ``out_dtype``
(the same sum, in the same order, as XLA's: bit-identical; a ~2 us longer kernel tail, so the default only at
17..32 rows, session 11). Mp = M rounded up to a power of two >= 16 (tl.dot's
minimum); rows >= M are masked loads. M > 256 runs in row chunks of 256 (128 for FP4: ``max_rows``).

``interpret=True`` runs the same kernel body in the Pallas interpreter (CPU tests). x travels as its bf16
bits (uint16) and floats come out as bits in interpret mode (XLA:CPU flushes subnormals in pads/selects).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kernels._dispatch import pad_to, round_up
from mx_jax import _bits
from mx_jax.packing import element_codes, unpack
from mx_jax.qarray import QArray

N_ALIGN = 128
K_ALIGN = 256
MAX_ROWS = 256          # rows per kernel call (Mp <= 256); larger M runs in chunks
SMEM_BUDGET = 160 * 1024  # pipeline buffers we allow (H100: 227 KB per CTA; leave room for layout scratch)


@dataclasses.dataclass(frozen=True)
class _Spec:
  elem: str       # decode kind: e4m3 | e5m2 | int8 | e2m1 | e2m3 | e3m2
  group: int      # K elements per packing group
  planes: int     # 32-byte planes per group
  block: int      # scale block (32 MX, 16 NVFP4)
  shift: int      # decoded value = elem * 2^shift
  bits: int       # storage bits per element
  nv: bool = False
  tiles: int = 1  # decoded tiles per group (S)
  word: int = 8   # bits of the kernel's storage word (uint8 planes; FP4: uint16 words of 4 codes)

  @property
  def tw(self) -> int:  # tile width: elements per tile = bytes per plane row of a group
    return self.group // self.tiles


SPECS = {
    "mxfp8_e4m3": _Spec("e4m3", 32, 1, 32, 0, 8),
    "mxfp8_e5m2": _Spec("e5m2", 32, 1, 32, 0, 8),
    "mxint8": _Spec("int8", 32, 1, 32, 6, 8),
    "mxfp4_e2m1": _Spec("e2m1", 256, 1, 32, -6, 4, tiles=4, word=16),
    "mxfp6_e2m3": _Spec("e2m3", 128, 3, 32, -6, 6, tiles=4),
    "mxfp6_e3m2": _Spec("e3m2", 128, 3, 32, -4, 6, tiles=4),
    "nvfp4": _Spec("e2m1", 256, 1, 16, -6, 4, nv=True, tiles=4, word=16),
}
FORMATS = tuple(SPECS)
# Weight layouts: "rows" (row-major: a K step of a tile of rows reads one short run per row, rows K_p bytes
# apart) or "groups" (group-major, FP4 / FP6: a K step of a tile of rows is one contiguous run).
LAYOUTS = ("rows", "groups")
# Who sums split-K partials: an XLA fusion after the kernel, or the kernel's last-arriving program per tile.
REDUCES = ("xla", "kernel")


def weight_spec(fmt: str, group: int | None = None) -> _Spec:
  """``SPECS[fmt]``, for FP4 with packing group ``group`` (one of ``FP4_GROUPS``; None: 256)."""
  if fmt not in SPECS:
    raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
  spec = SPECS[fmt]
  if group is None or group == spec.group:
    return spec
  if spec.bits != 4 or group not in FP4_GROUPS:
    raise ValueError(f"group must be one of {FP4_GROUPS} for FP4 formats (and {spec.group} for {fmt}); "
                     f"got {group!r}")
  return dataclasses.replace(spec, group=group)


def packing_group(fmt: str, cfg: "WOConfig | None") -> int | None:
  """The FP4 packing group a config steps over (512 when its block_k is 512 or more, else 256); None for
  other formats (their layout does not depend on the config) and for no config (``prepare_weight_triton``'s
  default)."""
  _check_config(cfg)
  if weight_spec(fmt).bits != 4 or cfg is None:
    return None
  return 512 if cfg.block_k >= 512 else 256


def _check_config(cfg) -> None:
  if cfg is not None and not isinstance(cfg, WOConfig):
    raise TypeError(f"config must be a WOConfig or None; got {type(cfg).__name__}")


def default_layout(fmt: str) -> str:
  """``prepare_weight_triton``'s default layout: group-major for FP4 (session 10: MXFP4 at M = 16 19.2 -> 18.0
  us with 256-groups), row-major for the rest (8-bit codes have no other; FP6 was not timed group-major)."""
  return "groups" if weight_spec(fmt).bits == 4 else "rows"


def weight_layout(fmt: str, cfg: "WOConfig | None") -> str:
  """The weight layout ``wo_matmul`` prepares a QArray in for ``cfg``: its ``layout`` for FP4 / FP6 (8-bit
  codes are always row-major), ``default_layout(fmt)`` for no config."""
  _check_config(cfg)
  if cfg is None:
    return default_layout(fmt)
  if weight_spec(fmt).bits == 8:
    return "rows"
  return cfg.layout


@dataclasses.dataclass(frozen=True)
class WOConfig:
  """Tile / pipeline choice of the Triton weight-only kernel.

  block_n: weight rows per program; block_k: K elements per loop step; split_k: programs along K (FP32
  partials summed by XLA when > 1); num_warps / num_stages: Triton's; scale_mode: "block" (promotion per
  scale block, exact for all scales) or "elem" (scale applied to the bf16 W tile; see module docstring);
  orient: "xw" (x is the MMA A operand) or "wt" (decoded W is the A operand); evict_w: load W with
  evict_first (streamed once) and x with evict_last (re-read by every program); layout: the FP4 / FP6 weight
  layout made when ``wo_matmul`` prepares a QArray for this config (a prepared weight keeps its own; a
  group-major one runs block_k = its group); reduce (split_k > 1): "xla" (the kernel writes FP32 partials, an
  XLA fusion sums them) or "kernel" (each program stores its partial, then bumps a per-tile counter; the
  last to arrive sums all partials in split order, so the result is bit-identical to "xla"); n_acc ("elem" only): FP32
  accumulators, tile j of a step adding into accumulator j mod n_acc (shorter MMA dependency chains), summed
  after the loop; stagger: program i starts its K loop at step i (mod its steps), so the programs running at
  once read different slices of x (each would otherwise read the same x tile at the same time).
  """
  block_n: int = 64
  block_k: int = 256
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 4
  scale_mode: str = "block"
  orient: str = "xw"
  evict_w: bool = True
  decode: str = "jnp"
  fold: bool = False  # asm decode + "elem": 2^120 (2^112 MXINT8) folded into the bf16 scale (see fold_ok)
  n_acc: int = 1
  stagger: bool = False
  layout: str = "rows"  # FP4 / FP6: the weight layout prepare_weight_triton makes for this config (LAYOUTS)
  reduce: str = "xla"   # split_k > 1: who sums the FP32 partials (REDUCES)

  def __post_init__(self):
    if self.fold and (self.decode != "asm" or self.scale_mode != "elem"):
      raise ValueError(f"fold needs decode='asm' and scale_mode='elem'; got {self.decode!r}, {self.scale_mode!r}")
    if self.scale_mode not in ("block", "elem"):
      raise ValueError(f"scale_mode must be 'block' or 'elem'; got {self.scale_mode!r}")
    if self.decode not in ("jnp", "asm"):
      raise ValueError(f"decode must be 'jnp' or 'asm'; got {self.decode!r}")
    if self.orient not in ("xw", "wt"):
      raise ValueError(f"orient must be 'xw' or 'wt'; got {self.orient!r}")
    for nm in ("block_n", "block_k"):
      v = getattr(self, nm)
      if v < 16 or v & (v - 1):
        raise ValueError(f"{nm} must be a power of two >= 16; got {v}")
    if self.n_acc not in (1, 2, 4) or (self.n_acc > 1 and self.scale_mode != "elem"):
      raise ValueError(f"n_acc must be 1, 2 or 4 (more than 1 needs scale_mode='elem'); got {self.n_acc}")
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}; got {self.layout!r}")
    if self.reduce not in REDUCES:
      raise ValueError(f"reduce must be one of {REDUCES}; got {self.reduce!r}")
    if self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
      raise ValueError(f"split_k, num_warps, num_stages must be >= 1; got {self}")

  def name(self) -> str:
    return (f"n{self.block_n}k{self.block_k}s{self.split_k}w{self.num_warps}st{self.num_stages}"
            f"_{self.scale_mode}_{self.orient}{'' if self.evict_w else '_noevict'}"
            f"{'_asm' if self.decode == 'asm' else ''}{'_fold' if self.fold else ''}"
            f"{f'_acc{self.n_acc}' if self.n_acc > 1 else ''}{'_stagger' if self.stagger else ''}"
            f"{'_gm' if self.layout == 'groups' else ''}{'_kred' if self.reduce == 'kernel' else ''}")


DEFAULT_CONFIG = WOConfig()
# Candidates for the H100 sweep (benchmarks/bench_wo.py). Memory-bound, so the axes are bytes in flight per SM
# (block_n x block_k x num_stages; programs per SM via split_k) and instructions per weight element (decode
# path, where the scale is applied, which operand the decoded W is). Static SASS counts (Triton 3.9, sm_90a,
# M=16) put "elem"+"xw" lowest for 8-bit formats (~5.4 instructions / element) and decode="asm" at about half
# the jnp decode's count for FP4 / FP6 (~5.7 vs ~12 / element).
CANDIDATES = (
    WOConfig(64, 256, 1, 4, 4, "block", "xw"),                 # the small-M default
    WOConfig(64, 256, 1, 4, 4, "elem", "xw"),                  # fewest instructions for 8-bit formats
    WOConfig(64, 256, 1, 4, 4, "elem", "xw", decode="asm"),    # fewest for FP4 / FP6
    WOConfig(128, 256, 2, 8, 4, "elem", "xw", decode="asm"),   # 8 warps for the decode, split-K 2
    WOConfig(128, 256, 2, 4, 3, "block", "wt", decode="asm"),  # decoded W as the wgmma A operand
    WOConfig(64, 128, 2, 8, 3, "elem", "xw"),                  # the large-M default
    # More bytes in flight / more programs per SM (session-3 second sweep at M = 16):
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", decode="asm"),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm"),
    WOConfig(32, 256, 1, 4, 4, "elem", "xw", decode="asm"),
    WOConfig(64, 256, 1, 4, 6, "elem", "xw", decode="asm"),
    WOConfig(64, 256, 1, 8, 4, "elem", "xw", decode="asm"),
    WOConfig(32, 512, 1, 4, 4, "elem", "xw", decode="asm"),
    # Not yet timed (session 6, offline SASS at M = 16): with W as the wgmma A operand x is read by the tensor
    # core from SMEM, not through 32 LDS.64 + ~90 register moves per step: MXFP8 622 loop instructions per
    # 256-deep step and warp against 706 for "xw" (MXFP4 asm: 728 vs 694, its decode needs more PRMTs there).
    WOConfig(64, 256, 1, 4, 4, "elem", "wt"),
    WOConfig(64, 256, 2, 4, 4, "elem", "wt"),                  # 2 CTAs per SM
    # Not yet timed: the asm decode's 2^120 moved into the scale (offline SASS at M = 16: MXFP4 694 -> 604 loop
    # instructions per step, MXFP8 asm 727 -> 641; with "wt" it is 632 / 782, so not that); used only for
    # weights whose scales allow it (fold_ok), otherwise the same kernel unfolded.
    WOConfig(64, 256, 1, 4, 4, "elem", "xw", decode="asm", fold=True),
    # Session 8: more programs per SM (split-K 2 / 4: Nsight Compute showed one warp per scheduler, 38% issue;
    # 4 CTAs fit per SM), timed once the 2-D tiles removed the shared-memory bank conflicts.
    WOConfig(64, 256, 4, 4, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw"),
    WOConfig(64, 256, 4, 4, 3, "elem", "xw"),
    # Session 9: FP4 as uint16 words of four 64-wide tiles (11 decode instructions per 8 elements, no PRMT; and
    # with no 8-bit operand Triton loads x with LDSM instead of LDS.64 + ~110 register moves): offline SASS at
    # M = 16, MXFP4 folded 621 -> 382 loop instructions per 256-deep step and warp. Wider / deeper tiles again:
    WOConfig(128, 256, 4, 4, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(128, 256, 2, 8, 4, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 1, 4, 6, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 2, 4, 6, "elem", "xw", decode="asm", fold=True),
    WOConfig(128, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True),
    # Session 9 run 1 (Nsight Compute of the new MXFP4 default, 20.3 us): 1.94 warps per scheduler, 0.53
    # eligible, issue 35% busy, "stall wait" (fixed-latency dependencies) the top reason: more warps per SM.
    WOConfig(64, 256, 4, 4, 4, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 8, 4, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 8, 4, 2, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 256, 4, 8, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(32, 256, 4, 4, 3, "elem", "xw", decode="asm", fold=True),
    # Session 9 run 2: more warps did not help (split-K 8: 5.1 warps per scheduler, the stalls moved to the memory
    # scoreboards). FP4 in 512-groups (``prepare_weight_triton(group=512)``): twice the work per loop step and
    # barrier, x re-read half as often per weight byte (offline SASS: 725 instructions per 512-deep step).
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 512, 4, 4, 3, "elem", "xw", decode="asm", fold=True),
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", decode="asm", fold=True),
    WOConfig(128, 512, 2, 8, 2, "elem", "xw", decode="asm", fold=True),
    # Session 9 run 3 (512-groups: MXFP4 19.4 us, 2.73x bf16): still ~1.9 warps per scheduler, "stall wait" on
    # top, each 512-deep step one 32-HMMA chain per accumulator: independent accumulators per tile.
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=2),
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=2),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4),
    # Session 9 run 4 (4 accumulators: MXFP4 18.6 us, 2.86x): "long scoreboard" at the loop top now leads (15% of
    # samples: the stage's loads not yet landed). 128-row tiles with 8 warps: the same work per warp, one x tile
    # per 128 weight rows instead of 64, 32 KB of W per stage in flight.
    WOConfig(128, 512, 2, 8, 3, "elem", "xw", decode="asm", fold=True, n_acc=4),
    WOConfig(128, 512, 2, 8, 3, "elem", "xw", decode="asm", fold=True, n_acc=2),
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    WOConfig(64, 512, 2, 8, 3, "elem", "xw", decode="asm", fold=True, n_acc=4),
    # Session 9 run 5: of 18.5 us at M = 16, 1.6 us is XLA's split-K sum. Without split-K (no sum):
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    WOConfig(64, 512, 1, 8, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    WOConfig(32, 512, 1, 4, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    WOConfig(32, 512, 1, 2, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    # Session 9 run 6: no split-K is no faster (18.6 us). Loads still wait at the loop top with DRAM 60% busy and
    # the prefetch 2 steps (~4 us) ahead: every program reads the same x tile at the same time (one L2 slice's
    # lines). Staggered K order:
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4, stagger=True),
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4, stagger=True),
    WOConfig(64, 256, 2, 4, 6, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4, stagger=True),
    WOConfig(64, 256, 2, 4, 6, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4),
    # Session 10: the kernel is ~16.9 us at M = 16 with DRAM "cycles active" 61% but "sectors" 47% (run 4 ncu):
    # each 256-deep step reads 64 rows x 128 B, 4 KB apart. Group-major weights (layout="groups") make every
    # step's tile one contiguous 8 KB (16 KB for 512-groups) run:
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),       # 49 = 36
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),       # 50 = 34
    WOConfig(64, 256, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),       # no sum
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(32, 256, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 256, 4, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(128, 256, 2, 8, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 256, 2, 4, 6, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4, layout="groups"),
    # Session 10 run 1: group-major 2.94-2.98x at M = 16 (49: 16.4 us kernel + 1.7 us split-K sum; 52, no split-K:
    # 17.9 us). Without the sum kernel, more warps per scheduler (1 CTA per SM there) and pipeline depths:
    WOConfig(64, 512, 1, 8, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),       # 58
    WOConfig(64, 256, 1, 8, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 512, 1, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 256, 1, 8, 6, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 512, 1, 8, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", evict_w=False, decode="asm", fold=True, n_acc=4, layout="groups"),
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),     # 64
    # Session 10 run 2: 64 (no split-K, 512-groups, 2 accumulators) 17.7 us = 3.00x at M = 16; 8 warps lose
    # (19.4 us). One CTA per SM holds (stages - 1) x 16 KB of W in flight: deeper pipelines (5-6 stages need
    # bench_wo --smem-budget above SMEM_BUDGET), 1 accumulator, split-K 2 with 4 stages:
    WOConfig(64, 512, 1, 4, 5, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),     # 65
    WOConfig(64, 512, 1, 4, 6, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),
    WOConfig(64, 512, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=1, layout="groups"),
    WOConfig(64, 512, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),
    WOConfig(64, 512, 1, 4, 5, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),     # 69
    # Session 10 run 3: everything at 17.8-18.4 us (64: 3.04x / 3.02x); M = 1 runs as fast as M = 16, so neither
    # x's L2 reads nor the decode bind: the W stream does (one CTA per SM without split-K). Two CTAs per SM
    # without split-K: 32-row tiles.
    WOConfig(32, 512, 1, 2, 4, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),     # 70
    WOConfig(32, 512, 1, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),
    WOConfig(32, 512, 1, 2, 3, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups"),
    WOConfig(32, 256, 1, 2, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups"),     # 73
    # Session 10 run 4: 32-row tiles no faster (18.2 us); 49 / 64 at 2.95-2.96x. The group-major default from
    # M = 64 (one accumulator), for the M = 1..256 table:
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, layout="groups"),               # 74
    # Session 11: the split-K 2 kernel alone is 16.3-16.4 us (3.25x) but XLA's sum of its partials adds 1.7 us:
    # sum them in the kernel instead (reduce="kernel"; XLA zeroes the 128 tile counters). 49, 50, 54, 68, 74:
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups", reduce="kernel"),
    WOConfig(64, 512, 2, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups", reduce="kernel"),
    WOConfig(64, 256, 4, 4, 3, "elem", "xw", decode="asm", fold=True, n_acc=4, layout="groups", reduce="kernel"),
    WOConfig(64, 512, 2, 4, 4, "elem", "xw", decode="asm", fold=True, n_acc=2, layout="groups", reduce="kernel"),
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", decode="asm", fold=True, layout="groups", reduce="kernel"),  # 79
    # MXFP8 (default 1, no split-K): split-K 2 summed by XLA / in the kernel
    WOConfig(64, 256, 2, 4, 4, "elem", "xw"),                                                           # 80
    WOConfig(64, 256, 2, 4, 4, "elem", "xw", reduce="kernel"),                                          # 81
    # Session 11 run 1: the in-kernel sum costs the kernel ~2 us (its tail: fence, counter, the last program's
    # reads), as much as XLA's sum; it gained only at M = 32 (XLA's sum grows with M). MXFP8's M = 64 default
    # (82) and 128 default (5) with the sum in the kernel (83, 84), for M >= 32:
    WOConfig(64, 256, 2, 4, 3, "elem", "xw"),                                                           # 82
    WOConfig(64, 256, 2, 4, 3, "elem", "xw", reduce="kernel"),
    WOConfig(64, 128, 2, 8, 3, "elem", "xw", reduce="kernel"),                                          # 84
)


def default_config(mp: int, fmt: str, elem_ok: bool = False, group: int | None = None,
                   layout: str | None = None) -> WOConfig:
  """The kernel's default for Mp rows (before ``fit_config``), from the H100 sweeps (BENCHMARKS.md): per-element
  scaling when ``elem_ok`` (every scale of the weight inside ``elem_exact_range``, checked by
  ``prepare_weight_triton``; it beat per-block promotion 1.7x at M = 16), promotion otherwise (exact for every
  scale). FP4 (any M; ``group`` / ``layout``: the weight's packing group and layout): one group per step,
  split-K 2, the inline-PTX decode with its rescale folded into the scale where the weight allows
  (``fold_ok``), four accumulators up to M = 32, the partials summed in the kernel at 17..32 rows of a
  group-major weight (session 11: MXFP4 2.58x there, was 2.36x); group-major 512-groups: no split-K, two accumulators up to
  M = 32 (session 10 at M = 16, group-major: MXFP4 2.95-3.01x bf16 with 256-groups, 2.96-3.04x with
  512-groups; row-major 2.78x / 2.86x). M <= 32, other
  formats: 8-bit floats with the hardware convert (MXFP8 1.86x), FP6 / MXINT8 with the folded inline-PTX
  decode (session 8). Larger M: the 8-warp config (best for MXFP8 / MXINT8 at M = 64 and 128 in session 8's
  run 5)."""
  mode = "elem" if elem_ok else "block"
  spec = weight_spec(fmt, group)
  asm = not (spec.bits == 8 and not fmt.startswith("mxint"))
  if spec.bits == 4:
    layout = layout or default_layout(fmt)
    small = elem_ok and mp <= 32
    if spec.group >= 512 and layout == "groups":  # no split-K (no sum kernel), two accumulators
      return WOConfig(64, 512, 1, 4, 4, mode, "xw", decode="asm", fold=elem_ok, n_acc=2 if small else 1,
                      layout=layout)
    # 17..32 rows of a group-major weight: XLA's sum of the partials has grown to ~2.3 us; summing them in the
    # kernel was 1-2 us faster there (session 11), not at 16 rows or fewer, and not from 64 rows
    kred = layout == "groups" and 16 < mp <= 32  # (group-major 512-groups returned above)
    return WOConfig(64, spec.group, 2, 4, 3 if spec.group >= 512 else 4, mode, "xw", decode="asm",
                    fold=elem_ok, n_acc=4 if small else 1, layout=layout, reduce="kernel" if kred else "xla")
  if mp <= 32:
    return WOConfig(64, 256, 1, 4, 4, mode, "xw", decode="asm" if asm else "jnp", fold=asm and elem_ok)
  return WOConfig(64, 128 if mp >= 128 else 256, 2, 8 if mp >= 128 else 4, 3, mode, "xw")


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def fit_config(cfg: WOConfig, fmt: str, mp: int, n_p: int, k_p: int, group: int | None = None,
               one_group: bool = False) -> WOConfig:
  """Adapts ``cfg`` to a problem: block_n divides N_p, block_k >= the packing group (== it with ``one_group``,
  a group-major weight), block_k * split_k divides K_p, the pipeline fits ``SMEM_BUDGET``, the FP32
  accumulator stays <= 64 registers a thread."""
  spec = weight_spec(fmt, group)
  bk = spec.group if one_group else max(cfg.block_k, spec.group)
  bn, sk, nw, ns = cfg.block_n, cfg.split_k, cfg.num_warps, cfg.num_stages
  while n_p % bn:
    bn //= 2
  while k_p % (bk * sk):
    if sk > 1:
      sk -= 1
    else:
      bk //= 2
  stage = lambda bk_: mp * bk_ * 2 + bn * bk_ * spec.bits // 8 + bn * bk_ // spec.block
  while ns * stage(bk) > SMEM_BUDGET:
    if ns > 2:
      ns -= 1
    elif bk > spec.group:
      bk //= 2
    else:
      break
  while mp * bn > 64 * 32 * nw:
    if nw < 8:
      nw *= 2
    elif bn > 16:
      bn //= 2
    else:
      break
  return dataclasses.replace(cfg, block_n=bn, block_k=bk, split_k=sk, num_warps=nw, num_stages=ns)


def elem_exact_range(fmt: str) -> tuple[int, int]:
  """Scale exponents e (2^e) for which scale_mode="elem" is exact on every backend: every nonzero element
  times 2^(e + shift) is a normal bf16 and every weight elem * 2^e is finite in bf16. (FP32 accumulation of
  products below 2^-126 is subject to the backend's subnormal handling, as in the XLA reference.) NVFP4:
  always exact; returns the E4M3 scale's own exponent range."""
  from mx_jax.formats import get_format
  spec = SPECS[fmt]
  if spec.nv:
    return (-9, 8)
  f = get_format(fmt).elem
  bf16_max = float(ml_dtypes.finfo(jnp.bfloat16).max)
  lo = next(e for e in range(-140, 140) if f.min_subnormal * 2.0 ** (e + spec.shift) >= 2.0 ** -126)
  # the decoded product and the weight itself (the FP32 result is rescaled by 2^-shift) stay finite
  hi = max(e for e in range(-140, 140) if f.max_normal * 2.0 ** (e + max(spec.shift, 0)) <= bf16_max)
  return max(lo, -127), min(hi, 127)


# ----------------------------------------------------------------------------------------------------------
# Prepared weight
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TritonWeight:
  """An (N, K) weight laid out for ``wo_matmul``: ``data`` (N_p, K_p * bits / word) words (uint8; FP4 uint16) in
  the group/plane order above, ``scales`` (N_p, K_p / block) uint8 (E8M0 or E4M3 bytes), ``tensor_scale`` ()
  float32 for NVFP4. ``layout="groups"`` (FP4 / FP6): ``data`` (K_p / G, N_p, G * bits / word) and ``scales``
  (K_p / G, N_p, G / block), so one group of consecutive rows is one contiguous run of bytes. ``fmt``, ``n``,
  ``k`` (logical shape), ``group``, ``layout`` are static."""
  data: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None
  fmt: str = dataclasses.field(metadata=dict(static=True))
  n: int = dataclasses.field(metadata=dict(static=True))
  k: int = dataclasses.field(metadata=dict(static=True))
  elem_ok: bool = dataclasses.field(default=False, metadata=dict(static=True))
  fold_ok: bool = dataclasses.field(default=False, metadata=dict(static=True))
  group: int = dataclasses.field(default=0, metadata=dict(static=True))  # FP4 packing group (0: the default)
  layout: str = dataclasses.field(default="rows", metadata=dict(static=True))  # one of LAYOUTS

  @property
  def shape(self) -> tuple[int, int]:
    return (self.n, self.k)

  @property
  def n_padded(self) -> int:
    return self.scales.shape[0 if self.layout == "rows" else 1]

  @property
  def ndim(self) -> int:
    return 2

  @property
  def k_padded(self) -> int:
    return self.scales.size // self.n_padded * SPECS[self.fmt].block

  @property
  def nbytes(self) -> int:
    """Bytes the kernel streams (elements + scales + tensor scale)."""
    t = 0 if self.tensor_scale is None else 4
    return int(self.data.size * self.data.dtype.itemsize + self.scales.size + t)


# FP4 word layout: uint16 word i of a 256-group holds the codes of its four 64-wide tiles, c_j = code[256g +
# 64j + i]: c_j's magnitude bits (e1 e0 m) at FP4_MAG[j] .. + 2, its sign at FP4_SIGN[j]. Chosen so one shift
# (or none) and a mask put each tile's bits where a bf16 wants them (magnitude at bits 8..6, sign at 15; see
# _asm_fp4): 11 instructions per two words, no byte interleaving.
FP4_MAG = (6, 3, 0, 9)
FP4_SIGN = (15, 12, 13, 14)
FP4_GROUPS = (256, 512)  # packing groups (K elements, four tiles of group / 4); the kernel steps one group


def pack_fp4(codes: jax.Array, group: int = 256) -> jax.Array:
  """(N, K) FP4 codes, K % group == 0 -> (N, K/4) uint16: per group (of ``FP4_GROUPS``) word i = sum over its
  tiles j < 4 of (c_j & 7) << FP4_MAG[j] | (c_j >> 3) << FP4_SIGN[j], c_j = code[(group / 4) j + i]."""
  if group not in FP4_GROUPS:
    raise ValueError(f"group must be one of {FP4_GROUPS}; got {group!r}")
  if codes.ndim != 2 or codes.shape[1] % group:
    raise ValueError(f"codes must be (N, K) with K a multiple of group={group}; got shape {codes.shape}")
  n, k = codes.shape
  tw = group // 4
  g = codes.astype(jnp.uint16).reshape(n, k // group, 4, tw)
  w = jnp.zeros((n, k // group, tw), jnp.uint16)
  for j in range(4):
    c = g[:, :, j]
    w = w | ((c & 7) << FP4_MAG[j]) | ((c >> 3) << FP4_SIGN[j])
  return w.reshape(n, k // 4)


def fp4_codes(words, j: int):
  """Tile j's FP4 codes (uint8, s e1 e0 m) from ``pack_fp4`` words (any shape)."""
  if j not in range(4):
    raise ValueError(f"j must be a tile index 0..3; got {j!r}")
  w = words.astype(jnp.uint16)
  return (((w >> FP4_MAG[j]) & 7) | (((w >> FP4_SIGN[j]) & 1) << 3)).astype(jnp.uint8)


def pack_fp6(codes: jax.Array) -> jax.Array:
  """(N, K) FP6 codes, K % 128 == 0 -> (N, 3K/4): per 128-group three 32-byte planes, plane p = byte p of
  w_i = c[i] | c[32+i] << 6 | c[64+i] << 12 | c[96+i] << 18."""
  n, k = codes.shape
  g = codes.reshape(n, k // 128, 4, 32).astype(jnp.uint32)
  w = g[:, :, 0] | (g[:, :, 1] << 6) | (g[:, :, 2] << 12) | (g[:, :, 3] << 18)
  planes = jnp.stack([(w >> (8 * p)) & 0xFF for p in range(3)], axis=2)
  return planes.astype(jnp.uint8).reshape(n, 3 * k // 4)


def prepare_weight_triton(w: QArray, group: int | None = None, layout: str | None = None) -> TritonWeight:
  """Lays out an (N, K) weight QArray quantized along K (axis 1) for ``wo_matmul`` (do it once). ``group``: FP4
  only, the packing group (``FP4_GROUPS``; default 256), which fixes the kernel's K step: 512 is faster at
  M <= 32 (MXFP4 2.83x bf16 at M = 16 vs 2.78x) and much slower from M = 128 (64-row calls; session 9).
  ``layout``: one of ``LAYOUTS`` (None: ``default_layout``, group-major for FP4); "groups" (FP4 / FP6 only)
  stores each packing group of all rows contiguously, so every K step of the kernel (one group) reads its tile
  of rows as one run of bytes (the kernel then steps exactly one group)."""
  if not isinstance(w, QArray):
    raise TypeError(f"w must be a QArray (mx_jax.quantize(...)); got {type(w).__name__}")
  if w.fmt not in SPECS:
    raise ValueError(f"w has format {w.fmt!r}; the Triton weight-only kernel takes {FORMATS}")
  spec = SPECS[w.fmt]
  if w.ndim != 2 or w.axis != 1:
    raise ValueError(f"w must be an (N, K) QArray quantized along axis 1; got {w!r}")
  if w.block_size != spec.block:
    raise ValueError(f"w has block_size {w.block_size}; the Triton weight-only kernel takes {spec.block} "
                     f"for {w.fmt}")
  weight_spec(w.fmt, group)  # validates group
  layout = default_layout(w.fmt) if layout is None else layout
  if layout not in LAYOUTS or (layout == "groups" and spec.bits == 8):
    raise ValueError(f"layout must be one of {LAYOUTS} ('groups' for FP4 / FP6 formats only); got {layout!r} "
                     f"for {w.fmt}")
  tw = _prepare(w, group or 0, layout)
  elem_ok = _elem_scaling_exact(tw)
  return dataclasses.replace(tw, elem_ok=elem_ok, fold_ok=elem_ok and _fold_exact(tw))


def prepare_weight_for(w: QArray, config: WOConfig | None = None) -> TritonWeight:
  """``prepare_weight_triton`` in the packing group and layout ``config`` steps over (``packing_group``,
  ``weight_layout``; the defaults for no config): what ``wo_matmul`` does with a QArray weight."""
  _check_config(config)
  if not isinstance(w, QArray) or w.fmt not in SPECS:
    return prepare_weight_triton(w)  # raises, naming w
  return prepare_weight_triton(w, packing_group(w.fmt, config), weight_layout(w.fmt, config))


def _scale_bytes(tw: TritonWeight) -> np.ndarray | None:
  """The weight's scale bytes as int32 on the host; None when they are traced (not known here)."""
  try:
    return np.asarray(tw.scales).astype(np.int32)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def _elem_scaling_exact(tw: TritonWeight) -> bool:
  """True when per-element scaling is exact for this weight (NVFP4 always; MX when every scale exponent lies
  in ``elem_exact_range`` or is the NaN scale). False when the scales are traced (not known here)."""
  if SPECS[tw.fmt].nv:
    return True
  sb = _scale_bytes(tw)
  if sb is None:
    return False
  lo, hi = elem_exact_range(tw.fmt)
  e = sb - 127
  return bool(np.all((sb == 255) | ((e >= lo) & (e <= hi))))


def _fold_exact(tw: TritonWeight) -> bool:
  """True when the asm decode's power-of-two rescale can move into the bf16 scale: the weight has an asm decode
  (e4m3, FP4, FP6, MXINT8, NVFP4; not e5m2) and every scale exponent e keeps 2^(e + fold_shift) a finite bf16
  (so no NaN scale: the folded scale conversion has no select); NVFP4 always. False when the scales are traced."""
  if tw.fmt not in FOLDABLE:
    return False
  if SPECS[tw.fmt].nv:  # E4M3 scale * 2^119 <= 448 * 2^119 < bf16 max; a NaN scale stays NaN
    return True
  sb = _scale_bytes(tw)
  return sb is not None and bool(np.all(sb + fold_shift(tw.fmt) <= 254))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _prepare(w: QArray, group: int, layout: str = "rows") -> TritonWeight:
  spec = weight_spec(w.fmt, group or None)
  n, k = w.shape
  w = unpack(w)
  codes = element_codes(w)
  n_p, k_p = round_up(n, N_ALIGN), round_up(max(codes.shape[1], 1), max(K_ALIGN, spec.group))
  codes = pad_to(codes, n_p, k_p)
  if spec.bits == 4:
    data = pack_fp4(codes, spec.group)
  elif spec.bits == 6:
    data = pack_fp6(codes)
  else:
    data = codes
  sb = lax.bitcast_convert_type(w.scales, jnp.uint8)
  scales = pad_to(sb, n_p, k_p // spec.block, 0 if spec.nv else 127)
  ts = w.tensor_scale.astype(jnp.float32).reshape(()) if spec.nv else None
  if layout == "groups":  # (N_p, K_p / G, per-group words) -> (K_p / G, N_p, per-group words)
    kg = k_p // spec.group
    data = data.reshape(n_p, kg, -1).transpose(1, 0, 2)
    scales = scales.reshape(n_p, kg, -1).transpose(1, 0, 2)
  return TritonWeight(data, scales, ts, w.fmt, n, k, group=group, layout=layout)


# ----------------------------------------------------------------------------------------------------------
# Kernel body pieces (jnp on tiles: the same code runs in Triton and in the interpreter)
# ----------------------------------------------------------------------------------------------------------


def _fp8_byte(code, elem: str):
  """Element code (uint8, low bits) -> e4m3 byte whose value is elem * 2^shift (sign bit to bit 7; exponent
  and mantissa bits placed so subnormal codes land on e4m3 subnormals)."""
  if elem == "e2m1":
    return ((code & 0x08) << 4) | ((code & 0x07) << 2)
  if elem == "e2m3":
    return ((code & 0x20) << 2) | (code & 0x1F)
  if elem == "e3m2":
    return ((code & 0x20) << 2) | ((code & 0x1F) << 1)
  return code


def _decode(code, elem: str):
  """uint8 code tile -> bf16 tile of elem * 2^shift (exact)."""
  if elem == "int8":
    h = code.astype(jnp.uint16) ^ jnp.uint16(0x6480)  # f16 bits of 1152 + k
    f = lax.bitcast_convert_type(h, jnp.float16) - jnp.float16(1152.0)  # k, exact
    return f.astype(jnp.float32).astype(jnp.bfloat16)
  if elem == "e5m2":  # Triton's own e5m2 -> bf16 convert (GPU exactness: benchmarks/bench_wo.py)
    return lax.bitcast_convert_type(code, jnp.float8_e5m2).astype(jnp.bfloat16)
  f8 = lax.bitcast_convert_type(_fp8_byte(code, elem), jnp.float8_e4m3fn)
  return f8.astype(jnp.float32).astype(jnp.bfloat16)


def _block_codes(planes, spec: _Spec):
  """The S tiles of element codes (FP4: e4m3 bytes) of one group's planes."""
  if spec.bits == 4:
    return [_fp8_byte(fp4_codes(planes[0], j), "e2m1") for j in range(spec.tiles)]
  if spec.bits == 6:
    p0, p1, p2 = planes
    return [p0 & 0x3F, (p0 >> 6) | ((p1 & 0x0F) << 2), (p1 >> 4) | ((p2 & 0x03) << 4), p2 >> 2]
  return [planes[0]]


def _decode_block(c, spec: _Spec):
  if spec.bits == 4:  # already e4m3 bytes
    return lax.bitcast_convert_type(c, jnp.float8_e4m3fn).astype(jnp.float32).astype(jnp.bfloat16)
  return _decode(c, spec.elem)


# Inline-PTX decode (compiled Triton only). FP6 / e4m3 / MXINT8: pack=4, one 32-bit register holds 4
# consecutive bytes of a tile, each bf16 result tile comes back in two registers; FP4: pack=2, two uint16 words
# in, one bf16x2 out (``_asm_fp4``). Integer ops place each code's sign, exponent and mantissa bits into bf16
# bits (value = elem * 2^(1 - 127) for e2m1 / e2m3, 2^(3 - 127) for e3m2; subnormal codes become bf16
# subnormals), for the byte formats PRMT interleaves high/low bytes into bf16x2 words, and one
# mul.rn.bf16x2 by 2^120 rescales (exact: power of two, bf16 subnormal inputs are kept on sm_90), giving the
# same values elem * 2^shift as the jnp decode. ~2.5 instructions per element instead of ~10 for byte-wise
# jnp ops. Verified against the XLA reference on the GPU by benchmarks/bench_wo.py (all codes, extreme scales).
_RESCALE = 120       # log2 of the decodes' final multiply (MXINT8: _RESCALE_INT8)
_RESCALE_INT8 = 112


def _asm_rescale(shift: int, outs: int = 2) -> str:
  """PTX multiplying the bf16x2 results $0 .. $(outs-1) by 2^shift (bf16 bits (shift + 127) << 7 in each half;
  exact)."""
  k = (shift + 127) << 7
  return f" mov.b32 k, 0x{k:04X}{k:04X};" + "".join(f" mul.rn.bf16x2 ${i}, ${i}, k;" for i in range(outs))


def fp4_bits_ptx(j: int, dst: str) -> str:
  """PTX placing tile j of two ``pack_fp4`` words ($1, one per bf16 half) into bf16x2 ``dst``: the magnitude
  bits shifted to 8..6 and the sign to 15, masked (value elem * 2^-126, code 0.5 a bf16 subnormal). Uses
  scratch registers t, u (``dst`` may be t)."""
  def shifted(reg, d):
    return f"shl.b32 {reg}, $1, {d};" if d > 0 else f"shr.b32 {reg}, $1, {-d};"
  dm, ds = 6 - FP4_MAG[j], 15 - FP4_SIGN[j]
  if dm == ds:
    return (f"and.b32 {dst}, $1, 0x81C081C0;" if dm == 0 else shifted("t", dm) + f" and.b32 {dst}, t, 0x81C081C0;")
  return (shifted("t", dm) + " and.b32 t, t, 0x01C001C0; " + shifted("u", ds)
          + f" and.b32 u, u, 0x80008000; or.b32 {dst}, t, u;")


def _asm_fp4(j: int) -> str:
  """Tile j of two ``pack_fp4`` words ($1, one per bf16 half) -> bf16x2 $0: ``fp4_bits_ptx``, times 2^120."""
  return "{ .reg .b32 t, u, k; " + fp4_bits_ptx(j, "$0") + _asm_rescale(_RESCALE, 1) + " }"


# One asm per output tile (Pallas' lowering of elementwise_inline_asm takes a single result). Operands: $0, $1
# the two bf16x2 output registers (elements 0,1 and 2,3), then the inputs' 32-bit registers (4 bytes each).
_ASM_TAIL = "prmt.b32 $0, l, h, 0x5140; prmt.b32 $1, l, h, 0x7362;" + _asm_rescale(_RESCALE)
# FP6 code j of a 128-group from its planes (byte-parallel), then the bf16 bytes of that code.
_FP6_CODE = (
    ("and.b32 c, $2, 0x3F3F3F3F;", 1),
    ("shr.b32 c, $2, 6; and.b32 c, c, 0x03030303; shl.b32 t, $3, 2; and.b32 t, t, 0x3C3C3C3C; or.b32 c, c, t;", 2),
    ("shr.b32 c, $2, 4; and.b32 c, c, 0x0F0F0F0F; shl.b32 t, $3, 4; and.b32 t, t, 0x30303030; or.b32 c, c, t;", 2),
    ("shr.b32 c, $2, 2; and.b32 c, c, 0x3F3F3F3F;", 1),
)
_FP6_PLANES = ((0,), (0, 1), (1, 2), (2,))  # planes each code reads
_FP6_BYTES = {
    # e2m3 (s e1 e0 m2 m1 m0): high byte = s << 7 | e1, low byte = (e0 m2 m1 m0) << 4
    "e2m3": "shl.b32 h, c, 2; and.b32 h, h, 0x80808080; shr.b32 t, c, 4; and.b32 t, t, 0x01010101; "
            "or.b32 h, h, t; shl.b32 l, c, 4; and.b32 l, l, 0xF0F0F0F0;",
    # e3m2 (s e2 e1 e0 m1 m0): high byte = s << 7 | e2 e1, low byte = (e0 m1 m0) << 5
    "e3m2": "shl.b32 h, c, 2; and.b32 h, h, 0x80808080; shr.b32 t, c, 3; and.b32 t, t, 0x03030303; "
            "or.b32 h, h, t; shl.b32 l, c, 5; and.b32 l, l, 0xE0E0E0E0;",
}


# e4m3 byte (s eeee mmm): high byte = s << 7 | e3 e2 e1, low byte = (e0 m2 m1 m0) << 4 (value * 2^-120).
_ASM_E4M3 = ("{ .reg .b32 h, l, t, k; and.b32 h, $2, 0x80808080; shr.b32 t, $2, 4; and.b32 t, t, 0x07070707; "
             "or.b32 h, h, t; shl.b32 l, $2, 4; and.b32 l, l, 0xF0F0F0F0; " + _ASM_TAIL + " }")
# MXINT8 code k: f16 bits 0x64 | (k ^ 0x80) = 1152 + k, minus 1152 (exact) = k; f16 -> bf16 by bits
# (sign | (bits >> 3) & 0x0FFF reads k * 2^-112: k has <= 7 significant bits), times 2^112.
_ASM_INT8 = ("{ .reg .b32 t, a, b, k; xor.b32 t, $2, 0x80808080; "
             "prmt.b32 a, t, 0x64646464, 0x4140; prmt.b32 b, t, 0x64646464, 0x4342; mov.b32 k, 0x64806480; "
             "sub.rn.f16x2 a, a, k; sub.rn.f16x2 b, b, k; "
             "shr.b32 t, a, 3; and.b32 t, t, 0x0FFF0FFF; and.b32 a, a, 0x80008000; or.b32 $0, a, t; "
             "shr.b32 t, b, 3; and.b32 t, t, 0x0FFF0FFF; and.b32 b, b, 0x80008000; or.b32 $1, b, t;"
             + _asm_rescale(_RESCALE_INT8) + " }")

# Formats whose asm decode ends with a rescale that ``WOConfig(fold=True)`` can move into the scale.
FOLDABLE = tuple(f for f, sp in SPECS.items() if sp.elem != "e5m2")
_RESCALE_NV_FOLD = 119  # NVFP4's E4M3 scale (<= 448) times 2^119 stays finite in bf16; 2^120 would not


def _decode_rescale(spec: _Spec) -> int:
  """log2 of the final multiply in ``spec``'s asm decode."""
  return _RESCALE_INT8 if spec.elem == "int8" else _RESCALE


def fold_shift(fmt: str) -> int:
  """log2 of the part of the asm decode's final rescale (2^120; 2^112 for MXINT8) that ``fold`` moves into the
  scale: all of it, except NVFP4's 2^119 (the epilogue applies the other 2)."""
  if fmt not in FOLDABLE:
    raise ValueError(f"fmt must be one of {FOLDABLE} (formats with an asm decode rescale); got {fmt!r}")
  return _RESCALE_NV_FOLD if SPECS[fmt].nv else _decode_rescale(SPECS[fmt])


def _unfold(asm: str, shift: int) -> str:
  """The asm decode without its final 2^shift rescale: results are elem * 2^(format shift - shift)."""
  for outs in (2, 1):
    tail = _asm_rescale(shift, outs)
    if tail in asm:
      return asm.replace(tail, "")
  raise ValueError(f"asm decode has no 2^{shift} rescale to fold")


def _asm_decode(asm: str, args, word: int = 8):
  """Inline PTX over 32-bit registers: 4 bytes -> two bf16x2 results ($0, $1), or (``word`` 16) two uint16
  words -> one ($0)."""
  from jax.experimental.pallas import triton as pltriton
  out = jax.ShapeDtypeStruct(args[0].shape, jnp.bfloat16)
  pack = 32 // word
  cons = ",".join(["=r"] * (pack // 2) + ["r"] * len(args))
  [res] = pltriton.elementwise_inline_asm(asm, args=list(args), constraints=cons, pack=pack,
                                          result_shape_dtypes=[out])
  return res


def _decode_planes(planes, spec: _Spec, use_asm: bool, unfold: int = 0):
  """A group's planes (uint8 / uint16 tiles) -> the S decoded bf16 tiles (elem * 2^shift, exact; with
  ``unfold``, asm only: the decode's final 2^unfold rescale left out, for the scale to apply)."""
  def dec(asm, args):
    return _asm_decode(_unfold(asm, unfold) if unfold else asm, args, spec.word)
  if use_asm and spec.bits == 4:
    return [dec(_asm_fp4(j), planes) for j in range(spec.tiles)]
  if use_asm and spec.elem == "e4m3":
    return [dec(_ASM_E4M3, planes)]
  if use_asm and spec.elem == "int8":
    return [dec(_ASM_INT8, planes)]
  if use_asm and spec.bits == 6:
    outs = []
    for (code, _), reads in zip(_FP6_CODE, _FP6_PLANES):
      asm = "{ .reg .b32 c, h, l, t, k; " + code + " " + _FP6_BYTES[spec.elem] + " " + _ASM_TAIL + " }"
      outs.append(dec(asm, [planes[p] for p in reads]))
    return outs
  return [_decode_block(c, spec) for c in _block_codes(planes, spec)]


def _scale_bf16(sb, spec: _Spec):
  """Scale bytes -> bf16 scale values: E8M0 byte b -> bits b << 7 (2^(b-127); 0 -> 2^-127, 255 -> NaN);
  NVFP4 E4M3 bytes -> their value."""
  if spec.nv:
    return lax.bitcast_convert_type(sb, jnp.float8_e4m3fn).astype(jnp.bfloat16)
  b = sb.astype(jnp.uint16)
  bits = jnp.where(b == 255, jnp.uint16(0x7FC0), jnp.where(b == 0, jnp.uint16(0x0040), b << 7))
  return lax.bitcast_convert_type(bits, jnp.bfloat16)


def _scale_bf16_folded(sb, shift: int):
  """E8M0 bytes -> bf16 2^(b - 127 + shift): bits (b + shift) << 7. Only for weights with every b + shift <=
  254 (``TritonWeight.fold_ok``: no NaN scale, so no select)."""
  return lax.bitcast_convert_type((sb.astype(jnp.uint16) + jnp.uint16(shift)) << 7, jnp.bfloat16)


def _scale_bf16_nv_folded(sb, shift: int):
  """NVFP4 E4M3 scale bytes -> bf16 value * 2^shift (exact: a power-of-two multiple of an E4M3 value, <= 448 *
  2^119 for the fold's shift; NaN stays NaN)."""
  return _scale_bf16(sb, SPECS["nvfp4"]) * jnp.bfloat16(2.0 ** shift)


def _scale_f32(sb, spec: _Spec):
  """Scale bytes -> float32 scale values (exact; E8M0 0 -> 2^-127, 255 -> NaN)."""
  if spec.nv:
    return lax.bitcast_convert_type(sb, jnp.float8_e4m3fn).astype(jnp.float32)
  b = sb.astype(jnp.uint32)
  bits = jnp.where(b == 255, jnp.uint32(0x7FC00000), jnp.where(b == 0, jnp.uint32(0x00400000), b << 23))
  return lax.bitcast_convert_type(bits, jnp.float32)


def _i(v):
  """A static index as an int32 scalar array (the interpreter's load discharge wants array indices)."""
  return jnp.int32(v)


def _dot_nt(a, b):
  """a (R, K) . b (C, K)^T -> (R, C) float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _wo_kernel(*refs, spec: _Spec, cfg: WOConfig, m: int, n: int, mp: int, steps: int, t_groups: int,
               has_ts: bool, out_mul: float, out_dtype, interpret: bool, fold_shift_: int = 0,
               group_major: bool = False, kred: bool = False):
  x_ref, w_ref, s_ref = refs[:3]
  ts_ref = refs[3] if has_ts else None
  if kred:  # outputs: out, the partials' workspace, the per-tile counters (aliased to a zeros input)
    o_ref, ws_ref, cnt_ref = refs[-3:]
  else:
    o_ref = refs[-1]
  from jax.experimental.pallas import triton as pltriton

  bn, T, S, NP, TW, blk = cfg.block_n, t_groups, spec.tiles, spec.planes, spec.tw, spec.block
  n_acc = cfg.n_acc  # > 1 only with scale_mode "elem" (WOConfig checks)
  pid_n = pl.program_id(0)  # read outside the loop body (the interpreter substitutes it only here)

  def k_step(t):  # with stagger, program i walks its K range starting at step i mod steps
    return lax.rem(t + pid_n, steps) if cfg.stagger and steps > 1 else t

  D = blk if cfg.scale_mode == "block" else TW
  ew = "evict_first" if cfg.evict_w else None
  ex = "evict_last" if cfg.evict_w else None
  row_mask = None
  if m < mp:
    row_mask = lax.broadcasted_iota(jnp.int32, (mp, 1), 0) < m

  def ld_w(view):
    return pltriton.load(view, eviction_policy=ew)

  # the program's W block is (rows, groups, planes, TW) ("rows" layout) or (groups, rows, planes, TW); its
  # scales (rows, scales) or (groups, rows, scales per group). Group-major steps are one group (T == 1).
  def w_view(grp, p, cols=slice(None)):
    return w_ref.at[grp, :, p, cols] if group_major else w_ref.at[:, grp, p, cols]

  def s_view(g0, count):  # the scales of groups g0 .. g0 + T - 1 (count of them)
    return s_ref.at[g0] if group_major else s_ref.at[:, pl.ds(g0 * (count // T), count)]

  def ld_x(view):
    if row_mask is None:
      v = pltriton.load(view, eviction_policy=ex)
    else:
      mask = row_mask.reshape((mp,) + (1,) * (len(view.shape) - 1))
      v = pltriton.load(view, mask=mask, other=0, eviction_policy=ex)
    return lax.bitcast_convert_type(v, jnp.bfloat16)

  use_asm = cfg.decode == "asm" and not interpret
  fold = bool(fold_shift_)
  xw = cfg.orient == "xw"
  acc_shape = (mp, bn) if xw else (bn, mp)

  def mma(xt, wt):
    return _dot_nt(xt, wt) if xw else _dot_nt(wt, xt)

  if cfg.scale_mode == "elem":
    nb = TW // blk      # scales per tile and group
    nsc = T * S * nb

    def step(t, accs):
      accs = list(accs)
      g0 = k_step(t) * T
      grp = g0 if T == 1 else pl.ds(g0, T)  # one group: 2-D tiles (rows, TW), else 3-D (rows, T, TW)
      planes = [ld_w(w_view(grp, _i(p))) for p in range(NP)]
      # one contiguous scale tile per step (a strided per-block load would not be pipelined), split by tile
      sraw = pltriton.load(s_view(g0, nsc))
      if not fold:
        st = _scale_bf16(sraw, spec)
      elif spec.nv:
        st = _scale_bf16_nv_folded(sraw, fold_shift_)
      else:
        st = _scale_bf16_folded(sraw, fold_shift_)
      st = st.reshape(bn, T, S, nb)
      scs = jnp.split(st, S, axis=2) if S > 1 else [st]
      for j, v in enumerate(_decode_planes(planes, spec, use_asm, _decode_rescale(spec) if fold else 0)):
        sc = lax.broadcast_in_dim(scs[j].reshape(bn, T * nb), (bn, T * nb, blk), (0, 1)).reshape(bn, T * TW)
        wt = v.reshape(bn, T * TW) * sc
        xt = ld_x(x_ref.at[:, grp, _i(j), :]).reshape(mp, T * TW)
        accs[j % n_acc] = accs[j % n_acc] + mma(xt, wt)
      return tuple(accs)
  else:
    nbk = TW // D       # scale blocks per tile
    nsc = T * S * nbk

    def step(t, accs):
      acc, = accs
      g0 = k_step(t) * T
      sf = _scale_f32(pltriton.load(s_view(g0, nsc)), spec)  # (bn, nsc)
      cols = jnp.split(sf, nsc, axis=1) if nsc > 1 else [sf]
      for tt in range(T):
        g = g0 + tt
        for sub in range(nbk):
          planes = [ld_w(w_view(g, _i(p), pl.ds(sub * D, D))) for p in range(NP)]  # (bn, D)
          for j, v in enumerate(_decode_planes(planes, spec, use_asm)):
            xt = ld_x(x_ref.at[:, g, _i(j), pl.ds(sub * D, D)])                   # (mp, D)
            s = cols[(tt * S + j) * nbk + sub]                                 # (bn, 1)
            part = mma(xt, v)
            acc = acc + part * (s.reshape(1, bn) if xw else s)
      return (acc,)

  accs = lax.fori_loop(0, steps, step, tuple(jnp.zeros(acc_shape, jnp.float32) for _ in range(n_acc)))
  acc = functools.reduce(lambda a, b: a + b, accs)
  mul = out_mul
  if has_ts:
    mul = pltriton.load(ts_ref).reshape(1, 1) * jnp.float32(out_mul)
  if has_ts or out_mul != 1.0:
    acc = acc * mul
  if not xw:
    acc = acc.T
  cols_ok = pid_n * bn + lax.broadcasted_iota(jnp.int32, (1, bn), 1) < n
  mask = jnp.broadcast_to(cols_ok if row_mask is None else (row_mask & cols_ok), (mp, bn))

  def store_out(v):
    out = v.astype(out_dtype)
    if interpret:
      out = lax.bitcast_convert_type(out, _uint_of(out_dtype))
    pltriton.store(o_ref, out, mask=mask)

  if not kred:
    store_out(acc)
    return
  # Split-K summed in the kernel: store this program's partial, count it in (after a CTA barrier, so every
  # thread's stores precede the counter's release), and let the last of the tile's sk programs sum the
  # partials in split order (p_0 + p_1 + ..., as the "xla" reduce does) and store the result.
  sk = cfg.split_k
  pid_k = pl.program_id(1)
  bits = (lambda v: lax.bitcast_convert_type(v, jnp.uint32)) if interpret else (lambda v: v)
  pltriton.store(ws_ref.at[pid_k], bits(acc), mask=mask)
  if not interpret:
    pltriton.debug_barrier()
  arrived = pltriton.atomic_add(cnt_ref, (pid_n,), jnp.int32(1))  # acq_rel, GPU scope

  @pl.when(arrived == sk - 1)
  def _():
    total = None
    for s in range(sk):  # the partials of the others, read volatile (from L2: never a stale L1 line)
      v = pltriton.load(ws_ref.at[_i(s)], mask=mask, other=0, volatile=not interpret)
      if interpret:
        v = lax.bitcast_convert_type(v, jnp.float32)
      v = jnp.where(pid_k == s, acc, v)
      total = v if total is None else total + v
    store_out(total)


def kernel_spec(fmt: str, cfg: WOConfig, group: int | None = None) -> _Spec:
  """The layout the kernel views ``fmt``'s prepared bytes in: 8-bit codes are row-major, so with per-element
  scaling a whole K step is one group (one 2-D tile); otherwise ``weight_spec(fmt, group)`` (``group``: the
  weight's FP4 packing group)."""
  if fmt not in SPECS:
    raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
  if not isinstance(cfg, WOConfig):
    raise TypeError(f"cfg must be a WOConfig; got {type(cfg).__name__}")
  spec = weight_spec(fmt, group)
  if spec.bits == 8 and cfg.scale_mode == "elem":
    return dataclasses.replace(spec, group=cfg.block_k)
  return spec


def max_rows(fmt: str, group: int | None = None) -> int:
  """Rows of x per kernel call: 256, or for FP4 128 (64 with 512-groups): its groups fix block_k, and 256 rows
  of bf16 x at that depth would not fit two pipeline stages in shared memory."""
  g = weight_spec(fmt, group).group
  return MAX_ROWS if g <= 128 else MAX_ROWS * 128 // g


def _uint_of(dtype):
  return jnp.dtype(f"uint{jnp.dtype(dtype).itemsize * 8}")


def _call(xb, pw: TritonWeight, m: int, mp: int, cfg: WOConfig, out_dtype, interpret: bool):
  """One kernel launch on x bits (m, K_p) uint16 -> (m, N) out_dtype."""
  spec = kernel_spec(pw.fmt, cfg, pw.group or None)
  n_p, k_p = pw.n_padded, pw.k_padded
  n = pw.n
  kg = k_p // spec.group
  bn, sk = cfg.block_n, cfg.split_k
  kg_s = kg // sk                      # groups per program
  t_groups = cfg.block_k // spec.group  # groups per step
  steps = kg_s // t_groups
  gm = pw.layout == "groups"
  if gm and t_groups != 1:
    raise ValueError(f"a group-major weight needs block_k == its group ({spec.group}); got {cfg.block_k}")
  x4 = xb.reshape(m, kg, spec.tiles, spec.tw)
  grid = (pl.cdiv(n, bn), sk)
  in_specs = [pl.BlockSpec((mp, kg_s, spec.tiles, spec.tw), lambda i, s: (0, s, 0, 0))]
  sc = pw.scales
  if gm:
    w4 = pw.data.reshape(kg, n_p, spec.planes, spec.tw)
    in_specs += [pl.BlockSpec((kg_s, bn, spec.planes, spec.tw), lambda i, s: (s, i, 0, 0)),
                 pl.BlockSpec((kg_s, bn, sc.shape[2]), lambda i, s: (s, i, 0))]
  else:
    w4 = pw.data.reshape(n_p, kg, spec.planes, spec.tw)
    in_specs += [pl.BlockSpec((bn, kg_s, spec.planes, spec.tw), lambda i, s: (i, s, 0, 0)),
                 pl.BlockSpec((bn, sc.shape[1] // sk), lambda i, s: (i, s))]
  args = [x4, w4, sc]
  has_ts = pw.tensor_scale is not None
  if has_ts:
    args.append(pw.tensor_scale.reshape(1, 1).astype(jnp.float32))
    in_specs.append(pl.BlockSpec((1, 1), lambda i, s: (0, 0)))
  kred = sk > 1 and cfg.reduce == "kernel"
  o_dtype = jnp.dtype(out_dtype) if sk == 1 or kred else jnp.dtype(jnp.float32)
  store_dtype = _uint_of(o_dtype) if interpret else o_dtype
  aliases = {}
  if sk == 1 or kred:
    out_shape = jax.ShapeDtypeStruct((m, n), store_dtype)
    out_spec = pl.BlockSpec((mp, bn), lambda i, s: (0, i))
  else:
    out_shape = jax.ShapeDtypeStruct((sk, m, n), store_dtype)
    out_spec = pl.BlockSpec((pl.squeezed, mp, bn), lambda i, s: (s, 0, i))
  if kred:  # + the FP32 partials (sk, m, n) and one arrival counter per N tile, zeroed by XLA before the call
    tiles = _next_pow2(grid[0])
    ws_dtype = jnp.uint32 if interpret else jnp.float32
    out_shape = (out_shape, jax.ShapeDtypeStruct((sk, m, n), ws_dtype), jax.ShapeDtypeStruct((tiles,), jnp.int32))
    out_spec = (out_spec, pl.BlockSpec((sk, mp, bn), lambda i, s: (0, 0, i)),
                pl.BlockSpec((tiles,), lambda i, s: (0,)))
    aliases = {len(args): 2}
    args.append(jnp.zeros((tiles,), jnp.int32))
    in_specs.append(pl.BlockSpec((tiles,), lambda i, s: (0,)))
  # (WOConfig: fold implies the asm decode and per-element scales; the interpreter runs the jnp decode)
  fs = fold_shift(pw.fmt) if cfg.fold and pw.fold_ok and not interpret else 0  # never folds a weight it can't
  # the decoded value is elem * 2^shift; a fold that moves less than the whole rescale (NVFP4: 2^119 of 2^120)
  # leaves elem * 2^(shift - (rescale - fold)) for the epilogue to undo
  out_mul = float(2.0 ** (-spec.shift + (_decode_rescale(spec) - fs if fs else 0)))
  kernel = functools.partial(
      _wo_kernel, spec=spec, cfg=cfg, m=m, n=n, mp=mp, steps=steps, t_groups=t_groups, has_ts=has_ts,
      out_mul=out_mul, out_dtype=o_dtype, interpret=interpret, fold_shift_=fs, group_major=gm, kred=kred)
  params = None
  if not interpret:
    from jax.experimental.pallas import triton as pltriton
    params = pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  out = pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_spec, interpret=interpret,
      compiler_params=params, input_output_aliases=aliases, name=f"wo_triton_{pw.fmt}_{cfg.name()}",
  )(*args)
  if kred:
    out = out[0]
  if interpret:
    out = lax.bitcast_convert_type(out, o_dtype)
  if sk > 1 and not kred:  # an elementwise sum of the partials (XLA emits a loop fusion; jnp.sum's reduce fusion took 1.6 us)
    out = functools.reduce(lambda a, b: a + b, [out[i] for i in range(sk)]).astype(out_dtype)
  return out


@functools.partial(jax.jit, static_argnames=("out_dtype", "config", "interpret"))
def _wo_matmul(x2, pw: TritonWeight, *, out_dtype, config, interpret):
  m, k = x2.shape
  k_p = pw.k_padded
  xb = lax.bitcast_convert_type(x2.astype(jnp.bfloat16), jnp.uint16)  # bits: exact on every backend
  if k_p != k:
    xb = jnp.pad(xb, ((0, 0), (0, k_p - k)))
  outs = []
  rows = max_rows(pw.fmt, pw.group or None)
  for r0 in range(0, m, rows):
    xr = xb[r0:r0 + rows]
    mr = xr.shape[0]
    mp = max(16, _next_pow2(mr))
    cfg = fit_config(config or default_config(mp, pw.fmt, pw.elem_ok, pw.group or None, pw.layout), pw.fmt, mp,
                     pw.n_padded, k_p, pw.group or None, one_group=pw.layout == "groups")
    outs.append(_call(xr, pw, mr, mp, cfg, out_dtype, interpret))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


def wo_matmul(x: jax.Array, w, *, out_dtype=jnp.bfloat16, config: WOConfig | None = None,
              interpret: bool = False) -> jax.Array:
  """(..., N) = x (..., K) @ W^T, W an (N, K) QArray or ``prepare_weight_triton`` result. x is rounded to
  bf16 (the MMA input); FP32 accumulation. ``config``: a ``WOConfig`` (fitted to the shape), default per M."""
  _check_config(config)
  if isinstance(w, QArray):
    w = prepare_weight_for(w, config)
  if not isinstance(w, TritonWeight):
    raise TypeError(f"w must be a QArray or a prepare_weight_triton(...) result; got {type(w).__name__}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array (bf16, f16, f32); got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[-1] != w.k:
    raise ValueError(f"x's last dim ({x.shape[-1] if x.ndim else None}) does not match the weight's K={w.k} "
                     f"(w is (N, K) = {w.shape})")
  out_dtype = jnp.dtype(out_dtype)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise TypeError(f"out_dtype must be a floating dtype; got {out_dtype}")
  lead = x.shape[:-1]
  x2 = x.reshape((-1, w.k))
  if x2.shape[0] == 0:
    return jnp.zeros(lead + (w.n,), out_dtype)
  out = _wo_matmul(x2, w, out_dtype=out_dtype, config=config, interpret=bool(interpret))
  return out.reshape(lead + (w.n,))
