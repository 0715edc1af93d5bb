"""Llama-style decoder (RMSNorm | MXNorm, RoPE, SwiGLU, causal attention) whose every matmul is quantizable.

Precision: parameters are float32 (master weights); the forward pass runs in ``GPTConfig.dtype`` (bf16, or
fp32 for the fp32 recipe). Every Dense takes the recipe's ``dot_general`` (stateless recipes) or
``dot_general_cls`` (stateful ones: delayed scaling, telemetry), and so do the two attention matmuls q·kᵀ and
p·v, written as explicit ``dot_general`` calls (same thing as ``jnp.einsum(..., _dot_general=dg)``, without
einsum's inner jit, which a stateful Flax dot module must not be traced under). The token embedding is a
gather (never quantized); the LM head keeps high precision unless ``quantize_head``.

    quant = quant_for_recipe("mxfp8")                          # or "fp8_delayed", telemetry=True, ...
    model = GPT(GPTConfig(vocab_size=66, norm="mx", norm_fmt=quant.norm_fmt), quant)
    variables = model.init(key, tokens)                        # {"params", "_overwrite_with_gradient"?, ...}
    logits = model.apply(variables, tokens)                    # float32 [B, T, V]

Probes (``GPTConfig.probes``): each block sows amax of the tensors that feed its matmuls into the "probes"
collection and ``perturb``s them ("perturbations"), so a train step can log per-tensor activation and
activation-gradient ranges (Graphcore FP8-paper style scale plots) for any recipe.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

OWG = "_overwrite_with_gradient"  # Flax fp8 convention: the gradient of this collection IS its new value


# --------------------------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Quant:
    """How matmuls are computed: a plain ``dot_general`` callable or a Flax module factory, never both."""

    name: str = "bf16"
    dot_general: Callable | None = None
    dot_general_cls: Callable | None = None
    compute_dtype: Any = jnp.bfloat16
    norm_fmt: str | None = None  # MX format for MXNorm (from the recipe's activation format)
    source: str = "none"         # where the dot came from: "mx_jax" | "mx_jax.flax" | "local" | "none"
    recipe: Any = None

    @property
    def fn(self) -> Callable | None:
        """The plain dot_general (None when a module factory is used instead)."""
        if self.dot_general_cls is not None:
            return None
        return self.dot_general or default_dot()

    def make(self, name: str | None = None):
        """The dot_general to call inside a compact method (instantiates the module factory if any)."""
        if self.dot_general_cls is not None:
            return self.dot_general_cls(name=name)
        return self.fn


def _f32_accumulate_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """lax.dot_general reading its (bf16) operands in float32: the same math as a bf16 GEMM with FP32
    accumulation, and several times faster than XLA:CPU's bf16 dot."""
    out = jnp.result_type(lhs, rhs) if preferred_element_type is None else preferred_element_type
    return lax.dot_general(lhs.astype(jnp.float32), rhs.astype(jnp.float32), dimension_numbers, precision,
                           preferred_element_type=jnp.float32).astype(out)


def default_dot() -> Callable:
    """Unquantized matmul: lax.dot_general, except on CPU (see _f32_accumulate_dot)."""
    return _f32_accumulate_dot if jax.default_backend() == "cpu" else lax.dot_general


class _StatefulDot(nn.Module):
    """Stand-in for ``mx_jax.flax.MxDotGeneral``: recipe state in the '_overwrite_with_gradient' collection."""

    recipe: Any

    @nn.compact
    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
        import mx_jax

        st = self.variable(OWG, "state", lambda: mx_jax.init_state(self.recipe))
        return mx_jax.quantized_dot_general(lhs, rhs, dimension_numbers, self.recipe, st.value, precision,
                                            preferred_element_type)


def _norm_fmt(rec) -> str | None:
    spec = getattr(rec, "x", None)
    fmt = getattr(spec, "fmt", None)
    return fmt if fmt and (fmt.startswith("mx") or fmt == "nvfp4") else None


