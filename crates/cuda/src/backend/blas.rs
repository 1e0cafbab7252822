//! The cuBLAS path of the matmuls: f16 (or bf16, or f32) GEMMs with f32 accumulation, on a
//! weight's f16 copy (`set_f16_weights`) or on f16 tiles of it dequantized in the step
//! (kernels/gemm.cu), after the input's f16 copy (`to_half`, or written by the kernel before:
//! fused.rs). Matrices of one input with the same rows and f16 copies go in one batched call.

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use realizar_quant::GgmlType;

use super::matmul::{dequant_kernel, ensure, InputRecord, Mat, Scratch, GEMM_F16};
use super::{Arg, CudaBackend, CudaBuf};
use crate::CudaError;

/// Elements of weight dequantized per GEMM tile (128 MiB of f16): a whole 4096 x 14336 matrix
/// of an 8B model in one tile. Split into two tiles of 2340 and 1756 rows (at 32 Mi elements),
/// its down projection took cuBLAS's sm80 split-K kernels at ~230 TFLOP/s against ~690 for the
/// gate/up products (H200, 512 tokens).
const TILE_ELEMS: usize = 64 << 20;

/// Rows of a GEMM tile, when a matrix takes several, are a multiple of this (whole 256-row
/// output tiles of cuBLAS's kernels).
const TILE_ROW_MULTIPLE: usize = 256;

/// cuBLAS writes `bytes` at `out` without counting in the epoch: a converted copy of an input
/// that this overlaps is stale (the GEMM path's f16 copy, the f16 mmq kernels'; the 8-bit one is
/// dropped at every GEMM).
fn forget_overwritten(s: &mut Scratch, out: u64, bytes: usize) {
    let hit = |r: &InputRecord| {
        let (ptr, rows, cols, _) = *r;
        out < ptr + (4 * rows * cols) as u64 && ptr < out + bytes as u64
    };
    if s.gemm_halved.is_some_and(|(r, _)| hit(&r)) {
        s.gemm_halved = None;
    }
    if s.halved.as_ref().is_some_and(hit) {
        s.halved = None;
    }
}

/// Rows of weight dequantized per GEMM call: the whole matrix when it fits `TILE_ELEMS`, else
/// the most that fit, rounded down to whole `TILE_ROW_MULTIPLE`s where that leaves any.
fn gemm_tile_rows(rows: usize, cols: usize) -> usize {
    let fit = (TILE_ELEMS / cols.max(1)).max(1);
    if fit >= rows {
        return rows;
    }
    if fit >= TILE_ROW_MULTIPLE {
        fit / TILE_ROW_MULTIPLE * TILE_ROW_MULTIPLE
    } else {
        fit
    }
}

