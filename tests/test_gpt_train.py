"""GPT training (experiments/gpt): loss decreases for bf16 and quantized recipes; checkpoint resume is exact."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

TINY = dict(steps=10, batch=4, seq=32, d_model=64, n_layers=1, n_heads=2, lr=1e-2, warmup=2, eval_every=1000,
            eval_batches=0, telemetry_every=0, log_every=5, progress=False)


@pytest.fixture(scope="module")
def ds():
    from experiments.data import load_shakespeare

    try:
        return load_shakespeare("char")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _train(ds, **kw):
    from experiments.gpt.train import make_config, train

    return train(make_config("tiny", **{**TINY, **kw}), ds)


def _losses(s):
    return np.array([r["train_loss"] for r in s["rows"]])


def _recipes():
    import mx_jax

    have = set(getattr(mx_jax, "RECIPES", ()))
    return [r for r in ("mxfp8", "nvfp4") if r in have]


def test_bf16_loss_decreases(ds):
    s = _train(ds, recipe="bf16")
    l = _losses(s)
    assert len(l) == 10 and np.isfinite(l).all()
    assert l[-3:].mean() < l[:3].mean() - 0.3, l


@pytest.mark.parametrize("recipe", _recipes())
def test_quantized_loss_decreases(ds, recipe):
    s = _train(ds, recipe=recipe)
    assert s["dot_source"] != "none"
    l = _losses(s)
    assert np.isfinite(l).all() and l[-3:].mean() < l[:3].mean() - 0.3, l


def test_exact_resume_with_delayed_scaling_state(ds, tmp_path):
    """N steps straight == N/2 steps, checkpoint, restore in a new train() call, N/2 more (fp8 delayed
    scaling, so the '_overwrite_with_gradient' state must be threaded and checkpointed too)."""
    import mx_jax

    recipe = "fp8_delayed" if "fp8_delayed" in getattr(mx_jax, "RECIPES", ()) else "bf16"
    full = _train(ds, recipe=recipe, out_dir=str(tmp_path / "full"), ckpt_every=5)
    half = _train(ds, recipe=recipe, out_dir=str(tmp_path / "resumed"), ckpt_every=5, stop_after=5)
    assert [r["step"] for r in half["rows"]] == list(range(1, 6))
    rest = _train(ds, recipe=recipe, out_dir=str(tmp_path / "resumed"), ckpt_every=5, resume=True)
    assert [r["step"] for r in rest["rows"]] == list(range(1, 11))
    np.testing.assert_array_equal(_losses(rest), _losses(full))
    np.testing.assert_array_equal([r["grad_norm"] for r in rest["rows"]], [r["grad_norm"] for r in full["rows"]])
    assert rest["final_train_loss"] == full["final_train_loss"]


def test_overwrite_with_gradient_state_updates(ds):
    """Delayed-scaling state: the collection's 'gradient' replaces it (amax history fills, scales move)."""
    import mx_jax

    if "fp8_delayed" not in getattr(mx_jax, "RECIPES", ()):
        pytest.skip("mx_jax has no fp8_delayed recipe")
    from experiments.gpt.model import OWG
    from experiments.gpt.train import build_model, init_variables, make_config, make_optimizer, make_steps
    from experiments.data import get_batch

    cfg = make_config("tiny", **{**TINY, "recipe": "fp8_delayed"})
    model, _ = build_model(cfg, ds.tokenizer.vocab_size, probes=False)
    x, y = get_batch(ds.train, 0, 0, cfg.batch, cfg.seq)
    v = init_variables(model, 0, x)
    tx, sched = make_optimizer(cfg)
    state = {"step": jax.numpy.zeros((), "int32"), "params": v["params"], "opt_state": tx.init(v["params"]),
             "colls": {OWG: v[OWG]}}
    before = jax.tree.map(np.asarray, v[OWG])
    step, _ = make_steps(model, tx, sched, None)
    for i in range(2):
        state, m = step(state, *get_batch(ds.train, 0, i, cfg.batch, cfg.seq))
    after = jax.device_get(state["colls"][OWG])
    hist = [a for p, a in jax.tree_util.tree_flatten_with_path(after)[0] if "amax_history" in jax.tree_util.keystr(p)]
    assert hist and all((h[..., :2] > 0).all() for h in hist)       # two amaxes pushed per tensor
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert any(jax.tree.leaves(changed))