@functools.lru_cache(maxsize=None)
def quant_for_recipe(name: str, telemetry: bool = False) -> Quant:
    """Resolves a recipe name ("fp32", "bf16", "fp8_current", "fp8_delayed", "mxfp8", ...) to a ``Quant``.

    Memoized: the ``Quant`` (frozen) holds ``functools.partial`` factories, which compare by identity, so a
    fresh one per call would make every ``train()`` re-trace and re-compile the same model.

    Uses ``mx_jax.recipe`` / ``mx_jax.dot_general``; stateful recipes (delayed scaling, telemetry) use
    ``mx_jax.flax.MxDotGeneral`` when it exists, else a local module with the same collection layout.
    Without ``mx_jax.recipe`` (older checkout) only "fp32" / "bf16" resolve (plain ``lax.dot_general``).
    """
    import mx_jax

    if not hasattr(mx_jax, "recipe"):
        if name not in ("fp32", "bf16"):
            raise ValueError(f"recipe {name!r} needs mx_jax.recipe, which this checkout lacks")
        return Quant(name, compute_dtype=jnp.float32 if name == "fp32" else jnp.bfloat16)
    rec = mx_jax.recipe(name, telemetry=telemetry and name not in ("fp32", "bf16"))
    act = jnp.float32 if name == "fp32" else jnp.bfloat16  # activations' dtype (not the GEMM's)
    common = dict(name=name, compute_dtype=act, norm_fmt=_norm_fmt(rec), recipe=rec)
    if rec.is_noop:
        return Quant(source="none", **common)
    if rec.delayed_tensors or rec.telemetry:
        try:
            from mx_jax.flax import MxDotGeneral  # issue 3 (Flax layers), when it lands
            fields = {f.name for f in dataclasses.fields(MxDotGeneral)}
            key = "recipe" if "recipe" in fields else "rec"
            return Quant(dot_general_cls=functools.partial(MxDotGeneral, **{key: rec}), source="mx_jax.flax",
                         **common)
        except (ImportError, AttributeError, TypeError):
            return Quant(dot_general_cls=functools.partial(_StatefulDot, recipe=rec), source="local", **common)
    return Quant(dot_general=mx_jax.dot_general(rec), source="mx_jax", **common)


# --------------------------------------------------------------------------------------------- model
@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None          # default: 8/3 d_model rounded up to a multiple of 32 (whole MX blocks)
    norm: str = "rms"                # "rms" | "mx"
    norm_fmt: str | None = None      # MXNorm's format (default mxfp8_e4m3)
    eps: float = 1e-5
    rope_base: float = 10000.0
    dtype: Any = jnp.bfloat16        # compute dtype; params are always float32
    quantize_head: bool = False      # LM head through the recipe (default: high precision)
    quantize_attention: bool = True  # q·kᵀ and p·v through the recipe
    probes: bool = False             # sow activation amaxes + perturb for activation gradients
    scan: bool = True                # nn.scan over layers: one block is compiled (params stacked on axis 0)

    @property
    def ff(self) -> int:
        return self.d_ff or 32 * math.ceil(8 * self.d_model / 3 / 32)


def _make_norm(cfg: GPTConfig, name: str) -> nn.Module:
    if cfg.norm == "rms":
        return nn.RMSNorm(epsilon=cfg.eps, dtype=cfg.dtype, param_dtype=jnp.float32, name=name)
    if cfg.norm != "mx":
        raise ValueError(f"norm must be 'rms' or 'mx'; got {cfg.norm!r}")
    cls = mxnorm_class()
    if cls is None:
        warnings.warn("mx_jax MXNorm not available: falling back to RMSNorm", stacklevel=2)
        return nn.RMSNorm(epsilon=cfg.eps, dtype=cfg.dtype, param_dtype=jnp.float32, name=name)
    fields = {f.name for f in dataclasses.fields(cls)}
    want = {"epsilon": cfg.eps, "eps": cfg.eps, "fmt": cfg.norm_fmt or "mxfp8_e4m3", "dtype": cfg.dtype,
            "param_dtype": jnp.float32}
    return cls(name=name, **{k: v for k, v in want.items() if k in fields})


