"""Choosing between the XLA path and the Pallas kernels, and backend-specific pieces of the kernels.

``impl``: "xla" (plain jnp, any backend), "pallas" (the kernels: compiled through Pallas' Triton lowering on
an NVIDIA/AMD GPU, run with ``interpret=True`` everywhere else, e.g. the CPU tests), "auto" (the kernels on a
GPU, XLA elsewhere). ``MX_JAX_PALLAS_INTERPRET=1`` forces interpret mode even on a GPU (debugging).

GPU backend of the quantize / norm kernels: "mosaic" (``kernels/mgpu_*.py``, Pallas' Mosaic GPU) or "triton"
(``kernels/mx_quantize.py`` / ``norm_quantize.py``); ``use_gpu_backend(...)`` > ``$MX_JAX_GPU_BACKEND`` >
``DEFAULT_GPU_BACKEND`` when compiled. Interpret mode (CPU) uses Triton's interpreter unless one is chosen
explicitly (the Mosaic GPU interpreter is slower; tests/test_kernels_mgpu.py selects it).
"""
from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp

from mx_jax._blocks import padded_len as round_up  # noqa: F401  (round x up to a multiple of m)

IMPLS = ("auto", "xla", "pallas")


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def on_tpu() -> bool:
  return jax.default_backend() == "tpu"


def resolve_impl(impl: str) -> str:
  """'auto' | 'xla' | 'pallas' (or an ``impl_key``) -> 'xla' or 'pallas'."""
  if isinstance(impl, str) and impl.startswith("pallas:"):
    return "pallas"
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
  if impl == "auto":
    return "pallas" if on_gpu() or on_tpu() else "xla"
  return impl


def impl_key(impl: str) -> str:
  """A hashable, fully resolved impl for jit static arguments: 'xla', 'pallas:interpret', 'pallas:triton'
  (kernels are traced differently in the two Pallas modes, so a cached trace must not cross them)."""
  if resolve_impl(impl) == "xla":
    return "xla"
  if gpu_backend() == "mosaic":
    return "pallas:mosaic:" + ("interpret" if interpret() else "compiled")
  if interpret():
    return "pallas:interpret"
  return f"pallas:triton:{TritonArith.pair}:{'fast' if TRITON_FAST_ONLY[0] else 'guarded'}"


_FORCE_MODE: list[str | None] = [None]


@contextlib.contextmanager
def force_mode(mode: str | None):
  """Build kernels as "triton" (compiled; e.g. to lower for CUDA on a CPU host) or "interpret"."""
  if mode not in (None, "triton", "interpret"):
    raise ValueError(f"mode must be None, 'triton' or 'interpret'; got {mode!r}")
  old = _FORCE_MODE[0]
  _FORCE_MODE[0] = mode
  try:
    yield
  finally:
    _FORCE_MODE[0] = old


GPU_BACKENDS = ("mosaic", "triton")
# Per kernel, the faster backend measured on the H100 (BENCHMARKS.md, "Pallas kernels I", session 2):
# Triton quantize 2.4-2.6 TB/s vs Mosaic 0.9; Triton RMSNorm+MXFP8 2.16 vs Mosaic 0.84; Mosaic plain RMSNorm
# 2.57 vs 2.46 and Mosaic RMSNorm backward 2.41 vs Triton 0.94 (all bit-exact vs XLA on the GPU).
DEFAULT_GPU_BACKEND = {"quantize": "triton", "norm_quantize": "triton", "norm": "mosaic", "norm_bwd": "mosaic"}
_FORCE_BACKEND: list[str | None] = [None]


@contextlib.contextmanager
def use_gpu_backend(backend: str | None):
  """Runs the quantize / norm kernels on ``backend`` ("mosaic" | "triton"; None: the default rule)."""
  if backend not in (None,) + GPU_BACKENDS:
    raise ValueError(f"backend must be one of {GPU_BACKENDS}; got {backend!r}")
  old = _FORCE_BACKEND[0]
  _FORCE_BACKEND[0] = backend
  try:
    yield
  finally:
    _FORCE_BACKEND[0] = old


