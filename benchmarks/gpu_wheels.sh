#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, CUDA torch, transformers, accelerate and peft
# installed; no diffusers or pydantic; no network). Run here once; the device tool then carries
# benchmarks/wheels/ (ignored by git) with the working tree, and the first call installs offline:
#   pip install -q --no-index --find-links benchmarks/wheels -r benchmarks/gpu_requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf benchmarks/wheels
pip download -q -d benchmarks/wheels -c constraints.txt -r benchmarks/gpu_requirements.txt \
    --python-version 3.12 --implementation cp --abi cp312 --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
du -sh benchmarks/wheels
