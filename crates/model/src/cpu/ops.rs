//! Element-wise and row-wise CPU ops: embedding, norms, rope, activations.

use realizar_quant::dequantize_row;

use std::sync::Mutex;

use super::pool::Pool;
use super::{CpuBuf, CpuWeight};
use crate::backend::RopeParams;
use crate::config::{Activation, RopeLayout};
use crate::ModelError;

pub fn embed(
    table: &CpuWeight,
    ids: &[u32],
    scale: f32,
    out: &mut CpuBuf,
) -> Result<(), ModelError> {
    let CpuWeight::Matrix {
        ty,
        rows,
        cols,
        data,
    } = table
    else {
        return Err(ModelError::Batch("embedding table is not a matrix".into()));
    };
    let row_bytes = data.as_slice().len() / (*rows).max(1);
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= *rows {
            return Err(ModelError::Batch(format!(
                "token id {id} outside the vocabulary of {rows}"
            )));
        }
        let src = &data.as_slice()[id * row_bytes..(id + 1) * row_bytes];
        let dst = &mut out.data[t * cols..(t + 1) * cols];
        dequantize_row(*ty, src, dst).map_err(|e| ModelError::Quant {
            tensor: "token_embd".into(),
            source: e,
        })?;
        if scale != 1.0 {
            dst.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt()
}

pub fn rms_norm(x: &CpuBuf, w: &[f32], eps: f32, out: &mut CpuBuf) {
    let c = x.cols;
    for t in 0..x.rows {
        let src = &x.data[t * c..(t + 1) * c];
        let s = rms_scale(src, eps);
        let dst = &mut out.data[t * c..(t + 1) * c];
        for ((d, &v), &g) in dst.iter_mut().zip(src).zip(w) {
            *d = v * s * g;
        }
    }
}

pub fn rms_norm_heads(x: &mut CpuBuf, w: &[f32], head_dim: usize, eps: f32) {
    for head in x.as_mut_slice().chunks_exact_mut(head_dim) {
        let s = rms_scale(head, eps);
        head.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * s * g);
    }
}

pub fn add_bias(x: &mut CpuBuf, b: &[f32]) {
    let c = x.cols;
    for row in x.as_mut_slice().chunks_exact_mut(c) {
        row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
    }
}

/// Rotary embeddings with ggml's arithmetic, so that results equal llama.cpp's bit for bit: the
/// angle of pair i is `pos * theta_scale^i` built by repeated f32 products (`theta_scale =
/// base^(-2/rope_dim)` in f32), cos and sin in f32, and the rotation `x0*cos - x1*sin`,
/// `x0*sin + x1*cos` with the first product fused into the add, as GCC contracts ggml's C.
pub fn rope(x: &mut CpuBuf, positions: &[u32], p: RopeParams) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked).
        unsafe { rope_fma(x, positions, p) };
        return;
    }
    rope_body(x, positions, p);
}

/// [`rope_body`] with hardware FMA (the same values; `mul_add` is a library call without it).
///
/// # Safety
/// The CPU must support FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_fma(x: &mut CpuBuf, positions: &[u32], p: RopeParams) {
    rope_body(x, positions, p);
}

#[inline(always)]
fn rope_body(x: &mut CpuBuf, positions: &[u32], p: RopeParams) {
    let c = x.cols;
    let half = p.rope_dim / 2;
    let theta_scale = p.theta.powf(-2.0 / p.rope_dim as f32);
    let mut cs = Vec::with_capacity(half);
    for (t, row) in x.as_mut_slice().chunks_exact_mut(c).enumerate() {
        let mut theta = positions[t] as f32;
        cs.clear();
        for _ in 0..half {
            let a = theta / p.scale;
            cs.push((a.cos(), a.sin()));
            theta *= theta_scale;
        }
        for head in row.chunks_exact_mut(p.head_dim) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = match p.layout {
                    RopeLayout::Normal => (2 * i, 2 * i + 1),
                    RopeLayout::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0.mul_add(cos, -(x1 * sin));
                head[b] = x0.mul_add(sin, x1 * cos);
            }
        }
    }
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// SiLU as ggml's AVX-512 `ggml_v_silu`: x / (1 + e^-x) with e^-x from [`v_expf`].
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + v_expf(-x))
}

