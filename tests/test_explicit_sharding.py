"""JAX's explicit sharding (``jax.make_mesh``'s default axis type, under ``jax.set_mesh``) on 8 fake CPU devices:
the quantized dot_general forwards ``out_sharding`` and gives each gradient its primal's sharding, as JAX's own
dot_general transpose rule does. Without that, the weight-gradient GEMM (contracting the data-parallel batch
axis) is rejected by JAX ("Contracting dimensions are sharded and it is ambiguous..."); plain jnp needs the same
mesh context. Values: the data-parallel input gradient bit for bit, the weight gradient to f32 reassociation."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    import mx_jax
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    dn = (((2,), (0,)), ((), ()))
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (8, 32, 64))
    w1 = jax.random.normal(k[1], (64, 128)) * 0.1
    w2 = jax.random.normal(k[2], (128, 64)) * 0.1

    def loss(x, w1, w2, shard, dg):
        h = jax.nn.gelu(dg(x, w1, dn))
        # row parallel: contracts the model-sharded axis, so the caller names the output sharding
        out = dg(h, w2, dn, out_sharding=P("data", None, None) if shard else None)
        return jnp.mean(out ** 2)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
    for recipe in os.environ["MX_RECIPES"].split(","):
        dg = mx_jax.dot_general(recipe)
        ref = g(x, w1, w2, False, dg)
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, P("data", None, None)))
            w1s = jax.device_put(w1, NamedSharding(mesh, P(None, "model")))
            w2s = jax.device_put(w2, NamedSharding(mesh, P("model", None)))
            got = g(xs, w1s, w2s, True, dg)
            gx_dp, gw_dp, _ = g(xs, w1, w2, True, dg)  # data parallel only: replicated weights
        assert got[0].sharding.spec == P("data", None, None), got[0].sharding
        assert got[1].sharding.spec == P(None, "model"), got[1].sharding
        assert got[2].sharding.spec == P("model", None), got[2].sharding
        for a, b in zip(got, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(gx_dp), np.asarray(ref[0]))
        print("OK", recipe)
""")


# Not nvfp4 here: its gradients are stochastically rounded with a key drawn from the tensor's bits, and the
# row-parallel output's all-reduce reassociates its last bits, so the draws (not the sharding) differ.
RECIPES = ("mxfp8", "fp8_current", "mxfp4_weights")


def test_explicit_sharding_grads():
  r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=400,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", MX_RECIPES=",".join(RECIPES)),
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert r.returncode == 0 and r.stdout.count("OK") == len(RECIPES), r.stdout[-2000:] + r.stderr[-4000:]
