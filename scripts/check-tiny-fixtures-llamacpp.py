#!/usr/bin/env python3
"""Cross-check tests/fixtures/tiny/<arch>/model-f32.gguf with llama.cpp itself against the
transformers reference.json made by scripts/make-tiny-fixtures.py.

Needs a llama.cpp build with libllama (e.g. `bash ../shared/scripts/peer-llamacpp.sh`, or
`cmake --build build --target llama` in the source folder). A small C++ program (embedded below)
is compiled against it; it evaluates the 24 reference positions in one batch (all logits), then
continues greedily one token at a time through the KV cache, and tokenizes the reference's
tokenizer_tests with llama.cpp's tokenizer (add_special=true, parse_special=true).

Usage: python3 scripts/check-tiny-fixtures-llamacpp.py [--llama-cpp DIR] [--arch A ...]
Prints per arch: max |logit diff|, greedy match, tokenizer matches. Exit 1 on a greedy mismatch or a
logit difference beyond the tolerance (--tol; default 1e-3, and 1e-2 for gemma3, whose GELU llama.cpp
evaluates through an f16 lookup table). The KV cache is F32 (llama.cpp's default F16 cache alone
moves logits by ~0.01-0.03; TINY_F16_KV=1 keeps the default).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "tiny"

CPP = r'''
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <fstream>
#include <sstream>

// usage: tiny_check MODEL IDS_CSV N_GREEDY TEXTS_FILE (texts separated by a 0 byte)
int main(int argc, char ** argv) {
    if (argc < 5) { fprintf(stderr, "usage\n"); return 2; }
    std::vector<llama_token> ids;
    { std::stringstream ss(argv[2]); std::string t; while (std::getline(ss, t, ',')) ids.push_back(std::stoi(t)); }
    int n_greedy = atoi(argv[3]);
    std::vector<std::string> texts;
    { std::ifstream f(argv[4], std::ios::binary); std::string all((std::istreambuf_iterator<char>(f)), {});
      size_t s = 0; for (size_t i = 0; i <= all.size(); ++i) if (i == all.size() || all[i] == '\0') { if (i > s) texts.push_back(all.substr(s, i - s)); s = i + 1; } }

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 3;
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 128; cp.n_batch = 128; cp.n_ubatch = 128; cp.n_threads = 1; cp.n_threads_batch = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (!getenv("TINY_F16_KV")) { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }  // default KV cache is F16
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) return 4;

    llama_batch b = llama_batch_init(128, 0, 1);
    b.n_tokens = (int) ids.size();
    for (int i = 0; i < b.n_tokens; ++i) { b.token[i] = ids[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1; }
    if (llama_decode(ctx, b)) return 5;
    printf("{\"n_vocab\":%d,\"logits\":[", n_vocab);
    for (int i = 0; i < (int) ids.size(); ++i) {
        const float * l = llama_get_logits_ith(ctx, i);
        printf(i ? ",[" : "[");
        for (int v = 0; v < n_vocab; ++v) printf(v ? ",%.7g" : "%.7g", l[v]);
        printf("]");
    }
    printf("],\"greedy\":[");
    const float * last = llama_get_logits_ith(ctx, (int) ids.size() - 1);
    int pos = (int) ids.size();
    for (int g = 0; g < n_greedy; ++g) {
        int best = 0; for (int v = 1; v < n_vocab; ++v) if (last[v] > last[best]) best = v;
        printf(g ? ",%d" : "%d", best);
        b.n_tokens = 1; b.token[0] = best; b.pos[0] = pos++; b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 1;
        if (llama_decode(ctx, b)) return 6;
        last = llama_get_logits_ith(ctx, 0);
    }
    printf("],\"tokens\":[");
    for (size_t t = 0; t < texts.size(); ++t) {
        std::vector<llama_token> out(1024);
        int n = llama_tokenize(vocab, texts[t].data(), (int) texts[t].size(), out.data(), (int) out.size(), true, true);
        printf(t ? ",[" : "[");
        for (int i = 0; i < n; ++i) printf(i ? ",%d" : "%d", out[i]);
        printf("]");
    }
    printf("]}\n");
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
'''


def find_llama_cpp(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("LLAMA_CPP_DIR"):
        return Path(os.environ["LLAMA_CPP_DIR"])
    script = REPO.parent / "shared" / "scripts" / "peer-llamacpp.sh"
    out = subprocess.run(["bash", str(script), "--source"], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def build(llama_cpp: Path, work: Path) -> Path:
    src = work / "tiny_check.cpp"
    src.write_text(CPP)
    exe = work / "tiny_check"
    libs = sorted({p.parent for p in (llama_cpp / "build").rglob("libllama.so*")} |
                  {p.parent for p in (llama_cpp / "build").rglob("libggml*.so*")})
    if not libs:
        raise SystemExit(f"no libllama.so under {llama_cpp}/build: build llama.cpp first")
    cmd = ["g++", "-O1", "-std=c++17", str(src), "-o", str(exe), f"-I{llama_cpp / 'include'}",
           f"-I{llama_cpp / 'ggml' / 'include'}"]
    for d in libs:
        cmd += [f"-L{d}", f"-Wl,-rpath,{d}"]
    cmd += ["-lllama", "-lggml", "-lggml-base"]
    subprocess.run(cmd, check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp")
    ap.add_argument("--arch", action="append")
    ap.add_argument("--tol", type=float, default=None,
                    help="max |logit diff|; default 1e-3, 1e-2 for gemma3 (llama.cpp's f16-table GELU)")
    args = ap.parse_args()
    llama_cpp = find_llama_cpp(args.llama_cpp)
    archs = args.arch or ["llama", "qwen2", "qwen3", "gemma3"]
    ok = True
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        exe = build(llama_cpp, work)
        for arch in archs:
            folder = FIXTURES / arch
            ref = json.loads((folder / "reference.json").read_text())
            texts = [t["text"] for t in ref["tokenizer_tests"]] + [ref["prompt"]]
            tf = work / f"{arch}.texts"
            tf.write_bytes(b"\0".join(t.encode() for t in texts))
            r = subprocess.run([str(exe), str(folder / "model-f32.gguf"), ",".join(map(str, ref["input_ids"])),
                                str(len(ref["greedy"])), str(tf)], capture_output=True, text=True)
            if r.returncode != 0:
                sys.stderr.write(r.stderr[-3000:])
                raise SystemExit(f"{arch}: tiny_check failed rc={r.returncode}")
            out = json.loads(r.stdout)
            diff = max(abs(a - b) for ra, rb in zip(out["logits"], ref["logits"]) for a, b in zip(ra, rb))
            same_shape = len(out["logits"]) == len(ref["logits"]) and out["n_vocab"] == len(ref["logits"][0])
            greedy_ok = out["greedy"] == ref["greedy"]
            want = [t["ids"] for t in ref["tokenizer_tests"]] + [ref["prompt_ids"]]
            tok_ok = [a == b for a, b in zip(out["tokens"], want)]
            print(f"{arch}: n_vocab={out['n_vocab']} max|dlogit|={diff:.3g} greedy={'ok' if greedy_ok else 'DIFF'} "
                  f"tokenizer={sum(tok_ok)}/{len(tok_ok)}")
            if not greedy_ok:
                print(f"  llama.cpp greedy {out['greedy']}\n  reference greedy {ref['greedy']}")
            for ok_t, text, got, exp in zip(tok_ok, texts, out["tokens"], want):
                if not ok_t:
                    print(f"  tokenizer differs on {text!r}:\n    llama.cpp {got}\n    HF        {exp}")
            tol = args.tol if args.tol is not None else (1e-2 if arch == "gemma3" else 1e-3)
            ok &= same_shape and diff <= tol and greedy_ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
