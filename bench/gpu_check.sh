#!/usr/bin/env bash
# Issue 21's GPU checks in one call: the `gpu` tests and the decoding, prediction and serving benchmarks on
# random-weight models of SmolLM2-135M and Qwen2.5-1.5B shape, bf16, on one CUDA GPU with no network.
#
#   bash bench/gpu_prepare.sh                  # HERE first: .gpu/smollm2-tokenizer/ and .whl/ (both git-ignored)
#   bash bench/gpu_check.sh                    # on the GPU machine: carry [".whl", ".gpu/smollm2-tokenizer"]
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh    # dry run on the CPU: tiny models (2 layers, hidden 64), float32
#
# Every step is timed, has a timeout, and the script goes on after a failure. The steps, most wanted first:
#   wheels env models speed-1.5b pytest-gpu predict serve speed-135m
# (speed-*: eager and --compile in one process; when that fails, speed-*-eager runs eager alone).
# A step starts only while GPU_CHECK_BUDGET seconds (default 285; dry run 3600) are not spent, and its timeout is
# cut to what is left: one hang cannot eat the lease. GPU_CHECK_STEPS="pytest-gpu serve" runs only the steps
# named (plus wheels, env and models, which every later step needs); the models are kept under GPU_CHECK_WORK
# (default $TMPDIR/lenvm_gpu_check) and rebuilt only when missing, so a second call on a warm machine reuses them.
# Output: the console and $OUT/gpu_check.log ($OUT unset: ./gpu_check.log), ending with a summary: each step's
# status and time, the speed tables with their ratios against the goals of issue 21, and a GPU_CHECK_STEPS="..." line
# for the steps not done. On an H200 (estimates, nothing measured yet): wheels, env and models about a minute; each
# speed step 2-4 minutes (it compiles three decode steps); pytest-gpu 1-2; predict and serve under 1 each. The whole
# list needs about 10 minutes: GPU_CHECK_BUDGET=540 in one call of 600 s, or the default and a second call.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-$([[ $DRY == 1 ]] && echo 3600 || echo 285)}
STEPS_WANTED=${GPU_CHECK_STEPS:-all}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/lenvm_gpu_check}
TOKENIZER=${GPU_CHECK_TOKENIZER:-.gpu/smollm2-tokenizer}
LOG=${OUT:-.}/gpu_check.log
DATA=tests/data/gsm8k/test.jsonl
MIN_STEP=20  # seconds: a step is skipped when less of the budget is left
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TORCHINDUCTOR_CACHE_DIR=$WORK/inductor PIP_ROOT_USER_ACTION=ignore

if [[ $DRY == 1 ]]; then
  DEVICE=cpu DTYPE=float32 SCALE=6  # step timeouts x6: a loaded 2-core CPU
  TINY='{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128}'
  SPEED=(--prefix 64 --tokens 8 --naive-tokens 1 --repeats 1 --candidates 8)
  SERVE=(--concurrency 1 4 --prompts 8 --rounds 1 --trace-steps 4 --prefix 32 --trace-prefix 32 --timeout 120)
  PREDICT=(--num-prompts 8 --batch-size 4 --repeats 1)
else
  DEVICE=cuda DTYPE=bfloat16 SCALE=1 TINY='{}'
  SPEED=(--prefix 256 --tokens 32 --naive-tokens 2 --repeats 3)
  SERVE=(--concurrency 1 16 64 --prompts 64 --rounds 3 --trace-steps 16 --prefix 256 --trace-prefix 256 --timeout 60)
  PREDICT=(--num-prompts 64 --batch-size 16 --repeats 3)
fi
MODELS=$WORK/models-$DTYPE$([[ $DRY == 1 ]] && echo -tiny)
SMOL=$MODELS/SmolLM2-135M QWEN=$MODELS/Qwen2.5-1.5B
mkdir -p "$WORK/steps" "$(dirname "$LOG")" && : > "$LOG"
[[ -f $TOKENIZER/tokenizer.json ]] || echo "gpu_check: $TOKENIZER has no tokenizer.json: run bash bench/gpu_prepare.sh" \
  "here and carry it; the models, the tests' server and the benchmarks need it" | tee -a "$LOG"
