"""kernels/wo_mgpu.py: the Mosaic GPU weight-only GEMM (MXFP4, NVFP4, MXFP8, MXFP6, MXINT8), on CPU.

The weight layout (words in wgmma-fragment thread order, scale bytes) is checked against index arithmetic
written out from the module docstring; the interpreter's jnp decode against float64 dequantization; the inline
PTX decode (only the GPU runs it) by a small PTX interpreter (tests/ptx_interp.py) against float64 values
rounded to bf16; the kernel in Mosaic GPU's interpret mode against a float64 matmul of the dequantized weight
(|out - ref| <= 1e-5 * (|x| @ |W|^T) element-wise: FP32 accumulation order, the decoded weights being exact).
"""
import os

# Mosaic GPU's interpreter parks one host thread per simulated warpgroup inside XLA:CPU callbacks (see
# tests/test_kernels_matmul.py): NPROC must size XLA's pool before the CPU backend starts.
if int(os.environ.get("NPROC", "0") or 0) < 32:
  os.environ["NPROC"] = "32"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mx_jax  # noqa: E402
from kernels import wo_mgpu as wm  # noqa: E402
from kernels import wo_mgpu_decode as wmd  # noqa: E402
from mx_jax.matmul import mx_weight_only_matmul  # noqa: E402

from ptx_interp import run_ptx  # noqa: E402
from wo_reference import check_wo, wo_ref  # noqa: E402

N, K = 200, 320  # N not a multiple of 64, K not a multiple of 32 * steps (steps=4: padded to 384)
RTOL = 1e-5
# The FP4 half-word layout (wo_triton.pack_fp4), written out: code g's magnitude bits (e1 e0 m) start at bit
# MAG[g], its sign bit is SIGN[g].
MAG, SIGN = (6, 3, 0, 9), (15, 12, 13, 14)
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)
E2M1_SIGNED = np.concatenate([E2M1, -E2M1])  # value of code c (bit 3 the sign)

CFG_WG1 = wm.MgpuWOConfig(steps=4, max_concurrent_steps=3, wgs=1)
CFG_WG2 = wm.MgpuWOConfig(steps=4, max_concurrent_steps=2, wgs=2)


def _q(n=N, k=K, big=False, seed=0):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32) * 0.5
  if big:  # scale bytes above 134: the unfolded decode
    w = w * 2.0 ** 20
  return mx_jax.quantize(w, "mxfp4_e2m1", axis=1)


def _x(m, k=K, seed=1):
  return jax.random.normal(jax.random.key(seed), (m, k), jnp.float32).astype(jnp.bfloat16)


def _ref(x, q):
  return wo_ref(x, q)


def _check(out, x, q, rtol=RTOL):
  check_wo(out, x, q, rtol)


@pytest.fixture(scope="module")
def weights():
  """{fold_ok: (QArray, prepared steps=4 weight)}: normal-range scales (fold_ok) and scale bytes > 134."""
  out = {}
  for big in (False, True):
    q = _q(big=big)
    out[not big] = (q, wm.prepare_weight_mgpu(q, steps=4))
  return out


