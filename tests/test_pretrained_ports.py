"""The Flax ports of MiniLM-L6 and glassllm are exact against independent float64 NumPy forwards (and, for glassllm,
against the package's own NumPy code); every matmul goes through the injected dot_general; hooks fire."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SENTENCES = [
    "To be, or not to be: that is the question.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "O Romeo, Romeo! wherefore art thou Romeo?",
]



@pytest.fixture(scope="session")
def minilm_setup(fetched):
    from experiments.models import minilm

    d = minilm.default_dir()
    model, params, tok = minilm.load_minilm(d)
    return model, params, tok, minilm.load_state_dict(d)[0]


@pytest.fixture(scope="session")
def glass_setup(fetched):
    from experiments.data import read_work
    from experiments.models import glassllm

    model, params, tok = glassllm.load_glassllm("en")
    ids = np.stack([tok.encode(read_work(w)[4000:7000])[:128] for w in ("hamlet", "lear")])
    return model, params, tok, glassllm.load_npz("en")[1], ids


def test_minilm_matches_numpy(minilm_setup):
    from experiments.models import minilm, numpy_ref

    model, params, tok, sd = minilm_setup
    ids, mask = tok(SENTENCES)
    assert (mask == 0).any()  # padding is exercised
    got = minilm.embed_texts(model, params, tok, SENTENCES)
    ref = numpy_ref.minilm_embed(sd, ids, mask)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99999, cos
    # padding does not leak: a sentence alone embeds like it does inside the padded batch
    alone = minilm.embed_texts(model, params, tok, SENTENCES[:1])
    np.testing.assert_allclose(alone[0], got[0], atol=2e-5)


def test_minilm_is_a_sentence_encoder(minilm_setup):
    """Sanity of the pretrained weights: a paraphrase is much closer than an unrelated sentence."""
    from experiments.models import minilm

    model, params, tok, _ = minilm_setup
    e = minilm.embed_texts(model, params, tok, ["A man is eating food.", "A man is eating a piece of bread.",
                                                 "The girl is carrying a baby.", "A man is riding a horse."])
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3]


def test_minilm_compact_copy(fetched, minilm_setup):
    """data/minilm_fp16 (what the GPU machine gets) reproduces the float32 model; pruned pieces are refused."""
    from experiments.fetch_data import DATA_DIR
    from experiments.models import minilm

    if not (DATA_DIR / "minilm" / "model.safetensors").is_file():
        pytest.skip("only the compact copy is present")
    model, params, tok, _ = minilm_setup
    m16, p16, tok16 = minilm.load_minilm(DATA_DIR / "minilm_fp16")
    cos = (minilm.embed_texts(model, params, tok, SENTENCES) * minilm.embed_texts(m16, p16, tok16, SENTENCES)).sum(-1)
    assert cos.min() >= 0.9999, cos
    with pytest.raises(ValueError, match="compact vocabulary"):
        tok16(["Quantum chromodynamics of electroweak bosons"])


def test_glassllm_matches_numpy(glass_setup):
    from experiments.models import numpy_ref

    model, params, _, w, ids = glass_setup
    got = np.asarray(jax.jit(model.apply)(params, ids))
    ref = numpy_ref.glassllm_logits(w, ids)
    assert got.shape == (2, 128, 1024)
    assert np.abs(got - ref).max() <= 1e-4


def test_glassllm_reference_matches_upstream(glass_setup):
    """Our NumPy reference and tokenizer agree with glassllm's own code (shipped MIT sources in data/glassllm)."""
    from experiments.fetch_data import DATA_DIR
    from experiments.data import read_work
    from experiments.models import numpy_ref

    src = DATA_DIR / "glassllm" / "upstream_src"
    if not (src / "glassllm" / "model.py").is_file():
        pytest.skip("upstream glassllm sources not in data/glassllm")
    sys.path.insert(0, str(src))
    try:
        import glassllm as upstream

        up_model, up_tok = upstream.load_pretrained("en", DATA_DIR / "glassllm")
    finally:
        sys.path.remove(str(src))
    model, params, tok, w, ids = glass_setup
    np.testing.assert_array_equal(np.asarray(up_tok.encode(read_work("sonnets")[:20000])),
                                  tok.encode(read_work("sonnets")[:20000]))
    text = read_work("hamlet")[:5000]
    assert tok.decode(tok.encode(text)) == text
    up = up_model.forward(ids).data
    assert np.abs(up - numpy_ref.glassllm_logits(w, ids)).max() <= 1e-4


def _counting(counter, key):
    def dg(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        counter[key] += 1
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    return dg


@pytest.mark.parametrize("which", ["minilm", "glassllm"])
def test_every_matmul_uses_injected_dot_general(which, minilm_setup, glass_setup):
    n = {"dg": 0, "attn": 0, "resid": 0}

    def rq(x):
        n["resid"] += 1
        return x

    kw = dict(dot_general=_counting(n, "dg"), attn_dot_general=_counting(n, "attn"), residual_q=rq)
    if which == "minilm":
        model, params, tok, _ = minilm_setup
        args = tok(SENTENCES[:2])
        layers, expect_dg = 6, 6 * 6  # q, k, v, attn-out, FFN in, FFN out
    else:
        model, params, _, _, ids = glass_setup
        args = (ids[:, :16],)
        layers, expect_dg = 4, 4 * 7 + 1  # q, k, v, o, W1, W3, W2 per block + tied output projection
    base = np.asarray(model.apply(params, *args))
    out = np.asarray(model.clone(**kw).apply(params, *args))
    assert n == {"dg": expect_dg, "attn": 2 * layers, "resid": layers}
    np.testing.assert_allclose(out, base, rtol=1e-6, atol=1e-6)  # identity hooks change nothing
    n.update(dg=0, attn=0, resid=0)
    model.clone(residual_q=rq, residual_q_sublayers=True).apply(params, *args)
    assert n["resid"] == 2 * layers


def test_mx_jax_recipe_plugs_in(glass_setup):
    """If mx_jax is importable: its dot_general drops into the port; MXFP8 keeps logits close to FP32."""
    mx_jax = pytest.importorskip("mx_jax")
    if not hasattr(mx_jax, "dot_general"):
        pytest.skip("mx_jax.dot_general not available yet")
    model, params, _, _, ids = glass_setup
    ids = ids[:, :64]
    ref = np.asarray(model.apply(params, ids))
    out = np.asarray(jax.jit(model.clone(dot_general=mx_jax.dot_general(mx_jax.recipe("mxfp8"))).apply)(params, ids))
    cos = (out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref)
    assert 0.99 < cos < 1.0 - 1e-7, cos  # quantized (not a no-op), yet close
