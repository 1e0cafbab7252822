//! `realizar synth` end to end: files of real shapes (one or two layers, so the test is quick)
//! carry the shape's metadata and tensor dims, the types `quantize` would choose, weights with
//! the promised statistics, a tokenizer that round-trips text, and they run in `realizar run`.
//! When llama.cpp's tools are on this machine (`REALIZAR_LLAMACPP_BIN`, or the folder
//! `../shared/scripts/peer-llamacpp.sh` builds), llama-bench must load and run them too;
//! otherwise that half is skipped, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use realizar_formats::{GgmlType, GgufFile};
use realizar_quant::dequantize_row;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realizar"))
}

fn synth(shape: &str, ty: &str, layers: usize, out: &Path) {
    synth_with(shape, ty, layers, &[], out)
}

fn synth_with(shape: &str, ty: &str, layers: usize, extra: &[&str], out: &Path) {
    let o = bin()
        .args(["synth", "--shape", shape, "--type", ty, "--layers"])
        .arg(layers.to_string())
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run synth");
    assert!(
        o.status.success(),
        "synth {shape} {ty}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn meta_u64(g: &GgufFile, key: &str) -> u64 {
    g.get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("missing {key}"))
}

/// llama.cpp's tools folder, if this machine has one.
fn llamacpp_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REALIZAR_LLAMACPP_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".cache/realizar-peers/llama.cpp/build/bin");
    p.join("llama-bench").exists().then_some(p)
}

#[test]
fn qwen2_shape_has_its_metadata_types_and_statistics() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("qwen.gguf");
    synth("qwen2.5-0.5b", "Q4_K_M", 2, &p);
    let g = GgufFile::open(&p).expect("open");
    assert_eq!(
        g.get("general.architecture").and_then(|v| v.as_str()),
        Some("qwen2")
    );
    assert_eq!(meta_u64(&g, "qwen2.block_count"), 2);
    assert_eq!(meta_u64(&g, "qwen2.embedding_length"), 896);
    assert_eq!(meta_u64(&g, "qwen2.feed_forward_length"), 4864);
    assert_eq!(meta_u64(&g, "qwen2.attention.head_count"), 14);
    assert_eq!(meta_u64(&g, "qwen2.attention.head_count_kv"), 2);
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len());
    assert_eq!(tokens, 151_936);
    // Tied head (no output.weight); the QKV biases of qwen2; 896 is no multiple of 256, so the
    // K-quant rows of that width fall back as llama.cpp's quantize does, and ffn_down (rows of
    // 4864 = 19 x 256) keeps a K-quant.
    assert!(g.tensor("output.weight").is_none());
    for name in ["blk.0.attn_q.bias", "blk.1.attn_v.bias"] {
        let t = g.tensor(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.ty, GgmlType::F32);
    }
    let q = g.tensor("blk.0.attn_q.weight").expect("attn_q");
    assert_eq!(q.dims, vec![896, 896]);
    assert!(!matches!(
        q.ty,
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    ));
    let down = g.tensor("blk.0.ffn_down.weight").expect("ffn_down");
    assert_eq!(down.dims, vec![4864, 896]);
    assert!(matches!(
        down.ty,
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    ));
    // Norms are 1; weights are N(0, 0.02) (mean ~0, sd ~0.02 after quantization).
    let norm = g.tensor("blk.1.ffn_norm.weight").expect("norm");
    let mut ones = vec![0f32; 896];
    dequantize_row(norm.ty, g.tensor_data(norm), &mut ones).expect("dequant");
    assert!(ones.iter().all(|&x| x == 1.0));
    let mut row = vec![0f32; 4864];
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    let rb = down.ty.row_bytes(4864).expect("row bytes") as usize;
    for r in 0..64 {
        let data = &g.tensor_data(down)[r * rb..(r + 1) * rb];
        dequantize_row(down.ty, data, &mut row).expect("dequant");
        for &x in &row {
            n += 1.0;
            sum += x as f64;
            sq += (x as f64).powi(2);
        }
    }
    let (mean, sd) = (sum / n, (sq / n - (sum / n).powi(2)).sqrt());
    assert!(mean.abs() < 1e-3, "mean {mean}");
    assert!((sd - 0.02).abs() < 0.002, "sd {sd}");
}

