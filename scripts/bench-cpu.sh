#!/usr/bin/env bash
# Side-by-side CPU speed: realizar bench vs llama.cpp's llama-bench on the same files, same
# thread count, in one run (docs/perf-notes.md). Requantizes the default model to Q4_K_M and
# Q8_0 with `realizar quantize` (the files load in both programs).
#
#   scripts/bench-cpu.sh [THREADS] [ROUNDS]
#
# Needs the peer build (../shared/scripts/peer-llamacpp.sh) and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-2}
PP=${PP:-128}
TG=${TG:-64}
REPS=${REPS:-3}
PEER_BIN=${PEER_BIN:-$HOME/.cache/realizar-peers/llama.cpp/build/bin}
MODEL=${MODEL:-${REALIZAR_CACHE:-$HOME/.cache/realizar}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-/tmp/realizar-bench}
mkdir -p "$OUT"

cargo build --release -q -p realizar
R=target/release/realizar
[ -x "$PEER_BIN/llama-bench" ] || { echo "no llama-bench in $PEER_BIN: run ../shared/scripts/peer-llamacpp.sh" >&2; exit 1; }
[ -f "$MODEL" ] || $R inspect >/dev/null   # fetches the default model

[ -f "$OUT/q4_k_m.gguf" ] || $R quantize "$MODEL" "$OUT/q4_k_m.gguf" Q4_K_M
[ -f "$OUT/q8_0.gguf" ] || $R quantize "$MODEL" "$OUT/q8_0.gguf" Q8_0

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for f in "$MODEL" "$OUT/q4_k_m.gguf" "$OUT/q8_0.gguf"; do
    echo "## round $round: $(basename "$f")"
    $R bench -m "$f" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" | sed 's/| CPU        |/| realizar   |/'
    "$PEER_BIN/llama-bench" -m "$f" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" 2>/dev/null \
      | grep -E '^\| [a-z]' | grep -v '^| model' | sed 's/| CPU        |/| llama.cpp  |/'
    # realizar reads a CPU model into huge-page memory; llama.cpp maps it by default, and with
    # -lm none reads it into ordinary memory.
    if [ "${PEER_NOMMAP:-1}" = 1 ]; then
      "$PEER_BIN/llama-bench" -m "$f" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -lm none 2>/dev/null \
        | grep -E '^\| [a-z]' | grep -v '^| model' | sed 's/| CPU        |/| llama.cpp -lm none |/' \
        || echo "(llama-bench -lm none failed: an older peer build? PEER_NOMMAP=0 skips it)"
    fi
  done
done

# Load-robust view for a shared machine: one thread each, CPU seconds (user + sys) of the whole
# run (load, warm-up and REPS repetitions of one test), for both programs on the same file.
if [ "${CPUTIME:-1}" = 1 ]; then
  echo "## CPU seconds per run, 1 thread: file test realizar llama.cpp llama.cpp/realizar (>1: realizar faster)"
  TIMEFORMAT='%U %S'
  for f in "$MODEL" "$OUT/q4_k_m.gguf" "$OUT/q8_0.gguf"; do
    for t in "-p $PP -n 0" "-p 0 -n $TG"; do
      # shellcheck disable=SC2086
      r=$( { time $R bench -m "$f" $t -r "$REPS" -t 1 >/dev/null; } 2>&1 | awk '{print $1 + $2}')
      # shellcheck disable=SC2086
      l=$( { time "$PEER_BIN/llama-bench" -m "$f" $t -r "$REPS" -t 1 >/dev/null 2>&1; } 2>&1 | awk '{print $1 + $2}')
      echo "$(basename "$f") ${t// /} $r $l $(awk -v r="$r" -v l="$l" 'BEGIN{printf "%.2f", l / r}')"
    done
  done
fi