def gpu_backend(kernel: str = "quantize") -> str:
  """'mosaic' or 'triton': the Pallas lowering ``kernel`` ("quantize" | "norm_quantize" | "norm" |
  "norm_bwd") uses: forced by ``use_gpu_backend``, else MX_JAX_GPU_BACKEND, else DEFAULT_GPU_BACKEND."""
  if _FORCE_BACKEND[0] is not None:
    return _FORCE_BACKEND[0]
  env = os.environ.get("MX_JAX_GPU_BACKEND", "").strip().lower()
  if env:
    if env not in GPU_BACKENDS:
      raise ValueError(f"MX_JAX_GPU_BACKEND must be one of {GPU_BACKENDS}; got {env!r}")
    return env
  return "triton" if interpret() else DEFAULT_GPU_BACKEND[kernel]


def interpret() -> bool:
  """True when pallas_call must run in interpret mode (no GPU, or forced by the environment)."""
  if _FORCE_MODE[0] is not None:
    return _FORCE_MODE[0] == "interpret"
  return (not on_gpu()) or os.environ.get("MX_JAX_PALLAS_INTERPRET", "0") not in ("", "0")


def compiled_triton() -> bool:
  return not interpret()


# Compiled (GPU) kernels take the fast element path for every tile: the GPU keeps FP32 subnormals, so the
# scaled multiply is exact for every block; interpret mode (XLA:CPU flushes them) guards it per tile.
TRITON_FAST_ONLY = [True]


def fast_only() -> bool:
  return compiled_triton() and TRITON_FAST_ONLY[0]


def compiler_params(num_warps: int | None = None, num_stages: int | None = None):
  if interpret():
    return None
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


class TritonArith:
  """IEEE-rounded f32 ops for compiled Triton kernels (inline PTX; see mx_jax.norms._Arith).

  Triton lowers ``/`` to ``div.full.f32`` and ``sqrt`` to an approximation, and lets ptxas fuse mul+add into
  FMA; XLA uses IEEE ``div.rn`` / ``sqrt.rn``. ``mul.rn`` / ``div.rn`` / ``sqrt.rn`` keep the kernels'
  arithmetic identical to the XLA path's.
  """

  barrier = False
  pair = "sum"  # tree pair sums as length-2 reductions (== a + b in Triton; see mx_jax.norms.pair_sum)

  @staticmethod
  def _asm(op: str, *args):
    from jax.experimental.pallas import triton as pltriton
    args = [jnp.asarray(a, jnp.float32) for a in args]
    shape = jnp.broadcast_shapes(*[a.shape for a in args])
    args = [jnp.broadcast_to(a, shape) for a in args]
    regs = ", ".join(f"${i}" for i in range(len(args) + 1))
    cons = ",".join(["=f"] + ["f"] * len(args))
    [out] = pltriton.elementwise_inline_asm(
        f"{op}.rn.f32 {regs};", args=args, constraints=cons, pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)])
    return out

  def mul(self, a, b):
    return self._asm("mul", a, b)

  def div(self, a, b):
    return self._asm("div", a, b)

  def sqrt(self, a):
    return self._asm("sqrt", a)


def kernel_arith():
  """The arithmetic a kernel body must use: inline PTX when compiled by Triton, plain jnp when interpreted."""
  if compiled_triton():
    return TritonArith()
  from mx_jax.norms import _Arith
  return _Arith(barrier=True)


def pad_to(x: jax.Array, rows: int, cols: int, value=0) -> jax.Array:
  """x (..., r, c) padded at the end with ``value`` to (..., rows, cols)."""
  pr, pc = rows - x.shape[-2], cols - x.shape[-1]
  if pr == 0 and pc == 0:
    return x
  pads = ((0, 0),) * (x.ndim - 2) + ((0, pr), (0, pc))
  return jnp.pad(x, pads, constant_values=jnp.asarray(value, x.dtype))


