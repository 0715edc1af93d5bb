"""Block-scaled matmul on quantized operands: the MX spec's DotGeneral, plus a weight-only variant.

``mx_matmul(a, b)``: a (M, K) and b (N, K) QArrays, both quantized along K (axis 1; "NT" layout, B K-major
as FP8 GEMMs want it). Result (M, N) = sum over 32-blocks kb of (a_kb . b_kb) * scale_a[m, kb] *
scale_b[n, kb], accumulated in FP32, returned in ``out_dtype``. Mixed formats are allowed.

``impl``:
  "xla"       both operands dequantized to float32 and contracted with precision=HIGHEST (the reference,
              and the fallback on CPU/TPU or for formats the kernels don't take).
  "mgpu"      the Hopper Pallas/Mosaic GPU kernels (kernels/mx_matmul_mgpu.py); the design (FP8 wgmma with
              per-block promotion, or dequantize-to-bf16 wgmma) is picked per shape and format.
  "mgpu_fp8" / "mgpu_bf16"   force one design.
  "native"    ``jax.nn.scaled_matmul`` (MXFP8, K a multiple of 32): cuDNN's block-scaled tensor-core GEMM on
              Blackwell, JAX's own decomposition elsewhere.
  "auto"      "native" on Blackwell (compute capability >= 10) for MXFP8 pairs; "mgpu" on an H100/H200 when
              the formats are supported, the Pallas TPU kernel
              (kernels/tpu_matmul.py) on a TPU, else "xla".
``interpret=True`` runs the Pallas kernels in Mosaic GPU's CPU interpreter (tests).

``mx_dot_general(lhs, rhs, dimension_numbers)``: lax.dot_general's contract on QArrays: one contracting dim
per side, which must be each operand's quantized axis; batch dims allowed. Output dims are
(batch..., lhs free..., rhs free...). Kernel paths move the batch / free dims into (B, M, K) x (B, N, K); the
Hopper kernel runs all B products in one launch (batched persistent tile loop).

``mx_weight_only_matmul(x, w)``: x (..., K) in bf16/float, w a (N, K) QArray (MXFP8/MXFP6/MXFP4/MXINT8 or
NVFP4) or a ``prepare_weight_only(w)`` result (re-laid out once for the kernel: do this for inference).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mx_jax.qarray import QArray
from mx_jax.quantize import dequantize

IMPLS = ("auto", "xla", "native", "mgpu", "mgpu_fp8", "mgpu_bf16")
WO_IMPLS = ("auto", "xla", "mgpu", "triton")
# impl="auto" on Hopper: the Triton weight-only kernel up to this many rows (measured faster than the bf16
# GEMM there: 1.4-1.8x at M = 16; slower from M = 64), the Mosaic kernel above.
WO_TRITON_MAX_M = 32


def _glue():
  from kernels import mx_matmul  # the Pallas kernels are imported only when used
  return mx_matmul


def _tpu():
  from kernels import tpu_matmul  # Pallas TPU kernels: "auto" on a TPU backend
  return tpu_matmul


def _tpu_takes(a: QArray, b: QArray | None = None) -> bool:
  if jax.default_backend() != "tpu":
    return False
  t = _tpu()
  return t.supported(a, b) and (b is None or a.block_size == b.block_size)


_NATIVE_FMTS = ("mxfp8_e4m3", "mxfp8_e5m2")


def gpu_compute_major() -> int | None:
  """The default device's CUDA compute-capability major version (9: Hopper, 10+: Blackwell); None off NVIDIA."""
  try:
    d = jax.devices()[0]
  except Exception:  # pragma: no cover
    return None
  cc = getattr(d, "compute_capability", None)
  return int(cc.split(".")[0]) if d.platform == "gpu" and isinstance(cc, str) else None


def on_blackwell() -> bool:
  """True on an NVIDIA GPU of compute capability >= 10 (block-scaled tensor cores: cuDNN's MXFP8 GEMM)."""
  return (gpu_compute_major() or 0) >= 10


