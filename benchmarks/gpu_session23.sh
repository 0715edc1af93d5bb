#!/usr/bin/env bash
# Session 23 device calls: the cast-transpose kernel (MX quantization along a non-last axis written in the
# block-scaled GEMM's layout, optionally with the last-axis quantization from the same read).
# 1) bench_cast_transpose: the kernel against the paths it replaces on the step's shapes (bits checked), with a
#    tile / warp sweep.
# 2) 1 without the sweep (today's tile defaults), then the 12-layer step, same process: bf16, mxfp8@pallas (today), mxfp8@pallas-nct (session 22's operand path),
#    mxfp8 on XLA (emulation).
# 3) one 2-layer step's gradients on each operand path (check_step_paths), then the per-kernel profile of the
#    2-layer step (attention in).
# 5) check_operand_bits: each kernel-path operand of a 2-layer step against the spec path (and XLA's fast path).
# 6) 5 three ways: bf16 inputs widened plainly (--no-pin), the same without XLA's excess precision, and pinned.
# 7) the 12-layer step with the pin (bf16, mxfp8, mxfp8-np = without it, mxfp8@pallas), one process.
# 4) check_step_paths alone: today's operand path against session 22's (-nct) and XLA's quantizer for all (-xq).
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session23.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 560 python3 -m benchmarks.bench_cast_transpose --sweep --out "$OUT" 2>&1 | grep -v Warn | tail -150 ;;
  2) timeout 90 python3 -m benchmarks.bench_cast_transpose --out "$OUT" 2>&1 | grep -v Warn | tail -12
     timeout 480 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas,mxfp8@pallas-nct,mxfp8 \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
  3) timeout 150 python3 -m benchmarks.check_step_paths --recipes mxfp8@pallas,mxfp8@pallas,mxfp8@pallas-nct,mxfp8 \
       2>&1 | grep -v Warn | tee "$OUT/check_step_paths.log"
     timeout 400 python3 -m benchmarks.diag_step_kernels --recipes bf16,mxfp8,mxfp8@pallas --attn --layers 2 \
       --top 30 --out "$OUT" 2>&1 | grep -v Warn | tail -150 ;;
  4) timeout 500 python3 -m benchmarks.check_step_paths --recipes mxfp8@pallas,mxfp8@pallas-nct,mxfp8@pallas-xq \
       2>&1 | grep -v Warn | tee "$OUT/check_step_paths.log" ;;
  5) timeout 400 python3 -m benchmarks.check_operand_bits --layers 2 2>&1 | grep -v Warn > "$OUT/check_operand_bits.log"
     echo "lines: $(grep -c 'spec' "$OUT/check_operand_bits.log"); with a difference:"
     grep -E '!= spec [1-9]' "$OUT/check_operand_bits.log" | sort | uniq -c | head -40; tail -2 "$OUT/check_operand_bits.log" ;;
  6) for v in "--no-pin|" "--no-pin|--xla_allow_excess_precision=false" "|"; do
       arg="${v%%|*}"; flags="${v#*|}"
       echo "== check_operand_bits $arg XLA_FLAGS=$flags"
       XLA_FLAGS="$flags" timeout 170 python3 -m benchmarks.check_operand_bits --layers 2 $arg 2>&1 | grep -v Warn \
         > "$OUT/check_operand_bits${arg}${flags:+_noexcess}.log"
       f="$OUT/check_operand_bits${arg}${flags:+_noexcess}.log"
       echo "lines: $(grep -c 'spec' "$f"); with a difference: $(grep -cE '!= spec [1-9]' "$f")"
       grep -E '!= spec [1-9]' "$f" | head -4; tail -1 "$f"
     done ;;
  7) timeout 580 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8,mxfp8-np,mxfp8@pallas \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
esac
