//! The GGUF reader: header, metadata, tensor infos, and the data section over a memory map.
//!
//! Layout (v2 and v3, little-endian):
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv      x { string:key u32:value_type value }
//! n_tensors x { string:name u32:n_dims u64[n_dims]:dims u32:ggml_type u64:offset }
//! padding to general.alignment (default 32)
//! data section: each tensor at data_start + offset, offsets multiples of the alignment
//! ```
//! Everything is validated at open: afterwards `tensor_data` is a plain slice.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use realizar_quant::{GgmlType, QuantError};

use super::cursor::Cursor;
use super::value::{Value, ValueType};
use crate::error::{FormatError, Result};
use crate::storage::Storage;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most levels of arrays within arrays a metadata value may have.
pub const MAX_NESTING: usize = 8;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;

/// Fewest bytes of a metadata entry: key length, value type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes of a tensor info: name length, n_dims, type, offset (and no dims: refused later).
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// One tensor of the file, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length); 1 to 4 dims, none zero.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the product of `dims`; checked not to overflow at open).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of a row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// A parsed GGUF file. Owns its bytes (a memory map, or a buffer for `from_bytes`); tensor data
/// is borrowed from them without copies.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("file_size", &self.file_size())
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Map and parse a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_storage(Storage::open(path, crate::storage::Residency::Mapped)?)
    }

    /// Parse a GGUF file held in memory (same checks as `open`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes))
    }

    pub(crate) fn from_storage(storage: Storage) -> Result<Self> {
        let p = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            key_index: p.key_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        let &i = self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let &i = self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// The tensor's bytes (validated at open). A `TensorInfo` not from this file whose range
    /// lies outside it gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.n_bytes).ok())
            .and_then(|(s, n)| Some(s..s.checked_add(n)?));
        range
            .and_then(|r| self.storage.bytes().get(r))
            .unwrap_or(&[])
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}

/// What `parse` finds, before it is joined to the storage.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor::new(buf);
    let magic = c.array::<4>(&"magic")?;
    if magic != GGUF_MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = c.u32(&"version")?;
    if !(2..=3).contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let n_tensors_at = c.pos();
    let n_tensors = c.u64(&"tensor count")?;
    let n_kv_at = c.pos();
    let n_kv = c.u64(&"metadata key count")?;
    c.check_count(n_kv, MIN_KV_SIZE, n_kv_at, &"metadata keys")?;
    c.check_count(n_tensors, MIN_TENSOR_INFO_SIZE, n_tensors_at, &"tensors")?;

    // ---- metadata
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut key_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(&format_args!("key of metadata entry {i}"))?;
        if key_index.contains_key(key) {
            return Err(FormatError::DuplicateKey(key.to_string()));
        }
        let ty_at = c.pos();
        let what = format_args!("type of key `{key}`");
        let id = c.u32(&what)?;
        let ty = value_type(id, ty_at, &what)?;
        let value = read_value(&mut c, ty, key, 0)?;
        key_index.insert(key.to_string(), metadata.len());
        metadata.push((key.to_string(), value));
    }
    let alignment = match key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => alignment_of(v)?,
    };

    // ---- tensor infos
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let t = read_tensor_info(&mut c, i, alignment)?;
        if tensor_index.contains_key(&t.name) {
            return Err(FormatError::DuplicateTensor(t.name));
        }
        tensor_index.insert(t.name.clone(), tensors.len());
        tensors.push(t);
    }

    // ---- data section
    let file_size = buf.len() as u64;
    let data_offset = align_up(c.pos(), alignment).ok_or(FormatError::BadAlignment(alignment))?;
    for t in &mut tensors {
        // `t.offset` is still relative to the data section here.
        let start = data_offset.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(t.n_bytes)) {
            Some(end) if end <= file_size => t.offset = end - t.n_bytes,
            _ => {
                return Err(FormatError::DataOutOfBounds {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    n_bytes: t.n_bytes,
                    data_offset,
                    file_size,
                })
            }
        }
    }
    check_overlaps(&tensors)?;

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

fn value_type(id: u32, offset: u64, what: &dyn fmt::Display) -> Result<ValueType> {
    ValueType::from_id(id).ok_or_else(|| FormatError::UnknownValueType {
        what: what.to_string(),
        id,
        offset,
    })
}