def _native_why_not(a: QArray, b: QArray) -> str | None:
  """None when ``jax.nn.scaled_matmul`` takes the pair, else why not."""
  for q in (a, b):
    if q.fmt not in _NATIVE_FMTS or q.block_size != 32 or q.packed:
      return f"format {q.fmt!r} / block {q.block_size} (native block-scaled GEMMs take MXFP8 with 32-blocks)"
    if q.shape[q.axis] % 32:
      return f"K = {q.shape[q.axis]} (native block-scaled GEMMs need K a multiple of 32)"
  return None


def _native_bmk(a3: QArray, b3: QArray, out_dtype) -> jax.Array:
  """(B, M, N) from (B, M, K) x (B, N, K) QArrays through ``jax.nn.scaled_matmul`` (cuDNN's block-scaled GEMM
  on Blackwell; its own decomposition elsewhere). FP32 result cast to ``out_dtype``."""
  out = jax.nn.scaled_matmul(a3.data, b3.data, a3.scales, b3.scales, preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def _use_native(impl: str, a: QArray, b: QArray) -> bool:
  why = _native_why_not(a, b)
  if impl == "native" and why is not None:
    raise ValueError(f"impl='native': {why}; use impl='xla'")
  return impl == "native" or (impl == "auto" and why is None and on_blackwell())


def _check_q(q: Any, name: str) -> QArray:
  if not isinstance(q, QArray):
    raise TypeError(f"{name} must be a QArray (mx_jax.quantize(...)); got {type(q).__name__}")
  return q


def _check_impl(impl: str, allowed=IMPLS, name: str = "impl"):
  if impl not in allowed:
    raise ValueError(f"{name} must be one of {allowed}; got {impl!r}")


def _resolve(impl: str, why_not: str | None) -> str:
  if impl == "auto":
    return "mgpu" if why_not is None and _glue().on_hopper() else "xla"
  if impl != "xla" and why_not is not None:
    raise ValueError(f"impl={impl!r}: the kernels do not take {why_not}; use impl='xla'")
  return impl


def _resolve_pair(impl: str, a: QArray, b: QArray) -> str:
  """The GPU impl for an operand pair: the kernels' reason to refuse it (format, block size) -> "xla"."""
  why = _glue().kernel_supports(a, b)
  if why is None and a.block_size != b.block_size:
    why = "operands with different block sizes"
  return _resolve(impl, why)


def _xla_dot(a: QArray, b: QArray, dimension_numbers, out_dtype):
  da = dequantize(a, jnp.float32)
  db = dequantize(b, jnp.float32)
  out = lax.dot_general(da, db, dimension_numbers, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def mx_matmul(a: QArray, b: QArray, *, out_dtype: Any = jnp.bfloat16, impl: str = "auto",
              config: Any = None, interpret: bool = False) -> jax.Array:
  """(M, N) = a (M, K) . b (N, K)^T on MX operands quantized along K; FP32 accumulation.

  ``config``: a ``kernels.mx_matmul_mgpu.GemmConfig`` to override the tile choice (kernel impls only).
  """
  a, b = _check_q(a, "a"), _check_q(b, "b")
  _check_impl(impl)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"mx_matmul takes 2D operands a (M, K), b (N, K); got {a.shape}, {b.shape} "
                     "(use mx_dot_general for batch dims)")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"contracting dims differ: a {a.shape} vs b {b.shape} (b must be (N, K))")
  for q, nm in ((a, "a"), (b, "b")):
    if q.block_size is not None and q.axis != 1:
      raise ValueError(f"{nm} must be quantized along K (axis=1); got axis={q.axis}")
  return _mx_matmul_jit(a, b, out_dtype, impl, config, interpret)


def _mx_matmul_body(a: QArray, b: QArray, out_dtype, impl: str, config, interpret) -> jax.Array:
  if impl == "xla":
    return _xla_dot(a, b, (((1,), (1,)), ((), ())), out_dtype)
  if impl == "auto" and _tpu_takes(a, b):
    return _tpu().mx_gemm(a, b, out_dtype=out_dtype)
  if _use_native(impl, a, b):
    add = lambda q: dataclasses.replace(q, data=q.data[None], scales=q.scales[None], axis=2, shape=(1,) + q.shape)
    return _native_bmk(add(a), add(b), out_dtype)[0]
  impl = _resolve_pair(impl, a, b)
  if impl == "xla":
    return _xla_dot(a, b, (((1,), (1,)), ((), ())), out_dtype)
  return _glue().mx_gemm(a, b, out_dtype=out_dtype, variant=_variant(impl, config), config=config,
                         interpret=interpret)


