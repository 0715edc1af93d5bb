"""Llama-style GPT on Shakespeare under mx_jax quantization recipes: model.py, train.py, recipes_run.py, plots.py."""
