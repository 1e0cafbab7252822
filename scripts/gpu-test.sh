#!/usr/bin/env bash
# GPU tests of realizar-cuda, in two halves (the device machine has no cargo):
#
#   scripts/gpu-test.sh build   # here: build the test binaries to .device/bin, the CLI to
#                               # .device/cli, a truncated copy of the default model to
#                               # .device/models and the kernels for sm_90, all xz-compressed
#                               # (~60 MB with the tree: one call carries them)
#   scripts/gpu-test.sh run     # on the device (the `device` tool, carry [".device/bin",
#                               # ".device/models", ".device/kcache.tar.xz"]): run every binary,
#                               # the decode-speed run too, and print a summary
#   scripts/gpu-test.sh matrix  # on the device (carry [".device/bin", ".device/cli"]): parity of
#                               # every weight type on every `realizar synth` shape (2 layers;
#                               # env MATRIX_SHAPES, MATRIX_TYPES, MATRIX_LAYERS narrow it)
#   scripts/gpu-test.sh e2e     # on the device (carry [".device/bin", ".device/cli"]): `run`,
#                               # `bench` and `serve --device cuda` through the real binary, the
#                               # upload progress bar on a terminal, --gpu-memory sizing
#
# .device/ must be ignored (`echo /.device/ >> .git/info/exclude`). Logs go to $LOGS
# (/tmp/realizar-gpu-test); with OUT set they are packed into $OUT/gpu-test-logs.tgz after each
# step, so that a call cut by its time limit still returns them, in one file (the device tool
# returns only some of a folder of many files).
set -u
cd "$(dirname "$0")/.."
DEV=.device
LOGS=/tmp/realizar-gpu-test
. scripts/device-pack.sh

# The logs so far into $OUT/gpu-test-logs.tgz (OUT set: a device call's output folder).
pack_logs() {
    [ -n "${OUT:-}" ] || return 0
    tar czf "$OUT/gpu-test-logs.tgz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")" 2>/dev/null
    return 0
}