declare -A STATUS SECS
ORDER=()

log() { echo "$*" | tee -a "$LOG"; }

wanted() { [[ $STEPS_WANTED == all || " $STEPS_WANTED " == *" $1 "* || " wheels env models " == *" $1 "* ]]; }

# step NAME TIMEOUT COMMAND...: runs COMMAND under `timeout` (cut to the budget left), its output to the console,
# the log and $WORK/steps/NAME.log; records ok / failed (rc N) / timed out / skipped. Returns COMMAND's status.
step() {
  local name=$1 cap=$(($2 * SCALE)) left=$((BUDGET - SECONDS)) start=$SECONDS rc
  shift 2
  wanted "$name" || return 0
  ORDER+=("$name")
  if ((left < MIN_STEP)); then
    STATUS[$name]="skipped: ${left} s of the ${BUDGET} s budget left" SECS[$name]=0
    log "=== $name: ${STATUS[$name]}"
    return 1
  fi
  ((cap > left)) && cap=$left
  local shown="${*//$'\n'/ }"
  ((${#shown} > 400)) && shown="${shown:0:400} ..."
  log "=== $name (timeout ${cap} s, at ${SECONDS} s): $shown"
  rm -f "$WORK/steps/$name.log"
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG" "$WORK/steps/$name.log"
  rc=${PIPESTATUS[0]}
  SECS[$name]=$((SECONDS - start))
  case $rc in
    0) STATUS[$name]=ok ;;
    124 | 137) STATUS[$name]="TIMED OUT after ${cap} s" ;;
    *) STATUS[$name]="FAILED (rc $rc)" ;;
  esac
  log "=== $name: ${STATUS[$name]} in ${SECS[$name]} s"
  return "$rc"
}