# The dispatch bodies run as one compiled program per (shapes, static options): an eager call is one dispatch
# instead of one compiled program per glue op (padding, layout, scale decode: ~25 per call), and under an outer
# jax.jit they inline as before.
_mx_matmul_jit = jax.jit(_mx_matmul_body, static_argnums=(2, 3, 4, 5))


def _variant(impl: str, config: Any) -> str | None:
  """The kernel design an "mgpu*" impl (or a config) asks for; None: picked per shape and format."""
  if config is not None:
    return config.variant
  return {"mgpu": None, "mgpu_fp8": "fp8", "mgpu_bf16": "bf16"}[impl]


def _move_to_bmk(q: QArray, batch: tuple[int, ...], contract: int) -> QArray:
  """Transposes/reshapes q to (B, F, K): batch dims, then free dims (flattened), then the contracting dim."""
  free = tuple(d for d in range(q.ndim) if d not in batch and d != contract)
  perm = batch + free + (contract,)
  bsz = math.prod(q.shape[d] for d in batch)
  fsz = math.prod(q.shape[d] for d in free)
  data = jnp.transpose(q.data, perm)
  scales = jnp.transpose(q.scales, perm)
  data = data.reshape((bsz, fsz, data.shape[-1]))
  scales = scales.reshape((bsz, fsz, scales.shape[-1]))
  return dataclasses.replace(q, data=data, scales=scales, axis=2, shape=(bsz, fsz, q.shape[contract]))


def mx_dot_general(lhs: QArray, rhs: QArray, dimension_numbers, *, out_dtype: Any = jnp.bfloat16,
                   impl: str = "auto", config: Any = None, interpret: bool = False) -> jax.Array:
  """lax.dot_general on QArrays: ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)), one contracting dim
  each (the operand's quantized axis). Output: (batch..., lhs free..., rhs free...)."""
  lhs, rhs = _check_q(lhs, "lhs"), _check_q(rhs, "rhs")
  _check_impl(impl)
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, lb, rb = tuple(lc), tuple(rc), tuple(lb), tuple(rb)
  if len(lc) != 1 or len(rc) != 1:
    raise ValueError(f"exactly one contracting dim per operand is supported; got {lc}, {rc}")
  if len(lb) != len(rb):
    raise ValueError(f"batch dims must pair up; got {lb}, {rb}")
  lc0, rc0 = lc[0] % lhs.ndim, rc[0] % rhs.ndim
  lb, rb = tuple(d % lhs.ndim for d in lb), tuple(d % rhs.ndim for d in rb)
  if lhs.shape[lc0] != rhs.shape[rc0]:
    raise ValueError(f"contracting dims differ: lhs {lhs.shape}[{lc0}] vs rhs {rhs.shape}[{rc0}]")
  for q, c, nm in ((lhs, lc0, "lhs"), (rhs, rc0, "rhs")):
    if q.block_size is not None and q.axis != c:
      raise ValueError(f"{nm} is quantized along axis {q.axis} but contracted along {c}; block-scaled "
                       "dot products need the contracting dim to be the quantized axis")
  if any(lhs.shape[i] != rhs.shape[j] for i, j in zip(lb, rb)):
    raise ValueError(f"batch dims differ: lhs {lhs.shape} {lb} vs rhs {rhs.shape} {rb}")
  return _mx_dot_general_jit(lhs, rhs, (((lc0,), (rc0,)), (lb, rb)), out_dtype, impl, config, interpret)


