"""Flax port of sentence-transformers/all-MiniLM-L6-v2 (BERT encoder + mean pooling + L2 normalisation).

Architecture (config.json of the package): 6 post-LN BERT layers, hidden 384, 12 heads of 32, FFN 1536 with exact
(erf) GELU, LayerNorm eps 1e-12, vocab 30522 (uncased WordPiece), 512 learned positions, 2 token types.
Sentence embedding = mean of the last hidden states over non-padding tokens, divided by its L2 norm.

Every matmul goes through an injectable ``dot_general`` (lax.dot_general signature): the 6 Dense layers per block via
``nn.Dense(dot_general=...)``, attention q.k^T and p.v via ``attn_dot_general`` (defaults to ``dot_general``).
``residual_q`` (optional callable x -> x) is applied to the hidden state (the residual stream) after every block,
and also after the attention sub-block when ``residual_q_sublayers`` is True.

    model, params, tok = load_minilm()                  # data/minilm (float32) or data/minilm_fp16 (compact)
    emb = embed_texts(model, params, tok, ["To be, or not to be"])     # [1, 384], unit norm
    model_q = model.clone(dot_general=mx_jax.dot_general(mx_jax.recipe("mxfp8")))
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from experiments.fetch_data import DATA_DIR


@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12


def attention(q, k, v, mask, dg):
    """Scaled dot-product attention. q,k,v [B, L, H, D]; mask [B, Lk] (1 = keep) or None; dg = dot_general."""
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [B, H, L, D]
    s = dg(q, k, (((3,), (3,)), ((0, 1), (0, 1)))) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = jnp.where(mask[:, None, None, :].astype(bool), s, jnp.finfo(s.dtype).min)
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    o = dg(p, v, (((3,), (2,)), ((0, 1), (0, 1))))  # [B, H, Lq, D]
    return jnp.swapaxes(o, 1, 2)


class BertLayer(nn.Module):
    cfg: MiniLMConfig
    dot_general: Callable
    attn_dot_general: Callable
    residual_q: Callable | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = self.cfg
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, dot_general=self.dot_general, name=name)
        ln = lambda name: nn.LayerNorm(epsilon=c.eps, use_fast_variance=False, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(*t.shape[:-1], c.heads, c.hidden // c.heads)
        q, k, v = (split(dense(c.hidden, n)(x)) for n in ("query", "key", "value"))
        a = attention(q, k, v, mask, self.attn_dot_general).reshape(x.shape)
        x = ln("attn_ln")(dense(c.hidden, "attn_out")(a) + x)
        if self.residual_q is not None:
            x = self.residual_q(x)
        h = nn.gelu(dense(c.intermediate, "inter")(x), approximate=False)
        return ln("out_ln")(dense(c.hidden, "out")(h) + x)


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2. ``__call__(input_ids, attention_mask)`` -> unit-norm sentence embeddings [B, 384]
    (``return_hidden=True`` also returns the last hidden states [B, L, 384])."""

    cfg: MiniLMConfig = MiniLMConfig()
    dot_general: Callable = jax.lax.dot_general
    attn_dot_general: Callable | None = None
    residual_q: Callable | None = None
    residual_q_sublayers: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, return_hidden: bool = False):
        c = self.cfg
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        pos = jnp.arange(input_ids.shape[1])[None, :]
        x = (nn.Embed(c.vocab_size, c.hidden, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_positions, c.hidden, name="position_embeddings")(pos)
             + nn.Embed(c.type_vocab, c.hidden, name="token_type_embeddings")(token_type_ids))
        x = nn.LayerNorm(epsilon=c.eps, use_fast_variance=False, name="embeddings_ln")(x).astype(self.dtype)
        adg = self.attn_dot_general or self.dot_general
        for i in range(c.layers):
            x = BertLayer(c, self.dot_general, adg, self.residual_q if self.residual_q_sublayers else None,
                          self.dtype, name=f"layer_{i}")(x, attention_mask)
            if self.residual_q is not None:
                x = self.residual_q(x)
        emb = mean_pool_normalize(x.astype(jnp.float32), attention_mask)
        return (emb, x) if return_hidden else emb


