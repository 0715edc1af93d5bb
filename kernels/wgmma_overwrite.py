"""A fresh WGMMA accumulator without zeroing its registers: PTX ``wgmma`` with scale-d = 0 (D = A·B).

The FP8 MX GEMM (``mx_matmul_mgpu``, design (a)) starts every 32-deep K block in a fresh FP32 partial, so
Pallas zero-fills the partial's registers each time (a ``plgpu.ACC`` allocation is ``optimization_barrier(0)``)
and the ``wgmma`` then computes ``D = A·B + D``. PTX has the exact form for this, ``D = A·B`` (its scale-d
predicate false), which Mosaic GPU never emits. Those zero fills are one extra instruction per accumulator
element per block beside the promotion's FMUL + FFMA: a third of the kernel's CUDA-core issue slots.

While a kernel whose name starts with one of ``PREFIXES`` is lowered, this module's lowering rule for
``mosaic_gpu.wgmma`` recognises an accumulator that is ``optimization_barrier(arith.constant 0)`` and emits
its first instruction per 64-row group with scale-d = 0 and undefined accumulator inputs (so no register is
filled). Results are the same bits (a product sum plus +0.0 is that sum, except that an exact -0.0 sum stays
-0.0, which the promotion ``acc + p * s`` then adds to a +0.0-started accumulator: +0.0 either way).
Every other WGMMA, and every other kernel, lowers exactly as before. It wraps jax 0.11's Mosaic GPU lowering
(``dialect_lowering`` and ``wgmma.wgmma_m64``); ``install()`` checks that those hooks exist and leaves
everything untouched (returns False) where they do not.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import threading

PREFIXES = ("mx_gemm_",)

_state = threading.local()
_installed = False
stats = {"overwritten": 0}  # WGMMA instructions emitted with scale-d = 0 (read by the tests)


@contextlib.contextmanager
def _flag(name, value):
  old = getattr(_state, name, None)
  setattr(_state, name, value)
  try:
    yield
  finally:
    setattr(_state, name, old)


def _defining_op(v):
  """(operation, result index) that defines MLIR value ``v``, or (None, None) for a block argument."""
  from jaxlib.mlir import ir
  try:
    res = ir.OpResult(v)
  except (ValueError, TypeError):
    return None, None
  owner = res.owner
  return getattr(owner, "operation", owner), res.result_number


def _is_zero_constant(v) -> bool:
  from jaxlib.mlir import ir
  op, _ = _defining_op(v)
  if op is None or op.name != "arith.constant":
    return False
  try:
    dense = ir.DenseFPElementsAttr(op.attributes["value"])
  except (ValueError, TypeError):
    return False
  return dense.is_splat and float(dense.get_splat_value().value) == 0.0


def fresh_zero_accumulator(acc) -> bool:
  """True when the WGMMA accumulator value is ``optimization_barrier(arith.constant 0.0)``."""
  op, i = _defining_op(acc)
  if op is None or op.name != "mosaic_gpu.optimization_barrier":
    return False
  return _is_zero_constant(op.operands[i])


MARK = "mx_jax.fresh_accumulator"


def _mark_fresh(op) -> None:
  """Tags (a discardable unit attribute) every mosaic_gpu.wgmma under ``op`` whose accumulator is fresh zeros."""
  from jaxlib.mlir import ir
  for region in op.regions:
    for block in region.blocks:
      for child in block.operations:
        child = child.operation
        if child.name == "mosaic_gpu.wgmma" and fresh_zero_accumulator(child.operands[0]):
          child.attributes[MARK] = ir.UnitAttr.get()
        _mark_fresh(child)


class _FirstAsmOverwrites:
  """Stands in for the ``llvm`` dialect module inside ``wgmma_m64``: its first ``inline_asm`` (the group's first
  wgmma instruction) gets scale-d = 0 and undefined accumulator inputs; everything else is delegated."""

  def __init__(self, llvm):
    self._llvm = llvm
    self._done = False

  def __getattr__(self, name):
    return getattr(self._llvm, name)

  def inline_asm(self, res, operands, asm, constraints, *args, **kwargs):
    if not self._done:
      self._done = True
      m = re.search(r"setp\.ne\.b32 p, \$(\d+), 0;", asm)
      n_out = sum(c.startswith("=") for c in constraints.split(","))
      if m is None or "wgmma.mma_async" not in asm:
        raise RuntimeError("wgmma_overwrite: unexpected wgmma inline asm; the Mosaic GPU lowering changed")
      from jaxlib.mlir import ir
      operands = list(operands)
      i32 = ir.IntegerType.get_signless(32)
      operands[int(m.group(1)) - n_out] = self._llvm.ConstantOp(i32, ir.IntegerAttr.get(i32, 0)).result
      operands[:n_out] = [self._llvm.mlir_undef(v.type) for v in operands[:n_out]]
      stats["overwritten"] += 1
    return self._llvm.inline_asm(res, operands, asm, constraints, *args, **kwargs)


def install() -> bool:
  """Installs the hooks once (idempotent). False when this jax's Mosaic GPU lacks them (then nothing changes)."""
  global _installed
  if _installed:
    return True
  try:  # import_module: the package re-exports a *function* named wgmma over the module's name
    dl = importlib.import_module("jax.experimental.mosaic.gpu.dialect_lowering")
    wg = importlib.import_module("jax.experimental.mosaic.gpu.wgmma")
    rules = dl._lowerings
    rule = rules["mosaic_gpu.wgmma"]
    lower_dialect, wgmma_fn, m64 = dl.lower_mgpu_dialect, wg.wgmma, wg.wgmma_m64
  except (ImportError, AttributeError, KeyError):
    return False

  def lower_mgpu_dialect(module, *args, **kwargs):
    names = [str(op.attributes["sym_name"]).strip('"') for op in module.body if "sym_name" in op.attributes]
    if any(n.startswith(PREFIXES) for n in names):
      # Marked before lowering: by the time a wgmma op is lowered, its accumulator's barrier already is.
      for op in module.body:
        _mark_fresh(op.operation)
    return lower_dialect(module, *args, **kwargs)

  def wgmma_rule(ctx, op):
    if MARK in op.operation.attributes:
      with _flag("zero_acc", True):
        return rule(ctx, op)
    return rule(ctx, op)

  def wgmma(acc, *args, **kwargs):
    if getattr(_state, "zero_acc", False):
      with _flag("zero_regs", list(acc._value.registers.flat)):
        return wgmma_fn(acc, *args, **kwargs)
    return wgmma_fn(acc, *args, **kwargs)

  def wgmma_m64(acc, *args, **kwargs):
    zero = getattr(_state, "zero_regs", None)
    if zero is None or not any(acc.flat[0] == z for z in zero):
      return m64(acc, *args, **kwargs)
    llvm = wg.llvm
    wg.llvm = _FirstAsmOverwrites(llvm)
    try:
      return m64(acc, *args, **kwargs)
    finally:
      wg.llvm = llvm

  rules["mosaic_gpu.wgmma"] = wgmma_rule
  dl.lower_mgpu_dialect = lower_mgpu_dialect
  wg.wgmma = wgmma
  wg.wgmma_m64 = wgmma_m64
  _installed = True
  return True