def _mx_dot_general_body(lhs: QArray, rhs: QArray, dn, out_dtype, impl: str, config, interpret) -> jax.Array:
  (lc, rc), (lb, rb) = dn
  lc0, rc0 = lc[0], rc[0]
  if impl == "xla":
    return _xla_dot(lhs, rhs, dn, out_dtype)
  if impl == "auto" and _tpu_takes(lhs, rhs):
    return _tpu().mx_dot_general(lhs, rhs, dn, out_dtype=out_dtype)
  native = _use_native(impl, lhs, rhs)
  if not native:
    impl = _resolve_pair(impl, lhs, rhs)
    if impl == "xla":
      return _xla_dot(lhs, rhs, dn, out_dtype)
  lfree = [lhs.shape[d] for d in range(lhs.ndim) if d not in lb and d != lc0]
  rfree = [rhs.shape[d] for d in range(rhs.ndim) if d not in rb and d != rc0]
  bshape = [lhs.shape[d] for d in lb]
  l3 = _move_to_bmk(lhs, lb, lc0)
  r3 = _move_to_bmk(rhs, rb, rc0)
  if native:
    out = _native_bmk(l3, r3, out_dtype)
  elif l3.shape[0] == 1:  # no batch: the 2D kernel
    drop = lambda q: dataclasses.replace(q, data=q.data[0], scales=q.scales[0], axis=1, shape=q.shape[1:])
    out = _mx_matmul_body(drop(l3), drop(r3), out_dtype, impl, config, interpret)[None]
  else:  # one batched kernel launch for all B products
    out = _glue().mx_gemm(l3, r3, out_dtype=out_dtype, variant=_variant(impl, config), config=config,
                          interpret=interpret)
  return out.reshape(tuple(bshape) + tuple(lfree) + tuple(rfree))


_mx_dot_general_jit = jax.jit(_mx_dot_general_body, static_argnums=(2, 3, 4, 5, 6))


WO_LAYOUTS = ("auto", "wo_mgpu", "mx_matmul")


def prepare_weight_only(w: QArray, *, kernel: str = "auto"):
  """Re-lays out an (N, K) weight QArray once (eagerly) for ``mx_weight_only_matmul``.

  kernel="wo_mgpu": ``kernels.wo_mgpu.MgpuWeight``, the Mosaic GPU kernel that decodes W in registers (MXFP4,
  NVFP4, MXFP8, MXFP6, MXINT8 in their spec blocks along K; beyond ``wo_mgpu.KERNEL_ROWS`` rows the call decodes W
  to bf16 once and runs XLA's bf16 GEMM). kernel="mx_matmul": ``kernels.mx_matmul.PreparedWeight`` (FP4/FP6 in
  that kernel's byte order, float32 transposed scales). "auto": wo_mgpu on Hopper when it takes the weight,
  mx_matmul otherwise."""
  _check_impl(kernel, WO_LAYOUTS, "kernel")
  w = _check_q(w, "w")
  from kernels import wo_mgpu
  takes = w.fmt in wo_mgpu.FORMATS and w.ndim == 2 and w.axis == 1 and w.block_size == wo_mgpu.FORMATS[w.fmt]
  if kernel == "wo_mgpu" or (kernel == "auto" and takes and _glue().on_hopper()):
    return wo_mgpu.prepare_weight_mgpu(w)
  return _glue().prepare_weight(w)


