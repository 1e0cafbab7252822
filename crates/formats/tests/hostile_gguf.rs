//! Hostile GGUF files: each class of damage is refused with a typed error naming the problem.
//!
//! Files are built from raw bytes here (not with `GgufWriter`, which refuses to write them).
//! Run with `--nocapture` to see each error message.

use realizar_formats::{FormatError, GgmlType, GgufFile, GgufWriter, Value};

// ---- raw byte building ----------------------------------------------------------------------

fn le32(x: u32) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

fn le64(x: u64) -> Vec<u8> {
    x.to_le_bytes().to_vec()
}

/// A GGUF string: u64 length + bytes.
fn gstr(s: &[u8]) -> Vec<u8> {
    [le64(s.len() as u64), s.to_vec()].concat()
}

/// A metadata entry with a raw value type id and payload.
fn kv(key: &[u8], ty: u32, payload: Vec<u8>) -> Vec<u8> {
    [gstr(key), le32(ty), payload].concat()
}

fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    kv(key.as_bytes(), 4, le32(v))
}

/// A tensor info with raw dims, type id and relative offset.
fn ti(name: &[u8], dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = [gstr(name), le32(dims.len() as u32)].concat();
    for &d in dims {
        b.extend(le64(d));
    }
    [b, le32(ty), le64(offset)].concat()
}

/// A whole file: header with the given counts, entries, padding to `align`, then `data`.
struct Raw {
    magic: [u8; 4],
    version: u32,
    kvs: Vec<Vec<u8>>,
    tensors: Vec<Vec<u8>>,
    n_kv: Option<u64>,
    n_tensors: Option<u64>,
    align: usize,
    data: Vec<u8>,
}

impl Raw {
    fn new() -> Self {
        Raw {
            magic: *b"GGUF",
            version: 3,
            kvs: vec![],
            tensors: vec![],
            n_kv: None,
            n_tensors: None,
            align: 32,
            data: vec![],
        }
    }

    fn kv(mut self, e: Vec<u8>) -> Self {
        self.kvs.push(e);
        self
    }

    fn tensor(mut self, e: Vec<u8>) -> Self {
        self.tensors.push(e);
        self
    }

    fn data(mut self, n: usize) -> Self {
        self.data = (0..n).map(|i| i as u8).collect();
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(le32(self.version));
        b.extend(le64(self.n_tensors.unwrap_or(self.tensors.len() as u64)));
        b.extend(le64(self.n_kv.unwrap_or(self.kvs.len() as u64)));
        self.kvs.iter().for_each(|e| b.extend(e));
        self.tensors.iter().for_each(|e| b.extend(e));
        while b.len() & (self.align - 1) != 0 {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }

    fn open(&self) -> Result<GgufFile, FormatError> {
        GgufFile::from_bytes(self.bytes())
    }
}

/// Open, expect an error, print it, return it.
fn refused(what: &str, r: Result<GgufFile, FormatError>) -> FormatError {
    match r {
        Ok(_) => panic!("{what}: accepted a hostile file"),
        Err(e) => {
            println!("{what:<32} -> {e}");
            e
        }
    }
}

/// A small valid file: two keys, two tensors (F32 [4], Q4_0 [32, 2]).
fn valid() -> Raw {
    Raw::new()
        .kv(kv(b"general.architecture", 8, gstr(b"llama")))
        .kv(kv_u32("llama.block_count", 2))
        .tensor(ti(b"a", &[4], 0, 0))
        .tensor(ti(b"b", &[32, 2], 2, 32))
        .data(32 + 36)
}

#[test]
fn valid_baseline_opens() {
    let f = valid().open().unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_data(&f.tensors()[1]).len(), 36);
}

// ---- one test per class ---------------------------------------------------------------------

#[test]
fn header() {
    let mut r = valid();
    r.magic = *b"GGUG";
    let e = refused("bad magic", r.open());
    assert!(matches!(e, FormatError::BadMagic { found } if &found == b"GGUG"));
    for v in [0, 1, 4, 0x0300_0000] {
        let mut r = valid();
        r.version = v;
        let e = refused(&format!("version {v}"), r.open());
        assert!(matches!(e, FormatError::UnsupportedVersion(x) if x == v));
    }
    let mut r = valid();
    r.version = 2;
    assert!(r.open().is_ok(), "v2 shares v3's layout");
}

#[test]
fn truncation_at_every_byte() {
    let full = valid().bytes();
    assert!(GgufFile::from_bytes(full.clone()).is_ok());
    let mut shown = 0;
    for len in 0..full.len() {
        match GgufFile::from_bytes(full[..len].to_vec()) {
            Ok(_) => panic!("file cut at {len} of {} bytes was accepted", full.len()),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        FormatError::Truncated { .. }
                            | FormatError::CountTooLarge { .. }
                            | FormatError::DataOutOfBounds { .. }
                    ),
                    "cut at {len}: {e}"
                );
                if [0, 5, 30, 60, 120, full.len() - 1].contains(&len) && shown < 6 {
                    shown += 1;
                    println!("{:<32} -> {e}", format!("cut at {len}"));
                }
            }
        }
    }
}

