#!/usr/bin/env python3
"""Ask a running llama-server for greedy tokens and top-5 log-probabilities of the reference
prompts, and compare them with a reference file (by default ../shared/reference's).

usage: llamacpp-logprobs.py URL [REFERENCE.json]

Used to check how far llama.cpp's own figures move under settings that should not matter
(flash attention on/off, thread count): the spread is the noise floor any other
implementation can be held to.
"""
import json
import sys
import urllib.request


def query(url, prompt_ids, n):
    body = {"prompt": prompt_ids, "n_predict": n, "temperature": 0, "n_probs": 5, "ignore_eos": True,
            "cache_prompt": False}
    req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def main():
    url = sys.argv[1].rstrip("/")
    ref_path = sys.argv[2] if len(sys.argv) > 2 else "../shared/reference/smollm2-135m-instruct-q4_1.json"
    ref = json.load(open(ref_path))
    worst_all = 0.0
    for case in ref["cases"]:
        out = query(url, case["prompt_tokens"], len(case["steps"]))
        probs = out["completion_probabilities"]
        worst, parted = 0.0, None
        for i, (step, got) in enumerate(zip(case["steps"], probs)):
            ours = {t["id"]: t["logprob"] for t in got["top_logprobs"]}
            for tid, lp in step["top"]:
                if tid in ours:
                    worst = max(worst, abs(ours[tid] - lp))
            if got["id"] != step["id"]:
                parted = i
                break
        worst_all = max(worst_all, worst)
        print(f"{case['prompt'][:24]!r:28} parted at {parted}, worst top-5 logprob difference {worst:.3f}")
    print(f"worst overall {worst_all:.3f}")


main()
