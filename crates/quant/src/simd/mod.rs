//! What the SIMD vec-dots of every architecture share (`x86/`: AVX2; `aarch64/`: NEON): a
//! kernel computes one weight row against a group of tokens ([`GroupDot`]), and
//! [`rows_in_groups`] walks the rows of a product with it.
//!
//! The float kernels (F32, F16, BF16) are one generic algorithm over an architecture's f32
//! vector ([`float_tokens`]).
//!
//! A kernel's per-token arithmetic is the same for every group size, so a product does not
//! depend on the other tokens of the call (`gemm`'s batch invariance). The generic walks are
//! `#[inline(always)]`: each architecture calls them from a function compiled with its
//! features, so that the kernels (compiled with the same features) inline into them.

use crate::float::Float;
use crate::VecDot;

#[cfg(test)]
pub(crate) mod check;

// `Kernel`: the weight types with a kernel of this architecture (every type with a vec-dot).
#[cfg(target_arch = "aarch64")]
pub(crate) use crate::aarch64::NeonDot as Kernel;
#[cfg(target_arch = "x86_64")]
pub(crate) use crate::x86::Avx2Dot as Kernel;

/// A kernel family for the weight type `W`, one weight row against `T` tokens.
pub(crate) trait GroupDot<W: VecDot> {
    /// The most tokens [`rows_in_groups`] gives one call (at most 4; the accumulators of more
    /// would not fit the registers; any `T` computes the same).
    const MAX_TOK: usize;
    /// `out[t] = dot(w, a[t])` over the first `nb` blocks (elements for the float types).
    /// Each product's arithmetic is the same for every `T`.
    ///
    /// # Safety
    /// The CPU must support the kernel's features; `w` and every `a[t]` hold at least `nb`
    /// blocks (else the call panics).
    unsafe fn dot<const T: usize>(nb: usize, w: &[W], a: [&[W::Act]; T]) -> [f32; T];
}

/// The vec-dot of `n` elements of a weight row with one activation row (only whole blocks of
/// the shorter slice are used, as the scalar references do).
///
/// # Safety
/// The CPU must support `K`'s features.
#[inline(always)]
pub(crate) unsafe fn vec_dot<W: VecDot, K: GroupDot<W>>(n: usize, w: &[W], a: &[W::Act]) -> f32 {
    let nb = (n / W::TYPE.block_size()).min(w.len()).min(a.len());
    // SAFETY: both slices hold `nb` blocks; the caller guarantees the CPU features.
    unsafe { K::dot::<1>(nb, w, [a])[0] }
}

/// `sink(r, t, &[dot(row r, token t)])` for every row of `w` (`n_rows` rows back to back) and
/// every token of `a` (`n_tok` rows back to back): rows in memory order, each against groups
/// of up to `K::MAX_TOK` tokens, so that its blocks are unpacked once per group.
///
/// One row at a time also for one token: walking two rows side by side (two accumulator
/// chains, shared token loads) was 15-25% faster with AVX2 on rows that stay in cache, but
/// streaming from DRAM rows of 600 bytes or more went 2-3x slower (1.4 -> 2.9 ms for the
/// default model's Q4_1 down projections, 1.6 -> 4.2 ms for its Q8_0 head), still 1.5x with a
/// software prefetch (docs/perf-notes.md, "AVX2-only kernels").
///
/// # Safety
/// The CPU must support `K`'s features.
#[inline(always)]
pub(crate) unsafe fn rows_in_groups<W: VecDot, K: GroupDot<W>>(
    w: &[W],
    n_rows: usize,
    a: &[W::Act],
    n_tok: usize,
    sink: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let wb = w.len() / n_rows.max(1);
    let ab = a.len() / n_tok.max(1);
    let nb = wb.min(ab);
    let tok = |t: usize| &a[t * ab..(t + 1) * ab];
    for r in 0..n_rows {
        let wr = &w[r * wb..(r + 1) * wb];
        let mut t = 0;
        while t < n_tok {
            let left = (n_tok - t).min(K::MAX_TOK).min(4);
            let mut v = [0.0f32; 4];
            // SAFETY (all arms): every slice holds `nb` blocks; the caller guarantees the CPU
            // features.
            unsafe {
                match left {
                    1 => [v[0]] = K::dot::<1>(nb, wr, [tok(t)]),
                    2 => [v[0], v[1]] = K::dot::<2>(nb, wr, [tok(t), tok(t + 1)]),
                    3 => {
                        let a3 = [tok(t), tok(t + 1), tok(t + 2)];
                        [v[0], v[1], v[2]] = K::dot::<3>(nb, wr, a3)
                    }
                    _ => {
                        let a4 = [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)];
                        v = K::dot::<4>(nb, wr, a4)
                    }
                }
            }
            for (i, &x) in v[..left].iter().enumerate() {
                sink(r, t + i, &[x]);
            }
            t += left;
        }
    }
}

