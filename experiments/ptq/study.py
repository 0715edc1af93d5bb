"""Issue 5 -- post-training direct cast of pretrained models to every format (MX, NVFP4, FP8, INT8).

    python -m experiments.ptq.study            # full study: writes RESULTS_PTQ.md, results/ptq/ptq.png, .json
    python -m experiments.ptq.study --quick    # reduced version (a few formats, small data); prints tables

Models (the verified Flax ports in experiments/models): MiniLM-L6 sentence encoder and glassllm (tiny
Llama-style LM, trained on Lewis Carroll). Every matmul input is cast straight from FP32 to the format
(no calibration, no fine-tuning): weights only ("W") or weights + activations ("W+A", attention included).

Metrics, against the same model in FP32 on the same inputs:
  MiniLM   cosine of each sentence embedding to its FP32 embedding (mean and min) and top-10
           nearest-neighbour overlap (for each sentence, |top10_q & top10_fp32| / 10, self excluded), on
           sentences of the Shakespeare validation plays.
  glassllm mean per-token KL(p_fp32 || p_q), top-1 agreement of the next-token argmax, perplexity on
           consecutive 128-token windows of the validation plays (held-out: the model never saw Shakespeare).
Plus the FP8 paper's §4.3 study (E4M3 on GEMM inputs only vs GEMM inputs + residual stream; per-tensor
scaling vs plain casts at exponent biases 7..10).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data import read_work, split_works, list_works
from experiments.ptq import formats as F

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  n_sentences: int = 384          # MiniLM sentences
  windows_per_play: int = 8       # glassllm 128-token windows per validation play (4 plays)
  seq: int = 128
  formats: tuple[str, ...] = tuple(f.key for f in F.FORMATS)
  fp8_models: tuple[str, ...] = ("glassllm", "minilm")   # models in the §4.3 study
  biases: tuple[int, ...] = F.BIASES
  extra_biases: tuple[int, ...] = (3, 4, 5, 6, 11, 12, 13)  # glassllm only: the sweep beyond 7..10
  ablation_formats: tuple[str, ...] = ("mxfp8_e4m3", "mxfp4_e2m1")  # glassllm: MX scale rule rceil vs floor
  workers: int = 2                # configs compiled/run concurrently (XLA compiles release the GIL)


FULL = StudyConfig()
QUICK = StudyConfig(n_sentences=64, windows_per_play=2,
                    formats=("fp32", "mxfp8_e4m3", "mxfp4_e2m1"),
                    fp8_models=("glassllm",), biases=(10,), extra_biases=(), ablation_formats=())


# ------------------------------------------------------------------------------------------------ data
def val_plays() -> list[str]:
  return split_works(list_works())[1]


_SPEAKER = re.compile(r"^[A-Z][A-Z' ,.-]+\.$")


def shakespeare_sentences(n: int, fits=None) -> list[str]:
  """``n`` sentences (8..30 words) of the speeches of the validation plays, evenly spaced over all of them
  (of those for which ``fits(list_of_sentences) -> bool mask`` holds, e.g. a token-length limit)."""
  out, seen = [], set()
  for play in val_plays():
    for block in read_work(play).split("\n\n"):
      lines = [l.strip() for l in block.strip().split("\n")]
      if len(lines) < 2 or not _SPEAKER.match(lines[0]):
        continue  # keep speeches only (speaker line, then verse / prose)
      text = " ".join(l for l in lines[1:] if not l.startswith("["))
      for s in re.split(r"(?<=[.!?])\s+", text):
        if 8 <= len(s.split()) <= 30 and s not in seen:
          seen.add(s)
          out.append(s)
  if fits is not None:
    out = [s for s, ok in zip(out, fits(out)) if ok]
  idx = np.linspace(0, len(out) - 1, n).round().astype(int)
  return [out[i] for i in idx]


def glass_windows(tok, per_play: int, seq: int = 128) -> np.ndarray:
  """int32 [4 * per_play, seq + 1]: consecutive token windows of each validation play (after its cast list)."""
  rows = []
  for play in val_plays():
    text = read_work(play)
    start = text.find("\nACT ") if "\nACT " in text else 0
    ids = tok.encode(text[start:])
    rows += [ids[i * (seq + 1):(i + 1) * (seq + 1)] for i in range(per_play)]
  return np.stack(rows).astype(np.int32)


# --------------------------------------------------------------------------------------------- models
class MiniLMEval:
  def __init__(self, n: int, max_tokens: int = 32):
    from experiments.models import minilm
    self.model, self.params, tok = minilm.load_minilm()
    fits = lambda texts: [sum(e.attention_mask) <= max_tokens for e in tok.tok.encode_batch(texts)]
    self.texts = shakespeare_sentences(n, fits)  # one padded shape [n, <= max_tokens]: one compile per config
    self.ids, self.mask = tok(self.texts)
    self.ref = self.embed()

  def embed(self, **hooks) -> np.ndarray:
    m = self.model.clone(**hooks) if hooks else self.model
    return np.asarray(jax.jit(m.apply)(self.params, self.ids, self.mask), np.float64)

  def metrics(self, e: np.ndarray) -> dict:
    r = self.ref
    cos = (e * r).sum(-1) / np.linalg.norm(e, axis=-1) / np.linalg.norm(r, axis=-1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "one_minus_cos": float(1.0 - cos.mean()), "knn10": knn_overlap(r, e, 10)}


def knn_overlap(ref: np.ndarray, q: np.ndarray, k: int = 10) -> float:
  """Mean over rows of |top-k neighbours under ref ∩ top-k under q| / k (cosine similarity, self excluded)."""
  def topk(e):
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]
  a, b = topk(ref), topk(q)
  return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


@jax.jit
def _lm_metrics(logits, ref_logp, targets):
  """Per-window mean KL(ref || q), top-1 agreement and NLL of the targets."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  kl = jnp.sum(jnp.exp(ref_logp) * (ref_logp - lp), -1)
  agree = (jnp.argmax(lp, -1) == jnp.argmax(ref_logp, -1)).astype(jnp.float32)
  nll = -jnp.take_along_axis(lp, targets[..., None], -1)[..., 0]
  return kl.mean(-1), agree.mean(-1), nll.mean(-1)


