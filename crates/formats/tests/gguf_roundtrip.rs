//! GgufWriter -> GgufFile round trips, and the typed metadata accessors.

use realizar_formats::{FormatError, GgmlType, GgufFile, GgufWriter, ModelFile, Value, ValueType};

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("v.u8", Value::U8(200)),
        ("v.i8", Value::I8(-100)),
        ("v.u16", Value::U16(60_000)),
        ("v.i16", Value::I16(-30_000)),
        ("v.u32", Value::U32(4_000_000_000)),
        ("v.i32", Value::I32(-2_000_000_000)),
        ("v.f32", Value::F32(1.5e-5)),
        ("v.bool", Value::Bool(true)),
        ("v.string", Value::String("héllo ✓".into())),
        ("v.u64", Value::U64(u64::MAX)),
        ("v.i64", Value::I64(i64::MIN)),
        ("v.f64", Value::F64(-2.25)),
        (
            "v.strs",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String(String::new())],
            ),
        ),
        ("v.empty", Value::Array(ValueType::F32, vec![])),
        (
            "v.f32s",
            Value::Array(ValueType::F32, vec![Value::F32(1.0), Value::F32(-0.5)]),
        ),
        (
            "v.i32s",
            Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(7)]),
        ),
        (
            "v.nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
                    Value::Array(ValueType::U8, vec![]),
                ],
            ),
        ),
    ]
}

/// Tensor data of `n` bytes that is not all zeros.
fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// The tensors a test file holds: name, dims, type, bytes.
type Tensors = Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>;

fn build(version: u32, alignment: Option<u64>) -> (GgufWriter<'static>, Tensors) {
    let tensors = vec![
        ("f32".to_string(), vec![3], GgmlType::F32, data(12, 1)),
        ("f16".to_string(), vec![5, 3], GgmlType::F16, data(30, 2)),
        ("q4_0".to_string(), vec![64, 2], GgmlType::Q4_0, data(72, 3)),
        (
            "q4_k".to_string(),
            vec![256, 1, 2],
            GgmlType::Q4K,
            data(288, 4),
        ),
        (
            "q6_k".to_string(),
            vec![256, 1, 1, 2],
            GgmlType::Q6K,
            data(420, 5),
        ),
        ("q8_0".to_string(), vec![32], GgmlType::Q8_0, data(34, 6)),
    ];
    let mut w = GgufWriter::new(version);
    if let Some(a) = alignment {
        w.alignment(a);
    }
    for (k, v) in every_value() {
        w.add(k, v);
    }
    for (name, dims, ty, bytes) in &tensors {
        w.add_tensor(name.clone(), dims, *ty, bytes.clone());
    }
    (w, tensors)
}

#[test]
fn round_trips_every_value_and_tensor() {
    for version in [2, 3] {
        for alignment in [None, Some(1), Some(8), Some(64), Some(4096)] {
            let (w, tensors) = build(version, alignment);
            let bytes = w.to_bytes().unwrap();
            let f = GgufFile::from_bytes(bytes).unwrap();
            assert_eq!(f.version(), version);
            assert_eq!(f.alignment(), alignment.unwrap_or(32));
            assert_eq!(f.data_offset() % f.alignment(), 0);
            let expected: Vec<_> = every_value();
            let got: Vec<_> = f
                .metadata()
                .iter()
                .filter(|(k, _)| k != "general.alignment")
                .collect();
            assert_eq!(got.len(), expected.len());
            for ((gk, gv), (ek, ev)) in got.iter().zip(&expected) {
                assert_eq!(gk, ek);
                assert_eq!(gv, ev, "{ek}");
            }
            assert_eq!(f.tensors().len(), tensors.len());
            for (t, (name, dims, ty, bytes)) in f.tensors().iter().zip(&tensors) {
                assert_eq!(&t.name, name);
                assert_eq!(&t.dims, dims);
                assert_eq!(t.ty, *ty);
                assert_eq!(f.tensor_data(t), &bytes[..]);
                assert_eq!((t.offset - f.data_offset()) % f.alignment(), 0);
            }
        }
    }
}

#[test]
fn write_file_and_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let (w, _) = build(3, None);
    let n = w.write_file(&path).unwrap();
    assert_eq!(n, std::fs::metadata(&path).unwrap().len());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_size(), n);
    let m = ModelFile::open(&path).unwrap();
    let t = m.tensor("q4_k").unwrap();
    assert_eq!(t.dims, vec![256, 1, 2]);
    assert_eq!(m.tensor_bytes(t), &data(288, 4)[..]);
    assert_eq!(m.dir(), dir.path());
}

