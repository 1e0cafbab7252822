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

// Hugging Face folder input: `quantize tests/fixtures/tiny/<arch> OUT TYPE` converts the folder
// as llama.cpp's convert_hf_to_gguf.py does; each fixture's model-f32.gguf is that converter's
// output for the folder.

/// The architectures whose conversion is done.
const HF_ARCHS: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

fn reference_gguf(arch: &str) -> PathBuf {
    realizar_testkit::tiny_fixture(arch).join("model-f32.gguf")
}

/// Same metadata (keys in order, value types and values) but for `skip`, and the same tensors
/// (names in order, dims, types, bytes).
fn assert_same_gguf(ours: &Path, reference: &Path, skip: &[&str]) {
    let a = GgufFile::open(ours).unwrap_or_else(|e| panic!("{}: {e}", ours.display()));
    let b = GgufFile::open(reference).unwrap_or_else(|e| panic!("{e}"));
    let kept = |g: &GgufFile| -> Vec<(String, Value)> {
        g.metadata()
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    let (ka, kb) = (kept(&a), kept(&b));
    let names = |kv: &[(String, Value)]| kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ka), names(&kb), "{}: metadata keys", ours.display());
    for ((k, va), (_, vb)) in ka.iter().zip(&kb) {
        assert!(va == vb, "{}: {k} = {va}, llama.cpp: {vb}", ours.display());
    }
    let ta: Vec<_> = a
        .tensors()
        .iter()
        .map(|t| (&t.name, &t.dims, t.ty))
        .collect();
    let tb: Vec<_> = b
        .tensors()
        .iter()
        .map(|t| (&t.name, &t.dims, t.ty))
        .collect();
    assert_eq!(ta, tb, "{}: tensor table", ours.display());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert!(
            a.tensor_data(x) == b.tensor_data(y),
            "{}: tensor {} data differs",
            ours.display(),
            x.name
        );
    }
}

#[test]
fn hf_folder_to_f32_is_what_llama_cpp_converter_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    for arch in HF_ARCHS {
        let out = dir.path().join(format!("{arch}-f32.gguf"));
        quantize(&realizar_testkit::tiny_fixture(arch), &out, "F32");
        assert_same_gguf(&out, &reference_gguf(arch), &[]);
        // Same keys, values, order, tensors and alignment: the same file.
        let (ours, theirs) = (std::fs::read(&out), std::fs::read(reference_gguf(arch)));
        assert!(
            ours.expect("read") == theirs.expect("read"),
            "{arch}: the files differ"
        );
    }
}

/// Q8_0 / Q4_K_M from the folder: the tensors of quantizing the converter's F32 GGUF, and
/// logits as close to the F32 model's as `tiny_fixture_every_type` holds them.
#[test]
fn hf_folder_quantizes_as_its_f32_gguf_does() {
    let dir = tempfile::tempdir().expect("tmp");
    for arch in HF_ARCHS {
        let reference = logits(&reference_gguf(arch));
        for (ty, tol) in [("Q8_0", 0.1), ("Q4_K_M", 1.2)] {
            let from_hf = dir.path().join(format!("{arch}-hf-{ty}.gguf"));
            let from_gguf = dir.path().join(format!("{arch}-gguf-{ty}.gguf"));
            quantize(&realizar_testkit::tiny_fixture(arch), &from_hf, ty);
            quantize(&reference_gguf(arch), &from_gguf, ty);
            // GGUF input keeps its alignment as a key; the converter writes none.
            assert_same_gguf(&from_hf, &from_gguf, &["general.alignment"]);
            let err = rel_rms(&logits(&from_hf), &reference);
            eprintln!("{arch} {ty}: relative RMS logit error {err:.4}");
            assert!(err < tol, "{arch} {ty}: relative RMS logit error {err:.4}");
        }
    }
}

