//! Kernel sources, NVRTC compilation for the device's own architecture, and the on-disk cache.
//!
//! Each `kernels/*.cu` file is one module: `common.cuh` and the headers it asks for
//! (`dequant.cuh` where the file dequantizes weight blocks, `dots.cuh` where it takes their dp4a
//! dots) are prepended, then a `#line` directive so NVRTC's messages name the file and line. The CUBIN for `sm_XY` is cached under `$REALIZAR_CUDA_CACHE` (default
//! `~/.cache/realizar/cuda/`), keyed by a hash of the full source, the options and the arch, so a
//! changed kernel or another GPU compiles afresh. A cache that cannot be read or written only
//! costs a compile.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use sha2::{Digest, Sha256};

use crate::CudaError;

const COMMON: &str = include_str!("../kernels/common.cuh");
/// The headers a kernel file may ask for, prepended in this order after `common.cuh`.
const HEADERS: &[(&str, &str)] = &[
    ("dequant.cuh", include_str!("../kernels/dequant.cuh")),
    ("dots.cuh", include_str!("../kernels/dots.cuh")),
];

/// One kernel file: its name, source, and the `HEADERS` it needs.
struct Source {
    file: &'static str,
    text: &'static str,
    headers: &'static [&'static str],
}

/// A `Source` for `kernels/FILE` with the headers named.
macro_rules! source {
    ($file:literal, [$($header:literal),*]) => {
        Source {
            file: $file,
            text: include_str!(concat!("../kernels/", $file)),
            headers: &[$($header),*],
        }
    };
}

const SOURCES: &[Source] = &[
    source!("norm.cu", []),
    source!("rope.cu", []),
    source!("matvec.cu", ["dequant.cuh"]),
    source!("mmvq.cu", ["dots.cuh"]),
    source!("bulk.cu", ["dots.cuh"]),
    source!("mmq.cu", []),
    source!("gemm.cu", ["dequant.cuh"]),
    source!("sample.cu", []),
    source!("attention.cu", []),
    source!("flash.cu", []),
    source!("elementwise.cu", ["dequant.cuh"]),
];

