//! The one error type of the crate.
//!
//! Every variant names what went wrong and where: the key, the tensor, the file or the byte
//! offset. A model file is untrusted input, so these are ordinary outcomes, never panics.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing a model file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // ---- files -------------------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("{path}: not a model file or folder: {reason}")]
    NotAModel { path: PathBuf, reason: String },

    // ---- GGUF header -------------------------------------------------------------------------
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic { found: [u8; 4] },
    #[error(
        "unsupported GGUF version {0} (supported: 2 and 3; big-endian files are not supported)"
    )]
    UnsupportedVersion(u32),

    // ---- GGUF structure ----------------------------------------------------------------------
    #[error("file truncated at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("{what}: count {count} at byte {offset} is larger than the rest of the file can hold")]
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
    },
    #[error("key `{key}`: arrays nested deeper than {limit} levels")]
    NestingTooDeep { key: String, limit: usize },
    #[error("{what}: unknown value type id {id} at byte {offset}")]
    UnknownValueType { what: String, id: u32, offset: u64 },
    #[error("{what}: invalid UTF-8 at byte {offset}")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),
    #[error("general.alignment = {0}: must be a non-zero power of two")]
    BadAlignment(u64),

    // ---- GGUF tensors ------------------------------------------------------------------------
    #[error("tensor `{tensor}`: bad shape: {reason}")]
    BadShape { tensor: String, reason: String },
    #[error("tensor `{tensor}`: unknown tensor type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },
    #[error(
        "tensor `{tensor}`: row of {row} elements is not a multiple of the {ty} block size {block}"
    )]
    RaggedRow {
        tensor: String,
        row: u64,
        ty: &'static str,
        block: usize,
    },
    #[error("tensor `{tensor}`: data offset {offset} (relative to the data section) is not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{tensor}`: {n_bytes} data bytes at offset {offset} of the data section (which starts at byte {data_offset}) lie past the end of the file ({file_size} bytes)")]
    DataOutOfBounds {
        tensor: String,
        offset: u64,
        n_bytes: u64,
        data_offset: u64,
        file_size: u64,
    },
    #[error("tensors `{a}` and `{b}` overlap in the data section")]
    Overlap { a: String, b: String },
    #[error("duplicate tensor name `{0}`")]
    DuplicateTensor(String),
    #[error("tensor `{tensor}`: {got} data bytes given, its shape and type need {expected}")]
    TensorSizeMismatch {
        tensor: String,
        expected: u64,
        got: u64,
    },

    // ---- typed metadata access and writing ---------------------------------------------------
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key `{key}`: invalid value: {reason}")]
    InvalidValue { key: String, reason: String },

    // ---- safetensors and HF folders ----------------------------------------------------------
    #[error("{path}: invalid safetensors file: {source}{detail}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
        /// Which tensor and why, when the crate's message does not say (may be empty).
        detail: String,
    },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: bad shard index: {reason}")]
    BadShardIndex { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
