//! The HTTP API end to end on the real default model: happy paths of both generation routes
//! (streaming and not), every bad-input class, 401, 413, 429, client disconnects and graceful
//! shutdown.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{read_events, request, send, Load, Opts, Resp, TestServer};
use serde_json::{json, Value};

/// One server for the tests that do not need a configuration of their own.
fn shared() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| TestServer::start(Opts::default()))
}

fn chat_body(extra: Value) -> Value {
    let mut v = json!({
        "model": "any",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 6,
        "temperature": 0,
    });
    merge(&mut v, extra);
    v
}

fn completion_body(extra: Value) -> Value {
    let mut v = json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0});
    merge(&mut v, extra);
    v
}

fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// The text and final chunks of an SSE answer; checks it ends with [DONE].
fn stream_text(r: &Resp, chat: bool) -> (String, Vec<Value>) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    let mut text = String::new();
    for c in &chunks {
        if let Some(choice) = c["choices"].get(0) {
            let piece = if chat {
                &choice["delta"]["content"]
            } else {
                &choice["text"]
            };
            text.push_str(piece.as_str().unwrap_or_default());
        }
    }
    (text, chunks)
}

#[test]
fn chat_completions_streaming_and_not() {
    let s = shared();
    let r = s.post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(!text.is_empty());
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) > 5);
    let n = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!((1..=6).contains(&n), "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + n)
    );
    let reason = v["choices"][0]["finish_reason"].as_str().unwrap_or("");
    assert!(reason == "stop" || reason == "length", "{reason}");

    // Streaming gives the same greedy text, a role chunk first, a finish chunk, usage last.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    let (streamed, chunks) = stream_text(&r, true);
    assert_eq!(streamed, text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], *usage);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], reason);

    // Log-probabilities in the chat shape.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(json!({"logprobs": true, "top_logprobs": 3, "max_completion_tokens": 3})),
    );
    let v = r.json();
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0)
    );
    for e in content {
        assert!(e["logprob"].as_f64().is_some_and(|l| l <= 0.0), "{e}");
        assert!(e["token"].is_string() && e["bytes"].is_array());
        let top = e["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
    }
}

