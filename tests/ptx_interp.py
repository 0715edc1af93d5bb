"""A tiny PTX interpreter for the inline-asm decodes of kernels/wo_triton.py and kernels/wo_mgpu.py (CPU tests
of code that only the GPU runs)."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np


def run_ptx(asm: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
  """A tiny PTX interpreter for the b32 integer ops, prmt, mul.rn.bf16x2 (exact products) and the E4M3 -> f16 ->
  f32 -> bf16 conversions that the asm decodes use, on uint32 numpy arrays (an operand of mul.rn.bf16x2 may be
  an immediate-loaded scalar or an array that broadcasts, e.g. a 1-element scale register); returns the $0..
  outputs."""
  regs = {f"${i + 1}": v.astype(np.uint64) for i, v in enumerate(inputs)}
  body = asm.strip().lstrip("{").rstrip("}")
  m32 = np.uint64(0xFFFFFFFF)
  val = lambda t: regs[t] if t in regs else np.uint64(int(t, 0))  # noqa: E731 (immediates: 0x.. or decimal)
  for ins in filter(None, (x.strip() for x in body.split(";"))):
    op, *args = ins.replace(",", " ").split()
    if op == ".reg":
      continue
    if op == "mov.b32" and args[0].startswith("{"):  # unpack a b32 into two b16: {lo, hi}
      src = val(args[2])
      lo, hi = src & np.uint64(0xFFFF), (src >> np.uint64(16)) & np.uint64(0xFFFF)
      regs[args[0].strip("{}")], regs[args[1].strip("{}")] = lo, hi
      continue
    d, a = args[0], args[1:]
    if op == "cvt.u16.u32":
      regs[d] = val(a[0]) & np.uint64(0xFFFF)
    elif op == "cvt.rn.f16x2.e4m3x2":  # byte 0 -> the low f16, byte 1 -> the high one (exact)
      x = val(a[0])
      halves = []
      for sh in (0, 8):
        b = ((x >> np.uint64(sh)) & np.uint64(0xFF)).astype(np.uint8).view(ml_dtypes.float8_e4m3fn)
        halves.append(b.astype(np.float16).view(np.uint16).astype(np.uint64) << np.uint64(2 * sh))
      regs[d] = halves[0] | halves[1]
    elif op == "cvt.f32.f16":
      h = (val(a[0]) & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16)
      regs[d] = h.astype(np.float32).view(np.uint32).astype(np.uint64)
    elif op == "cvt.rn.bf16x2.f32":  # d = {bf16(a) in the high half, bf16(b) in the low half}
      hi, lo = (np.asarray(val(t)).astype(np.uint32).view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
                .astype(np.uint64) for t in a[:2])
      regs[d] = (hi << np.uint64(16)) | lo
    elif op == "sub.rn.f16x2":  # exact differences only (the MXINT8 decode's 1024 + j - 1152)
      x, y = val(a[0]), val(a[1])
      halves = []
      for sh in (0, 16):
        xs, ys = (((v >> np.uint64(sh)) & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16).astype(np.float64)
                  for v in (np.atleast_1d(x), np.atleast_1d(y)))
        halves.append((xs - ys).astype(np.float16).view(np.uint16).astype(np.uint64) << np.uint64(sh))
      regs[d] = halves[0] | halves[1]
    elif op == "prmt.b32":  # default mode: byte i of d = byte (selector nibble i) of {b, a} (a = bytes 0..3)
      x, y, sel = val(a[0]), val(a[1]), int(a[2], 0)
      pool = x | (y << np.uint64(32))
      out = np.uint64(0)
      for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        if nib & 8:
          raise NotImplementedError("prmt sign replication")
        out = out | (((pool >> np.uint64(8 * nib)) & np.uint64(0xFF)) << np.uint64(8 * i))
      regs[d] = out
    elif op == "mov.b32":
      regs[d] = val(a[0]) & m32
    elif op == "and.b32":
      regs[d] = val(a[0]) & val(a[1])
    elif op == "or.b32":
      regs[d] = val(a[0]) | val(a[1])
    elif op == "shl.b32":
      regs[d] = (val(a[0]) << val(a[1])) & m32
    elif op == "shr.b32":
      regs[d] = val(a[0]) >> val(a[1])
    elif op == "mul.rn.bf16x2":  # RNE of the float64 product: right wherever the product is exact in float64
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
