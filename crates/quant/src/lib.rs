//! realizar-quant: the numeric formats of model weights and activations.
//!
//! One table of types ([`GgmlType`]) with block geometry; for each block-quantized type a
//! `#[repr(C)]` block struct (alignment 1, bit-exact to GGML's layout), a scalar dequantize, a
//! scalar reference quantize and a scalar reference vec-dot against the type's activation
//! format ([`vec_dot_type`]). SIMD versions are chosen at run time and are tested against the
//! scalar references (`*_scalar`): AVX2 + FMA + F16C for every type with a vec-dot (`x86/`),
//! NEON (with the dot-product extension where the CPU has it) for the same types on aarch64
//! (`aarch64/`), AVX-512 VNNI row-by-token-group kernels for the legacy types and
//! Q4_K/Q5_K/Q6_K ([`gemm`](mod@gemm)).
//!
//! Two ways in:
//! - byte rows with checked lengths: [`dequantize_row`], [`quantize_row`],
//!   [`quantize_activations`], [`vec_dot`];
//! - typed block slices for hot loops (no `Result`, no length checks beyond `debug_assert!`):
//!   view bytes with [`as_blocks`], then call e.g. [`vec_dot_q4_1_q8_1`]. They work on the first
//!   `n` elements and ignore extra blocks; if a slice holds fewer, only the common prefix is
//!   used (debug builds assert).
//!
//! Independent checks: `tests/gguf_py.rs` compares every dequantizer bit for bit with the `gguf`
//! Python package (and the legacy quantizers byte for byte); `tests/ggml_ref.rs` compares every
//! quantizer and dequantizer with llama.cpp's C code when a built peer is present.

/// Assert a block struct's size against the type table and its alignment of 1, and tie it to
/// its [`GgmlType`] through [`Block`].
macro_rules! block_layout {
    ($t:ty, $g:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $g.type_size());
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
        impl crate::Block for $t {
            const TYPE: crate::GgmlType = $g;
        }
    };
}