# ------------------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 4])
def test_pack_words_layout(steps):
  """Word 2i + h (i = 32 w + 4 q + t) of (tile nt, block kb) packs row 64 nt + 16 w + 8 h + q's codes at
  columns 32 kb + 8 g + 2 t + v (half v, code g at MAG[g] / SIGN[g]) and sits at [kb // S, nt 8S + 8 (kb % S)
  + j // 32, j % 32]."""
  n, k = 128, 1024
  codes = np.random.default_rng(steps).integers(0, 16, size=(n, k)).astype(np.uint8)
  got = np.asarray(wm.pack_words(jnp.asarray(codes), steps))
  ntiles, nblocks = n // 64, k // 32
  assert got.dtype == np.uint32 and got.shape == (nblocks // steps, ntiles * 8 * steps, 32)
  nt, kb, w, q, t, h = np.indices((ntiles, nblocks, 4, 8, 4, 2)).reshape(6, -1)
  j = 2 * (32 * w + 4 * q + t) + h
  row = 64 * nt + 16 * w + 8 * h + q
  want = np.zeros(nt.shape, np.uint64)
  for v in range(2):
    half = np.zeros(nt.shape, np.uint64)
    for g in range(4):
      c = codes[row, 32 * kb + 8 * g + 2 * t + v].astype(np.uint64)
      half |= (c & 7) << np.uint64(MAG[g]) | (c >> 3) << np.uint64(SIGN[g])
    want |= half << np.uint64(16 * v)
  expected = np.full(got.shape, 0xDEADBEEF, np.uint64)
  expected[kb // steps, nt * 8 * steps + 8 * (kb % steps) + j // 32, j % 32] = want
  assert not (expected == 0xDEADBEEF).any()  # every word defined exactly once
  np.testing.assert_array_equal(got.astype(np.uint64), expected)


@pytest.mark.parametrize("steps", [8, 4])
def test_pack_scales_layout(steps):
  """Byte 16 w + 2 q + h of (tile nt, block kb) is row 64 nt + 16 w + 8 h + q's scale, at [kb // S, nt S +
  kb % S]."""
  n, nblocks = 128, 32
  sb = np.random.default_rng(steps).integers(0, 256, size=(n, nblocks)).astype(np.uint8)
  got = np.asarray(wm.pack_scales(jnp.asarray(sb), steps))
  assert got.dtype == np.uint8 and got.shape == (nblocks // steps, n // 64 * steps, 64)
  nt, kb, w, q, h = np.indices((n // 64, nblocks, 4, 8, 2)).reshape(5, -1)
  expected = np.full(got.shape, -1, np.int32)
  expected[kb // steps, nt * steps + kb % steps, 16 * w + 2 * q + h] = sb[64 * nt + 16 * w + 8 * h + q, kb]
  assert (expected >= 0).all()
  np.testing.assert_array_equal(got, expected)


def test_prepared_weight_shape_and_padding(weights):
  """N = 200 pads to 256 rows (4 tiles), K = 320 to 384 (3 steps of 4 blocks); padding decodes to zero."""
  q, pw = weights[True]
  assert pw.shape == (N, K) and (pw.n_padded, pw.k_padded) == (256, 384) and pw.steps == 4
  assert pw.words.shape == (3, 4 * 8 * 4, 32) and pw.words.dtype == jnp.uint32
  assert pw.scales.shape == (3, 4 * 4, 64) and pw.scales.dtype == jnp.uint8
  assert pw.nbytes == pw.words.size * 4 + pw.scales.size


def _assert_blocks_decode(pw, deq, fold):
  """decode_block_jnp of every (tile, 32-block) of a prepared weight equals the (N_p, K_p) float64 ``deq``."""
  dec = jax.jit(wm.decode_block_jnp, static_argnums=(2, 3))
  words, scales, s, r = np.asarray(pw.words), np.asarray(pw.scales), pw.steps, wm.word_rows(pw.fmt)
  for nt in range(pw.n_padded // 64):
    for kb in range(pw.k_padded // 32):
      ks, j = divmod(kb, s)
      w0 = (nt * s + j) * r
      got = dec(words[ks, w0:w0 + r], scales[ks, nt * s + j], pw.fmt, fold)
      assert got.dtype == jnp.bfloat16
      np.testing.assert_array_equal(np.asarray(got, np.float64), deq[64 * nt:64 * nt + 64, 32 * kb:32 * kb + 32],
                                    err_msg=f"{pw.fmt} tile {nt} block {kb}")


@pytest.mark.parametrize("fold", [True, False])
def test_decode_block_jnp_matches_dequantize(weights, fold):
  """Every (tile, block) of a prepared weight decodes to the float64 dequantized values (times 2^-6 when
  folded); the padding to zeros."""
  q, pw = weights[True]
  deq = np.zeros((pw.n_padded, pw.k_padded), np.float64)
  deq[:N, :K] = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  if fold:
    deq *= 2.0 ** -6
  _assert_blocks_decode(pw, deq, fold)


# ------------------------------------------------------------------------------------------------------------
# The inline PTX decode
# ------------------------------------------------------------------------------------------------------------


def _scale_reg(byte, fold):
  """The decode's $2 for an E8M0 byte: bf16 2^(e + 120) in both halves (folded), else the scale's bf16."""
  if fold:
    return np.array([(byte + 120) * 0x00800080], np.uint32)
  bits = (byte << 7) + (0x40 if byte in (0, 255) else 0)
  return np.array([bits * 0x00010001], np.uint32)


@pytest.mark.parametrize("fold,bytes_", [(True, [1, 7, 127, 134]), (False, [1, 100, 127, 200, 254, 255])],
                         ids=["fold", "unfold"])
def test_asm_decode_every_code_in_every_slot_and_half(fold, bytes_):
  """_asm_decode(g, fold) turns code g of both u16 halves of $1 into bf16x2 elem * 2^(e - 6) (folded) or
  elem * 2^e, for all 16 codes whatever the other codes are, the sign of -0 kept; byte 255 unfolded is NaN."""
  rng = np.random.default_rng(5)
  codes = rng.integers(0, 16, size=(4096, 2, 4))  # (samples, half, g)
  codes[:16] = np.arange(16)[:, None, None]
  codes[16:32] = np.arange(16)[::-1, None, None]
  halves = np.zeros((4096, 2), np.uint64)
  for g in range(4):
    halves |= ((codes[..., g] & 7) << MAG[g] | (codes[..., g] >> 3) << SIGN[g]).astype(np.uint64)
  reg = (halves[:, 0] | (halves[:, 1] << np.uint64(16))).astype(np.uint32)
  for g in range(4):
    asm = wm._asm_decode(g, fold)
    for b in bytes_:
      [out] = run_ptx(asm, [reg, _scale_reg(b, fold)])
      assert out.shape == reg.shape
      for h in range(2):
        bits = ((out >> np.uint64(16 * h)) & np.uint64(0xFFFF)).astype(np.uint16)
        got = bits.view(ml_dtypes.bfloat16).astype(np.float64)
        c = codes[:, h, g]
        if b == 255:
          assert np.isnan(got).all(), (g, h)
          continue
        with np.errstate(over="ignore"):  # byte 254 unfolded: |elem| >= 2 overflows to inf
          want = (E2M1_SIGNED[c] * 2.0 ** (b - 127 - (6 if fold else 0))).astype(ml_dtypes.bfloat16)
        want = want.astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=f"g={g} half={h} byte={b}")
        np.testing.assert_array_equal(np.signbit(got), c >= 8, err_msg=f"g={g} half={h} byte={b}")
        if b <= 127:  # no overflow: every value exact (least subnormal 2^-133 included)
          np.testing.assert_array_equal(got, E2M1_SIGNED[c] * 2.0 ** (b - 127 - (6 if fold else 0)))


# ------------------------------------------------------------------------------------------------------------
# The kernel, interpreted
# ------------------------------------------------------------------------------------------------------------


def test_fold_ok(weights):
  """fold_ok: every scale byte in 1..134."""
  assert weights[True][1].fold_ok and not weights[False][1].fold_ok
  assert wm.fold_ok_bytes(np.array([1, 134], np.uint8))
  for bad in (0, 135, 255):
    assert not wm.fold_ok_bytes(np.array([127, bad], np.uint8))


@pytest.mark.parametrize("cfg,fold_ok,m", [(CFG_WG1, True, 8), (CFG_WG2, True, 16), (CFG_WG1, False, 5),
                                           pytest.param(CFG_WG2, False, 8, marks=pytest.mark.slow)],
                         ids=lambda v: v.name() if isinstance(v, wm.MgpuWOConfig) else str(v))
def test_kernel_interpret(weights, cfg, fold_ok, m):
  """One and two consumer warpgroups, folded and unfolded decode, rows padded to 8, N and K padded."""
  q, pw = weights[fold_ok]
  assert pw.fold_ok == fold_ok
  x = _x(m)
  out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, config=cfg, interpret=True)
  assert out.dtype == jnp.float32 and out.shape == (m, N)
  _check(out, x, q)


def test_kernel_bf16_out_and_leading_dims(weights):
  """bf16 output (the FP32 sum rounded once, the 2^6 of the fold applied first) and x with leading dims."""
  q, pw = weights[True]
  x = _x(6)
  out = wm.wo_matmul_mgpu(x, pw, config=CFG_WG2, interpret=True)
  assert out.dtype == jnp.bfloat16 and out.shape == (6, N)
  ref, bound = _ref(x, q)
  assert np.all(np.abs(np.asarray(out, np.float64) - ref) <= 2.0 ** -8 * np.abs(ref) + RTOL * bound)
  q2, pw2 = weights[False]
  out3 = wm.wo_matmul_mgpu(x.reshape(2, 3, K), pw2, out_dtype=jnp.float32, config=CFG_WG1, interpret=True)
  assert out3.shape == (2, 3, N)
  _check(out3.reshape(6, N), x, q2)


def test_rows_are_not_padded():
  """x keeps its M rows: the kernel works on a multiple of 8 rows (the TMA reads the rest out of bounds) and
  stores M rows, so around the kernel there is no pad or slice when N and K need none."""
  q = _q(64, 128)
  small = wm.prepare_weight_mgpu(q, steps=4)
  x = _x(5, 128)
  cfg = wm.MgpuWOConfig(steps=4, max_concurrent_steps=2)
  jaxpr = jax.make_jaxpr(lambda x: wm.wo_matmul_mgpu(x, small, out_dtype=jnp.float32, config=cfg,
                                                     interpret=True))(x)
  prims = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert not prims & {"pad", "slice", "dynamic_slice", "concatenate"}, prims
  _check(wm.wo_call(x, small, config=cfg, out_dtype=jnp.float32, interpret=True, rows=8), x, q)
  with pytest.raises(ValueError, match="rows a multiple of 8"):
    wm.wo_call(x, small, config=cfg, interpret=True, rows=12)
  with pytest.raises(ValueError, match="0 < M <= rows"):
    wm.wo_call(_x(9, 128), small, config=cfg, interpret=True, rows=8)


def test_row_tiles(monkeypatch):
  """More rows than ONE_TILE_ROWS run as ROW_TILE-row tiles side by side in one kernel: every output row from its
  own x row, x padded to whole tiles only when M is not a multiple of the tile (then the output is sliced)."""
  q = _q(64, 128)
  small = wm.prepare_weight_mgpu(q, steps=4)
  cfg = wm.MgpuWOConfig(steps=4, max_concurrent_steps=2)
  call = lambda x, **kw: wm.wo_matmul_mgpu(x, small, out_dtype=jnp.float32, config=cfg, interpret=True, **kw)
  seen = []
  real = wm.wo_call
  monkeypatch.setattr(wm, "wo_call", lambda *a, **kw: seen.append((kw["rows"], kw["row_tiles"])) or real(*a, **kw))
  assert wm.ONE_TILE_ROWS < 2 * wm.ROW_TILE
  x = _x(2 * wm.ROW_TILE, 128, seed=5)  # two full tiles: no pad, no slice
  prims = {e.primitive.name for e in jax.make_jaxpr(call)(x).jaxpr.eqns}
  assert not prims & {"pad", "slice", "dynamic_slice", "concatenate"}, prims
  _check(call(x), x, q)
  call(_x(wm.ONE_TILE_ROWS - 3, 128))
  assert seen[-2:] == [(wm.ROW_TILE, 2), (wm.ONE_TILE_ROWS, 1)], seen
  x = _x(20, 128, seed=6)  # row_tile 8: three tiles, the last one padded
  _check(call(x, row_tile=8), x, q)
  with pytest.raises(ValueError, match="row_tile must be a multiple of 8"):
    call(x, row_tile=12)
  with pytest.raises(ValueError, match="exactly rows"):
    wm.wo_call(x, small, config=cfg, interpret=True, rows=8, row_tiles=3)


def test_dispatch(weights):
  """mx_weight_only_matmul runs a prepare_weight_mgpu weight on this kernel (the default config) and refuses
  it under impl="xla" / "triton"."""
  q, pw = weights[True]
  x = _x(8, seed=2)
  out = mx_weight_only_matmul(x, pw, interpret=True, out_dtype=jnp.float32)
  direct = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, interpret=True)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(direct))
  _check(out, x, q)
  for impl in ("xla", "triton"):
    with pytest.raises(ValueError, match="prepare_weight_mgpu"):
      mx_weight_only_matmul(x, pw, impl=impl, interpret=True)


def test_prepare_weight_only_picks_this_kernel_on_hopper(weights, monkeypatch):
  """mx_jax.prepare_weight_only: kernel="wo_mgpu" gives this kernel's layout (equal to prepare_weight_mgpu's);
  "auto" gives it on Hopper, the mx_matmul layout off Hopper; a weight neither kernel takes is refused."""
  from kernels import mx_matmul
  q, pw = weights[True]
  got = mx_jax.prepare_weight_only(q, kernel="wo_mgpu")
  assert isinstance(got, wm.MgpuWeight) and got.steps == wm.MgpuWOConfig().steps and got.fold_ok
  np.testing.assert_array_equal(np.asarray(got.words), np.asarray(wm.prepare_weight_mgpu(q).words))
  assert isinstance(mx_jax.prepare_weight_only(q), mx_matmul.PreparedWeight)  # CPU
  assert isinstance(mx_jax.prepare_weight_only(q, kernel="mx_matmul"), mx_matmul.PreparedWeight)
  monkeypatch.setattr(mx_matmul, "on_hopper", lambda: True)
  assert isinstance(mx_jax.prepare_weight_only(q), wm.MgpuWeight)
  w16 = mx_jax.quantize(jnp.ones((64, 64)), "mxfp8_e4m3", axis=1, block_size=16)  # not the spec block
  with pytest.raises(ValueError, match="does not take block_size 16"):
    mx_jax.prepare_weight_only(w16)
  with pytest.raises(ValueError, match="kernel must be one of"):
    mx_jax.prepare_weight_only(q, kernel="triton")


# ------------------------------------------------------------------------------------------------------------
# Validation and configs
# ------------------------------------------------------------------------------------------------------------


def test_prepare_validation():
  w = jnp.ones((64, 128), jnp.float32)
  with pytest.raises(TypeError, match="w must be a QArray"):
    wm.prepare_weight_mgpu(np.ones((64, 128)))
  with pytest.raises(ValueError, match="format"):
    wm.prepare_weight_mgpu(mx_jax.quantize(w, "fp8_e4m3"))
  with pytest.raises(ValueError, match="axis 1"):
    wm.prepare_weight_mgpu(mx_jax.quantize(w, "mxfp4_e2m1", axis=0))
  with pytest.raises(ValueError, match="steps"):
    wm.prepare_weight_mgpu(mx_jax.quantize(w, "mxfp4_e2m1", axis=1), steps=3)


@pytest.mark.parametrize("field,value", [("steps", 3), ("wgs", 3), ("cluster", 4), ("max_concurrent_steps", 1)])
def test_config_validation(field, value):
  with pytest.raises(ValueError, match=field):
    wm.MgpuWOConfig(**{field: value})


def test_call_validation(weights):
  q, pw = weights[True]
  x = _x(4)
  with pytest.raises(ValueError, match="K="):
    wm.wo_matmul_mgpu(jnp.ones((4, K + 32), jnp.bfloat16), pw, interpret=True)
  with pytest.raises(TypeError, match="x must be"):
    wm.wo_matmul_mgpu(jnp.ones((4, K), jnp.int32), pw, interpret=True)
  with pytest.raises(TypeError, match="out_dtype"):
    wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.int8, interpret=True)
  with pytest.raises(TypeError, match="config"):
    wm.wo_matmul_mgpu(x, pw, config="s16", interpret=True)
  with pytest.raises(TypeError, match="prepare_weight_mgpu"):
    wm.wo_matmul_mgpu(x, q, interpret=True)
  with pytest.raises(ValueError, match="steps"):  # the config's steps must be the layout's
    wm.wo_matmul_mgpu(x, pw, config=wm.MgpuWOConfig(steps=8, max_concurrent_steps=2), interpret=True)
  small = wm.prepare_weight_mgpu(_q(64, 128), steps=4)
  assert small.n_padded == 64
  cl2 = wm.MgpuWOConfig(steps=4, max_concurrent_steps=2, cluster=2)
  with pytest.raises(ValueError, match="cluster"):
    wm.wo_call(jnp.zeros((16, 128), jnp.bfloat16), small, config=cl2, interpret=True)
  with pytest.raises(ValueError, match="cluster=2 needs x rows padded to a multiple of 16"):  # N_p = 256: rows
    wm.wo_call(jnp.zeros((8, pw.k_padded), jnp.bfloat16), pw, config=cl2, interpret=True)


def test_helper_validation(weights):
  """The layout helpers and config helpers name the argument they reject."""
  _, pw = weights[True]
  with pytest.raises(ValueError, match="codes must be"):
    wm.pack_words(jnp.zeros((100, 128), jnp.uint8), 4)
  with pytest.raises(ValueError, match="codes must be"):
    wm.pack_words(jnp.zeros((64, 96), jnp.uint8), 4)
  with pytest.raises(ValueError, match="sb must be"):
    wm.pack_scales(jnp.zeros((64, 3), jnp.uint8), 4)
  with pytest.raises(ValueError, match="words must be"):
    wm.decode_block_jnp(jnp.zeros((4, 32), jnp.uint32), jnp.zeros((64,), jnp.uint8))
  with pytest.raises(TypeError, match="w must be"):
    wm.default_config("w", 16)
  for mp in (0, 12, wm.MAX_ROWS + 8):
    with pytest.raises(ValueError, match="mp must be"):
      wm.default_config(pw, mp)
  with pytest.raises(TypeError, match="cfg must be"):
    wm.smem_bytes("s16", 16)
  with pytest.raises(ValueError, match="fmt must be one of"):
    wm.smem_bytes(CFG_WG1, 16, "fp8_e4m3")
  with pytest.raises(ValueError, match="fmt must be one of"):
    wm.max_rows(16, "fp8_e5m2")
  with pytest.raises(ValueError, match="fmt must be one of"):
    wm.word_rows("fp8_e4m3")
  with pytest.raises(ValueError, match="fmt must be an E8M0-scaled format"):
    wm.fold_ok_bytes(np.array([127], np.uint8), "nvfp4")
  with pytest.raises(ValueError, match="sb must be .N, K/16. and codes .N, K."):
    wm.nv_fold_ok(np.zeros((64, 2), np.uint8), np.zeros((64, 64), np.uint8))
  with pytest.raises(ValueError, match="fmt must be one of"):
    wm.decode_block_jnp(jnp.zeros((16, 32), jnp.uint32), jnp.zeros((64,), jnp.uint8), "fp8_e4m3")
  with pytest.raises(ValueError, match="words must be .8, 32. and sbytes .128,. for nvfp4"):
    wm.decode_block_jnp(jnp.zeros((8, 32), jnp.uint32), jnp.zeros((64,), jnp.uint8), "nvfp4")
  with pytest.raises(ValueError, match="steps"):
    wm.max_rows(3)
  with pytest.raises(ValueError, match="codes must be"):
    wm.pack_words6(jnp.zeros((64, 96), jnp.uint8), 4)
  with pytest.raises(ValueError, match="words must be .16, 32."):
    wm.decode_block_jnp(jnp.zeros((12, 32), jnp.uint32), jnp.zeros((64,), jnp.uint8), "mxfp8_e4m3")
  with pytest.raises(ValueError, match="words must be .12, 32."):
    wm.decode_block_jnp(jnp.zeros((16, 32), jnp.uint32), jnp.zeros((64,), jnp.uint8), "mxfp6_e2m3")
  assert set(wm.FOLD_BYTES) == set(wm.FORMATS) - {"nvfp4"}


def test_default_config_and_shared_memory():
  """default_config: s = the layout's steps, two consumer warpgroups, a cluster of two when N_p % 128 == 0 and
  the padded rows are a multiple of 16 (not in the interpreter); every row count up to max_rows fits shared
  memory, max_rows + 8 does not even at two stages."""
  w = wm.prepare_weight_mgpu(_q(256, 512), steps=16)
  assert w.n_padded % 128 == 0
  for mp in (16, 32):
    cfg = wm.default_config(w, mp)
    assert (cfg.cluster, cfg.wgs, cfg.steps) == (2, 2, w.steps), mp
    assert wm.default_config(w, mp, interpret=True).cluster == 1
  for mp in (8, 24):  # the multicast x copy splits along 8-row tiles: an even number of them
    assert wm.default_config(w, mp).cluster == 1, mp
  odd = wm.prepare_weight_mgpu(_q(64, 512), steps=16)  # one tile: no cluster of two
  assert wm.default_config(odd, 16).cluster == 1
  mr = wm.max_rows(16)
  assert mr % 8 == 0 and 8 <= mr <= wm.MAX_ROWS
  for mp in range(8, mr + 1, 8):
    c = wm.default_config(w, mp)
    assert c.max_concurrent_steps >= 2 and wm.smem_bytes(c, mp) <= wm.SMEM_LIMIT, mp
  assert wm.smem_bytes(wm.MgpuWOConfig(steps=16, max_concurrent_steps=2), mr + 8) > wm.SMEM_LIMIT
  # per format: NVFP4 128 scale bytes per block, MXFP8 2 KB of words; fewer rows fit for MXFP8
  c = wm.MgpuWOConfig(steps=16, max_concurrent_steps=2)
  assert wm.smem_bytes(c, 16, "nvfp4") - wm.smem_bytes(c, 16) == 2 * 64 * 16
  assert wm.smem_bytes(c, 16, "mxfp8_e4m3") - wm.smem_bytes(c, 16) == 2 * 1024 * 16
  assert wm.max_rows(16, "mxfp8_e5m2") < mr
  # smem_bytes from the layout: per stage an (mp, 32 S) bf16 x tile, 256 words and 64 scale bytes per block;
  # an (mp, 64) output tile (4 bytes) and, with two warpgroups, an FP32 partial sum.
  for c, mp in ((wm.MgpuWOConfig(steps=16, max_concurrent_steps=3), 24), (CFG_WG1, 40)):
    per_stage = mp * 32 * c.steps * 2 + 256 * 4 * c.steps + 64 * c.steps
    assert wm.smem_bytes(c, mp) == per_stage * c.max_concurrent_steps + mp * 64 * 4 * (1 + (c.wgs == 2))


# ------------------------------------------------------------------------------------------------------------
# NVFP4 (E2M1 in 16-blocks, E4M3 scales, FP32 tensor scale)
# ------------------------------------------------------------------------------------------------------------

E4M3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)  # value of each byte


def _nv(n=N, k=K, sbytes=None, seed=3):
  """An NVFP4 weight from quantize, or with the given (n, k/16) E4M3 scale bytes (codes from quantize)."""
  q = mx_jax.quantize(jax.random.normal(jax.random.key(seed), (n, k), jnp.float32), "nvfp4", axis=1)
  if sbytes is not None:
    q = dataclasses.replace(q, scales=jax.lax.bitcast_convert_type(jnp.asarray(sbytes, jnp.uint8),
                                                                   jnp.float8_e4m3fn))
  return q


@pytest.fixture(scope="module")
def nv_weights():
  """{fold_ok: (QArray, prepared steps=4 weight)}: quantize's scales, and scales cycling through every E4M3
  byte but NaN (subnormal ones, 0 over nonzero codes): the exact unfolded conversion."""
  q = _nv()
  rng = np.random.default_rng(4)
  allb = np.setdiff1d(np.arange(256), [0x7F, 0xFF, *range(0x80, 0x100)])  # finite, non-negative
  wild = _nv(sbytes=allb[rng.integers(0, allb.size, size=(N, -(-K // 16)))])
  return {True: (q, wm.prepare_weight_mgpu(q, steps=4)), False: (wild, wm.prepare_weight_mgpu(wild, steps=4))}


@pytest.mark.parametrize("steps", [8, 4])
def test_pack_scales_layout_nvfp4(steps):
  """Byte 32 w + 4 q + 2 h + c of (tile nt, 32-block kb) is row 64 nt + 16 w + 8 h + q's scale of 16-block
  2 kb + c, at [kb // S, nt S + kb % S]."""
  n, nblocks = 128, 32
  sb = np.random.default_rng(steps).integers(0, 256, size=(n, 2 * nblocks)).astype(np.uint8)
  got = np.asarray(wm.pack_scales(jnp.asarray(sb), steps, block=16))
  assert got.dtype == np.uint8 and got.shape == (nblocks // steps, n // 64 * steps, 128)
  nt, kb, w, q, h, c = np.indices((n // 64, nblocks, 4, 8, 2, 2)).reshape(6, -1)
  expected = np.full(got.shape, -1, np.int32)
  expected[kb // steps, nt * steps + kb % steps, 32 * w + 4 * q + 2 * h + c] = sb[64 * nt + 16 * w + 8 * h + q,
                                                                                  2 * kb + c]
  assert (expected >= 0).all()
  np.testing.assert_array_equal(got, expected)
  with pytest.raises(ValueError, match="block must be 16 or 32"):
    wm.pack_scales(jnp.asarray(sb), steps, block=8)


@pytest.mark.parametrize("fold", [True, False])
def test_decode_block_jnp_nvfp4(nv_weights, fold):
  """Every (tile, block) decodes to E2M1 code value * E4M3 scale (* 2^-7 folded), from the QArray's codes and
  scale bytes in float64 (the tensor scale is the epilogue's); padding decodes to zero."""
  q, pw = nv_weights[True]
  codes = np.asarray(mx_jax.packing.element_codes(q)).astype(np.int64)
  sb = np.asarray(jax.lax.bitcast_convert_type(q.scales, jnp.uint8))
  deq = np.zeros((pw.n_padded, pw.k_padded), np.float64)
  deq[:N, :K] = E2M1_SIGNED[codes] * np.repeat(E4M3[sb], 16, axis=1)[:, :K] * (2.0 ** -7 if fold else 1.0)
  _assert_blocks_decode(pw, deq, fold)


def test_asm_nvfp4_scales_every_byte():
  """The decode's $2 for NVFP4, folded: bits (b << 4) + NV_FOLD_BITS in both halves is s * 2^119 for every
  normal byte, and _asm_decode(g, True) then gives elem * s * 2^-7 exactly for every code; unfolded:
  _ASM_E4M3_BF16X2 is the byte's exact bf16 value (subnormal, zero and NaN bytes too), and the decode elem * s."""
  codes = np.arange(16)
  halves = np.zeros(16, np.uint64)
  for g in range(4):
    halves |= ((codes & 7) << MAG[g] | (codes >> 3) << SIGN[g]).astype(np.uint64)
  reg = (halves | (halves[::-1] << np.uint64(16))).astype(np.uint32)  # half 1: the codes reversed
  for b in range(0x80):
    s = E4M3[b]
    [conv] = run_ptx(wm._ASM_E4M3_BF16X2, [np.array([b], np.uint32)])
    for fold in (True, False):
      if fold and not 0x08 <= b <= 0x7E:
        continue
      k = np.array([(b * 0x00100010 + wm.NV_FOLD_BITS * 0x00010001) if fold else int(conv[0])], np.uint32)
      if fold:
        np.testing.assert_array_equal(np.array([int(k[0]) & 0xFFFF, int(k[0]) >> 16], np.uint16)
                                      .view(ml_dtypes.bfloat16).astype(np.float64), [s * 2.0 ** 119] * 2)
      for g in range(4):
        [out] = run_ptx(wm._asm_decode(g, fold), [reg, k])
        for h, c in ((0, codes), (1, codes[::-1])):
          got = ((out >> np.uint64(16 * h)) & np.uint64(0xFFFF)).astype(np.uint16).view(ml_dtypes.bfloat16)
          want = E2M1_SIGNED[c] * s * (2.0 ** -7 if fold else 1.0)
          np.testing.assert_array_equal(got.astype(np.float64), want, err_msg=f"byte {b:#x} g={g} h={h} fold={fold}")


def test_nv_fold_ok():
  """Folded only when every byte is a normal finite E4M3 (0x08..0x7E), or 0 over a block of zero codes."""
  codes = np.ones((64, 32), np.uint8)
  assert bool(wm.nv_fold_ok(np.full((64, 2), 0x08, np.uint8), codes))
  assert bool(wm.nv_fold_ok(np.full((64, 2), 0x7E, np.uint8), codes))
  for bad in (0x07, 0x01, 0x7F, 0x80, 0xB8):
    sb = np.full((64, 2), 0x38, np.uint8)
    sb[5, 1] = bad
    assert not bool(wm.nv_fold_ok(sb, codes)), hex(bad)
  sb = np.full((64, 2), 0x38, np.uint8)
  sb[5, 1] = 0
  assert not bool(wm.nv_fold_ok(sb, codes))
  codes[5, 16:] = 8  # -0 codes: the zero block is fine
  assert bool(wm.nv_fold_ok(sb, codes))


@pytest.mark.parametrize("cfg,fold_ok,m", [pytest.param(CFG_WG1, True, 8, marks=pytest.mark.slow), (CFG_WG2, True, 13),
                                           (CFG_WG2, False, 8)],
                         ids=lambda v: v.name() if isinstance(v, wm.MgpuWOConfig) else str(v))
def test_kernel_interpret_nvfp4(nv_weights, cfg, fold_ok, m):
  """NVFP4 through the kernel (the tensor scale applied in the epilogue), folded and unfolded scales."""
  q, pw = nv_weights[fold_ok]
  assert pw.fold_ok == fold_ok and pw.nv and pw.tensor_scale.shape == (1,)
  x = _x(m)
  out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, config=cfg, interpret=True)
  assert out.shape == (m, N)
  _check(out, x, q)
  bf = mx_weight_only_matmul(x, pw, interpret=True)  # the public entry, bf16 out
  ref, bound = _ref(x, q)
  assert bf.dtype == jnp.bfloat16 and np.all(np.abs(np.asarray(bf, np.float64) - ref) <= 2.0 ** -8 * np.abs(ref)
                                             + RTOL * bound)


# ------------------------------------------------------------------------------------------------------------
# MXFP8 (E4M3 / E5M2 bytes, four per word)
# ------------------------------------------------------------------------------------------------------------

FP8 = ["mxfp8_e4m3", "mxfp8_e5m2"]
FP8_VALUE = {f: np.arange(256, dtype=np.uint8).view(d).astype(np.float64)
             for f, d in zip(FP8, (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))}
FP8_VALUE["mxint8"] = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64) * 2.0 ** -6  # k * 2^-6


def _q8(fmt, n=N, k=K, big=False, seed=5):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32)
  return mx_jax.quantize(w * (2.0 ** 30 if big else 1.0), fmt, axis=1)


@pytest.mark.parametrize("steps", [8, 4])
def test_pack_words8_layout(steps):
  """Word 4 i + 2 h + j (i = 32 w + 4 q + t) of (tile nt, block kb) holds row 64 nt + 16 w + 8 h + q's codes at
  columns 32 kb + 16 j + 8 gl + 2 t + v in byte 2 gl + v, at [kb // S, nt 16 S + 16 (kb % S) + (4 i + 2 h + j)
  // 32, (4 i + 2 h + j) % 32]."""
  n, k = 128, 1024
  codes = np.random.default_rng(steps).integers(0, 256, size=(n, k)).astype(np.uint8)
  got = np.asarray(wm.pack_words8(jnp.asarray(codes), steps))
  ntiles, nblocks = n // 64, k // 32
  assert got.dtype == np.uint32 and got.shape == (nblocks // steps, ntiles * 16 * steps, 32)
  nt, kb, w, q, t, h, j = np.indices((ntiles, nblocks, 4, 8, 4, 2, 2)).reshape(7, -1)
  idx = 4 * (32 * w + 4 * q + t) + 2 * h + j
  row = 64 * nt + 16 * w + 8 * h + q
  want = np.zeros(nt.shape, np.uint64)
  for gl in range(2):
    for v in range(2):
      want |= codes[row, 32 * kb + 16 * j + 8 * gl + 2 * t + v].astype(np.uint64) << np.uint64(8 * (2 * gl + v))
  expected = np.full(got.shape, 0xDEADBEEF, np.uint64)
  expected[kb // steps, nt * 16 * steps + 16 * (kb % steps) + idx // 32, idx % 32] = want
  assert not (expected == 0xDEADBEEF).any()
  np.testing.assert_array_equal(got.astype(np.uint64), expected)
  with pytest.raises(ValueError, match="codes must be"):
    wm.pack_words8(jnp.zeros((64, 96), jnp.uint8), 4)


@pytest.mark.parametrize("fmt", FP8 + ["mxint8"])
def test_decode_block_jnp_fp8(fmt):
  """Every (tile, block) of a prepared MXFP8 weight decodes to the float64 dequantized values; padding to 0."""
  q = _q8(fmt)
  pw = wm.prepare_weight_mgpu(q, steps=4)
  assert pw.fp8 and pw.words.shape == (3, 4 * 16 * 4, 32) and pw.fold_ok
  deq = np.zeros((pw.n_padded, pw.k_padded), np.float64)
  deq[:N, :K] = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  _assert_blocks_decode(pw, deq, True)


@pytest.mark.parametrize("fmt", FP8 + ["mxint8"])
def test_asm_decode8_every_byte(fmt):
  """The FP8 decode: every finite byte in each of a word's four slots, through the kernel's bit split
  (``FP8_BITS``) and _asm_decode8 (PRMT + multiplies), equals elem * 2^(e - 127) for folded scale bytes at the
  window's ends and unfolded ones (0: 2^-127, 255: NaN)."""
  vals = FP8_VALUE[fmt]
  finite = np.flatnonzero(np.isfinite(vals))
  rng = np.random.default_rng(9)
  b = rng.choice(finite, size=(len(finite) * 4, 4))
  for slot in range(4):
    b[slot * len(finite):(slot + 1) * len(finite), slot] = finite
  word = (b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24).astype(np.uint64)
  if fmt == "mxint8":  # the kernel passes the word with each byte's sign bit flipped
    hi = lo = word ^ np.uint64(0x80808080)
  else:
    sh, mh, sl, ml = wm.FP8_BITS[fmt]
    hi = (word & 0x80808080) | ((word >> np.uint64(sh)) & np.uint64(mh * 0x01010101))
    lo = (word << np.uint64(sl)) & np.uint64(ml * 0x01010101)
  lo_f, hi_f = wm.FP8_FOLD_BYTES[fmt]
  for fold, e in [(True, lo_f), (True, hi_f), (True, 127), (False, 0), (False, 127), (False, 255)]:
    k = ((e + wm.FP8_RESCALE[fmt]) * 0x00800080 if fold else
         ((e << 7) + (0x40 if e in (0, 255) else 0)) * 0x00010001)
    for gl in range(2):
      [out] = run_ptx(wm._asm_decode8(gl, fmt, fold), [hi.astype(np.uint32), lo.astype(np.uint32),
                                                       np.array([k], np.uint32)])
      for v in range(2):
        got = ((out >> np.uint64(16 * v)) & np.uint64(0xFFFF)).astype(np.uint16).view(ml_dtypes.bfloat16)
        got = got.astype(np.float64)
        want = vals[b[:, 2 * gl + v]] * 2.0 ** (e - 127)
        if e == 255:
          assert np.isnan(got).all()
          continue
        want = want.astype(ml_dtypes.bfloat16).astype(np.float64)  # e = 0: below bf16's least subnormal flushes
        np.testing.assert_array_equal(got, want, err_msg=f"{fmt} fold={fold} e={e} gl={gl} v={v}")


def test_fold_ok_bytes_fp8():
  for fmt in FP8:  # (MXINT8's window starts at byte 0)
    lo, hi = wm.FP8_FOLD_BYTES[fmt]
    assert wm.fold_ok_bytes(np.array([lo, hi], np.uint8), fmt)
    assert not wm.fold_ok_bytes(np.array([127, lo - 1], np.uint8), fmt)
    assert not wm.fold_ok_bytes(np.array([127, hi + 1], np.uint8), fmt)


@pytest.mark.parametrize("fmt,big,cfg,m", [("mxfp8_e4m3", False, CFG_WG2, 5), ("mxfp8_e5m2", False, CFG_WG1, 8),
                                           ("mxfp8_e4m3", True, CFG_WG1, 8), ("mxint8", False, CFG_WG1, 8)],
                         ids=lambda v: v.name() if isinstance(v, wm.MgpuWOConfig) else str(v))
def test_kernel_interpret_fp8(fmt, big, cfg, m):
  """MXFP8 through the kernel, folded and (scale bytes past the window) unfolded."""
  _check_kernel(_q8(fmt, big=big), big, cfg, m)


def _check_kernel(q, big, cfg, m):
  """q through the kernel with ``cfg`` (folded unless ``big``) and, for CFG_WG2, the public entry's default."""
  pw = wm.prepare_weight_mgpu(q, steps=4)
  assert pw.fold_ok == (not big)
  x = _x(m)
  out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, config=cfg, interpret=True)
  assert out.shape == (m, N)
  _check(out, x, q)
  if cfg is CFG_WG2:  # the public entry with its default config (fewer stages where the words take room)
    _check(mx_weight_only_matmul(x, pw, out_dtype=jnp.float32, interpret=True), x, q)


# ------------------------------------------------------------------------------------------------------------
# MXFP6 (E2M3, E3M2): three word-planes per thread and block
# ------------------------------------------------------------------------------------------------------------

FP6 = ["mxfp6_e2m3", "mxfp6_e3m2"]
# The layout of the module docstring, written out: pair (h, g) -> (plane, lowest magnitude bit) and (plane, sign
# bit), in both 16-bit halves (v = 0 low, v = 1 high).
MAG6 = {(0, 0): (0, 0), (0, 1): (0, 5), (0, 2): (0, 10), (1, 0): (1, 0), (1, 1): (1, 5), (1, 2): (1, 10),
        (0, 3): (2, 0), (1, 3): (2, 5)}
SIGN6 = {(0, 0): (0, 15), (1, 0): (1, 15), (0, 1): (2, 10), (0, 2): (2, 11), (0, 3): (2, 12), (1, 1): (2, 13),
         (1, 2): (2, 14), (1, 3): (2, 15)}
# value of each 6-bit code: sign bit 5; E2M3 bias 1, E3M2 bias 3 (OCP MX v1.0), subnormals at exponent 0
FP6_VALUE = {}
for _f, (_eb, _mb, _bias) in {"mxfp6_e2m3": (2, 3, 1), "mxfp6_e3m2": (3, 2, 3)}.items():
  _c = np.arange(64)
  _e, _m = (_c >> _mb) & ((1 << _eb) - 1), _c & ((1 << _mb) - 1)
  _mag = np.where(_e == 0, _m / 2 ** _mb * 2.0 ** (1 - _bias), (1 + _m / 2 ** _mb) * 2.0 ** (_e - _bias))
  FP6_VALUE[_f] = np.where(_c >> 5, -_mag, _mag)


def _planes6(codes):
  """(samples, 2 h, 4 g, 2 v) 6-bit codes -> (3, samples) uint32 word-planes, by MAG6 / SIGN6."""
  planes = np.zeros((3, codes.shape[0]), np.uint64)
  for (h, g), (p, o) in MAG6.items():
    ps, b = SIGN6[h, g]
    for v in range(2):
      c = codes[:, h, g, v].astype(np.uint64)
      planes[p] |= (c & np.uint64(0x1F)) << np.uint64(o + 16 * v)
      planes[ps] |= (c >> np.uint64(5)) << np.uint64(b + 16 * v)
  return planes.astype(np.uint32)


def test_fp6_layout_table():
  """The kernel's table is the docstring's; the 96 bits of a thread's three words are each used once."""
  assert wm.FP6_MAG == MAG6 and wm.FP6_SIGN == SIGN6
  used = np.zeros((3, 32), int)
  for (h, g), (p, o) in MAG6.items():
    for v in range(2):
      used[p, o + 16 * v:o + 16 * v + 5] += 1
      used[SIGN6[h, g][0], SIGN6[h, g][1] + 16 * v] += 1
  assert (used == 1).all()


@pytest.mark.parametrize("steps", [8, 4])
def test_pack_words6_layout(steps):
  """Word-plane p of thread i = 32 w + 4 q + t for (tile nt, block kb) sits at [kb // S, nt 12 S + 12 (kb % S) +
  4 p + w, 4 q + t] and holds, for each pair (h, g), row 64 nt + 16 w + 8 h + q's codes at columns 32 kb + 8 g +
  2 t + v: magnitude (low 5 bits) at MAG6 + 16 v, sign (bit 5) at SIGN6 + 16 v."""
  n, k = 128, 1024
  codes = np.random.default_rng(steps).integers(0, 64, size=(n, k)).astype(np.uint8)
  got = np.asarray(wm.pack_words6(jnp.asarray(codes), steps))
  ntiles, nblocks = n // 64, k // 32
  assert got.dtype == np.uint32 and got.shape == (nblocks // steps, ntiles * 12 * steps, 32)
  expected = np.full(got.shape, 0xDEADBEEF, np.uint64)
  nt, kb, w, q, t = np.indices((ntiles, nblocks, 4, 8, 4)).reshape(5, -1)
  for p in range(3):
    want = np.zeros(nt.shape, np.uint64)
    for (h, g), (pm, o) in MAG6.items():
      ps, b = SIGN6[h, g]
      for v in range(2):
        c = codes[64 * nt + 16 * w + 8 * h + q, 32 * kb + 8 * g + 2 * t + v].astype(np.uint64)
        if pm == p:
          want |= (c & np.uint64(31)) << np.uint64(o + 16 * v)
        if ps == p:
          want |= (c >> np.uint64(5)) << np.uint64(b + 16 * v)
    expected[kb // steps, nt * 12 * steps + 12 * (kb % steps) + 4 * p + w, 4 * q + t] = want
  assert not (expected == 0xDEADBEEF).any()
  np.testing.assert_array_equal(got.astype(np.uint64), expected)


def _q6(fmt, n=N, k=K, big=False, seed=7, packed=False):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32)
  return mx_jax.quantize(w * (2.0 ** 30 if big else 1.0), fmt, axis=1, packed=packed)


@pytest.mark.parametrize("fmt", FP6)
def test_decode_block_jnp_fp6(fmt):
  """Every (tile, block) of a prepared MXFP6 weight decodes to the float64 dequantized values; padding to 0."""
  q = _q6(fmt)
  pw = wm.prepare_weight_mgpu(q, steps=4)
  assert pw.fp6 and not pw.fp8 and pw.words.shape == (3, 4 * 12 * 4, 32) and pw.fold_ok
  deq = np.zeros((pw.n_padded, pw.k_padded), np.float64)
  deq[:N, :K] = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  _assert_blocks_decode(pw, deq, True)


@pytest.mark.parametrize("fmt", FP6)
def test_asm_decode6_every_code_in_every_pair(fmt):
  """The FP6 decode (_asm_decode6, as _decode_regs wires it: magnitude plane, sign plane, scale register): every
  code in both halves of every pair slot, the other slots random, equals elem * 2^(e - 127) at folded scale
  bytes (the window's ends, 127) and unfolded ones (0: 2^-127, 127, 255: NaN); -0 keeps its sign."""
  rng = np.random.default_rng(11)
  codes = rng.integers(0, 64, size=(64 * 64, 2, 4, 2))
  every = np.arange(64 * 64)
  lo_f, hi_f = wm.FP6_FOLD_BYTES[fmt]
  assert (lo_f, hi_f) == (0, {"mxfp6_e2m3": 128, "mxfp6_e3m2": 130}[fmt])
  rescale = wm.FP6_RESCALE[fmt]
  for h in range(2):
    for g in range(4):
      c = codes.copy()
      c[:, h, g, 0], c[:, h, g, 1] = every % 64, every // 64  # all 64 x 64 (low, high) pairs
      planes = _planes6(c)
      (pm, o), (ps, b) = MAG6[h, g], SIGN6[h, g]
      for fold, e in [(True, lo_f), (True, hi_f), (True, 127), (False, 0), (False, 127), (False, 255)]:
        k = ((e + rescale) * 0x00800080 if fold else ((e << 7) + (0x40 if e in (0, 255) else 0)) * 0x00010001)
        [out] = run_ptx(wm._asm_decode6(o, b, fmt, fold), [planes[pm], planes[ps], np.array([k], np.uint32)])
        for v in range(2):
          got = ((out >> np.uint64(16 * v)) & np.uint64(0xFFFF)).astype(np.uint16).view(ml_dtypes.bfloat16)
          got = got.astype(np.float64)
          if e == 255:
            assert np.isnan(got).all()
            continue
          want = FP6_VALUE[fmt][c[:, h, g, v]] * 2.0 ** (e - 127)  # exact: bf16 holds every one of these
          np.testing.assert_array_equal(got, want, err_msg=f"{fmt} h={h} g={g} v={v} fold={fold} e={e}")
          np.testing.assert_array_equal(np.signbit(got), c[:, h, g, v] >= 32)


def test_fold_ok_bytes_fp6():
  for fmt in FP6:
    lo, hi = wm.FP6_FOLD_BYTES[fmt]
    assert wm.fold_ok_bytes(np.array([lo, hi], np.uint8), fmt)
    assert not wm.fold_ok_bytes(np.array([127, hi + 1], np.uint8), fmt)
    assert not wm.fold_ok_bytes(np.array([127, 255], np.uint8), fmt)


@pytest.mark.parametrize("fmt,big,cfg,m,packed", [("mxfp6_e2m3", False, CFG_WG2, 5, True),
                                                  pytest.param("mxfp6_e3m2", False, CFG_WG1, 8, False,
                                                               marks=pytest.mark.slow),
                                                  ("mxfp6_e2m3", True, CFG_WG1, 8, False)],
                         ids=lambda v: v.name() if isinstance(v, wm.MgpuWOConfig) else str(v))
def test_kernel_interpret_fp6(fmt, big, cfg, m, packed):
  """MXFP6 through the kernel (a packed QArray too), folded and (scale bytes past the window) unfolded."""
  _check_kernel(_q6(fmt, big=big, packed=packed), big, cfg, m)


# ------------------------------------------------------------------------------------------------------------
# Beyond KERNEL_ROWS: the weight decoded to bf16 once, XLA's bf16 GEMM
# ------------------------------------------------------------------------------------------------------------


def _any_fmt_weight(fmt, seed=3):
  """(QArray, prepared steps=4 weight) of an (N, K) weight in ``fmt``, scales spread over many binades."""
  w = jax.random.normal(jax.random.key(seed), (N, K), jnp.float32)
  w = w * 2.0 ** jax.random.randint(jax.random.key(seed + 1), (N, 1), -20, 20).astype(jnp.float32)
  q = mx_jax.quantize(w, fmt, axis=1)
  return q, wm.prepare_weight_mgpu(q, steps=4)


# 8 (NVFP4: with 128 scale bytes), 12 and 16 word rows; MXFP4's 8 rows without NVFP4's bytes only in test_all.sh
@pytest.mark.parametrize("fmt", [pytest.param("mxfp4_e2m1", marks=pytest.mark.slow), "nvfp4", "mxfp6_e2m3",
                                 "mxfp8_e5m2"])
def test_decode_weight_and_dequant_path(fmt):
  """The decode kernel (interpreted) inverts the layout exactly (MX: the float64 dequantized QArray; NVFP4: E2M1
  code * E4M3 scale, the tensor scale left to the GEMM), every element written (N, K not tile multiples); past
  ``kernel_rows`` wo_matmul_mgpu runs x_bf16 @ it^T in FP32, NVFP4 times the tensor scale, leading dims kept."""
  q, pw = _any_fmt_weight(fmt)
  got = wmd.decode_weight(pw, interpret=True)
  assert got.shape == (N, K) and got.dtype == jnp.bfloat16
  if fmt == "nvfp4":
    codes = np.asarray(mx_jax.packing.element_codes(q)).astype(np.int64)
    sb = np.asarray(jax.lax.bitcast_convert_type(q.scales, jnp.uint8))
    want = E2M1_SIGNED[codes] * np.repeat(E4M3[sb], 16, axis=1)[:, :K]
  else:
    want = np.asarray(mx_jax.dequantize(q, jnp.float32), np.float64)
  np.testing.assert_array_equal(np.asarray(got, np.float64), want)
  x = _x(6).reshape(2, 3, K)
  out = wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32, kernel_rows=5, interpret=True)
  assert out.shape == (2, 3, N)
  _check(out.reshape(6, N), x.reshape(6, K), q)


def test_dequant_path_by_default_beyond_kernel_rows(weights, monkeypatch):
  """KERNEL_ROWS + 1 rows take the decode + bf16 GEMM path by default (the decode stubbed by XLA's dequantize: the
  kernel is tested above); kernel_rows and decode_weight's w are validated."""
  q, pw = weights[True]
  with pytest.raises(TypeError, match="w must be a prepare_weight_mgpu"):
    wmd.decode_weight(q)
  x = _x(wm.KERNEL_ROWS + 1)
  calls = []

  def stub(w, interpret):
    calls.append(w)
    return mx_jax.dequantize(q, jnp.bfloat16)

  monkeypatch.setattr(wmd, "decode_weight", stub)
  _check(wm.wo_matmul_mgpu(x, pw, out_dtype=jnp.float32), x, q)
  assert len(calls) == 1
  for bad in (-1, 2.0, "8"):
    with pytest.raises(ValueError, match="kernel_rows must be"):
      wm.wo_matmul_mgpu(x, pw, kernel_rows=bad)
