//! Every AVX2 kernel against its scalar reference (the shared checks of `simd/check.rs`).

use super::{has_avx2, Avx2};
use crate::simd::check::{kernel_tests, UnderTest};
use crate::simd::{GroupDot, Kernel};

/// The AVX2 kernels.
struct Avx2Kernels;

impl UnderTest for Avx2Kernels {
    const NAME: &'static str = "avx2";
    fn dot<W: Kernel, const T: usize>(
        &self,
        nb: usize,
        w: &[W],
        a: [&[W::Act]; T],
    ) -> Result<[f32; T], String> {
        // SAFETY: made only with AVX2, FMA and F16C (`kernels`); a slice shorter than `nb`
        // blocks panics.
        Ok(unsafe { <Avx2 as GroupDot<W>>::dot::<T>(nb, w, a) })
    }
}

/// The kernels, or on a CPU without their features `None` (the tests say so and pass).
fn kernels() -> Option<Avx2Kernels> {
    if !has_avx2() {
        eprintln!("SKIPPED: this CPU has no AVX2/FMA/F16C");
    }
    has_avx2().then_some(Avx2Kernels)
}

kernel_tests!(kernels);
