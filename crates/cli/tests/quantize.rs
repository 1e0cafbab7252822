//! `realizar quantize` end to end: an F32 model quantized to every type reloads and gives
//! logits close to the F32 model's. Two models: the tiny llama fixture (rows of 64/128, so the
//! K-quants fall back to 32-blocks as llama.cpp's do) and a wider random llama written here
//! (rows of 256/512, so Q4_K, Q5_K and Q6_K are really used).

use std::path::{Path, PathBuf};
use std::process::Command;

use realizar_formats::{GgmlType, GgufFile, GgufWriter, ModelFile, Value};
use realizar_model::{load_cpu, LoadOptions, LogitsWanted, SeqChunk};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realizar"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama/model-f32.gguf")
}

/// Logits of every position of a fixed token sequence.
fn logits(path: &Path) -> Vec<f32> {
    let (_f, mut m) = load_cpu(
        path,
        &LoadOptions {
            kv_tokens: 64,
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    let table: Vec<u32> = (0..m.n_blocks() as u32).collect();
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 300 + 3).collect();
    let out = m
        .forward(&[SeqChunk {
            tokens: &tokens,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
        }])
        .unwrap_or_else(|e| panic!("forward: {e}"));
    out.into_iter().flatten().collect()
}

/// RMS of the difference over RMS of the reference.
fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let r: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(r > 0.0 && d.is_finite());
    (d / r).sqrt()
}

fn quantize(input: &Path, out: &Path, ty: &str) {
    let o = bin()
        .arg("quantize")
        .arg(input)
        .arg(out)
        .arg(ty)
        .output()
        .expect("run");
    assert!(
        o.status.success(),
        "quantize {ty}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Quantize to every type; check types, metadata and logits.
fn check_all(input: &Path, dir: &Path, expect_k: bool, tol_scale: f64) {
    let reference = logits(input);
    let cases: &[(&str, f64, u32)] = &[
        ("Q8_0", 0.01, 7),
        ("Q6_K", 0.03, 18),
        ("Q5_0", 0.06, 8),
        ("Q5_1", 0.06, 9),
        ("Q5_K", 0.06, 16),
        ("Q5_K_M", 0.06, 17),
        ("Q4_0", 0.12, 2),
        ("Q4_1", 0.12, 3),
        ("Q4_K", 0.12, 14),
        ("Q4_K_M", 0.12, 15),
    ];
    for &(ty, tol, ftype) in cases {
        let out = dir.join(format!("m-{ty}.gguf"));
        quantize(input, &out, ty);
        let g = GgufFile::open(&out).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(
            g.get("general.file_type").and_then(|v| v.as_u64()),
            Some(ftype as u64)
        );
        let src = GgufFile::open(input).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in src.metadata() {
            if k.starts_with("tokenizer.") {
                assert_eq!(g.get(k), Some(v), "{ty}: {k} not copied");
            }
        }
        let types: Vec<GgmlType> = g.tensors().iter().map(|t| t.ty).collect();
        let k_used = types
            .iter()
            .any(|t| matches!(t, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K));
        if ty.contains("_K") {
            assert_eq!(k_used, expect_k, "{ty}: tensor types {types:?}");
        }
        let err = rel_rms(&logits(&out), &reference);
        eprintln!("{ty}: relative RMS logit error {err:.4}");
        assert!(
            err < tol * tol_scale,
            "{ty}: relative RMS logit error {err:.4} >= {tol}"
        );
    }
}

/// The fixture's weights are a transformers random init (std 0.02) whose logits are small and
/// sensitive, so its bounds are 10x looser (measured: Q8_0 0.07, Q5_0 0.44, Q4_0 0.67); the
/// wide model holds the real bounds.
#[test]
fn tiny_fixture_every_type() {
    let dir = tempfile::tempdir().expect("tmp");
    check_all(&fixture(), dir.path(), false, 10.0);
}

/// A 2-layer llama with rows of 256 and 512 elements and random weights, metadata (tokenizer
/// included) taken from the tiny fixture.
fn write_wide_model(path: &Path) {
    let src = ModelFile::open(&fixture()).unwrap_or_else(|e| panic!("{e}"));
    let g = src.gguf().expect("gguf fixture");
    let (n_embd, n_ff, n_layers, head_dim) = (256u64, 512u64, 2u64, 64u64);
    let (n_head, n_kv) = (4u64, 2u64);
    let vocab = g
        .get("llama.vocab_size")
        .and_then(|v| v.as_u64())
        .unwrap_or(384);
    let mut w = GgufWriter::new(3);
    for (k, v) in g.metadata() {
        let v = match k.as_str() {
            "llama.block_count" => Value::U32(n_layers as u32),
            "llama.embedding_length" => Value::U32(n_embd as u32),
            "llama.feed_forward_length" => Value::U32(n_ff as u32),
            "llama.attention.head_count" => Value::U32(n_head as u32),
            "llama.attention.head_count_kv" => Value::U32(n_kv as u32),
            "llama.attention.key_length" | "llama.attention.value_length" => {
                Value::U32(head_dim as u32)
            }
            "llama.rope.dimension_count" => Value::U32(head_dim as u32),
            _ => v.clone(),
        };
        w.add(k.clone(), v);
    }
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tensor = |w: &mut GgufWriter<'_>, name: String, dims: &[u64], scale: f32, bias: f32| {
        let n: u64 = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| (bias + scale * rand()).to_le_bytes())
            .collect();
        w.add_tensor(name, dims, GgmlType::F32, data);
    };
    tensor(
        &mut w,
        "token_embd.weight".into(),
        &[n_embd, vocab],
        1.0,
        0.0,
    );
    tensor(&mut w, "output.weight".into(), &[n_embd, vocab], 0.1, 0.0);
    tensor(&mut w, "output_norm.weight".into(), &[n_embd], 0.1, 1.0);
    let s = 1.0 / (n_embd as f32).sqrt();
    for l in 0..n_layers {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        tensor(&mut w, b("attn_norm"), &[n_embd], 0.1, 1.0);
        tensor(&mut w, b("ffn_norm"), &[n_embd], 0.1, 1.0);
        tensor(&mut w, b("attn_q"), &[n_embd, n_head * head_dim], s, 0.0);
        tensor(&mut w, b("attn_k"), &[n_embd, n_kv * head_dim], s, 0.0);
        tensor(&mut w, b("attn_v"), &[n_embd, n_kv * head_dim], s, 0.0);
        tensor(
            &mut w,
            b("attn_output"),
            &[n_head * head_dim, n_embd],
            s,
            0.0,
        );
        tensor(&mut w, b("ffn_gate"), &[n_embd, n_ff], s, 0.0);
        tensor(&mut w, b("ffn_up"), &[n_embd, n_ff], s, 0.0);
        tensor(&mut w, b("ffn_down"), &[n_ff, n_embd], s, 0.0);
    }
    w.write_file(path).unwrap_or_else(|e| panic!("write: {e}"));
}

#[test]
fn wide_random_model_every_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("wide-f32.gguf");
    write_wide_model(&input);
    check_all(&input, dir.path(), true, 1.0);
}

#[test]
fn quantize_rejects_unknown_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let o = bin()
        .arg("quantize")
        .arg(fixture())
        .arg(dir.path().join("x.gguf"))
        .arg("Q3_X")
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown type"));
}