/// An architecture's f32 vector, as the float kernels use it.
pub(crate) trait F32Vec: Copy {
    const LANES: usize;
    /// # Safety (every method)
    /// The CPU must support the architecture's kernel features.
    unsafe fn zero() -> Self;
    /// `acc + x * y`, fused.
    ///
    /// # Safety
    /// As [`zero`](Self::zero).
    unsafe fn fma(acc: Self, x: Self, y: Self) -> Self;
    /// The lanes of `(c0 + c1) + (c2 + c3)` summed.
    ///
    /// # Safety
    /// As [`zero`](Self::zero).
    unsafe fn sum4(c: [Self; 4]) -> f32;
}

/// A float element type loaded into the vector `V`.
pub(crate) trait LoadF32<V: F32Vec>: Float {
    /// The first `V::LANES` elements of `v` (which must hold them, else the call panics)
    /// widened to f32.
    ///
    /// # Safety
    /// As [`F32Vec::zero`].
    unsafe fn load(v: &[Self]) -> V;
}

/// One float weight row against `T` tokens: per token four FMA chains over steps of 4 vectors,
/// then 1-vector steps into the first, the lanes of `(c0 + c1) + (c2 + c3)` summed, plus the
/// last `n % V::LANES` products in order. `#[inline(always)]` for the architectures'
/// `#[target_feature]` kernels.
///
/// # Safety
/// As [`F32Vec::zero`]; `w` and every `a[t]` hold at least `n` elements (else the call
/// panics).
#[inline(always)]
pub(crate) unsafe fn float_tokens<E: LoadF32<V>, V: F32Vec, const T: usize>(
    n: usize,
    w: &[E],
    a: [&[E]; T],
) -> [f32; T] {
    debug_assert!(w.len() >= n && a.iter().all(|a| a.len() >= n));
    let l = V::LANES;
    // SAFETY (every `unsafe` below): the caller's CPU features; each load reads `l` elements
    // at `i + off`, with `i + off + l <= n`.
    let mut acc = [[unsafe { V::zero() }; 4]; T];
    let (n4, n1) = (n - n % (4 * l), n - n % l);
    let mut i = 0;
    while i < n4 {
        for c in 0..4 {
            let x = unsafe { E::load(&w[i + c * l..]) };
            for t in 0..T {
                let y = unsafe { E::load(&a[t][i + c * l..]) };
                acc[t][c] = unsafe { V::fma(acc[t][c], x, y) };
            }
        }
        i += 4 * l;
    }
    while i < n1 {
        let x = unsafe { E::load(&w[i..]) };
        for t in 0..T {
            let y = unsafe { E::load(&a[t][i..]) };
            acc[t][0] = unsafe { V::fma(acc[t][0], x, y) };
        }
        i += l;
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        let mut s = unsafe { V::sum4(acc[t]) };
        for (&x, &y) in w[n1..n].iter().zip(&a[t][n1..n]) {
            s += x.to_f32() * y.to_f32();
        }
        out[t] = s;
    }
    out
}
