"""kernels/wo_triton.py: the Pallas Triton weight-only GEMM, run in the Pallas interpreter on CPU.

Reference: W dequantized by mx_jax.dequantize to float64, x rounded to bf16, float64 matmul. The kernel
accumulates in FP32, so the check is |out - ref| <= 1e-5 * (|x| @ |W|^T) element-wise (FP32 accumulation order;
the decoded weights and the scaling are exact). The compiled path (Triton on a GPU) runs the same kernel body;
its lowering to Triton IR is checked here for every format, its numerics by benchmarks/bench_wo.py on the GPU.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import ml_dtypes
import pytest

import mx_jax
from kernels import wo_triton as wt
from mx_jax.formats import get_format
from mx_jax.matmul import mx_weight_only_matmul
from mx_jax.qarray import QArray

from covering import covering
from ptx_interp import run_ptx as _run_ptx
from wo_reference import check_wo, wo_ref

FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8", "nvfp4"]
N, K = 200, 320  # N not a multiple of block_n, K not a multiple of block_k (a multiple of 32: 10 blocks)
RTOL = 1e-5


def _ref(x, q):
  return wo_ref(x, q)


def _check(out, x, q, rtol=RTOL):
  check_wo(out, x, q, rtol)


def _weight(fmt, n=N, k=K, seed=0):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32)
  return mx_jax.quantize(w, fmt, axis=1)


def _x(m, k=K, seed=1):
  return jax.random.normal(jax.random.key(seed), (m, k), jnp.float32).astype(jnp.bfloat16)


@pytest.fixture(scope="module")
def weights():
  return {f: _weight(f) for f in FORMATS}


@pytest.mark.parametrize("fmt,m", covering(FORMATS, [1, 16, 33], per=2, ids=str))  # full grid: slow
def test_formats_default_config(weights, fmt, m):
  q = weights[fmt]
  x = _x(m)
  out = wt.wo_matmul(x, q, out_dtype=jnp.float32, interpret=True)
  _check(out, x, q)


SMALL_CONFIGS = [
    wt.WOConfig(64, 128, 2, 4, 3, "elem", "xw"),
    wt.WOConfig(64, 256, 1, 4, 3, "elem", "xw", n_acc=4),  # per-tile accumulators (FP4 / FP6: 4 tiles a step)
    wt.WOConfig(64, 128, 1, 4, 3, "elem", "xw", stagger=True),  # 4 programs over 4 K steps, each from its own
    wt.WOConfig(32, 128, 1, 4, 3, "block", "xw", stagger=True),
    wt.WOConfig(128, 256, 2, 4, 3, "elem", "wt", decode="asm"),  # asm: interpreter falls back to the jnp decode
    wt.WOConfig(32, 128, 4, 4, 2, "block", "wt"),
]


# Each config with 3 of the 7 formats in CI (every format meets 2-3 configs; config 1's per-tile accumulators
# meet FP4 and FP6); the full 6 x 7 grid is slow.
@pytest.mark.parametrize("cfg,fmt", covering(SMALL_CONFIGS, FORMATS, per=3,
                                             ids=lambda v: v if isinstance(v, str) else v.name()))
def test_configs(weights, fmt, cfg):
  q = weights[fmt]
  x = _x(33)
  _check(wt.wo_matmul(x, q, out_dtype=jnp.float32, config=cfg, interpret=True), x, q)


def test_dispatch_bf16_out_and_prepared(weights):
  q = weights["mxfp4_e2m1"]
  x = _x(16)
  pw = wt.prepare_weight_triton(q)
  out = mx_weight_only_matmul(x, q, impl="triton", interpret=True)
  assert out.dtype == jnp.bfloat16 and out.shape == (16, N)
  out2 = mx_weight_only_matmul(x, pw, interpret=True)  # a prepared Triton weight picks the kernel under auto
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(out2, np.float32))
  ref, bound = _ref(x, q)
  assert np.all(np.abs(np.asarray(out, np.float64) - ref) <= 2.0 ** -8 * np.abs(ref) + RTOL * bound)
  # leading dims, jit with the prepared pytree as an argument
  x3 = x.reshape(2, 8, K)
  f = jax.jit(lambda x, w: mx_weight_only_matmul(x, w, impl="triton", out_dtype=jnp.float32, interpret=True))
  out3 = f(x3, pw)
  assert out3.shape == (2, 8, N)
  _check(out3.reshape(16, N), x, q)


def test_prepared_layout():
  for fmt, dt, bpe in (("mxfp8_e4m3", jnp.uint8, 1.0), ("mxfp4_e2m1", jnp.uint16, 0.25),
                       ("mxfp6_e3m2", jnp.uint8, 0.75), ("nvfp4", jnp.uint16, 0.25)):
    pw = wt.prepare_weight_triton(_weight(fmt), layout="rows")
    n_p, k_p = 256, 512
    assert pw.data.dtype == dt and pw.data.shape == (n_p, int(k_p * bpe))  # FP4: uint16 words of 4 codes
    blk = 16 if fmt == "nvfp4" else 32
    assert pw.scales.dtype == jnp.uint8 and pw.scales.shape == (n_p, k_p // blk)  # 1-byte scales, not widened
    if dt == jnp.uint16:  # FP4's default layout: group-major, 256-groups
      gm = wt.prepare_weight_triton(_weight(fmt))
      assert gm.layout == "groups" and gm.data.shape == (2, n_p, 64) and gm.scales.shape == (2, n_p, 256 // blk)
      assert gm.nbytes == pw.nbytes
    assert (pw.tensor_scale is not None) == (fmt == "nvfp4")
    nb = {"mxfp8_e4m3": 1.0, "mxfp4_e2m1": 0.5, "mxfp6_e3m2": 0.75, "nvfp4": 0.5}[fmt] * n_p * k_p
    assert pw.shape == (N, K) and pw.nbytes == nb + pw.scales.size + (4 if fmt == "nvfp4" else 0)


# The FP4 word layout, written out from its definition: tile j's magnitude bits (e1 e0 m) start at bit MAG[j],
# its sign bit is SIGN[j].
MAG, SIGN = (6, 3, 0, 9), (15, 12, 13, 14)


def test_fp4_packing_puts_four_64_wide_tiles_in_one_uint16_word():
  """FP4 256-groups: uint16 word i of group g holds code[256g + 64j + i] of tiles j = 0..3."""
  codes = np.random.default_rng(0).integers(0, 16, size=(3, 512)).astype(np.uint8)
  packed = np.asarray(wt.pack_fp4(jnp.asarray(codes)))
  assert packed.shape == (3, 128) and packed.dtype == np.uint16
  for r in range(3):
    for g in range(2):
      for i in range(64):
        want = 0
        for j in range(4):
          c = int(codes[r, 256 * g + 64 * j + i])
          want |= (c & 7) << MAG[j] | (c >> 3) << SIGN[j]
        assert int(packed[r, 64 * g + i]) == want
  for j in range(4):  # and the kernel's jnp decode reads them back
    got = np.asarray(wt.fp4_codes(jnp.asarray(packed), j)).reshape(3, 2, 64)
    np.testing.assert_array_equal(got, codes.reshape(3, 2, 4, 64)[:, :, j])
  p512 = np.asarray(wt.pack_fp4(jnp.asarray(codes), group=512))  # one 512-group: four 128-wide tiles
  for i in range(128):
    want = 0
    for j in range(4):
      c = codes[:, 128 * j + i].astype(np.int64)
      want = want | (c & 7) << MAG[j] | (c >> 3) << SIGN[j]
    np.testing.assert_array_equal(p512[:, i], want)


# Each config with one FP4 format in CI (the other pair is slow).
@pytest.mark.parametrize("cfg,fmt", covering([wt.WOConfig(64, 512, 1, 4, 3, "elem", "xw"),
                                              wt.WOConfig(32, 512, 2, 4, 2, "block", "xw")], ["mxfp4_e2m1", "nvfp4"],
                                             per=1, ids=lambda v: v if isinstance(v, str) else v.name()))
def test_fp4_512_groups(fmt, cfg):
  """FP4 packed in 512-groups (four 128-wide tiles per word; K padded to 1024 here): a 512-deep config on a
  QArray prepares that layout, and a prepared 512-group weight runs any config at its group's depth."""
  q = _weight(fmt, k=700)  # 700 -> padded to 1024: two groups, the second mostly zero padding
  x = _x(33, k=700)
  pw = wt.prepare_weight_triton(q, group=512)
  assert pw.group == 512 and pw.k_padded == 1024 and pw.data.shape == (2, 256, 128)  # group-major (default)
  assert wt.max_rows(fmt, 512) == 64  # 33 rows: one call; more would run in 64-row chunks
  _check(wt.wo_matmul(x, q, out_dtype=jnp.float32, config=cfg, interpret=True), x, q)
  _check(wt.wo_matmul(x, pw, out_dtype=jnp.float32, config=SMALL_CONFIGS[0], interpret=True), x, q)
  x70 = _x(70, k=700, seed=4)  # two row chunks of at most 64
  _check(wt.wo_matmul(x70, pw, out_dtype=jnp.float32, interpret=True), x70, q)


