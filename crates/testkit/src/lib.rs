//! Test support shared by the workspace's test suites (a dev-dependency only): where the default
//! model, the shared reference files and the tiny fixtures are, and the Python packages some tests
//! use as independent references.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` beside the checkout (or `REALIZAR_SHARED`): the reference files.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("REALIZAR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"))
}

/// A tiny fixture folder, `tests/fixtures/tiny/<arch>`.
pub fn tiny_fixture(arch: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/tiny").join(arch)
}

/// The default model (SmolLM2-135M-Instruct Q4_1): `REALIZAR_TEST_MODEL` if set, else the cache
/// `realizar` itself uses, fetched with `scripts/get-default-model.sh` when missing. Panics if it
/// cannot be had: tests that need it must not pass without it.
pub fn default_model() -> PathBuf {
    if let Some(p) = std::env::var_os("REALIZAR_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let script = workspace_root().join("scripts/get-default-model.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "default model missing at {}",
        path.display()
    );
    path
}

/// Makes sure python3 can import these packages, installing them with pip if not; panics if that
/// fails (a test needing them must never pass silently).
pub fn ensure_python_packages(pkgs: &[&str]) {
    let import = format!("import {}", pkgs.join(", "));
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if ok(Command::new("python3").args(["-c", &import])) {
        return;
    }
    let installed = ok(Command::new("python3")
        .args(["-m", "pip", "install", "-q"])
        .args(pkgs));
    assert!(
        installed && ok(Command::new("python3").args(["-c", &import])),
        "cannot install python packages {pkgs:?}"
    );
}

/// Log-softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}
