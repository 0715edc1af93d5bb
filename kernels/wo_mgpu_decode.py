"""A ``wo_mgpu.MgpuWeight`` decoded to a bf16 (N, K) matrix by one Mosaic GPU kernel, for many-row calls.

Past ``wo_mgpu.KERNEL_ROWS`` rows the weight-only kernel (one CTA per 64 weight rows re-decoding W for each
32-row x tile) is slower than XLA's bf16 GEMM, so ``wo_matmul_mgpu`` decodes W once and runs that GEMM. The
decode is the weight-only kernel's own: ``_decode_regs`` (inline PTX, unfolded: elem * 2^e; NVFP4 elem * s, the
tensor scale left to the GEMM's epilogue), exact wherever the kernel's is. One CTA per 64-row tile walks K:
``emit_pipeline`` streams each step's words and scale bytes GMEM -> SMEM, each 32-block is decoded into the
wgmma register layout and stored to a swizzled (64, 32) SMEM tile, and TMA writes it to the output; two
output slots let a step's stores drain while the next is decoded. Bytes: the weight once plus 2 per element.
``interpret=True`` decodes with ``decode_block_jnp`` (the CPU tests).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu

from kernels.wo_mgpu import BLOCK, TILE_N, MgpuWeight, _decode_regs, decode_block_jnp, word_rows


def decode_weight(w: MgpuWeight, *, interpret: bool = False) -> jax.Array:
  """(N, K) bf16 W from the kernel layout: elem * 2^e for the E8M0-scaled formats, elem * s for NVFP4 (its FP32
  tensor scale not applied). Hopper (Mosaic GPU), or the Pallas interpreter with ``interpret=True``."""
  if not isinstance(w, MgpuWeight):
    raise TypeError(f"w must be a prepare_weight_mgpu(...) result; got {type(w).__name__}")
  s, wr, fmt = w.steps, word_rows(w.fmt), w.fmt
  ks, nt = w.words.shape[0], w.n_padded // TILE_N
  sbytes = 128 if w.nv else 64
  bf16 = jnp.bfloat16
  tr = (plgpu.TilingTransform((8, BLOCK)), plgpu.SwizzleTransform(64))

  def kernel(w_g, s_g, o_g, o_s):
    ni = lax.axis_index("n")

    def body(idx, w_s, s_s):
      (kk,) = idx
      slot = kk % 2
      plgpu.wait_smem_to_gmem(s, wait_read_only=True)  # this slot's stores, two steps back
      for b in range(s):
        if interpret:
          a = decode_block_jnp(w_s[pl.ds(wr * b, wr), :], s_s[b, :], fmt, False)
        else:
          a = plgpu.inline_mgpu(
              arg_types=(plgpu.RefType(), plgpu.RefType()),
              return_type=plgpu.ShapeDtypeStruct((TILE_N, BLOCK), bf16, layout=plgpu.Layout.WGMMA),
          )(lambda _, wr_, sr, b=b: _decode_regs(wr_, sr, b, fmt, 0, False))(w_s, s_s)
        o_s.at[slot, b][...] = a
      plgpu.commit_smem()
      for b in range(s):
        plgpu.copy_smem_to_gmem(o_s.at[slot, b],
                                o_g.at[pl.ds(ni * TILE_N, TILE_N), pl.ds((kk * s + b) * BLOCK, BLOCK)])

    plgpu.emit_pipeline(
        body, grid=(ks,), max_concurrent_steps=2,
        in_specs=[plgpu.BlockSpec((None, wr * s, 32), lambda kk: (kk, 0, 0)),
                  plgpu.BlockSpec((None, s, sbytes), lambda kk: (kk, 0, 0))],
    )(w_g.at[:, pl.ds(ni * wr * s, wr * s)], s_g.at[:, pl.ds(ni * s, s)])
    plgpu.wait_smem_to_gmem(0)

  f = plgpu.kernel(
      kernel, out_type=jax.ShapeDtypeStruct((w.n_padded, w.k_padded), bf16), grid=(nt,), grid_names=("n",),
      scratch_types=(plgpu.SMEM((2, s, TILE_N, BLOCK), bf16, transforms=tr),),
      interpret=plgpu.InterpretGPUParams() if interpret else None)
  full = f(w.words, w.scales)
  return full[:w.n, :w.k] if (w.n, w.k) != full.shape else full


def _dequant_matmul(x2: jax.Array, w: MgpuWeight, out_dtype, interpret: bool = False) -> jax.Array:
  """x2 (M, K) bf16 @ ``decode_weight(w)``^T with FP32 accumulation (XLA's bf16 GEMM), times NVFP4's tensor
  scale: the weight-only kernel's arithmetic, for M beyond ``KERNEL_ROWS``."""
  acc = lax.dot_general(x2, decode_weight(w, interpret=interpret), (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)
  if w.nv:
    acc = acc * w.tensor_scale[0]
  return acc.astype(out_dtype)
