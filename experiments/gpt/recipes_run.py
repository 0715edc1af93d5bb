"""Train the GPT once per recipe (same seed, same data order) and compare them.

    python -m experiments.gpt.recipes_run                         # tiny: all recipes, 2 CPU workers, ≤ 5 min
    python -m experiments.gpt.recipes_run --config gpu --workers 1  # ~25M params on one H100
    python -m experiments.gpt.recipes_run --recipes bf16,mxfp8 --nomxnorm --steps 50
    python -m experiments.gpt.recipes_run --config gpu --workers 1 --recipes nvfp4 --norms mx   # one chunk
    python -m experiments.gpt.recipes_run --config gpu --aggregate     # tables/plots from all finished runs

Runs fp32, bf16, fp8_current, fp8_delayed, mxfp8, mxfp6, mxfp4_weights, nvfp4, and each MX recipe
(mxfp8, mxfp6, mxfp4_weights, nvfp4) again with MXNorm. Run folders (metrics, telemetry, checkpoints) go
to runs/gpt_<config>/<recipe>_<norm>; the comparison goes to results/gpt_<config>/:
  summary.csv, all_metrics.csv (long format), results.md (final val loss, gap to fp32 in %),
  loss_curves.png, scales_<run>.png (per-tensor log2 amax of weights / activations / gradients over
  training) and recipe_scales_<run>.png (the recipe's block-scale exponent histograms, when recorded).
"""
from __future__ import annotations

import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

RECIPES = ("fp32", "bf16", "fp8_current", "fp8_delayed", "mxfp8", "mxfp6", "mxfp4_weights", "nvfp4")
MX_RECIPES = ("mxfp8", "mxfp6", "mxfp4_weights", "nvfp4")
SCALE_PLOTS = ("fp32", "bf16", "fp8_delayed", "mxfp8", "nvfp4")


def run_list(recipes, mxnorm: bool = True, norms=("rms", "mx")) -> list[tuple[str, str]]:
    runs = [(r, "rms") for r in recipes] if "rms" in norms else []
    return runs + ([(r, "mx") for r in recipes if r in MX_RECIPES] if mxnorm and "mx" in norms else [])


def label(recipe: str, norm: str) -> str:
    return recipe + ("+MXNorm" if norm == "mx" else "")


_DS = None


def _worker(kw: dict) -> dict:
    """Runs one recipe (in a worker process); returns its summary without rows/telemetry."""
    global _DS
    from experiments.data import load_shakespeare
    from experiments.gpt.train import make_config, train

    cfg = make_config(**kw)
    if _DS is None:
        _DS = load_shakespeare(cfg.tokenizer)
    s = train(cfg, _DS)
    return {k: v for k, v in s.items() if k not in ("rows", "telemetry", "state")}


SEED_RECIPES = ("fp32", "mxfp8")  # also run with extra seeds: the run-to-run spread a gap is judged against


def run_all(config: str = "tiny", recipes=RECIPES, mxnorm: bool = True, workers: int = 2,
            runs_dir=None, results_dir=None, telemetry_recipes=(), cache_dir=None, norms=("rms", "mx"),
            extra_seeds=(1,), **overrides) -> dict:
    """Trains every (recipe, norm) pair, plus SEED_RECIPES with ``extra_seeds`` (RMSNorm), and writes the
    comparison; returns {label: summary} (extra seeds labelled "recipe@seedN")."""
    t0 = time.time()
    runs_dir = Path(runs_dir or f"runs/gpt_{config}")
    results_dir = Path(results_dir or f"results/gpt_{config}")
    results_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for r, n in run_list(recipes, mxnorm, norms):
        jobs.append(dict(config=config, recipe=r, norm=n, out_dir=str(runs_dir / f"{r}_{n}"), overwrite=True,
                         progress=workers <= 1, recipe_telemetry=r in telemetry_recipes, **overrides))
    seed_jobs = {}
    for r in (r for r in SEED_RECIPES if r in recipes and "rms" in norms):
        for sd in extra_seeds:
            seed_jobs[f"{r}@seed{sd}"] = dict(config=config, recipe=r, norm="rms", seed=sd, overwrite=True,
                                              out_dir=str(runs_dir / f"{r}_rms_seed{sd}"), progress=workers <= 1,
                                              **{k: v for k, v in overrides.items() if k != "seed"})
    if cache_dir:  # persistent XLA cache: re-runs skip compilation (the first run is what the budget counts)
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(cache_dir).absolute()))
    summaries = {}
    labelled = {label(j["recipe"], j["norm"]): j for j in jobs} | seed_jobs
    if workers <= 1:
        for k, j in labelled.items():
            summaries[k] = _worker(j)
    else:
        # Longest first (MX recipes compile slowest) so the two workers finish together.
        order = sorted(labelled.items(), key=lambda kj: (kj[1]["recipe"] in ("fp32", "bf16"),
                                                         kj[1]["recipe"] != "nvfp4"))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            futs = {k: ex.submit(_worker, j) for k, j in order}
            for k, f in futs.items():
                summaries[k] = f.result()
                s = summaries[k]
                print(f"{k:24s} val {s['final_val_loss']:.4f}  wall {s['wall_s']:.0f}s  "
                      f"compile {s['compile_s']:.0f}s", flush=True)
    summaries = {**{label(r, n): summaries[label(r, n)] for r, n in run_list(recipes, mxnorm, norms)},
                 **{k: summaries[k] for k in seed_jobs}}
    write_results(summaries, runs_dir, results_dir, config, time.time() - t0)
    return summaries


