"""mx_jax: Microscaling (MX v1.0), NVFP4 and FP8 numerics for JAX.

Public API (implementation lives in modules users need not import):
  formats:    get_format, FORMATS, MX_FORMATS
  transforms: quantize, dequantize, fake_quantize, pack, unpack, QArray
  scaling:    DelayedScaling state for per-tensor FP8 (mx_jax.scaling)
"""
from mx_jax.formats import FORMATS, MX_FORMATS, ElemFormat, Format, get_format
from mx_jax.packing import pack, unpack
from mx_jax.qarray import QArray
from mx_jax.quantize import dequantize, fake_quantize, quantize

__all__ = [
    "FORMATS", "MX_FORMATS", "ElemFormat", "Format", "get_format", "QArray", "quantize", "dequantize",
    "fake_quantize", "pack", "unpack",
]
__version__ = "0.1.0"

from mx_jax.recipes import OperandSpec, Recipe, recipe, PRESETS as RECIPES
from mx_jax.dot import dot_general, init_state, quantized_dot_general
from mx_jax.einsum import einsum
from mx_jax import scaling


def quantize_model(model, recipe, include=None, exclude=None):
  """Quantizes an existing linen or nnx model's matmul layers (see mx_jax.flax.linen / .nnx)."""
  import flax.linen as nn
  if isinstance(model, nn.Module):
    from mx_jax.flax.linen import quantize_model as q
  else:
    from mx_jax.flax.nnx import quantize_model as q
  return q(model, recipe, include=include, exclude=exclude)

__all__ += ["OperandSpec", "Recipe", "recipe", "RECIPES", "dot_general", "init_state", "quantized_dot_general",
            "einsum", "scaling", "quantize_model"]

from mx_jax.matmul import mx_dot_general, mx_matmul, mx_weight_only_matmul, prepare_weight_only

__all__ += ["mx_matmul", "mx_dot_general", "mx_weight_only_matmul", "prepare_weight_only"]
