"""On the device: XLA's float32 -> FP8 convert (the fast operand path's FP8 rounding) against the float64 spec
model and the exact integer path, over every bf16 pattern at many scales, ties ± 1 ulp and the specials.

    PYTHONPATH=. python -m benchmarks.check_fp8_convert
"""
import jax
import jax.numpy as jnp
import numpy as np

from mx_jax import _bits, mx_block
from mx_jax import formats as F
from tests import spec_reference as ref
from tests.test_fast_operand_path import _inputs


def main():
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  ok = True
  b = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
  b = b[np.isfinite(b)]
  for fmt in ("e4m3", "e5m2"):
    el = F.FORMATS["mxfp8_" + fmt].elem
    grid = ref.grid_values(fmt)
    mids = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
    ties = np.concatenate([mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf))])
    v = np.concatenate([np.ldexp(b, k).astype(np.float32) for k in range(-40, 30)] + [ties, -ties])
    v = v[(np.abs(v) >= 2.0 ** -126) | (v == 0) | ~np.isfinite(v)]
    got = np.asarray(jax.jit(lambda x: _bits.round_to_elem_rne_convert(x, el))(jnp.asarray(v)))
    exp = np.where(np.isnan(v), 0.0, ref.ref_elem_round(v.astype(np.float64), fmt)).astype(np.float32)
    bad = int(ref.mismatch_mask(got, exp).sum())
    ok &= bad == 0
    print(f"convert rounding {fmt}: {bad} of {v.size} differ from the spec model")
    x = _inputs()
    for mode in mx_block.SCALE_MODES:
      fast = np.asarray(jax.jit(lambda x: mx_block.mx_fake_quantize_fast(x, el, 1, 32, mode))(x))
      q, sb = jax.jit(lambda x: mx_block.mx_quantize_blocks(x, el, 1, 32, mode, "nearest_even", None))(x)
      exact = np.asarray(jax.jit(lambda q, sb: mx_block.mx_dequantize_blocks(q, sb, 1, 32))(q, sb))
      bad = int(ref.mismatch_mask(fast, exact).sum())
      ok &= bad == 0
      print(f"  mx fake-quantize (convert) vs exact path, {fmt} {mode}: {bad} of {exact.size} differ")
  print("fp8 convert check:", "ALL OK" if ok else "FAILURES")


if __name__ == "__main__":
  main()
