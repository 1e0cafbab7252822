//! Matrix products of a quantized weight with f32 activations.
//!
//! Activations are converted once per product to the weight type's activation format (Q8_0,
//! Q8_1, Q8_K, F16, ...; [`QActs`]), then output rows are split across the matmul [`Pool`] in tasks
//! of [`ROWS_PER_TASK`] rows; each task runs the quant crate's [`gemm`], whose kernel (chosen
//! once per task from the weight type and the CPU) dots every unpacked weight block with a
//! group of tokens, so prefill is matrix-matrix work rather than one product per token.

use rayon::prelude::*;
use realizar_quant::{dequantize_row, gemm, GgmlType, Kernels, QActs, QuantError};

use std::sync::Mutex;

use super::pool::Pool;
use super::{CpuBuf, CpuWeight};
use crate::ModelError;

/// A pointer that tasks write through at disjoint indices.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to write disjoint elements from different tasks (see `matmul`).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `out = W x`. With `exact`, weights rows are dequantized and multiplied with the f32
/// activations (a slow oracle); otherwise activations are quantized as llama.cpp does and
/// `kernels` says whether a token's result may depend on the token count (see [`Kernels`]).
pub fn matmul(
    w: &CpuWeight,
    x: &CpuBuf,
    out: &mut CpuBuf,
    acts: &mut QActs,
    pool: &Pool,
    exact: bool,
    kernels: Kernels,
) -> Result<(), ModelError> {
    let CpuWeight::Matrix {
        ty,
        rows,
        cols,
        data,
    } = w
    else {
        return Err(ModelError::Batch("matmul with a vector weight".into()));
    };
    let (rows, cols, ty) = (*rows, *cols, *ty);
    if x.cols != cols || out.cols != rows || out.rows < x.rows {
        return Err(ModelError::Batch(format!(
            "matmul shapes: weight {rows}x{cols}, input {}x{}, output {}x{}",
            x.rows, x.cols, out.rows, out.cols
        )));
    }
    let quant_err = |e| ModelError::Quant {
        tensor: format!("{ty} matrix {rows}x{cols}"),
        source: e,
    };
    if exact {
        return matmul_exact(ty, rows, cols, data.as_slice(), x, out).map_err(quant_err);
    }
    let n_tok = x.rows;
    acts.prepare_par(ty, &x.data[..n_tok * cols], cols, &|n, f| pool.run(n, f))
        .map_err(quant_err)?;
    let acts: &QActs = acts;
    let w_row = ty.row_bytes(cols as u64).map_err(quant_err)? as usize;
    let wbytes = data.as_slice();
    let out_ptr = SyncPtr(out.data.as_mut_ptr());
    // Decode streams each weight once: every thread walks long runs of rows (the hardware
    // prefetcher follows a long run better than 16-row pieces), in pieces that shrink towards
    // the end ([`decode_bounds`]) so that the threads finish together. Prefill keeps small
    // tasks, whose weights are reused across the token tiles.
    let mut bounds = [0usize; MAX_DECODE_TASKS + 1];
    let n_tasks = if n_tok <= 2 {
        decode_bounds(rows, pool.n_threads(), &mut bounds)
    } else {
        rows.div_ceil(ROWS_PER_TASK)
    };
    let bounds = &bounds;
    let failed: Mutex<Option<QuantError>> = Mutex::new(None);
    pool.run(n_tasks, &|task| {
        let (r0, r1) = if n_tok <= 2 {
            (bounds[task], bounds[task + 1])
        } else {
            (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows))
        };
        let o = out_ptr;
        let res = gemm(
            ty,
            &wbytes[r0 * w_row..r1 * w_row],
            r1 - r0,
            acts,
            kernels,
            |r, t, v: &[f32]| {
                // SAFETY: gemm calls back with r + v.len() <= r1 - r0 and t < n_tok <=
                // out.rows, so r0 + r + v.len() <= rows == out.cols and the run is inside
                // out.data; each (t, row) is written by exactly one task (tasks own disjoint
                // row ranges), and `out` is not otherwise touched until `run` returns.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(o.0.add(t * rows + r0 + r), v.len()) };
                // The tiled kernels send runs of 16: a fixed-size copy is two vector moves where
                // `copy_from_slice` of an unknown length calls memmove (5% of a prefill).
                match (
                    <&mut [f32; 16]>::try_from(&mut *dst),
                    <&[f32; 16]>::try_from(v),
                ) {
                    (Ok(d), Ok(v)) => *d = *v,
                    _ => dst.copy_from_slice(v),
                }
            },
        );
        if let Err(e) = res {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(quant_err(e)),
        None => Ok(()),
    }
}

/// Most pieces of a decode product ([`decode_bounds`]).
const MAX_DECODE_TASKS: usize = 64;

/// Splits `rows` into pieces for `n_threads` threads claiming them in order ("guided"
/// scheduling): each piece is 1/(2 n_threads) of the rows still unclaimed, a multiple of
/// [`ROWS_PER_TASK`], at least that, so the first pieces are long runs and the last ones short
/// enough that no thread waits long for another at the end. Writes the piece starts and the
/// end to `bounds` and returns the piece count.
fn decode_bounds(
    rows: usize,
    n_threads: usize,
    bounds: &mut [usize; MAX_DECODE_TASKS + 1],
) -> usize {
    let mut n = 0;
    let mut start = 0;
    while start < rows {
        bounds[n] = start;
        let left = rows - start;
        let piece = if n + 1 == MAX_DECODE_TASKS {
            left
        } else {
            (left / (2 * n_threads.max(1)))
                .next_multiple_of(ROWS_PER_TASK)
                .max(ROWS_PER_TASK)
                .min(left)
        };
        start += piece;
        n += 1;
    }
    bounds[n] = rows;
    n
}

fn matmul_exact(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    w: &[u8],
    x: &CpuBuf,
    out: &mut CpuBuf,
) -> Result<(), QuantError> {
    let w_row = ty.row_bytes(cols as u64)? as usize;
    let n_tok = x.rows;
    let mut wt = vec![0.0f32; rows * cols];
    wt.par_chunks_mut(cols)
        .enumerate()
        .try_for_each(|(r, dst)| dequantize_row(ty, &w[r * w_row..(r + 1) * w_row], dst))?;
    for t in 0..n_tok {
        let xr = &x.data[t * cols..(t + 1) * cols];
        out.data[t * rows..(t + 1) * rows]
            .par_iter_mut()
            .enumerate()
            .for_each(|(r, o)| {
                *o = wt[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32;
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_pieces_cover_every_row_once_in_order() {
        let mut b = [0usize; MAX_DECODE_TASKS + 1];
        for rows in [0usize, 1, 15, 16, 17, 192, 576, 1536, 49152, 1 << 22] {
            for nt in [1usize, 2, 3, 8] {
                let n = decode_bounds(rows, nt, &mut b);
                assert!(n <= MAX_DECODE_TASKS);
                assert_eq!(b[0], 0);
                assert_eq!(b[n], rows);
                assert!(
                    b[..=n].windows(2).all(|w| w[0] < w[1]),
                    "{rows} {nt} {:?}",
                    &b[..=n]
                );
            }
        }
    }
}