/// The cuBLAS handle of a backend, when libcublas loads.
pub(super) fn open_blas(stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Option<CudaBlas> {
    // SAFETY: only checks whether the library can be opened; nothing is called through it.
    if !unsafe { blas_sys::is_culib_present() } {
        return None;
    }
    CudaBlas::new(stream.clone()).ok()
}

/// Entries (device addresses) of the pointer table that batched GEMM calls read: a batch of n
/// takes 3n. Full, it starts over (stream order keeps earlier calls' entries until they ran).
const PTR_TABLE_LEN: usize = 3 << 12;

impl CudaBackend {
    /// The cuBLAS handle for a call made now, or `None` when the call is to be skipped: while a
    /// record replays (it does not call cuBLAS), and, with `set_graph_blas(false)`, while one is
    /// captured (the recording is thrown away and the step runs directly).
    fn blas_now(&self) -> Result<Option<&CudaBlas>, CudaError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(h) = self.blas.as_ref() else {
            return Err(CudaError::Unsupported("cuBLAS is not loaded".into()));
        };
        if self.replaying.load(Relaxed) {
            return Ok(None);
        }
        if self.capturing.load(Relaxed) && !self.graph_blas {
            self.capture_spoiled.store(true, Relaxed);
            return Ok(None);
        }
        Ok(Some(h))
    }

    /// Rows `r0..r0 + n` of the weight at `w` (`cols` wide) dequantized to f16 at `out` by
    /// the kernel `dq` (`dequant_kernel`): the GEMM path's tiles and the f16 weight copies.
    pub(super) fn dequant_rows(
        &self,
        dq: &'static str,
        w: u64,
        out: u64,
        r0: usize,
        n: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let chunks = n * cols / 32;
        self.launch(
            dq,
            (chunks.div_ceil(256) as u32, 1, 1),
            256,
            &[
                Arg::P(w),
                Arg::P(out),
                Arg::I(r0 as i32),
                Arg::I(n as i32),
                Arg::I(cols as i32),
            ],
        )
    }

    /// `x`'s f16 (`kind` 1) or bf16 (2) copy for cuBLAS: converted once for the matrices that
    /// share an input (q/k/v, gate/up), or written already by the kernel that wrote `x`.
    fn gemm_half_input(
        &self,
        s: &mut Scratch,
        x: &CudaBuf,
        cols: usize,
        mats: &[Mat],
        kind: i32,
    ) -> Result<u64, CudaError> {
        let n = x.rows * cols;
        let p = ensure(self, &mut s.xh, n)?;
        let mut record = s.gemm_halved.filter(|&(_, k)| k == kind).map(|(r, _)| r);
        self.convert_once(&mut record, x, cols, mats, || {
            self.launch(
                "to_half",
                ((n.div_ceil(8).div_ceil(256)) as u32, 1, 1),
                256,
                &[Arg::P(x.ptr), Arg::P(p), Arg::L(n as i64), Arg::I(kind)],
            )
        })?;
        s.gemm_halved = record.map(|r| (r, kind));
        Ok(p)
    }

    /// out_i = x W_i^T for matrices of one input that all have f16 copies: those of equal rows
    /// in one batched cuBLAS call (k and v, gate and up). Alone, k and v of an 8B model took a
    /// split-K kernel and its reduction each (H200, 64 tokens: 6.7 + 3.5 us for 8 MB).
    pub(super) fn gemm_copies(
        &self,
        cols: usize,
        mats: &[Mat],
        x: &CudaBuf,
    ) -> Result<(), CudaError> {
        use blas_sys::cudaDataType::CUDA_R_16F;
        let ntok = x.rows;
        let mut s = self.scratch();
        s.quantized = None;
        let xb = self.gemm_half_input(&mut s, x, cols, mats, GEMM_F16)?;
        let mut done = vec![false; mats.len()];
        for i in 0..mats.len() {
            if done[i] {
                continue;
            }
            let mut same = Vec::with_capacity(mats.len());
            for j in i..mats.len() {
                if !done[j] && mats[j].rows == mats[i].rows {
                    done[j] = true;
                    same.push(mats[j]);
                }
            }
            let m = mats[i];
            if same.len() == 1 {
                self.gemm_call(CUDA_R_16F, m.wh, m.rows, m.rows, cols, xb, ntok, m.out)?;
            } else {
                self.gemm_batched_call(&mut s, &same, cols, xb, ntok)?;
            }
            for m in &same {
                forget_overwritten(&mut s, m.out, 4 * ntok * m.rows);
            }
        }
        Ok(())
    }

    /// The device address of a pointer-table entry holding `ptrs` (written once, then found
    /// again: a step's matrices and buffers keep their addresses from step to step). `None`
    /// while a record is captured and the entry is new: the copy cannot be recorded, so the
    /// recording is thrown away (the step's direct run, which comes first, wrote it).
    fn ptr_entry(&self, s: &mut Scratch, ptrs: &[u64]) -> Result<Option<u64>, CudaError> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(&p) = s.ptr_slots.get(ptrs) {
            return Ok(Some(p));
        }
        if self.capturing.load(Relaxed) {
            self.capture_spoiled.store(true, Relaxed);
            return Ok(None);
        }
        if s.ptr_used + ptrs.len() > PTR_TABLE_LEN {
            s.ptr_slots.clear();
            s.ptr_used = 0;
            // Records read entries that are about to be written over.
            self.gen.fetch_add(1, Relaxed);
        }
        let base = ensure(self, &mut s.ptr_table, PTR_TABLE_LEN)?;
        let off = s.ptr_used;
        let Some(table) = s.ptr_table.as_mut() else {
            return Err(CudaError::Unsupported("no pointer table".into()));
        };
        self.stream
            .memcpy_htod(ptrs, &mut table.slice_mut(off..off + ptrs.len()))
            .map_err(|e| CudaError::call("cuMemcpyHtoD(GEMM pointers)", e))?;
        let p = base + 8 * off as u64;
        s.ptr_used += ptrs.len();
        s.ptr_slots.insert(ptrs.to_vec(), p);
        Ok(Some(p))
    }

    /// C_i (ntok x m row-major) = X (ntok x k, f16) A_i^T for the f16 copies A_i (m x k) of
    /// `mats`, in one `cublasGemmBatchedEx` call.
    fn gemm_batched_call(
        &self,
        s: &mut Scratch,
        mats: &[Mat],
        k: usize,
        xb: u64,
        ntok: usize,
    ) -> Result<(), CudaError> {
        use blas_sys::cudaDataType::{CUDA_R_16F, CUDA_R_32F};
        let Some(h) = self.blas_now()? else {
            return Ok(());
        };
        let n = mats.len();
        let m = mats[0].rows;
        let mut ptrs: Vec<u64> = mats.iter().map(|m| m.wh).collect();
        ptrs.extend(std::iter::repeat_n(xb, n));
        ptrs.extend(mats.iter().map(|m| m.out));
        let Some(table) = self.ptr_entry(s, &ptrs)? else {
            return Ok(());
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // As gemm_call, column-major, for each i: C_i^T (m x ntok) = A_i^T X^T.
        // SAFETY: the table holds n device addresses each of the f16 copies (m x k), the f16
        // input (ntok x k) and the f32 outputs (ntok x m), all live allocations of this
        // context (the callers' shape checks); alpha and beta are host f32 values.
        let r = unsafe {
            blas_sys::cublasGemmBatchedEx(
                *h.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                ntok as i32,
                k as i32,
                (&alpha) as *const f32 as *const c_void,
                table as *const *const c_void,
                CUDA_R_16F,
                k as i32,
                (table + 8 * n as u64) as *const *const c_void,
                CUDA_R_16F,
                k as i32,
                (&beta) as *const f32 as *const c_void,
                (table + 16 * n as u64) as *const *mut c_void,
                CUDA_R_32F,
                m as i32,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
            .result()
        };
        self.blas_done("cublasGemmBatchedEx", r)?;
        self.batched_gemms
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// out = x W^T through cuBLAS (on the weight's f16 copy when it has one, else on f16 tiles
    /// dequantized now); `Ok(false)` for weight types it does not take.
    pub(super) fn gemm(
        &self,
        ty: GgmlType,
        m: Mat,
        cols: usize,
        x: &CudaBuf,
    ) -> Result<bool, CudaError> {
        use blas_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
        let (w_ptr, rows, out) = (m.w, m.rows, m.out);
        let ntok = x.rows;
        let dequant = dequant_kernel(ty);
        let (wt, half_kind) = match ty {
            GgmlType::F32 => (CUDA_R_32F, 0),
            GgmlType::F16 => (CUDA_R_16F, GEMM_F16),
            GgmlType::Bf16 => (CUDA_R_16BF, 2),
            _ if m.wh != 0 || dequant.is_some() => (CUDA_R_16F, GEMM_F16),
            _ => return Ok(false),
        };
        let dequant = dequant.filter(|_| m.wh == 0);
        let mut s = self.scratch();
        s.quantized = None;
        let xb = if half_kind == 0 {
            x.ptr
        } else {
            self.gemm_half_input(&mut s, x, cols, &[m], half_kind)?
        };
        let Some(dq) = dequant else {
            let a = if m.wh != 0 { m.wh } else { w_ptr };
            self.gemm_call(wt, a, rows, rows, cols, xb, ntok, out)?;
            forget_overwritten(&mut s, out, 4 * ntok * rows);
            return Ok(true);
        };
        let tile = gemm_tile_rows(rows, cols);
        let wh = ensure(self, &mut s.wh, tile * cols)?;
        let mut r0 = 0;
        while r0 < rows {
            let n = tile.min(rows - r0);
            self.tile_dequants
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.dequant_rows(dq, w_ptr, wh, r0, n, cols)?;
            self.gemm_call(wt, wh, n, rows, cols, xb, ntok, out + 4 * r0 as u64)?;
            r0 += n;
        }
        forget_overwritten(&mut s, out, 4 * ntok * rows);
        Ok(true)
    }

    /// C (ntok x ldc row-major, first m columns) = X (ntok x k) A^T, A being m x k row-major in
    /// type `wt` and X in the same type (f32 with f32 weights).
    #[allow(clippy::too_many_arguments)]
    fn gemm_call(
        &self,
        wt: blas_sys::cudaDataType,
        a: u64,
        m: usize,
        ldc: usize,
        k: usize,
        xb: u64,
        ntok: usize,
        c: u64,
    ) -> Result<(), CudaError> {
        let Some(h) = self.blas_now()? else {
            return Ok(());
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // cuBLAS is column-major: C^T (m x ntok, leading dimension ldc) = op(A) B with A the
        // row-major weight seen as k x m (lda = k, op = transpose) and B = X^T, k x ntok.
        // SAFETY: a, xb and c are live device allocations of this context holding at least
        // m*k, ntok*k and ntok*ldc elements of the stated types (checked by the callers'
        // shape checks); alpha and beta are host f32 values, as the default pointer mode wants.
        let r = unsafe {
            blas::gemm_ex(
                *h.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                ntok as i32,
                k as i32,
                (&alpha) as *const f32 as *const c_void,
                a as *const c_void,
                wt,
                k as i32,
                xb as *const c_void,
                wt,
                k as i32,
                (&beta) as *const f32 as *const c_void,
                c as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldc as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        self.blas_done("cublasGemmEx", r)
    }

    /// A cuBLAS call's result as this crate's error, naming the call; with
    /// `REALIZAR_CUDA_SYNC`, after waiting for the call, so that a failure shows at it.
    fn blas_done(
        &self,
        call: &'static str,
        r: Result<(), blas::CublasError>,
    ) -> Result<(), CudaError> {
        r.map_err(|e| CudaError::Blas { call, e })?;
        if self.sync_each {
            self.stream
                .synchronize()
                .map_err(|e| CudaError::kernel(call, e))?;
        }
        Ok(())
    }
}