@pytest.mark.parametrize("fmt,group,cfg", [
    ("mxfp4_e2m1", None, wt.WOConfig(64, 256, 2, 4, 3, "elem", "xw", n_acc=4)),
    pytest.param("nvfp4", 512, wt.WOConfig(32, 512, 1, 4, 2, "block", "xw"), marks=pytest.mark.slow),  # CI: split-K
    pytest.param("mxfp6_e3m2", None, wt.WOConfig(64, 256, 2, 4, 3, "elem", "xw"),  # block_k 256 -> one 128-group
                 marks=pytest.mark.slow),
    ("mxfp6_e2m3", None, wt.WOConfig(32, 128, 1, 4, 2, "block", "xw"))], ids=str)
def test_group_major_layout(fmt, group, cfg):
  """layout="groups": group g of rows r.. is data[g, r..] (the row-major layout's data[r.., g-th run], moved),
  the same for the scales, and the kernel reads it to the same numbers (K padded; N not a multiple of block_n;
  row masks; split-K)."""
  q = _weight(fmt, k=700)
  rows, gm = wt.prepare_weight_triton(q, group, layout="rows"), wt.prepare_weight_triton(q, group, layout="groups")
  spec = wt.weight_spec(fmt, group)
  kg = rows.k_padded // spec.group
  assert gm.layout == "groups" and rows.layout == "rows"
  assert (gm.n_padded, gm.k_padded) == (rows.n_padded, rows.k_padded) == (256, kg * spec.group)
  assert gm.nbytes == rows.nbytes
  d, s = np.asarray(rows.data), np.asarray(rows.scales)
  np.testing.assert_array_equal(np.asarray(gm.data), d.reshape(256, kg, -1).transpose(1, 0, 2))
  np.testing.assert_array_equal(np.asarray(gm.scales), s.reshape(256, kg, -1).transpose(1, 0, 2))
  assert gm.data[1, 5].tobytes() == d[5, d.shape[1] // kg:2 * d.shape[1] // kg].tobytes()  # group 1 of row 5
  x = _x(33, k=700)
  out = wt.wo_matmul(x, gm, out_dtype=jnp.float32, config=cfg, interpret=True)
  _check(out, x, q)
  same = dataclasses.replace(cfg, block_k=spec.group)  # what a group-major weight runs cfg as (one group a step)
  np.testing.assert_array_equal(out, wt.wo_matmul(x, rows, out_dtype=jnp.float32, config=same, interpret=True))
  _check(wt.wo_matmul(x[:5], gm, out_dtype=jnp.float32, interpret=True), x[:5], q)  # the default config


@pytest.mark.parametrize("fmt,group,layout,cfg", [
    ("mxfp4_e2m1", None, "groups", wt.WOConfig(64, 256, 2, 4, 3, "elem", "xw", n_acc=4)),
    ("nvfp4", 512, "groups", wt.WOConfig(32, 512, 2, 4, 2, "elem", "xw")),
    pytest.param("mxfp8_e4m3", None, "rows", wt.WOConfig(32, 128, 3, 4, 2, "elem", "xw"), marks=pytest.mark.slow),
    pytest.param("mxfp6_e2m3", None, "rows", wt.WOConfig(64, 128, 4, 4, 2, "block", "wt"),
                 marks=pytest.mark.slow)], ids=str)
def test_split_k_summed_in_the_kernel(fmt, group, layout, cfg):
  """reduce="kernel": the last program of each N tile sums the FP32 partials in split order, so the output is
  bit-identical to the XLA-summed split-K (and within the FP32 bound of the f64 reference); K padded, N not a
  multiple of block_n, row masks, 2-4 splits."""
  q = _weight(fmt, k=1000)
  pw = wt.prepare_weight_triton(q, group, layout=layout)
  x = _x(33, k=1000)
  kcfg = dataclasses.replace(cfg, reduce="kernel")
  for m in (33, 5):
    out = wt.wo_matmul(x[:m], pw, out_dtype=jnp.float32, config=kcfg, interpret=True)
    _check(out, x[:m], q)
    np.testing.assert_array_equal(out, wt.wo_matmul(x[:m], pw, out_dtype=jnp.float32, config=cfg, interpret=True))
  bf = wt.wo_matmul(x, pw, config=kcfg, interpret=True)  # bf16 out: the f32 sum rounded once
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bf, np.float32),
                                np.asarray(wt.wo_matmul(x, pw, config=cfg, interpret=True), np.float32))
  _check(wt.wo_matmul(x[:20], pw, out_dtype=jnp.float32, interpret=True), x[:20], q)  # 17..32 rows: the default
  with pytest.raises(ValueError, match="reduce"):
    wt.WOConfig(reduce="atomic")


