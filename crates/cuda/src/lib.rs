//! realizar-cuda: the CUDA backend.
//!
//! The CUDA driver is loaded at run time (`libcuda.so.1`), so the workspace builds and its tests
//! run on machines without CUDA. This first part answers "is there a usable GPU?" for
//! `--device auto`; the kernels, weight upload and the `Backend` implementation come with the
//! CUDA backend issue.

use std::ffi::c_int;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver: cannot load libcuda.so.1 ({0})")]
    NoDriver(String),
    #[error("CUDA driver call {call} failed with error {code}")]
    Driver { call: &'static str, code: c_int },
    #[error("no CUDA device found")]
    NoDevice,
}

/// What the CUDA driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Number of CUDA devices.
    pub count: usize,
    /// Driver version as CUDA encodes it (e.g. 13000 for 13.0).
    pub driver_version: i32,
}

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(version: *mut c_int) -> c_int;

/// Loads the CUDA driver and counts devices. `Err(NoDriver)` on machines without CUDA.
pub fn probe() -> Result<DeviceInfo, CudaError> {
    // SAFETY: loading the system's CUDA driver library runs its initialisers, which is what every
    // CUDA program does; we call only documented driver entry points with their C signatures.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }
        .map_err(|e| CudaError::NoDriver(e.to_string()))?;
    let call = |name: &'static str, code: c_int| {
        if code == 0 {
            Ok(())
        } else {
            Err(CudaError::Driver { call: name, code })
        }
    };
    // SAFETY: the symbols are looked up by their documented names and typed with the driver
    // API's signatures; out-pointers point to live locals.
    unsafe {
        let init: libloading::Symbol<CuInit> = lib
            .get(b"cuInit\0")
            .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        let count_fn: libloading::Symbol<CuDeviceGetCount> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        let version_fn: libloading::Symbol<CuDriverGetVersion> =
            lib.get(b"cuDriverGetVersion\0")
                .map_err(|e| CudaError::NoDriver(e.to_string()))?;
        call("cuInit", init(0))?;
        let mut count: c_int = 0;
        call("cuDeviceGetCount", count_fn(&mut count))?;
        let mut version: c_int = 0;
        call("cuDriverGetVersion", version_fn(&mut version))?;
        if count <= 0 {
            return Err(CudaError::NoDevice);
        }
        Ok(DeviceInfo {
            count: count as usize,
            driver_version: version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_without_panicking() {
        match probe() {
            Ok(info) => {
                assert!(info.count > 0);
                eprintln!(
                    "CUDA: {} device(s), driver {}",
                    info.count, info.driver_version
                );
            }
            Err(e) => eprintln!("skipping GPU checks: {e}"),
        }
    }
}
