#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers (realizar serve, llama-server, vLLM).

Streams POST /v1/completions with a fixed number of output tokens at several concurrency
levels and prints, per level: requests, output tokens/s (all streams together), TTFT p50/p99
and the mean time between tokens. Standard library only.

    python3 scripts/loadgen.py --url http://127.0.0.1:8080 --concurrency 1,4,16 --max-tokens 64

Each of C workers sends --requests-per-worker requests back to back; output tokens/s is the
sum of completion tokens over the wall time of the level. `ignore_eos` is sent so that every
request generates exactly --max-tokens tokens (realizar, llama-server and vLLM honour it).
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

TOPICS = ["a lighthouse keeper", "the first snow", "a lost robot", "an old map", "the moon",
          "a street market", "a chess game", "the ocean floor", "a tiny dragon", "a night train",
          "a desert city", "a broken clock", "a forest fire", "a jazz band", "a spaceship",
          "a garden"]


def one_request(url, i, max_tokens, model):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    body = {
        "model": model,
        "prompt": f"Write a short story about {TOPICS[i % len(TOPICS)]}.",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": i,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft = None
    stamps = []
    chunks = 0
    usage = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        msg = json.loads(data)
        if msg.get("usage"):
            usage = msg["usage"]
        for ch in msg.get("choices") or []:
            if ch.get("text"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                stamps.append(now)
                chunks += 1
    conn.close()
    tokens = usage["completion_tokens"] if usage else chunks
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return ttft, tokens, itl


def level(url, conc, per_worker, max_tokens, model):
    results, errors = [], []
    lock = threading.Lock()

    def worker(w):
        for k in range(per_worker):
            try:
                r = one_request(url, w * per_worker + k, max_tokens, model)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    itl = [x for r in results for x in r[2]]

    def pct(p):
        if not ttfts:
            return float("nan")
        return ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))]

    return {
        "concurrency": conc,
        "requests": len(results),
        "errors": len(errors),
        "output_tok_s": tokens / wall,
        "ttft_p50_ms": pct(50) * 1e3,
        "ttft_p99_ms": pct(99) * 1e3,
        "itl_mean_ms": statistics.mean(itl) * 1e3 if itl else float("nan"),
        "wall_s": wall,
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-worker", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true", help="print one JSON object per level")
    a = ap.parse_args()
    # Warm-up: one short request.
    one_request(a.url, 0, 4, a.model)
    label = f" {a.label}" if a.label else ""
    if not a.json:
        print(f"#{label} {a.url}, {a.max_tokens} output tokens per request")
        print("| concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | mean ITL ms |")
        print("|---:|---:|---:|---:|---:|---:|")
    for c in [int(x) for x in a.concurrency.split(",")]:
        r = level(a.url, c, a.requests_per_worker, a.max_tokens, a.model)
        if a.json:
            print(json.dumps(r))
        else:
            err = f" ({r['errors']} errors: {r['first_error']})" if r["errors"] else ""
            print(f"| {c} | {r['requests']} | {r['output_tok_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
                  f"{r['ttft_p99_ms']:.0f} | {r['itl_mean_ms']:.1f} |{err}", flush=True)


if __name__ == "__main__":
    main()