build() {
    set -e
    echo /.device/ | { grep -qxF -f - .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
    mkdir -p "$DEV/bin" "$DEV/models" "$DEV/cli"
    rm -f "$DEV"/bin/* "$DEV"/cli/*
    cargo build --release -p realizar
    cp "${CARGO_TARGET_DIR:-target}/release/realizar" "$DEV/cli/realizar"
    cargo test -p realizar-cuda --release --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
        | while read -r name exe; do cp "$exe" "$DEV/bin/$name"; done
    # Without symbols the binaries are a third smaller (the CLI 15 -> 11 MB, the tests 18 -> 13
    # MB), which matters against the device call's 64 MiB carry.
    if command -v strip >/dev/null; then strip "$DEV"/bin/* "$DEV/cli/realizar"; fi
    # The kernels compiled for sm_90 here, so the device loads them (scripts/device-env.sh).
    rm -rf "$DEV/kcache"
    precompile_kernels "$DEV"
    local model="${REALIZAR_DEFAULT_MODEL:-$HOME/.cache/realizar/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
    local layers="${TRUNC_LAYERS:-6}"
    local out="$PWD/$DEV/models/smollm2-135m-q4_1-${layers}layers.gguf"
    if [ -f "$model" ] && [ ! -f "$out" ] && [ ! -f "$out.xz" ]; then
        REALIZAR_TRUNC_IN="$model" REALIZAR_TRUNC_OUT="$out" REALIZAR_TRUNC_LAYERS="$layers" \
            "$DEV/bin/model" --ignored --exact truncate_model --nocapture
    fi
    # xz shrinks the binaries about 4x, the CUBINs 8x and the model a little, so that the test
    # binaries, the CLI, the model and the kernels fit one call (scripts/device-unpack.py
    # undoes it on the device).
    local f
    for f in "$DEV"/models/*.gguf; do [ -f "$f" ] && xz -T0 -1 "$f"; done
    pack_for_device "$DEV" "$DEV"/bin/* "$DEV"/cli/*
    du -sh "$DEV"/bin "$DEV"/cli "$DEV"/models "$DEV"/kcache.tar.xz 2>/dev/null
}

# What `build` compressed, unpacked in place.
unpack() {
    python3 scripts/device-unpack.py "$DEV/bin" "$DEV/cli" "$DEV/models"
    [ -f "$DEV/kcache.tar.xz" ] && python3 scripts/device-unpack.py "$DEV"
    return 0
}

run() {
    local out=$LOGS
    mkdir -p "$out"
    unpack
    . scripts/device-env.sh
    export REALIZAR_PARITY_MODELS="${REALIZAR_PARITY_MODELS:-$PWD/$DEV/models}"
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
        pack_logs
    done
    if [ -x "$DEV/bin/model" ] && [ "${SPEED:-1}" = 1 ]; then
        "$DEV/bin/model" --ignored --exact decode_speed_real_shapes --nocapture \
            >"$out/speed.log" 2>&1 || fails=$((fails + 1))
        pack_logs
    fi
    # Out-of-bounds accesses and shared-memory races in the kernels (firecracker machines).
    if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null && [ -x "$DEV/bin/ops" ]; then
        compute-sanitizer --tool memcheck --error-exitcode 1 "$DEV/bin/ops" --test-threads=1 \
            >"$out/memcheck.log" 2>&1 || fails=$((fails + 1))
        pack_logs
        compute-sanitizer --tool racecheck --error-exitcode 1 "$DEV/bin/ops" --test-threads=1 \
            kv_store_and_attention norms_bias >"$out/racecheck.log" 2>&1 || fails=$((fails + 1))
        pack_logs
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


# Parity (GPU exact and fast modes against the CPU's exact mode, 20-token prompt + 32 greedy
# steps; tests/model.rs `real_models_match_cpu`) on files that `realizar synth` writes: each shape
# keeps its widths, heads and vocabulary with fewer layers, and each type is quantized as
# `realizar quantize` would (so narrow rows fall back as llama.cpp's do, and the head is Q6_K
# for most types). One file at a time, deleted after its run.
matrix() {
    local out=$LOGS dir=/tmp/realizar-matrix
    mkdir -p "$out"
    unpack
    . scripts/device-env.sh
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    local shapes="${MATRIX_SHAPES:-smollm2-135m qwen2.5-0.5b llama-3.2-1b llama-3.1-8b}"
    local types="${MATRIX_TYPES:-F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K}"
    local fails=0 s t
    for s in $shapes; do
        for t in $types; do
            rm -rf "$dir" && mkdir -p "$dir"
            local f="$dir/$s-${MATRIX_LAYERS:-2}l-$t.gguf" t0=$SECONDS
            "$DEV/cli/realizar" synth --shape "$s" --type "$t" --layers "${MATRIX_LAYERS:-2}" \
                -o "$f" >/dev/null 2>"$out/synth.err" || { cat "$out/synth.err"; fails=$((fails + 1)); continue; }
            local t1=$SECONDS
            REALIZAR_PARITY_MODELS="$dir" "$DEV/bin/model" --exact real_models_match_cpu \
                --test-threads=1 --nocapture >"$out/matrix-$s-$t.log" 2>&1 || fails=$((fails + 1))
            grep -E "^(PASS|FAIL) model" "$out/matrix-$s-$t.log" | cut -c1-260
            grep -E "panicked" "$out/matrix-$s-$t.log" | head -3
            echo "    ($s $t: synth $((t1 - t0)) s, parity $((SECONDS - t1)) s)"
            pack_logs
        done
    done
    rm -rf "$dir"
    echo "matrix: $fails failed"
    [ $fails -eq 0 ]
}

# The real binary on the GPU: `run`, `bench`, `serve` (completions and chat, streamed and not,
# metrics, graceful stop), the upload progress bar under a terminal, and --gpu-memory sizing.
e2e() {
    local out=$LOGS m=/tmp/realizar-e2e.gguf fails=0
    local r="$DEV/cli/realizar"
    mkdir -p "$out"
    unpack
    . scripts/device-env.sh
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    check() { # name, command...: runs it, logs it, counts a failure
        local name=$1
        shift
        if "$@" >"$out/e2e-$name.log" 2>&1; then echo "PASS $name"; else
            echo "FAIL $name"; tail -5 "$out/e2e-$name.log"; fails=$((fails + 1)); fi
        pack_logs
    }
    "$r" synth --shape smollm2-135m --type Q4_1 -o "$m" >/dev/null 2>&1
    check run-json bash -c "'$r' run -m $m --device cuda -p 'Hello there' -n 16 --json \
        | tee /dev/stderr | tail -1 | grep -q '\"decode_tok_s\"'"
    # indicatif draws only on a terminal: `script` gives the command one.
    check progress-bar-on-a-tty bash -c "script -qec \"'$r' run -m $m --device cuda -p hi -n 2\" /dev/null \
        | tee /dev/stderr | grep -q 'uploading weights'"
    check bench bash -c "'$r' bench -m $m --device cuda -p 128 -n 32 -r 2 | tee /dev/stderr \
        | grep -Eq '^\\| .*CUDA.*tg32 .*[0-9]'"
    "$r" serve -m "$m" --device cuda --port 18080 --gpu-memory 0.3 >"$out/e2e-serve.log" 2>&1 &
    local pid=$! i
    for i in $(seq 1 120); do
        curl -sf localhost:18080/health >/dev/null && break
        sleep 0.5
    done
    local u=localhost:18080/v1
    check serve-completion bash -c "curl -sf $u/completions -H 'content-type: application/json' \
        -d '{\"prompt\":\"Once upon\",\"max_tokens\":12}' | tee /dev/stderr | grep -q '\"completion_tokens\":12'"
    check serve-chat-stream bash -c "curl -sfN $u/chat/completions -H 'content-type: application/json' \
        -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8,\"stream\":true}' \
        | tee /dev/stderr | tail -2 | grep -q 'data: \\[DONE\\]'"
    check serve-parallel bash -c "for k in \$(seq 1 16); do curl -sf $u/completions \
        -H 'content-type: application/json' -d '{\"prompt\":\"Request '\$k'\",\"max_tokens\":24,\"seed\":'\$k',\"temperature\":0.8}' \
        -o /dev/null -w '%{http_code}\n' & done | sort | uniq -c | tee /dev/stderr | grep -q '16 200'"
    check serve-metrics bash -c "curl -sf localhost:18080/metrics | tee /dev/stderr \
        | grep -Eq '^realizar_generation_tokens_total [1-9]'"
    # --gpu-memory 0.3 of an 80-141 GB card holds far more than the default 16384 tokens.
    check serve-gpu-memory bash -c "grep -Eo 'KV cache [0-9]+ blocks of [0-9]+' '$out/e2e-serve.log' \
        | awk '{ if (\$3 * \$6 > 1000000) ok = 1 } END { exit !ok }'"
    kill -TERM $pid
    check serve-stops wait $pid
    REALIZAR_PARITY_MODELS=/nonexistent check kv-sizing "$DEV/bin/model" --exact \
        kv_cache_sized_from_a_memory_fraction --nocapture
    cat "$out"/e2e-serve.log | tail -20
    echo "e2e: $fails failed"
    [ $fails -eq 0 ]
}

case "${1:-}" in
build) build ;;
run) run ;;
matrix) matrix ;;
e2e) e2e ;;
*) echo "usage: $0 build|run|matrix|e2e" >&2; exit 2 ;;
esac