/// A safetensors tensor: name, GGML dims, dtype name, bytes.
type StTensor = (String, Vec<u64>, &'static str, Vec<u8>);

/// A safetensors file holding `tensors`.
fn write_safetensors(path: &Path, tensors: &[StTensor]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dims, dtype, data) in tensors {
        let shape: Vec<u64> = dims.iter().rev().copied().collect();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    for (.., data) in tensors {
        bytes.extend(data);
    }
    std::fs::write(path, bytes).expect("write safetensors");
}

/// Copy a fixture folder's JSON files to `dst` (weights excluded).
fn copy_fixture_jsons(arch: &str, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(realizar_testkit::tiny_fixture(arch)).expect("ls") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            std::fs::copy(&p, dst.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// The llama fixture as BF16 in two shards with an index: converted, every value is the F32
/// GGUF's rounded to BF16 (Q/K permutation included), metadata unchanged.
#[test]
fn bf16_shards_convert_to_rounded_f32() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("llama"); // general.name comes from the folder name
    copy_fixture_jsons("llama", &dir);
    let src = ModelFile::open(&realizar_testkit::tiny_fixture("llama")).expect("open fixture");
    let to_bf16 = |data: &[u8]| -> Vec<u8> {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut out = vec![0u8; v.len() * 2];
        realizar_quant::quantize_row(GgmlType::Bf16, &v, &mut out).expect("bf16");
        out
    };
    let mut shards: [Vec<StTensor>; 2] = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, t) in src.tensors().iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(t.name.clone(), file.into());
        let data = to_bf16(src.tensor_bytes(t));
        shards[i % 2].push((t.name.clone(), t.dims.clone(), "BF16", data));
    }
    for (i, s) in shards.iter().enumerate() {
        write_safetensors(
            &dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            s,
        );
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");

    let out = tmp.path().join("bf16.gguf");
    quantize(&dir, &out, "F32");
    let a = GgufFile::open(&out).expect("open");
    let b = GgufFile::open(&reference_gguf("llama")).expect("open");
    assert_eq!(a.metadata(), b.metadata());
    // Shard by shard, by name within a shard (the converter's order), so match by name.
    assert_eq!(a.tensors().len(), b.tensors().len());
    for x in a.tensors() {
        let y = b
            .tensor(&x.name)
            .unwrap_or_else(|| panic!("extra tensor {}", x.name));
        assert_eq!((&x.dims, x.ty), (&y.dims, GgmlType::F32), "{}", x.name);
        let want = to_bf16(b.tensor_data(y));
        let mut rounded = vec![0.0f32; want.len() / 2];
        realizar_quant::dequantize_row(GgmlType::Bf16, &want, &mut rounded).expect("bf16");
        let got: Vec<f32> = a
            .tensor_data(x)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(got == rounded, "{}: not the BF16-rounded values", x.name);
    }
}

/// Run `quantize IN x.gguf Q8_0`, expecting failure; returns stderr.
fn quantize_fails(input: &Path) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let o = bin()
        .arg("quantize")
        .arg(input)
        .arg(dir.path().join("x.gguf"))
        .arg("Q8_0")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{}: should fail", input.display());
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn hf_folder_errors_name_the_problem_and_the_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = realizar_testkit::tiny_fixture("qwen3");
    let case = |name: &str| {
        let d = tmp.path().join(name);
        copy_fixture_jsons("qwen3", &d);
        std::fs::copy(src.join("model.safetensors"), d.join("model.safetensors")).expect("copy");
        d
    };
    let expect = |dir: &Path, what: &str| {
        let err = quantize_fails(dir);
        let shown = dir.display().to_string();
        assert!(err.contains(what) && err.contains(&shown), "{what}: {err}");
    };

    let d = case("no-config");
    std::fs::remove_file(d.join("config.json")).expect("rm");
    expect(&d, "config.json");

    let d = case("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).expect("rm");
    expect(&d, "model.safetensors");

    let d = case("no-tokenizer");
    std::fs::remove_file(d.join("tokenizer.json")).expect("rm");
    expect(&d, "no tokenizer");

    let d = case("other-arch");
    let config = std::fs::read_to_string(d.join("config.json")).expect("read");
    let config = config.replace("Qwen3ForCausalLM", "MambaForCausalLM");
    std::fs::write(d.join("config.json"), config).expect("write");
    expect(&d, "MambaForCausalLM is not supported");

    let d = case("int-weights");
    let bad = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![4, 2],
        "I64",
        vec![0u8; 64],
    )];
    write_safetensors(&d.join("model.safetensors"), &bad);
    expect(&d, "I64");

    // A damaged SentencePiece model (gemma3's tokenizer.model cut short).
    let d = tmp.path().join("bad-spm");
    copy_fixture_jsons("gemma3", &d);
    let g = realizar_testkit::tiny_fixture("gemma3");
    std::fs::copy(g.join("model.safetensors"), d.join("model.safetensors")).expect("copy");
    let spm = std::fs::read(g.join("tokenizer.model")).expect("read");
    std::fs::write(d.join("tokenizer.model"), &spm[..spm.len() / 2]).expect("write");
    expect(&d, "not a SentencePiece model");

    // A lone safetensors file has no config or tokenizer.
    let err = quantize_fails(&src.join("model.safetensors"));
    assert!(err.contains("Hugging Face"), "{err}");
}

/// llama.cpp loads and runs what the conversion writes (skipped, saying so, without it).
#[test]
fn llama_bench_runs_converted_files() {
    let Some(home) = std::env::var_os("HOME") else {
        eprintln!("skipping: no HOME, so no llama.cpp peer build");
        return;
    };
    let bin_dir = Path::new(&home).join(".cache/realizar-peers/llama.cpp/build/bin");
    if !bin_dir.join("llama-bench").exists() {
        eprintln!(
            "skipping: no {} (run ../shared/scripts/peer-llamacpp.sh)",
            bin_dir.join("llama-bench").display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    for arch in HF_ARCHS {
        for ty in ["F32", "Q4_K_M"] {
            let out = dir.path().join(format!("{arch}-{ty}.gguf"));
            quantize(&realizar_testkit::tiny_fixture(arch), &out, ty);
            let o = Command::new(bin_dir.join("llama-bench"))
                .args(["-p", "8", "-n", "4", "-r", "1", "-t", "2", "-m"])
                .arg(&out)
                .env("LD_LIBRARY_PATH", &bin_dir)
                .output()
                .expect("run llama-bench");
            let table = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && table.contains("tg4"),
                "{arch} {ty}: llama-bench: {table}{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
