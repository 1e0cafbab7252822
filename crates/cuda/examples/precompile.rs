//! Compiles every kernel module for an arch into a kernel cache folder, without a GPU (NVRTC
//! only), so that a device machine given the folder as `REALIZAR_CUDA_CACHE` loads the CUBINs
//! instead of compiling them (scripts/gpu-test.sh and scripts/gpu-ab.sh do this for sm_90).
//!
//!     cargo run -p realizar-cuda --release --example precompile -- sm_90 .device/kcache

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, dir] = args.as_slice() else {
        eprintln!("usage: precompile ARCH DIR   (e.g. sm_90 .device/kcache)");
        std::process::exit(2);
    };
    let t = std::time::Instant::now();
    match realizar_cuda::precompile_kernels(arch, std::path::Path::new(dir)) {
        Ok(n) => println!(
            "{n} modules compiled for {arch} into {dir} in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("precompile: {e}");
            std::process::exit(1);
        }
    }
}