#[test]
fn counts() {
    let mut r = valid();
    r.n_kv = Some(1 << 60);
    let e = refused("2^60 keys", r.open());
    assert!(matches!(e, FormatError::CountTooLarge { count, .. } if count == 1 << 60));
    let mut r = valid();
    r.n_tensors = Some(u64::MAX);
    let e = refused("u64::MAX tensors", r.open());
    assert!(matches!(e, FormatError::CountTooLarge { .. }));
    // A count that fits the per-entry minimum but not the real entries: truncation, not alloc.
    let mut r = valid();
    r.n_kv = Some(5);
    assert!(r.open().is_err());
}

#[test]
fn strings_and_arrays() {
    // A string length past the end.
    let r = valid().kv(kv(b"k", 8, le64(1 << 40)));
    let e = refused("string length 2^40", r.open());
    assert!(matches!(e, FormatError::Truncated { .. }));
    // A key length past the end.
    let r = valid().kv(le64(u64::MAX));
    let e = refused("key length u64::MAX", r.open());
    assert!(matches!(e, FormatError::Truncated { .. }));
    // An array of 2^60 strings: refused before allocating.
    let r = valid().kv(kv(b"arr", 9, [le32(8), le64(1 << 60)].concat()));
    let e = refused("array of 2^60 strings", r.open());
    assert!(matches!(e, FormatError::CountTooLarge { count, .. } if count == 1 << 60));
    // Nesting: 8 levels are fine, 9 are not.
    let nested = |levels: usize| {
        // `levels - 1` arrays each holding one array, around an empty array of u8.
        let mut payload = [le32(9), le64(1)].concat().repeat(levels - 1);
        payload.extend([le32(0), le64(0)].concat());
        valid().kv(kv(b"deep", 9, payload))
    };
    assert!(nested(8).open().is_ok());
    let e = refused("arrays nested 9 deep", nested(9).open());
    assert!(matches!(e, FormatError::NestingTooDeep { ref key, .. } if key == "deep"));
    let e = refused("arrays nested 100000 deep", nested(100_000).open());
    assert!(matches!(e, FormatError::NestingTooDeep { .. }));
    // Unknown value types, top level and in an array.
    let e = refused("value type 13", valid().kv(kv(b"k", 13, le32(0))).open());
    assert!(matches!(e, FormatError::UnknownValueType { id: 13, .. }));
    let r = valid().kv(kv(b"k", 9, [le32(99), le64(1)].concat()));
    let e = refused("array element type 99", r.open());
    assert!(matches!(e, FormatError::UnknownValueType { id: 99, .. }));
    // Invalid UTF-8 in a key and in a string value.
    let e = refused(
        "invalid UTF-8 key",
        valid().kv(kv(b"k\xff", 4, le32(0))).open(),
    );
    assert!(matches!(e, FormatError::InvalidUtf8 { .. }));
    let r = valid().kv(kv(b"k", 8, gstr(b"ok\xc3\x28")));
    let e = refused("invalid UTF-8 string value", r.open());
    assert!(matches!(e, FormatError::InvalidUtf8 { ref what, .. } if what.contains("`k`")));
}

#[test]
fn tensor_shapes() {
    let one = |info: Vec<u8>| Raw::new().tensor(info).data(4096);
    let e = refused("5 dims", one(ti(b"t", &[1, 1, 1, 1, 1], 0, 0)).open());
    assert!(matches!(e, FormatError::BadShape { ref tensor, .. } if tensor == "t"));
    let e = refused("0 dims", one(ti(b"t", &[], 0, 0)).open());
    assert!(matches!(e, FormatError::BadShape { .. }));
    let e = refused(
        "huge n_dims",
        one([gstr(b"t"), le32(u32::MAX)].concat()).open(),
    );
    assert!(matches!(e, FormatError::BadShape { .. }));
    let e = refused("zero dim", one(ti(b"t", &[4, 0], 0, 0)).open());
    assert!(matches!(e, FormatError::BadShape { .. }));
    let big = 1u64 << 32;
    let e = refused(
        "element count overflow",
        one(ti(b"t", &[big, big, big], 0, 0)).open(),
    );
    assert!(matches!(e, FormatError::BadShape { .. }));
    let e = refused("byte size overflow", one(ti(b"t", &[1 << 62], 0, 0)).open());
    assert!(matches!(e, FormatError::BadShape { .. }));
    let e = refused(
        "byte size > i64",
        one(ti(b"t", &[1 << 31, 1 << 30], 0, 0)).open(),
    );
    assert!(matches!(e, FormatError::BadShape { .. }));
}