def aggregate(config: str = "tiny", runs_dir=None, results_dir=None) -> dict:
    """Rebuilds the comparison from every finished run folder in runs_dir (runs made in several chunks,
    e.g. one device call per recipe on the GPU), in the canonical recipe order."""
    runs_dir = Path(runs_dir or f"runs/gpt_{config}")
    results_dir = Path(results_dir or f"results/gpt_{config}")
    results_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    found = [(label(r, n), f"{r}_{n}") for r, n in run_list(RECIPES)]
    found += [(f"{r}@seed{d.name.rsplit('seed', 1)[1]}", d.name) for r in SEED_RECIPES
              for d in sorted(runs_dir.glob(f"{r}_rms_seed*"))]
    for k, folder in found:
        f = runs_dir / folder / "summary.json"
        if f.is_file():
            s = json.loads(f.read_text())
            s["config"]["out_dir"] = str(runs_dir / folder)  # runs made elsewhere (the GPU box) and copied here
            summaries[k] = s
    if not summaries:
        raise FileNotFoundError(f"no finished runs (summary.json) under {runs_dir}")
    write_results(summaries, runs_dir, results_dir, config, None)
    return summaries


def write_results(summaries: dict, runs_dir: Path, results_dir: Path, config: str, total_s: float | None) -> None:
    from experiments.gpt import plots
    from experiments.gpt.train import read_metrics

    metrics, teles = {}, {}
    for k, s in summaries.items():
        d = Path(s["config"]["out_dir"])
        metrics[k] = read_metrics(d / "metrics.csv")
        teles[k] = [json.loads(x) for x in (d / "telemetry.jsonl").read_text().splitlines()] \
            if (d / "telemetry.jsonl").is_file() else []
    ref = summaries.get("fp32", {}).get("final_val_loss")
    cols = ["run", "recipe", "norm", "final_val_loss", "gap_to_fp32_pct", "final_train_loss", "tokens_per_s",
            "compile_s", "wall_s", "params", "dot_source", "norm_impl", "backend"]
    table = []
    for k, s in summaries.items():
        v = s["final_val_loss"]
        table.append({"run": k, "recipe": s["recipe"], "norm": s["norm"], "final_val_loss": round(v, 4),
                      "gap_to_fp32_pct": round(100 * (v - ref) / ref, 2) if ref else "",
                      "final_train_loss": round(s["final_train_loss"], 4),
                      "tokens_per_s": round(s["tokens_per_s"] or 0), "compile_s": round(s["compile_s"], 1),
                      "wall_s": round(s["wall_s"], 1), "params": s["params"], "dot_source": s["dot_source"],
                      "norm_impl": s["norm_impl"], "backend": s["backend"]})
    with open(results_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(table)
    with open(results_dir / "all_metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "train_loss", "val_loss", "tokens_per_s", "lr", "grad_norm"])
        for k, rows in metrics.items():
            for r in rows:
                w.writerow([k, int(r["step"]), r["train_loss"], r["val_loss"], r["tokens_per_s"], r["lr"],
                            r["grad_norm"]])
    any_cfg = next(iter(summaries.values()))["config"]
    md = [f"# GPT on Shakespeare: recipe comparison ({config} config)", "",
          f"{any_cfg['n_layers']} layers × d_model {any_cfg['d_model']}, {any_cfg['n_heads']} heads, "
          f"{next(iter(summaries.values()))['params']:,} params, {any_cfg['steps']} steps of "
          f"{any_cfg['batch']}×{any_cfg['seq']} tokens ({any_cfg['tokenizer']}), seed {any_cfg['seed']}, "
          f"backend {next(iter(summaries.values()))['backend']}; "
          + (f"total wall {total_s:.0f} s." if total_s else f"aggregated from the runs in {runs_dir}."), "",
          "| run | final val loss | gap to fp32 | final train loss | tokens/s | compile s | wall s |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        gap = f"{t['gap_to_fp32_pct']:+.2f}%" if t["gap_to_fp32_pct"] != "" else "–"
        note = "" if t["norm_impl"] in ("rms", "mx") else " (MXNorm missing: RMSNorm)"
        md.append(f"| {t['run']}{note} | {t['final_val_loss']:.4f} | {gap} | {t['final_train_loss']:.4f} | "
                  f"{t['tokens_per_s']:,} | {t['compile_s']} | {t['wall_s']} |")
    spread = []
    for k in [k for k in summaries if "@seed" in k]:
        base = summaries.get(k.split("@")[0])
        if base:
            a, b = base["final_val_loss"], summaries[k]["final_val_loss"]
            spread.append(f"{k.split('@')[0]}: {abs(a - b) / a * 100:.2f}%")
    if spread:
        md += ["", "Run-to-run spread (|val loss seed 0 − other seed| / val loss; the seed changes the "
               "initialisation and the data order): " + ", ".join(spread) + ". Gaps to fp32 smaller than "
               "this are noise."]
    md += ["", "Val loss: mean cross-entropy (nats/char) on fixed windows spread over the held-out plays; "
           "train loss: mean of the last 10% of logged steps. ![loss curves](loss_curves.png)", ""]
    for old in [*results_dir.glob("scales_*.png"), *results_dir.glob("recipe_scales_*.png")]:
        old.unlink()  # plots of an earlier comparison
    plots.loss_curves(metrics, results_dir / "loss_curves.png", f"GPT/{config}: loss by recipe")
    for k, tele in teles.items():
        if k.split("+")[0] in SCALE_PLOTS and "+" not in k and "@" not in k and tele:
            plots.scale_trajectories(tele, results_dir / f"scales_{k}.png", f"{k}: per-tensor log2 amax")
            md.append(f"![{k} scales](scales_{k}.png)")
        if tele and plots.scale_histograms(tele, results_dir / f"recipe_scales_{k}.png",
                                           f"{k}: scale exponents per GEMM operand"):
            md.append(f"![{k} recipe scales](recipe_scales_{k}.png)")
    (results_dir / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:len(table) + 6]))


def main(argv):
    del argv
    f = FLAGS
    recipes = tuple(r for r in f.recipes.split(",") if r) if f.recipes else RECIPES
    over = {k: getattr(f, k) for k in ("steps", "seed", "ckpt_every") if getattr(f, k) is not None}
    t = f.telemetry or ("all" if f.config == "gpu" else "none")  # recipe telemetry is costly on CPU
    tel = () if t == "none" else (recipes if t == "all" else tuple(t.split(",")))
    if f.aggregate:
        aggregate(f.config, f.runs_dir, f.results_dir)
        return
    run_all(f.config, recipes, mxnorm=f.mxnorm, workers=f.workers, runs_dir=f.runs_dir,
            results_dir=f.results_dir, telemetry_recipes=tel, cache_dir=f.cache_dir,
            norms=tuple(f.norms.split(",")), extra_seeds=tuple(int(x) for x in f.extra_seeds.split(",") if x),
            **over)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("config", "tiny", ["tiny", "gpu"], "size preset (see train.CONFIGS)")
    flags.DEFINE_string("recipes", None, "comma-separated recipes (default: all eight)")
    flags.DEFINE_bool("mxnorm", True, "also run each MX recipe with MXNorm")
    flags.DEFINE_string("norms", "rms,mx", "which norms to run: rms | mx | rms,mx (mx: MX recipes only)")
    flags.DEFINE_bool("aggregate", False, "only rebuild results/ from the finished runs in runs_dir")
    flags.DEFINE_integer("workers", 2, "parallel worker processes (CPU: 2; GPU: 1)")
    flags.DEFINE_integer("steps", None, "override the preset's steps")
    flags.DEFINE_integer("seed", None, "override the seed")
    flags.DEFINE_integer("ckpt_every", None, "checkpoint interval (-1: no checkpoints, e.g. on the GPU box)")
    flags.DEFINE_string("extra_seeds", "1", "extra seeds for fp32 and mxfp8 (run-to-run spread); '' for none")
    flags.DEFINE_string("telemetry", None, "recipes recording the recipe's own quantization telemetry: none | "
                        "all | comma list (default: all for --config gpu, none for tiny: it triples CPU compile)")
    flags.DEFINE_string("runs_dir", None, "run folders (default runs/gpt_<config>)")
    flags.DEFINE_string("results_dir", None, "comparison outputs (default results/gpt_<config>)")
    flags.DEFINE_string("cache_dir", None, "persistent XLA compilation cache (speeds up re-runs)")
    FLAGS = flags.FLAGS
    app.run(main)