def mean_pool_normalize(hidden, mask):
    """sentence-transformers Pooling(mean) + Normalize: masked mean over tokens, then x / max(||x||, 1e-12)."""
    m = mask[..., None].astype(hidden.dtype)
    mean = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def params_from_state_dict(sd: dict[str, np.ndarray], cfg: MiniLMConfig = MiniLMConfig()) -> dict:
    """Map HF BertModel tensor names (torch Linear weight [out, in]) to this module's Flax params (float32)."""
    f = lambda k: jnp.asarray(sd[k], dtype=jnp.float32)
    dense = lambda p: {"kernel": f(p + ".weight").T, "bias": f(p + ".bias")}
    ln = lambda p: {"scale": f(p + ".weight"), "bias": f(p + ".bias")}
    e = "embeddings."
    params = {"word_embeddings": {"embedding": f(e + "word_embeddings.weight")},
              "position_embeddings": {"embedding": f(e + "position_embeddings.weight")},
              "token_type_embeddings": {"embedding": f(e + "token_type_embeddings.weight")},
              "embeddings_ln": ln(e + "LayerNorm")}
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        params[f"layer_{i}"] = {
            "query": dense(p + "attention.self.query"), "key": dense(p + "attention.self.key"),
            "value": dense(p + "attention.self.value"), "attn_out": dense(p + "attention.output.dense"),
            "attn_ln": ln(p + "attention.output.LayerNorm"), "inter": dense(p + "intermediate.dense"),
            "out": dense(p + "output.dense"), "out_ln": ln(p + "output.LayerNorm")}
    return {"params": params}


def load_state_dict(model_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Tensors of model.safetensors as float32, word embeddings expanded to the full vocab for the compact
    (minilm_fp16) copy; returns (state_dict, kept_row_ids or None)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(model_dir) / "model.safetensors"
    sd = {k: v.astype(np.float32) if v.dtype != np.int32 else v for k, v in load_file(str(path)).items()}
    rows = sd.pop("embeddings.word_embeddings.row_ids", None)
    if rows is not None:
        with safe_open(str(path), "np") as fh:
            vocab = int(fh.metadata()["vocab_size"])
        full = np.zeros((vocab, sd["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        full[rows] = sd["embeddings.word_embeddings.weight"]
        sd["embeddings.word_embeddings.weight"] = full
    return sd, rows


def default_dir() -> Path:
    """data/minilm (original float32) if present, else data/minilm_fp16 (carried compact copy)."""
    for name in ("minilm", "minilm_fp16"):
        if (DATA_DIR / name / "model.safetensors").is_file():
            return DATA_DIR / name
    raise FileNotFoundError(f"no MiniLM weights under {DATA_DIR}; run `python -m experiments.fetch_data`")


class MiniLMTokenizer:
    """BERT uncased WordPiece from tokenizer.json: [CLS] text [SEP], truncated to 256 tokens (sentence-transformers
    max_seq_length), padded to the longest in the batch. ``known_ids`` (compact weights) rejects pruned pieces."""

    def __init__(self, path: Path, max_length: int = 256, known_ids: np.ndarray | None = None):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.known = None if known_ids is None else np.isin(np.arange(self.tok.get_vocab_size()), known_ids)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], np.int32)
        mask = np.array([e.attention_mask for e in enc], np.int32)
        if self.known is not None and not self.known[ids].all():
            raise ValueError("text uses WordPiece ids outside the compact vocabulary; use data/minilm (full weights)")
        return ids, mask


def load_minilm(model_dir: Path | str | None = None, **module_kwargs) -> tuple[MiniLM, dict, MiniLMTokenizer]:
    """(module, params, tokenizer); ``module_kwargs`` go to MiniLM (dot_general, residual_q, ...)."""
    model_dir = Path(model_dir) if model_dir else default_dir()
    c = json.loads((model_dir / "config.json").read_text())
    cfg = MiniLMConfig(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                       c["intermediate_size"], c["max_position_embeddings"], c["type_vocab_size"], c["layer_norm_eps"])
    assert c["hidden_act"] == "gelu" and c["position_embedding_type"] == "absolute"
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    sd, rows = load_state_dict(model_dir)
    return MiniLM(cfg, **module_kwargs), params_from_state_dict(sd, cfg), MiniLMTokenizer(
        model_dir / "tokenizer.json", max_len, rows)


def embed_texts(model: MiniLM, params: dict, tok: MiniLMTokenizer, texts: list[str]) -> np.ndarray:
    """Unit-norm sentence embeddings [len(texts), 384] as float32 NumPy."""
    ids, mask = tok(texts)
    return np.asarray(jax.jit(model.apply)(params, ids, mask))
