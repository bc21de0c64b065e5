#!/usr/bin/env bash
# The GRPO comparison of issues 8 and 19, end to end and resumable (re-run it after an interruption):
#  1. a LenVM for the policy: value head on the frozen SmolLM2-135M-Instruct, pretrained on the committed
#     GSM8K rollouts of the policy itself at the RL temperature (200 questions x 8, T 0.7), 1 epoch;
#  2. the RL runs, seed by seed (bench_grpo.py train skips finished runs and resumes from the last checkpoint):
#     plain, group, lenvm, the group twin at each s of TWIN_COEFS (default 2.0,4.0) and lenvm at s = LENVM2_COEF
#     (default 0.25) at every seed of SEEDS (default 0,1,2), and lenvm + pass-rate gate at seed 0 only. The twin's
#     length stopped falling with s (at 1, 2 and 4 it stayed longer than lenvm), so the matched-length comparison
#     moves lenvm instead: plain (s = 0), lenvm at LENVM2_COEF and at LENGTH_COEF, piecewise linear in s, to the
#     last twin's length;
#  3. held-out samples of every run and of the base policy, then the tables over seeds and docs/grpo_seeds.png.
# OUT (default bench/results/grpo) holds checkpoints; LENVM (default $OUT/critic) the critic; LENGTH_COEF
# (default 0.5) is the s of the arms without _sX, in train and report; PLOT the PNG; DATA the GSM8K source. Extra
# arguments go to train
# (e.g. --steps). ARMS (comma-separated) runs another comparison instead, at seed 0 with the single-seed report,
# e.g. the PPO comparison of issue 10:
#    OUT=bench/results/ppo LENVM=bench/results/grpo/critic ARMS=ppo_lenvm,ppo_lenvm_s0,ppo_group \
#        PLOT=docs/ppo_compare.png bash bench/grpo_compare.sh --steps 16 --chunk 8
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/grpo}
LENVM=${LENVM:-$OUT/critic}
SEEDS=${SEEDS:-0,1,2}
TWIN_COEFS=${TWIN_COEFS:-2.0,4.0}
LENVM2_COEF=${LENVM2_COEF:-0.25}
LENGTH_COEF=${LENGTH_COEF:-0.5}
DATA=${DATA:-openai/gsm8k}  # GSM8K: the Hub id, or a local folder of train.jsonl/test.jsonl (offline)
TRAIN="bench/rollouts/gsm8k_train200_n8_t0.7.rows0-139.jsonl bench/rollouts/gsm8k_train200_n8_t0.7.rows140-199.jsonl"
# The shipped head (lenvm_rl/pretrained/smollm2-135m-gsm8k: the critic of step 1, trained once, 1.3 MB) on the
# embedded backbone, which it left unchanged (frozen): every run of every session uses this one LenVM.
COMMITTED=lenvm_rl/pretrained/smollm2-135m-gsm8k
if [ ! -f "$LENVM/value_head.safetensors" ] && [ -f "$COMMITTED/value_head.safetensors" ]; then
  backbone=$(python -c "from lenvm_rl.modeling import resolve_model_path; print(resolve_model_path('smollm2-135m'))")
  mkdir -p "$LENVM"
  cp "$COMMITTED"/* "$LENVM"/
  ln -sf "$backbone/model.safetensors" "$LENVM/model.safetensors"
  ln -sf "$backbone/tokenizer.json" "$LENVM/tokenizer.json"
fi
if [ ! -f "$LENVM/value_head.safetensors" ]; then
  last=$(ls -d "$LENVM"/checkpoint-* 2>/dev/null | sort -V | tail -n 1 || true)
  lenvm-rl pretrain --model_name_or_path smollm2-135m --train_rollouts $TRAIN \
    --eval_rollouts bench/rollouts/gsm8k_test50_n16_t0.7.jsonl --output_dir "$LENVM" --freeze_backbone \
    --num_train_epochs 1 --learning_rate 1e-3 --lr_scheduler_type constant --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 --eval_strategy no --use_cpu --bf16 --report_to none --save_strategy steps \
    --save_steps 25 --save_total_limit 1 --logging_steps 10 --seed 0 ${last:+--resume_from_checkpoint "$last"}
fi
if [ -n "${ARMS:-}" ]; then
  python bench/bench_grpo.py train --data "$DATA" --lenvm "$LENVM" --output-dir "$OUT" --arms "$ARMS" "$@"
  python bench/bench_grpo.py evaluate --data "$DATA" --output-dir "$OUT" --arms "$ARMS"
  python bench/bench_grpo.py report --data "$DATA" --output-dir "$OUT" --arms "$ARMS" --plot "${PLOT:-docs/grpo_compare.png}"
  exit 0
fi
twins=$(printf 'group_s%s,' ${TWIN_COEFS//,/ })
SEEDED=plain,group,lenvm,${twins}lenvm_s$LENVM2_COEF
MATCHED=plain,lenvm_s$LENVM2_COEF,lenvm:group_s${TWIN_COEFS##*,}
GATED=lenvm_pass_rate
# seed by seed, so that a partial run already has every arm at the first seeds; the gated arm runs at seed 0 only
for seed in ${SEEDS//,/ }; do
  python bench/bench_grpo.py train --data "$DATA" --lenvm "$LENVM" --output-dir "$OUT" --arms "$SEEDED" --seeds "$seed" \
    --length-coef "$LENGTH_COEF" "$@"
  if [ "$seed" = 0 ]; then
    python bench/bench_grpo.py train --data "$DATA" --lenvm "$LENVM" --output-dir "$OUT" --arms "$GATED" --seeds 0 \
      --length-coef "$LENGTH_COEF" "$@"
  fi
done
python bench/bench_grpo.py evaluate --data "$DATA" --output-dir "$OUT" --arms "$SEEDED" --seeds "$SEEDS"
python bench/bench_grpo.py evaluate --data "$DATA" --output-dir "$OUT" --arms "$GATED" --seeds 0
python bench/bench_grpo.py report --data "$DATA" --output-dir "$OUT" --arms "$SEEDED,$GATED" --seeds "$SEEDS" \
  --length-coef "$LENGTH_COEF" --matched "$MATCHED" --seeds-plot "${PLOT:-docs/grpo_seeds.png}"
# The record to commit (ARCHIVE, default bench/grpo_seeds): each finished run's training log (the last checkpoint's
# trainer_state.json, no weights) and held-out samples, in $OUT's layout, so that `report --output-dir $ARCHIVE`
# rebuilds the tables and the plot without any checkpoint.
ARCHIVE=${ARCHIVE:-bench/grpo_seeds}
mkdir -p "$ARCHIVE/eval"
for run_dir in "$OUT"/*-seed*/; do
  run=$(basename "$run_dir")
  last=$(ls -d "$run_dir"checkpoint-* 2>/dev/null | sort -V | tail -n 1 || true)
  [ -d "$run_dir/final" ] && [ -n "$last" ] && [ -f "$OUT/eval/$run.jsonl" ] || continue
  mkdir -p "$ARCHIVE/$run/$(basename "$last")"
  cp "$last/trainer_state.json" "$ARCHIVE/$run/$(basename "$last")/"
  cp "$OUT/eval/$run.jsonl" "$ARCHIVE/eval/"
done
[ -f "$OUT/eval/base.jsonl" ] && cp "$OUT/eval/base.jsonl" "$ARCHIVE/eval/"
