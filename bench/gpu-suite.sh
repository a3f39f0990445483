#!/usr/bin/env bash
# The GPU run: CUDA tests, then each workload of shared/bench/WORKLOADS.md beside the
# Hugging Face reference in the same command, on the same cards. Runs on a GPU host
# inside .gpu/app through .gpu/run.sh (see README "GPUs"); writes $OUT/gpu-run.log and
# prints the result lines. Usage: bash bench/gpu-suite.sh [tests] [gpt] [gpt-fused] [gpt-profile] [fp8] [fp8-profile] [ab] [ddp] [ddp4] [ddp8] [zero1] [zero2] [zero3] [offload] [mlp] [op]
# (ddp runs the gpt workload on 2 GPUs, ddpN on N GPUs, one process per GPU).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp}/gpu-run.log
ref=${REF:-../ref}
node=(node --import @oxc-node/core/register)
run() { # name, timeout in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$out"
  timeout "$limit" "$@" >>"$out" 2>&1
  echo "== $name: exit $?" | tee -a "$out"
}
for what in "${@:-tests gpt ddp mlp op}"; do
  for step in $what; do
    case $step in
      tests) run tests 240 node node_modules/ava/entrypoints/cli.mjs --config __test__/gpu/ava.config.mjs ;;
      gpt)
        run gpt-ours 150 "${node[@]}" bench/gpt.ts --precision bf16
        run gpt-hf 150 python3 "$ref/hf_baseline.py" --workload gpt --precision bf16 ;;
      gpt-fused)
        # Issue 15's techniques on gpt bf16, each on and off, beside HF eager and torch.compile.
        for extra in "" "--fused-loss --loss-chunk 2048" "--fused-loss --loss-chunk 4096" "--fused-loss --loss-chunk 8192" \
          --recompute-gelu "--recompute-gelu --fused-loss --loss-chunk 4096" "--recompute-gelu --fused-loss --loss-chunk 8192" \
          --compile-step "--compile-step --recompute-gelu --fused-loss --loss-chunk 4096" "--compile-step --recompute-gelu --fused-loss --loss-chunk 8192"; do
          run "gpt-ours $extra" 150 "${node[@]}" bench/gpt.ts --precision bf16 $extra
        done
        run gpt-hf 150 python3 "$ref/hf_baseline.py" --workload gpt --precision bf16
        run gpt-hf-compile 300 python3 "$ref/hf_baseline.py" --workload gpt --precision bf16 --compile ;;
      gpt-profile)
        # Where a gpt bf16 step's GPU time goes: the 30 largest kernels, plain head and fused loss.
        for extra in "" "--fused-loss --loss-chunk 4096"; do
          run "gpt-profile $extra" 150 "${node[@]}" bench/gpt.ts --precision bf16 --steps 10 --profile $extra
        done ;;
      fp8)
        # fp8 Linear layers against bf16 on the larger gpt shape (24 layers, width 2048, 16 heads, batch 8),
        # with geluLinear (under fp8 its GELU is applied inside the cast), uncaptured and captured.
        for extra in "" --compile-step; do
          for precision in bf16 fp8 bf16 fp8; do
            run "fp8-shape-$precision $extra" 200 "${node[@]}" bench/gpt.ts --precision "$precision" --layers 24 --width 2048 --heads 16 --batch 8 \
              --fused-loss --loss-chunk 4096 --recompute-gelu $extra
          done
        done ;;
      ddp | ddp[0-9])
        gpus=${step#ddp}
        gpus=${gpus:-2}
        run "ddp$gpus-ours" 240 node ts/cli/bin.mjs launch --num_processes "$gpus" --main_process_port 0 --mixed_precision bf16 bench/gpt.ts --precision bf16
        run "ddp$gpus-hf" 240 python3 -m accelerate.commands.launch --multi_gpu --num_processes "$gpus" --main_process_port 29517 --mixed_precision bf16 "$ref/hf_baseline.py" --workload gpt --precision bf16 ;;
      offload)
        # One GPU, 1.64 B parameters: ours with stage 3 and CPU offload beside FSDP2 with CPU offload.
        x=(--precision bf16 --layers 48 --width 1600 --heads 25 --batch 4 --steps 6 --warmup 2)
        for extra in "" --checkpoint-blocks; do
          run "offload-ours$extra" 400 node ts/cli/bin.mjs launch --num_processes 1 --main_process_port 0 --mixed_precision bf16 --use_deepspeed \
            --zero_stage 3 --offload_optimizer_device cpu --offload_param_device cpu bench/gpt.ts "${x[@]}" $extra
        done
        run offload-hf 400 python3 -m accelerate.commands.launch --num_processes 1 --use_fsdp --fsdp_version 2 \
          --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap Block --fsdp_reshard_after_forward true \
          --fsdp_offload_params true --mixed_precision bf16 --main_process_port 29555 "$ref/hf_baseline.py" --workload gpt \
          --precision bf16 --layers 48 --width 1600 --heads 25 --batch 4 --steps 6 --warmup 2 ;;
      zero3)
        run zero3-ours 240 node ts/cli/bin.mjs launch --num_processes 2 --main_process_port 0 --mixed_precision bf16 --use_deepspeed --zero_stage 3 bench/gpt.ts --precision bf16
        run zero3-hf 240 python3 -m accelerate.commands.launch --num_processes 2 --use_fsdp --fsdp_version 2 \
          --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap Block --fsdp_reshard_after_forward true \
          --mixed_precision bf16 --main_process_port 29556 "$ref/hf_baseline.py" --workload gpt --precision bf16 ;;
      zero1 | zero2)
        # ZeRO stage 1 or 2 on the ddp workload (2 GPUs), beside our plain data parallelism in the ddp step.
        run "$step-ours" 240 node ts/cli/bin.mjs launch --num_processes 2 --main_process_port 0 --mixed_precision bf16 --use_deepspeed --zero_stage "${step#zero}" bench/gpt.ts --precision bf16 ;;
      mlp)
        for precision in no bf16; do
          for extra in "" --compile-step; do
            run "mlp-$precision $extra" 150 "${node[@]}" bench/mlp.ts --precision "$precision" $extra --reference "$ref/hf_baseline.py" --python python3
          done
        done ;;
      op) run op 120 "${node[@]}" bench/op-overhead.ts --reference "$ref/op_overhead.py" --python python3 ;;
      ab)
        # An earlier build of the addon ($AB_ADDON) against the current one, alternating, on gpt
        # bf16 (plain, and with geluLinear and the fused loss) and mlp bf16 (bench/ab-addon.sh).
        if [ -z "${AB_ADDON:-}" ]; then
          echo "== ab: skipped (set AB_ADDON to an earlier build of the addon)" | tee -a "$out"
          continue
        fi
        for extra in "" "--recompute-gelu --fused-loss --loss-chunk 4096"; do
          run "ab gpt $extra" 200 bash bench/ab-addon.sh "$AB_ADDON" 2 "${node[@]}" bench/gpt.ts --precision bf16 $extra
        done
        run "ab mlp" 200 bash bench/ab-addon.sh "$AB_ADDON" 2 "${node[@]}" bench/mlp.ts --precision bf16 --reference none ;;
      fp8-profile)
        # Where an fp8 step's GPU time goes on the larger shape, beside bf16's.
        for precision in bf16 fp8; do
          run "fp8-profile-$precision" 200 "${node[@]}" bench/gpt.ts --precision "$precision" --layers 24 --width 2048 --heads 16 --batch 8 \
            --fused-loss --loss-chunk 4096 --steps 5 --warmup 3 --profile
        done ;;
    esac
  done
done
grep -E '^\{|^\[rank 0\] \{|^== .*exit' "$out"