def mxnorm_class():
    """The MXNorm Flax module (mx_jax.flax or mx_jax.norms), or None while issue 8 is pending."""
    for mod in ("mx_jax.flax", "mx_jax.norms"):
        try:
            m = __import__(mod, fromlist=["MXNorm"])
            if hasattr(m, "MXNorm"):
                return m.MXNorm
        except ImportError:
            pass
    return None


def rope(x: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (rotate-half form) on [B, T, H, D], computed in float32."""
    t, d = x.shape[1], x.shape[-1]
    inv = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    ang = jnp.arange(t, dtype=jnp.float32)[:, None] * inv[None, :]          # [T, D/2]
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class Block(nn.Module):
    cfg: GPTConfig
    quant: Quant

    def probe(self, name: str, x: jax.Array) -> jax.Array:
        if not self.cfg.probes:
            return x
        self.sow("probes", name, jnp.max(jnp.abs(x)).astype(jnp.float32))
        return self.perturb(name, x)

    def dense(self, features: int, name: str, std: float) -> nn.Dense:
        q = self.quant
        return nn.Dense(features, use_bias=False, dtype=self.cfg.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.normal(std), dot_general=q.fn,
                        dot_general_cls=q.dot_general_cls, name=name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, t, d = x.shape
        h_, hd = cfg.n_heads, d // cfg.n_heads
        out_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        # --- attention
        h = self.probe("attn_in", _make_norm(cfg, "attn_norm")(x))
        qkv = self.dense(3 * d, "qkv", 0.02)(h).reshape(b, t, 3, h_, hd)
        q, k, v = (qkv[:, :, i] for i in range(3))
        q = rope(q, cfg.rope_base) * jnp.asarray(1.0 / math.sqrt(hd), cfg.dtype)
        k = rope(k, cfg.rope_base)
        q, k, v = (jnp.transpose(a, (0, 2, 1, 3)) for a in (q, k, v))     # [B, H, T, hd]
        plain = Quant(compute_dtype=cfg.dtype)
        aq = self.quant if cfg.quantize_attention else plain
        s = aq.make("qk_dot")(q, k, (((3,), (3,)), ((0, 1), (0, 1))))      # [B, H, T, T]
        mask = jnp.tril(jnp.ones((t, t), bool))
        s = jnp.where(mask, s.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        p = jax.nn.softmax(s, axis=-1).astype(cfg.dtype)
        o = aq.make("pv_dot")(p, v, (((3,), (2,)), ((0, 1), (0, 1))))      # [B, H, T, hd]
        o = self.probe("attn_out", jnp.transpose(o, (0, 2, 1, 3)).reshape(b, t, d).astype(cfg.dtype))
        x = x + self.dense(d, "o", out_std)(o)
        # --- SwiGLU MLP
        h = self.probe("mlp_in", _make_norm(cfg, "mlp_norm")(x))
        gate, up = jnp.split(self.dense(2 * cfg.ff, "gate_up", 0.02)(h), 2, axis=-1)
        m = self.probe("mlp_hidden", (nn.silu(gate) * up).astype(cfg.dtype))
        return x + self.dense(d, "down", out_std)(m)


class _ScanBlock(Block):
    @nn.compact
    def __call__(self, x, _):
        return super().__call__(x), None


class GPT(nn.Module):
    cfg: GPTConfig
    quant: Quant = Quant()

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.cfg
        emb = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(0.02), name="embed")
        x = emb(tokens)
        if cfg.scan:
            cols = ("params", OWG, "probes", "perturbations")
            blocks = nn.scan(_ScanBlock, variable_axes={c: 0 for c in cols}, split_rngs={"params": True},
                             length=cfg.n_layers)
            x, _ = blocks(cfg, self.quant, name="blocks")(x, None)
        else:
            for i in range(cfg.n_layers):
                x = Block(cfg, self.quant, name=f"block_{i}")(x)
        x = _make_norm(cfg, "final_norm")(x)
        hq = self.quant if cfg.quantize_head else Quant(compute_dtype=cfg.dtype)
        logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.normal(0.02), dot_general=hq.fn,
                          dot_general_cls=hq.dot_general_cls, name="head")(x)
        return logits.astype(jnp.float32)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
