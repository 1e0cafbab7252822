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

pub fn rope(x: &mut CpuBuf, positions: &[u32], p: RopeParams) {
    let c = x.cols;
    let half = p.rope_dim / 2;
    // inv_freq[i] = theta^(-2i / rope_dim)
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| (p.theta as f64).powf(-2.0 * i as f64 / p.rope_dim as f64))
        .collect();
    for (t, row) in x.as_mut_slice().chunks_exact_mut(c).enumerate() {
        let pos = positions[t] as f64 / p.scale as f64;
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|f| ((pos * f).cos() as f32, (pos * f).sin() as f32))
            .collect();
        for head in row.chunks_exact_mut(p.head_dim) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = match p.layout {
                    RopeLayout::Normal => (2 * i, 2 * i + 1),
                    RopeLayout::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = act(gate) * up`, elementwise, in pieces of [`GLU_MIN_PIECE`] to [`GLU_PIECE`]
/// elements spread over the pool (the exponentials make it worth it).
pub fn glu(gate: &mut CpuBuf, up: &CpuBuf, act: Activation, pool: &Pool) {
    let f = match act {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
    };
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
        g.iter_mut()
            .zip(u.iter())
            .for_each(|(g, &u)| *g = f(*g) * u);
    });
}

/// Most elements per parallel piece of [`glu`].
const GLU_PIECE: usize = 8192;
/// Fewest elements per parallel piece of [`glu`].
const GLU_MIN_PIECE: usize = 256;
