"""A tiny PTX interpreter for the inline-asm decodes of kernels/wo_triton.py and kernels/wo_mgpu.py (CPU tests
of code that only the GPU runs)."""
import jax.numpy as jnp
import numpy as np


def run_ptx(asm: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
  """A tiny PTX interpreter for the b32 integer ops and mul.rn.bf16x2 by a power of two that the asm decodes
  use, on uint32 numpy arrays (an operand of mul.rn.bf16x2 may be an immediate-loaded scalar or an array that
  broadcasts, e.g. a 1-element scale register); returns the $0.. outputs."""
  regs = {f"${i + 1}": v.astype(np.uint64) for i, v in enumerate(inputs)}
  body = asm.strip().lstrip("{").rstrip("}")
  m32 = np.uint64(0xFFFFFFFF)
  val = lambda t: regs[t] if t in regs else np.uint64(int(t, 0))  # noqa: E731 (immediates: 0x.. or decimal)
  for ins in filter(None, (x.strip() for x in body.split(";"))):
    op, *args = ins.replace(",", " ").split()
    if op == ".reg":
      continue
    d, a = args[0], args[1:]
    if op == "mov.b32":
      regs[d] = val(a[0]) & m32
    elif op == "and.b32":
      regs[d] = val(a[0]) & val(a[1])
    elif op == "or.b32":
      regs[d] = val(a[0]) | val(a[1])
    elif op == "shl.b32":
      regs[d] = (val(a[0]) << val(a[1])) & m32
    elif op == "shr.b32":
      regs[d] = val(a[0]) >> val(a[1])
    elif op == "mul.rn.bf16x2":  # exact for a power-of-two factor when the product is a normal bf16
      x, k = val(a[0]), val(a[1])
      halves = []
      for sh in (0, 16):
        xb = ((x >> np.uint64(sh)) & np.uint64(0xFFFF)).astype(np.uint16).view(jnp.bfloat16).astype(np.float64)
        kb = ((np.atleast_1d(np.asarray(k, np.uint64)) >> np.uint64(sh)) & np.uint64(0xFFFF)).astype(np.uint16)
        kb = kb.view(jnp.bfloat16).astype(np.float64)
        with np.errstate(over="ignore"):  # a product past bf16's range rounds to inf, as on the GPU
          prod = np.asarray((xb * kb).astype(jnp.bfloat16))
        halves.append(prod.view(np.uint16).astype(np.uint64) << np.uint64(sh))
      regs[d] = halves[0] | halves[1]
    else:
      raise NotImplementedError(op)
  return [regs[f"${i}"] for i in range(sum(1 for r in regs if r.startswith("$")) - len(inputs))]
