//! The byte-row entry points: one dispatcher per operation that checks lengths, views the bytes
//! as the type's blocks and calls the typed kernel.

use crate::float::{self, vec_dot_bf16, vec_dot_f16, vec_dot_f32};
use crate::iq4::*;
use crate::kquants::*;
use crate::legacy::*;
use crate::{as_blocks, as_blocks_mut, GgmlType, QuantError};

/// Bytes of `n` elements of `ty`, as usize.
fn row_len(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let bytes = ty.row_bytes(n as u64)?;
    usize::try_from(bytes).map_err(|_| QuantError::SizeOverflow)
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            got,
        })
    }
}

fn unsupported(op: &'static str, ty: GgmlType) -> QuantError {
    QuantError::Unsupported { op, ty: ty.name() }
}

/// Dequantize one row: `src` holds `dst.len()` elements of `ty` (exactly
/// `ty.row_bytes(dst.len())` bytes).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len("source row bytes", row_len(ty, dst.len())?, src.len())?;
    match ty {
        GgmlType::F32 => float::dequantize_f32_bytes(src, dst),
        GgmlType::F16 => float::dequantize_f16(as_blocks(src)?, dst),
        GgmlType::Bf16 => float::dequantize_bf16(as_blocks(src)?, dst),
        GgmlType::Q4_0 => dequantize_q4_0(as_blocks(src)?, dst),
        GgmlType::Q4_1 => dequantize_q4_1(as_blocks(src)?, dst),
        GgmlType::Q5_0 => dequantize_q5_0(as_blocks(src)?, dst),
        GgmlType::Q5_1 => dequantize_q5_1(as_blocks(src)?, dst),
        GgmlType::Q8_0 => dequantize_q8_0(as_blocks(src)?, dst),
        GgmlType::Q8_1 => dequantize_q8_1(as_blocks(src)?, dst),
        GgmlType::Q2K => dequantize_q2_k(as_blocks(src)?, dst),
        GgmlType::Q3K => dequantize_q3_k(as_blocks(src)?, dst),
        GgmlType::Q4K => dequantize_q4_k(as_blocks(src)?, dst),
        GgmlType::Q5K => dequantize_q5_k(as_blocks(src)?, dst),
        GgmlType::Q6K => dequantize_q6_k(as_blocks(src)?, dst),
        GgmlType::Q8K => dequantize_q8_k(as_blocks(src)?, dst),
        GgmlType::Iq4Nl => dequantize_iq4_nl(as_blocks(src)?, dst),
        GgmlType::Iq4Xs => dequantize_iq4_xs(as_blocks(src)?, dst),
        other => return Err(unsupported("dequantize", other)),
    }
    Ok(())
}

/// Quantize one row with the reference quantizer: `dst` must be exactly
/// `ty.row_bytes(src.len())` bytes.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_len("destination row bytes", row_len(ty, src.len())?, dst.len())?;
    match ty {
        GgmlType::F32 => float::quantize_f32_bytes(src, dst),
        GgmlType::F16 => float::quantize_f16(src, as_blocks_mut(dst)?),
        GgmlType::Bf16 => float::quantize_bf16(src, as_blocks_mut(dst)?),
        GgmlType::Q4_0 => quantize_q4_0(src, as_blocks_mut(dst)?),
        GgmlType::Q4_1 => quantize_q4_1(src, as_blocks_mut(dst)?),
        GgmlType::Q5_0 => quantize_q5_0(src, as_blocks_mut(dst)?),
        GgmlType::Q5_1 => quantize_q5_1(src, as_blocks_mut(dst)?),
        GgmlType::Q8_0 => quantize_q8_0(src, as_blocks_mut(dst)?),
        GgmlType::Q8_1 => quantize_q8_1(src, as_blocks_mut(dst)?),
        GgmlType::Q2K => quantize_q2_k(src, as_blocks_mut(dst)?),
        GgmlType::Q3K => quantize_q3_k(src, as_blocks_mut(dst)?),
        GgmlType::Q4K => quantize_q4_k(src, as_blocks_mut(dst)?),
        GgmlType::Q5K => quantize_q5_k(src, as_blocks_mut(dst)?),
        GgmlType::Q6K => quantize_q6_k(src, as_blocks_mut(dst)?),
        GgmlType::Q8K => quantize_q8_k(src, as_blocks_mut(dst)?),
        GgmlType::Iq4Nl => quantize_iq4_nl(src, as_blocks_mut(dst)?),
        GgmlType::Iq4Xs => quantize_iq4_xs(src, as_blocks_mut(dst)?),
        other => return Err(unsupported("quantize", other)),
    }
    Ok(())
}

