//! safetensors files and Hugging Face folders, valid and hostile. Files are crafted by hand:
//! 8-byte little-endian header length, JSON header, data.

use std::path::Path;

use realizar_formats::{FormatError, GgmlType, ModelFile};

fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    [
        (header.len() as u64).to_le_bytes().to_vec(),
        header.as_bytes().to_vec(),
        data.to_vec(),
    ]
    .concat()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()
}

/// Three tensors: F32 [2, 3], F16 [4], BF16 [] (a scalar).
fn three() -> Vec<u8> {
    let h = r#"{"__metadata__":{"format":"pt"},
        "w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
        "h":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},
        "s":{"dtype":"BF16","shape":[],"data_offsets":[32,34]}}"#;
    st_bytes(h, &data(34, 1))
}

const CONFIG: &str =
    r#"{"architectures":["LlamaForCausalLM"],"hidden_size":3,"num_hidden_layers":1}"#;

fn refused(what: &str, r: Result<ModelFile, FormatError>) -> FormatError {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            println!("{what:<34} -> {e}");
            e
        }
    }
}

#[test]
fn single_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.safetensors", &three());
    let m = ModelFile::open(&dir.path().join("x.safetensors")).unwrap();
    assert!(m.gguf().is_none());
    assert!(m.hf_config().is_none(), "no config.json next to it");
    let names: Vec<_> = m.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "h", "s"], "file (offset) order");
    let w = m.tensor("w").unwrap();
    assert_eq!(w.dims, vec![3, 2], "GGML order: shape reversed");
    assert_eq!(w.ty, GgmlType::F32);
    let d = data(34, 1);
    assert_eq!(m.tensor_bytes(w), &d[..24]);
    let h = m.tensor("h").unwrap();
    assert_eq!((h.ty, h.dims.clone()), (GgmlType::F16, vec![4]));
    assert_eq!(m.tensor_bytes(h), &d[24..32]);
    let s = m.tensor("s").unwrap();
    assert_eq!((s.ty, s.dims.clone()), (GgmlType::Bf16, vec![1]));
    assert_eq!(m.tensor_bytes(s), &d[32..34]);
}

#[test]
fn hf_folder_single_and_sharded() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.json", CONFIG.as_bytes());
    write(dir.path(), "model.safetensors", &three());
    let m = ModelFile::open(dir.path()).unwrap();
    assert_eq!(m.hf_config().unwrap()["hidden_size"], 3);
    assert_eq!(m.dir(), dir.path());
    assert_eq!(m.tensors().len(), 3);

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.json", CONFIG.as_bytes());
    let a = r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let b = r#"{"b.weight":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},
                "c.weight":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}"#;
    write(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &st_bytes(a, &data(8, 2)),
    );
    write(
        dir.path(),
        "model-00002-of-00002.safetensors",
        &st_bytes(b, &data(10, 3)),
    );
    let index = r#"{"metadata":{"total_size":26},"weight_map":{
        "a.weight":"model-00001-of-00002.safetensors",
        "b.weight":"model-00002-of-00002.safetensors",
        "c.weight":"model-00002-of-00002.safetensors"}}"#;
    write(dir.path(), "model.safetensors.index.json", index.as_bytes());
    let m = ModelFile::open(dir.path()).unwrap();
    assert_eq!(m.tensors().len(), 3);
    let b = m.tensor("b.weight").unwrap();
    assert_eq!(b.shard, 1);
    assert_eq!(m.tensor_bytes(b), &data(10, 3)[..8]);
    assert_eq!(
        m.tensor_bytes(m.tensor("a.weight").unwrap()),
        &data(8, 2)[..]
    );
    match m.source() {
        realizar_formats::Source::Safetensors { shards, config } => {
            assert_eq!(shards.len(), 2);
            assert!(config.is_some());
        }
        realizar_formats::Source::Gguf(_) => panic!("not GGUF"),
    }
}

