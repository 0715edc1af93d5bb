"""Choosing between the XLA path and the Pallas kernels, and backend-specific pieces of the kernels.

``impl``: "xla" (plain jnp, any backend), "pallas" (the kernels: compiled through Pallas' Triton lowering on
an NVIDIA/AMD GPU, run with ``interpret=True`` everywhere else, e.g. the CPU tests), "auto" (the kernels on a
GPU, XLA elsewhere). ``MX_JAX_PALLAS_INTERPRET=1`` forces interpret mode even on a GPU (debugging).
"""
from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "pallas")


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def resolve_impl(impl: str) -> str:
  """'auto' | 'xla' | 'pallas' -> 'xla' or 'pallas'."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
  if impl == "auto":
    return "pallas" if on_gpu() else "xla"
  return impl


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


def interpret() -> bool:
  """True when pallas_call must run in interpret mode (no GPU, or forced by the environment)."""
  if _FORCE_MODE[0] is not None:
    return _FORCE_MODE[0] == "interpret"
  return (not on_gpu()) or os.environ.get("MX_JAX_PALLAS_INTERPRET", "0") not in ("", "0")


def compiled_triton() -> bool:
  return not interpret()


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


def load(ref, mask=None):
  """Block load with zeros where ``mask`` is False. Compiled: a masked load (no out-of-bounds access).
  Interpreted: a plain load (out-of-bounds reads are NaN-padded there) and a select on the *bits*: XLA:CPU
  computes bf16 selects in float32 with denormals flushed, which would zero bf16 subnormals."""
  if mask is None:
    return ref[...]
  mask = jnp.broadcast_to(mask, ref.shape)
  if interpret():
    v = ref[...]
    if jnp.issubdtype(v.dtype, jnp.floating):
      ut = jnp.dtype(f"uint{v.dtype.itemsize * 8}")
      bits = jax.lax.bitcast_convert_type(v, ut)
      return jax.lax.bitcast_convert_type(jnp.where(mask, bits, jnp.zeros_like(bits)), v.dtype)
    return jnp.where(mask, v, jnp.zeros_like(v))
  from jax.experimental.pallas import triton as pltriton
  return pltriton.load(ref, mask=mask, other=0)


def store(ref, val, mask=None):
  if mask is None:
    ref[...] = val
    return
  from jax.experimental.pallas import triton as pltriton
  pltriton.store(ref, val, mask=jnp.broadcast_to(mask, ref.shape))


def lower_for_cuda(fn, *avals, device_kind: str = "NVIDIA H100") -> str:
  """Lowers ``fn`` for CUDA with the kernels compiled by Triton, on any host (checks that every primitive
  in the kernels has a Triton lowering rule); returns the StableHLO text. Needs no GPU."""
  from jax.sharding import AbstractDevice, AbstractMesh
  ad = AbstractDevice(device_kind=device_kind, num_cores=132, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=ad)
  with force_mode("triton"), jax.sharding.use_abstract_mesh(mesh):
    exp = jax.export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*avals)
  return exp.mlir_module()
