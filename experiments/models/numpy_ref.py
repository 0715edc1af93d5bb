"""Independent float64 NumPy forward passes for MiniLM-L6 and glassllm, written from the raw weight files' tensor
names (HF BertModel safetensors; glassllm .npz), sharing no code with the Flax ports. Used by
tests/test_pretrained_ports.py to prove the ports exact.
"""
from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def minilm_hidden(sd: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, n_layers: int = 6, n_heads: int = 12,
                  eps: float = 1e-12) -> np.ndarray:
    """Last hidden states [B, L, 384] of the BERT encoder (torch Linear: y = x W^T + b), token type 0."""
    W = lambda k: np.asarray(sd[k], np.float64)
    lin = lambda x, p: x @ W(p + ".weight").T + W(p + ".bias")
    B, L = ids.shape
    x = W("embeddings.word_embeddings.weight")[ids] + W("embeddings.position_embeddings.weight")[:L][None] \
        + W("embeddings.token_type_embeddings.weight")[0]
    x = _layer_norm(x, W("embeddings.LayerNorm.weight"), W("embeddings.LayerNorm.bias"), eps)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        heads = lambda t: t.reshape(B, L, n_heads, -1).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        a = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, L, -1)
        x = _layer_norm(lin(a, p + "attention.output.dense") + x, W(p + "attention.output.LayerNorm.weight"),
                        W(p + "attention.output.LayerNorm.bias"), eps)
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(np.float64))
        x = _layer_norm(lin(h, p + "output.dense") + x, W(p + "output.LayerNorm.weight"), W(p + "output.LayerNorm.bias"), eps)
    return x


def minilm_embed(sd, ids, mask) -> np.ndarray:
    """Sentence embeddings: masked mean of the last hidden states, L2-normalised."""
    h = minilm_hidden(sd, ids, mask)
    m = mask[..., None].astype(np.float64)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def glassllm_logits(w: dict[str, np.ndarray], ids: np.ndarray, n_layers: int = 4, n_heads: int = 4,
                    n_kv_heads: int = 2, eps: float = 1e-6, rope_base: float = 10000.0) -> np.ndarray:
    """Logits [B, L, V] of glassllm: pre-RMSNorm blocks, GQA + interleaved RoPE, SwiGLU, tied output."""
    W = lambda k: np.asarray(w[k], np.float64)
    rms = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g
    E = W("E")
    B, L = ids.shape
    d = E.shape[1]
    dk = d // n_heads
    ang = np.arange(L)[:, None] * rope_base ** (-np.arange(0, dk, 2) / dk)[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):  # t [B, H, L, dk]: pairs (t[2i], t[2i+1]) rotated by angle ang[pos, i]
        out = np.empty_like(t)
        out[..., 0::2] = t[..., 0::2] * cos - t[..., 1::2] * sin
        out[..., 1::2] = t[..., 0::2] * sin + t[..., 1::2] * cos
        return out

    causal = np.triu(np.ones((L, L), bool), 1)
    x = E[ids]
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = rms(x, W(p + "norm1.gamma"))
        q = rope((h @ W(p + "attn.W_Q")).reshape(B, L, n_heads, dk).transpose(0, 2, 1, 3))
        k = rope((h @ W(p + "attn.W_K")).reshape(B, L, n_kv_heads, dk).transpose(0, 2, 1, 3))
        v = (h @ W(p + "attn.W_V")).reshape(B, L, n_kv_heads, dk).transpose(0, 2, 1, 3)
        kv_of = np.arange(n_heads) // (n_heads // n_kv_heads)  # query head -> its shared KV head
        s = q @ k[:, kv_of].transpose(0, 1, 3, 2) / math.sqrt(dk)
        a = _softmax(np.where(causal, -np.inf, s)) @ v[:, kv_of]
        x = x + a.transpose(0, 2, 1, 3).reshape(B, L, d) @ W(p + "attn.W_O")
        h = rms(x, W(p + "norm2.gamma"))
        g = h @ W(p + "ffn.W1")
        x = x + (g / (1.0 + np.exp(-g)) * (h @ W(p + "ffn.W3"))) @ W(p + "ffn.W2")
    return rms(x, W("norm_f.gamma")) @ E.T