/// Quantize activations into a vec-dot activation format (F32, F16, BF16, Q8_0, Q8_1, Q8_K),
/// as [`vec_dot_type`] names it for the weight type. Same length rules as [`quantize_row`].
///
/// Bit-identical to llama.cpp's CPU run-time `from_float` on x86: for Q8_0 / Q8_1 that is its
/// AVX quantizer (`127 / amax`, ties to even; [`quantize_act_q8_0`]), which differs from the
/// reference file quantizer of [`quantize_row`] in rare ties; Q8_K and the floats are the
/// reference ones.
pub fn quantize_activations(
    ty_act: GgmlType,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    match ty_act {
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            check_len(
                "destination row bytes",
                row_len(ty_act, src.len())?,
                dst.len(),
            )?;
            if ty_act == GgmlType::Q8_0 {
                quantize_act_q8_0(src, as_blocks_mut(dst)?);
            } else {
                quantize_act_q8_1(src, as_blocks_mut(dst)?);
            }
            Ok(())
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Q8K => {
            quantize_row(ty_act, src, dst)
        }
        other => Err(unsupported("activation quantize", other)),
    }
}

/// The activation format that weights of type `ty` are dotted with (as llama.cpp pairs them).
/// Types without a vec-dot (Q8_1, Q8_K, the integer types, F64) map to themselves or F32, and
/// [`vec_dot`] reports them as unsupported.
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::F32 => GgmlType::F32,
        GgmlType::F16 => GgmlType::F16,
        GgmlType::Bf16 => GgmlType::Bf16,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Iq4Nl => GgmlType::Q8_0,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
        GgmlType::Q2K
        | GgmlType::Q3K
        | GgmlType::Q4K
        | GgmlType::Q5K
        | GgmlType::Q6K
        | GgmlType::Q8K
        | GgmlType::Iq4Xs => GgmlType::Q8K,
        GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64 => {
            GgmlType::F32
        }
    }
}

/// Dot product of a weight row `w` (`n` elements of `ty`) with an activation row `act`
/// (`n` elements of `vec_dot_type(ty)`, as [`quantize_activations`] writes them).
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Result<f32, QuantError> {
    check_len("weight row bytes", row_len(ty, n)?, w.len())?;
    check_len(
        "activation row bytes",
        row_len(vec_dot_type(ty), n)?,
        act.len(),
    )?;
    Ok(match ty {
        GgmlType::F32 => match (
            bytemuck::try_cast_slice::<u8, f32>(w),
            bytemuck::try_cast_slice::<u8, f32>(act),
        ) {
            (Ok(w), Ok(a)) => vec_dot_f32(n, w, a),
            _ => {
                // Misaligned f32 bytes: copy once (the typed `vec_dot_f32` is the fast path).
                let mut wf = vec![0.0f32; n];
                let mut af = vec![0.0f32; n];
                float::dequantize_f32_bytes(w, &mut wf);
                float::dequantize_f32_bytes(act, &mut af);
                vec_dot_f32(n, &wf, &af)
            }
        },
        GgmlType::F16 => vec_dot_f16(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Bf16 => vec_dot_bf16(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q4_0 => vec_dot_q4_0_q8_0(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q4_1 => vec_dot_q4_1_q8_1(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q5_0 => vec_dot_q5_0_q8_0(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q5_1 => vec_dot_q5_1_q8_1(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q8_0 => vec_dot_q8_0_q8_0(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q2K => vec_dot_q2_k_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q3K => vec_dot_q3_k_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q4K => vec_dot_q4_k_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q5K => vec_dot_q5_k_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Q6K => vec_dot_q6_k_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Iq4Nl => vec_dot_iq4_nl_q8_0(n, as_blocks(w)?, as_blocks(act)?),
        GgmlType::Iq4Xs => vec_dot_iq4_xs_q8_k(n, as_blocks(w)?, as_blocks(act)?),
        other => return Err(unsupported("vec_dot", other)),
    })
}
