//! Every NEON kernel against its scalar reference and against the AVX2 kernels' bits (the
//! shared checks of `simd/check.rs`), in both variants: plain NEON always, `sdot` where the
//! CPU has it (qemu's `-cpu max` does; `-cpu cortex-a72` does not), each product bit for bit
//! the same in both. Run on x86 under qemu:
//!
//! ```text
//! apt-get install -y gcc-aarch64-linux-gnu qemu-user
//! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
//! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max" \
//! CARGO_TARGET_DIR=/work/target-aarch64 \
//! cargo test --release -p realizar-quant --target aarch64-unknown-linux-gnu
//! ```

use super::{has_dotprod, I8Dot, Neon, Plain, Sdot};
use crate::simd::check::{kernel_tests, UnderTest};
use crate::simd::{GroupDot, Kernel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::arch::aarch64::*;

/// The NEON kernels: plain, and with `sdot` when `dotprod`.
struct NeonKernels {
    dotprod: bool,
}

impl UnderTest for NeonKernels {
    const NAME: &'static str = "neon";
    fn dot<W: Kernel, const T: usize>(
        &self,
        nb: usize,
        w: &[W],
        a: [&[W::Act]; T],
    ) -> Result<[f32; T], String> {
        // SAFETY: plain NEON is baseline on aarch64; a slice shorter than `nb` blocks panics.
        let plain = unsafe { <Neon<Plain> as GroupDot<W>>::dot::<T>(nb, w, a) };
        if self.dotprod {
            // SAFETY: as above; the CPU has `sdot` (`kernels`).
            let sdot = unsafe { <Neon<Sdot> as GroupDot<W>>::dot::<T>(nb, w, a) };
            if plain.map(f32::to_bits) != sdot.map(f32::to_bits) {
                let name = W::TYPE.name();
                return Err(format!("{name} nb {nb}: plain {plain:?} vs sdot {sdot:?}"));
            }
        }
        Ok(plain)
    }
}

/// Both variants where the CPU has `sdot`, else (saying so) the plain ones.
fn kernels() -> Option<NeonKernels> {
    let dotprod = has_dotprod();
    if !dotprod {
        eprintln!("NOTE: this CPU has no dotprod; only the plain NEON kernels are tested");
    }
    Some(NeonKernels { dotprod })
}

kernel_tests!(kernels);

/// The lanes of `D::dot(acc, x, y)`.
fn lanes<D: I8Dot>(acc: [i32; 4], x: &[i8; 16], y: &[i8; 16]) -> [i32; 4] {
    let mut out = [0i32; 4];
    // SAFETY: NEON is baseline; the caller runs `Sdot` only where the CPU has it; the loads
    // and the store touch exactly the 16-byte and 4-lane arrays.
    unsafe {
        let v = D::dot(
            vld1q_s32(acc.as_ptr()),
            vld1q_s8(x.as_ptr()),
            vld1q_s8(y.as_ptr()),
        );
        vst1q_s32(out.as_mut_ptr(), v);
    }
    out
}

/// The integer primitive of both variants against plain integer arithmetic: lane `i` adds
/// the products of elements `4i .. 4i + 4`, for random bytes and for all -128 / 127.
#[test]
fn neon_int8_dots_exact() -> Result<(), String> {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let dotprod = has_dotprod();
    let mut cases: Vec<([i8; 16], [i8; 16])> = vec![
        ([-128; 16], [-128; 16]),
        ([-128; 16], [127; 16]),
        ([127; 16], [127; 16]),
    ];
    for _ in 0..1000 {
        cases.push((rng.gen(), rng.gen()));
    }
    for (x, y) in &cases {
        let acc: [i32; 4] = [
            rng.gen_range(-1 << 24..1 << 24),
            0,
            -7,
            i32::MAX - (1 << 17),
        ];
        let want: [i32; 4] = std::array::from_fn(|i| {
            let s: i32 = (4 * i..4 * i + 4).map(|j| x[j] as i32 * y[j] as i32).sum();
            acc[i].wrapping_add(s)
        });
        let plain = lanes::<Plain>(acc, x, y);
        if plain != want {
            return Err(format!(
                "plain {plain:?} vs {want:?} for {x:?} . {y:?} (seed {seed})"
            ));
        }
        if dotprod && lanes::<Sdot>(acc, x, y) != want {
            let got = lanes::<Sdot>(acc, x, y);
            return Err(format!(
                "sdot {got:?} vs {want:?} for {x:?} . {y:?} (seed {seed})"
            ));
        }
    }
    Ok(())
}
