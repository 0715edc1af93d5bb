"""Flax port of glassllm 0.1.0 (a tiny Llama-style causal LM shipped as float16 .npz weights) and its BPE tokenizer.

Architecture (glassllm/config.py, nn.py, model.py; __config__ in the .npz): vocab 1024, d_model 128, 4 pre-norm blocks,
RMSNorm (x / sqrt(mean(x^2) + 1e-6) * gamma), 4 query heads / 2 KV heads (GQA, query head h uses KV head h // 2),
head dim 32, RoPE (base 1e4) on *interleaved* pairs (2i, 2i+1), causal softmax attention, no biases, SwiGLU FFN
W2(silu(x W1) * (x W3)) with hidden int(8*128/3) = 341, final RMSNorm, output tied to the embedding (logits = h E^T),
max_len 128. Weights are stored as x @ W ([in, out]), exactly Flax's kernel layout. 852,608 parameters.

Every matmul takes the injectable ``dot_general``: the 7 Dense per block, the tied output projection, and (through
``attn_dot_general``, default ``dot_general``) q.k^T and p.v. ``residual_q`` (callable x -> x) is applied to the
residual stream after every block (and after the attention residual add when ``residual_q_sublayers``).

    model, params, tok = load_glassllm("en")
    logits = model.apply(params, tok.encode("Alice was beginning to")[None])   # [1, L, 1024] float32
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from experiments.fetch_data import DATA_DIR


@dataclass(frozen=True)
class GlassConfig:
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    max_len: int = 128
    rope_base: float = 10000.0
    eps: float = 1e-6

    @property
    def ffn_hidden(self) -> int:
        return int(8 * self.d_model / 3)  # 341: not a multiple of 32 (MX blocks are zero-padded)


def rope_tables(d_k: int, max_len: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of m * base^(-2i/d_k), shape [max_len, d_k/2], computed in float64 as upstream does."""
    theta = base ** (-2.0 * np.arange(d_k // 2) / d_k)
    ang = np.outer(np.arange(max_len), theta)
    return np.cos(ang), np.sin(ang)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]). x [B, L, H, D]; cos/sin [L, D/2]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    xe, xo = x[..., 0::2], x[..., 1::2]
    return jnp.stack([xe * cos - xo * sin, xe * sin + xo * cos], axis=-1).reshape(x.shape)


class RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        g = self.param("gamma", nn.initializers.ones, (x.shape[-1],))
        xf = x.astype(jnp.float32)
        return (xf / jnp.sqrt(jnp.mean(xf * xf, -1, keepdims=True) + self.eps) * g).astype(x.dtype)


class Block(nn.Module):
    cfg: GlassConfig
    dot_general: Callable
    attn_dot_general: Callable
    residual_q: Callable | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, (B, L, _) = self.cfg, x.shape
        d_k = c.d_model // c.n_heads
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, dot_general=self.dot_general, name=name)
        h = RMSNorm(c.eps, name="norm1")(x)
        q = dense(c.n_heads * d_k, "W_Q")(h).reshape(B, L, c.n_heads, d_k)
        k = dense(c.n_kv_heads * d_k, "W_K")(h).reshape(B, L, c.n_kv_heads, d_k)
        v = dense(c.n_kv_heads * d_k, "W_V")(h).reshape(B, L, c.n_kv_heads, d_k)
        cos, sin = (jnp.asarray(t[:L], jnp.float32) for t in rope_tables(d_k, c.max_len, c.rope_base))
        q, k = apply_rope(q, cos, sin).astype(self.dtype), apply_rope(k, cos, sin).astype(self.dtype)
        rep = c.n_heads // c.n_kv_heads
        q, k, v = jnp.swapaxes(q, 1, 2), jnp.repeat(jnp.swapaxes(k, 1, 2), rep, 1), jnp.repeat(jnp.swapaxes(v, 1, 2), rep, 1)
        s = self.attn_dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1)))) / math.sqrt(d_k)  # [B, H, L, L]
        s = jnp.where(jnp.tril(jnp.ones((L, L), bool)), s.astype(jnp.float32), -jnp.inf)
        p = jax.nn.softmax(s, axis=-1).astype(self.dtype)
        o = self.attn_dot_general(p, v, (((3,), (2,)), ((0, 1), (0, 1))))  # [B, H, L, d_k]
        x = x + dense(c.d_model, "W_O")(jnp.swapaxes(o, 1, 2).reshape(B, L, c.n_heads * d_k))
        if self.residual_q is not None:
            x = self.residual_q(x)
        h = RMSNorm(c.eps, name="norm2")(x)
        act = nn.silu(dense(c.ffn_hidden, "W1")(h)) * dense(c.ffn_hidden, "W3")(h)
        return x + dense(c.d_model, "W2")(act)


