"""An independent f64 evaluation of a llama-architecture GGUF, for tests.

Weights are dequantized by the `gguf` Python package (not by realizar) and the transformer is
written here in numpy, from the architecture's definition. Prints JSON: for every position of the
given token sequence, the log-probabilities of the next token (full vocabulary, rounded).

usage: python3 exact_forward.py MODEL.gguf ID ID ID ...
"""
import json
import sys

import gguf
import numpy as np


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0].item()


def main():
    path, ids = sys.argv[1], [int(x) for x in sys.argv[2:]]
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    assert arch == "llama", f"this oracle implements llama only, not {arch}"
    n_embd = field(r, f"{arch}.embedding_length")
    n_head = field(r, f"{arch}.attention.head_count")
    n_kv = field(r, f"{arch}.attention.head_count_kv")
    n_layer = field(r, f"{arch}.block_count")
    eps = field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    base = field(r, f"{arch}.rope.freq_base")
    hd = n_embd // n_head
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        w[t.name] = a.reshape([int(x) for x in reversed(t.shape)])

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # llama GGUF: adjacent pairs (the converter permuted Q/K rows)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][ids]
    for il in range(n_layer):
        g = lambda name: w[f"blk.{il}.{name}.weight"]
        h = rms(x, g("attn_norm"))
        q = rope((h @ g("attn_q").T).reshape(n, n_head, hd))
        k = rope((h @ g("attn_k").T).reshape(n, n_kv, hd))
        v = (h @ g("attn_v").T).reshape(n, n_kv, hd)
        att = np.zeros((n, n_head, hd))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (p / p.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(n, n_head * hd) @ g("attn_output").T
        h = rms(x, g("ffn_norm"))
        a = h @ g("ffn_gate").T
        x = x + (a / (1 + np.exp(-a)) * (h @ g("ffn_up").T)) @ g("ffn_down").T
    out = w.get("output.weight", w["token_embd.weight"])
    logits = rms(x, w["output_norm.weight"]) @ out.T
    m = logits.max(-1, keepdims=True)
    lp = logits - (np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m)
    json.dump([[round(float(v), 5) for v in row] for row in lp], sys.stdout)


main()
