#!/usr/bin/env bash
# Where a decode step's GPU time goes, kernel by kernel, on the device: ncu's
# gpu__time_duration of COUNT launches after SKIP (steady decode of a `realizar synth --fast`
# file), with warm caches and unlocked clocks (`--cache-control none --clock-control none`), so
# the figures are those of a real run except that ncu serializes the launches. Sums them by
# kernel (scripts/ncu-kernel-times.py; the matmuls by grid too).
#
#   scripts/gpu-kernel-times.sh BIN     # BIN: a realizar binary on the device (.device/ab/a/realizar
#                                       # after `scripts/gpu-ab.sh run` unpacked it, or
#                                       # .device/cli/realizar after `scripts/gpu-test.sh run`);
#                                       # env SHAPE (llama-3.1-8b), TYPE (Q4_K_M), SKIP (4000),
#                                       # COUNT (320: about one 8B step), OUT (a folder for the CSV)
#
# The thirteenth session's table in docs/perf-notes.md was made this way.
set -u
cd "$(dirname "$0")/.."
bin=${1:?usage: $0 BIN}
. scripts/device-env.sh
shape=${SHAPE:-llama-3.1-8b} type=${TYPE:-Q4_K_M}
f="/tmp/kt-$shape-$type.gguf"
[ -f "$f" ] || "$bin" synth --fast --shape "$shape" --type "$type" -o "$f" >/dev/null || exit 1
out=${OUT:-/tmp}
mkdir -p "$out"
csv="$out/ncu-$shape-$type.csv"
ncu --csv --cache-control none --clock-control none --metrics gpu__time_duration.sum \
    --launch-skip "${SKIP:-4000}" --launch-count "${COUNT:-320}" \
    "$bin" bench -m "$f" --device cuda -p 0 -n 32 -r 1 >"$csv" 2>"$csv.err" \
    || { tail -5 "$csv.err"; exit 1; }
python3 scripts/ncu-kernel-times.py "$csv"