def test_prepare_weight_for_follows_the_config():
  """The weight a config runs on (what wo_matmul prepares a QArray into): its packing group and layout."""
  q = _weight("mxfp4_e2m1", k=512)
  pw = wt.prepare_weight_for(q, wt.WOConfig(64, 512, layout="rows"))
  assert (pw.group, pw.layout) == (512, "rows")
  pw = wt.prepare_weight_for(q, wt.WOConfig(64, 256, layout="groups"))
  assert (pw.group, pw.layout) == (256, "groups")
  assert wt.prepare_weight_for(q).layout == wt.default_layout("mxfp4_e2m1")
  assert wt.prepare_weight_for(_weight("mxfp8_e4m3"), wt.WOConfig(layout="groups")).layout == "rows"
  for f in (wt.prepare_weight_for, lambda q, c: wt.weight_layout(q.fmt, c), lambda q, c: wt.packing_group(q.fmt, c)):
    with pytest.raises(TypeError, match="config must be a WOConfig"):
      f(q, "n64k256")
  with pytest.raises(ValueError, match="fmt must be one of"):
    wt.default_layout("mxfp9")
  with pytest.raises(TypeError, match="w must be a QArray"):
    wt.prepare_weight_for(np.zeros((4, 32)), None)


def test_group_major_validation():
  with pytest.raises(ValueError, match="layout must be one of"):
    wt.prepare_weight_triton(_weight("mxfp8_e4m3"), layout="groups")  # 8-bit codes stay row-major
  with pytest.raises(ValueError, match="layout must be one of"):
    wt.prepare_weight_triton(_weight("mxfp4_e2m1"), layout="cols")
  with pytest.raises(ValueError, match="layout must be one of"):
    wt.WOConfig(layout="cols")
  cfg = wt.fit_config(wt.WOConfig(64, 512, 2), "mxfp6_e2m3", 16, 256, 1024, one_group=True)
  assert cfg.block_k == 128  # a group-major step is exactly one group
  gm_cfg = wt.WOConfig(layout="groups")
  assert wt.weight_layout("mxfp8_e4m3", gm_cfg) == "rows" and wt.weight_layout("mxfp6_e2m3", gm_cfg) == "groups"
  assert wt.weight_layout("mxfp4_e2m1", None) == "groups" and wt.weight_layout("mxfp6_e2m3", None) == "rows"


