//! Model-level faults in otherwise valid GGUF files get one clear error at load: a missing
//! tensor, a shape that disagrees with the config, special-token ids outside the vocabulary, a
//! malformed byte token, an unsupported architecture, a metadata value of the wrong type.
//! Each case rewrites the tiny llama fixture with one fault.

use std::path::{Path, PathBuf};

use realizar_engine::Tokenizer;
use realizar_formats::{GgufFile, GgufWriter, Value, ValueType};
use realizar_model::{load_cpu, LoadOptions};

fn fixture() -> PathBuf {
    realizar_testkit::tiny_fixture("llama").join("model-f32.gguf")
}

/// Copies the fixture with metadata and tensors edited by the closures.
fn rewrite(
    dir: &Path,
    edit_kv: impl Fn(&str, &Value) -> Option<Value>,
    keep_tensor: impl Fn(&str) -> bool,
) -> PathBuf {
    let src = GgufFile::open(&fixture()).expect("fixture");
    let mut w = GgufWriter::new(3);
    for (k, v) in src.metadata() {
        if let Some(v) = edit_kv(k, v) {
            w.add(k.clone(), v);
        }
    }
    for t in src.tensors() {
        if keep_tensor(&t.name) {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, src.tensor_data(t));
        }
    }
    let out = dir.join("faulty.gguf");
    w.write_file(&out).expect("write");
    out
}

fn model_error(path: &Path) -> String {
    match load_cpu(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tokenizer_error(path: &Path) -> String {
    let f = GgufFile::open(path).expect("open");
    match Tokenizer::from_gguf(&f) {
        Ok(_) => panic!("tokenizer of {} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_itself_loads() {
    assert!(load_cpu(&fixture(), &LoadOptions::default()).is_ok());
    assert!(Tokenizer::from_gguf(&GgufFile::open(&fixture()).expect("open")).is_ok());
}

#[test]
fn missing_tensor() {
    let d = tempfile::tempdir().expect("tmp");
    let p = rewrite(
        d.path(),
        |_, v| Some(v.clone()),
        |n| n != "blk.1.ffn_up.weight",
    );
    let e = model_error(&p);
    assert_eq!(e, "missing tensor 'blk.1.ffn_up.weight'");
}

#[test]
fn shape_disagrees_with_config() {
    let d = tempfile::tempdir().expect("tmp");
    let p = rewrite(
        d.path(),
        |k, v| {
            Some(if k == "llama.feed_forward_length" {
                Value::U32(96)
            } else {
                v.clone()
            })
        },
        |_| true,
    );
    let e = model_error(&p);
    assert!(
        e.starts_with("tensor 'blk.0.ffn_gate.weight' has shape 128 x 64, expected 96 x 64"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture() {
    let d = tempfile::tempdir().expect("tmp");
    let p = rewrite(
        d.path(),
        |k, v| {
            Some(if k == "general.architecture" {
                Value::String("mamba".into())
            } else {
                v.clone()
            })
        },
        |_| true,
    );
    let e = model_error(&p);
    assert!(e.contains("unsupported architecture 'mamba'"), "{e}");
}

#[test]
fn metadata_value_of_the_wrong_type() {
    let d = tempfile::tempdir().expect("tmp");
    let p = rewrite(
        d.path(),
        |k, v| {
            Some(if k == "llama.block_count" {
                Value::String("three".into())
            } else {
                v.clone()
            })
        },
        |_| true,
    );
    let e = model_error(&p);
    assert!(
        e.contains("llama.block_count") && e.contains("string"),
        "{e}"
    );
}

#[test]
fn special_token_id_outside_the_vocabulary() {
    let d = tempfile::tempdir().expect("tmp");
    let p = rewrite(
        d.path(),
        |k, v| {
            Some(if k == "tokenizer.ggml.bos_token_id" {
                Value::U32(99_999)
            } else {
                v.clone()
            })
        },
        |_| true,
    );
    let e = tokenizer_error(&p);
    assert_eq!(
        e,
        "tokenizer: tokenizer.ggml.bos_token_id = 99999 is outside the vocabulary of 384 tokens"
    );
}

#[test]
fn malformed_byte_token() {
    let d = tempfile::tempdir().expect("tmp");
    // Mark token 10 as a BYTE token although its text is an ordinary piece.
    let p = rewrite(
        d.path(),
        |k, v| {
            if k != "tokenizer.ggml.token_type" {
                return Some(v.clone());
            }
            let mut types: Vec<Value> = v.as_array().expect("array").to_vec();
            types[10] = Value::I32(6);
            Some(Value::Array(ValueType::I32, types))
        },
        |_| true,
    );
    let e = tokenizer_error(&p);
    assert!(e.contains("token 10") && e.contains("BYTE"), "{e}");
}