#[test]
fn hostile_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, bytes: &[u8]| {
        write(dir.path(), name, bytes);
        ModelFile::open(&dir.path().join(name))
    };
    let is_st = |e: &FormatError| matches!(e, FormatError::Safetensors { .. });

    // Header length larger than the file.
    let mut b = three();
    b[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(is_st(&refused(
        "header length > file",
        open("a.safetensors", &b)
    )));
    let mut b = three();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(is_st(&refused(
        "header length u64::MAX",
        open("a.safetensors", &b)
    )));
    // Truncated: file shorter than the 8-byte length.
    assert!(is_st(&refused(
        "4-byte file",
        open("a.safetensors", b"\x10\0\0\0")
    )));
    // Offsets past the end of the data.
    let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let e = refused(
        "offsets past end",
        open("a.safetensors", &st_bytes(h, &[0; 8])),
    );
    assert!(is_st(&e));
    // Overlapping tensors.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert!(is_st(&refused(
        "overlap",
        open("a.safetensors", &st_bytes(h, &[0; 12]))
    )));
    // dtype size vs byte length.
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let e = refused(
        "F32 [3] in 8 bytes",
        open("a.safetensors", &st_bytes(h, &[0; 8])),
    );
    assert!(is_st(&e));
    // Shape product overflow.
    let h =
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#;
    assert!(is_st(&refused(
        "shape overflow",
        open("a.safetensors", &st_bytes(h, &[0; 8]))
    )));
    // Not JSON / not UTF-8.
    assert!(is_st(&refused(
        "header not JSON",
        open("a.safetensors", &st_bytes("{nope", &[]))
    )));
    // Unsupported dtype.
    let h = r#"{"pos":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let e = refused("I64 tensor", open("a.safetensors", &st_bytes(h, &[0; 8])));
    assert!(matches!(e, FormatError::UnsupportedDtype { ref tensor, .. } if tensor == "pos"));
    // Neither GGUF nor safetensors.
    let e = refused("random file", open("a.bin", b"hello world, not a model"));
    assert!(matches!(e, FormatError::NotAModel { .. }));
}

#[test]
fn hostile_folders() {
    let shard = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let folder = |index: Option<&str>, config: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        if let Some(c) = config {
            write(dir.path(), "config.json", c.as_bytes());
        }
        write(dir.path(), "s1.safetensors", &st_bytes(shard, &[0; 8]));
        write(dir.path(), "s2.safetensors", &st_bytes(shard, &[0; 8]));
        if let Some(i) = index {
            write(dir.path(), "model.safetensors.index.json", i.as_bytes());
        }
        let r = ModelFile::open(dir.path());
        (dir, r)
    };
    let ok_index = r#"{"weight_map":{"a":"s1.safetensors"}}"#;
    let (_d, r) = folder(Some(ok_index), None);
    assert!(matches!(
        refused("no config.json", r),
        FormatError::NotAModel { .. }
    ));
    let (_d, r) = folder(Some(ok_index), Some("{bad json"));
    assert!(matches!(
        refused("config.json not JSON", r),
        FormatError::Json { .. }
    ));
    let (_d, r) = folder(Some(ok_index), Some("[1,2]"));
    assert!(matches!(
        refused("config.json not an object", r),
        FormatError::BadConfig { .. }
    ));
    let (_d, r) = folder(None, Some(CONFIG));
    assert!(matches!(
        refused("no weights", r),
        FormatError::NotAModel { .. }
    ));
    let (_d, r) = folder(Some(ok_index), Some(CONFIG));
    assert!(r.is_ok());
    let bad_index = |i: &str, what: &str| {
        let (_d, r) = folder(Some(i), Some(CONFIG));
        refused(what, r)
    };
    let e = bad_index(
        r#"{"weight_map":{"a":"../s1.safetensors"}}"#,
        "shard path traversal",
    );
    assert!(matches!(e, FormatError::BadShardIndex { .. }));
    let e = bad_index(
        r#"{"weight_map":{"a":"/etc/passwd"}}"#,
        "absolute shard path",
    );
    assert!(matches!(e, FormatError::BadShardIndex { .. }));
    let e = bad_index(
        r#"{"weight_map":{"a":"missing.safetensors"}}"#,
        "missing shard file",
    );
    assert!(matches!(e, FormatError::Io { .. }));
    let e = bad_index(
        r#"{"weight_map":{"zz":"s1.safetensors"}}"#,
        "tensor not in its shard",
    );
    assert!(matches!(e, FormatError::BadShardIndex { .. }));
    let e = bad_index(
        r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        "same tensor in two shards",
    );
    assert!(matches!(e, FormatError::DuplicateTensor(_)));
    let e = bad_index(r#"{"weight_map":[]}"#, "weight_map not an object");
    assert!(matches!(e, FormatError::BadShardIndex { .. }));
    let e = bad_index(r#"{"weight_map":{"a":7}}"#, "shard name not a string");
    assert!(matches!(e, FormatError::BadShardIndex { .. }));
}
