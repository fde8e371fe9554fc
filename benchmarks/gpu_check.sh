#!/usr/bin/env bash
# The GPU check in one go (issue: a CUDA machine, at most 8 minutes on one H100/H200):
#   bash benchmarks/gpu_check.sh [WHEELS]
# WHEELS: a folder of wheels for what the GPU image may lack (made on a machine with the
# registries: pip download --no-deps -d WHEELS hydra-core omegaconf antlr4-python3-runtime==4.9.3
# submitit hydra-submitit-launcher wandb). torch and torchvision must already be there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then
    pip install -q --no-index --find-links "$1" hydra-core omegaconf antlr4-python3-runtime submitit \
        hydra-submitit-launcher wandb
fi
pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
export WANDB_MODE=disabled
python benchmarks/gpu_check.py "${@:2}"