def uint_of(dtype):
  """The unsigned integer dtype of ``dtype``'s width."""
  return jnp.dtype(f"uint{jnp.dtype(dtype).itemsize * 8}")


def as_bits(x: jax.Array) -> jax.Array:
  """A float array's same-width unsigned bits (a free bitcast; exact on every backend)."""
  return jax.lax.bitcast_convert_type(x, uint_of(x.dtype))


def kernel_in(x: jax.Array) -> jax.Array:
  """What a wrapper passes to pallas_call for a float input: the array itself when compiled, its bits
  (same-width uint) when interpreted. XLA:CPU moves bf16 through float32 with denormals flushed in pads,
  selects and converts, and the interpreter pads inputs; integer bits travel unchanged."""
  if interpret() and jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.bitcast_convert_type(x, uint_of(x.dtype))
  return x


def kernel_out_dtype(dtype):
  """dtype a kernel stores for a float output of ``dtype`` (bits when interpreted, see ``kernel_in``)."""
  dtype = jnp.dtype(dtype)
  return uint_of(dtype) if interpret() and jnp.issubdtype(dtype, jnp.floating) else dtype


def kernel_out(y: jax.Array, dtype) -> jax.Array:
  """A wrapper's view of a float output written through ``store_float``."""
  dtype = jnp.dtype(dtype)
  return jax.lax.bitcast_convert_type(y, dtype) if y.dtype != dtype else y


def _bits_to_f32(bits: jax.Array, src_dtype) -> jax.Array:
  src_dtype = jnp.dtype(src_dtype)
  if src_dtype == jnp.bfloat16:
    return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32) << 16, jnp.float32)
  return jax.lax.bitcast_convert_type(bits, src_dtype).astype(jnp.float32)


def load(ref, mask=None, src_dtype=None):
  """Block load with zeros where ``mask`` is False; float inputs (``src_dtype``: their dtype) come back
  as float32. Compiled: a masked load (no out-of-bounds access). Interpreted: the ref holds the bits
  (``kernel_in``), selected on as integers and converted to float32 with integer ops."""
  if mask is not None:
    mask = jnp.broadcast_to(mask, ref.shape)
  if interpret():
    v = ref[...]
    if mask is not None:
      v = jnp.where(mask, v, jnp.zeros_like(v))
    return v if src_dtype is None else _bits_to_f32(v, src_dtype)
  if mask is None:
    v = ref[...]
  else:
    from jax.experimental.pallas import triton as pltriton
    v = pltriton.load(ref, mask=mask, other=0)
  return v if src_dtype is None else v.astype(jnp.float32)


def store_float(ref, y: jax.Array, dtype, mask=None):
  """Stores float32 ``y`` as ``dtype`` (as its bits when interpreted, see ``kernel_out_dtype``)."""
  y = y.astype(dtype)
  if interpret():
    y = jax.lax.bitcast_convert_type(y, uint_of(dtype))
  store(ref, y, mask)


def store(ref, val, mask=None):
  if mask is None:
    ref[...] = val
    return
  from jax.experimental.pallas import triton as pltriton
  pltriton.store(ref, val, mask=jnp.broadcast_to(mask, ref.shape))


def lower_for_cuda(fn, *avals, device_kind: str = "NVIDIA H100", backend: str = "triton") -> str:
  """Lowers ``fn`` for CUDA with the kernels compiled (by Triton, or Mosaic GPU: ``backend="mosaic"``) on
  any host (checks that every primitive in the kernels has a lowering rule); returns the StableHLO text."""
  from jax.sharding import AbstractDevice, AbstractMesh
  ad = AbstractDevice(device_kind=device_kind, num_cores=132, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=ad)
  with force_mode("triton"), use_gpu_backend(backend), jax.sharding.use_abstract_mesh(mesh):
    exp = jax.export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*avals)
  return exp.mlir_module()
