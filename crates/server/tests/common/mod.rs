//! Test support: the real server (library) on an ephemeral 127.0.0.1 port with the real
//! default model, and a small raw HTTP/1.1 client (raw so that tests can send invalid bytes,
//! oversized bodies and hang up mid-stream).

#![allow(dead_code)]

pub mod faulty;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use realizar_engine::{Engine, EngineConfig, EngineError, SchedConfig, Tokenizer};
use realizar_formats::ModelFile;
use realizar_model::{load_cpu_from, LoadOptions};
use realizar_server::{AppState, ServerConfig};
use serde_json::Value;

use faulty::{load_faulty_cpu, Fault};

pub fn model_path() -> PathBuf {
    realizar_testkit::default_model()
}

/// How the engine loads its model.
#[derive(Clone)]
pub enum Load {
    Normal,
    /// Sleeps this long first (/health says "loading").
    Slow(Duration),
    /// Fails (/health says "error").
    Fail,
    /// Loads normally on a backend that fails like a faulted GPU once the `Fault` trips.
    Faulty(Fault),
}

/// Server settings a test varies.
#[derive(Clone)]
pub struct Opts {
    pub load: Load,
    pub ctx: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    pub kv_tokens: usize,
    pub api_key: Option<String>,
    pub body_limit: usize,
    pub grace: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            load: Load::Normal,
            ctx: 256,
            max_batch: 8,
            max_queue: 32,
            kv_tokens: 2048,
            api_key: None,
            body_limit: 64 << 10,
            grace: Duration::from_secs(20),
        }
    }
}

/// A running server; dropping it shuts it down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub tokenizer: Arc<Tokenizer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts and waits until /health answers 200.
    pub fn start(o: Opts) -> TestServer {
        let server = Self::start_unready(o);
        let t0 = Instant::now();
        loop {
            if server.get("/health").status == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "server never got ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts without waiting for the engine.
    pub fn start_unready(o: Opts) -> TestServer {
        let file = Arc::new(ModelFile::open(&model_path()).expect("open model"));
        let tokenizer =
            Arc::new(Tokenizer::from_gguf(file.gguf().expect("gguf")).expect("tokenizer"));
        let sched = SchedConfig {
            max_seqs: o.max_batch,
            max_step_tokens: 64 + o.max_batch,
            prefill_chunk: 64,
            prefix_cache: true,
        };
        let opts = LoadOptions {
            kv_tokens: o.kv_tokens,
            max_batch_tokens: sched.max_step_tokens,
            ..LoadOptions::default()
        };
        let cfg = EngineConfig {
            candidates: realizar_engine::Candidates::Auto,
            ctx: o.ctx,
            max_queue: o.max_queue,
            sched,
        };
        // One spawn per backend type: the engine is generic over it.
        let (engine, _join) = match o.load.clone() {
            Load::Faulty(fault) => Engine::spawn(cfg, tokenizer.clone(), move || {
                load_faulty_cpu(file, &opts, fault).map_err(EngineError::from)
            }),
            load => Engine::spawn(cfg, tokenizer.clone(), move || match load {
                Load::Fail => Err(EngineError::Request("no weights today".into())),
                Load::Slow(d) => {
                    std::thread::sleep(d);
                    load_cpu_from(file, &opts).map_err(EngineError::from)
                }
                Load::Normal | Load::Faulty(_) => {
                    load_cpu_from(file, &opts).map_err(EngineError::from)
                }
            }),
        }
        .expect("engine");
        let state = AppState::new(
            engine,
            ServerConfig {
                api_key: o.api_key.clone(),
                model_name: "SmolLM2-135M-Instruct.Q4_1".into(),
                body_limit: o.body_limit,
                grace: o.grace,
            },
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                realizar_server::serve(listener, state, async move {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv().expect("address");
        TestServer {
            addr,
            tokenizer,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Sends SIGTERM's equivalent: draining starts.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `serve` to return.
    pub fn join(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Resp {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body,
        )
    }

    /// A gauge or counter from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        let text = r.text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        // The serve thread ends after draining; do not wait for it here.
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(str::to_string)
            .collect()
    }

    /// An error body of OpenAI's shape, its message.
    pub fn error_message(&self) -> String {
        let v = self.json();
        assert!(v["error"]["type"].is_string(), "not an OpenAI error: {v}");
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Writes a request (Connection: close).
pub fn send(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413) and stop reading before the whole body is sent.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Reads from a streaming response until `n` SSE events have arrived.
pub fn read_events(stream: &mut TcpStream, n: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while String::from_utf8_lossy(&got).matches("data:").count() < n {
        assert!(t0.elapsed() < Duration::from_secs(60), "stream stalled");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    send(&mut stream, method, path, headers, body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response (server closed with unread input) ends it too.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response to {method} {path}: {e}"),
        }
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}
