//! The GGUF writer: everything the reader reads, v2 or v3, any power-of-two alignment.
//!
//! Building never fails; `write_to` validates the whole file first (version, alignment, unique
//! keys and tensor names, well-typed arrays, shapes, data lengths) and writes nothing on error.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use realizar_quant::GgmlType;

use super::reader::{
    align_up, alignment_of, tensor_bytes, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS,
    MAX_NESTING,
};
use super::value::Value;
use crate::error::{FormatError, Result};

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF file in memory (tensor data may be borrowed) and writes it out.
///
/// ```
/// use realizar_formats::{GgufWriter, GgufFile, Value, GgmlType};
/// let mut w = GgufWriter::new(3);
/// w.add("general.architecture", Value::String("llama".into()))
///     .add_tensor("x", &[4], GgmlType::F32, vec![0u8; 16]);
/// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
/// ```
pub struct GgufWriter<'a> {
    version: u32,
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    /// A writer for GGUF `version` (2 or 3; checked when writing).
    pub fn new(version: u32) -> Self {
        GgufWriter {
            version,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Set `general.alignment` (written as u32 when it fits), replacing any earlier value.
    pub fn alignment(&mut self, alignment: u64) -> &mut Self {
        let v = u32::try_from(alignment).map_or(Value::U64(alignment), Value::U32);
        match self.kvs.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, old)) => *old = v,
            None => self.kvs.push((ALIGNMENT_KEY.to_string(), v)),
        }
        self
    }

    /// Add a metadata entry (written in the order added).
    pub fn add(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Add a tensor: `dims` in GGML order (row length first), `data` exactly its bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data: data.into(),
        });
        self
    }

    /// Validate, then write the whole file. Returns the bytes written.
    pub fn write_to(&self, mut w: impl Write) -> Result<u64> {
        let alignment = self.validate()?;
        let mut out = Counter { w: &mut w, n: 0 };
        out.put(&GGUF_MAGIC)?;
        out.put(&self.version.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.kvs.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kvs {
            out.string(k)?;
            out.put(&v.value_type().id().to_le_bytes())?;
            out.value(v)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            out.string(&t.name)?;
            out.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.put(&d.to_le_bytes())?;
            }
            out.put(&t.ty.id().to_le_bytes())?;
            out.put(&offset.to_le_bytes())?;
            offsets.push(offset);
            offset = pad_to(offset + t.data.len() as u64, alignment)?;
        }
        out.pad(alignment)?;
        for t in &self.tensors {
            out.put(&t.data)?;
            out.pad(alignment)?;
        }
        Ok(out.n)
    }

    /// Write the file at `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<u64> {
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        self.validate()?;
        let file = std::fs::File::create(path).map_err(io)?;
        let mut buf = std::io::BufWriter::new(file);
        let n = self.write_to(&mut buf)?;
        buf.flush().map_err(io)?;
        Ok(n)
    }

    /// The file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Check everything the reader will check; returns the alignment.
    fn validate(&self) -> Result<u64> {
        if !(2..=3).contains(&self.version) {
            return Err(FormatError::UnsupportedVersion(self.version));
        }
        let mut keys = HashSet::new();
        let mut alignment = DEFAULT_ALIGNMENT;
        for (k, v) in &self.kvs {
            if !keys.insert(k.as_str()) {
                return Err(FormatError::DuplicateKey(k.clone()));
            }
            check_value(k, v, 0)?;
            if k == ALIGNMENT_KEY {
                alignment = alignment_of(v)?;
            }
        }
        let mut names = HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(FormatError::DuplicateTensor(t.name.clone()));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS || t.dims.contains(&0) {
                return Err(FormatError::BadShape {
                    tensor: t.name.clone(),
                    reason: format!("dims {:?}: need 1 to {MAX_DIMS}, none zero", t.dims),
                });
            }
            let expected = tensor_bytes(&t.name, &t.dims, t.ty)?;
            if expected != t.data.len() as u64 {
                return Err(FormatError::TensorSizeMismatch {
                    tensor: t.name.clone(),
                    expected,
                    got: t.data.len() as u64,
                });
            }
        }
        Ok(alignment)
    }
}

fn pad_to(x: u64, alignment: u64) -> Result<u64> {
    align_up(x, alignment).ok_or(FormatError::BadAlignment(alignment))
}

/// Arrays must hold only their declared element type and nest at most `MAX_NESTING` deep.
fn check_value(key: &str, v: &Value, depth: usize) -> Result<()> {
    let Value::Array(ety, items) = v else {
        return Ok(());
    };
    if depth >= MAX_NESTING {
        return Err(FormatError::NestingTooDeep {
            key: key.to_string(),
            limit: MAX_NESTING,
        });
    }
    for item in items {
        if item.value_type() != *ety {
            return Err(FormatError::InvalidValue {
                key: key.to_string(),
                reason: format!("array of {ety} holds a {}", item.value_type()),
            });
        }
        check_value(key, item, depth + 1)?;
    }
    Ok(())
}

/// A writer that counts bytes, for padding.
struct Counter<W> {
    w: W,
    n: u64,
}

impl<W: Write> Counter<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(FormatError::Write)?;
        self.n += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> Result<()> {
        let target = pad_to(self.n, alignment)?;
        const ZEROS: [u8; 64] = [0; 64];
        while self.n < target {
            let k = (target - self.n).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..k])?;
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn value(&mut self, v: &Value) -> Result<()> {
        match v {
            Value::U8(x) => self.put(&x.to_le_bytes()),
            Value::I8(x) => self.put(&x.to_le_bytes()),
            Value::U16(x) => self.put(&x.to_le_bytes()),
            Value::I16(x) => self.put(&x.to_le_bytes()),
            Value::U32(x) => self.put(&x.to_le_bytes()),
            Value::I32(x) => self.put(&x.to_le_bytes()),
            Value::F32(x) => self.put(&x.to_le_bytes()),
            Value::Bool(x) => self.put(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::U64(x) => self.put(&x.to_le_bytes()),
            Value::I64(x) => self.put(&x.to_le_bytes()),
            Value::F64(x) => self.put(&x.to_le_bytes()),
            Value::Array(ety, items) => {
                self.put(&ety.id().to_le_bytes())?;
                self.put(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|i| self.value(i))
            }
        }
    }
}
