#!/usr/bin/env bash
# Issue 8's HTTP criterion: output tokens/s through `realizar serve` at concurrency C, against
# the engine-level figure of the same batch (`realizar bench --parallel C`, S_TG: decode tokens
# per second of C sequences decoded together), same model, device and short prompts.
#
#   scripts/serve-vs-engine.sh [C] [DEVICE] [MAX_TOKENS]      (defaults: 64 cpu 64)
#
# The last line gives the server's output tokens/s against both S_TG and the engine's output
# tokens/s over prefill and decode (the work the server's wall time also holds).
#
# The load generator (scripts/loadgen.py, standard library only) sends C streams of requests
# with `ignore_eos`; each worker sends 2 requests back to back, so the server runs C sequences
# at a time for most of the run. Needs the default model (or MODEL=path) and a free port 8099.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-64}
DEVICE=${2:-cpu}
MAXTOK=${3:-64}
R=${R:-target/release/realizar}
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(-m "$MODEL")
[ -x "$R" ] || cargo build --release -q -p realizar

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg), device $DEVICE"
echo "## engine: realizar bench --parallel $C -p 16 -n $MAXTOK"
table=$("$R" bench ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"} --device "$DEVICE" --parallel "$C" -p 16 -n "$MAXTOK" | grep -E '^\|')
echo "$table"
# Two engine figures: S_TG (decode only), and the same work the server does (prefill of every
# prompt, then decode): output tokens / (T_PP + T_TG).
read -r s_tg same_work < <(echo "$table" | awk -F'|' '$4+0 > 0 && $10+0 > 0 { printf "%s %.2f\n", $9+0, $4 * $3 / $10 }')
[ -n "${s_tg:-}" ] || { echo "no result row in the bench output"; exit 1; }

echo "## server: realizar serve --max-batch $C, loadgen --concurrency $C --max-tokens $MAXTOK"
"$R" serve ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"} --device "$DEVICE" --port 8099 --max-batch "$C" >/tmp/serve-vs-engine.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
up=0
for _ in $(seq 600); do
  kill -0 $SERVER 2>/dev/null || { echo "the server exited:"; tail -5 /tmp/serve-vs-engine.log; exit 1; }
  curl -sf http://127.0.0.1:8099/health >/dev/null 2>&1 && { up=1; break; }
  sleep 0.5
done
[ $up = 1 ] || { echo "the server did not answer /health in 300 s"; exit 1; }
metrics() { curl -sf http://127.0.0.1:8099/metrics | grep -E '^realizar_engine_(steps|step_seconds|forward_seconds)_total '; }
m0=$(metrics)
out=$(python3 scripts/loadgen.py --url http://127.0.0.1:8099 --concurrency "$C" \
  --max-tokens "$MAXTOK" --requests-per-worker 2 --json)
m1=$(metrics)
echo "$out"
# The engine's own split of a step during the run: forward pass against host work.
printf '%s\n---\n%s\n' "$m0" "$m1" | python3 -c '
import sys
a, b = sys.stdin.read().split("---")
v = lambda t: {l.split()[0]: float(l.split()[1]) for l in t.strip().splitlines()}
a, b = v(a), v(b)
d = {k: b[k] - a[k] for k in b}
n = d["realizar_engine_steps_total"]
if n > 0:
    f = d["realizar_engine_forward_seconds_total"] * 1e3 / n
    w = d["realizar_engine_step_seconds_total"] * 1e3 / n
    print(f"## server steps: {n:.0f}, {w:.2f} ms a step, of which forward {f:.2f} ms, host {w - f:.2f} ms")
'
echo "$out" | python3 -c '
import json, sys
s_tg, same = float(sys.argv[1]), float(sys.argv[2])
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
tok = r["output_tok_s"]
print(f"## server {tok:.2f} output tok/s: {tok / s_tg:.3f} of the engine S_TG {s_tg:.2f} (decode "
      f"only), {tok / same:.3f} of the engine doing the same work {same:.2f} (prefill + decode)")
' "$s_tg" "$same_work"