#[test]
fn completions_streaming_and_not_with_stop_and_token_prompts() {
    let s = shared();
    let r = s.post("/v1/completions", &completion_body(json!({"logprobs": 2})));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().expect("text").to_string();
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(6));
    assert_eq!(lp["token_logprobs"].as_array().map(Vec::len), Some(6));
    assert_eq!(lp["text_offset"][0], 0);
    for top in lp["top_logprobs"].as_array().expect("top") {
        assert_eq!(top.as_object().map(|o| o.len()), Some(2), "{top}");
    }

    let r = s.post("/v1/completions", &completion_body(json!({"stream": true})));
    let (streamed, chunks) = stream_text(&r, false);
    assert_eq!(streamed, text);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks[chunks.len() - 1]["choices"][0]["finish_reason"],
        "length"
    );

    // The same prompt as token ids gives the same text.
    let ids = s
        .post(
            "/tokenize",
            &json!({"content": "The capital of France is", "add_special": true}),
        )
        .json()["tokens"]
        .clone();
    let r = s.post("/v1/completions", &completion_body(json!({"prompt": ids})));
    assert_eq!(r.json()["choices"][0]["text"], text.as_str());
    let r = s.post(
        "/v1/completions",
        &completion_body(json!({"prompt": [ids]})),
    );
    assert_eq!(r.json()["choices"][0]["text"], text.as_str());

    // A stop string ends the text before it, with finish_reason "stop".
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expect = &text[..text.find(&stop).expect("stop in text")];
    for stream in [false, true] {
        let r = s.post(
            "/v1/completions",
            &completion_body(json!({"stop": [stop.clone()], "stream": stream})),
        );
        let (got, reason) = if stream {
            let (t, chunks) = stream_text(&r, false);
            (
                t,
                chunks[chunks.len() - 1]["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let v = r.json();
            (
                v["choices"][0]["text"].as_str().unwrap_or("").to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expect, "stop {stop:?} in {text:?}");
        assert_eq!(reason, "stop");
    }

    // Sampling fields are accepted; a seed makes sampling reproducible.
    let sampled = json!({"temperature": 0.9, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.5,
        "repetition_penalty": 1.1, "logit_bias": {"11": -100}});
    let a = s
        .post("/v1/completions", &completion_body(sampled.clone()))
        .json();
    let b = s.post("/v1/completions", &completion_body(sampled)).json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

#[test]
fn streamed_text_never_splits_a_utf8_character() {
    let s = shared();
    // The model answers with crabs: each 4-byte character spans several byte-level tokens.
    let body =
        completion_body(json!({"prompt": "Emoji story: \u{1f980}\u{1f980}", "max_tokens": 12}));
    let full = s.post("/v1/completions", &body).json()["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(full.chars().any(|c| c.len_utf8() == 4), "{full:?}");
    assert!(!full.contains('\u{fffd}'), "{full:?}");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let r = s.post("/v1/completions", &streamed);
    let (text, chunks) = stream_text(&r, false);
    assert_eq!(text, full);
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    // Tokens that end inside a character send nothing; no piece holds a broken one.
    assert!(pieces.len() < 12, "{pieces:?}");
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
}

#[test]
fn side_routes_and_metrics() {
    let s = shared();
    let h = s.get("/health");
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    let m = s.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let t = s
        .post("/tokenize", &json!({"content": "Hello world"}))
        .json();
    let ids = t["tokens"].clone();
    assert_eq!(t["count"].as_u64(), ids.as_array().map(|a| a.len() as u64));
    let d = s.post("/detokenize", &json!({"tokens": ids})).json();
    assert_eq!(d["content"], "Hello world");
    let r = s.get("/nope");
    assert_eq!(r.status, 404);
    r.error_message();
    let r = s.get("/v1/completions");
    assert_eq!(r.status, 405);
    r.error_message();

    s.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 2})),
    );
    let text = s.get("/metrics").text();
    for name in [
        "realizar_requests_total{status=\"200\"}",
        "realizar_prompt_tokens_total",
        "realizar_generation_tokens_total",
        "realizar_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "realizar_inter_token_latency_seconds_count",
        "realizar_queue_depth",
        "realizar_running_sequences",
        "realizar_kv_blocks_used",
        "realizar_kv_blocks_total",
        "realizar_kv_cache_usage_ratio",
        "realizar_preemptions_total",
        "realizar_prefix_cache_queried_tokens_total",
        "realizar_prefix_cache_hit_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(s.metric("realizar_time_to_first_token_seconds_count") >= 1.0);
    assert!(s.metric("realizar_generation_tokens_total") >= 2.0);
    assert_eq!(s.metric("realizar_kv_blocks_total"), 128.0);

    // The same long prompt twice: the second finds the first's full blocks in the prefix cache
    // (16-token blocks, the block of its last token always computed).
    let prompt = "The prefix cache test: a prompt long enough to fill a few blocks of the KV \
                  cache, with words that no other test sends, so that its blocks are its own.";
    let n = s
        .post(
            "/tokenize",
            &json!({"content": prompt, "add_special": true}),
        )
        .json()["count"]
        .as_u64()
        .expect("count") as f64;
    assert!(n > 32.0, "{n}");
    let hits = || s.metric("realizar_prefix_cache_hit_tokens_total");
    let queried = || s.metric("realizar_prefix_cache_queried_tokens_total");
    let body = completion_body(json!({"prompt": prompt, "max_tokens": 1}));
    assert_eq!(s.post("/v1/completions", &body).status, 200);
    let (h0, q0) = (hits(), queried());
    assert_eq!(s.post("/v1/completions", &body).status, 200);
    assert!(hits() - h0 >= ((n - 1.0) / 16.0).floor() * 16.0);
    assert!(queried() - q0 >= n);
    assert!(hits() <= queried());
}

#[test]
fn bad_input_gets_4xx_with_an_openai_error() {
    let s = shared();
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let long_prompt = "word ".repeat(200);
    let n_long = s
        .post(
            "/tokenize",
            &json!({"content": long_prompt, "add_special": true}),
        )
        .json()["count"]
        .as_u64()
        .expect("count");
    let cases: Vec<(&str, Vec<u8>, u16, String)> = vec![
        (
            chat,
            b"{\"messages\": [".to_vec(),
            400,
            "invalid JSON".into(),
        ),
        (chat, b"".to_vec(), 400, "empty".into()),
        (chat, b"[1, 2]".to_vec(), 400, "invalid JSON".into()),
        (
            chat,
            br#"{"messages": "hi"}"#.to_vec(),
            400,
            "invalid JSON".into(),
        ),
        (chat, b"{}".to_vec(), 400, "messages".into()),
        (
            chat,
            br#"{"messages": []}"#.to_vec(),
            400,
            "must not be empty".into(),
        ),
        (
            chat,
            br#"{"messages": [{"role": "wizard", "content": "x"}]}"#.to_vec(),
            400,
            "wizard".into(),
        ),
        (
            chat,
            br#"{"messages": [{"role": "user"}]}"#.to_vec(),
            400,
            "content".into(),
        ),
        (
            chat,
            br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#.to_vec(),
            400,
            "text content".into(),
        ),
        (
            chat,
            chat_body(json!({"temperature": -1}))
                .to_string()
                .into_bytes(),
            400,
            "temperature".into(),
        ),
        (
            chat,
            chat_body(json!({"temperature": "hot"}))
                .to_string()
                .into_bytes(),
            400,
            "invalid JSON".into(),
        ),
        (
            chat,
            chat_body(json!({"top_p": 0})).to_string().into_bytes(),
            400,
            "top_p".into(),
        ),
        (
            chat,
            chat_body(json!({"top_p": 1.5})).to_string().into_bytes(),
            400,
            "top_p".into(),
        ),
        (
            chat,
            chat_body(json!({"n": 2})).to_string().into_bytes(),
            400,
            "n must be 1".into(),
        ),
        (
            chat,
            chat_body(json!({"max_tokens": 0})).to_string().into_bytes(),
            400,
            "max_tokens".into(),
        ),
        (
            chat,
            chat_body(json!({"max_completion_tokens": -3}))
                .to_string()
                .into_bytes(),
            400,
            "max_completion_tokens".into(),
        ),
        (
            chat,
            chat_body(json!({"top_logprobs": 30, "logprobs": true}))
                .to_string()
                .into_bytes(),
            400,
            "top_logprobs".into(),
        ),
        (
            chat,
            chat_body(json!({"presence_penalty": 5}))
                .to_string()
                .into_bytes(),
            400,
            "presence_penalty".into(),
        ),
        (
            chat,
            chat_body(json!({"logit_bias": {"49152": 1}}))
                .to_string()
                .into_bytes(),
            400,
            "49152".into(),
        ),
        (
            chat,
            chat_body(json!({"logit_bias": {"abc": 1}}))
                .to_string()
                .into_bytes(),
            400,
            "abc".into(),
        ),
        (
            comp,
            completion_body(json!({"max_tokens": -1}))
                .to_string()
                .into_bytes(),
            400,
            "max_tokens".into(),
        ),
        (
            comp,
            completion_body(json!({"max_tokens": "ten"}))
                .to_string()
                .into_bytes(),
            400,
            "invalid JSON".into(),
        ),
        (
            comp,
            completion_body(json!({"prompt": [1, 49152]}))
                .to_string()
                .into_bytes(),
            400,
            "49152".into(),
        ),
        (
            comp,
            completion_body(json!({"prompt": [-1]}))
                .to_string()
                .into_bytes(),
            400,
            "-1".into(),
        ),
        (
            comp,
            completion_body(json!({"prompt": ["a", "b"]}))
                .to_string()
                .into_bytes(),
            400,
            "one prompt".into(),
        ),
        (
            comp,
            completion_body(json!({"prompt": ""}))
                .to_string()
                .into_bytes(),
            400,
            "empty".into(),
        ),
        (
            comp,
            completion_body(json!({"prompt": 5}))
                .to_string()
                .into_bytes(),
            400,
            "invalid JSON".into(),
        ),
        (
            comp,
            completion_body(json!({"logprobs": 99}))
                .to_string()
                .into_bytes(),
            400,
            "logprobs".into(),
        ),
        (
            comp,
            b"{\"prompt\": \"caf\xc3\x28\", \"max_tokens\": 1}".to_vec(),
            400,
            "invalid JSON".into(),
        ),
        (
            comp,
            b"{\"prompt\": \"\\ud800\", \"max_tokens\": 1}".to_vec(),
            400,
            "invalid JSON".into(),
        ),
        // prompt + max_tokens beyond the context of 256: both numbers are named.
        (
            comp,
            json!({"prompt": long_prompt, "max_tokens": 100})
                .to_string()
                .into_bytes(),
            400,
            format!("{n_long} in the prompt, 100 for the completion"),
        ),
        (
            comp,
            json!({"prompt": long_prompt.repeat(2)})
                .to_string()
                .into_bytes(),
            400,
            "context length is 256".into(),
        ),
        (
            chat,
            chat_body(json!({"max_tokens": 300}))
                .to_string()
                .into_bytes(),
            400,
            "300 for the completion".into(),
        ),
        (
            "/detokenize",
            br#"{"tokens": [99999999]}"#.to_vec(),
            400,
            "99999999".into(),
        ),
        (
            "/tokenize",
            br#"{"text": 1}"#.to_vec(),
            400,
            "content".into(),
        ),
    ];
    for (path, body, status, needle) in &cases {
        let r = s.post_raw(path, body);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(r.status, *status, "{path} {shown}: {}", r.text());
        let msg = r.error_message();
        assert!(
            msg.contains(needle.as_str()),
            "{path} {shown}: {msg:?} lacks {needle:?}"
        );
    }
    // Unknown fields are ignored, as OpenAI does.
    let r = s.post(
        comp,
        &completion_body(json!({"max_tokens": 1, "foo": {"bar": [1]}, "user": "u"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // No crash: still healthy.
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn body_over_the_limit_is_413() {
    let s = shared();
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(100 << 10));
    let r = s.post_raw("/v1/completions", big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error_message().contains("larger than"));
}

#[test]
fn api_key_is_required_except_for_health() {
    let s = TestServer::start(Opts {
        api_key: Some("sekret".into()),
        ..Opts::default()
    });
    let get = |path: &str, auth: Option<&str>| {
        let h = auth.map(|a| ("Authorization", a));
        request(s.addr, "GET", path, h.as_slice(), b"")
    };
    assert_eq!(get("/health", None).status, 200);
    let r = get("/v1/models", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(get("/v1/models", Some("Bearer wrong")).status, 401);
    assert_eq!(get("/metrics", Some("sekret")).status, 401);
    assert_eq!(get("/v1/models", Some("Bearer sekret")).status, 200);
    let r = s.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 1})),
    );
    assert_eq!(r.status, 401);
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sekret")],
        completion_body(json!({"max_tokens": 1}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let s = TestServer::start(Opts {
        max_batch: 1,
        max_queue: 1,
        ..Opts::default()
    });
    let addr = s.addr;
    let body = completion_body(json!({"max_tokens": 16, "stream": true})).to_string();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                request(addr, "POST", "/v1/completions", &[], body.as_bytes())
            })
        })
        .collect();
    let resps: Vec<Resp> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let ok = resps.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Resp> = resps.iter().filter(|r| r.status == 429).collect();
    assert!(
        ok >= 1 && !busy.is_empty(),
        "{:?}",
        resps.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ok + busy.len(), 4);
    for r in busy {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    }
    assert_eq!(s.metric("realizar_queue_depth"), 0.0);
    assert!(s.metric("realizar_requests_total{status=\"429\"}") >= 1.0);
}

