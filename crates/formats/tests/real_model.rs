//! The default model, when present (CI fetches it; elsewhere the test says it skipped).

use std::path::Path;

use realizar_formats::{GgmlType, GgufFile, ModelFile};

const MODEL: &str = "/root/.cache/realizar/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn model() -> Option<&'static Path> {
    let p = Path::new(MODEL);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {MODEL} not present (scripts fetch it)");
        None
    }
}

#[test]
fn reads_default_model() {
    let Some(path) = model() else { return };
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.alignment(), 32);
    let n_layer = f.get_u32("llama.block_count").unwrap();
    assert_eq!(n_layer, 30);
    let embd = f.get_u32("llama.embedding_length").unwrap();
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    let _eps = f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap();
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims, vec![embd as u64, embd as u64]);
    assert_eq!(q.ty, GgmlType::Q4_1);
    assert_eq!(f.tensor_data(q).len() as u64, q.n_bytes);
    // Every tensor lies inside the file, aligned, and the sizes add up.
    let mut total = 0;
    for t in f.tensors() {
        assert_eq!((t.offset - f.data_offset()) % f.alignment(), 0);
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        total += t.n_bytes;
    }
    assert!(total <= f.file_size() - f.data_offset());
}

#[test]
fn model_file_wraps_gguf() {
    let Some(path) = model() else { return };
    let m = ModelFile::open(path).unwrap();
    assert!(m.gguf().is_some());
    assert!(m.hf_config().is_none());
    assert_eq!(m.tensors().len(), 272);
    let g = m.gguf().unwrap();
    for t in m.tensors() {
        let info = g.tensor(&t.name).unwrap();
        assert_eq!(m.tensor_bytes(t), g.tensor_data(info));
    }
    assert_eq!(m.dir(), path.parent().unwrap());
}