#[test]
fn typed_accessors() {
    let (w, _) = build(3, None);
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    // Any integer type whose value fits.
    assert_eq!(f.get_u32("v.u8").unwrap(), 200);
    assert_eq!(f.get_u32("v.u16").unwrap(), 60_000);
    assert_eq!(f.get_u64("v.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i64("v.i8").unwrap(), -100);
    assert_eq!(f.get_i64("v.i64").unwrap(), i64::MIN);
    assert_eq!(f.get_u64("v.u64").unwrap(), u64::MAX);
    assert!(matches!(
        f.get_u32("v.i8"),
        Err(FormatError::WrongType { .. })
    ));
    assert!(matches!(
        f.get_u32("v.u64"),
        Err(FormatError::WrongType { .. })
    ));
    assert!(matches!(
        f.get_i64("v.u64"),
        Err(FormatError::WrongType { .. })
    ));
    // Floats accept floats and integers.
    assert_eq!(f.get_f32("v.f32").unwrap(), 1.5e-5);
    assert_eq!(f.get_f32("v.f64").unwrap(), -2.25);
    assert_eq!(f.get_f32("v.u8").unwrap(), 200.0);
    assert!(f.get_f32("v.string").is_err());
    assert!(f.get_bool("v.bool").unwrap());
    assert!(f.get_bool("v.u8").is_err());
    assert_eq!(f.get_str("v.string").unwrap(), "héllo ✓");
    assert_eq!(f.get_str_array("v.strs").unwrap(), vec!["a", ""]);
    assert_eq!(f.get_f32_array("v.f32s").unwrap(), vec![1.0, -0.5]);
    assert_eq!(f.get_f32_array("v.empty").unwrap(), Vec::<f32>::new());
    assert_eq!(f.get_i32_array("v.i32s").unwrap(), vec![-1, 7]);
    assert!(f.get_str_array("v.f32s").is_err());
    assert_eq!(f.get_array("v.nested").unwrap().len(), 2);
    // Missing keys.
    let e = f.get_u32("nope").unwrap_err();
    assert!(matches!(e, FormatError::MissingKey(ref k) if k == "nope"));
    assert_eq!(f.opt_u32("nope").unwrap(), None);
    assert_eq!(f.opt_u32("v.u8").unwrap(), Some(200));
    assert_eq!(f.opt_str("v.string").unwrap(), Some("héllo ✓"));
    let e = f.opt_str("v.u8").unwrap_err();
    println!("{e}");
    assert_eq!(
        e.to_string(),
        "metadata key `v.u8`: expected a string, found u8 (200)"
    );
    // Value helpers.
    let v = f.get("v.i16").unwrap();
    assert_eq!(v.as_i64(), Some(-30_000));
    assert_eq!(v.as_u64(), None);
    assert_eq!(v.as_f64(), Some(-30_000.0));
    assert_eq!(f.get("v.nested").unwrap().to_string(), "[[1, 2], []]");
}

#[test]
fn writer_refuses_what_the_reader_would() {
    let bad = |w: &GgufWriter, what: &str| {
        let e = w.to_bytes().unwrap_err();
        println!("{what:<28} -> {e}");
        e
    };
    let mut w = GgufWriter::new(1);
    w.add("a", Value::U8(1));
    assert!(matches!(
        bad(&w, "version 1"),
        FormatError::UnsupportedVersion(1)
    ));
    let mut w = GgufWriter::new(3);
    w.add("a", Value::U8(1)).add("a", Value::U8(2));
    assert!(matches!(
        bad(&w, "duplicate key"),
        FormatError::DuplicateKey(_)
    ));
    let mut w = GgufWriter::new(3);
    w.alignment(48);
    assert!(matches!(
        bad(&w, "alignment 48"),
        FormatError::BadAlignment(48)
    ));
    let mut w = GgufWriter::new(3);
    w.add("a", Value::Array(ValueType::U8, vec![Value::I8(1)]));
    assert!(matches!(
        bad(&w, "mixed array"),
        FormatError::InvalidValue { .. }
    ));
    let mut w = GgufWriter::new(3);
    w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 15]);
    assert!(matches!(
        bad(&w, "short data"),
        FormatError::TensorSizeMismatch { .. }
    ));
    let mut w = GgufWriter::new(3);
    w.add_tensor("t", &[33], GgmlType::Q4_0, vec![0u8; 18]);
    assert!(matches!(
        bad(&w, "ragged row"),
        FormatError::RaggedRow { .. }
    ));
    let mut w = GgufWriter::new(3);
    w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16]);
    assert!(matches!(
        bad(&w, "duplicate tensor"),
        FormatError::DuplicateTensor(_)
    ));
    let mut w = GgufWriter::new(3);
    w.add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0u8; 4]);
    assert!(matches!(bad(&w, "5 dims"), FormatError::BadShape { .. }));
}

#[test]
fn borrowed_tensor_data() {
    let weights = data(64, 9);
    let mut w = GgufWriter::new(3);
    w.add_tensor("w", &[16], GgmlType::F32, &weights[..]);
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.tensor_data(&f.tensors()[0]), &weights[..]);
}