def test_fp4_group_validation():
  codes = jnp.zeros((2, 512), jnp.uint8)
  with pytest.raises(ValueError, match="group must be one of"):
    wt.pack_fp4(codes, group=128)
  with pytest.raises(ValueError, match="codes must be"):
    wt.pack_fp4(jnp.zeros((2, 768), jnp.uint8), group=512)
  with pytest.raises(ValueError, match="j must be"):
    wt.fp4_codes(jnp.zeros((2, 4), jnp.uint16), 4)
  with pytest.raises(ValueError, match="group must be one of"):
    wt.prepare_weight_triton(_weight("mxfp4_e2m1"), group=1024)
  with pytest.raises(ValueError, match="group must be one of"):
    wt.prepare_weight_triton(_weight("mxfp8_e4m3"), group=512)  # only FP4's layout has a choice
  with pytest.raises(ValueError, match="fmt must be one of"):
    wt.weight_spec("mxfp9")
  assert wt.packing_group("mxfp4_e2m1", wt.WOConfig(64, 512)) == 512
  assert wt.packing_group("nvfp4", wt.WOConfig(64, 256)) == 256 and wt.packing_group("mxfp8_e4m3", None) is None
  assert wt.packing_group("nvfp4", None) is None  # no config: the prepared weight's default
  assert wt.prepare_weight_triton(_weight("nvfp4", k=1024)).group == 0  # default: 256-groups


def test_fp4_asm_decode_gives_every_code_in_every_tile_and_half():
  """The inline PTX (run by a small interpreter here; on the GPU by benchmarks/bench_wo.py) turns tile j of two
  packed words into bf16x2 elem * 2^-6 (the jnp decode's value) for all 16 codes, in both halves, whatever the
  other tiles' codes are; without the rescale (``fold``) the bits are elem * 2^-126."""
  e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)
  val = np.concatenate([e2m1, -e2m1])
  rng = np.random.default_rng(3)
  codes = rng.integers(0, 16, size=(4096, 2, 4))  # (samples, half, tile)
  codes[:16, :, :] = np.arange(16)[:, None, None]
  words = np.zeros((4096, 2), np.uint64)
  for j in range(4):
    words |= ((codes[..., j] & 7) << MAG[j] | (codes[..., j] >> 3) << SIGN[j]).astype(np.uint64)
  reg = words[:, 0] | (words[:, 1] << np.uint64(16))
  for j in range(4):
    for asm, scale in ((wt._asm_fp4(j), 2.0 ** -6), (wt._unfold(wt._asm_fp4(j), 120), 2.0 ** -126)):
      [out] = _run_ptx(asm, [reg])
      for h in range(2):
        bits = ((out >> np.uint64(16 * h)) & np.uint64(0xFFFF)).astype(np.uint16)
        got = bits.view(jnp.bfloat16).astype(np.float64)
        want = val[codes[:, h, j]] * scale
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), codes[:, h, j] >= 8)  # -0 keeps its sign


