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
def ds(fetched):
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
    return [r for r in ("mxfp8",) if r in have]


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
    for a, b in zip(jax.tree.leaves(rest["state"]), jax.tree.leaves(full["state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if recipe == "fp8_delayed":  # the '_overwrite_with_gradient' gradient replaced the state: histories filled
        from experiments.gpt.model import OWG

        owg = jax.tree_util.tree_flatten_with_path(jax.device_get(full["state"]["colls"][OWG]))[0]
        hist = [a for p, a in owg if "amax_history" in jax.tree_util.keystr(p)]
        assert hist and all((h[..., :10] > 0).all() for h in hist)   # one amax pushed per step, 10 steps