# ----------------------------------------------------------------------------------------------- 1. environment
log "gpu_check: $(date -u +%FT%TZ), $([[ $DRY == 1 ]] && echo 'DRY RUN (CPU, tiny models)' || echo 'GPU run'), device $DEVICE, dtype $DTYPE, budget ${BUDGET} s, steps: $STEPS_WANTED, work dir $WORK, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=$WORK/site && rm -rf "$SITE" && mkdir -p "$SITE"
  PIP=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
  if [[ $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') != 3.12 ]]; then
    # the wheels are for the GPU machine's Python 3.12: install them for it to check that they do, but do not use them
    step wheels 120 "${PIP[@]}" --python-version 3.12 --implementation cp --only-binary=:all: .whl/*.whl
    log "wheels: installed for Python 3.12 only as a check; this Python runs its own packages"
  elif step wheels 120 "${PIP[@]}" .whl/*.whl; then
    export PYTHONPATH="$SITE:$PYTHONPATH"
  fi
else
  log "=== wheels: no .whl/ (bash bench/gpu_prepare.sh makes it): the machine's own packages run"
fi
read -r -d '' ENV_PY <<'PY'
import importlib, sys, torch
from lenvm_rl.benchmarking import environment_header
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    print("WARNING: CUDA is not available: every cuda step will fail")
    device = "cpu"
print(environment_header(device, sys.argv[2]))
print(f"python {sys.version.split()[0]}, cuda devices {torch.cuda.device_count()}")
for name in ("torch", "triton", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "fastapi",
             "lenvm_rl"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "?")
        print(f"  {name:<13} {version:<14} {module.__file__}")
    except Exception as err:
        print(f"  {name:<13} NOT IMPORTABLE: {type(err).__name__}: {err}")
PY
step env 60 bash -c 'nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"; python3 -c "$0" "$1" "$2";
  echo "C compiler (torch.compile needs one): $(command -v cc > /dev/null && cc --version | head -1 || echo none)";
  echo "pip check (requirements the packages in use miss):"; python3 -m pip check 2>&1 | head -20' \
  "$ENV_PY" "$DEVICE" "$DTYPE"

# ----------------------------------------------------------------------------------------------- 2. the models
read -r -d '' BUILD_PY <<'PY'
import json, sys, time
from lenvm_rl.benchmarking import save_random_models
models, tokenizer, dtype, device, tiny = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
sizes = f", tiny: {tiny}" if tiny else ""
print(f"random weights, {dtype}, drawn on {device}{sizes}; vocabulary: the SmolLM2 tokenizer, 49152 for both shapes "
      "(Qwen2.5-1.5B has 151936 of its own)")
for shape in ("Qwen2.5-1.5B", "SmolLM2-135M"):
    start = time.perf_counter()
    policy, lenvm = save_random_models(shape, f"{models}/{shape}", tokenizer, dtype=dtype, device=device, gamma=0.99,
                                       **tiny)
    size = sum(f.stat().st_size for f in policy.glob("*.safetensors")) / 2**20
    print(f"{shape}: {policy} ({size:.0f} MiB of weights) and {lenvm} (gamma 0.99, a head on the same trunk), "
          f"{time.perf_counter() - start:.0f} s")
PY
step models 120 python3 -c "$BUILD_PY" "$MODELS" "$TOKENIZER" "$DTYPE" "$DEVICE" "$TINY"

# --------------------------------------------------------------------------------- 3. and 4. tests and benchmarks
speed() {  # speed NAME MODEL_DIR TIMEOUT: eager and compiled in one process; NAME-eager, eager alone, when that fails
  local name=$1 dir=$2 cap=$3
  local cmd=(python3 bench/bench_decoding.py speed --device "$DEVICE" --dtype "$DTYPE" --policy "$dir/policy"
             --lenvm "$dir/lenvm" --data "$DATA" "${SPEED[@]}")
  if wanted "$name"; then
    step "$name" "$cap" "${cmd[@]}" --compile && return 0
    [[ ${STATUS[$name]} == skipped* ]] && return 1
  fi
  wanted "$name" || wanted "$name-eager" && step "$name-eager" 90 "${cmd[@]}"
}

speed speed-1.5b "$QWEN" 200
# the gpu tests' server fixture takes the SmolLM2 tokenizer from the embedded model's directory: here the carried
# tokenizer folder (tokenizer and config.json, no weights: no gpu test loads SmolLM2's weights)
mkdir -p "$WORK/home" && rm -rf "$WORK/home/smollm2-135m" && cp -r "$TOKENIZER" "$WORK/home/smollm2-135m"
if [[ $DRY == 1 ]]; then  # without CUDA every gpu test skips: collect them, which imports every test module
  step pytest-gpu 150 env LENVM_RL_HOME="$WORK/home" python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider \
    --collect-only
else
  step pytest-gpu 150 env LENVM_RL_HOME="$WORK/home" python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider \
    -rfEs --durations=12
fi
step predict 45 python3 bench/bench_predict.py --device "$DEVICE" --dtype "$DTYPE" --model "$SMOL/lenvm" \
  --data "$DATA" "${PREDICT[@]}"
step serve 100 python3 bench/bench_serve.py --device "$DEVICE" --dtype "$DTYPE" --model "$SMOL/lenvm" --data "$DATA" \
  "${SERVE[@]}"
speed speed-135m "$SMOL" 200

# ----------------------------------------------------------------------------------------------- summary
read -r -d '' SUMMARY_PY <<'PY'
import re, sys
from pathlib import Path
steps, dry, ran = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]  # the steps of this call
ISSUE_EAGER = {"1.5b": ("Qwen2.5-1.5B", 34.0), "135m": ("SmolLM2-135M", 42.0)}  # HF generate, batch 1, an H200

def per_later_token(text):
    """bench_decoding speed: its greedy-generate table as {method: ms per later token}."""
    table = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 5 and cells[4].isdigit():
            table[cells[0]] = float(cells[2])
    return table

def goal(name, ratio, limit, at_least=False):
    ok = ratio >= limit if at_least else ratio <= limit
    print(f"  {name:<62} {ratio:6.2f}x  (goal {'>=' if at_least else '<='} {limit}x: {'PASS' if ok else 'MISS'})")

for key, (shape, issue_ms) in ISSUE_EAGER.items():
    for name in (f"speed-{key}", f"speed-{key}-eager"):
        path = steps / f"{name}.log"
        t = per_later_token(path.read_text()) if name in ran and path.is_file() else {}
        if "unguided" not in t:
            continue
        u, c = t["unguided"], t.get("unguided, compiled")
        print(f"\n{shape} shape [{name}]: greedy generate, batch 1 (speed takes one prompt), ms per later token"
              + ("\n  DRY RUN: tiny models on the CPU; the goals are for the GPU" if dry else ""))
        print(f"  {'method':<45} {'ms':>9}  {'/ unguided':>10}  {'/ unguided compiled':>19}")
        for method, ms in t.items():
            vs_compiled = f"{ms / c:18.2f}x" if c and "compiled" in method else ""
            print(f"  {method:<45} {ms:9.2f}  {ms / u:9.2f}x  {vs_compiled}")
        print(f"  the issue's eager, {issue_ms:g} ms on an H200, / this run's eager: {issue_ms / u:.2f}x")
        if c:
            goal("unguided: eager / compiled (the goal is for the 1.5B shape)", u / c, 5.0, at_least=True)
            print(f"  {'  the same against the eager of the issue':<62} {issue_ms / c:6.2f}x")
            if "guided, KV cache, compiled" in t:
                goal("guided / unguided, both compiled", t["guided, KV cache, compiled"] / c, 1.5)
            if "guided, shared trunk, compiled" in t:
                goal("shared trunk / unguided, both compiled", t["guided, shared trunk, compiled"] / c, 1.3)
        for method in (m for m in t if m.startswith("guided, shared trunk") and "compiled" not in m):
            goal(f"{method.removeprefix('guided, ')} / unguided, eager", t[method] / u, 1.3)
        goal("guided (KV cache, default kernels) / unguided, eager", t["guided, KV cache, default kernels"] / u, 2.5)

EXCERPTS = {"pytest-gpu": r"^(FAILED|ERROR)|\d+ (passed|failed|errors?|skipped)|no tests ran|tests? collected",
            "predict": r"^(contender|predict|backbone)",
            "serve": r"^clients|^\s+\d+\s+(hf|batch-1|vllm|in-process)\s|/ batch-1 =|tree_value \(1 call\)|x /encode"
                     r"|largest \|z|all steps: mean"}
for name, pattern in EXCERPTS.items():
    path = steps / f"{name}.log"
    if name in ran and path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines() if re.search(pattern, line)]
        print(f"\n{name}:" + "".join(f"\n  {line}" for line in lines[-30:]))
PY
log ""
log "=================================== gpu_check summary ($([[ $DRY == 1 ]] && echo 'DRY RUN' || echo "$DEVICE $DTYPE"), ${SECONDS} s of ${BUDGET} s)"
for name in "${ORDER[@]}"; do log "$(printf '  %-20s %5s s  %s' "$name" "${SECS[$name]}" "${STATUS[$name]}")"; done
python3 -c "$SUMMARY_PY" "$WORK/steps" "$DRY" "${ORDER[@]}" 2>&1 | tee -a "$LOG"
again=()
for name in "${ORDER[@]}"; do
  [[ ${STATUS[$name]} == ok || $name == wheels || $name == env || $name == models ]] && continue
  [[ $name == *-eager && ${STATUS[${name%-eager}]:-} == ok ]] || again+=("${name%-eager}")
done
((${#again[@]})) && log "" && log "not done: GPU_CHECK_STEPS=\"$(printf '%s\n' "${again[@]}" | sort -u | tr '\n' ' ' \
  | sed 's/ $//')\" bash bench/gpu_check.sh  (the models are kept in $MODELS)"
log "log: $LOG"
