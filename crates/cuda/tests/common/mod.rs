//! Shared by the GPU tests: skipping without a GPU, fresh random inputs, error measures.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

use realizar_cuda::{CudaBackend, CudaKv, CudaWeight};
use realizar_formats::{GgmlType, GgufFile, GgufWriter};
use realizar_model::backend::{Backend, WeightUse};
use realizar_model::weights::TensorView;
use realizar_model::CpuBackend;

/// The GPU backend, or `None` (after saying why) when this machine has no usable CUDA device.
/// Once a device is found, failing to set the backend up is a test failure, not a skip.
pub fn gpu() -> Option<CudaBackend> {
    match realizar_cuda::probe() {
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
        Ok(info) => {
            let b = match CudaBackend::new(0) {
                Ok(b) => b,
                Err(e) => panic!("CUDA device present ({info:?}) but the backend failed: {e}"),
            };
            eprintln!(
                "GPU: {} (driver {}), kernel modules compiled now: {} ({:.2}s), cache: {:?}",
                b.device_name(),
                info.driver_version,
                b.modules_compiled(),
                b.kernel_load_secs(),
                b.kernel_cache_dir()
            );
            Some(b)
        }
    }
}

/// `gpu()`, or `None` (after saying why) when cuBLAS did not load: for the tests of the cuBLAS
/// paths.
pub fn gpu_with_cublas() -> Option<CudaBackend> {
    let g = gpu()?;
    if !g.has_cublas() {
        eprintln!("skipping: cuBLAS did not load");
        return None;
    }
    Some(g)
}

/// A generator seeded from the clock (printed, and overridable by REALIZAR_TEST_SEED) so every
/// run draws fresh inputs and a failure can be replayed.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("REALIZAR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

/// `n` draws from N(0, std^2) (Box-Muller).
pub fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(1e-12..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
        })
        .collect()
}

/// ||a - b|| / ||b||; infinite when anything is NaN or the lengths differ.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Prints one result line and returns whether it passed (NaN never does).
pub fn check(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) -> bool {
    report(what, rel_err(gpu, cpu), tol)
}

/// `check` for the outputs of dot products of length `k` over unit-normal inputs, whose RMS is
/// about sqrt(k): the error is measured against at least a quarter of that, so that a handful
/// of outputs, one of them near zero by cancellation, does not make the measure meaningless
/// (seen: a single 1 x 1000 F16 output at 1.02e-4 against its own tiny size). With more than a
/// few outputs ||cpu|| is above the floor and this is `check`.
pub fn check_dot(what: &str, gpu: &[f32], cpu: &[f32], k: usize, tol: f64) -> bool {
    let e = rel_err(gpu, cpu);
    let norm = cpu.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let floor = 0.25 * ((cpu.len() * k) as f64).sqrt();
    let e = if e.is_finite() && norm < floor && floor > 0.0 {
        e * norm / floor
    } else {
        e
    };
    report(what, e, tol)
}

fn report(what: &str, e: f64, tol: f64) -> bool {
    let ok = e <= tol;
    println!(
        "{} {what}: rel_err {e:.3e} (tol {tol:.0e})",
        if ok { "PASS" } else { "FAIL" }
    );
    ok
}

/// `src` (an F32 GGUF) with every matrix in `ty` and everything else as it was.
pub fn requantize(src: &Path, ty: GgmlType, dst: &Path) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new(3);
    for (k, v) in g.metadata() {
        w.add(k.clone(), v.clone());
    }
    for t in g.tensors() {
        assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
        let data = g.tensor_data(t);
        if t.dims.len() < 2 {
            w.add_tensor(t.name.clone(), &t.dims, t.ty, data.to_vec());
            continue;
        }
        let vals: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cols = t.row_len() as usize;
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let mut out = vec![0u8; t.n_rows() as usize * rb];
        for (src, dst) in vals.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
            realizar_quant::quantize_row(ty, src, dst).unwrap();
        }
        w.add_tensor(t.name.clone(), &t.dims, ty, out);
    }
    w.write_file(dst).unwrap();
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The repository root: where this test was built, or (test binaries carried to a device and
/// run from a copy of the tree elsewhere) the working directory.
pub fn repo_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("tests/fixtures").is_dir() {
        return built;
    }
    std::env::current_dir().unwrap_or(built)
}

/// Quantizes `rows x cols` values row by row into `ty`'s blocks (F32: the values' bytes).
pub fn quantize(ty: GgmlType, vals: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    if ty == GgmlType::F32 {
        return vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    }
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut out = vec![0u8; rb * rows];
    for r in 0..rows {
        realizar_quant::quantize_row(
            ty,
            &vals[r * cols..(r + 1) * cols],
            &mut out[r * rb..(r + 1) * rb],
        )
        .unwrap();
    }
    out
}

/// Uploads `data` (`rows x cols` of `ty`) as a weight used `how`.
pub fn upload(
    g: &CudaBackend,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
    how: WeightUse,
) -> CudaWeight {
    let tv = TensorView {
        name: "test",
        ty,
        rows,
        cols,
        data,
    };
    g.upload(&tv, how).unwrap()
}

/// Random K and V rows (N(0, 1)) for the positions whose KV slots are `slots`, stored alike in
/// `layer` of a GPU cache and of a CPU cache.
#[allow(clippy::too_many_arguments)]
pub fn store_random_kv(
    g: &CudaBackend,
    gkv: &mut CudaKv,
    c: &CpuBackend,
    ckv: &mut <CpuBackend as Backend>::Kv,
    layer: usize,
    slots: &[u32],
    kvd: usize,
    rng: &mut StdRng,
) {
    let n = slots.len();
    let k = normal(rng, n * kvd, 1.0);
    let v = normal(rng, n * kvd, 1.0);
    let gk = g.buf_from_host(n, kvd, &k).unwrap();
    let gv = g.buf_from_host(n, kvd, &v).unwrap();
    g.kv_store(gkv, layer, &gk, &gv, slots);
    let mut ck = c.alloc(n, kvd).unwrap();
    ck.as_mut_slice().copy_from_slice(&k);
    let mut cv = c.alloc(n, kvd).unwrap();
    cv.as_mut_slice().copy_from_slice(&v);
    c.kv_store(ckv, layer, &ck, &cv, slots);
}

/// The fast path's activation rounding, as kernels/mmvq.cu does it: blocks of 32, d = amax/127,
/// q = round-half-even(x / d); returns the rounded activations d * q.
pub fn q8_1_round(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for b in x.chunks(32) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(b.iter().map(|&v| d * (v * id).round_ties_even()));
    }
    out
}

/// out[t][r] = sum_c w[r][c] * x[t][c] in f64, with w dequantized from its blocks.
pub fn reference_matmul(ty: GgmlType, wq: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut w = vec![0.0f32; rows * cols];
    for r in 0..rows {
        realizar_quant::dequantize_row(ty, &wq[r * rb..(r + 1) * rb], &mut w[r * cols..][..cols])
            .unwrap();
    }
    let ntok = x.len() / cols;
    let mut out = vec![0.0f32; ntok * rows];
    for t in 0..ntok {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum();
            out[t * rows + r] = s as f32;
        }
    }
    out
}

/// Whether `a` and `b` hold the same bits, said with `what`.
pub fn same(what: &str, a: &[f32], b: &[f32]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    if diff == 0 && a.len() == b.len() {
        println!("PASS {what}: bit-identical ({} values)", a.len());
        true
    } else {
        println!("FAIL {what}: {diff} of {} values differ", a.len());
        false
    }
}
