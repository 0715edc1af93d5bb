"""Flax integration. Linen layers are exported here; NNX ones live in ``mx_jax.flax.nnx``."""
from mx_jax.flax.linen import (OVERWRITE_WITH_GRADIENT, MxDense, MxDenseGeneral, MxDotGeneral, MxEinsum,
                               MxEinsumOp, QuantizedModel, mx_dense, quantize_model)

from mx_jax.flax.weight_only import WeightOnlyLinear, WeightOnlyModel, weight_only_model

__all__ = ["OVERWRITE_WITH_GRADIENT", "MxDense", "MxDenseGeneral", "MxDotGeneral", "MxEinsum", "MxEinsumOp",
           "QuantizedModel", "mx_dense", "quantize_model", "WeightOnlyLinear", "WeightOnlyModel", "weight_only_model"]

try:  # norms are added by the norm-kernels work; optional until present
  from mx_jax.norms import MXNorm, RMSNorm  # noqa: F401
  __all__ += ["MXNorm", "RMSNorm"]
except ImportError:  # pragma: no cover
  pass
