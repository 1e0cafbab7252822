//! The `realizar` binary end to end on the default model.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realizar"))
}

fn model() -> PathBuf {
    realizar_testkit::default_model()
}

#[test]
fn inspect_reports_the_default_model() {
    let out = bin()
        .args(["inspect", "--json"])
        .arg(model())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["format"], "GGUF v3");
    assert_eq!(v["tensors"].as_array().map(Vec::len), Some(272));
    assert_eq!(v["parameters"], 134_515_008u64);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["chat_template"], true);
    let text = bin().arg("inspect").arg(model()).output().expect("run");
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("parameters:    134.5M"), "{s}");
    assert!(s.contains("272 tensors:"), "{s}");
    assert!(s.contains("blk.29.ffn_down.weight"), "{s}");
}

#[test]
fn inspect_refuses_a_malformed_file_with_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.gguf");
    // A GGUF header claiming 2^60 metadata keys.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend((1u64 << 60).to_le_bytes());
    std::fs::write(&bad, &bytes).expect("write");
    let out = bin().arg("inspect").arg(&bad).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("count"), "{err}");
}

#[test]
fn run_json_greedy_lines() {
    let out = bin()
        .args([
            "run",
            "-p",
            "The capital of France is",
            "-n",
            "6",
            "--temperature",
            "0",
            "--top-logprobs",
            "3",
            "--json",
            "-m",
        ])
        .arg(model())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines[0]["prompt_tokens"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    // llama.cpp's greedy continuation starts " Paris." (7042, 30).
    assert_eq!(lines[1]["id"], 7042);
    assert_eq!(lines[1]["text"], " Paris");
    assert_eq!(lines[2]["id"], 30);
    let top = lines[1]["top_logprobs"].as_array().expect("top");
    assert_eq!(top.len(), 3);
    assert_eq!(top[0][0], 7042);
    let summary = &lines.last().expect("summary")["summary"];
    assert_eq!(summary["prompt_tokens"], 5);
    assert_eq!(summary["generated"], 6);
    assert_eq!(lines.len(), 8);
}

#[test]
fn tokenize_prints_ids_with_and_without_special_parsing() {
    let text = "<|im_start|>user\nhi<|im_end|>";
    let out = bin()
        .arg("tokenize")
        .arg("-m")
        .arg(model())
        .arg(text)
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[1,4093,198,6004,2]"
    );
    let out = bin()
        .args(["tokenize", "--no-parse-special", "-m"])
        .arg(model())
        .arg("--")
        .arg(text)
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[44,108,306,79,3738,108,46,4093,198,6004,44,108,306,79,486,108,46]"
    );
}

#[test]
fn chat_answers_over_stdin_and_keeps_the_conversation() {
    use std::io::Write;
    let mut child = bin()
        .args(["chat", "--temperature", "0", "-n", "12", "-m"])
        .arg(model())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"What is 2+2?\nMultiply that answer by 10.\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    // Greedy replies of the default model, one per turn (it is too small to do the sum).
    let replies: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 2, "{s}");
    assert!(replies[0].contains("is 4."), "{s}");
}

#[test]
fn serve_refuses_gpu_memory_without_a_gpu_device() {
    let out = bin()
        .args([
            "serve",
            "--device",
            "cpu",
            "--gpu-memory",
            "0.9",
            "--port",
            "0",
            "-m",
        ])
        .arg(model())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gpu-memory"), "{err}");
}

/// `realizar bench` on the tiny llama fixture, on the CPU.
fn bench_tiny(args: &[&str]) -> std::process::Output {
    bin()
        .args(["bench", "--device", "cpu", "-m"])
        .arg(realizar_testkit::tiny_fixture("llama").join("model-f32.gguf"))
        .args(args)
        .output()
        .expect("run")
}

#[test]
fn bench_parallel_prints_a_batched_bench_row_per_batch_size() {
    let out = bench_tiny(&["-p", "8", "-n", "4", "--parallel", "1,3"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: Vec<Vec<&str>> = s
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(
        table[0],
        ["PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"],
        "{s}"
    );
    let rows: Vec<_> = table.iter().skip(2).collect();
    assert_eq!(rows.len(), 2, "{s}");
    for (row, want) in rows
        .iter()
        .zip([["8", "4", "1", "12"], ["8", "4", "3", "36"]])
    {
        assert_eq!(row[..4], want, "{s}");
        for col in [5, 7, 9] {
            let speed: f64 = row[col].parse().expect("a number");
            assert!(speed.is_finite() && speed > 0.0, "{s}");
        }
    }
    // Bad lists are errors with one line, not panics.
    let out = bench_tiny(&["--parallel", "4,0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--parallel 4,0"), "{err}");
}

#[test]
fn bench_f16_weight_copies_need_a_gpu() {
    let out = bench_tiny(&["-p", "8", "-n", "0", "-r", "1", "--f16-weights", "on"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bench --f16-weights on ran on the CPU"
    );
    assert!(err.contains("--f16-weights on"), "{err}");
    // Auto (and off) are fine on the CPU: there is nothing to copy there.
    let out = bench_tiny(&["-p", "8", "-n", "0", "-r", "1", "--f16-weights", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_depth_runs_the_tests_after_that_much_context() {
    let out = bench_tiny(&["-p", "8", "-n", "4", "-r", "2", "-d", "40"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("model") && !l.contains("---"))
        .filter_map(|l| l.split('|').nth(6).map(str::trim))
        .collect();
    assert_eq!(tests, ["pp8 @ d40", "tg4 @ d40"], "{s}");
}