class GlassEval:
  def __init__(self, per_play: int, seq: int = 128):
    from experiments.models import glassllm
    self.model, self.params, self.tok = glassllm.load_glassllm("en")
    w = glass_windows(self.tok, per_play, seq)
    self.x, self.y = w[:, :-1], w[:, 1:]
    self.ref_logits = ref = self.logits()
    self.ref_logp = jax.nn.log_softmax(ref, -1)
    _, _, nll = _lm_metrics(ref, self.ref_logp, self.y)
    self.ref_nll = np.asarray(nll, np.float64)

  def logits(self, **hooks) -> jax.Array:
    m = self.model.clone(**hooks) if hooks else self.model
    return jax.jit(m.apply)(self.params, self.x)

  def metrics(self, logits) -> dict:
    kl, agree, nll = (np.asarray(t, np.float64) for t in _lm_metrics(logits, self.ref_logp, self.y))
    d = nll - self.ref_nll  # paired per-window differences: the noise scale of a perplexity change
    return {"kl": float(kl.mean()), "top1": float(agree.mean()), "ppl": float(np.exp(nll.mean())),
            "dnll": float(d.mean()), "dnll_se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "ppl_se": float(np.exp(nll.mean()) * nll.std(ddof=1) / np.sqrt(len(nll)))}


def tensor_ranges(ev) -> dict:
  """max |.| of the weights, GEMM activations and residual stream in one FP32 forward (eager, hooks record)."""
  from jax import lax
  st = {"w": [], "x": [], "res": []}

  def dg(role):
    def f(lhs, rhs, dn, precision=None, preferred_element_type=None, **kw):
      st["x"].append(float(np.abs(np.asarray(lhs)).max()))
      if role == "dense":
        st["w"].append(np.abs(np.asarray(rhs)).ravel())
      else:
        st["x"].append(float(np.abs(np.asarray(rhs)).max()))
      return lax.dot_general(lhs, rhs, dn, preferred_element_type=preferred_element_type)
    return f

  def res_q(x):
    st["res"].append(float(np.abs(np.asarray(x)).max()))
    return x

  hooks = dict(dot_general=dg("dense"), attn_dot_general=dg("attn"), residual_q=res_q, residual_q_sublayers=True)
  if isinstance(ev, MiniLMEval):
    ev.model.clone(**hooks).apply(ev.params, ev.ids, ev.mask)
  else:
    ev.model.clone(**hooks).apply(ev.params, ev.x)
  w = np.concatenate(st["w"])
  return {"w_max": float(w.max()), "w_median": float(np.median(w)),
          "w_frac_below_2m6": float((w < 2.0 ** -6).mean()), "x_max": float(max(st["x"])),
          "res_max": float(max(st["res"]))}


# ---------------------------------------------------------------------------------------------- study
def _evaluate(ev, hooks: dict) -> dict:
  out = ev.embed(**hooks) if isinstance(ev, MiniLMEval) else ev.logits(**hooks)
  return ev.metrics(out)


def run_study(cfg: StudyConfig = FULL, log=print) -> dict:
  """Runs every (model, format, mode) and §4.3 config; returns a JSON-able dict of results."""
  t0 = time.time()
  evs = {"minilm": MiniLMEval(cfg.n_sentences), "glassllm": GlassEval(cfg.windows_per_play, cfg.seq)}
  log(f"[ptq] data + fp32 references ready in {time.time() - t0:.1f}s "
      f"({len(evs['minilm'].texts)} sentences, {evs['glassllm'].y.size} tokens)")
  jobs = []  # (result path, model, hooks); the slow MiniLM jobs first so the two workers finish together
  for model in ("minilm", "glassllm"):
    for key in cfg.formats:
      for mode in (F.MODES if key != "fp32" else ()):
        dg, adg = F.dot_generals(key, mode)
        jobs.append((("formats", model, key, mode), model, dict(dot_general=dg, attn_dot_general=adg)))
    if model in cfg.fp8_models:
      biases = sorted(set(cfg.biases) | (set(cfg.extra_biases) if model == "glassllm" else set()))
      for c in F.fp8_configs(biases):
        jobs.append((("fp8", model, c.scaling, "gemm+res" if c.residual else "gemm"), model, c.hooks()))
  for key in cfg.ablation_formats:
    for mode in F.MODES:
      dg, adg = F.dot_generals(key, mode, scale_mode="rceil")
      jobs.append((("scale_rceil", "glassllm", key, mode), "glassllm", dict(dot_general=dg, attn_dot_general=adg)))

  res: dict = {}
  if "fp32" in cfg.formats:  # the references themselves (same compiled FP32 forward)
    for model, out in (("minilm", evs["minilm"].ref), ("glassllm", evs["glassllm"].ref_logits)):
      m = dict(evs[model].metrics(out), seconds=0.0)
      res.setdefault("formats", {}).setdefault(model, {})["fp32"] = {"w": m, "wa": m}

  def one(job):
    path, model, hooks = job
    t = time.time()
    m = _evaluate(evs[model], hooks)
    m["seconds"] = round(time.time() - t, 2)
    return path, m

  with cf.ThreadPoolExecutor(max(1, cfg.workers)) as pool:
    ranges = {m: pool.submit(tensor_ranges, ev) for m, ev in evs.items()}
    for path, m in pool.map(one, jobs):
      d = res
      for p in path[:-1]:
        d = d.setdefault(p, {})
      d[path[-1]] = m
      log(f"[ptq] {'/'.join(path):45s} " + " ".join(f"{k}={v:.6g}" for k, v in m.items()))
  ev_g, ev_m = evs["glassllm"], evs["minilm"]
  res["formats"] = {m: res["formats"][m] for m in ("minilm", "glassllm") if m in res["formats"]}
  res["meta"] = {
      "config": dataclasses.asdict(cfg), "seconds": round(time.time() - t0, 1),
      "minilm_sentences": len(ev_m.texts), "minilm_seq_len": int(ev_m.ids.shape[1]),
      "glass_windows": int(ev_g.x.shape[0]), "glass_tokens": int(ev_g.y.size),
      "glass_fp32_ppl": float(np.exp(ev_g.ref_nll.mean())),
      "glass_fp32_ppl_se": float(np.exp(ev_g.ref_nll.mean()) * ev_g.ref_nll.std(ddof=1)
                                 / np.sqrt(len(ev_g.ref_nll))),
      "val_plays": val_plays(), "example_sentences": ev_m.texts[:3],
      "machine": machine(), "jax": jax.__version__,
      "ranges": {m: f.result() for m, f in ranges.items()},
      "params": {m: int(sum(x.size for x in jax.tree.leaves(ev.params))) for m, ev in evs.items()},
  }
  return res


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores, {jax.default_backend().upper()} backend"


# --------------------------------------------------------------------------------------------- output
def _f(v, nd=4):
  return f"{v:.{nd}f}"


def _g(v):
  return "0" if v == 0 else (f"{v:.2e}" if abs(v) < 1e-3 else f"{v:.4f}")


def format_tables(res: dict) -> dict[str, str]:
  """Markdown tables: minilm, glassllm, fp8 (§4.3)."""
  rows = [f for f in F.FORMATS if f.key in res["formats"]["minilm"]]
  t = {}
  fm = res["formats"]["minilm"]
  lines = ["| format | bits/elem | W: cos mean | W: cos min | W: top-10 NN | W+A: cos mean | W+A: cos min "
           "| W+A: top-10 NN |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for f in rows:
    w, a = fm[f.key]["w"], fm[f.key]["wa"]
    lines.append(f"| {f.label} | {f.bits:g} | {_f(w['cos_mean'], 5)} | {_f(w['cos_min'], 4)} | {_f(w['knn10'], 3)} "
                 f"| {_f(a['cos_mean'], 5)} | {_f(a['cos_min'], 4)} | {_f(a['knn10'], 3)} |")
  t["minilm"] = "\n".join(lines)
  fg = res["formats"]["glassllm"]
  lines = ["| format | bits/elem | W: KL | W: top-1 | W: ppl (Δppl ± 2se) | W+A: KL | W+A: top-1 "
           "| W+A: ppl (Δppl ± 2se) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]

  def ppl(m, ref):
    if m is ref:
      return f"{m['ppl']:.2f}"
    dp = m["ppl"] - ref["ppl"]
    return f"{m['ppl']:.2f} ({dp:+.2f} ± {2 * m['ppl'] * m['dnll_se']:.2f})"

  ref = fg["fp32"]["w"]
  for f in rows:
    w, a = fg[f.key]["w"], fg[f.key]["wa"]
    lines.append(f"| {f.label} | {f.bits:g} | {_g(w['kl'])} | {_f(w['top1'], 3)} | {ppl(w, ref)} "
                 f"| {_g(a['kl'])} | {_f(a['top1'], 3)} | {ppl(a, ref)} |")
  t["glassllm"] = "\n".join(lines)
  if "fp8" in res:
    for model, d in res["fp8"].items():
      scalings = list(d)
      if model == "glassllm":
        lines = ["| E4M3 scaling | GEMM inputs: KL | top-1 | ppl | GEMM + residual: KL | top-1 | ppl |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for s in scalings:
          g, r = d[s]["gemm"], d[s]["gemm+res"]
          lines.append(f"| {_scaling_label(s)} | {_g(g['kl'])} | {_f(g['top1'], 3)} | {g['ppl']:.2f} "
                       f"| {_g(r['kl'])} | {_f(r['top1'], 3)} | {r['ppl']:.2f} |")
      else:
        lines = ["| E4M3 scaling | GEMM inputs: cos mean | cos min | top-10 NN | GEMM + residual: cos mean "
                 "| cos min | top-10 NN |", "|---|---:|---:|---:|---:|---:|---:|"]
        for s in scalings:
          g, r = d[s]["gemm"], d[s]["gemm+res"]
          lines.append(f"| {_scaling_label(s)} | {_f(g['cos_mean'], 5)} | {_f(g['cos_min'], 4)} "
                       f"| {_f(g['knn10'], 3)} | {_f(r['cos_mean'], 5)} | {_f(r['cos_min'], 4)} "
                       f"| {_f(r['knn10'], 3)} |")
      t[f"fp8_{model}"] = "\n".join(lines)
  if "scale_rceil" in res:
    lines = ["| format | mode | floor (OCP): KL | top-1 | rceil: KL | top-1 |", "|---|---|---:|---:|---:|---:|"]
    for key, d in res["scale_rceil"]["glassllm"].items():
      for mode in F.MODES:
        a, b = fg[key][mode], d[mode]
        lines.append(f"| {F.FORMAT_BY_KEY[key].label} | {'W' if mode == 'w' else 'W+A'} | {_g(a['kl'])} "
                     f"| {_f(a['top1'], 3)} | {_g(b['kl'])} | {_f(b['top1'], 3)} |")
    t["scale_rceil"] = "\n".join(lines)
  return t


def _scaling_label(s: str) -> str:
  if s == "tensor":
    return "per-tensor scale (448 / amax)"
  b = int(s[4:])
  return f"plain cast, bias {b} (max {448 * 2.0 ** (7 - b):g})"


def plot(res: dict, path: Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [f for f in F.FORMATS if f.key in res["formats"]["minilm"] and f.key != "fp32"]
  has_fp8 = "fp8" in res and "glassllm" in res["fp8"]
  fig, axes = plt.subplots(1, 3 if has_fp8 else 2, figsize=(14 if has_fp8 else 10, 4.2))
  y = np.arange(len(rows))
  for ax, model, key, xlabel in ((axes[0], "minilm", "one_minus_cos", "MiniLM: 1 − cosine to FP32"),
                                 (axes[1], "glassllm", "kl", "glassllm: KL(FP32 ‖ q) nats/token")):
    d = res["formats"][model]
    for j, (mode, c) in enumerate((("w", "tab:blue"), ("wa", "tab:orange"))):
      v = np.array([max(d[f.key][mode][key], 1e-9) for f in rows])
      ax.barh(y + (j - 0.5) * 0.4, v, 0.4, color=c, label={"w": "weights only", "wa": "weights + activations"}[mode])
    ax.set_xscale("log")
    ax.set_yticks(y, [f.label for f in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
  h, lab = axes[0].get_legend_handles_labels()
  fig.legend(h, lab, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.33 if has_fp8 else 0.5, 0.0))
  if has_fp8:
    ax = axes[2]
    d = res["fp8"]["glassllm"]
    bias = [s for s in d if s != "tensor"]
    xb = [int(s[4:]) for s in bias]
    for part, c in (("gemm", "tab:green"), ("gemm+res", "tab:red")):
      lab = {"gemm": "GEMM inputs", "gemm+res": "GEMM inputs + residual"}[part]
      ax.plot(xb, [d[s][part]["kl"] for s in bias], "o-", color=c, label=f"{lab}: plain cast")
      ax.axhline(max(d["tensor"][part]["kl"], 1e-9), color=c, ls="--", label=f"{lab}: per-tensor scaled")
    ax.axvspan(6.6, 10.4, color="0.9", zorder=0, label="biases 7-10 (paper's range)")
    ax.set_yscale("log")
    ax.set_xticks(xb)
    ax.set_xlabel("E4M3 exponent bias of the plain cast")
    ax.set_ylabel("glassllm KL(FP32 ‖ q)")
    ax.set_title("FP8 paper §4.3 study (E4M3)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.suptitle("Direct-cast PTQ of pretrained models (mx_jax)", fontsize=11)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_markdown(res: dict, path: Path, plot_path: Path, command: str):
  from experiments.ptq.report import render
  path.write_text(render(res, format_tables(res), os.path.relpath(plot_path, path.parent), command))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="reduced study (a few formats, small data)")
  ap.add_argument("--out", type=Path, default=None, help="markdown path (full default: RESULTS_PTQ.md)")
  ap.add_argument("--plot", type=Path, default=None, help="PNG path (full default: results/ptq/ptq.png)")
  ap.add_argument("--json", type=Path, default=None, help="JSON path (full default: results/ptq/ptq.json)")
  ap.add_argument("--workers", type=int, default=None)
  a = ap.parse_args(argv)
  cfg = QUICK if a.quick else FULL
  if a.workers:
    cfg = dataclasses.replace(cfg, workers=a.workers)
  if not a.quick:
    a.out = a.out or REPO / "RESULTS_PTQ.md"
    a.plot = a.plot or REPO / "results" / "ptq" / "ptq.png"
    a.json = a.json or REPO / "results" / "ptq" / "ptq.json"
  res = run_study(cfg)
  tables = format_tables(res)
  for name, tab in tables.items():
    print(f"\n## {name}\n{tab}")
  if a.json:
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1))
  if a.plot:
    plot(res, a.plot)
  if a.out:
    cmd = "python -m experiments.ptq.study" + (" --quick" if a.quick else "")
    write_markdown(res, a.out, a.plot or REPO / "results" / "ptq" / "ptq.png", cmd)
  print(f"\n[ptq] done in {res['meta']['seconds']:.1f}s", file=sys.stderr)
  return res


if __name__ == "__main__":
  main()
