//! Kernel launches (`cuLaunchKernelEx`), with programmatic dependent launch where it is on.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::{Arg, CudaBackend};
use crate::CudaError;

// The struct arguments are passed by address, as the kernels' C structs: their sizes must
// stay those of the CUDA side (common.cuh `AttnArgs` and `Group`).
const _: () = assert!(std::mem::size_of::<super::AttnArgs>() == 144);
const _: () = assert!(std::mem::size_of::<super::matmul::Group>() == 72);
const _: () = assert!(std::mem::size_of::<super::matmul::MmqSplits>() == 48);

impl CudaBackend {
    pub(super) fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.launch_smem(name, grid, block, 0, args)
    }

    /// `launch` with `smem` bytes of dynamic shared memory.
    pub(super) fn launch_smem(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.launch_ex(name, grid, block, smem, 1, args)
    }

    /// `launch` in clusters of `cluster` blocks along x (sm_90 and later; grid.0 a multiple).
    pub(super) fn launch_cluster(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        cluster: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.launch_ex(name, grid, block, 0, cluster, args)
    }

    fn launch_ex(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        cluster: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let f = self.kernels.get(name)?;
        // Count the launch in `epoch` when it may write activations (all but the mmvq and mmq
        // matmuls, which write only their output, and the GEMM path's weight dequantization,
        // which writes only its weight tile).
        if !name.starts_with("mmvq_")
            && !name.starts_with("mmq_")
            && !name.starts_with("dequant_f16_")
        {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        if self.replaying.load(Ordering::Relaxed) {
            // `end_step` launches the record of this step instead.
            return Ok(());
        }
        // The driver reads each argument's value through these pointers during the call.
        let mut params: Vec<*mut c_void> = args
            .iter()
            .map(|a| match a {
                Arg::P(v) => v as *const u64 as *mut c_void,
                Arg::I(v) => v as *const i32 as *mut c_void,
                Arg::L(v) => v as *const i64 as *mut c_void,
                Arg::F(v) => v as *const f32 as *mut c_void,
                Arg::Attn(v) => v as *const _ as *mut c_void,
                Arg::Group(v) => v as *const _ as *mut c_void,
                Arg::Splits(v) => v as *const _ as *mut c_void,
            })
            .collect();
        // SAFETY: a plain C union of integers and structs of integers; all-zero is valid.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        // SAFETY: as above.
        let mut dims: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        dims.clusterDim.x = cluster;
        dims.clusterDim.y = 1;
        dims.clusterDim.z = 1;
        let mut attrs = [
            sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            },
            sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value: dims,
            },
        ];
        // Not for the mmq kernels (5-64-token matmuls: batched decode, short prefill chunks)
        // and their reduction: launched early, they cost more than they saved (H200, 8B
        // Q4_K_M, 64 sequences: S_TG 5,187-5,190 with them, 5,576-5,708 without them,
        // 5,553-5,689 with no programmatic launch at all).
        let programmatic = self.pdl && !name.starts_with("mmq_");
        // The attributes in use: the programmatic one first where it is on, then the cluster's.
        if !programmatic {
            attrs.swap(0, 1);
        }
        let used = u32::from(programmatic) + u32::from(cluster > 1);
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: used,
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::kernel(name, e))?;
        // SAFETY: every launch site passes the argument list of the kernel's C signature (same
        // order and types); device addresses come from live allocations of this context whose
        // sizes the callers check against the shapes they pass; struct arguments are the C
        // structs (sizes asserted above). `params` and `attrs` outlive the call, and `f` is a
        // function of this context's loaded modules. With the programmatic attribute, every
        // kernel waits for the one before it (`pdl_entry`, checked in compile.rs's tests).
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| CudaError::kernel(name, e))?;
        if self.sync_each {
            self.stream
                .synchronize()
                .map_err(|e| CudaError::kernel(name, e))?;
        }
        Ok(())
    }
}