/// Every kernel entry point, by file.
const ENTRY_POINTS: &[(&str, &[&str])] = &[
    (
        "norm.cu",
        &[
            "rms_norm",
            "add_rms_norm",
            "rms_norm_heads",
            "rms_norm_cl",
            "add_rms_norm_cl",
        ],
    ),
    ("rope.cu", &["rope"]),
    (
        "matvec.cu",
        &[
            "matvec_q4_0_1",
            "matvec_q4_0_8",
            "matvec_q4_1_1",
            "matvec_q4_1_8",
            "matvec_q5_0_1",
            "matvec_q5_0_8",
            "matvec_q5_1_1",
            "matvec_q5_1_8",
            "matvec_q8_0_1",
            "matvec_q8_0_8",
            "matvec_q4_k_1",
            "matvec_q4_k_8",
            "matvec_q5_k_1",
            "matvec_q5_k_8",
            "matvec_q6_k_1",
            "matvec_q6_k_8",
            "matvec_f32_1",
            "matvec_f32_8",
            "matvec_f16_1",
            "matvec_f16_8",
            "matvec_bf16_1",
            "matvec_bf16_8",
            "matvec_glu_q4_0",
            "matvec_glu_q4_1",
            "matvec_glu_q5_0",
            "matvec_glu_q5_1",
            "matvec_glu_q8_0",
            "matvec_glu_q4_k",
            "matvec_glu_q5_k",
            "matvec_glu_q6_k",
        ],
    ),
    (
        "mmvq.cu",
        &[
            "quantize_q8_1",
            "mmvq_q4_0_1",
            "mmvq_q4_0_2",
            "mmvq_q4_0_4",
            "mmvq_q4_0_8",
            "mmvq_q4_0_1r2",
            "mmvq_q4_0_1r4",
            "mmvq_q4_1_1",
            "mmvq_q4_1_2",
            "mmvq_q4_1_4",
            "mmvq_q4_1_8",
            "mmvq_q4_1_1r2",
            "mmvq_q4_1_1r4",
            "mmvq_q5_0_1",
            "mmvq_q5_0_2",
            "mmvq_q5_0_4",
            "mmvq_q5_0_8",
            "mmvq_q5_0_1r2",
            "mmvq_q5_0_1r4",
            "mmvq_q5_1_1",
            "mmvq_q5_1_2",
            "mmvq_q5_1_4",
            "mmvq_q5_1_8",
            "mmvq_q5_1_1r2",
            "mmvq_q5_1_1r4",
            "mmvq_q8_0_1",
            "mmvq_q8_0_2",
            "mmvq_q8_0_4",
            "mmvq_q8_0_8",
            "mmvq_q8_0_1r2",
            "mmvq_q8_0_1r4",
            "mmvq_q4_k_1",
            "mmvq_q4_k_2",
            "mmvq_q4_k_4",
            "mmvq_q4_k_8",
            "mmvq_q4_k_1r2",
            "mmvq_q4_k_1r4",
            "mmvq_q5_k_1",
            "mmvq_q5_k_2",
            "mmvq_q5_k_4",
            "mmvq_q5_k_8",
            "mmvq_q5_k_1r2",
            "mmvq_q5_k_1r4",
            "mmvq_q6_k_1",
            "mmvq_q6_k_2",
            "mmvq_q6_k_4",
            "mmvq_q6_k_8",
            "mmvq_q6_k_1r2",
            "mmvq_q6_k_1r4",
            "mmvq_mix_q4_k_q6_k_1r2",
            "mmvq_mix_q5_k_q6_k_1r2",
            "mmvq_mix_q4_k_q5_k_1r2",
        ],
    ),
    ("bulk.cu", &crate::backend::BULK_ENTRY_POINTS),
    ("mmq.cu", &crate::backend::MMQ_ENTRY_POINTS),
    (
        "gemm.cu",
        &[
            "dequant_f16_q4_0",
            "dequant_f16_q4_1",
            "dequant_f16_q5_0",
            "dequant_f16_q5_1",
            "dequant_f16_q8_0",
            "dequant_f16_q4_k",
            "dequant_f16_q5_k",
            "dequant_f16_q6_k",
            "to_half",
        ],
    ),
    ("sample.cu", &["top_k_rows", "sample_rows"]),
    ("attention.cu", crate::backend::ATTENTION_ENTRY_POINTS),
    ("flash.cu", crate::backend::FLASH_ENTRY_POINTS),
    (
        "elementwise.cu",
        &[
            "embed_q4_0",
            "embed_q4_1",
            "embed_q5_0",
            "embed_q5_1",
            "embed_q8_0",
            "embed_q4_k",
            "embed_q5_k",
            "embed_q6_k",
            "embed_float",
            "glu",
            "glu_q8",
            "add",
            "add_bias",
            "softcap",
            "gather_rows",
        ],
    ),
];

/// Options passed to NVRTC besides the architecture.
const OPTIONS: &[&str] = &["--std=c++17", "-default-device"];

/// The loaded kernels of one context, by entry-point name.
pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
    /// Where the CUBINs were found or put, for logs.
    pub cache_dir: Option<PathBuf>,
    /// How many modules were compiled now (the rest came from the cache).
    pub compiled: usize,
    /// Seconds spent compiling and loading the modules.
    pub load_secs: f64,
    /// The dynamic shared memory the streamed matmuls were allowed (`bulk_smem_limit`; 0: the
    /// device does not run them).
    pub bulk_smem: usize,
}