/// One lane of ggml's AVX-512 `ggml_v_expf` (a degree-5 polynomial after reduction by ln 2, max
/// error 1.5 ulp), so that the GLU's values equal llama.cpp's bit for bit.
#[inline(always)]
pub(super) fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23
    let n = x.mul_add(f32::from_bits(0x3FB8_AA3B), r) - r; // round(x / ln 2)
    let b = (-n).mul_add(
        f32::from_bits(0x35BF_BE8E),
        (-n).mul_add(f32::from_bits(0x3F31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3C07_2010)
        .mul_add(b, f32::from_bits(0x3D2B_9F17))
        .mul_add(
            u,
            f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)),
        )
        .mul_add(u, f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0));
    // scalef(j, n) for the whole number n: two exact powers of two, so the only rounding is
    // the final one (underflow to subnormals, overflow to infinity), as scalef's.
    let ni = n as i32;
    let n1 = ni.clamp(-126, 127);
    let n2 = (ni - n1).clamp(-126, 127);
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let res = j * pow2(n1) * pow2(n2);
    let big = if n <= 0.0 { 0.0 } else { f32::INFINITY };
    if n.abs() > 192.0 {
        big
    } else {
        res
    }
}

/// `gate = silu(gate) * up` with hardware FMA when the CPU has it.
fn swiglu(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked).
        unsafe { swiglu_fma(g, u) };
        return;
    }
    swiglu_body(g, u);
}

/// # Safety
/// The CPU must support FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(g: &mut [f32], u: &[f32]) {
    swiglu_body(g, u);
}

#[inline(always)]
fn swiglu_body(g: &mut [f32], u: &[f32]) {
    g.iter_mut().zip(u).for_each(|(g, &u)| *g = silu(*g) * u);
}

/// `gate = act(gate) * up`, elementwise, in pieces of [`GLU_MIN_PIECE`] to [`GLU_PIECE`]
/// elements spread over the pool (the exponentials make it worth it).
pub fn glu(gate: &mut CpuBuf, up: &CpuBuf, act: Activation, pool: &Pool) {
    // One token's 1536 exponentials are ~15 us: split small rows too, so both threads share
    // them instead of one working while the other waits for the next matmul.
    let len = gate.as_slice().len();
    let piece = (len / (2 * pool.n_threads()))
        .next_multiple_of(16)
        .clamp(GLU_MIN_PIECE, GLU_PIECE);
    let pieces: Vec<Mutex<(&mut [f32], &[f32])>> = gate
        .as_mut_slice()
        .chunks_mut(piece)
        .zip(up.as_slice().chunks(piece))
        .map(Mutex::new)
        .collect();
    pool.run(pieces.len(), &|i| {
        let mut piece = pieces[i].lock().unwrap_or_else(|p| p.into_inner());
        let (g, u) = &mut *piece;
        match act {
            Activation::Silu => swiglu(g, u),
            Activation::GeluTanh => g
                .iter_mut()
                .zip(u.iter())
                .for_each(|(g, &u)| *g = gelu_tanh(*g) * u),
        }
    });
}

/// Most elements per parallel piece of [`glu`].
const GLU_PIECE: usize = 8192;
/// Fewest elements per parallel piece of [`glu`].
const GLU_MIN_PIECE: usize = 256;

#[cfg(test)]
mod tests {
    use super::v_expf;

    /// ggml's exponential is a 1.5-ulp approximation: close to the exact value everywhere in
    /// range, exact at 0, and saturating as its AVX-512 original does.
    #[test]
    fn v_expf_is_a_close_exponential() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (v_expf(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(v_expf(0.0), 1.0);
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(200.0), f32::INFINITY);
        // Subnormal results round once, like scalef.
        let tiny = v_expf(-100.0) as f64;
        assert!((tiny - (-100.0f64).exp()).abs() < 1e-44, "{tiny:e}");
    }
}