#[test]
fn tensor_data() {
    let e = refused(
        "offset past end",
        valid().tensor(ti(b"c", &[4], 0, 1 << 20)).open(),
    );
    assert!(matches!(e, FormatError::DataOutOfBounds { ref tensor, .. } if tensor == "c"));
    let e = refused(
        "offset u64::MAX-31",
        valid().tensor(ti(b"c", &[4], 0, u64::MAX - 31)).open(),
    );
    assert!(matches!(e, FormatError::DataOutOfBounds { .. }));
    let e = refused(
        "misaligned offset",
        valid().tensor(ti(b"c", &[4], 0, 4)).open(),
    );
    assert!(matches!(
        e,
        FormatError::Misaligned {
            offset: 4,
            alignment: 32,
            ..
        }
    ));
    let e = refused("overlap", valid().tensor(ti(b"c", &[4], 0, 32)).open());
    assert!(matches!(e, FormatError::Overlap { .. }));
    let e = refused(
        "unknown tensor type 4",
        valid().tensor(ti(b"c", &[4], 4, 96)).open(),
    );
    assert!(matches!(e, FormatError::UnknownTensorType { id: 4, .. }));
    let e = refused(
        "unknown tensor type 9999",
        valid().tensor(ti(b"c", &[4], 9999, 96)).open(),
    );
    assert!(matches!(e, FormatError::UnknownTensorType { id: 9999, .. }));
    let e = refused(
        "ragged Q4_0 row",
        valid().tensor(ti(b"c", &[33], 2, 96)).open(),
    );
    assert!(matches!(
        e,
        FormatError::RaggedRow {
            row: 33,
            block: 32,
            ..
        }
    ));
}

#[test]
fn duplicates() {
    let e = refused(
        "duplicate key",
        valid().kv(kv_u32("llama.block_count", 3)).open(),
    );
    assert!(matches!(e, FormatError::DuplicateKey(ref k) if k == "llama.block_count"));
    let r = valid().tensor(ti(b"a", &[4], 0, 128)).data(256);
    let e = refused("duplicate tensor", r.open());
    assert!(matches!(e, FormatError::DuplicateTensor(ref t) if t == "a"));
}

#[test]
fn alignment() {
    for a in [0u32, 3, 48] {
        let e = refused(
            &format!("alignment {a}"),
            valid().kv(kv_u32("general.alignment", a)).open(),
        );
        assert!(matches!(e, FormatError::BadAlignment(x) if x == a as u64));
    }
    let r = valid().kv(kv(b"general.alignment", 8, gstr(b"32")));
    let e = refused("alignment as a string", r.open());
    assert!(matches!(e, FormatError::WrongType { .. }));
    let r = valid().kv(kv(b"general.alignment", 6, 32f32.to_le_bytes().to_vec()));
    let e = refused("alignment as f32", r.open());
    assert!(matches!(e, FormatError::WrongType { .. }));
    // A valid non-default alignment moves the data section.
    let mut r = valid().kv(kv_u32("general.alignment", 64));
    r.tensors = vec![ti(b"a", &[4], 0, 0), ti(b"b", &[32, 2], 2, 64)];
    r.align = 64;
    r = r.data(64 + 36);
    let f = r.open().unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
}

/// Flip random bytes of a valid file (and cut it at random lengths): every result is Ok or Err.
#[test]
fn random_byte_flips_never_panic() {
    let mut w = GgufWriter::new(3);
    w.add("general.architecture", Value::String("llama".into()))
        .add("k.u8", Value::U8(7))
        .add("k.f64", Value::F64(0.5))
        .add(
            "k.arr",
            Value::Array(
                crate_vt::ARRAY,
                vec![Value::Array(
                    crate_vt::STRING,
                    vec![Value::String("x".into())],
                )],
            ),
        )
        .add_tensor("t0", &[8], GgmlType::F32, vec![1u8; 32])
        .add_tensor("t1", &[32, 2], GgmlType::Q8_0, vec![2u8; 68]);
    let valid = w.to_bytes().unwrap();
    assert!(GgufFile::from_bytes(valid.clone()).is_ok());

    let mut state = 0x9E37_79B9_7F4A_7C15u64; // xorshift64*, fixed seed
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let mut b = valid.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 3 {
                0 => next() as u8,
                1 => b[i] ^ (1 << (next() % 8)),
                _ => 0xff,
            };
        }
        if next() % 8 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        match GgufFile::from_bytes(b) {
            Ok(f) => {
                ok += 1;
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
                }
            }
            Err(_) => err += 1,
        }
    }
    println!("byte flips: {ok} opened, {err} refused");
}

mod crate_vt {
    use realizar_formats::ValueType;
    pub const ARRAY: ValueType = ValueType::Array;
    pub const STRING: ValueType = ValueType::String;
}
