#!/usr/bin/env bash
# A/B speed comparison of a kernel or backend change on the device, in one call: the committed
# tree (A) against the same tree with a patch applied (B), alternating runs so that drift
# between runs shows as spread, not as a difference. Two halves, as scripts/gpu-test.sh:
#
#   scripts/gpu-ab.sh build PATCH.. # here: release binaries of HEAD and of HEAD + each PATCH
#                                   # (applied to the working tree, built, then reversed),
#                                   # stripped and xz-compressed, to .device/ab/a, .device/ab/b,
#                                   # .device/ab/c, ..., and every side's kernels for sm_90 to
#                                   # .device/ab/kcache.tar.xz (`run` unpacks them)
#   scripts/gpu-ab.sh run           # on the device (carry [".device/ab"]); env:
#                                   # SHAPE (llama-3.1-8b), TYPE (Q4_K_M), LAYERS (all), ROUNDS (2),
#                                   # BENCH (bench arguments; default "-p 512 -n 128 --parallel 16,64")
#
# Environment switches work the same way without a patch: `build` with no PATCH makes B equal
# to A, and AB_ENV_B (e.g. REALIZAR_CUDA_PDL=0) is set for side b's runs only; AB_ENV_C for c's,
# and so on.
#
# AB_TESTS="ops fused" at `build` also builds those realizar-cuda test binaries of A and of each
# patched side (into .device/ab/<side>/tests, stripped; a name that builds on no side is an error);
# `run` runs them before the benches, once per build on a machine (AB_NO_TESTS=1: not at all,
# for a later call on a fresh machine), so a patch that wins can land with its tests run in the
# same call.
set -u
cd "$(dirname "$0")/.."
DEV=.device/ab
. scripts/device-pack.sh

# The realizar-cuda test binaries named in AB_TESTS, built from the working tree as it is, into $1.
test_bins() {
    [ -n "${AB_TESTS:-}" ] || return 0
    mkdir -p "$1"
    cargo test -p realizar-cuda --release --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json, sys
want = set(sys.argv[1].split())
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m["profile"]["test"] and m["target"]["name"] in want:
        print(m["executable"], m["target"]["name"])' "$AB_TESTS" \
        | while read -r exe name; do cp "$exe" "$1/$name"; done
    # A patch may add a test binary, so a side may lack a name; `build` checks that some side
    # has each.
    local n
    for n in $AB_TESTS; do
        [ -x "$1/$n" ] || echo "AB_TESTS: no test binary '$n' in $1"
    done
}

build() {
    set -e
    echo /.device/ | { grep -qxF -f - .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
    [ $# -le 5 ] || { echo "at most 5 patches (sides b to f)" >&2; return 2; }
    rm -rf "$DEV" && mkdir -p "$DEV/a"
    date +%s%N > "$DEV/build-id"
    local bin="${CARGO_TARGET_DIR:-target}/release/realizar"
    cargo build --release -p realizar
    cp "$bin" "$DEV/a/realizar"
    precompile_kernels "$DEV"
    test_bins "$DEV/a/tests"
    [ $# -gt 0 ] || set -- ""
    local sides=(b c d e f) i=0
    for AB_PATCH in "$@"; do
        local side=${sides[$i]}
        i=$((i + 1))
        mkdir -p "$DEV/$side"
        if [ -n "$AB_PATCH" ]; then
            git apply --check "$AB_PATCH"
            git apply "$AB_PATCH"
            # Reverse the patch whatever the build does.
            trap 'git apply -R "$AB_PATCH"' EXIT
            cargo build --release -p realizar
            precompile_kernels "$DEV"
            test_bins "$DEV/$side/tests"
            git apply -R "$AB_PATCH"
            trap - EXIT
            cp "$bin" "$DEV/$side/realizar"
            echo "$side: $AB_PATCH" >> "$DEV/sides.txt"
        else
            # Side a's binary: after a patched side, $bin is that side's build.
            cp "$DEV/a/realizar" "$DEV/$side/realizar"
        fi
    done
    local n
    for n in ${AB_TESTS:-}; do
        ls "$DEV"/*/tests/"$n" >/dev/null 2>&1 \
            || { echo "AB_TESTS: test binary '$n' did not build on any side" >&2; return 1; }
    done
    if command -v strip >/dev/null; then strip "$DEV"/*/realizar "$DEV"/*/tests/* 2>/dev/null || true; fi
    pack_for_device "$DEV" "$DEV"/*/realizar "$DEV"/*/tests/*
    du -sh "$DEV"/*/realizar.xz "$DEV"/*/tests "$DEV"/kcache.tar.xz 2>/dev/null || true
}

run() {
    python3 scripts/device-unpack.py "$DEV"
    . scripts/device-env.sh
    local f="/tmp/ab-${SHAPE:-llama-3.1-8b}-${TYPE:-Q4_K_M}-${LAYERS:-all}.gguf"
    local layers=()
    [ -n "${LAYERS:-}" ] && layers=(--layers "$LAYERS")
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    cat "$DEV/sides.txt" 2>/dev/null
    # The tests once per build on a machine: `run` is often called once per model shape.
    local t done
    done="/tmp/ab-tests-$(cat "$DEV/build-id" 2>/dev/null)"
    if [ ! -f "$done" ] && [ -z "${AB_NO_TESTS:-}" ]; then
        for t in "$DEV"/*/tests/*; do
            [ -x "$t" ] || continue
            # With the side's AB_ENV_<SIDE>, as its benches run.
            local tv tenv=()
            tv="AB_ENV_$(basename "$(dirname "$(dirname "$t")")")"
            tv=${tv^^}
            [ -n "${!tv:-}" ] && read -r -a tenv <<<"${!tv}"
            # Each test's whole log stays in /tmp/ab-tests.
            local log
            log="/tmp/ab-tests/$(basename "$(dirname "$(dirname "$t")")")-$(basename "$t").log"
            mkdir -p /tmp/ab-tests
            env "${tenv[@]}" "$t" --test-threads=1 >"$log" 2>&1
            echo "=== test $t ${tenv[*]:-}: exit $?"
            grep -m2 "compiled now" "$log"
            grep -E "^FAIL|panicked|test result" "$log" | head -5
        done
        touch "$done"
    fi
    [ -f "$f" ] || "$DEV/a/realizar" synth --fast --shape "${SHAPE:-llama-3.1-8b}" --type "${TYPE:-Q4_K_M}" \
        "${layers[@]}" -o "$f" >/dev/null
    local args
    read -r -a args <<<"${BENCH:--p 512 -n 128 --parallel 16,64}"
    for i in $(seq "${ROUNDS:-2}"); do
        for d in "$DEV"/*/; do
            [ -f "$d/realizar" ] || continue
            local side
            side=$(basename "$d")
            local envs=()
            local var="AB_ENV_${side^^}"
            [ -n "${!var:-}" ] && read -r -a envs <<<"${!var}"
            echo "=== round $i, $side ${envs[*]:-}"
            env "${envs[@]}" "$DEV/$side/realizar" bench -m "$f" --device cuda "${args[@]}" 2>&1 \
                | grep -E "^\| *[0-9]|^\| *(llama|qwen|gemma)|rror"
        done
    done
}

case "${1:-}" in
build) shift; build "$@" ;;
run) run ;;
*) echo "usage: $0 build [PATCH...] | run" >&2; exit 2 ;;
esac