fn wait_for(s: &TestServer, name: &str, want: f64) {
    let t0 = Instant::now();
    while s.metric(name) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name} stayed at {} (want {want})",
            s.metric(name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_disconnects_frees_its_kv_blocks() {
    let s = TestServer::start(Opts::default());
    assert_eq!(s.metric("realizar_kv_blocks_used"), 0.0);
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        let body = chat_body(
            json!({"max_tokens": 200, "stream": true, "temperature": 1.0, "ignore_eos": true}),
        );
        send(
            &mut c,
            "POST",
            "/v1/chat/completions",
            &[],
            body.to_string().as_bytes(),
        );
        conns.push(c);
    }
    for c in &mut conns {
        let head = read_events(c, 3);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    assert!(s.metric("realizar_kv_blocks_used") > 0.0);
    assert_eq!(s.metric("realizar_running_sequences"), 2.0);
    // Both clients hang up mid-stream.
    for c in conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    wait_for(&s, "realizar_kv_blocks_used", 0.0);
    wait_for(&s, "realizar_running_sequences", 0.0);
    assert!(s.metric("realizar_requests_finished_total{reason=\"cancelled\"}") >= 2.0);
    // The server goes on serving.
    let r = s.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 2})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.metric("realizar_kv_blocks_used"), 0.0);
}

