#!/usr/bin/env bash
# The GRPO comparison of issue 8, end to end and resumable (re-run it after an interruption):
#  1. a LenVM for the policy: value head on the frozen SmolLM2-135M-Instruct, pretrained on the committed
#     GSM8K rollouts of the policy itself at the RL temperature (200 questions x 8, T 0.7), 1 epoch;
#  2. every RL arm, round-robin in chunks of 4 steps (bench_grpo.py train);
#  3. held-out samples of every arm and of the base policy, then the table and the PNG.
# OUT (default bench/results/grpo) holds checkpoints; LENVM (default $OUT/critic) the critic.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/grpo}
LENVM=${LENVM:-$OUT/critic}
TRAIN="bench/rollouts/gsm8k_train200_n8_t0.7.rows0-139.jsonl bench/rollouts/gsm8k_train200_n8_t0.7.rows140-199.jsonl"
if [ ! -f "$LENVM/value_head.safetensors" ]; then
  last=$(ls -d "$LENVM"/checkpoint-* 2>/dev/null | sort -V | tail -n 1 || true)
  lenvm-rl pretrain --model_name_or_path smollm2-135m --train_rollouts $TRAIN \
    --eval_rollouts bench/rollouts/gsm8k_test50_n16_t0.7.jsonl --output_dir "$LENVM" --freeze_backbone \
    --num_train_epochs 1 --learning_rate 1e-3 --lr_scheduler_type constant --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 --eval_strategy no --use_cpu --bf16 --report_to none --save_strategy steps \
    --save_steps 25 --save_total_limit 1 --logging_steps 10 --seed 0 ${last:+--resume_from_checkpoint "$last"}
fi
python bench/bench_grpo.py train --lenvm "$LENVM" --output-dir "$OUT" "$@"
# 3. held-out samples and the report; ARMS (comma-separated) must name the arms trained above when they are not
#    bench_grpo.py's default GRPO arms, e.g. the PPO comparison of issue 10:
#    OUT=bench/results/ppo LENVM=bench/results/grpo/critic ARMS=ppo_lenvm,ppo_lenvm_s0,ppo_group \
#        PLOT=docs/ppo_compare.png bash bench/grpo_compare.sh --arms ppo_lenvm,ppo_lenvm_s0,ppo_group --steps 16 --chunk 8
python bench/bench_grpo.py evaluate --output-dir "$OUT" ${ARMS:+--arms "$ARMS"}
python bench/bench_grpo.py report --output-dir "$OUT" ${ARMS:+--arms "$ARMS"} --plot "${PLOT:-docs/grpo_compare.png}"
