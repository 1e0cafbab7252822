//! The official `openai` Python package against the real server: chat and completions,
//! streaming and not. Fails (never skips) when python3 or the package cannot be had.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Opts, TestServer};

#[test]
fn the_openai_python_client_works() {
    realizar_testkit::ensure_python_packages(&["openai"]);
    let s = TestServer::start(Opts::default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("REALIZAR_URL", format!("http://{}", s.addr))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("10 passed, 0 failed"), "{stdout}");
}
