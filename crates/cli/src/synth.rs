//! `realizar synth --shape NAME --type TYPE -o FILE.gguf`: a random-weight GGUF of a real model's
//! shape, for speed tests (like vLLM's dummy weights). Weights are N(0, 0.02), norms are 1, the
//! tokenizer is a synthetic but consistent byte-level BPE, and tensor types are chosen exactly as
//! `realizar quantize` chooses them, so the file has the same bytes per token as the real model
//! quantized the same way. The file loads in llama.cpp too.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use realizar_engine::tokenizer::byte_to_char_table;
use realizar_formats::{GgufWriter, Value, ValueType};
use realizar_quant::{quantize_row, GgmlType};

use crate::quantize::{plan_types, Target};

/// A model shape, as the real model's config gives it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub arch: &'static str,
    pub pre: &'static str,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub rope_theta: f32,
    pub eps: f32,
    pub tied: bool,
    pub qkv_bias: bool,
}

pub const SHAPES: &[Shape] = &[
    Shape {
        name: "smollm2-135m",
        arch: "llama",
        pre: "smollm",
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_ff: 1536,
        vocab: 49152,
        ctx: 8192,
        rope_theta: 100_000.0,
        eps: 1e-5,
        tied: true,
        qkv_bias: false,
    },
    Shape {
        name: "qwen2.5-0.5b",
        arch: "qwen2",
        pre: "qwen2",
        n_embd: 896,
        n_layer: 24,
        n_head: 14,
        n_head_kv: 2,
        n_ff: 4864,
        vocab: 151_936,
        ctx: 32_768,
        rope_theta: 1_000_000.0,
        eps: 1e-6,
        tied: true,
        qkv_bias: true,
    },
    Shape {
        name: "llama-3.2-1b",
        arch: "llama",
        pre: "llama-bpe",
        n_embd: 2048,
        n_layer: 16,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 8192,
        vocab: 128_256,
        ctx: 131_072,
        rope_theta: 500_000.0,
        eps: 1e-5,
        tied: true,
        qkv_bias: false,
    },
    Shape {
        name: "llama-3.1-8b",
        arch: "llama",
        pre: "llama-bpe",
        n_embd: 4096,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 14_336,
        vocab: 128_256,
        ctx: 131_072,
        rope_theta: 500_000.0,
        eps: 1e-5,
        tied: false,
        qkv_bias: false,
    },
];

/// One tensor to write: name, GGML dims (row length first), and whether it is a vector set to 1.
struct Spec {
    name: String,
    dims: Vec<u64>,
    ones: bool,
}

fn specs(s: &Shape) -> Vec<Spec> {
    let hd = s.n_embd / s.n_head;
    let (e, q, kv, ff) = (
        s.n_embd as u64,
        (s.n_head * hd) as u64,
        (s.n_head_kv * hd) as u64,
        s.n_ff as u64,
    );
    let mat = |name: String, cols: u64, rows: u64| Spec {
        name,
        dims: vec![cols, rows],
        ones: false,
    };
    let vec1 = |name: String, n: u64, ones: bool| Spec {
        name,
        dims: vec![n],
        ones,
    };
    let mut v = vec![mat("token_embd.weight".into(), e, s.vocab as u64)];
    for il in 0..s.n_layer {
        let b = |t: &str| format!("blk.{il}.{t}");
        v.push(vec1(b("attn_norm.weight"), e, true));
        v.push(mat(b("attn_q.weight"), e, q));
        v.push(mat(b("attn_k.weight"), e, kv));
        v.push(mat(b("attn_v.weight"), e, kv));
        if s.qkv_bias {
            v.push(vec1(b("attn_q.bias"), q, false));
            v.push(vec1(b("attn_k.bias"), kv, false));
            v.push(vec1(b("attn_v.bias"), kv, false));
        }
        v.push(mat(b("attn_output.weight"), q, e));
        v.push(vec1(b("ffn_norm.weight"), e, true));
        v.push(mat(b("ffn_gate.weight"), e, ff));
        v.push(mat(b("ffn_up.weight"), e, ff));
        v.push(mat(b("ffn_down.weight"), ff, e));
    }
    v.push(vec1("output_norm.weight".into(), e, true));
    if !s.tied {
        v.push(mat("output.weight".into(), e, s.vocab as u64));
    }
    v
}

/// SplitMix64: a small, fast generator; one stream per row keeps generation parallel and the
/// file deterministic.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Fills `out` with N(0, std) by Box-Muller.
    fn normal(&mut self, out: &mut [f32], std: f64) {
        for pair in out.chunks_mut(2) {
            let (u1, u2) = (self.unit(), self.unit());
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if let Some(x) = pair.get_mut(1) {
                *x = (r * t.sin()) as f32;
            }
        }
    }
}

/// Distinct rows a matrix gets with `synth --fast`.
const FAST_POOL_ROWS: usize = 256;

/// The bytes of one tensor in type `ty`. With `fast`, only the first `FAST_POOL_ROWS` rows are
/// generated and quantized; every later row is a copy of one of them, picked by a hash of the
/// row, so no stretch of the tensor is periodic.
fn tensor_bytes(spec: &Spec, index: usize, ty: GgmlType, fast: bool) -> Result<Vec<u8>> {
    let cols = spec.dims[0] as usize;
    let rows = spec.dims.get(1).copied().unwrap_or(1) as usize;
    let row_bytes = ty.row_bytes(cols as u64)? as usize;
    let distinct = if fast { rows.min(FAST_POOL_ROWS) } else { rows };
    let mut out = vec![0u8; rows * row_bytes];
    let (made, rest) = out.split_at_mut(distinct * row_bytes);
    made.par_chunks_mut(row_bytes)
        .enumerate()
        .try_for_each_init(
            || vec![0.0f32; cols],
            |buf, (r, dst)| -> Result<()> {
                if spec.ones {
                    buf.fill(1.0);
                } else {
                    SplitMix(((index as u64) << 32) ^ r as u64).normal(buf, 0.02);
                }
                quantize_row(ty, buf, dst)?;
                Ok(())
            },
        )?;
    let made = &*made;
    rest.par_chunks_mut(row_bytes)
        .enumerate()
        .for_each(|(r, dst)| {
            let pick = SplitMix(((index as u64) << 32) ^ (distinct + r) as u64).next();
            let src = (pick % distinct as u64) as usize * row_bytes;
            dst.copy_from_slice(&made[src..src + row_bytes]);
        });
    Ok(out)
}

