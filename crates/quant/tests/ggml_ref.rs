//! Optional check against llama.cpp's own C code: our reference quantizers must write the same
//! bytes as ggml's `quantize_row_<type>_ref`, our dequantizers the same f32 as ggml's
//! `dequantize_row_<type>`, for every block type, and `quantize_activations` the same bytes as
//! ggml-cpu's run-time `quantize_row_q8_0/q8_1/q8_K` (called through ctypes by
//! `tests/ggml_ref.py`).
//!
//! Needs a built `libggml-base.so`: `$REALIZAR_GGML_LIB`, else the peer build of
//! `../shared/scripts/peer-llamacpp.sh` (`$REALIZAR_PEERS` or `~/.cache/realizar-peers`). When
//! none is found the test says so on stderr and skips; the gguf-py test (tests/gguf_py.rs) is the
//! check that always runs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use realizar_quant::{dequantize_row, quantize_activations, quantize_row, GgmlType, ALL_TYPES};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every block-quantized type of the table.
fn quant_types() -> impl Iterator<Item = GgmlType> {
    ALL_TYPES.iter().copied().filter(|t| t.is_quantized())
}

fn find_lib() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REALIZAR_GGML_LIB") {
        return Some(PathBuf::from(p));
    }
    let peers = std::env::var("REALIZAR_PEERS")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| Path::new(&h).join(".cache/realizar-peers"))
        })?;
    let lib = peers.join("llama.cpp/build/bin/libggml-base.so");
    lib.exists().then_some(lib)
}

/// Normal-ish data with a per-block scale and offset and an outlier per 256 elements.
fn test_data(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|i| {
            let scale = 0.02 + ((i / 256) % 7) as f32 * 0.3;
            let offset = if (i / 256) % 3 == 0 { 0.3 * scale } else { 0.0 };
            (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * scale + offset
        })
        .collect();
    for b in 0..n / 256 {
        let i = 256 * b + rng.gen_range(0..256);
        x[i] *= 5.0;
    }
    x
}

#[test]
fn matches_ggml_c_reference() {
    let Some(lib) = find_lib() else {
        eprintln!("SKIPPED: no libggml-base.so (set REALIZAR_GGML_LIB or build the peer)");
        return;
    };
    let seed: u64 = std::env::var("REALIZAR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir =
        std::env::temp_dir().join(format!("realizar-quant-ggml-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let n = 256 * 32;
    let mut manifest = String::new();
    let mut inputs = Vec::new();
    for ty in quant_types() {
        let x = test_data(&mut rng, n);
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("{}.q.in", ty.name())), bytes).expect("write");
        manifest += &format!("quant {}\n", ty.name());
        let mut ours = vec![0u8; ty.row_bytes(n as u64).expect("bytes") as usize];
        quantize_row(ty, &x, &mut ours).expect("quantize");
        if ty != GgmlType::Q8_1 {
            std::fs::write(dir.join(format!("{}.dq.in", ty.name())), &ours).expect("write");
            manifest += &format!("dequant {}\n", ty.name());
        }
        inputs.push((ty, ours));
    }
    let mut act_inputs = Vec::new();
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
        let x = test_data(&mut rng, n);
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("{}.act.in", ty.name())), bytes).expect("write");
        manifest += &format!("act {}\n", ty.name());
        let mut ours = vec![0u8; ty.row_bytes(n as u64).expect("bytes") as usize];
        quantize_activations(ty, &x, &mut ours).expect("quantize activations");
        act_inputs.push((ty, ours));
    }
    std::fs::write(dir.join("manifest.txt"), manifest).expect("manifest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ggml_ref.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(&script)
        .arg(&lib)
        .arg(&dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "ggml_ref.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut failures = Vec::new();
    for (ty, ours) in &inputs {
        let theirs = std::fs::read(dir.join(format!("{}.q.out", ty.name()))).expect("read");
        let differing: Vec<usize> = ours
            .chunks_exact(ty.type_size())
            .zip(theirs.chunks_exact(ty.type_size()))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        if ours.len() != theirs.len() || !differing.is_empty() {
            let first = differing.first().copied().unwrap_or(0);
            let block = |b: &[u8]| {
                b.chunks(ty.type_size())
                    .nth(first)
                    .map(|c| format!("{c:02x?}"))
                    .unwrap_or_default()
            };
            failures.push(format!(
                "quantize {ty}: {} of {} blocks differ from ggml (seed {seed}); block {first}:\n ours {}\n ggml {}",
                differing.len(),
                ours.len() / ty.type_size(),
                block(ours),
                block(&theirs),
            ));
        } else {
            eprintln!("quantize {ty}: bytes identical to ggml");
        }
        if *ty == GgmlType::Q8_1 {
            continue;
        }
        let raw = std::fs::read(dir.join(format!("{}.dq.out", ty.name()))).expect("read");
        let want: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut got = vec![f32::NAN; n];
        dequantize_row(*ty, ours, &mut got).expect("dequantize");
        if got
            .iter()
            .zip(&want)
            .any(|(a, b)| a.to_bits() != b.to_bits())
            || want.len() != n
        {
            failures.push(format!("dequantize {ty}: differs from ggml (seed {seed})"));
        }
    }
    for (ty, ours) in &act_inputs {
        let theirs = std::fs::read(dir.join(format!("{}.act.out", ty.name()))).expect("read");
        let differing = ours
            .chunks_exact(ty.type_size())
            .zip(theirs.chunks_exact(ty.type_size()))
            .filter(|(a, b)| a != b)
            .count();
        if ours.len() != theirs.len() || differing > 0 {
            failures.push(format!(
                "activations {ty}: {differing} blocks differ from ggml-cpu's run-time quantizer (seed {seed})"
            ));
        } else {
            eprintln!("activations {ty}: bytes identical to ggml-cpu");
        }
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
