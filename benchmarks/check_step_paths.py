"""Do two operand paths of the kernel GEMMs give the same training step? One step's loss and gradients of the
GPT of bench_train_step (2 layers by default), from the same parameters and tokens, per recipe variant
(e.g. ``mxfp8@pallas`` twice, then ``mxfp8@pallas-nct``): for each, the largest |difference| against the first
variant over all gradient leaves, relative to that leaf's max |g|, and how many leaves are bit for bit equal.
The first variant's second run shows the step's own run-to-run spread (XLA's atomics-based reductions).

    python -m benchmarks.check_step_paths --recipes mxfp8@pallas,mxfp8@pallas,mxfp8@pallas-nct
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_train_step import GPT, make_train_step


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--recipes", default="mxfp8@pallas,mxfp8@pallas,mxfp8@pallas-nct")
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  a = p.parse_args()
  model = GPT(layers=a.layers)
  tok = jax.random.randint(jax.random.key(1), (a.batch, a.seq + 1), 0, model.vocab)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  first = None
  for name in a.recipes.split(","):
    step, st, _ = make_train_step(name, model, tok, ["embed", "head"])

    def grads(params, tok, st=st):
      def loss_fn(p):
        logits = st.apply_fn(p, tok[:, :-1]).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, 1:, None], -1))
      return jax.value_and_grad(loss_fn)(params)

    loss, g = jax.jit(grads)(st.params, tok)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
    if first is None:
      first = (float(loss), leaves)
      print(f"{name:22s} loss {float(loss):.6f}  ({len(leaves)} gradient leaves)", flush=True)
      continue
    rel = [float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-30)) for u, v in zip(leaves, first[1])]
    same = sum(np.array_equal(u, v) for u, v in zip(leaves, first[1]))
    print(f"{name:22s} loss {float(loss):.6f} (diff {float(loss) - first[0]:+.2e})  max rel. grad diff "
          f"{max(rel):.2e}  leaves equal {same}/{len(leaves)}", flush=True)


if __name__ == "__main__":
  main()
