"""Block-scaled (MX) matmul kernels for Hopper GPUs, in Pallas on Mosaic GPU (``plgpu``).

Operands arrive already laid out for the kernel (see ``kernels/mx_matmul.py`` for the QArray glue):

* ``a``: (M, K) element codes, ``b``: (N, K) element codes ("NT": both K-major, as 8-bit wgmma wants B).
* ``sa``: (K/32, M) float32 block scales of ``a`` (2^e, NaN for the E8M0 NaN byte); ``sb``: (K/32, N).
* M, N, K are multiples of the tile sizes (the glue zero-pads).
* Batched (one launch for all B): a (B, M, K), b (B, N, K), sa (K/32, B, M), sb (K/32, B, N) -> (B, M, N).
  The kernel sees them batch-flattened ((B*M, K), (K/32, B*M), ...: free reshapes) and offsets each tile's
  rows by its batch element; B = 1 is the unbatched kernel.

Two GEMM designs, same contract ``out = sum_kb (a_kb @ b_kb^T) * sa[kb] (x) sb[kb]`` accumulated in FP32:

(a) ``variant="fp8"``: one FP8 ``wgmma`` (e4m3/e5m2, mixed allowed) per 32-deep K block into a fresh FP32
    partial accumulator, promoted into the running FP32 accumulator as ``acc += (p * sa_row) * sb_col``
    (DeepGEMM-style promotion, but every 32 instead of every 128 because MX scales change every 32).
(b) ``variant="bf16"``: tiles dequantized to bf16 (exact: an FP8/FP6/FP4/INT8 element times a power of two
    fits bf16) and fed to bf16 ``wgmma``; B is written dequantized to shared memory, A goes from
    registers (``a_regs=True``) or also through shared memory.

Both use a persistent grid (one CTA per SM, ``plgpu.nd_loop`` over output tiles), two compute warpgroups
and one TMA warpgroup (``plgpu.emit_pipeline_warp_specialized``), and a TMA-store epilogue.

Weight-only kernel (``weight_only``): out^T (N, Mp) = W (N, K) dequantized in registers (the wgmma A
operand) times x^T, x (Mp, K) bf16 in shared memory (the B operand, K-major). W is FP8, MXINT8, or FP4 / FP6
packed in the kernel's byte order (``pack_fp4_kernel`` / ``pack_fp6_kernel``), unpacked with integer ops.

Interpret mode (``interpret=True``) runs the same kernels on CPU in Mosaic GPU's interpreter. Its wgmma
takes A only from shared memory, so ``a_regs`` is forced off there. The interpreter parks one host thread
per warpgroup inside callbacks: set ``NPROC`` (XLA:CPU's thread-pool size) to at least 3 * num_sms + 2
before JAX starts, or it can deadlock on a 2-core machine.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

BLOCK = 32
FP8_DTYPES = (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))


def num_sms_default() -> int:
  try:
    return int(jax.devices()[0].core_count)
  except Exception:  # pragma: no cover - CPU or unusual backends
    return 132


def _tiled(minor_elems: int, dtype) -> tuple:
  """Tiling + swizzle transforms for an SMEM tile whose minor dim holds ``minor_elems`` elements."""
  bits = jnp.dtype(dtype).itemsize * 8
  swz = plgpu.find_swizzle(minor_elems * bits)
  return (plgpu.TilingTransform((8, swz * 8 // bits)), plgpu.SwizzleTransform(swz))


def _block_tiled(dtype) -> tuple:
  """Transforms whose tiles are exactly one 32-element K block wide (so blocks can be sliced out)."""
  bits = jnp.dtype(dtype).itemsize * 8
  swz = BLOCK * bits // 8  # 32 B for 8-bit, 64 B for 16-bit
  return (plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(swz))


def _interpret_params(interpret):
  if not interpret:
    return None
  if interpret is True:
    return plgpu.InterpretGPUParams()
  return interpret


def _row(v, shape):
  return lax.broadcast_in_dim(v, shape, [0])


def _col(v, shape):
  return lax.broadcast_in_dim(v, shape, [1])


# Bytes per group of elements in the kernels' packed layouts (see pack_fp4_kernel / pack_fp6_kernel).
ELEM_GROUP = {"fp8": (32, 32), "int8": (32, 32), "e2m1": (64, 32), "e3m2": (128, 96), "e2m3": (128, 96)}


def elem_kind(dtype, elem=None) -> str:
  if elem is not None:
    if elem not in ELEM_GROUP:
      raise ValueError(f"elem must be one of {sorted(ELEM_GROUP)}; got {elem!r}")
    return elem
  dtype = jnp.dtype(dtype)
  if dtype in FP8_DTYPES:
    return "fp8"
  if dtype == jnp.dtype(jnp.int8):
    return "int8"
  raise ValueError(f"pass elem= for packed operands of dtype {dtype}")


def row_bytes(k: int, elem: str) -> int:
  group, nbytes = ELEM_GROUP[elem]
  if k % group:
    raise ValueError(f"K={k} must be a multiple of {group} for {elem}")
  return k // group * nbytes


def dequant_blocks(ref, elem: str, tile_k: int, scale_at, decode_fn=None, block: int = BLOCK):
  """Yields (k offset, bf16 (rows, 32) tile) for each 32-column block of one pipeline stage.

  ``ref``: the stage's SMEM tile of element codes (rows already selected), ``scale_at(i)``: the float32
  (rows,) scale vector of scale block ``i`` of the stage (blocks of ``block`` = 32, or 16 for NVFP4).
  Dequantization: elements decoded exactly to float32, times the row's block scale, rounded to bf16
  (exact for every MX element times a power of two inside bf16's range).
  """
  decode_fn = decode_fn or decode_subbyte

  def scaled(vals, col):
    if block == BLOCK:
      return (vals * _row(scale_at(col // BLOCK), vals.shape)).astype(jnp.bfloat16)
    s0, s1 = scale_at(col // block), scale_at(col // block + 1)  # NVFP4: two 16-wide blocks
    cid = plgpu.broadcasted_iota(jnp.int32, vals.shape, 1, layout=plgpu.Layout.WGMMA)
    s = jnp.where(cid < block, _row(s0, vals.shape), _row(s1, vals.shape))
    return (vals * s).astype(jnp.bfloat16)

  # FP8 goes through float32: Mosaic GPU on Hopper has no FP8 -> bf16 convert (FP8 -> f16 only).
  if elem in ("fp8", "int8"):
    for j in range(tile_k // BLOCK):
      yield BLOCK * j, scaled(ref.at[:, pl.ds(BLOCK * j, BLOCK)][...].astype(jnp.float32), BLOCK * j)
  elif elem == "e2m1":
    for g in range(tile_k // 64):
      u = ref.at[:, pl.ds(32 * g, 32)][...].astype(jnp.int32)
      yield 64 * g, scaled(decode_fn(u & 0xF, elem), 64 * g)
      yield 64 * g + 32, scaled(decode_fn((u >> 4) & 0xF, elem), 64 * g + 32)
  else:  # FP6: three byte planes per 128 elements
    for g in range(tile_k // 128):
      p = [ref.at[:, pl.ds(96 * g + 32 * q, 32)][...].astype(jnp.int32) for q in range(3)]
      word = p[0] | (p[1] << 8) | (p[2] << 16)
      for q in range(4):
        yield 128 * g + 32 * q, scaled(decode_fn((word >> (6 * q)) & 0x3F, elem), 128 * g + 32 * q)


# ----------------------------------------------------------------------------------------------------------
# GEMM (both operands MX-quantized)
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GemmConfig:
  variant: str = "fp8"      # "fp8" (design a) or "bf16" (design b)
  tile_m: int = 64          # rows of one compute warpgroup's output tile
  tile_n: int = 128         # columns of one compute warpgroup's output tile
  tile_k: int = 128         # K depth of one pipeline stage (a multiple of 32)
  wg_dim: str = "M"         # the two compute warpgroups split the CTA tile along "M" or "N"
  max_concurrent_steps: int = 4
  grid_minor: str = "N"     # planar-snake order of output tiles
  grid_tile_width: int = 8
  epi_n: int = 64           # epilogue sub-tile width
  a_regs: bool = True       # bf16 variant: A operand from registers (False: through SMEM)
  pair: bool = False        # fp8 variant: issue two block wgmmas before promoting (overlap MMA + FFMA)
  deq_slots: int = 1        # bf16 variant: dequantized-tile buffers per warpgroup (2: stage k+1's dequantization
                            # overlaps stage k's wgmmas instead of waiting for them at the end of every stage)
  split_k: int = 1          # K cut into this many equal ranges, one output tile per (range, tile); the FP32
                            # partials are summed in range order outside the kernel (for few output tiles)

  @property
  def cta_m(self):
    return self.tile_m * (2 if self.wg_dim == "M" else 1)

  @property
  def cta_n(self):
    return self.tile_n * (2 if self.wg_dim == "N" else 1)

  def name(self):
    s = f"{self.variant}_m{self.tile_m}n{self.tile_n}k{self.tile_k}_wg{self.wg_dim}_s{self.max_concurrent_steps}"
    if self.variant == "bf16":
      s += "_areg" if self.a_regs else "_asmem"
    if self.pair:
      s += "_pair"
    if self.deq_slots != 1:
      s += f"_dq{self.deq_slots}"
    if self.split_k != 1:
      s += f"_sk{self.split_k}"
    if (self.grid_minor, self.grid_tile_width) != ("N", 8):
      s += f"_g{self.grid_minor}{self.grid_tile_width}"
    return s

  def __post_init__(self):
    if self.deq_slots not in (1, 2):
      raise ValueError(f"deq_slots must be 1 or 2; got {self.deq_slots}")
    if self.deq_slots == 2 and self.variant != "bf16":
      raise ValueError("deq_slots=2 applies to the bf16 (dequantize-then-wgmma) variant only")
    if not isinstance(self.split_k, int) or self.split_k < 1:
      raise ValueError(f"split_k must be a positive int; got {self.split_k!r}")


def _epi_n(cfg: GemmConfig, out_dtype) -> int:
  """Epilogue sub-tile width: half as wide for 4-byte outputs (same SMEM)."""
  e = min(cfg.epi_n, cfg.tile_n)
  return max(e // 2, 32) if jnp.dtype(out_dtype).itemsize == 4 and e > 32 else e


def gemm_smem_bytes(cfg: GemmConfig, a_elem: str = "fp8", b_elem: str = "fp8", out_dtype=jnp.bfloat16,
                    interpret: bool = False) -> int:
  """Shared memory the GEMM kernel allocates (pipeline stages, epilogue buffers, bf16 dequant tiles)."""
  nblk = cfg.tile_k // BLOCK
  stage = (cfg.cta_m * row_bytes(cfg.tile_k, a_elem) + cfg.cta_n * row_bytes(cfg.tile_k, b_elem)
           + nblk * (cfg.cta_m + cfg.cta_n) * 4)
  total = cfg.max_concurrent_steps * stage + 4 * cfg.tile_m * _epi_n(cfg, out_dtype) * jnp.dtype(out_dtype).itemsize
  if cfg.variant == "bf16":
    total += 2 * cfg.deq_slots * cfg.tile_n * cfg.tile_k * 2
    if not cfg.a_regs or interpret:
      total += 2 * cfg.deq_slots * cfg.tile_m * cfg.tile_k * 2
  return total + 1024


SMEM_LIMIT = 224 * 1024  # what the kernels get is 227 KiB; the estimate leaves barriers some room


def _gemm_dims(a, b, sa, sb, a_elem: str, b_elem: str, cfg: GemmConfig) -> tuple[int, int, int, int]:
  """(B, M, N, K) of a GEMM call (B = 1 unbatched), after checking the operands against each other and ``cfg``."""
  batched = a.ndim == 3
  bsz = a.shape[0] if batched else 1
  lead = (bsz,) if batched else ()
  m, n, k = a.shape[-2], b.shape[-2], sa.shape[0] * BLOCK
  if b.ndim != a.ndim or sa.ndim != a.ndim or sb.ndim != a.ndim or a.ndim not in (2, 3) or b.shape[:-2] != lead:
    raise ValueError(f"a, b, sa, sb must all be 2D, or 3D with one batch size; got {a.shape}, {b.shape}, "
                     f"{sa.shape}, {sb.shape}")
  if a.shape[-1] != row_bytes(k, a_elem) or b.shape[-1] != row_bytes(k, b_elem):
    raise ValueError(f"a {a.shape} ({a_elem}) and b {b.shape} ({b_elem}) do not hold K={k} elements")
  if sa.shape != (k // BLOCK,) + lead + (m,) or sb.shape != (k // BLOCK,) + lead + (n,):
    want = "(K/32, B, M) and (K/32, B, N)" if batched else "(K/32, M) and (K/32, N)"
    raise ValueError(f"scales must be {want}; got {sa.shape}, {sb.shape}")
  if cfg.variant == "fp8" and (a_elem != "fp8" or b_elem != "fp8"):
    raise ValueError(f"variant 'fp8' needs float8 operands; got {a_elem}, {b_elem}")
  if cfg.variant == "bf16" and cfg.tile_k % max(ELEM_GROUP[a_elem][0], ELEM_GROUP[b_elem][0]):
    raise ValueError(f"tile_k={cfg.tile_k} must be a multiple of the packing group of {a_elem}/{b_elem}")
  if cfg.tile_k % BLOCK:
    raise ValueError("tile_k must be a multiple of 32")
  if m % cfg.cta_m or n % cfg.cta_n or k % (cfg.tile_k * cfg.split_k):
    raise ValueError(f"shape ({m}, {n}, {k}) must be a multiple of the CTA tile ({cfg.cta_m}, {cfg.cta_n}, "
                     f"{cfg.tile_k} x split_k {cfg.split_k}); pad first")
  return bsz, m, n, k


def _batch_row(bi, rows: int, off):
  """Row ``off`` of batch element ``bi`` in a batch-flattened (B * rows, ...) array (``bi`` None: unbatched)."""
  return off if bi is None else bi * rows + off


def gemm(a, b, sa, sb, *, a_elem=None, b_elem=None, out_dtype=jnp.bfloat16, config: GemmConfig = GemmConfig(),
         num_sms: int | None = None, interpret=False):
  """out (M, N) = MX block-scaled a (M, K) @ b (N, K)^T; see the module docstring for the layout.

  ``a_elem``/``b_elem``: "fp8" (float8 dtypes, inferred), "int8" (inferred), or "e2m1"/"e3m2"/"e2m3" for
  uint8 data packed by ``pack_fp4_kernel``/``pack_fp6_kernel`` (bf16 variant only). K = 32 * sa.shape[0].

  Batched (one launch): a (B, M, K), b (B, N, K), sa (K/32, B, M), sb (K/32, B, N) -> out (B, M, N) with
  out[i] = gemm(a[i], b[i], sa[:, i], sb[:, i]) bit for bit. The scales are K-block-major so that every operand
  and the output reshape for free into the 2D kernel's arrays: a (B*M, K), sa (K/32, B*M), out (B*M, N), ...
  (M, N padded to the CTA tile, tiles never straddle two batch elements). The persistent loop runs over
  (B, M/cta_m * N/cta_n) tiles, batch outermost (consecutive CTAs share one batch element's operands), the
  planar snake inside each batch element. B = 1 (or 2D operands) lowers to the unbatched kernel.

  Split-K (``config.split_k`` = S > 1, for shapes with few output tiles, e.g. weight gradients): K is cut into S
  equal ranges, the persistent loop runs over (S, B, tiles) and writes S FP32 partial products, and the result
  is p_0 + p_1 + ... + p_{S-1} (that order, one XLA fusion) cast to ``out_dtype``.
  """
  cfg = config
  a_elem, b_elem = elem_kind(a.dtype, a_elem), elem_kind(b.dtype, b_elem)
  bsz, m, n, k = _gemm_dims(a, b, sa, sb, a_elem, b_elem, cfg)
  split = cfg.split_k
  kernel_dtype = jnp.float32 if split > 1 else out_dtype
  batched = a.ndim == 3
  if batched:
    flat = lambda x: x.reshape(x.shape[0] * x.shape[1], x.shape[2])   # (B, rows, K) -> (B*rows, K)
    kflat = lambda s: s.reshape(s.shape[0], s.shape[1] * s.shape[2])  # (K/32, B, rows) -> (K/32, B*rows)
    a, b, sa, sb = flat(a), flat(b), kflat(sa), kflat(sb)
  out = _gemm(a, b, sa, sb, bsz, m, n, k, a_elem, b_elem, kernel_dtype, cfg, num_sms, interpret)
  if split > 1:
    parts = out.reshape(split, bsz * m, n)
    out = functools.reduce(jnp.add, [parts[i] for i in range(split)]).astype(out_dtype)
  return out.reshape(bsz, m, n) if batched else out


def _gemm(a, b, sa, sb, bsz, m, n, k, a_elem, b_elem, out_dtype, cfg: GemmConfig, num_sms, interpret):
  """The kernel on batch-flattened operands: a (B*M, K), b (B*N, K), sa (K/32, B*M), sb (K/32, B*N)."""
  interp = _interpret_params(interpret)
  a_regs = cfg.a_regs and interp is None
  if num_sms is None:
    num_sms = 4 if interp is not None else num_sms_default()

  tile_m, tile_n, tile_k = cfg.tile_m, cfg.tile_n, cfg.tile_k
  cta_m, cta_n = cfg.cta_m, cfg.cta_n
  nblk = tile_k // BLOCK
  split = cfg.split_k
  k_part = k // split  # K elements of one split-K range
  m_iters, n_iters, k_iters = m // cta_m, n // cta_n, k_part // tile_k
  epi_n = _epi_n(cfg, out_dtype)
  a_tr = _block_tiled(a.dtype)
  b_tr = _block_tiled(b.dtype)
  a_tk, b_tk = row_bytes(tile_k, a_elem), row_bytes(tile_k, b_elem)  # bytes of a stage's row
  a_kp, b_kp = row_bytes(k_part, a_elem), row_bytes(k_part, b_elem)  # bytes of a split-K range's row
  out_tr = _tiled(epi_n, out_dtype)
  minor = 1 if cfg.grid_minor == "N" else 0
  bf16 = jnp.bfloat16

  def kernel(a_g, b_g, sa_g, sb_g, o_g, o_smem):
    def pipeline(body, ctx):
      return plgpu.emit_pipeline_warp_specialized(
          body, grid=(k_iters,), memory_registers=40,
          in_specs=[
              plgpu.BlockSpec((cta_m, a_tk), lambda kk: (0, kk), transforms=a_tr, memory_space=plgpu.SMEM),
              plgpu.BlockSpec((cta_n, b_tk), lambda kk: (0, kk), transforms=b_tr, memory_space=plgpu.SMEM),
              plgpu.BlockSpec((nblk, cta_m), lambda kk: (kk, 0), memory_space=plgpu.SMEM),
              plgpu.BlockSpec((nblk, cta_n), lambda kk: (kk, 0), memory_space=plgpu.SMEM),
          ],
          wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=cfg.max_concurrent_steps, compute_context=ctx)

    ignore = lambda *_, **__: None
    extra = {}
    if cfg.variant == "bf16":
      slots = (cfg.deq_slots,) if cfg.deq_slots > 1 else ()
      extra["bq"] = plgpu.SMEM((2, *slots, tile_n, tile_k), bf16, transforms=_block_tiled(bf16))
      if not a_regs:
        extra["aq"] = plgpu.SMEM((2, *slots, tile_m, tile_k), bf16, transforms=_block_tiled(bf16))

    @functools.partial(pl.run_scoped, allocs=pipeline(ignore, ignore).get_allocations(a_g, b_g, sa_g, sb_g),
                       collective_axes="wg", **extra)
    def _scope(allocs, bq=None, aq=None):
      wg = lax.axis_index("wg")

      def tile(bi, lin, si=None):
        """Output tile ``lin`` (planar-snake order) of batch element ``bi`` (None: unbatched) over split-K range
        ``si`` (None: all of K)."""
        mi, ni = plgpu.planar_snake(lin, (m_iters, n_iters), minor, cfg.grid_tile_width)
        # First rows of the tile in the batch-flattened arrays, traced anew at each use (as the unbatched
        # kernel always did: its jaxpr stays exactly the same).
        a_row = lambda: _batch_row(bi, m, mi * cta_m)
        b_row = lambda: _batch_row(bi, n, ni * cta_n)
        o_row = a_row if si is None else (lambda: si * (bsz * m) + a_row())  # range si's partial: rows si*B*M..
        if cfg.wg_dim == "M":
          wg_m, wg_n = pl.ds(wg * tile_m, tile_m), slice(None)
          row0, col0 = o_row() + wg * tile_m, ni * cta_n
        else:
          wg_m, wg_n = slice(None), pl.ds(wg * tile_n, tile_n)
          row0, col0 = o_row(), ni * cta_n + wg * tile_n

        def epilogue(acc):
          accv = acc.astype(out_dtype)
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          for e in range(tile_n // epi_n):
            slot = e % 2
            o_smem[wg, slot] = accv[:, e * epi_n:(e + 1) * epi_n] if tile_n != epi_n else accv
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[wg, slot], o_g.at[pl.ds(row0, tile_m), pl.ds(col0 + e * epi_n, epi_n)])
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)

        if cfg.variant == "fp8":
          def ctx(run):
            acc = run(plgpu.layout_cast(jnp.zeros((tile_m, tile_n), jnp.float32), plgpu.Layout.WGMMA))
            epilogue(acc)

          def promote(acc, p, sa_s, sb_s, j):
            sa_j = plgpu.load(sa_s.at[j, wg_m], layout=plgpu.Layout.WGMMA.reduce(1))
            sb_j = plgpu.load(sb_s.at[j, wg_n], layout=plgpu.Layout.WGMMA.reduce(0))
            shape = (tile_m, tile_n)
            return acc + (p * _row(sa_j, shape)) * _col(sb_j, shape)

          def body(_, a_s, b_s, sa_s, sb_s, acc):
            def blk(j):
              return (a_s.at[wg_m, pl.ds(BLOCK * j, BLOCK)], b_s.at[wg_n, pl.ds(BLOCK * j, BLOCK)].T)

            if not cfg.pair:
              for j in range(nblk):
                def part(p_ref, j=j):
                  plgpu.wgmma(p_ref, *blk(j))
                  return p_ref[...]
                p = pl.run_scoped(part, plgpu.ACC((tile_m, tile_n), jnp.float32))
                acc = promote(acc, p, sa_s, sb_s, j)
              return acc
            for j in range(0, nblk, 2):
              # The second block's MMA runs while the first is promoted.
              def part2_full(p0, p1, j=j, acc=acc):
                plgpu.wgmma(p0, *blk(j))
                plgpu.wgmma(p1, *blk(j + 1))
                v0 = plgpu.wgmma_accumulator_load(p0, wait_n=1)
                acc = promote(acc, v0, sa_s, sb_s, j)
                v1 = plgpu.wgmma_accumulator_load(p1, wait_n=0)
                return promote(acc, v1, sa_s, sb_s, j + 1)
              acc = pl.run_scoped(part2_full, plgpu.ACC((tile_m, tile_n), jnp.float32),
                                  plgpu.ACC((tile_m, tile_n), jnp.float32))
            return acc

        else:  # bf16 dequantize-then-wgmma
          def ctx(run):
            def scope(acc_ref):
              run(acc_ref)
              if cfg.deq_slots > 1:
                plgpu.wgmma_wait(0)  # the last stage's wgmmas are still in flight
              return acc_ref[...]
            epilogue(pl.run_scoped(scope, plgpu.ACC((tile_m, tile_n), jnp.float32)))

          def body(idx, a_s, b_s, sa_s, sb_s, acc_ref):
            bq_w, aq_w = bq.at[wg], (None if a_regs else aq.at[wg])
            if cfg.deq_slots > 1:
              # Slot k % 2 was last read by stage k - 2's wgmmas: wait until at most stage k - 1's (one group
              # per 32-block) are in flight, then overwrite it while those run.
              plgpu.wgmma_wait(nblk)
              slot = lax.rem(idx[0], 2)
              bq_w = bq_w.at[slot]
              aq_w = None if a_regs else aq_w.at[slot]
            b_scale = lambda i: plgpu.load(sb_s.at[i, wg_n], layout=plgpu.Layout.WGMMA.reduce(1))
            for off, bt in dequant_blocks(b_s.at[wg_n], b_elem, tile_k, b_scale):
              bq_w.at[:, pl.ds(off, BLOCK)][...] = bt
            plgpu.commit_smem()
            a_scale = lambda i: plgpu.load(sa_s.at[i, wg_m], layout=plgpu.Layout.WGMMA.reduce(1))
            offs = []
            for off, at in dequant_blocks(a_s.at[wg_m], a_elem, tile_k, a_scale):
              if a_regs:
                plgpu.wgmma(acc_ref, at, bq_w.at[:, pl.ds(off, BLOCK)].T)
              else:
                aq_w.at[:, pl.ds(off, BLOCK)][...] = at
                offs.append(off)
            if not a_regs:
              plgpu.commit_smem()
              for off in offs:
                plgpu.wgmma(acc_ref, aq_w.at[:, pl.ds(off, BLOCK)], bq_w.at[:, pl.ds(off, BLOCK)].T)
            if cfg.deq_slots == 1:
              plgpu.wgmma_wait(0)
            return acc_ref

        if si is None:
          ka, kb, ks = slice(None), slice(None), slice(None)
        else:  # this range's columns of a and b, and its rows of the (K/32, rows) scales
          ka, kb = pl.ds(si * a_kp, a_kp), pl.ds(si * b_kp, b_kp)
          ks = pl.ds(si * (k_part // BLOCK), k_part // BLOCK)
        pipeline(body, ctx)(
            a_g.at[pl.ds(a_row(), cta_m), ka], b_g.at[pl.ds(b_row(), cta_n), kb],
            sa_g.at[ks, pl.ds(a_row(), cta_m)], sb_g.at[ks, pl.ds(b_row(), cta_n)], allocations=allocs)

      if split > 1:  # split-K range outermost, then the batch element
        @plgpu.nd_loop((split, bsz, m_iters * n_iters), collective_axes="sm")
        def _split_tile_loop(info):
          si, bi, lin = info.index
          tile(bi if bsz > 1 else None, lin, si)
      elif bsz == 1:
        @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
        def _tile_loop(info):
          tile(None, info.index[0])
      else:  # batch outermost: the CTAs of one sweep mostly share a batch element
        @plgpu.nd_loop((bsz, m_iters * n_iters), collective_axes="sm")
        def _batched_tile_loop(info):
          tile(*info.index)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  f = plgpu.kernel(
      kernel, out_type=jax.ShapeDtypeStruct((split * bsz * m, n), out_dtype), grid=(num_sms,), grid_names=("sm",),
      num_threads=3, thread_name="wg",
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      scratch_types=dict(o_smem=plgpu.SMEM((2, 2, tile_m, epi_n), out_dtype, transforms=out_tr)),
      interpret=interp)
  return f(a, b, sa, sb)


# ----------------------------------------------------------------------------------------------------------
# Sub-byte element decoding (integer ops only: Hopper has no FP4/FP6 converts)
# ----------------------------------------------------------------------------------------------------------

# (bits, mbits, bias) of the sub-byte element formats.
SUBBYTE = {"e2m1": (4, 1, 1), "e3m2": (6, 2, 3), "e2m3": (6, 3, 1)}


def decode_subbyte_denorm(code, elem: str):
  """int32 codes (low ``bits`` bits) -> float32 element values, fewest ops, GPU-only (experimental).

  The sign and the exponent|mantissa bits are placed at the top of an FP32 pattern, which reads as the
  element value times 2^(bias - 127) (subnormal elements land on FP32 subnormals); one multiply by
  2^(127 - bias) rescales. Exact only where FP32 denormals are kept (no FTZ) and the compiler does not
  re-associate that multiply with the block scale: XLA:CPU does both, so interpret mode gets it wrong. The
  GPU benchmark checks it against the reference before timing it.
  """
  bits, m, bias = SUBBYTE[elem]
  sign = (code >> (bits - 1)) & 1
  mag = code & ((1 << (bits - 1)) - 1)
  u = (sign << 31) | (mag << (23 - m))
  return lax.bitcast_convert_type(u, jnp.float32) * jnp.float32(2.0 ** (127 - bias))


def decode_subbyte(code, elem: str):
  """int32 codes (low ``bits`` bits) -> exact float32 element values, integer ops + one select.

  Normal codes: FP32 bits ``(mag << (23 - m)) + ((127 - bias) << 23)`` (the exponent field re-biased).
  Subnormal codes (exponent 0): ``mant * 2^(1 - bias - m)``, with float(mant) made by the 2^23 magic add (no
  int->float convert, which is slow on Hopper). The sign bit is OR-ed in last. No denormals involved.
  """
  bits, m, bias = SUBBYTE[elem]
  mag_mask = (1 << (bits - 1)) - 1
  mag = code & mag_mask
  normal = lax.bitcast_convert_type((mag << (23 - m)) + ((127 - bias) << 23), jnp.float32)
  mant = code & ((1 << m) - 1)
  sub = (lax.bitcast_convert_type(mant | 0x4B000000, jnp.float32) - jnp.float32(2.0 ** 23)) * jnp.float32(
      2.0 ** (1 - bias - m))
  val = jnp.where(mag < (1 << m), sub, normal)
  sign = (code << (32 - bits)) & jnp.int32(-(2 ** 31))
  return lax.bitcast_convert_type(lax.bitcast_convert_type(val, jnp.int32) | sign, jnp.float32)


def pack_fp4_kernel(codes):
  """(..., K) uint8 FP4 codes, K % 64 == 0 -> (..., K/2) bytes: in each 64-group, byte i = c[i] | c[32+i] << 4."""
  lead, k = codes.shape[:-1], codes.shape[-1]
  g = codes.reshape(lead + (k // 64, 2, 32)).astype(jnp.uint8)
  return (g[..., 0, :] | (g[..., 1, :] << 4)).reshape(lead + (k // 2,))


def pack_fp6_kernel(codes):
  """(..., K) uint8 FP6 codes, K % 128 == 0 -> (..., 3K/4) bytes: per 128-group three 32-byte planes of the
  24-bit words w_i = c[i] | c[32+i] << 6 | c[64+i] << 12 | c[96+i] << 18 (plane p = byte p of w)."""
  lead, k = codes.shape[:-1], codes.shape[-1]
  g = codes.reshape(lead + (k // 128, 4, 32)).astype(jnp.uint32)
  w = g[..., 0, :] | (g[..., 1, :] << 6) | (g[..., 2, :] << 12) | (g[..., 3, :] << 18)
  planes = jnp.stack([(w >> (8 * p)) & 0xFF for p in range(3)], axis=-2)  # (..., k/128, 3, 32)
  return planes.astype(jnp.uint8).reshape(lead + (3 * k // 4,))


# ----------------------------------------------------------------------------------------------------------
# Weight-only matmul (bf16 activations x quantized weights), small M
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightOnlyConfig:
  tile_n: int = 64          # weight rows per CTA (the wgmma M dimension; 64 or 128)
  tile_k: int = 256         # K depth per pipeline stage (multiple of 128)
  split_k: int = 1          # K split across CTAs (partials summed by the glue)
  max_concurrent_steps: int = 4
  a_regs: bool = True       # dequantized W straight from registers into wgmma
  decode: str = "select"    # sub-byte decode: "select" (exact everywhere) or "denorm" (GPU-only bit trick)

  def name(self):
    return (f"wo_n{self.tile_n}k{self.tile_k}_sk{self.split_k}_s{self.max_concurrent_steps}"
            f"{'' if self.a_regs else '_asmem'}_{self.decode}")


def weight_only(x, w, sw, *, elem: str, block: int = BLOCK, config: WeightOnlyConfig = WeightOnlyConfig(),
                out_dtype=jnp.float32, interpret=False):
  """out^T (split_k, N, Mp) = W (N, K) @ x (Mp, K)^T with W block-scaled.

  x: (Mp, K) bf16, Mp a multiple of 8 (<= 256). w: (N, K) float8/int8 codes (``elem`` "fp8"/"int8"), or
  (N, K/2) bytes for ``elem="e2m1"`` (``pack_fp4_kernel``), or (N, 3K/4) for "e3m2"/"e2m3"
  (``pack_fp6_kernel``). sw: (K/block, N) float32 scales (block 32 for MX, 16 for NVFP4; MXINT8's 2^-6 folded
  in). Returns float32 (split_k, N, Mp) partial sums (or ``out_dtype`` when split_k == 1).
  """
  cfg = config
  mp, k = x.shape
  n = w.shape[0]
  if mp % 8 or mp > 256:
    raise ValueError(f"x rows must be a multiple of 8 and <= 256; got {mp}")
  group, bytes_per_group = ELEM_GROUP[elem]
  if cfg.tile_k % max(group, block, 32) or cfg.tile_k % 32:
    raise ValueError(f"tile_k={cfg.tile_k} must be a multiple of {group}")
  if k % (cfg.tile_k * cfg.split_k) or n % cfg.tile_n:
    raise ValueError(f"N={n} must divide by tile_n and K={k} by tile_k*split_k; pad first")
  if w.shape[1] * group != k * bytes_per_group:
    raise ValueError(f"w {w.shape} does not hold K={k} elements of {elem}")
  if sw.shape != (k // block, n):
    raise ValueError(f"sw must be (K/{block}, N)={k // block, n}; got {sw.shape}")
  interp = _interpret_params(interpret)
  a_regs = cfg.a_regs and interp is None
  tile_n, tile_k, split = cfg.tile_n, cfg.tile_k, cfg.split_k
  k_steps = k // tile_k // split
  wk = tile_k * bytes_per_group // group  # W bytes per row per stage
  nsb = tile_k // block                   # scale rows per stage
  bf16 = jnp.bfloat16
  acc_dtype = jnp.float32
  o_dtype = out_dtype if split == 1 else jnp.float32
  decode = decode_subbyte_denorm if cfg.decode == "denorm" else decode_subbyte
  w_tr = _block_tiled(w.dtype)
  x_tr = _block_tiled(bf16)
  o_tr = _tiled(mp, o_dtype)

  def kernel(x_g, w_g, sw_g, o_g, o_smem, wq=None):
    ni = lax.axis_index("n")
    si = lax.axis_index("s")

    def body(_, x_s, w_s, sw_s, acc_ref):
      scale_at = lambda i: plgpu.load(sw_s.at[i], layout=plgpu.Layout.WGMMA.reduce(1))
      blocks = dequant_blocks(w_s, elem, tile_k, scale_at, decode, block)
      if a_regs:
        for off, wt in blocks:
          plgpu.wgmma(acc_ref, wt, x_s.at[:, pl.ds(off, 32)].T)
      else:
        offs = []
        for off, wt in blocks:
          wq.at[:, pl.ds(off, 32)][...] = wt
          offs.append(off)
        plgpu.commit_smem()
        for off in offs:
          plgpu.wgmma(acc_ref, wq.at[:, pl.ds(off, 32)], x_s.at[:, pl.ds(off, 32)].T)
      plgpu.wgmma_wait(0)
      return acc_ref

    def scope(acc_ref):
      plgpu.emit_pipeline(
          body, grid=(k_steps,),
          in_specs=[
              plgpu.BlockSpec((mp, tile_k), lambda kk: (0, kk), transforms=x_tr),
              plgpu.BlockSpec((tile_n, wk), lambda kk: (0, kk), transforms=w_tr),
              plgpu.BlockSpec((nsb, tile_n), lambda kk: (kk, 0)),
          ],
          max_concurrent_steps=cfg.max_concurrent_steps, init_carry=acc_ref,
      )(x_g.at[:, pl.ds(si * (k // split), k // split)],
        w_g.at[pl.ds(ni * tile_n, tile_n), pl.ds(si * (w.shape[1] // split), w.shape[1] // split)],
        sw_g.at[pl.ds(si * (sw.shape[0] // split), sw.shape[0] // split), pl.ds(ni * tile_n, tile_n)])
      return acc_ref[...]

    acc = pl.run_scoped(scope, plgpu.ACC((tile_n, mp), acc_dtype))
    o_smem[...] = acc.astype(o_dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_g.at[si, pl.ds(ni * tile_n, tile_n)])
    plgpu.wait_smem_to_gmem(0)

  scratch = dict(o_smem=plgpu.SMEM((tile_n, mp), o_dtype, transforms=o_tr))
  if not a_regs:
    scratch["wq"] = plgpu.SMEM((tile_n, tile_k), bf16, transforms=_block_tiled(bf16))
  f = plgpu.kernel(
      kernel, out_type=jax.ShapeDtypeStruct((split, n, mp), o_dtype), grid=(n // tile_n, split),
      grid_names=("n", "s"),
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      scratch_types=scratch, interpret=interp)
  return f(x, w, sw)
