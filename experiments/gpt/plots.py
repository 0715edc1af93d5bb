"""Plots for the recipe comparison: loss curves, per-tensor scale trajectories, recipe scale histograms.

All functions take plain Python data (metrics rows, telemetry records as written by train.py) and a path,
and write one PNG (matplotlib, Agg backend).

- ``loss_curves``: train loss (EMA-smoothed) and val loss vs step, one colour per recipe, MXNorm dashed.
- ``scale_trajectories`` (Graphcore FP8-paper style, Perez et al. 2023): log2 amax of every weight,
  activation and their gradients over training, one thin line per tensor (scanned layers split out),
  i.e. the exponent a per-tensor scale must absorb for each tensor (E4M3 covers ~2^-6..2^8.8 unscaled).
- ``scale_histograms``: the recipe's own telemetry (mx_jax.telemetry): distribution of the block/tensor
  scale exponents of each GEMM operand over training (a heatmap per operand), plus saturation fraction.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CATEGORIES = (("w", "weights"), ("a", "activations (matmul inputs)"), ("gw", "weight gradients"),
              ("ga", "activation gradients"))


def _ema(x, alpha=0.1):
    out, m = [], None
    for v in x:
        m = v if m is None else (1 - alpha) * m + alpha * v
        out.append(m)
    return np.array(out)


def loss_curves(runs: dict[str, list[dict]], path, title: str = "") -> None:
    """runs: {label: metrics rows}; labels ending in "+MXNorm" are drawn dashed in their recipe's colour."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    base = sorted({k.split("+")[0] for k in runs}, key=list(dict.fromkeys(k.split("+")[0] for k in runs)).index)
    cmap = plt.get_cmap("tab10")
    colour = {b: cmap(i % 10) for i, b in enumerate(base)}
    for label, rows in runs.items():
        c, ls = colour[label.split("+")[0]], "--" if "+" in label else "-"
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, _ema([r["train_loss"] for r in rows]), color=c, ls=ls, lw=1.2, label=label)
        v = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] != ""]
        if v:
            axes[1].plot(*zip(*v), color=c, ls=ls, marker="o", ms=3, lw=1.2, label=label)
    for ax, name in zip(axes, ("train loss (EMA 0.1)", "validation loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    finals = [r["val_loss"] for rows in runs.values() for r in rows if r["val_loss"] != ""]
    if finals:  # zoom on the end of training where the recipes differ
        lo = min(finals)
        axes[1].set_ylim(lo - 0.05, lo + max(0.6, 3 * (np.median(finals) - lo)))
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title or "Shakespeare GPT: loss by recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(tele: list[dict], cat: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    steps = np.array([t["step"] for t in tele])
    names = sorted({n for t in tele for n in t.get(cat, {})})
    return steps, {n: np.array([t.get(cat, {}).get(n, np.nan) for t in tele]) for n in names}


def _kind(name: str) -> str:
    for k in ("qkv", "o/", "gate_up", "down", "head", "embed", "attn_in", "attn_out", "mlp_in", "mlp_hidden",
              "norm"):
        if k in name:
            return k.strip("/")
    return "other"


def scale_trajectories(tele: list[dict], path, title: str = "") -> None:
    """2×2 panels (weights, activations, weight grads, activation grads): log2 max|t| of each tensor vs step."""
    if not tele:
        return
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    kinds: dict[str, tuple] = {}
    cmap = plt.get_cmap("tab20")
    for ax, (cat, label) in zip(axes.ravel(), CATEGORIES):
        steps, ser = _series(tele, cat)
        for n, y in ser.items():
            k = _kind(n)
            c = kinds.setdefault(k, cmap(2 * len(kinds) % 20 + (len(kinds) >= 10)))
            ax.plot(steps, y, color=c, lw=0.8, alpha=0.8)
        ax.set_title(f"{label} ({len(ser)} tensors)", fontsize=10)
        ax.set_ylabel("log2 max|x|")
        ax.grid(alpha=0.3)
    for k, c in kinds.items():
        axes[0, 0].plot([], [], color=c, label=k)
    axes[0, 0].legend(fontsize=7, ncol=2)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title or "per-tensor scales over training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_histograms(tele: list[dict], path, title: str = "") -> bool:
    """Heatmaps (step × scale exponent) of the recipe's telemetry, summed over layers, for each operand.
    All-zero blocks (E8M0 byte 0, e.g. causally masked attention probabilities) are left out of the map and
    reported as a fraction in the title, with the mean fraction of saturated elements.

    Returns False (and writes nothing) when the records carry no recipe telemetry."""
    recs = [t for t in tele if t.get("recipe")]
    if not recs:
        return False
    ops = sorted({n.rsplit("telemetry_", 1)[-1].split("[")[0] for t in recs for n in t["recipe"]})
    fig, axes = plt.subplots(2, math.ceil(len(ops) / 2), figsize=(4 * math.ceil(len(ops) / 2), 7), squeeze=False)
    lo, hi = 200, -200
    grids = {}
    for op in ops:
        g = []
        for t in recs:
            h: dict[int, float] = {}
            sat = []
            for n, r in t["recipe"].items():
                if n.rsplit("telemetry_", 1)[-1].split("[")[0] != op:
                    continue
                sat.append(r["sat"])
                for e, f in r["hist"].items():
                    h[int(e)] = h.get(int(e), 0.0) + f
            zero = h.pop(-127, 0.0) / max(sum(h.values()) + h.get(-127, 0.0), 1e-12)  # all-zero blocks
            g.append((h, float(np.mean(sat)) if sat else 0.0, zero))
            total = sum(h.values())
            seen = [e for e, f in h.items() if f > 1e-3 * total]  # the range holding ~all the mass
            if seen:
                lo, hi = min(lo, min(seen)), max(hi, max(seen))
        grids[op] = g
    exps = np.arange(lo, hi + 1)
    steps = [t["step"] for t in recs]
    for ax, op in zip(axes.ravel(), ops):
        m = np.array([[h.get(int(e), 0.0) for e in exps] for h, _, _ in grids[op]])
        m = m / np.maximum(m.sum(1, keepdims=True), 1e-12)
        ax.imshow(m.T, aspect="auto", origin="lower", cmap="viridis",
                  extent=(steps[0], steps[-1], exps[0] - 0.5, exps[-1] + 0.5))
        sat = np.mean([s for _, s, _ in grids[op]])
        zero = np.mean([z for _, _, z in grids[op]])
        ax.set_title(f"{op}: saturated {100 * sat:.2f}%, zero blocks {100 * zero:.1f}%", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("scale exponent (log2)")
    for ax in axes.ravel()[len(ops):]:
        ax.axis("off")
    fig.suptitle(title or "recipe scale-exponent distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
