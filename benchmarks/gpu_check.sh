#!/usr/bin/env bash
# The GPU check in one go (issue 20: a CUDA machine, at most 8 minutes on one H100/H200):
#   bash benchmarks/gpu_check.sh [WHEELS [gpu_check.py options]]
# WHEELS: a folder of wheels for what the GPU image lacks (it has torch and torchvision, not
# hydra-core, omegaconf or submitit), made beforehand on a machine that reaches the package index:
#   bash benchmarks/gpu_check.sh --wheels build/gpu-wheels
# (/build/ is ignored by git: hand the folder to the GPU machine with the checkout, e.g. the device
# tool's `carry`). They are installed offline, only where the import fails. wandb is not needed:
# the check runs with WANDB_MODE=disabled, which imports no wandb (the dry run passes without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="hydra-core omegaconf submitit hydra-submitit-launcher"
if [ "${1:-}" = "--wheels" ]; then
    # pip wheel, not pip download: antlr4-python3-runtime 4.9.3 (omegaconf's) exists only as a source
    # archive, and an offline machine could not build it without setuptools.
    pip wheel -q -w "$2" $PACKAGES
    ls "$2"
    exit 0
fi
if [ -n "${1:-}" ]; then
    missing=""
    for pair in hydra-core:hydra omegaconf:omegaconf submitit:submitit hydra-submitit-launcher:hydra_plugins.hydra_submitit_launcher; do
        python -c "import ${pair#*:}" 2>/dev/null || missing="$missing ${pair%%:*}"
    done
    if [ -n "$missing" ]; then
        pip install -q --no-index --find-links "$1" $missing
    fi
fi
pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
export WANDB_MODE=disabled
python benchmarks/gpu_check.py "${@:2}"