/// A byte-level BPE vocabulary of `n` tokens: the 256 byte characters, then pairs and triples
/// of them (each with the merge that builds it), then the special tokens at the end.
fn add_tokenizer(w: &mut GgufWriter<'_>, s: &Shape) {
    let chars = byte_to_char_table();
    let specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"];
    let n_plain = s.vocab - specials.len();
    let mut tokens: Vec<String> = chars.iter().map(char::to_string).collect();
    let mut merges = Vec::new();
    'fill: for len in 2..=3 {
        let prefixes: Vec<String> = tokens
            .iter()
            .filter(|t| t.chars().count() == len - 1)
            .cloned()
            .collect();
        for p in &prefixes {
            for c in chars {
                if tokens.len() == n_plain {
                    break 'fill;
                }
                tokens.push(format!("{p}{c}"));
                merges.push(Value::String(format!("{p} {c}")));
            }
        }
    }
    let mut types = vec![Value::I32(1); tokens.len()];
    for sp in specials {
        tokens.push(sp.to_string());
        types.push(Value::I32(3));
    }
    let n = tokens.len() as u32;
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add("tokenizer.ggml.pre", Value::String(s.pre.into()));
    w.add(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            tokens.into_iter().map(Value::String).collect(),
        ),
    );
    w.add(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    w.add(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, merges),
    );
    w.add("tokenizer.ggml.bos_token_id", Value::U32(n - 3));
    w.add("tokenizer.ggml.eos_token_id", Value::U32(n - 2));
    w.add("tokenizer.ggml.eot_token_id", Value::U32(n - 1));
    w.add("tokenizer.ggml.add_bos_token", Value::Bool(false));
}

/// Writes the file. `layers` overrides the shape's layer count (quick parity runs of large
/// shapes keep every width and the vocabulary, with fewer layers); `fast` repeats a pool of
/// quantized rows in each matrix (`tensor_bytes`).
pub fn run(
    shape: &str,
    type_name: &str,
    out: &Path,
    layers: Option<usize>,
    fast: bool,
) -> Result<()> {
    let Some(s) = SHAPES.iter().find(|s| s.name.eq_ignore_ascii_case(shape)) else {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape {shape:?}; one of {}", names.join(", "));
    };
    let s = &Shape {
        n_layer: match layers {
            Some(0) => bail!("--layers must be at least 1"),
            Some(n) => n,
            None => s.n_layer,
        },
        ..*s
    };
    let target = Target::parse(type_name)?;
    let specs = specs(s);
    let tensors: Vec<(String, Vec<u64>)> = specs
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone()))
        .collect();
    let types = plan_types(target, &tensors);
    let a = s.arch;
    let hd = (s.n_embd / s.n_head) as u32;
    let mut w = GgufWriter::new(3);
    w.add("general.architecture", Value::String(a.into()));
    w.add(
        "general.name",
        Value::String(format!("synthetic {} {type_name}", s.name)),
    );
    w.add("general.file_type", Value::U32(target.ftype));
    w.add(format!("{a}.context_length"), Value::U32(s.ctx as u32));
    w.add(format!("{a}.embedding_length"), Value::U32(s.n_embd as u32));
    w.add(format!("{a}.block_count"), Value::U32(s.n_layer as u32));
    w.add(
        format!("{a}.feed_forward_length"),
        Value::U32(s.n_ff as u32),
    );
    w.add(
        format!("{a}.attention.head_count"),
        Value::U32(s.n_head as u32),
    );
    w.add(
        format!("{a}.attention.head_count_kv"),
        Value::U32(s.n_head_kv as u32),
    );
    w.add(format!("{a}.attention.key_length"), Value::U32(hd));
    w.add(format!("{a}.attention.value_length"), Value::U32(hd));
    w.add(format!("{a}.rope.dimension_count"), Value::U32(hd));
    w.add(format!("{a}.rope.freq_base"), Value::F32(s.rope_theta));
    w.add(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(s.eps),
    );
    w.add(format!("{a}.vocab_size"), Value::U32(s.vocab as u32));
    add_tokenizer(&mut w, s);
    let bar = indicatif::ProgressBar::new(specs.len() as u64);
    let mut total = 0u64;
    for (i, (spec, &ty)) in specs.iter().zip(&types).enumerate() {
        let ty = if spec.dims.len() == 1 {
            GgmlType::F32
        } else {
            ty
        };
        let bytes =
            tensor_bytes(spec, i, ty, fast).with_context(|| format!("generating {}", spec.name))?;
        total += bytes.len() as u64;
        w.add_tensor(spec.name.clone(), &spec.dims, ty, bytes);
        bar.inc(1);
    }
    bar.finish_and_clear();
    w.write_file(out)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} ({} tensors, {:.2} GiB of weights, shape {}, type {type_name})",
        out.display(),
        specs.len(),
        total as f64 / (1u64 << 30) as f64,
        s.name
    );
    Ok(())
}
