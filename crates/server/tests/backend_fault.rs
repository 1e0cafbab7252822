//! A backend that starts failing mid-run, as a GPU does after a fault (the CUDA backend then
//! returns a sticky error from every fallible op), on the real server and the real default
//! model: the engine fails the requests in flight, marks itself failed (/health 503) and refuses
//! new requests, instead of serving garbage.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::faulty::{Fault, FAULT_TEXT};
use common::{parse_response, read_events, request, send, Load, Opts, TestServer};
use serde_json::{json, Value};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Far more tokens than are generated before the fault trips: the requests are still running.
const LONG: usize = 900;

fn completion(max_tokens: usize, stream: bool) -> Value {
    json!({
        "prompt": "The capital of France is",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": stream,
    })
}

/// Polls until `done` holds, failing after 60 s with `what`.
fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_sticky_backend_error_mid_run_fails_in_flight_requests_and_marks_the_engine_failed() {
    let fault = Fault::default();
    let s = TestServer::start(Opts {
        load: Load::Faulty(fault.clone()),
        ctx: 1024,
        kv_tokens: 4096,
        ..Opts::default()
    });

    // 1. Before the fault the backend computes as the CPU does.
    let r = s.post("/v1/completions", &completion(6, false));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");

    // 2. Two long requests in flight, one streaming and one not; the fault trips once the
    // stream has sent tokens and both are running.
    let mut c = TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = completion(LONG, true).to_string();
    send(&mut c, "POST", "/v1/completions", &[JSON], body.as_bytes());
    let mut got = read_events(&mut c, 3).into_bytes();
    let addr = s.addr;
    let body = completion(LONG, false).to_string();
    let whole = std::thread::spawn(move || {
        request(addr, "POST", "/v1/completions", &[JSON], body.as_bytes())
    });
    poll("the second request never ran", || {
        s.metric("realizar_running_sequences") == 2.0
    });
    assert_eq!(fault.steps_after_trip(), 0);
    fault.trip();

    // The stream ends: its tokens, then OpenAI's error body as an event, then [DONE].
    c.read_to_end(&mut got).expect("the rest of the stream");
    let r = parse_response(&got);
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    let n = data.len();
    assert!(n >= 5, "{}", r.text());
    assert_eq!(data[n - 1], "[DONE]", "{}", r.text());
    let err: Value = serde_json::from_str(&data[n - 2]).expect("error event json");
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("forward pass failed") && msg.contains(FAULT_TEXT),
        "{msg}"
    );
    // Everything before it is an unfinished token chunk: no tokens after the fault's error,
    // and the stream did not run to its length.
    let chunks = &data[..n - 2];
    assert!(chunks.len() < LONG, "{} chunks", chunks.len());
    for d in chunks {
        let v: Value = serde_json::from_str(d).expect("chunk json");
        assert_eq!(v["object"], "text_completion", "{v}");
        assert!(v["choices"][0]["text"].is_string(), "{v}");
        assert!(v["choices"][0]["finish_reason"].is_null(), "{v}");
    }
    // The request that was not streaming gets a 500 with OpenAI's error shape.
    let r = whole.join().expect("request thread");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert!(r.error_message().contains(FAULT_TEXT), "{}", r.text());

    // 3. The engine is failed, saying why; new requests get 503, never a generation.
    poll("/health never said error", || {
        s.get("/health").json()["status"] == "error"
    });
    let h = s.get("/health");
    assert_eq!(h.status, 503);
    let e = h.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains(FAULT_TEXT), "{}", h.text());
    for (path, body) in [
        ("/v1/completions", completion(4, false)),
        ("/v1/completions", completion(4, true)),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        ),
    ] {
        let r = s.post(path, &body);
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["type"], "service_unavailable");
        assert!(r.error_message().contains(FAULT_TEXT), "{}", r.text());
    }
    // The failed backend was not asked for another step: the engine stopped using it.
    assert!(
        fault.steps_after_trip() <= 1,
        "{}",
        fault.steps_after_trip()
    );

    // 4. /metrics still answers, says the engine is not ready, and its gauges are cleared.
    assert_eq!(s.metric("realizar_engine_ready"), 0.0);
    assert!(s.metric("realizar_requests_total{status=\"500\"}") >= 1.0);
    assert!(s.metric("realizar_requests_total{status=\"503\"}") >= 3.0);
    // Nothing runs any more and no KV block is held: the gauges say so.
    assert_eq!(s.metric("realizar_running_sequences"), 0.0);
    assert_eq!(s.metric("realizar_kv_blocks_used"), 0.0);
}
