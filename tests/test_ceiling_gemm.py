"""benchmarks/ceiling_gemm.py: its kernels compute the sum its float64 model says (interpret mode), and it rejects
bad arguments. The timing itself runs on the GPU (`bash benchmarks/gpu_session24.sh 1|2`, which runs the same
check there first)."""
import jax.numpy as jnp
import pytest

from benchmarks import ceiling_gemm as cg


@pytest.mark.slow  # ~10 s of Mosaic GPU interpretation; the GPU runs of gpu_session24.sh run check() too
def test_every_variant_matches_its_float64_model():
  assert cg.check(interpret=True, m=128, n=128, tk=128, k_iters=2)


def test_rejects_bad_arguments():
  a, b, sa, sb = cg.inputs(128, 128, 64)
  with pytest.raises(ValueError, match="variant"):
    cg.ceiling_gemm(a, b, sa, sb, variant="nope", k_iters=1)
  with pytest.raises(ValueError, match="M must divide"):
    cg.ceiling_gemm(a[:64], b, sa[:, :64], sb, variant="mma", k_iters=1)
  with pytest.raises(ValueError, match="TK"):
    cg.ceiling_gemm(a, b[:, :32], sa, sb, variant="mma", k_iters=1)
  assert cg.reference(a, b, sa, sb, 2, "mma").shape == (128, 128)
  assert jnp.dtype(a.dtype) == jnp.float8_e4m3fn
