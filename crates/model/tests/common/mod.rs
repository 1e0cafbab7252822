//! Shared test helpers: locating the default model and the shared reference files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn shared_dir() -> PathBuf {
    std::env::var_os("REALIZAR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// The default model, which `scripts/get-default-model.sh` (run by `.ci/run`) caches.
pub fn default_model() -> PathBuf {
    if let Some(p) = std::env::var_os("REALIZAR_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("REALIZAR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/realizar")
        });
    let p = base.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "default model missing at {}: run scripts/get-default-model.sh",
        p.display()
    );
    p
}

/// Makes sure python3 can import these packages, installing them with pip if not; panics if
/// that fails (a test needing them must never pass silently).
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

pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}
