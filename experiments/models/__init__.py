"""Flax ports of small pretrained models (MiniLM-L6 sentence encoder, glassllm causal LM) with injectable
``dot_general`` for every matmul, plus independent float64 NumPy reference forward passes."""
