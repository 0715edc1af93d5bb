"""benchmarks.aot_gpu.kernel_table: launches, bytes and FLOPs read off a compiled XLA:GPU module.

The module below is XLA:GPU's deviceless compilation for an H100 of ``relu(a.astype(bf16) @ b).astype(bf16)``
(a f32[256,512], b bf16[512,128]; metadata trimmed): a split-K Triton GEMM fusion, then a reduce-and-convert.
"""
from benchmarks.aot_gpu import kernel_table, summarize

HLO = """HloModule jit_f, is_scheduled=true, entry_computation_layout={(f32[256,512]{1,0}, bf16[512,128]{1,0})->bf16[256,128]{1,0}}

%gemm_fusion_dot_computation (parameter_0: f32[256,8,64], parameter_1: bf16[8,64,128]) -> f32[8,256,128] {
  %parameter_0 = f32[256,8,64]{2,1,0} parameter(0)
  %convert_element_type.0 = bf16[256,8,64]{2,1,0} convert(%parameter_0)
  %parameter_1 = bf16[8,64,128]{2,1,0} parameter(1)
  ROOT %dot.1 = f32[8,256,128]{2,1,0} dot(%convert_element_type.0, %parameter_1), lhs_batch_dims={1}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%dot.reduce_sub_computation (lhs: f32[], rhs: f32[]) -> f32[] {
  %rhs = f32[] parameter(1)
  %lhs = f32[] parameter(0)
  ROOT %add.1 = f32[] add(%lhs, %rhs)
}

%fused_convert (param_0.6: f32[8,256,128]) -> bf16[256,128] {
  %param_0.6 = f32[8,256,128]{2,1,0} parameter(0)
  %constant_0_1 = f32[] constant(0)
  %reduce.4 = f32[256,128]{1,0} reduce(%param_0.6, %constant_0_1), dimensions={0}, to_apply=%dot.reduce_sub_computation
  %max.0.1 = f32[256,128]{1,0} broadcast(%constant_0_1), dimensions={}
  %max.1.3 = f32[256,128]{1,0} maximum(%reduce.4, %max.0.1)
  ROOT %convert_element_type.3.1 = bf16[256,128]{1,0} convert(%max.1.3)
}

ENTRY %main.2 (a.1: f32[256,512], b.1: bf16[512,128]) -> bf16[256,128] {
  %b.1 = bf16[512,128]{1,0} parameter(1), sharding={mesh[], [{}, {}]}
  %bitcast.2 = bf16[8,64,128]{2,1,0} bitcast(%b.1)
  %a.1 = f32[256,512]{1,0} parameter(0), sharding={mesh[], [{}, {}]}
  %bitcast.1.0 = f32[256,8,64]{2,1,0} bitcast(%a.1)
  %gemm_fusion_dot = f32[8,256,128]{2,1,0} fusion(%bitcast.1.0, %bitcast.2), kind=kCustom, calls=%gemm_fusion_dot_computation, frontend_attributes={xla.pdl_launch="true"}
  ROOT %loop_convert_fusion = bf16[256,128]{1,0} fusion(%gemm_fusion_dot), kind=kLoop, calls=%fused_convert
}
"""


def test_kernel_table_counts_launches_bytes_and_flops():
  rows = kernel_table(HLO)
  assert [r["name"] for r in rows] == ["gemm_fusion_dot", "loop_convert_fusion"]  # bitcasts/parameters: no launch
  gemm, conv = rows
  assert gemm["kind"] == "gemm" and gemm["flops"] == 2 * (8 * 256 * 128) * 64
  assert gemm["bytes"] == 256 * 512 * 4 + 512 * 128 * 2 + 8 * 256 * 128 * 4
  assert conv["kind"] == "kLoop" and conv["flops"] == 0
  assert conv["bytes"] == 8 * 256 * 128 * 4 + 256 * 128 * 2
  s = summarize(rows)
  assert (s["kernels"], s["gemms"]) == (2, 1) and abs(s["us"] - gemm["us"] - conv["us"]) < 1e-9


_LISTING = """
\t.section\t.text.other_kernel,"ax",@progbits
.L_x_0:
        /*0000*/                   FFMA R1, R2, R3, R1 ;
        /*0010*/                   FFMA R1, R2, R3, R1 ;
        /*0020*/                   FFMA R1, R2, R3, R1 ;
        /*0030*/                   FFMA R1, R2, R3, R1 ;
        /*0040*/                   FFMA R1, R2, R3, R1 ;
        /*0050*/                   FFMA R1, R2, R3, R1 ;
        /*0060*/                   FFMA R1, R2, R3, R1 ;
        /*0070*/                   FFMA R1, R2, R3, R1 ;
        /*0080*/               @P0 BRA `(.L_x_0) ;
\t.section\t.text.wo_triton_mxfp4_cfg,"ax",@progbits
        /*0000*/                   MOV R0, RZ ;
.L_x_1:
        /*0010*/                   LDS.64 R2, [R4] ;
.L_x_2:
        /*0020*/                   HMMA.16816.F32.BF16 R8, R2, R6, R8 ;
        /*0030*/                   LOP3.LUT R3, R3, 0xff, RZ, 0xc0, !PT ;
        /*0040*/               @P1 BRA `(.L_x_2) ;
        /*0050*/                   HMUL2.BF16_V2 R5, R5, R7 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   EXIT ;
"""


def test_sass_loop_of_the_named_kernel_is_its_longest_backward_branch():
  """benchmarks/aot_sass_wo.kernel_loop: only the named kernel's section, the outer (longest) loop, opcodes
  without modifiers; the other kernel's longer 8-FFMA loop and the code outside the loop are not counted."""
  from benchmarks.aot_sass_wo import kernel_loop
  mix = kernel_loop(_LISTING)
  assert dict(mix) == {"LDS": 1, "HMMA": 1, "LOP3": 1, "BRA": 2, "HMUL2": 1}


def test_aot_sass_field_parser():
  from benchmarks.aot_sass import _field
  assert [_field(s) for s in ("deq_slots=2", "a_regs=False", "wg_dim=N")] == [
      ("deq_slots", 2), ("a_regs", False), ("wg_dim", "N")]