class GlassLM(nn.Module):
    """``__call__(ids [B, L] int, L <= 128)`` -> next-token logits [B, L, vocab] (float32)."""

    cfg: GlassConfig = GlassConfig()
    dot_general: Callable = jax.lax.dot_general
    attn_dot_general: Callable | None = None
    residual_q: Callable | None = None
    residual_q_sublayers: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids):
        c = self.cfg
        E = self.param("E", nn.initializers.normal(0.02), (c.vocab_size, c.d_model))
        x = E[ids].astype(self.dtype)
        for i in range(c.n_layers):
            x = Block(c, self.dot_general, self.attn_dot_general or self.dot_general,
                      self.residual_q if self.residual_q_sublayers else None, self.dtype, name=f"blocks_{i}")(x)
            if self.residual_q is not None:
                x = self.residual_q(x)
        h = RMSNorm(c.eps, name="norm_f")(x)
        return self.dot_general(h, E.astype(self.dtype), (((2,), (1,)), ((), ()))).astype(jnp.float32)


def params_from_npz(w: dict[str, np.ndarray], cfg: GlassConfig = GlassConfig()) -> dict:
    """glassllm names (E, blocks.i.attn.W_Q, blocks.i.ffn.W1, ..., *.gamma) -> Flax params, float32."""
    f = lambda k: jnp.asarray(w[k], jnp.float32)
    p = {"E": f("E"), "norm_f": {"gamma": f("norm_f.gamma")}}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        p[f"blocks_{i}"] = {"norm1": {"gamma": f(b + "norm1.gamma")}, "norm2": {"gamma": f(b + "norm2.gamma")},
                            **{n: {"kernel": f(b + "attn." + n)} for n in ("W_Q", "W_K", "W_V", "W_O")},
                            **{n: {"kernel": f(b + "ffn." + n)} for n in ("W1", "W3", "W2")}}
    return {"params": p}


def load_npz(lang: str = "en", data_dir=None) -> tuple[GlassConfig, dict[str, np.ndarray]]:
    path = Path(data_dir or DATA_DIR) / "glassllm" / f"{lang}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing; run `python -m experiments.fetch_data`")
    with np.load(path) as d:
        c = json.loads(str(d["__config__"]))
        w = {k: d[k] for k in d.files if k != "__config__"}
    c.pop("init_std", None)
    return GlassConfig(**c), w


SPACE, SPECIALS = "\u2581", ["<pad>", "<unk>", "<bos>", "<eos>"]
_CHUNK = re.compile(r"\n|\u2581*[^\u2581\n]+|\u2581+")


class GlassTokenizer:
    """glassllm's character BPE: NFC, ' ' -> '▁', chunks (newline | ▁*word | ▁+), lowest-rank merge first.
    Ids: 4 specials, then the alphabet, then one token per merge."""

    def __init__(self, alphabet: list[str], merges: list[list[str]]):
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.vocab = SPECIALS + list(alphabet) + [a + b for a, b in merges]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.unk_id, self._cache = 1, {}

    @classmethod
    def load(cls, path) -> GlassTokenizer:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["alphabet"], d["merges"])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _bpe(self, chunk: str) -> list[str]:
        if chunk not in self._cache:
            s = list(chunk)
            while len(s) > 1:
                best = min(((self.ranks[p], i) for i, p in enumerate(zip(s, s[1:])) if p in self.ranks), default=None)
                if best is None:
                    break
                pair, out, i = (s[best[1]], s[best[1] + 1]), [], 0
                while i < len(s):  # merge every non-overlapping occurrence, left to right
                    if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                        out.append(s[i] + s[i + 1])
                        i += 2
                    else:
                        out.append(s[i])
                        i += 1
                s = out
            self._cache[chunk] = s
        return self._cache[chunk]

    def encode(self, text: str) -> np.ndarray:
        chunks = _CHUNK.findall(unicodedata.normalize("NFC", text).replace(" ", SPACE))
        return np.array([self.ids.get(t, self.unk_id) for c in chunks for t in self._bpe(c)], np.int32)

    def decode(self, ids) -> str:
        toks = (self.vocab[i] for i in np.asarray(ids).tolist())
        return "".join("\u2047" if t == "<unk>" else "" if t in SPECIALS else t for t in toks).replace(SPACE, " ")


def load_glassllm(lang: str = "en", data_dir=None, **module_kwargs) -> tuple[GlassLM, dict, GlassTokenizer]:
    """(module, params, tokenizer) for the packaged English ("en", Lewis Carroll) or Portuguese ("pt") model."""
    cfg, w = load_npz(lang, data_dir)
    tok = GlassTokenizer.load(Path(data_dir or DATA_DIR) / "glassllm" / f"{lang}.tokenizer.json")
    assert tok.vocab_size == cfg.vocab_size
    return GlassLM(cfg, **module_kwargs), params_from_npz(w, cfg), tok