#[test]
fn smollm2_shape_runs_here_and_in_llama_cpp() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("smol.gguf");
    synth("smollm2-135m", "Q4_0", 1, &p);
    let out = bin()
        .args([
            "run",
            "--device",
            "cpu",
            "-n",
            "4",
            "--json",
            "-p",
            "hello world",
            "-m",
        ])
        .arg(&p)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // {"prompt_tokens":[...]}, 4 tokens (unless one is the end token), a summary.
    assert!(lines[0].starts_with("{\"prompt_tokens\":["), "{text}");
    assert!(
        lines.last().is_some_and(|l| l.contains("\"summary\"")),
        "{text}"
    );
    assert!(lines.len() >= 3, "{text}");

    let Some(llama) = llamacpp_bin() else {
        eprintln!(
            "skipping the llama.cpp half: no llama-bench (set REALIZAR_LLAMACPP_BIN or run \
             ../shared/scripts/peer-llamacpp.sh)"
        );
        return;
    };
    let o = Command::new(llama.join("llama-bench"))
        .args(["-p", "8", "-n", "4", "-r", "1", "-t", "2", "-m"])
        .arg(&p)
        .env("LD_LIBRARY_PATH", &llama)
        .output()
        .expect("run llama-bench");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "llama-bench refused the file: {}{}",
        table,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(table.contains("pp8") && table.contains("tg4"), "{table}");
}

/// `synth --fast`: the same tensors, types and bytes per tensor as a full synth; the first 256
/// rows of each matrix are the full file's, and every later row is a copy of one of them.
#[test]
fn fast_synth_repeats_the_full_files_first_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let (full, fast) = (dir.path().join("full.gguf"), dir.path().join("fast.gguf"));
    synth("smollm2-135m", "Q4_0", 1, &full);
    synth_with("smollm2-135m", "Q4_0", 1, &["--fast"], &fast);
    let (a, b) = (
        GgufFile::open(&full).expect("open full"),
        GgufFile::open(&fast).expect("open fast"),
    );
    assert_eq!(a.tensors().len(), b.tensors().len());
    let mut repeated = 0;
    for t in a.tensors() {
        let u = b.tensor(&t.name).expect("same tensor names");
        assert_eq!((&t.dims, t.ty), (&u.dims, u.ty), "{}", t.name);
        let (da, db) = (a.tensor_data(t), b.tensor_data(u));
        assert_eq!(da.len(), db.len(), "{}", t.name);
        let rb = t.ty.row_bytes(t.dims[0]).expect("row bytes") as usize;
        let pool = (da.len() / rb).min(256);
        assert_eq!(da[..pool * rb], db[..pool * rb], "{}: first rows", t.name);
        let firsts: std::collections::HashSet<&[u8]> = da[..pool * rb].chunks(rb).collect();
        for row in db[pool * rb..].chunks(rb) {
            assert!(
                firsts.contains(row),
                "{}: a row not from the first 256",
                t.name
            );
            repeated += 1;
        }
    }
    // The 49152-row embedding alone repeats most of its rows.
    assert!(repeated > 40_000, "{repeated} repeated rows");
}

#[test]
fn synth_refuses_zero_layers_and_unknown_shapes() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("x.gguf");
    for args in [
        ["--shape", "smollm2-135m", "--layers", "0"],
        ["--shape", "no-such-model", "--layers", "1"],
    ] {
        let o = bin()
            .arg("synth")
            .args(args)
            .args(["--type", "Q4_0", "-o"])
            .arg(&p)
            .output()
            .expect("run synth");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("layers") || err.contains("unknown shape"),
            "{err}"
        );
        assert!(!p.exists());
    }
}
