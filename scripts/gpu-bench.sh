#!/usr/bin/env bash
# `realizar bench --device cuda` on random-weight files of real shapes (made on the device by
# `realizar synth`), for docs/perf-notes.md. Two halves, as scripts/gpu-test.sh:
#
#   scripts/gpu-bench.sh build   # here: release binary -> .device/cli/realizar
#   scripts/gpu-bench.sh run     # on the device (carry [".device/cli"]); env: SHAPES (list of
#                                # shape:type, default below), P (512), N (128), R (3)
set -u
cd "$(dirname "$0")/.."
DEV=.device

build() {
    set -e
    echo /.device/ | { grep -qxF -f - .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
    cargo build --release -p realizar
    mkdir -p "$DEV/cli"
    cp "${CARGO_TARGET_DIR:-target}/release/realizar" "$DEV/cli/realizar"
}

run() {
    local out="${OUT:-/tmp/realizar-gpu-bench}" dir=/tmp/realizar-synth
    mkdir -p "$out" "$dir"
    . scripts/device-env.sh
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    local shapes="${SHAPES:-smollm2-135m:Q4_1 llama-3.2-1b:Q4_K_M llama-3.1-8b:Q4_K_M llama-3.1-8b:Q4_0}"
    for st in $shapes; do
        local shape="${st%%:*}" ty="${st##*:}" f="$dir/${st//:/-}.gguf"
        [ -f "$f" ] || "$DEV/cli/realizar" synth --fast --shape "$shape" --type "$ty" -o "$f" >/dev/null
        echo "=== $shape $ty"
        "$DEV/cli/realizar" bench -m "$f" --device cuda -p "${P:-512}" -n "${N:-128}" -r "${R:-3}" 2>&1 \
            | tee -a "$out/bench.log" | grep -E "^\||rror"
    done
}

case "${1:-}" in
build) build ;;
run) run ;;
*) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