/// The typed vec-dot `$name(n, w, a)`: the AVX2 kernel (`x86/`) when the CPU has AVX2, FMA
/// and F16C, the NEON kernel (`aarch64/`, with `sdot` where the CPU has it) on aarch64, else
/// `$scalar`, the scalar reference (the kernels' test oracle); and the type's [`VecDot`].
macro_rules! vec_dot_dispatch {
    ($(#[$doc:meta])* $name:ident => $scalar:ident($w:ty, $a:ty)) => {
        $(#[$doc])*
        #[doc = concat!("\n\nUses the AVX2 or NEON kernel when the CPU has it, else [`", stringify!($scalar), "`].")]
        #[inline]
        pub fn $name(n: usize, w: &[$w], a: &[$a]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if crate::x86::has_avx2() {
                // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
                return unsafe { crate::x86::vec_dot::<$w>(n, w, a) };
            }
            #[cfg(target_arch = "aarch64")]
            return crate::aarch64::vec_dot::<$w>(n, w, a);
            #[cfg(not(target_arch = "aarch64"))]
            $scalar(n, w, a)
        }

        impl crate::VecDot for $w {
            type Act = $a;
            const SCALAR: fn(usize, &[$w], &[$a]) -> f32 = $scalar;
        }
    };
}

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod float;
mod fp;
pub mod gemm;
mod iq4;
mod kquants;
mod legacy;
mod row;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
mod types;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

pub use float::{
    dequantize_bf16, dequantize_f16, quantize_bf16, quantize_f16, vec_dot_bf16,
    vec_dot_bf16_scalar, vec_dot_f16, vec_dot_f16_scalar, vec_dot_f32, vec_dot_f32_scalar,
};
pub use fp::{Bf16, Half};
pub use gemm::{detect_isa, gemm, Isa, Kernels, QActs};
pub use iq4::{
    dequantize_iq4_nl, dequantize_iq4_xs, quantize_iq4_nl, quantize_iq4_xs, vec_dot_iq4_nl_q8_0,
    vec_dot_iq4_nl_q8_0_scalar, vec_dot_iq4_xs_q8_k, vec_dot_iq4_xs_q8_k_scalar, BlockIq4Nl,
    BlockIq4Xs, KVALUES_IQ4NL,
};
pub use kquants::{
    dequantize_q2_k, dequantize_q3_k, dequantize_q4_k, dequantize_q5_k, dequantize_q6_k,
    dequantize_q8_k, q3k_scales, quantize_q2_k, quantize_q3_k, quantize_q4_k, quantize_q5_k,
    quantize_q6_k, quantize_q8_k, scale_min_k4, vec_dot_q2_k_q8_k, vec_dot_q2_k_q8_k_scalar,
    vec_dot_q3_k_q8_k, vec_dot_q3_k_q8_k_scalar, vec_dot_q4_k_q8_k, vec_dot_q4_k_q8_k_scalar,
    vec_dot_q5_k_q8_k, vec_dot_q5_k_q8_k_scalar, vec_dot_q6_k_q8_k, vec_dot_q6_k_q8_k_scalar,
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE,
};
pub use legacy::{
    dequantize_q4_0, dequantize_q4_1, dequantize_q5_0, dequantize_q5_1, dequantize_q8_0,
    dequantize_q8_1, quantize_act_q8_0, quantize_act_q8_1, quantize_q4_0, quantize_q4_1,
    quantize_q5_0, quantize_q5_1, quantize_q8_0, quantize_q8_1, vec_dot_q4_0_q8_0,
    vec_dot_q4_0_q8_0_scalar, vec_dot_q4_1_q8_1, vec_dot_q4_1_q8_1_scalar, vec_dot_q5_0_q8_0,
    vec_dot_q5_0_q8_0_scalar, vec_dot_q5_1_q8_1, vec_dot_q5_1_q8_1_scalar, vec_dot_q8_0_q8_0,
    vec_dot_q8_0_q8_0_scalar, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
    QK as QK_LEGACY,
};
pub use row::{dequantize_row, quantize_activations, quantize_row, vec_dot, vec_dot_type};
pub use types::{GgmlType, ALL_TYPES, QK_K};

use bytemuck::Pod;

/// Errors of the quant crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("unknown tensor type id {0}")]
    UnknownType(u32),
    #[error("row of {n} elements is not a multiple of the {ty} block size {block}")]
    RaggedRow {
        ty: &'static str,
        n: u64,
        block: usize,
    },
    #[error("tensor size overflows")]
    SizeOverflow,
    #[error("{op} is not implemented for type {ty}")]
    Unsupported { op: &'static str, ty: &'static str },
    #[error("buffer length mismatch: {what}: expected {expected}, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("buffer is not aligned to {align} bytes for {what}")]
    Misaligned { what: &'static str, align: usize },
}

/// A block (or element) struct of one GGML type: `size_of::<Self>() == TYPE.type_size()` and
/// `TYPE.block_size()` elements per value. All implementors have alignment 1, so any byte
/// slice of the right length can be viewed as a slice of them.
pub trait Block: Pod {
    const TYPE: GgmlType;
}

impl Block for Half {
    const TYPE: GgmlType = GgmlType::F16;
}
impl Block for Bf16 {
    const TYPE: GgmlType = GgmlType::Bf16;
}
impl Block for f32 {
    const TYPE: GgmlType = GgmlType::F32;
}

/// A weight type with a vec-dot: its activation format and scalar reference (the SIMD
/// kernels' oracle and the portable path of `gemm`).
pub(crate) trait VecDot: Block {
    type Act: Block;
    /// `dot(n, w, a)` over the first `n` elements.
    const SCALAR: fn(usize, &[Self], &[Self::Act]) -> f32;
}

/// Checks that `len` bytes are a whole number of `T`s.
fn whole_blocks<T: Pod>(len: usize) -> Result<(), QuantError> {
    let size = std::mem::size_of::<T>();
    if size == 0 || !len.is_multiple_of(size) {
        return Err(QuantError::Length {
            what: std::any::type_name::<T>(),
            expected: len.next_multiple_of(size.max(1)),
            got: len,
        });
    }
    Ok(())
}

/// View bytes as a slice of `T` without copying. Fails when the length is not a whole number
/// of `T`s, or (only for `T` with alignment > 1, such as `f32`) when the bytes are misaligned.
/// Every block struct of this crate has alignment 1, so for them only the length can fail.
pub fn as_blocks<T: Pod>(bytes: &[u8]) -> Result<&[T], QuantError> {
    whole_blocks::<T>(bytes.len())?;
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::Misaligned {
        what: std::any::type_name::<T>(),
        align: std::mem::align_of::<T>(),
    })
}

/// Mutable form of [`as_blocks`].
pub fn as_blocks_mut<T: Pod>(bytes: &mut [u8]) -> Result<&mut [T], QuantError> {
    whole_blocks::<T>(bytes.len())?;
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| QuantError::Misaligned {
        what: std::any::type_name::<T>(),
        align: std::mem::align_of::<T>(),
    })
}
