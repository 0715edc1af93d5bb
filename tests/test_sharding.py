"""Scale-out on 8 fake CPU devices (JAX's own sharding: Mesh + NamedSharding under jit).

A DP x TP (4 x 2) Megatron-style MLP train step (column-parallel up-projection, row-parallel
down-projection) under every MX recipe gives the same loss and gradients as the unsharded step: bit for
bit for the data-parallel / column-parallel math, and to f32 reassociation for the row-parallel
contraction (its partial sums are all-reduced). The quantized dot_general is plain jnp/lax, so GSPMD
partitions it; an MX block that would straddle devices is handled by XLA resharding, never silently.
"""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, traceback
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import mx_jax
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    dn = (((1,), (0,)), ((), ()))

    def check(RECIPE):
        dg = mx_jax.dot_general(RECIPE)

        def loss_fn(p, x, y):
            h = jax.nn.gelu(dg(x, p["w1"], dn))          # column parallel: w1 (D, F) sharded on F
            out = dg(h, p["w2"], dn)                      # row parallel: w2 (F, D) sharded on F (= K)
            return jnp.mean((out - y) ** 2)

        step = jax.jit(jax.value_and_grad(loss_fn))
        k = jax.random.split(jax.random.key(0), 4)
        D, F, B = 64, 256, 32
        p = {"w1": jax.random.normal(k[0], (D, F)) * 0.1, "w2": jax.random.normal(k[1], (F, D)) * 0.1}
        x = jax.random.normal(k[2], (B, D))
        y = jax.random.normal(k[3], (B, D))
        ref_loss, ref_g = step(p, x, y)
        ps = {"w1": jax.device_put(p["w1"], NamedSharding(mesh, P(None, "model"))),
              "w2": jax.device_put(p["w2"], NamedSharding(mesh, P("model", None)))}
        xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        ys = jax.device_put(y, NamedSharding(mesh, P("data", None)))
        loss, g = step(ps, xs, ys)
        assert g["w1"].sharding.spec == P(None, "model"), g["w1"].sharding
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
        for name in ("w1", "w2"):
            np.testing.assert_allclose(np.asarray(g[name]), np.asarray(ref_g[name]), rtol=1e-5, atol=1e-7)
        # Pure data parallel (replicated weights): the per-example math is identical -> bit for bit forward.
        out_dp = jax.jit(lambda x: dg(x, p["w1"], dn))(xs)
        np.testing.assert_array_equal(np.asarray(out_dp), np.asarray(jax.jit(lambda x: dg(x, p["w1"], dn))(x)))
        print("OK", RECIPE, float(loss), float(ref_loss))

    for RECIPE in os.environ["MX_RECIPES"].split(","):  # each recipe on its own: one failing does not stop the rest
        try:
            check(RECIPE)
        except Exception:
            print(f"FAILED {RECIPE}:", file=sys.stderr)
            traceback.print_exc()
            print(f"END {RECIPE}", file=sys.stderr)
        sys.stdout.flush()
""")

RECIPES = ["mxfp8", "mxfp4_weights", "nvfp4"]


@pytest.fixture(scope="module")
def run():
  """One subprocess checks every recipe (each python + jax start-up is ~1-2 s of a test's time)."""
  return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", MX_RECIPES=",".join(RECIPES)),
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("recipe", RECIPES)
def test_dp_tp_train_step_matches_unsharded(run, recipe):
  r = run
  err = r.stderr
  if f"FAILED {recipe}:" in err:  # this recipe's own traceback
    err = err[err.index(f"FAILED {recipe}:"):].split(f"END {recipe}")[0]
  assert f"OK {recipe} " in r.stdout, err[-4000:]
