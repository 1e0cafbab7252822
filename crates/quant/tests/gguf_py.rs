//! Independent check of the block layouts against the `gguf` Python package (llama.cpp's
//! gguf-py, whose `gguf.quants` holds numpy (de)quantizers written separately from ggml's C).
//!
//! For every type: random blocks (random bytes with finite f16/f32 scales, or random finite
//! floats) are written to a temp dir, `tests/gguf_quants.py` dequantizes them with
//! `gguf.quants.dequantize`, and the output must equal our `dequantize_row` bit for bit. For the
//! types gguf can quantize, our reference quantizer's bytes must also equal gguf's.
//!
//! The test installs `gguf numpy` with pip when they are not importable and FAILS when Python,
//! pip or the package is unavailable: it never passes without having run the comparison.
//! Set `PYTHON` to choose the interpreter (default `python3`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use realizar_quant::{dequantize_row, quantize_row, GgmlType, ALL_TYPES};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Types checked against gguf's own dequantizer, with the byte offsets of the f16 scales in
/// each block (set to random finite values; every other byte is random).
const GGUF_DEQUANT: &[(GgmlType, &[usize])] = &[
    (GgmlType::F32, &[]),
    (GgmlType::F16, &[]),
    (GgmlType::Bf16, &[]),
    (GgmlType::Q4_0, &[0]),
    (GgmlType::Q4_1, &[0, 2]),
    (GgmlType::Q5_0, &[0]),
    (GgmlType::Q5_1, &[0, 2]),
    (GgmlType::Q8_0, &[0]),
    (GgmlType::Q2K, &[80, 82]),
    (GgmlType::Q3K, &[108]),
    (GgmlType::Q4K, &[0, 2]),
    (GgmlType::Q5K, &[0, 2]),
    (GgmlType::Q6K, &[208]),
    (GgmlType::Iq4Nl, &[0]),
    (GgmlType::Iq4Xs, &[0]),
];

/// Types gguf does not implement, decoded by the script from their documented layout
/// (Q8_1 through gguf's Q8_0 with `s` dropped; Q8_K with numpy).
const SCRIPT_DEQUANT: &[(GgmlType, &[usize])] = &[(GgmlType::Q8_1, &[0, 2]), (GgmlType::Q8K, &[])];

