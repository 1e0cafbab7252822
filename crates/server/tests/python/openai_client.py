"""Drives a running realizar server with the official `openai` package.

Usage: REALIZAR_URL=http://127.0.0.1:PORT python3 openai_client.py
Prints one line per check and `N passed, 0 failed`; exits non-zero on the first failure.
"""

import os
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["REALIZAR_URL"] + "/v1", api_key=os.environ.get("REALIZAR_KEY", "none"))
passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAIL {name}: {detail}")
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok {name}")


models = client.models.list()
model = models.data[0].id
check("models", model.startswith("SmolLM2"), model)

messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                   logprobs=True, top_logprobs=2)
text = r.choices[0].message.content
check("chat", isinstance(text, str) and len(text) > 0 and r.choices[0].finish_reason in ("stop", "length"), r)
check("chat usage", 1 <= r.usage.completion_tokens <= 6 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)
lp = r.choices[0].logprobs.content
check("chat logprobs", len(lp) == r.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in lp), lp)

stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
chunks = list(stream)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("chat stream text", streamed == text, (streamed, text))
check("chat stream usage", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1])

c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=1)
ctext = c.choices[0].text
check("completion", c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5, c)
check("completion logprobs", len(c.choices[0].logprobs.tokens) == 5 and len(c.choices[0].logprobs.top_logprobs[0]) == 1, c.choices[0].logprobs)

parts = [ch.choices[0].text for ch in client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True)]
check("completion stream", "".join(parts) == ctext, (parts, ctext))

try:
    client.chat.completions.create(model=model, messages=[], max_tokens=2)
    check("bad request raises", False, "no error")
except openai.BadRequestError as e:
    check("bad request raises", e.status_code == 400 and "empty" in str(e), e)

print(f"{passed} passed, 0 failed")
