//! `realizar serve` as a real process: start on an ephemeral port, answer with an API key read
//! from a file, exit cleanly on SIGTERM; `--device cuda` refuses with a clear message. The HTTP
//! API itself is covered in crates/server/tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    realizar_testkit::default_model()
}

/// Kills the server if a test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Status line and body of one request.
fn http(addr: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-key\n").expect("write key");
    let child = Command::new(env!("CARGO_BIN_EXE_realizar"))
        .args([
            "serve",
            "--port",
            "0",
            "--ctx",
            "256",
            "--kv-tokens",
            "1024",
        ])
        .arg("-m")
        .arg(model())
        .arg("--api-key-file")
        .arg(&key_file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut server = Server(child);
    let stderr = server.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("line");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let t0 = Instant::now();
    while http(&addr, "GET", "/health", None, "").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http(&addr, "GET", "/v1/models", None, "").0, 401);
    let body = r#"{"prompt": "Hello", "max_tokens": 2, "temperature": 0}"#;
    let (status, text) = http(&addr, "POST", "/v1/completions", Some("file-key"), body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"completion_tokens\":2"), "{text}");

    let pid = server.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = server.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let log = log.join().expect("log").join("\n");
    // One log line per request.
    assert!(log.contains("POST /v1/completions 200"), "{log}");
    assert!(log.contains("GET /v1/models 401"), "{log}");
}

#[test]
fn serve_device_cuda_fails_with_a_clear_message_without_a_gpu() {
    if realizar_cuda::probe().is_ok() {
        eprintln!("skipping: a CUDA device is present, so --device cuda is expected to work");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_realizar"))
        .args(["serve", "--device", "cuda", "--port", "0"])
        .arg("-m")
        .arg(model())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device cuda: no CUDA driver"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