impl Kernels {
    /// Compiles (or loads from the cache) every kernel file for `ctx`'s device.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, CudaError> {
        require_nvrtc()?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::call("cuDeviceGetAttribute(compute capability)", e))?;
        let arch = format!("sm_{major}{minor}");
        let bulk_smem = crate::backend::bulk_smem_limit(ctx);
        let start = std::time::Instant::now();
        let cache_dir = cache_dir();
        let mut funcs = HashMap::new();
        let mut compiled = 0;
        for src in SOURCES {
            let full = full_source(src);
            let path = cache_dir.as_ref().map(|d| cache_path(d, src, &full, &arch));
            let cached = path.as_ref().and_then(|p| std::fs::read(p).ok());
            // A cached CUBIN the driver refuses (one made elsewhere, by a newer compiler than
            // this driver takes) is compiled afresh like a missing one.
            let loaded = cached
                .filter(|c| !c.is_empty())
                .and_then(|c| ctx.load_module(Ptx::from_binary(c)).ok());
            let module = match loaded {
                Some(m) => m,
                None => {
                    let c = compile(src.file, &full, &arch)?;
                    compiled += 1;
                    if let Some(p) = &path {
                        store(p, &c);
                    }
                    ctx.load_module(Ptx::from_binary(c))
                        .map_err(|e| CudaError::call("cuModuleLoadData", e))?
                }
            };
            let names = ENTRY_POINTS
                .iter()
                .filter(|(f, _)| *f == src.file)
                .flat_map(|(_, n)| n.iter().copied());
            for name in names {
                let f = module
                    .load_function(name)
                    .map_err(|e| CudaError::kernel(name, e))?;
                if name.starts_with("mmq_f16_") && major >= 8 {
                    // More dynamic shared memory than the default 48 KiB (every sm_80+ device
                    // allows at least 99 KiB; the mmq kernels run only there, and older devices
                    // would refuse the attribute).
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        crate::backend::MMQ_F16_SMEM_MAX as i32,
                    )
                    .map_err(|e| CudaError::kernel(name, e))?;
                }
                if name.starts_with("mmvq_bulk_") && bulk_smem > 0 {
                    // The streamed kernels' stages (backend/bulk.rs; devices where the limit
                    // is 0 do not launch them).
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bulk_smem as i32,
                    )
                    .map_err(|e| CudaError::kernel(name, e))?;
                }
                if name.starts_with("attn_gqa_f16_") && crate::backend::stages_gqa(major, minor) {
                    // The staged grouped kernels' K and V rows (more than 48 KiB at head dim 128).
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        crate::backend::GQA_SMEM_MAX as i32,
                    )
                    .map_err(|e| CudaError::kernel(name, e))?;
                }
                funcs.insert(name, f);
            }
        }
        Ok(Kernels {
            funcs,
            cache_dir,
            compiled,
            load_secs: start.elapsed().as_secs_f64(),
            bulk_smem,
        })
    }

    /// The entry point `name`.
    pub fn get(&self, name: &'static str) -> Result<&CudaFunction, CudaError> {
        self.funcs.get(name).ok_or(CudaError::MissingKernel(name))
    }
}

fn full_source(src: &Source) -> String {
    let headers = HEADERS
        .iter()
        .filter(|(name, _)| src.headers.contains(name));
    let len: usize = headers.clone().map(|(_, text)| text.len() + 32).sum();
    let mut s = String::with_capacity(COMMON.len() + len + src.text.len() + 64);
    s.push_str("#line 1 \"common.cuh\"\n");
    s.push_str(COMMON);
    for (name, text) in headers {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(text);
    }
    s.push_str(&format!("#line 1 \"{}\"\n", src.file));
    s.push_str(src.text);
    s
}

/// `CudaError::NoNvrtc` unless libnvrtc can be opened (cudarc would panic on a missing one).
fn require_nvrtc() -> Result<(), CudaError> {
    // SAFETY: only checks whether a library can be opened; nothing is called through it.
    if unsafe { nvrtc_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoNvrtc)
    }
}

/// Where the CUBIN of `src` (whose full text is `full`) for `arch` is cached in `dir`.
fn cache_path(dir: &std::path::Path, src: &Source, full: &str, arch: &str) -> PathBuf {
    dir.join(format!(
        "{}-{arch}-{}.cubin",
        src.file,
        cache_key(full, arch)
    ))
}

/// Compiles every module for `arch` (e.g. `sm_90`) into the kernel cache folder `dir`, as
/// `Kernels::load` would on a device of that arch, without one: the device machine then loads
/// them instead of compiling (about a minute for all modules). Modules already there are kept.
/// Returns how many were compiled now.
pub fn precompile(arch: &str, dir: &std::path::Path) -> Result<usize, CudaError> {
    require_nvrtc()?;
    std::fs::create_dir_all(dir).map_err(|e| CudaError::Compile {
        file: "kernel cache",
        log: format!("cannot create {}: {e}", dir.display()),
    })?;
    let mut compiled = 0;
    for src in SOURCES {
        let full = full_source(src);
        let path = cache_path(dir, src, &full, arch);
        if path.exists() {
            continue;
        }
        let c = compile(src.file, &full, arch)?;
        store(&path, &c);
        compiled += 1;
    }
    Ok(compiled)
}

