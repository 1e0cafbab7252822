//! Times `GgufFile::open` plus indexing (metadata lookups, tensor lookups) of a GGUF file.
//!
//! ```text
//! cargo run --release -p realizar-formats --example open_bench -- [MODEL.gguf] [ITERATIONS]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use realizar_formats::GgufFile;

const DEFAULT_MODEL: &str = "/root/.cache/realizar/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().unwrap_or_else(|| DEFAULT_MODEL.to_string()));
    let iters: u32 = match args.next() {
        Some(s) => s.parse()?,
        None => 100,
    };
    if !path.is_file() {
        println!("skipping: {} not present", path.display());
        return Ok(());
    }
    let mut checksum = 0u64;
    let mut times = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        let t0 = Instant::now();
        let f = GgufFile::open(&path)?;
        let arch = f.get_str("general.architecture")?.to_string();
        checksum += f.get_u32(&format!("{arch}.block_count"))? as u64;
        checksum += f.get_str_array("tokenizer.ggml.tokens")?.len() as u64;
        for t in f.tensors() {
            let found = f.tensor(&t.name).ok_or("tensor index is inconsistent")?;
            checksum += f.tensor_data(found).len() as u64;
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{}: open + index, {iters} iterations: mean {mean:.2} ms, median {median:.2} ms, min {:.2} ms (checksum {checksum})",
        path.display(),
        times.first().copied().unwrap_or(0.0),
    );
    Ok(())
}
