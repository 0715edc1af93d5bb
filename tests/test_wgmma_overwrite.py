"""kernels.wgmma_overwrite: fresh FP8 partials by PTX wgmma scale-d = 0 instead of zero-filled registers.

No GPU here: the FP8 GEMM is lowered for CUDA on the CPU (JAX's cross-platform lowering runs Mosaic GPU's
whole Python lowering), and the emitted wgmma inline assembly is read back: its scale-d immediate and where its
accumulator inputs come from. That the two forms give the same bits is checked on the H100
(``benchmarks/bench_matmul.py --sections fresh``, BENCHMARKS.md).
"""
import re

import jax
import jax.numpy as jnp
import pytest

from kernels import mx_matmul_mgpu as mg
from kernels import wgmma_overwrite as wo

CFG = mg.GemmConfig("fp8", 64, 128, 256, "M", 2, pair=True)


def _walk(op, out):
  for region in op.regions:
    for block in region.blocks:
      for child in block.operations:
        child = child.operation
        if child.name == "llvm.inline_asm" and "wgmma.mma_async" in str(child.attributes["asm_string"]):
          out.append(child)
        _walk(child, out)


def _lowered_wgmmas(cfg, monkeypatch, variant_dtype=jnp.float8_e4m3fn, k=512):
  """[(scale-d immediate, owner op name of the first accumulator input)] of every wgmma the kernel emits."""
  if not wo.install():
    pytest.skip("this jax's Mosaic GPU lacks the hooks wgmma_overwrite wraps")
  dl = __import__("jax.experimental.mosaic.gpu.dialect_lowering", fromlist=["x"])
  found = []
  inner = dl.lower_mgpu_dialect

  def spy(module, *args, **kwargs):
    r = inner(module, *args, **kwargs)
    for op in module.body:
      _walk(op.operation, found)
    return r

  monkeypatch.setattr(dl, "lower_mgpu_dialect", spy)
  m = n = 256
  a = jnp.zeros((m, k), variant_dtype)
  b = jnp.zeros((n, k), jnp.float8_e5m2)
  s = jnp.ones((k // 32, m), jnp.float32)
  jax.jit(lambda a, b, sa, sb: mg.gemm(a, b, sa, sb, config=cfg)).trace(a, b, s, s).lower(
      lowering_platforms=("cuda",))
  rows = []
  for op in found:
    asm = str(op.attributes["asm_string"])
    n_out = sum(c.startswith("=") for c in str(op.attributes["constraints"]).strip('"').split(","))
    idx = int(re.search(r"setp\.ne\.b32 p, \$(\d+), 0;", asm).group(1)) - n_out
    use_out = op.operands[idx].owner.attributes["value"]
    rows.append((int(str(use_out).split(":")[0]), op.operands[0].owner.name))
  return rows


def test_fp8_partials_are_overwritten_not_zero_filled(monkeypatch):
  rows = _lowered_wgmmas(CFG, monkeypatch)
  assert len(rows) == CFG.tile_k // 32  # one wgmma per 32-deep block of a pipeline stage
  assert all(r == (0, "llvm.mlir.undef") for r in rows), rows


def test_zero_fill_form_unchanged(monkeypatch):
  import dataclasses
  rows = _lowered_wgmmas(dataclasses.replace(CFG, overwrite=False), monkeypatch)
  assert rows and all(use == 1 and owner != "llvm.mlir.undef" for use, owner in rows), rows


def test_accumulating_wgmmas_untouched(monkeypatch):
  """The bf16 design accumulates all of K in one accumulator: none of its wgmmas may drop D."""
  rows = _lowered_wgmmas(mg.GemmConfig("bf16", 128, 128, 64, "N", 2), monkeypatch, k=256)
  assert rows and all(use == 1 for use, _ in rows), rows


def test_fresh_zero_accumulator_needs_a_zero_constant():
  from jax._src.interpreters import mlir
  from jaxlib.mlir import ir
  with mlir.make_ir_context(), ir.Location.unknown():
    module = ir.Module.parse("""
      func.func @f(%a: vector<4xf32>) -> (vector<4xf32>, vector<4xf32>, vector<4xf32>) {
        %z = arith.constant dense<0.0> : vector<4xf32>
        %o = arith.constant dense<1.0> : vector<4xf32>
        return %a, %z, %o : vector<4xf32>, vector<4xf32>, vector<4xf32>
      }""")
    func = module.body.operations[0]
    ret = func.regions[0].blocks[0].operations[2]
    arg, zero, one = ret.operands
    assert not wo._is_zero_constant(arg)   # a block argument
    assert wo._is_zero_constant(zero)
    assert not wo._is_zero_constant(one)
    assert not wo.fresh_zero_accumulator(zero)  # zeros, but not through an optimization barrier
