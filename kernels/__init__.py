"""Pallas kernels for mx_jax (issue 8): MX/NVFP4 quantize, MX cast-transpose (quantize along a non-last axis,
written with that axis last, optionally with the last-axis quantization too), RMSNorm/MXNorm fused with the MX
cast, RMSNorm backward. Each public function takes ``impl="auto" | "xla" | "pallas"``: "auto" runs the kernel on a GPU
(Pallas' Triton lowering) and the XLA path elsewhere; "pallas" off-GPU runs the kernel in interpret mode.
The kernels reproduce the XLA path bit for bit (tests/test_kernels_*.py, benchmarks/bench_quantize_norm.py).
"""
from kernels._dispatch import resolve_impl
from kernels.mx_cast_transpose import mx_cast_transpose
from kernels.mx_quantize import mx_quantize
from kernels.norm_quantize import norm_pallas, norm_quantize_pallas, rms_norm_bwd_pallas

__all__ = ["mx_cast_transpose", "mx_quantize", "resolve_impl", "norm_pallas", "norm_quantize_pallas", "rms_norm_bwd_pallas"]
