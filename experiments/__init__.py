"""Experiments for mx_jax: data (Shakespeare), pretrained model ports (MiniLM-L6, glassllm) and studies."""
