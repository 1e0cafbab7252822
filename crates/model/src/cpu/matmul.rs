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
    // Decode streams each weight once: give every thread a few long runs of rows (the hardware
    // prefetcher follows a long run better than 16-row pieces). Prefill keeps small tasks,
    // whose weights are reused across the token tiles.
    let per_task = if n_tok <= 2 {
        rows.div_ceil(4 * pool.n_threads())
            .next_multiple_of(ROWS_PER_TASK)
    } else {
        ROWS_PER_TASK
    };
    let n_tasks = rows.div_ceil(per_task);
    let failed: Mutex<Option<QuantError>> = Mutex::new(None);
    pool.run(n_tasks, &|task| {
        let r0 = task * per_task;
        let r1 = (r0 + per_task).min(rows);
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
                dst.copy_from_slice(v);
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
