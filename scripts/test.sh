#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches what the tests need (the default model, the
# Python packages used as independent oracles), then runs every test of the workspace with the
# optimized test profile. GPU tests skip, saying so, when no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/get-default-model.sh >/dev/null
python3 -m pip install -q --disable-pip-version-check -r scripts/test-requirements.txt
# NVRTC from that package on the library path, so every kernel module is compiled for sm_90 by
# the tests (crates/cuda/src/compile.rs) even here, without a GPU.
. scripts/device-env.sh || true
cargo test --workspace --no-fail-fast "$@"