def mx_weight_only_matmul(x: jax.Array, w: Any, *, out_dtype: Any = jnp.bfloat16, impl: str = "auto",
                          config: Any = None, interpret: bool = False) -> jax.Array:
  """(..., N) = x (..., K) @ W^T with W a quantized (N, K) weight (QArray or ``prepare_weight_only(w)``).

  The kernel multiplies in bf16 (x is rounded to bf16; dequantized W is exact in bf16 for MX formats) with
  FP32 accumulation; impl="xla" multiplies x (as given) by W dequantized to float32 at HIGHEST precision.
  impl="auto" on Hopper: the Triton kernel for up to WO_TRITON_MAX_M rows, the Mosaic kernel above.
  impl="triton": the Pallas Triton kernel (kernels/wo_triton.py), also picked for a
  ``kernels.wo_triton.prepare_weight_triton(w)`` weight under impl="auto".
  A ``kernels.wo_mgpu.prepare_weight_mgpu(w)`` weight (MXFP4, NVFP4, MXFP8, MXFP6 or MXINT8; what
  ``prepare_weight_only(w)`` gives on Hopper) runs the Mosaic GPU kernel (kernels/wo_mgpu.py: TMA producer
  warpgroup, decode into the wgmma registers, no split-K) under impl="auto" or "mgpu", and beyond
  ``wo_mgpu.KERNEL_ROWS`` rows W decoded to bf16 once + XLA's bf16 GEMM; ``config`` a
  ``kernels.wo_mgpu.MgpuWOConfig``.
  """
  _check_impl(impl, WO_IMPLS)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be floating point; got {x.dtype}")
  triton_w = type(w).__module__ == "kernels.wo_triton"
  if type(w).__module__ == "kernels.wo_mgpu":
    if impl not in ("auto", "mgpu"):
      raise ValueError(f"impl={impl!r}: w is a prepare_weight_mgpu(...) weight; use impl='auto' or 'mgpu'")
    from kernels import wo_mgpu
    return wo_mgpu.wo_matmul_mgpu(x, w, out_dtype=out_dtype, config=config, interpret=interpret)
  if impl == "triton" or triton_w:
    # Pallas Triton weight-only kernel (kernels/wo_triton.py): w a QArray or a prepare_weight_triton(w) result;
    # ``config`` a kernels.wo_triton.WOConfig; interpret=True runs the Pallas interpreter (CPU).
    if impl not in ("triton", "auto"):
      raise ValueError(f"impl={impl!r}: w is a prepare_weight_triton(...) weight; use impl='triton'")
    from kernels import wo_triton
    return wo_triton.wo_matmul(x, w, out_dtype=out_dtype, config=config, interpret=interpret)
  _check_wo_weight(w)
  n, k = w.shape
  if x.shape[-1] != k:
    raise ValueError(f"x's last dim {x.shape[-1]} does not match the weight's K={k} (w is (N, K))")
  return _wo_jit(x, w, out_dtype, impl, config, interpret)


def _check_wo_weight(w: Any, name: str = "w") -> None:
  """Raises unless ``w`` is a weight-only operand: an (N, K) QArray quantized along K, or a prepared weight
  (``prepare_weight_only`` / ``prepare_weight_mgpu`` / ``prepare_weight_triton``)."""
  if isinstance(w, QArray):
    if w.ndim != 2 or (w.block_size is not None and w.axis != 1):
      raise ValueError(f"{name} must be an (N, K) QArray quantized along axis 1 (K); got {w!r}")
  elif type(w).__module__ not in ("kernels.wo_mgpu", "kernels.wo_triton") and not hasattr(w, "elem"):
    raise TypeError(f"{name} must be a QArray or a prepare_weight_only(...) result; got {type(w).__name__}")


def _wo_body(x: jax.Array, w: Any, out_dtype, impl: str, config, interpret) -> jax.Array:
  prepared = not isinstance(w, QArray)
  n, k = w.shape
  lead = x.shape[:-1]
  if impl == "auto" and not prepared and _tpu_takes(w):
    return _tpu().weight_only_matmul(x, w, out_dtype=out_dtype)
  x2 = x.reshape((-1, k))
  if impl == "auto" and not prepared and x2.shape[0] <= WO_TRITON_MAX_M and _glue().on_hopper():
    from kernels import wo_triton
    spec = wo_triton.SPECS.get(w.fmt)
    if spec is not None and w.block_size == spec.block:  # (N, K) along axis 1: checked above
      return wo_triton.wo_matmul(x, w, out_dtype=out_dtype)
  if impl == "xla" or (impl == "auto" and not prepared and _glue().kernel_supports(w) is not None):
    if prepared:
      raise ValueError("impl='xla' needs the QArray weight, not a prepared one")
    wd = dequantize(w, jnp.float32)
    out = lax.dot_general(x2.astype(jnp.float32), wd, (((1,), (1,)), ((), ())),
                          precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    return out.astype(out_dtype).reshape(lead + (n,))
  g = _glue()
  if impl == "auto" and not g.on_hopper() and not interpret:
    if prepared:
      raise ValueError("a prepared weight needs the Hopper kernel (impl='mgpu' or interpret=True)")
    return _wo_body(x, w, out_dtype, "xla", config, interpret)
  pw = w if prepared else g.prepare_weight(w)
  out = g.weight_only_matmul(x2, pw, out_dtype=out_dtype, config=config, interpret=interpret)
  return out.reshape(lead + (n,))


_wo_jit = jax.jit(_wo_body, static_argnums=(2, 3, 4, 5))