/// Read one value of type `ty` for `key`; `depth` is the number of arrays around it.
fn read_value(c: &mut Cursor<'_>, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
    let what = format_args!("value of key `{key}`");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(&what)?),
        ValueType::I8 => Value::I8(c.u8(&what)? as i8),
        ValueType::U16 => Value::U16(c.u16(&what)?),
        ValueType::I16 => Value::I16(c.u16(&what)? as i16),
        ValueType::U32 => Value::U32(c.u32(&what)?),
        ValueType::I32 => Value::I32(c.u32(&what)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        ValueType::Bool => Value::Bool(c.u8(&what)? != 0),
        ValueType::String => Value::String(c.string(&what)?.to_string()),
        ValueType::U64 => Value::U64(c.u64(&what)?),
        ValueType::I64 => Value::I64(c.u64(&what)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        ValueType::Array => {
            if depth >= MAX_NESTING {
                return Err(FormatError::NestingTooDeep {
                    key: key.to_string(),
                    limit: MAX_NESTING,
                });
            }
            let ty_at = c.pos();
            let ewhat = format_args!("element type of array `{key}`");
            let ety = value_type(c.u32(&ewhat)?, ty_at, &ewhat)?;
            let count_at = c.pos();
            let cwhat = format_args!("elements of array `{key}`");
            let count = c.u64(&cwhat)?;
            c.check_count(count, ety.min_encoded_size(), count_at, &cwhat)?;
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_value(c, ety, key, depth + 1)?);
            }
            Value::Array(ety, items)
        }
    })
}

/// The alignment a `general.alignment` value sets, checked.
pub(crate) fn alignment_of(v: &Value) -> Result<u64> {
    let a = v.as_u64().ok_or_else(|| FormatError::WrongType {
        key: ALIGNMENT_KEY.to_string(),
        expected: "an unsigned integer",
        found: v.describe(),
    })?;
    if a == 0 || !a.is_power_of_two() {
        return Err(FormatError::BadAlignment(a));
    }
    Ok(a)
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// One tensor info, with its offset still relative to the data section.
fn read_tensor_info(c: &mut Cursor<'_>, index: u64, alignment: u64) -> Result<TensorInfo> {
    let name = c
        .string(&format_args!("name of tensor {index}"))?
        .to_string();
    let n_dims = c.u32(&format_args!("dimension count of tensor `{name}`"))?;
    let bad_shape = |reason: String| FormatError::BadShape {
        tensor: name.clone(),
        reason,
    };
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(bad_shape(format!(
            "{n_dims} dimensions (must be 1 to {MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        dims.push(c.u64(&format_args!("dimension {j} of tensor `{name}`"))?);
    }
    let type_id = c.u32(&format_args!("type of tensor `{name}`"))?;
    let offset = c.u64(&format_args!("data offset of tensor `{name}`"))?;

    if let Some(j) = dims.iter().position(|&d| d == 0) {
        return Err(bad_shape(format!("dimension {j} is zero (dims {dims:?})")));
    }
    let ty = GgmlType::from_id(type_id).map_err(|_| FormatError::UnknownTensorType {
        tensor: name.clone(),
        id: type_id,
    })?;
    let n_bytes = tensor_bytes(&name, &dims, ty)?;
    if offset % alignment != 0 {
        return Err(FormatError::Misaligned {
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_bytes,
    })
}

/// Bytes of a tensor of `dims` (GGML order) and type `ty`, checking whole blocks per row and
/// that neither the element count nor the byte size overflows (both must fit an i64, as GGML
/// counts with int64_t).
pub(crate) fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
    let overflow = |what: &str| FormatError::BadShape {
        tensor: name.to_string(),
        reason: format!("{what} overflows (dims {dims:?}, type {ty})"),
    };
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| overflow("element count"))?;
    let row = dims.first().copied().unwrap_or(1);
    let row_bytes = ty.row_bytes(row).map_err(|e| match e {
        QuantError::RaggedRow { ty, n, block } => FormatError::RaggedRow {
            tensor: name.to_string(),
            row: n,
            ty,
            block,
        },
        _ => overflow("row byte size"),
    })?;
    dims.iter()
        .skip(1)
        .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| overflow("byte size"))
}

/// Fail with `Overlap` when two tensors' data ranges share a byte.
fn check_overlaps(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            if a.offset.saturating_add(a.n_bytes) > b.offset {
                return Err(FormatError::Overlap {
                    a: a.name.clone(),
                    b: b.name.clone(),
                });
            }
        }
    }
    Ok(())
}
