#!/usr/bin/env bash
# Both RL comparisons, one after the other, resumable (hours on 2 CPU cores; re-run after an interruption):
# the GRPO estimators of issue 8, then the PPO arms of issue 10 with the same LenVM critic.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/grpo_compare.sh
OUT=bench/results/ppo LENVM=bench/results/grpo/critic ARMS=ppo_lenvm,ppo_lenvm_s0,ppo_group PLOT=docs/ppo_compare.png \
    bash bench/grpo_compare.sh --arms ppo_lenvm,ppo_lenvm_s0,ppo_group --steps 16 --chunk 8
