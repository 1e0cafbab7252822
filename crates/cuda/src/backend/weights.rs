//! Weight upload: matrices and the embedding table in their file formats, 1-D weights as f32,
//! and the f16 copies of quantized matrices (`set_f16_weights`) that batched steps multiply
//! with cuBLAS.

use std::sync::atomic::Ordering;

use cudarc::driver::CudaSlice;
use realizar_model::backend::WeightUse;
use realizar_model::weights::TensorView;
use realizar_model::ModelError;
use realizar_quant::GgmlType;

use super::matmul;
use super::ops::matvec_kernel;
use super::{raw, CudaBackend, CudaWeight};
use crate::CudaError;

impl CudaBackend {
    /// Keep an f16 copy of every quantized matrix uploaded from now on, and use the copies
    /// (off by default; the loaders decide with `F16Weights`). Matmuls of
    /// `F16_WEIGHT_MIN_TOKENS` tokens or more (`REALIZAR_CUDA_F16_WEIGHT_TOKENS`) then run
    /// cuBLAS on the copy, with no dequantization in the step (batched decode and prefill),
    /// for about 2 bytes a weight more memory. Off, copies made before are not used. Off in
    /// deterministic mode.
    pub fn set_f16_weights(&mut self, on: bool) {
        self.f16_weights = on;
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Tokens from which a matmul takes its weight's f16 copy (default `F16_WEIGHT_MIN_TOKENS`,
    /// `REALIZAR_CUDA_F16_WEIGHT_TOKENS`); fewer go to the mmq kernels.
    pub fn set_f16_weight_min_tokens(&mut self, n: usize) {
        self.f16_min_tokens = n.max(1);
        self.gen.fetch_add(1, Ordering::Relaxed);
    }

    /// How many quantized matrices have f16 copies.
    pub fn f16_weight_copies(&self) -> u64 {
        self.f16_copies.load(Ordering::Relaxed)
    }

    /// Batched cuBLAS calls made: matrices of one input with f16 copies and equal rows (k and
    /// v, gate and up) in one call.
    pub fn batched_gemms(&self) -> u64 {
        self.batched_gemms.load(Ordering::Relaxed)
    }

    /// Weight tiles the GEMM path has dequantized within steps (none where f16 copies serve).
    pub fn weight_tile_dequants(&self) -> u64 {
        self.tile_dequants.load(Ordering::Relaxed)
    }

    /// The f16 copy of a quantized matrix at `ptr`, when `set_f16_weights` is on and cuBLAS
    /// loaded (the same dequantization kernel as the prefill tiles, so the same values).
    fn f16_copy(
        &self,
        ty: GgmlType,
        ptr: u64,
        rows: usize,
        cols: usize,
    ) -> Result<Option<CudaSlice<u16>>, CudaError> {
        let Some(dq) = matmul::dequant_kernel(ty).filter(|_| self.f16_weights) else {
            return Ok(None);
        };
        if self.blas.is_none() || rows * cols > i32::MAX as usize {
            return Ok(None);
        }
        self.check_fits("an f16 weight copy", 2 * rows * cols)?;
        let half = self
            .stream
            .alloc_zeros::<u16>(rows * cols)
            .map_err(|e| CudaError::call("cuMemAlloc(f16 weight copy)", e))?;
        self.dequant_rows(dq, ptr, raw(&half, &self.stream), 0, rows, cols)?;
        self.f16_copies.fetch_add(1, Ordering::Relaxed);
        Ok(Some(half))
    }

    /// Whether the matmuls of `ntok` tokens take the f16 weight copies (so cuBLAS), where their
    /// weights have one.
    pub(super) fn f16_weights_take(&self, ntok: usize) -> bool {
        self.f16_weights
            && !self.exact
            && self.blas.is_some()
            && ntok >= self.f16_min_tokens
            && self.f16_copies.load(Ordering::Relaxed) > 0
    }

    pub(super) fn upload_weight(
        &self,
        t: &TensorView<'_>,
        how: WeightUse,
    ) -> Result<CudaWeight, ModelError> {
        let quant_err = |e| ModelError::Quant {
            tensor: t.name.to_string(),
            source: e,
        };
        match how {
            WeightUse::Matrix | WeightUse::Embedding => {
                if matvec_kernel(t.ty, 1).is_none() {
                    return Err(CudaError::Unsupported(format!(
                        "weight type {} (tensor {})",
                        t.ty, t.name
                    ))
                    .into());
                }
                let need = t.ty.row_bytes(t.cols as u64).map_err(quant_err)? as usize * t.rows;
                if need != t.data.len() {
                    return Err(ModelError::BadShape {
                        tensor: t.name.to_string(),
                        expected: format!("{need} bytes"),
                        found: format!("{} bytes", t.data.len()),
                    });
                }
                let mem = self
                    .stream
                    .clone_htod(t.data)
                    .map_err(|e| CudaError::call("cuMemcpyHtoD(weight)", e))?;
                let ptr = raw(&mem, &self.stream);
                let half = if how == WeightUse::Matrix {
                    self.f16_copy(t.ty, ptr, t.rows, t.cols)?
                } else {
                    None
                };
                let half_ptr = half.as_ref().map_or(0, |h| raw(h, &self.stream));
                Ok(CudaWeight::Matrix {
                    ty: t.ty,
                    rows: t.rows,
                    cols: t.cols,
                    mem,
                    ptr,
                    half,
                    half_ptr,
                })
            }
            WeightUse::Vector { offset } => {
                let mut v = vec![0.0f32; t.rows * t.cols];
                realizar_quant::dequantize_row(t.ty, t.data, &mut v).map_err(quant_err)?;
                v.iter_mut().for_each(|x| *x += offset);
                let mem = self
                    .stream
                    .clone_htod(&v)
                    .map_err(|e| CudaError::call("cuMemcpyHtoD(vector)", e))?;
                let ptr = raw(&mem, &self.stream);
                Ok(CudaWeight::Vector {
                    len: v.len(),
                    mem,
                    ptr,
                })
            }
        }
    }
}
