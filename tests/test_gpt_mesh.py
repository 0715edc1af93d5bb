"""The GPT trainer's --mesh data parallelism on 4 fake CPU devices gives the single-device loss curve."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import numpy as np
    from experiments.gpt.train import make_config, train
    # one layer, short windows, no eval: data parallelism does not depend on depth (compile time does)
    kw = dict(steps=6, batch=8, seq=32, n_layers=1, eval_every=1000, eval_batches=0, telemetry_every=0,
              progress=False, log_every=1)
    a = train(make_config("tiny", recipe="mxfp8", **kw))
    b = train(make_config("tiny", recipe="mxfp8", mesh="data=4", **kw))
    la = np.array([r["train_loss"] for r in a["rows"]]); lb = np.array([r["train_loss"] for r in b["rows"]])
    np.testing.assert_allclose(lb, la, rtol=2e-4)  # gradient all-reduce reorders f32 sums
    try:
        # recipe as above: train() builds the same model, so its (compiled) init is reused before the mesh check
        make_config("tiny", mesh="model=2"); train(make_config("tiny", recipe="mxfp8", mesh="model=2", **kw))
    except ValueError as e:
        assert "mesh must look like" in str(e)
    else:
        raise AssertionError("bad mesh accepted")
    print("MESH_OK", la[-1], lb[-1])
""")


# Slow (bash scripts/test_all.sh): the training script on a 4-device mesh. The library's own DP x TP step is
# checked against the unsharded one in CI by tests/test_sharding.py.
@pytest.mark.slow
def test_data_parallel_mesh_matches_single_device(fetched):  # the subprocess reads the fetched Shakespeare
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=400, cwd=root,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root))
  assert "MESH_OK" in r.stdout, (r.stdout[-2000:], r.stderr[-4000:])