#[test]
fn shutdown_refuses_new_requests_and_finishes_in_flight_ones() {
    let mut s = TestServer::start(Opts::default());
    let mut c = TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = completion_body(json!({"max_tokens": 24, "stream": true, "ignore_eos": true}));
    send(
        &mut c,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let mut got = read_events(&mut c, 1).into_bytes();
    s.begin_shutdown();
    // New requests get 503 while the stream goes on.
    let t0 = Instant::now();
    loop {
        let r = s.get("/v1/models");
        if r.status == 503 {
            r.error_message();
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never refused");
    }
    assert_eq!(s.get("/health").status, 503);
    c.read_to_end(&mut got).expect("rest of the stream");
    let r = common::parse_response(&got);
    let data = r.sse_data();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    let finish: Value = serde_json::from_str(&data[data.len() - 2]).expect("json");
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    s.join();
}

#[test]
fn health_is_503_while_loading_and_after_an_engine_failure() {
    let s = TestServer::start_unready(Opts {
        load: Load::Slow(Duration::from_millis(1500)),
        ..Opts::default()
    });
    let h = s.get("/health");
    assert_eq!(
        (h.status, h.json()["status"].clone()),
        (503, json!("loading"))
    );
    let r = s.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 1})),
    );
    assert_eq!(r.status, 503);
    assert!(r.error_message().contains("loading"));
    let t0 = Instant::now();
    while s.get("/health").status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let f = TestServer::start_unready(Opts {
        load: Load::Fail,
        ..Opts::default()
    });
    let t0 = Instant::now();
    loop {
        let h = f.get("/health");
        if h.json()["status"] == "error" {
            assert_eq!(h.status, 503);
            assert!(h.text().contains("no weights today"), "{}", h.text());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = f.post(
        "/v1/completions",
        &completion_body(json!({"max_tokens": 1})),
    );
    assert_eq!(r.status, 503);
    assert!(r.error_message().contains("no weights today"));
    assert_eq!(f.metric("realizar_engine_ready"), 0.0);
}
