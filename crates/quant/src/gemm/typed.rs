//! Rows x tokens by the typed kernels, for every weight type the AVX-512 kernels do not take
//! (and for all types below that level): at [`Isa::Avx2`] and above the AVX2 kernels of
//! `x86/`, at [`Isa::NeonDotprod`] / [`Isa::Neon`] the NEON kernels of `aarch64/` (with or
//! without `sdot`), one weight row against up to 4 tokens at a time (each block unpacked once
//! per group, `simd::rows_in_groups`); at [`Isa::Scalar`] the scalar references, one (row,
//! token) at a time. A token's arithmetic does not depend on the group it is in, so all are
//! batch-invariant.

use super::{Isa, QActs};
use crate::fp::{Bf16, Half};
use crate::iq4::{BlockIq4Nl, BlockIq4Xs};
use crate::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::{GgmlType, QuantError};
use bytemuck::Pod;
use std::borrow::Cow;

/// The kernels a weight type needs here: the AVX2 ones on x86-64, the NEON ones on aarch64,
/// else the scalar reference.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) use crate::simd::Kernel;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(super) use crate::VecDot as Kernel;

type Sink<'a> = &'a mut dyn FnMut(usize, usize, &[f32]);

/// A computation generic over the weight type, run by [`for_type`].
pub(super) trait ForType {
    type Out;
    fn call<W: Kernel>(self) -> Self::Out;
}

/// `f.call::<W>()` for the block (or element) type `W` of `wty`; `None` for types without a
/// vec-dot.
pub(super) fn for_type<F: ForType>(wty: GgmlType, f: F) -> Option<F::Out> {
    Some(match wty {
        GgmlType::F32 => f.call::<f32>(),
        GgmlType::F16 => f.call::<Half>(),
        GgmlType::Bf16 => f.call::<Bf16>(),
        GgmlType::Q4_0 => f.call::<BlockQ4_0>(),
        GgmlType::Q4_1 => f.call::<BlockQ4_1>(),
        GgmlType::Q5_0 => f.call::<BlockQ5_0>(),
        GgmlType::Q5_1 => f.call::<BlockQ5_1>(),
        GgmlType::Q8_0 => f.call::<BlockQ8_0>(),
        GgmlType::Q2K => f.call::<BlockQ2K>(),
        GgmlType::Q3K => f.call::<BlockQ3K>(),
        GgmlType::Q4K => f.call::<BlockQ4K>(),
        GgmlType::Q5K => f.call::<BlockQ5K>(),
        GgmlType::Q6K => f.call::<BlockQ6K>(),
        GgmlType::Iq4Nl => f.call::<BlockIq4Nl>(),
        GgmlType::Iq4Xs => f.call::<BlockIq4Xs>(),
        _ => return None,
    })
}

/// Bytes viewed as `T`s; copied when they are misaligned for `T` (only `f32` can be).
pub(super) fn view<T: Pod>(b: &[u8]) -> Result<Cow<'_, [T]>, QuantError> {
    crate::whole_blocks::<T>(b.len())?;
    Ok(match bytemuck::try_cast_slice(b) {
        Ok(v) => Cow::Borrowed(v),
        Err(_) => Cow::Owned(
            b.chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    })
}

/// `sink(r, t, &[dot(row r, token t)])` for every row of `w` and token of `acts`.
pub(super) fn gemm_typed(
    isa: Isa,
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    acts: &QActs,
    sink: Sink<'_>,
) -> Result<(), QuantError> {
    struct Gemm<'a, 's> {
        isa: Isa,
        w: &'a [u8],
        n_rows: usize,
        acts: &'a QActs,
        sink: Sink<'s>,
    }
    impl ForType for Gemm<'_, '_> {
        type Out = Result<(), QuantError>;
        fn call<W: Kernel>(self) -> Self::Out {
            let (w, a) = (view::<W>(self.w)?, view::<W::Act>(&self.acts.raw)?);
            rows::<W>(self.isa, &w, self.n_rows, &a, self.acts, self.sink);
            Ok(())
        }
    }
    let gemm = Gemm {
        isa,
        w,
        n_rows,
        acts,
        sink,
    };
    for_type(wty, gemm).unwrap_or(Err(QuantError::Unsupported {
        op: "gemm",
        ty: wty.name(),
    }))
}

/// Every (row, token) of `w` (`n_rows` rows back to back) and `a` (`acts.n_tok` rows).
fn rows<W: Kernel>(isa: Isa, w: &[W], n_rows: usize, a: &[W::Act], acts: &QActs, sink: Sink<'_>) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && crate::x86::has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        unsafe { crate::x86::rows_tokens(w, n_rows, a, acts.n_tok, sink) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    {
        use crate::aarch64::{has_dotprod, rows_tokens, Plain, Sdot};
        if isa == Isa::NeonDotprod && has_dotprod() {
            // SAFETY: the CPU has the dot-product extension (checked just above).
            unsafe { rows_tokens::<W, Sdot>(w, n_rows, a, acts.n_tok, sink) };
            return;
        }
        if isa != Isa::Scalar {
            // SAFETY: plain NEON is baseline on aarch64.
            unsafe { rows_tokens::<W, Plain>(w, n_rows, a, acts.n_tok, sink) };
            return;
        }
    }
    let _ = isa;
    let (wb, ab) = (w.len() / n_rows.max(1), a.len() / acts.n_tok.max(1));
    for r in 0..n_rows {
        let wr = &w[r * wb..(r + 1) * wb];
        for t in 0..acts.n_tok {
            sink(r, t, &[W::SCALAR(acts.cols, wr, &a[t * ab..(t + 1) * ab])]);
        }
    }
}