fn cache_key(full: &str, arch: &str) -> String {
    let mut h = Sha256::new();
    h.update(full.as_bytes());
    h.update(arch.as_bytes());
    for o in OPTIONS {
        h.update(o.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cache_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("REALIZAR_CUDA_CACHE") {
        Some(d) => PathBuf::from(d),
        None => dirs::cache_dir()?.join("realizar").join("cuda"),
    };
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Writes the CUBIN next to its final name, then renames, so readers never see half a file.
fn store(path: &std::path::Path, cubin: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, cubin).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Compiles one module to a CUBIN for `arch`; on failure the error carries NVRTC's log.
fn compile(file: &'static str, full: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    let nv = |call: &'static str| move |e: nvrtc::NvrtcError| CudaError::Nvrtc { call, file, e };
    let src = CString::new(full).map_err(|_| CudaError::Compile {
        file,
        log: "source contains a NUL byte".into(),
    })?;
    let name = CString::new(file).map_err(|_| CudaError::Compile {
        file,
        log: "file name contains a NUL byte".into(),
    })?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(nv("nvrtcCreateProgram"))?;
    let mut opts: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was just created from `src` and `name`, which outlive it; it is destroyed
    // exactly once below, after its last use.
    let result = unsafe {
        match nvrtc::compile_program(prog, &opts) {
            Ok(()) => cubin_of(prog).map_err(nv("nvrtcGetCUBIN")),
            Err(_) => Err(CudaError::Compile {
                file,
                log: log_of(prog),
            }),
        }
    };
    // SAFETY: as above; `prog` is not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn cubin_of(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: guaranteed by the caller; `size` is a live out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()? };
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has the `size` bytes NVRTC asked for.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char).result()? };
    Ok(buf)
}

/// # Safety
/// `prog` must be a live program.
unsafe fn log_of(prog: nvrtc_sys::nvrtcProgram) -> String {
    // SAFETY: guaranteed by the caller.
    match unsafe { nvrtc::get_program_log(prog) } {
        Ok(raw) if raw.contains(&0) => {
            // SAFETY: `raw` holds a NUL-terminated C string (checked just above).
            unsafe { CStr::from_ptr(raw.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        }
        Ok(_) => "(NVRTC log not NUL-terminated)".into(),
        Err(e) => format!("(no NVRTC log: {e:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_entry_points_and_sources_exist() {
        for src in SOURCES {
            let names: Vec<&str> = ENTRY_POINTS
                .iter()
                .filter(|(f, _)| *f == src.file)
                .flat_map(|(_, n)| n.iter().copied())
                .collect();
            assert!(!names.is_empty(), "{} has no entry points listed", src.file);
            for n in names {
                let bulk = n
                    .strip_prefix("mmvq_bulk_")
                    .and_then(|r| r.rsplit_once("_w"))
                    .is_some_and(|(ty, _)| src.text.contains(&format!("MMVQ_BULK_ALL({ty},")))
                    || n.strip_prefix("mmvq_bulk_mix_")
                        .and_then(|r| r.rsplit_once("_w"))
                        .is_some_and(|(pair, w)| {
                            src.text.contains(&format!("MMVQ_BULK_MIX({pair}, "))
                                && src.text.contains(&format!(", {w})"))
                        });
                assert!(
                    bulk || src
                        .text
                        .contains(n.trim_end_matches("_1").trim_end_matches("_8"))
                        || src.text.contains("MATVEC_")
                        || src.text.contains("MMVQ_ALL(")
                        || n.strip_prefix("mmq_")
                            .and_then(|r| r.rsplit_once('_'))
                            .is_some_and(|(ty, _)| src.text.contains(&format!("MMQ_ALL({ty},")))
                        || n.strip_prefix("mmq_f16_")
                            .and_then(|r| r.rsplit_once('_'))
                            .is_some_and(|(ty, _)| {
                                src.text.contains(&format!("MMQ_F16_ALL({ty},"))
                            })
                        || src.text.contains("DEQUANT_F16(")
                        || src.text.contains("EMBED_Q"),
                    "{n} not in {}",
                    src.file
                );
            }
        }
    }

    /// `t` without its leading blanks and macro line continuations.
    fn skip_blank(t: &str) -> &str {
        t.trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
    }

    /// The text after the parenthesized group that starts at the first `(` of `t`.
    fn after_parens(t: &str) -> Option<&str> {
        let open = t.find('(')?;
        let mut depth = 0;
        for (i, c) in t[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&t[open + i + 1..]);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Whether the streamed matmuls' body (`mmvq_bulk` in `text`) reads nothing but weights
    /// before `pdl_entry()`: up to it, only the barriers' setup and the first copies.
    fn bulk_waits(text: &str) -> bool {
        let Some(at) = text.find("__device__ __forceinline__ void mmvq_bulk(") else {
            return false;
        };
        let body = &text[at..];
        let Some(wait) = body.find("pdl_entry();") else {
            return false;
        };
        // From the body's brace: the parameter list names xq and xds.
        let Some(open) = body.find('{') else {
            return false;
        };
        let before = &body[open..wait];
        let named = |id: &str| {
            before
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|t| t == id)
        };
        !named("xq") && !named("xds") && !before.contains("out[")
    }

    /// Every kernel's body starts with `pdl_entry()` (common.cuh): the host launches them with
    /// programmatic dependent launch on sm_90, which lets a kernel start before the one ahead
    /// of it has finished; one without the wait would read unfinished results. The body is
    /// found after the parameter list's matching parenthesis (past `__launch_bounds__(..)` and
    /// `__maxnreg__(..)`), wherever the brace is. The streamed matmuls' body is a call of
    /// `mmvq_bulk`, which copies weights before its `pdl_entry()` (`bulk_waits`).
    #[test]
    fn every_kernel_waits_for_the_one_before() {
        let mut kernels = 0;
        for (file, text) in SOURCES
            .iter()
            .map(|s| (s.file, s.text))
            .chain([("common.cuh", COMMON)])
            .chain(HEADERS.iter().copied())
        {
            for (at, _) in text.match_indices("__global__") {
                let rest = &text[at..];
                let mut sig = skip_blank(&rest["__global__".len()..]);
                sig = skip_blank(sig.strip_prefix("void").unwrap_or(sig));
                while sig.starts_with("__launch_bounds__") || sig.starts_with("__maxnreg__") {
                    sig = skip_blank(after_parens(sig).unwrap_or(""));
                }
                let body = after_parens(sig).map(skip_blank).unwrap_or("");
                let first = body.strip_prefix('{').map(skip_blank).unwrap_or("");
                // The streamed matmuls issue their first weight copies, then wait (bulk.cu).
                let streamed = first.starts_with("mmvq_bulk<") && bulk_waits(text);
                assert!(
                    first.starts_with("pdl_entry();") || streamed,
                    "{file}: a kernel does not start with pdl_entry(): {}",
                    &rest[..rest.len().min(120)]
                );
                kernels += 1;
            }
        }
        assert!(kernels >= 30, "found only {kernels} kernels");
    }

    #[test]
    fn compile_error_shows_nvrtc_log() {
        if require_nvrtc().is_err() {
            eprintln!("skipping NVRTC check: no libnvrtc");
            return;
        }
        let bad = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
        match compile("bad.cu", bad, "sm_90") {
            Err(CudaError::Compile { file, log }) => {
                assert_eq!(file, "bad.cu");
                assert!(log.contains("undefined_name"), "log: {log}");
                eprintln!("NVRTC log shown: {log}");
            }
            Err(e) => panic!("expected a compile error with a log, got {e}"),
            Ok(_) => panic!("bad source compiled"),
        }
    }

    /// Every module compiles for Hopper, where NVRTC is installed (no GPU needed): the device
    /// machine's first use would otherwise be the first compile. Through `precompile`, whose
    /// files must be the ones `Kernels::load` looks for.
    #[test]
    fn every_module_compiles_for_sm_90() {
        if require_nvrtc().is_err() {
            eprintln!("skipping NVRTC compile check: no libnvrtc");
            return;
        }
        let dir = std::env::temp_dir().join(format!("realizar-precompile-{}", std::process::id()));
        let n = precompile("sm_90", &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, SOURCES.len());
        for src in SOURCES {
            let path = cache_path(&dir, src, &full_source(src), "sm_90");
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{} missing or empty", path.display());
        }
        // A second run finds them all.
        assert_eq!(
            precompile("sm_90", &dir).unwrap_or_else(|e| panic!("{e}")),
            0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cache_key_depends_on_source_and_arch() {
        let a = cache_key("x", "sm_90");
        assert_ne!(a, cache_key("y", "sm_90"));
        assert_ne!(a, cache_key("x", "sm_80"));
        assert_eq!(a.len(), 16);
    }
}
