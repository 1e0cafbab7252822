#!/usr/bin/env bash
# realizar and llama.cpp's CUDA build side by side on the device's GPU, on the same
# `realizar synth` files: llama-bench vs `realizar bench --device cuda` (pp512/tg128, decode at
# depth) and llama-batched-bench vs `realizar bench --parallel`. Two halves:
#
#   scripts/gpu-peer.sh pack   # here: release CLI -> .device/cli, llama.cpp's source (the CPU
#                              # peer's package, ../shared/scripts/peer-llamacpp.sh --source)
#                              # trimmed to what the CUDA tools need -> .device/peer
#   scripts/gpu-peer.sh run    # on the device, carry [".device/cli", ".device/peer"]; env:
#                              # STEPS (default "build synth bench depth batched"), R (3)
#
# Building llama.cpp's CUDA tools (sm_90 only, two targets) takes most of a device call; the
# build stays in /tmp/llama-cuda while the machine is warm, so a second call right after can
# run the remaining STEPS without rebuilding. Output: $OUT/peer.log.
set -u
cd "$(dirname "$0")/.."
DEV=.device

pack() {
    set -e
    echo /.device/ | { grep -qxF -f - .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
    cargo build --release -p realizar
    mkdir -p "$DEV/cli" "$DEV/peer"
    cp "${CARGO_TARGET_DIR:-target}/release/realizar" "$DEV/cli/realizar"
    local src
    src=$(../shared/scripts/peer-llamacpp.sh --source)
    tar czf "$DEV/peer/llama-src.tar.gz" -C "$src" --exclude=build --exclude='*.gguf' \
        CMakeLists.txt CMakePresets.json cmake ggml src include common tools vendor pocs LICENSE
    ls -la "$DEV/peer" "$DEV/cli"
}

run() {
    local out="${OUT:-/tmp/realizar-gpu-peer}" dir=/tmp/realizar-synth llama=/tmp/llama-cuda
    local cli="$DEV/cli/realizar" r="${R:-3}" steps="${STEPS:-build synth bench depth batched}"
    mkdir -p "$out" "$dir"
    . scripts/device-env.sh
    local log="$out/peer.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$log"
    local bin="$llama/build/bin" files=(smollm2-135m:Q4_1 llama-3.2-1b:Q4_K_M llama-3.1-8b:Q4_K_M llama-3.1-8b:Q4_0)
    local pid=
    if [[ " $steps " == *" build "* ]] && [ ! -x "$bin/llama-batched-bench" ]; then
        (
            mkdir -p "$llama" && tar xzf "$DEV/peer/llama-src.tar.gz" -C "$llama" &&
            cmake -S "$llama" -B "$llama/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
                -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
                -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
                -DLLAMA_BUILD_APP=OFF >"$out/build.log" 2>&1 &&
            cmake --build "$llama/build" -j"$(nproc)" --target llama-bench llama-batched-bench \
                >>"$out/build.log" 2>&1
        ) &
        pid=$!
    fi
    if [[ " $steps " == *" synth "* ]]; then
        for st in "${files[@]}"; do
            local f="$dir/${st//:/-}.gguf"
            [ -f "$f" ] || "$cli" synth --fast --shape "${st%%:*}" --type "${st##*:}" -o "$f" >/dev/null
        done
    fi
    if [ -n "$pid" ]; then
        local t0=$SECONDS
        wait "$pid" || { echo "llama.cpp build failed:"; tail -30 "$out/build.log"; return 1; }
        echo "llama.cpp CUDA build: waited $((SECONDS - t0)) s after synth" | tee -a "$log"
    fi
    local m8="$dir/llama-3.1-8b-Q4_K_M.gguf"
    if [[ " $steps " == *" bench "* ]]; then
        for st in "${files[@]}"; do
            local f="$dir/${st//:/-}.gguf"
            echo "=== $st" | tee -a "$log"
            "$bin/llama-bench" -m "$f" -ngl 99 -fa on -p 512 -n 128 -r "$r" 2>&1 | grep -E "^\||rror" | tee -a "$log"
            "$cli" bench -m "$f" --device cuda -p 512 -n 128 -r "$r" 2>&1 | grep -E "^\||rror" | tee -a "$log"
        done
    fi
    if [[ " $steps " == *" depth "* ]]; then
        echo "=== depth, $m8" | tee -a "$log"
        "$bin/llama-bench" -m "$m8" -ngl 99 -fa on -p 0 -n 128 -d 4096,16384 -r 2 2>&1 | grep -E "^\||rror" | tee -a "$log"
        for d in 4096 16384; do
            "$cli" bench -m "$m8" --device cuda -p 0 -n 128 -d "$d" -r 2 2>&1 | grep -E "^\||rror" | tee -a "$log"
        done
    fi
    if [[ " $steps " == *" batched "* ]]; then
        echo "=== batched, $m8" | tee -a "$log"
        "$bin/llama-batched-bench" -m "$m8" -ngl 99 -fa on -c 41984 -b 2048 -ub 512 \
            -npp 512 -ntg 128 -npl 1,4,16,64 2>&1 | grep -E "^\||rror" | tee -a "$log"
        "$cli" bench -m "$m8" --device cuda -p 512 -n 128 --parallel 1,4,16,64 2>&1 \
            | grep -E "^\||rror" | tee -a "$log"
    fi
}

case "${1:-}" in
pack) pack ;;
run) run ;;
*) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