def test_kernel_views_8bit_steps_as_one_group():
  """8-bit codes are row-major, so the per-element kernel views a whole K step as one 2-D tile; FP4 keeps its
  256-groups (four 64-wide tiles of uint16 words), FP6 its 128-groups (four 32-wide tiles)."""
  cfg = wt.WOConfig(64, 512, 1, 4, 4, "elem", "xw")
  assert (wt.kernel_spec("mxfp8_e4m3", cfg).group, wt.kernel_spec("mxfp8_e4m3", cfg).tw) == (512, 512)
  assert wt.kernel_spec("mxfp8_e4m3", dataclasses.replace(cfg, scale_mode="block")).group == 32
  assert (wt.kernel_spec("nvfp4", cfg).tiles, wt.kernel_spec("nvfp4", cfg).tw, wt.kernel_spec("nvfp4", cfg).word) \
      == (4, 64, 16)
  assert (wt.kernel_spec("mxfp6_e3m2", cfg).tiles, wt.kernel_spec("mxfp6_e3m2", cfg).tw) == (4, 32)
  assert wt.max_rows("mxfp4_e2m1") == wt.MAX_ROWS // 2 and wt.max_rows("mxfp8_e4m3") == wt.MAX_ROWS
  with pytest.raises(ValueError, match="fmt must be one of"):
    wt.kernel_spec("mxfp9", cfg)
  with pytest.raises(ValueError, match="fmt must be one of"):
    wt.max_rows("mxfp9")
  with pytest.raises(TypeError, match="cfg must be a WOConfig"):
    wt.kernel_spec("mxfp8_e4m3", {"block_k": 256})


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4_e2m1"])
def test_row_chunks_fp4(weights, monkeypatch, fmt):
  monkeypatch.setattr(wt, "MAX_ROWS", 32)  # FP4: chunks of 16 rows
  q = weights[fmt]
  x = _x(40)
  _check(wt.wo_matmul(x, q, out_dtype=jnp.float32, interpret=True), x, q)


def test_row_chunks(weights, monkeypatch):
  monkeypatch.setattr(wt, "MAX_ROWS", 16)
  q = weights["mxfp8_e4m3"]
  x = _x(33)
  _check(wt.wo_matmul(x, q, out_dtype=jnp.float32, interpret=True), x, q)


# ------------------------------------------------------------------------------------------------------------
# Extreme scales
# ------------------------------------------------------------------------------------------------------------


def _qarray_with_scales(fmt, row_exps, seed=0, positive=True, n_rows=None):
  """(len(row_exps), K) QArray: random element codes (positive ones if ``positive``, so nothing cancels),
  row r's E8M0 scales all 2^row_exps[r]."""
  f = get_format(fmt)
  rng = np.random.default_rng(seed)
  n = len(row_exps)
  nb = K // 32
  if f.elem.bits == 8 and f.elem.is_int:
    codes = rng.integers(-127, 128, size=(n, K)).astype(np.int8)
    if positive:
      codes = np.abs(codes).astype(np.int8)
    data = jnp.asarray(codes)
  else:
    vals = f.elem.max_normal * np.asarray(jax.random.uniform(jax.random.key(seed), (n, K), jnp.float32))
    vals = np.where(rng.random((n, K)) < 0.1, f.elem.min_subnormal, vals)  # subnormal codes too
    if not positive:
      vals = vals * np.where(rng.random((n, K)) < 0.5, -1.0, 1.0)
    q0 = mx_jax.quantize(jnp.asarray(vals, jnp.float32), fmt, axis=1)  # scale 2^0 here: codes on the grid
    data = q0.data
  sb = np.repeat(np.asarray(row_exps, np.int32)[:, None] + 127, nb, axis=1).astype(np.uint8)
  scales = jax.lax.bitcast_convert_type(jnp.asarray(sb), jnp.float8_e8m0fnu)
  return QArray(data, scales, None, fmt, 1, (n, K), 32, False)


MX = [f for f in FORMATS if f != "nvfp4"]


@pytest.mark.parametrize("fmt", [f if f in ("mxfp8_e4m3", "mxfp4_e2m1", "mxint8") else  # the rest: slow
                                 pytest.param(f, marks=pytest.mark.slow) for f in MX])
def test_extreme_scales_block_mode(fmt):
  """Promotion (scale_mode="block") is exact for any E8M0 scale: rows scaled 2^-120 / 2^100 / 2^-127 / 2^0."""
  f = get_format(fmt).elem
  top = 127 - int(np.ceil(np.log2(f.max_normal * K * 2 * 2)))  # keep the FP32 result finite
  exps = [-120, min(100, top), -110, 0] * 4
  q = _qarray_with_scales(fmt, exps)
  x = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, (16, K)), jnp.bfloat16)
  cfg = wt.WOConfig(64, 128, 1, 4, 2, "block", "xw")
  out = wt.wo_matmul(x, q, out_dtype=jnp.float32, config=cfg, interpret=True)
  _check(out, x, q)
  ref, _ = _ref(x, q)
  assert np.all(np.abs(ref[:, 0::4]) < 2.0 ** -85) and np.all(np.abs(ref[:, 1::4]) > 2.0 ** 80)


@pytest.mark.parametrize("fmt", MX)
def test_extreme_scales_elem_mode(fmt):
  """scale_mode="elem" is exact over elem_exact_range(fmt), checked at both ends (and signed codes). At the low
  end the weights reach 2^-126, so x >= 2 keeps every product an FP32 normal (XLA:CPU flushes FP32 subnormals,
  and the range is about the decoded weights, not about FP32 accumulation of subnormal products); positive codes
  there, so no partial sum cancels into the subnormal range either."""
  lo, hi = wt.elem_exact_range(fmt)
  q_lo = _qarray_with_scales(fmt, [lo] * 16, positive=True)  # no cancellation: FP32 partial sums stay normal
  q_hi = _qarray_with_scales(fmt, [hi] * 16, positive=False, seed=5)
  cfg = wt.WOConfig(64, 128, 1, 4, 2, "elem", "xw")
  x = jnp.asarray(np.random.default_rng(4).uniform(2.0, 8.0, (16, K)), jnp.bfloat16)
  _check(wt.wo_matmul(x, q_lo, out_dtype=jnp.float32, config=cfg, interpret=True), x, q_lo)
  x_small = (x.astype(jnp.float32) * 2.0 ** -24).astype(jnp.bfloat16)  # keep the FP32 sum finite
  _check(wt.wo_matmul(x_small, q_hi, out_dtype=jnp.float32, config=cfg, interpret=True), x_small, q_hi)


