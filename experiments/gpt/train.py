"""Train the Llama-style GPT (experiments/gpt/model.py) on Shakespeare with one quantization recipe.

    python -m experiments.gpt.train --recipe mxfp8 --config tiny --out_dir runs/gpt/mxfp8
    python -m experiments.gpt.train --recipe fp8_delayed --config gpu --steps 2000 --norm mx
    python -m experiments.gpt.train --out_dir runs/gpt/mxfp8 --resume     # continue from the last checkpoint

Step: AdamW (warm-up + cosine, clip 1.0, decay on matrices only), fp32 master weights, bf16 compute (fp32 for
the fp32 recipe), ``jax.jit`` with the state donated. Collections other than "params" are threaded
generically: "_overwrite_with_gradient" (delayed-scaling state, recipe telemetry; Flax fp8 convention) is
differentiated and its gradient replaces it; any other collection is applied as mutable and merged back.

Outputs in --out_dir: metrics.csv (step, train_loss, val_loss, tokens_per_s, lr, grad_norm), summary.json,
telemetry.jsonl (per-tensor log2 amax of weights / activations / their gradients, plus the recipe's own
quantization telemetry when it keeps one) and ckpt/ (orbax). Batches depend only on (seed, step), so a
resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.gpt.model import GPT, OWG, GPTConfig, count_params, quant_for_recipe

TRANSIENT = ("probes", "perturbations", "intermediates")  # rebuilt every step, never stored


@dataclasses.dataclass
class TrainConfig:
    recipe: str = "bf16"
    steps: int = 200
    batch: int = 16
    seq: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    lr: float = 3e-3
    warmup: int = 20
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    norm: str = "rms"
    tokenizer: str = "char"
    out_dir: str | None = None
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 0          # 0: only the final checkpoint (when out_dir is set); -1: none at all
    resume: bool = False
    overwrite: bool = False      # without resume: delete out_dir's old checkpoints instead of refusing
    log_every: int = 10          # host fetch / CSV / progress-bar interval
    telemetry_every: int = 0     # 0: off; else probes each N steps (and at the last step)
    recipe_telemetry: bool = False  # ask the recipe for its quantization telemetry (scale histograms etc.)
    quantize_head: bool = False
    progress: bool = True
    stop_after: int | None = None  # stop (checkpointing) after this many steps: simulates an interruption
    mesh: str = ""               # e.g. "data=2": data parallel over a jax.sharding.Mesh (see _mesh)


CONFIGS = {
    # ≈ 110k params, char vocab: every recipe (and its compile) in ~20 s on 2 CPU cores.
    "tiny": dict(steps=150, batch=16, seq=64, d_model=64, n_layers=2, n_heads=2, lr=3e-3, warmup=15,
                 eval_every=50, eval_batches=4, telemetry_every=25),
    # ≈ 25M params (8 × 512, SwiGLU 1376), for one H100: 12M tokens; each recipe ≤ 8 min (measured on an
    # H100 with recipe telemetry: bf16 25 ms/step, fp8_delayed 80, mxfp8 130, nvfp4 200; compile 11-35 s).
    "gpu": dict(steps=1500, batch=32, seq=256, d_model=512, n_layers=8, n_heads=8, lr=1e-3, warmup=100,
                eval_every=250, eval_batches=16, telemetry_every=100, log_every=50),
}


def make_config(config: str = "tiny", **overrides) -> TrainConfig:
    kw = dict(CONFIGS[config])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)


# ----------------------------------------------------------------------------------------- pieces
def build_model(cfg: TrainConfig, vocab: int, probes: bool):
    quant = quant_for_recipe(cfg.recipe, telemetry=cfg.recipe_telemetry)
    mcfg = GPTConfig(vocab_size=vocab, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                     norm=cfg.norm, norm_fmt=quant.norm_fmt, dtype=quant.compute_dtype,
                     quantize_head=cfg.quantize_head, probes=probes)
    return GPT(mcfg, quant), quant


def make_optimizer(cfg: TrainConfig):
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1),
                                               end_value=cfg.lr * cfg.min_lr_frac)
    decay = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731  matrices and embeddings only
        lambda path, _: getattr(path[-1], "key", "") in ("kernel", "embedding"), p)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip),
                     optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay))
    return tx, sched


def init_variables(model: GPT, seed: int, x0):
    """``model.init`` under jit, returning no forward-dependent output ("probes"), so XLA drops the forward
    pass: initialisation costs a fraction of a train-step compile instead of an op-by-op forward."""
    if model not in _INITS:
        _INITS[model] = jax.jit(lambda k, x: {c: v for c, v in model.init(k, x).items() if c != "probes"})
    return _INITS[model](jax.random.key(seed), x0)


_INITS: dict = {}


def _split(variables) -> tuple[Any, dict]:
    colls = {k: v for k, v in variables.items() if k != "params" and k not in TRANSIENT}
    return variables["params"], colls


def _log2_amax(x, lead_axes: int = 0):
    """log2 of max|x| (per leading index for scanned, layer-stacked tensors); -inf-safe."""
    a = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=tuple(range(lead_axes, x.ndim)))
    return jnp.log2(jnp.maximum(a, 1e-38))


def _stats(tree, stacked: bool):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _log2_amax(x, 1 if stacked and "blocks" in jax.tree_util.keystr(path) else 0), tree)


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_steps(model: GPT, tx, sched, pert_shapes):
    """(train_step, eval_step), both pure; train_step donates its state."""
    probes = pert_shapes is not None
    stacked = model.cfg.scan

    def train_step(state, x, y):
        params, colls = state["params"], state["colls"]
        owg = {OWG: colls[OWG]} if OWG in colls else {}
        other = {k: v for k, v in colls.items() if k != OWG}
        mutable = list(other) + (["probes"] if probes else [])
        diff = {"params": params, "owg": owg}
        if probes:
            diff["pert"] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), pert_shapes)

        def loss_fn(d):
            variables = {"params": d["params"], **d["owg"], **other}
            if probes:
                variables["perturbations"] = d["pert"]
            logits, mut = model.apply(variables, x, mutable=mutable)
            return xent(logits, y), mut

        (loss, mut), g = jax.value_and_grad(loss_fn, has_aux=True)(diff)
        updates, opt_state = tx.update(g["params"], state["opt_state"], params)
        new_colls = {**colls, **{k: v for k, v in mut.items() if k in other}, **g["owg"]}
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(g["params"]), "lr": sched(state["step"])}
        if probes:
            metrics["probe"] = {"w": _stats(params, stacked), "gw": _stats(g["params"], stacked),
                                "a": jax.tree.map(lambda a: jnp.log2(jnp.maximum(a, 1e-38)), mut["probes"]),
                                "ga": _stats(g["pert"], stacked)}
        new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
               "opt_state": opt_state, "colls": new_colls}
        return new, metrics

    def eval_step(params, colls, x, y):
        return xent(model.apply({"params": params, **colls}, x), y)

    return jax.jit(train_step, donate_argnums=(0,)), jax.jit(eval_step)


_STEPS: dict = {}
_STEP_KEYS = ("steps", "lr", "warmup", "min_lr_frac", "weight_decay", "clip")


def val_windows(ids: np.ndarray, n_batches: int, batch: int, seq: int):
    """n_batches fixed batches of windows spread evenly over the validation text (same for every recipe)."""
    n = n_batches * batch
    starts = np.linspace(0, len(ids) - seq - 2, n).astype(np.int64)
    w = np.asarray(ids, np.int32)[starts[:, None] + np.arange(seq + 1)]
    return [(w[i:i + batch, :-1], w[i:i + batch, 1:]) for i in range(0, n, batch)]


def _flat(tree, prefix: str) -> dict[str, float]:
    out = {}
    for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = prefix + "/".join(str(p.key) for p in path if hasattr(p, "key"))  # drops sow's tuple index
        v = np.asarray(v, np.float64).reshape(-1)
        if v.size == 1:
            out[name] = float(v[0])
        else:
            out.update({f"{name}[{i}]": float(x) for i, x in enumerate(v)})
    return out


def recipe_telemetry(colls) -> dict[str, dict]:
    """Recipe telemetry vectors (mx_jax.telemetry: saturated, flushed, 256-bin scale-exponent histogram) kept
    in the state collection, as {path: {"sat", "flush", "hist": {exponent: fraction}}} (layers split out)."""
    out = {}
    for path, v in jax.tree_util.tree_flatten_with_path(colls.get(OWG, {}))[0]:
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        if "telemetry" not in name:
            continue
        v = np.asarray(v, np.float64)
        rows = v.reshape(-1, v.shape[-1])
        for i, r in enumerate(rows):
            nz = np.nonzero(r[2:])[0]
            out[f"{name}[{i}]" if len(rows) > 1 else name] = {
                "sat": r[0], "flush": r[1], "hist": {int(k) - 127: round(float(r[2 + k]), 6) for k in nz}}
    return out


# ----------------------------------------------------------------------------------------- mesh
def _mesh(spec: str):
    """"data=N" (or "data=-1": all devices) -> a 1-axis Mesh; None for "". The train state is replicated
    and each batch is split along "data" with NamedSharding; XLA inserts the gradient all-reduce."""
    if not spec:
        return None
    from jax.sharding import Mesh

    name, _, n = spec.partition("=")
    if name != "data" or not n.lstrip("-").isdigit():
        raise ValueError(f"mesh must look like 'data=N' (N devices, -1 for all); got {spec!r}")
    n = len(jax.devices()) if int(n) == -1 else int(n)
    if not 1 <= n <= len(jax.devices()):
        raise ValueError(f"mesh asks for {n} devices; {len(jax.devices())} are visible")
    return Mesh(np.array(jax.devices()[:n]), ("data",))


def _place(mesh, state, batch):
    from jax.sharding import NamedSharding, PartitionSpec as P

    if batch.shape[0] % mesh.size:
        raise ValueError(f"batch {batch.shape[0]} must be a multiple of the mesh's {mesh.size} devices")
    return jax.device_put(state, NamedSharding(mesh, P()))


def _shard_batch(mesh, *arrays):
    from jax.sharding import NamedSharding, PartitionSpec as P

    return [jax.device_put(a, NamedSharding(mesh, P("data", None))) for a in arrays]


# ----------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, ds=None) -> dict:
    """Runs (or resumes) one training run; returns the summary (as written to out_dir/summary.json) plus
    "rows" (metrics), "telemetry" (records) and "state" (final params, opt_state, collections, step)."""
    from experiments.data import get_batch, load_shakespeare

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    t_start = time.time()
    ds = ds or load_shakespeare(cfg.tokenizer)
    vocab = ds.tokenizer.vocab_size
    probes = cfg.telemetry_every > 0
    model, quant = build_model(cfg, vocab, probes)
    tx, sched = make_optimizer(cfg)
    x0 = np.zeros((cfg.batch, cfg.seq), np.int32)
    variables = init_variables(model, cfg.seed, x0)
    params, colls = _split(variables)
    pert_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                               variables["perturbations"]) if probes else None
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "colls": colls}
    key = (model, tuple(getattr(cfg, k) for k in _STEP_KEYS), jax.tree.structure(pert_shapes),
           tuple(jax.tree.leaves(pert_shapes)))
    if key not in _STEPS:  # reuse jitted (and compiled) steps across train() calls in one process
        _STEPS[key] = make_steps(model, tx, sched, pert_shapes)
    train_step, eval_step = _STEPS[key]
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out and not cfg.resume and (out / "ckpt").exists():
        if not cfg.overwrite:
            raise FileExistsError(f"{out / 'ckpt'} exists: pass --resume to continue or --overwrite to restart")
        import shutil

        shutil.rmtree(out / "ckpt")
    mgr = _ckpt_manager(out, cfg) if out and cfg.ckpt_every >= 0 else None
    start = 0
    if cfg.resume and mgr is not None and mgr.latest_step() is not None:
        state = _restore(mgr, state)
        start = int(state["step"])
    mesh = _mesh(cfg.mesh)
    if mesh is not None:
        state = _place(mesh, state, x0)
    rows = _read_rows(out / "metrics.csv", start) if out and cfg.resume else []
    tele = _read_jsonl(out / "telemetry.jsonl", start) if out and cfg.resume else []
    val = val_windows(ds.val, cfg.eval_batches, cfg.batch, cfg.seq)

    def evaluate(st):
        if not val:
            return float("nan")
        return float(np.mean([float(eval_step(st["params"], st["colls"], x, y)) for x, y in val]))

    end = min(cfg.steps, start + cfg.stop_after) if cfg.stop_after else cfg.steps
    pbar = _pbar(cfg, start)
    pending, t_int, compile_s, steady = [], time.time(), None, []

    def flush():  # fetch the pending steps' metrics (one host sync per interval) into rows
        nonlocal pending, t_int
        if not pending:
            return
        fetched = jax.device_get([(s, {k: mm[k] for k in ("loss", "grad_norm", "lr")}) for s, mm in pending])
        dt = time.time() - t_int
        tps = len(pending) * cfg.batch * cfg.seq / dt if dt > 0 else float("nan")
        steady.append(tps)
        for s, mm in fetched:
            rows.append({"step": s + 1, "train_loss": float(mm["loss"]), "val_loss": "",
                         "tokens_per_s": round(tps, 1), "lr": float(mm["lr"]), "grad_norm": float(mm["grad_norm"])})
        pending, t_int = [], time.time()
        if pbar is not None:
            pbar.set_postfix(loss=f"{rows[-1]['train_loss']:.3f}", tok_s=f"{tps:,.0f}")

    for step in range(start, end):
        x, y = get_batch(ds.train, cfg.seed, step, cfg.batch, cfg.seq)
        if mesh is not None:
            x, y = _shard_batch(mesh, x, y)
        state, m = train_step(state, x, y)
        if compile_s is None:  # the first step traces and compiles; keep it out of tokens/s
            jax.block_until_ready(m["loss"])
            compile_s = time.time() - t_int
            rows.append({"step": step + 1, "train_loss": float(m["loss"]), "val_loss": "", "tokens_per_s": "",
                         "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"])})
            t_int = time.time()
        else:
            pending.append((step, m))
        done = step + 1
        if probes and (done % cfg.telemetry_every == 0 or done == cfg.steps or step == 0):
            rec = {"step": done, **{k: _flat(v, "") for k, v in jax.device_get(m["probe"]).items()}}
            rt = recipe_telemetry(jax.device_get(state["colls"]))
            tele.append({**rec, "recipe": rt} if rt else rec)
        is_eval = done % cfg.eval_every == 0 or done == cfg.steps
        is_ckpt = mgr is not None and (done == end or (cfg.ckpt_every and done % cfg.ckpt_every == 0))
        if done % cfg.log_every == 0 or done == end or is_eval or is_ckpt:
            flush()
        if is_eval:
            rows[-1]["val_loss"] = evaluate(state)
            t_int = time.time()
        if pbar is not None:
            pbar.update(1)
        if is_ckpt:  # metrics first, so a run killed after this checkpoint resumes with its rows on disk
            _write_outputs(out, rows, tele)
            mgr.save(done, args=_save_args(state), force=True)
            t_int = time.time()
    if pbar is not None:
        pbar.close()
    if mgr is not None:
        mgr.wait_until_finished()
    vals = [r["val_loss"] for r in rows if r["val_loss"] != ""]
    summary = {
        "recipe": cfg.recipe, "norm": cfg.norm, "steps_done": end, "params": count_params(state["params"]),
        "final_train_loss": float(np.mean([r["train_loss"] for r in rows[-max(1, len(rows) // 10):]]))
        if rows else None,
        "final_val_loss": vals[-1] if vals else None, "compile_s": compile_s,
        "tokens_per_s": float(np.median(steady)) if steady else None, "wall_s": time.time() - t_start,
        "dot_source": quant.source, "norm_impl": _norm_impl(cfg), "backend": jax.default_backend(),
        "config": dataclasses.asdict(cfg),
    }
    if out:
        _write_outputs(out, rows, tele)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary.update(rows=rows, telemetry=tele, state=state)
    return summary


def _norm_impl(cfg: TrainConfig) -> str:
    from experiments.gpt.model import mxnorm_class

    return "rms" if cfg.norm == "rms" else ("mx" if mxnorm_class() is not None else "rms (MXNorm missing)")


def _pbar(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.recipe}/{cfg.norm}", dynamic_ncols=True,
                mininterval=1.0)


# ---------------------------------------------------------------------------------- checkpoint / io
def _ckpt_manager(out: Path, cfg: TrainConfig):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager((out / "ckpt").absolute(), options=opts)


def _save_args(state):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(state)


def _restore(mgr, like):
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mgr.restore(mgr.latest_step(), args=ocp.args.StandardRestore(abstract))


def _write_outputs(out: Path, rows, tele):
    out.mkdir(parents=True, exist_ok=True)
    _write_rows(out / "metrics.csv", rows)
    (out / "telemetry.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tele))


FIELDS = ["step", "train_loss", "val_loss", "tokens_per_s", "lr", "grad_norm"]


def _write_rows(path: Path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)


def read_metrics(path) -> list[dict]:
    with open(path) as f:
        return [{k: (float(v) if v not in ("", None) else "") for k, v in r.items()} for r in csv.DictReader(f)]


def _read_rows(path: Path, upto: int):
    if not path.is_file():
        return []
    return [dict(r, step=int(r["step"])) for r in read_metrics(path) if int(r["step"]) <= upto]


def _read_jsonl(path: Path, upto: int):
    if not path.is_file():
        return []
    return [t for t in map(json.loads, path.read_text().splitlines()) if t["step"] <= upto]


# ----------------------------------------------------------------------------------------- CLI
def main(argv):
    del argv
    f = FLAGS
    if f.distributed:  # one process per host (SLURM / MPI / TPU pods: detected from the environment)
        jax.distributed.initialize()
    over = {k: getattr(f, k) for k in TrainConfig.__dataclass_fields__ if k in f}
    cfg = make_config(f.config, **over)
    if cfg.out_dir is None:
        cfg.out_dir = f"runs/gpt/{cfg.recipe}_{cfg.norm}"
    s = train(cfg)
    print(json.dumps({k: v for k, v in s.items() if k not in ("rows", "telemetry", "state", "config")}, default=str))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("config", "tiny", list(CONFIGS), "size preset; other flags override it")
    flags.DEFINE_string("recipe", None, "fp32 | bf16 | fp8_current | fp8_delayed | mxfp8 | mxfp6 | ...")
    for name in ("steps", "batch", "seq", "d_model", "n_layers", "n_heads", "warmup", "seed", "eval_every",
                 "eval_batches", "ckpt_every", "log_every", "telemetry_every", "stop_after"):
        flags.DEFINE_integer(name, None, f"override the preset's {name}")
    flags.DEFINE_float("lr", None, "peak learning rate")
    flags.DEFINE_enum("norm", None, ["rms", "mx"], "RMSNorm or MXNorm")
    flags.DEFINE_string("out_dir", None, "output folder (default runs/gpt/<recipe>_<norm>)")
    flags.DEFINE_bool("resume", None, "continue from the latest checkpoint in out_dir")
    flags.DEFINE_bool("overwrite", None, "restart from scratch even if out_dir has checkpoints")
    flags.DEFINE_bool("recipe_telemetry", None, "record the recipe's quantization telemetry")
    flags.DEFINE_bool("quantize_head", None, "LM head through the recipe too")
    flags.DEFINE_bool("progress", None, "tqdm progress bar (default on)")
    flags.DEFINE_enum("tokenizer", None, ["char", "bpe"], "tokenizer")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host launch)")
    flags.DEFINE_string("mesh", None, "data-parallel mesh, e.g. 'data=2' (data=-1: every device)")
    FLAGS = flags.FLAGS
    app.run(main)
