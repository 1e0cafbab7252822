//! Matrix products of a quantized weight with f32 activations.
//!
//! Activations are first converted to the weight type's activation format (Q8_0, Q8_1, Q8_K,
//! F16, ...) once per row, then every output element is a vec-dot of a weight row with an
//! activation row. Output rows are split across the rayon pool.

use rayon::prelude::*;
use realizar_quant::{
    dequantize_row, quantize_activations, vec_dot, vec_dot_type, GgmlType, QuantError,
};

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
/// activations (a slow oracle); otherwise activations are quantized as llama.cpp does.
pub fn matmul(
    w: &CpuWeight,
    x: &CpuBuf,
    out: &mut CpuBuf,
    scratch: &mut Vec<u8>,
    exact: bool,
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
    let act_ty = vec_dot_type(ty);
    let act_row = act_ty.row_bytes(cols as u64).map_err(quant_err)? as usize;
    let w_row = ty.row_bytes(cols as u64).map_err(quant_err)? as usize;
    let n_tok = x.rows;
    scratch.resize(act_row * n_tok, 0);
    for (t, dst) in scratch.chunks_exact_mut(act_row).enumerate() {
        quantize_activations(act_ty, &x.data[t * cols..(t + 1) * cols], dst).map_err(quant_err)?;
    }
    let acts: &[u8] = scratch;
    let wbytes = data.as_slice();
    let out_ptr = SyncPtr(out.data.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    (0..n_tasks)
        .into_par_iter()
        .try_for_each(|task| -> Result<(), ModelError> {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            let o = out_ptr;
            for r in r0..r1 {
                let wr = &wbytes[r * w_row..(r + 1) * w_row];
                for t in 0..n_tok {
                    let a = &acts[t * act_row..(t + 1) * act_row];
                    let v = vec_dot(ty, cols, wr, a).map_err(quant_err)?;
                    // SAFETY: t < n_tok <= out.rows and r < rows == out.cols, so the index is inside
                    // out.data; each (t, r) pair is written by exactly one task (tasks own disjoint
                    // row ranges), and `out` is not otherwise touched until the loop ends.
                    unsafe { *o.0.add(t * rows + r) = v };
                }
            }
            Ok(())
        })
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