def test_elem_exact_range_values():
  assert wt.elem_exact_range("mxfp8_e4m3") == (-117, 119)
  assert wt.elem_exact_range("mxfp4_e2m1") == (-119, 125)
  assert wt.elem_exact_range("mxint8") == (-126, 121)


@pytest.mark.parametrize("mode", ["block", "elem"])
def test_nvfp4_extremes(mode):
  """NVFP4: E4M3 block scales at their extremes (2^-9 subnormal, 448) and tiny / huge FP32 tensor scales."""
  rng = np.random.default_rng(7)
  q = _weight("nvfp4", n=64)
  sb = rng.choice(np.array([0x01, 0x7E, 0x38, 0x08], np.uint8), size=q.scales.shape)  # 2^-9, 448, 1, 2^-6
  scales = jax.lax.bitcast_convert_type(jnp.asarray(sb), jnp.float8_e4m3fn)
  x = _x(16)
  cfg = wt.WOConfig(64, 128, 1, 4, 2, mode, "xw")
  for ts in (2.0 ** -60, 2.0 ** 60):
    qq = dataclasses.replace(q, scales=scales, tensor_scale=jnp.float32(ts))
    _check(wt.wo_matmul(x, qq, out_dtype=jnp.float32, config=cfg, interpret=True), x, qq)