/// Types whose reference quantizer is compared byte for byte with gguf's.
const GGUF_QUANT: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn gguf_importable() -> bool {
    Command::new(python())
        .args(["-c", "import gguf.quants, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Make `import gguf` work or fail the test.
fn ensure_gguf() {
    if gguf_importable() {
        return;
    }
    let status = Command::new(python())
        .args(["-m", "pip", "install", "-q", "gguf", "numpy"])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "`{} -m pip install gguf numpy` failed ({status:?}); this test needs the gguf package",
        python()
    );
    assert!(
        gguf_importable(),
        "gguf is still not importable after pip install"
    );
}

/// A fresh temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "realizar-quant-gguf-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn finite_f16_bits(rng: &mut StdRng) -> u16 {
    loop {
        let b: u16 = rng.gen();
        if b & 0x7c00 != 0x7c00 {
            return b;
        }
    }
}

/// Random blocks of `ty` with finite scales at `halves` (and a finite f32 scale for Q8_K).
fn random_blocks(rng: &mut StdRng, ty: GgmlType, halves: &[usize], n_blocks: usize) -> Vec<u8> {
    let size = ty.type_size();
    let mut bytes = vec![0u8; size * n_blocks];
    rng.fill(&mut bytes[..]);
    for block in bytes.chunks_exact_mut(size) {
        match ty {
            GgmlType::F32 => loop {
                let b: u32 = rng.gen();
                if b & 0x7f80_0000 != 0x7f80_0000 {
                    block.copy_from_slice(&b.to_le_bytes());
                    break;
                }
            },
            GgmlType::F16 => block.copy_from_slice(&finite_f16_bits(rng).to_le_bytes()),
            GgmlType::Bf16 => loop {
                let b: u16 = rng.gen();
                if b & 0x7f80 != 0x7f80 {
                    block.copy_from_slice(&b.to_le_bytes());
                    break;
                }
            },
            GgmlType::Q8K => {
                let d: f32 = rng.gen_range(-0.05f32..0.05);
                block[..4].copy_from_slice(&d.to_le_bytes());
            }
            _ => {
                for &off in halves {
                    block[off..off + 2].copy_from_slice(&finite_f16_bits(rng).to_le_bytes());
                }
            }
        }
    }
    bytes
}

fn run_script(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_quants.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "gguf_quants.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Which directions the installed gguf implements, per type of our table.
fn probe(dir: &Path) -> Vec<(String, String)> {
    let manifest: String = ALL_TYPES
        .iter()
        .map(|t| format!("probe {}\n", t.name()))
        .collect();
    std::fs::write(dir.join("manifest.txt"), manifest).expect("write manifest");
    run_script(dir);
    std::fs::read_to_string(dir.join("probe.out"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(op, name)| (op.to_string(), name.to_string()))
        .collect()
}

#[test]
fn matches_gguf_python() {
    ensure_gguf();
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = TempDir::new();

    // Every type our table knows and gguf can dequantize / quantize must be covered here.
    let supported = probe(&dir.0);
    for (op, name) in &supported {
        let ty = GgmlType::from_name(name).expect("probe names come from our table");
        let covered = match op.as_str() {
            "dequant" => GGUF_DEQUANT.iter().any(|(t, _)| *t == ty),
            _ => GGUF_QUANT.contains(&ty),
        };
        assert!(
            covered,
            "gguf can {op} {name} but this test does not cover it"
        );
    }
    eprintln!("gguf supports: {supported:?}");

    // Write inputs.
    let mut manifest = String::new();
    let mut dequant_inputs = Vec::new();
    for &(ty, halves) in GGUF_DEQUANT.iter().chain(SCRIPT_DEQUANT) {
        let n_blocks = if ty.block_size() == 1 { 4096 } else { 48 };
        let raw = random_blocks(&mut rng, ty, halves, n_blocks);
        std::fs::write(dir.0.join(format!("{}.dq.in", ty.name())), &raw).expect("write");
        manifest += &format!("dequant {}\n", ty.name());
        dequant_inputs.push((ty, raw, n_blocks * ty.block_size()));
    }
    let mut quant_inputs = Vec::new();
    for &ty in GGUF_QUANT {
        // Random normal-ish data with a different scale per block, one outlier per block.
        let n = 32 * 64;
        let mut x: Vec<f32> = (0..n)
            .map(|i| {
                let scale = 0.01 + (i / 32) as f32 * 0.05;
                (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * scale
            })
            .collect();
        for b in 0..n / 32 {
            let i = 32 * b + rng.gen_range(0..32);
            x[i] *= 4.0;
        }
        std::fs::write(dir.0.join(format!("{}.q.in", ty.name())), f32_bytes(&x)).expect("write");
        manifest += &format!("quant {}\n", ty.name());
        quant_inputs.push((ty, x));
    }
    std::fs::write(dir.0.join("manifest.txt"), manifest).expect("write manifest");
    run_script(&dir.0);

    let mut failures = Vec::new();
    for (ty, raw, n) in &dequant_inputs {
        let want = read_f32(&dir.0.join(format!("{}.dq.out", ty.name())));
        let mut got = vec![f32::NAN; *n];
        dequantize_row(*ty, raw, &mut got).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(want.len(), got.len(), "{ty}: element count");
        let bad = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g.to_bits() != w.to_bits());
        match bad {
            Some(i) => failures.push(format!(
                "dequantize {ty}: element {i}: ours {} gguf {} (seed {seed})",
                got[i], want[i]
            )),
            None => eprintln!("dequantize {ty}: {n} elements bit-identical"),
        }
    }
    for (ty, x) in &quant_inputs {
        let want = std::fs::read(dir.0.join(format!("{}.q.out", ty.name()))).expect("read");
        let mut got = vec![0u8; ty.row_bytes(x.len() as u64).expect("bytes") as usize];
        quantize_row(*ty, x, &mut got).unwrap_or_else(|e| panic!("{ty}: {e}"));
        match got.iter().zip(&want).position(|(g, w)| g != w) {
            _ if got.len() != want.len() => failures.push(format!(
                "quantize {ty}: {} bytes, gguf {}",
                got.len(),
                want.len()
            )),
            Some(i) => failures.push(format!(
                "quantize {ty}: byte {i} (block {}): ours {:#04x} gguf {:#04x} (seed {seed})",
                i / ty.type_size(),
                got[i],
                want[i]
            )),
            None => eprintln!("quantize {ty}: {} bytes identical", got.len()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
