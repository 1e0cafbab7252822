#!/usr/bin/env bash
# GPU tests of realizar-cuda, in two halves (the device machine has no cargo):
#
#   scripts/gpu-test.sh build   # here: build the test binaries, copy them to .device/bin, and a
#                               # truncated copy of the default model to .device/models
#   scripts/gpu-test.sh run     # on the device (the `device` tool, carry [".device"]): run every
#                               # binary, the decode-speed run too, and print a summary
#
# .device/ must be ignored (`echo /.device/ >> .git/info/exclude`). Logs go to $OUT when set.
set -u
cd "$(dirname "$0")/.."
DEV=.device

build() {
    set -e
    echo /.device/ | { grep -qxF -f - .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
    mkdir -p "$DEV/bin" "$DEV/models"
    rm -f "$DEV"/bin/*
    cargo test -p realizar-cuda --release --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do cp "$exe" "$DEV/bin/$name"; done
    local model="${REALIZAR_DEFAULT_MODEL:-$HOME/.cache/realizar/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    local layers="${TRUNC_LAYERS:-6}"
    local out="$PWD/$DEV/models/smollm2-135m-q4_1-${layers}layers.gguf"
    if [ -f "$model" ] && [ ! -f "$out" ]; then
        REALIZAR_TRUNC_IN="$model" REALIZAR_TRUNC_OUT="$out" REALIZAR_TRUNC_LAYERS="$layers" \
            "$DEV/bin/model" --ignored --exact truncate_model --nocapture
    fi
    du -sh "$DEV"/bin/* "$DEV"/models/* 2>/dev/null
}

run() {
    local out="${OUT:-/tmp/realizar-gpu-test}"
    mkdir -p "$out"
    # NVRTC (libnvrtc.so.13) lives in the toolkit or in the nvidia-cuda-nvrtc wheel.
    local extra
    extra=$(python3 -c 'import importlib.util as u, os
for m in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia"):
    try:
        s = u.find_spec(m)
    except Exception:
        s = None
    if s and s.submodule_search_locations:
        for p in s.submodule_search_locations:
            for r, d, f in os.walk(p):
                if any(x.startswith("libnvrtc.so") for x in f):
                    print(r)' 2>/dev/null | head -3 | paste -sd:)
    export PATH="$PATH:/usr/local/cuda/bin"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${extra:+:$extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export REALIZAR_PARITY_MODELS="${REALIZAR_PARITY_MODELS:-$PWD/$DEV/models}"
    export REALIZAR_CUDA_CACHE="${REALIZAR_CUDA_CACHE:-/tmp/realizar-kernel-cache}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
    local fails=0
    for b in "$DEV"/bin/*; do
        local name
        name=$(basename "$b")
        echo "=== $name"
        "$b" --test-threads=1 --nocapture >"$out/$name.log" 2>&1
        local rc=$?
        echo "--- $name: exit $rc"
        [ $rc -eq 0 ] || fails=$((fails + 1))
    done
    if [ -x "$DEV/bin/model" ] && [ "${SPEED:-1}" = 1 ]; then
        "$DEV/bin/model" --ignored --exact decode_speed_real_shapes --nocapture \
            >"$out/speed.log" 2>&1 || fails=$((fails + 1))
    fi
    # Out-of-bounds accesses and shared-memory races in the kernels (firecracker machines).
    if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null && [ -x "$DEV/bin/ops" ]; then
        compute-sanitizer --tool memcheck --error-exitcode 1 "$DEV/bin/ops" --test-threads=1 \
            >"$out/memcheck.log" 2>&1 || fails=$((fails + 1))
        compute-sanitizer --tool racecheck --error-exitcode 1 "$DEV/bin/ops" --test-threads=1 \
            kv_store_and_attention norms_bias >"$out/racecheck.log" 2>&1 || fails=$((fails + 1))
    fi
    echo "=== summary"
    for f in "$out"/*.log; do
        echo "--- $(basename "$f")"
        grep -E "^(PASS|FAIL|SPEED)|^GPU:|test result|panicked|skipping|rror|SUMMARY" "$f" \
            | grep -v "^PASS.*vs CPU q8 acts" | cut -c1-300 | awk '!/^GPU:/ || !seen[$0]++'
    done
    echo "FAILED (exit non-zero) binaries: $fails"
    [ $fails -eq 0 ]
}

case "${1:-}" in
build) build ;;
run) run ;;
*) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