@pytest.mark.parametrize("mode", ["block", "elem"])
def test_nan_scale(mode):
  q = _qarray_with_scales("mxfp8_e4m3", [0] * 16, positive=False)
  sb = np.full((16, K // 32), 127, np.uint8)
  sb[3, 2] = 255  # E8M0 NaN: row 3's outputs are NaN, the others are not
  q = dataclasses.replace(q, scales=jax.lax.bitcast_convert_type(jnp.asarray(sb), jnp.float8_e8m0fnu))
  x = _x(4)
  out = np.asarray(wt.wo_matmul(x, q, out_dtype=jnp.float32, config=wt.WOConfig(scale_mode=mode),
                                interpret=True))
  assert np.isnan(out[:, 3]).all() and np.isfinite(np.delete(out, 3, axis=1)).all()


# ------------------------------------------------------------------------------------------------------------
# Errors and lowering
# ------------------------------------------------------------------------------------------------------------


def test_invalid_inputs(weights):
  q = weights["mxfp8_e4m3"]
  with pytest.raises(TypeError, match="x"):
    wt.wo_matmul(jnp.ones((4, K), jnp.int32), q, interpret=True)
  with pytest.raises(TypeError, match="x"):
    mx_weight_only_matmul(jnp.ones((4, K), jnp.int32), q, impl="triton", interpret=True)
  with pytest.raises(ValueError, match="K"):
    wt.wo_matmul(jnp.ones((4, K + 32), jnp.bfloat16), q, interpret=True)
  with pytest.raises(ValueError, match="K"):
    mx_weight_only_matmul(jnp.ones((4, K + 32), jnp.bfloat16), q, impl="triton", interpret=True)
  per_tensor = mx_jax.quantize(jnp.ones((N, K)), "fp8_e4m3")
  with pytest.raises(ValueError, match="w has format"):
    wt.prepare_weight_triton(per_tensor)
  with pytest.raises(ValueError, match="block_size"):
    wt.prepare_weight_triton(mx_jax.quantize(jnp.ones((N, K)), "mxfp8_e4m3", axis=1, block_size=16))
  with pytest.raises(ValueError, match="axis"):
    wt.prepare_weight_triton(mx_jax.quantize(jnp.ones((N, K)), "mxfp8_e4m3", axis=0))
  with pytest.raises(TypeError, match="w must be"):
    wt.wo_matmul(jnp.ones((4, K), jnp.bfloat16), np.ones((N, K)), interpret=True)
  with pytest.raises(TypeError, match="config"):
    wt.wo_matmul(jnp.ones((4, K), jnp.bfloat16), q, config="fast", interpret=True)
  with pytest.raises(ValueError, match="scale_mode"):
    wt.WOConfig(scale_mode="row")
  with pytest.raises(ValueError, match="block_n"):
    wt.WOConfig(block_n=48)
  with pytest.raises(ValueError, match="impl"):
    mx_weight_only_matmul(jnp.ones((4, K), jnp.bfloat16), q, impl="cuda")
  with pytest.raises(ValueError, match="impl='triton'"):
    mx_weight_only_matmul(jnp.ones((4, K), jnp.bfloat16), wt.prepare_weight_triton(q), impl="xla")


def test_fit_config():
  c = wt.fit_config(wt.WOConfig(256, 512, 3, 4, 4), "mxfp6_e2m3", 256, 256, 768)
  assert 256 % c.block_n == 0 and 768 % (c.block_k * c.split_k) == 0 and c.block_k >= 128
  assert 256 * c.block_n <= 64 * 32 * c.num_warps
  assert c.num_stages * (256 * c.block_k * 2 + c.block_n * c.block_k) <= wt.SMEM_BUDGET


@pytest.mark.parametrize("fmt,cfg", [(f, wt.CANDIDATES[0]) for f in FORMATS]
                         + [(f, c) for f in ("mxfp4_e2m1", "mxfp6_e3m2", "mxint8", "mxfp8_e4m3")
                            for c in (wt.CANDIDATES[2], wt.CANDIDATES[4])]
                         + [(f, wt.default_config(16, f, True)) for f in FORMATS]
                         + [("mxfp4_e2m1", wt.default_config(32, "mxfp4_e2m1", True))])  # split-K summed in-kernel
def test_lowers_to_triton(fmt, cfg):
  """The compiled path lowers to Triton IR (every primitive has a Pallas Triton rule), on a CPU host."""
  from kernels import _dispatch
  q = jax.eval_shape(lambda w: mx_jax.quantize(w, fmt, axis=1), jax.ShapeDtypeStruct((512, 1024), jnp.float32))
  pw = jax.eval_shape(wt.prepare_weight_triton, q)
  x = jax.ShapeDtypeStruct((5, 1024), jnp.bfloat16)
  txt = _dispatch.lower_for_cuda(lambda x, w: wt.wo_matmul(x, w, config=cfg), x, pw)
  assert "__gpu$xla.gpu.triton" in txt


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4_e2m1"])
def test_default_config_promotes_when_scales_leave_elem_range(fmt):
  """The default per-element scaling is chosen only when every scale is inside elem_exact_range; a weight with
  a 2^-120 scale gets promotion (exact) — never a silently wrong default."""
  lo, hi = wt.elem_exact_range(fmt)
  ok = wt.prepare_weight_triton(_qarray_with_scales(fmt, [lo, hi, 0, -3] * 4))
  bad_q = _qarray_with_scales(fmt, [-120, 0, 0, -3] * 4)
  bad = wt.prepare_weight_triton(bad_q)
  assert ok.elem_ok and not bad.elem_ok
  assert wt.default_config(16, fmt, ok.elem_ok).scale_mode == "elem"
  assert wt.default_config(16, fmt, bad.elem_ok).scale_mode == "block"
  x = jnp.asarray(np.random.default_rng(4).uniform(0.5, 2.0, (16, K)), jnp.bfloat16)
  _check(wt.wo_matmul(x, bad, out_dtype=jnp.float32, interpret=True), x, bad_q)


# ------------------------------------------------------------------------------ folded rescale (opt-in config)


@pytest.mark.parametrize("shift", [120, 112])
def test_folded_scale_bits_are_exact_powers_of_two(shift):
  """E8M0 byte b -> bf16 2^(b - 127 + shift) for every b the fold allows (b + shift <= 254; so never the NaN
  byte 255, which fold_ok excludes)."""
  b = np.arange(0, 255 - shift, dtype=np.uint8)
  got = np.asarray(wt._scale_bf16_folded(jnp.asarray(b), shift).astype(jnp.float32), np.float64)
  np.testing.assert_array_equal(got, np.exp2(b.astype(np.float64) - 127 + shift))


@pytest.mark.parametrize("fmt,e_max", [("mxfp8_e4m3", 7), ("mxfp4_e2m1", 7), ("mxfp6_e3m2", 7), ("mxint8", 15)])
def test_fold_only_where_the_scale_stays_finite(fmt, e_max):
  """fold_ok needs every 2^(e + fold_shift) finite in bf16: e <= 127 - fold_shift; one scale above turns it off
  (per-element scaling stays on)."""
  assert wt.fold_shift(fmt) == 127 - e_max
  ok = wt.prepare_weight_triton(_qarray_with_scales(fmt, [e_max, -3, 0, -20] * 4))
  over = wt.prepare_weight_triton(_qarray_with_scales(fmt, [e_max + 1, -3, 0, -20] * 4))
  assert ok.elem_ok and ok.fold_ok
  assert over.elem_ok and not over.fold_ok
  nan = wt.prepare_weight_triton(_qarray_with_scales(fmt, [128, -3, 0, -20] * 4))  # E8M0 NaN byte 255
  assert nan.elem_ok and not nan.fold_ok  # the folded scale conversion has no NaN select


def test_nvfp4_folded_scale_is_exact_and_finite_for_every_e4m3_byte():
  """NVFP4's fold moves 2^119 (not the decode's whole 2^120) into its E4M3 scale: every byte's value times
  2^119, exact and finite (448 * 2^120 would overflow bf16); NaN stays NaN."""
  b = np.arange(256, dtype=np.uint8)
  got = np.asarray(wt._scale_bf16_nv_folded(jnp.asarray(b), wt.fold_shift("nvfp4")).astype(jnp.float32),
                   np.float64)
  want = b.view(ml_dtypes.float8_e4m3fn).astype(np.float64) * 2.0 ** 119
  np.testing.assert_array_equal(got, want)  # NaN == NaN under assert_array_equal
  assert np.isfinite(got[np.isfinite(want)]).all() and wt.fold_shift("nvfp4") == 119
  w = mx_jax.quantize(jax.random.normal(jax.random.key(0), (128, 256)) * 0.1, "nvfp4", axis=1)
  assert wt.prepare_weight_triton(w).fold_ok


@pytest.mark.parametrize("fmt", ["mxfp8_e5m2"])
def test_fold_never_for_formats_without_an_asm_rescale(fmt):
  w = mx_jax.quantize(jax.random.normal(jax.random.key(0), (128, 256)) * 0.1, fmt, axis=1)
  assert not wt.prepare_weight_triton(w).fold_ok


def test_fold_shift_rejects_formats_without_an_asm_rescale():
  for fmt in ("mxfp8_e5m2", "mxfp9"):
    with pytest.raises(ValueError, match="fmt must be one of"):
      wt.fold_shift(fmt)


def test_fp4_default_is_the_timed_candidate():
  """The FP4 defaults (per-element scaling) are configs timed as candidates: group-major weights (the default
  layout) 49 / 75 / 74 (256-groups, M <= 16 / <= 32 / larger; 75 = 49 summing split-K in the kernel, session
  11) and 64 / 67 (512-groups, session 10); row-major weights 36 / 16
  and 34 (session 9)."""
  for fmt in ("mxfp4_e2m1", "nvfp4"):
    assert wt.default_layout(fmt) == "groups"
    assert wt.default_config(16, fmt, True) == wt.CANDIDATES[49]
    assert wt.default_config(32, fmt, True) == wt.CANDIDATES[75]  # 49 with the partials summed in the kernel
    assert wt.default_config(128, fmt, True) == wt.CANDIDATES[74]
    assert wt.default_config(16, fmt, True, 512) == wt.CANDIDATES[64]
    assert wt.default_config(64, fmt, True, 512) == wt.CANDIDATES[67]
    assert wt.default_config(16, fmt, True, 512, "rows") == wt.CANDIDATES[34]
    assert wt.default_config(16, fmt, True, None, "rows") == wt.CANDIDATES[36]
    assert wt.default_config(128, fmt, True, None, "rows") == wt.CANDIDATES[16]
  assert wt.default_config(16, "mxfp8_e4m3", True) == wt.CANDIDATES[1]
  assert wt.default_layout("mxfp8_e4m3") == wt.default_layout("mxfp6_e2m3") == "rows"


def test_n_acc_validation():
  with pytest.raises(ValueError, match="n_acc"):
    wt.WOConfig(64, 256, 1, 4, 4, "elem", "xw", n_acc=3)
  with pytest.raises(ValueError, match="n_acc"):
    wt.WOConfig(64, 256, 1, 4, 4, "block", "xw", n_acc=2)
  assert wt.WOConfig(64, 256, 1, 4, 4, "elem", "xw", n_acc=2).name().endswith("_acc2")


def test_fold_config_validation():
  with pytest.raises(ValueError, match="fold"):
    wt.WOConfig(64, 256, 1, 4, 4, "elem", "xw", decode="jnp", fold=True)
  with pytest.raises(ValueError, match="fold"):
    wt.WOConfig(64, 256, 1, 4, 4, "block", "xw", decode="asm", fold=True)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4_e2m1", "mxfp6_e2m3", "mxint8", "nvfp4"])
def test_fold_drops_the_decode_rescale_only_for_weights_that_allow_it(fmt):
  """Lowered for CUDA: a fold config emits the asm decode without its mul.rn.bf16x2 rescale when the weight is
  fold_ok, and keeps it (the unfolded, always-exact kernel) when it is not."""
  from kernels import _dispatch
  q = jax.eval_shape(lambda w: mx_jax.quantize(w, fmt, axis=1), jax.ShapeDtypeStruct((512, 1024), jnp.float32))
  pw = dataclasses.replace(jax.eval_shape(wt.prepare_weight_triton, q), elem_ok=True)
  x = jax.ShapeDtypeStruct((5, 1024), jnp.bfloat16)
  cfg = wt.WOConfig(64, 256, 1, 4, 4, "elem", "xw", decode="asm", fold=True)
  low = lambda w: _dispatch.lower_for_cuda(lambda x, w: wt.wo_matmul(x, w, config=cfg), x, w)  # noqa: E731
  assert "mul.rn.bf16x2" not in low(dataclasses.replace(pw, fold_ok=True))
  assert "mul.rn.bf16x2" in low(dataclasses.replace(pw, fold_ok=False))
