//! realizar-quant: the numeric formats of model weights and activations.
//!
//! One table of types ([`GgmlType`]) with block geometry; for each block-quantized type a
//! `#[repr(C)]` block struct, a scalar dequantize, a scalar reference quantize and a scalar
//! reference vec-dot against the type's activation format. SIMD versions are chosen at run time
//! and are tested against the scalar references.

mod types;

pub use types::{GgmlType, ALL_TYPES, QK_K};

/// Errors of the quant crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("unknown tensor type id {0}")]
    UnknownType(u32),
    #[error("row of {n} elements is not a multiple of the {ty} block size {block}")]
    RaggedRow { ty: &'static str, n: u64, block: usize },
    #[error("tensor size overflows")]
    SizeOverflow,
    #[error("{op} is not implemented for type {ty}")]
    Unsupported { op: &'static str, ty: &'static str },
    #[error("buffer length mismatch: {what}: expected {expected}, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
}
