//! The route handlers. Generation requests are checked (`api`), submitted to the engine with
//! their own channel, and answered either by collecting the channel into one JSON body or by
//! turning it into Server-Sent Events that end with `data: [DONE]`. Dropping the SSE body
//! (client gone) drops the channel, which cancels the request in the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use realizar_engine::{EngineState, Event, Finish, FinishReason, TokenOut};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, ChatRequest, CompletionRequest, DetokenizeRequest, Job, TokenizeRequest};
use crate::openai::{chat_logprob_entry, finish_str, CompletionLogprobs, Kind, Reply};
use crate::{InflightGuard, ServerError, Shared};

type Body = Result<Bytes, BytesRejection>;

/// The body bytes, or 413 / 400.
fn body(st: &Shared, body: Body) -> Result<Bytes, ServerError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::TooLarge {
                limit: st.cfg.body_limit,
            }
        } else {
            ServerError::BadRequest(format!("cannot read the request body: {}", rej.body_text()))
        }
    })
}

pub async fn chat(State(st): State<Shared>, raw: Body) -> Result<Response, ServerError> {
    let bytes = body(&st, raw)?;
    let req: ChatRequest = api::parse(&bytes)?;
    let messages = req.messages()?;
    let template = st
        .template
        .as_ref()
        .map_err(|e| ServerError::BadRequest(format!("the model's chat template: {e}")))?;
    let text = template.render(&messages, true)?;
    let prompt = st.engine.tokenizer().encode(&text, false, true)?;
    let job = req.job(prompt, &st.engine)?;
    generate(st, job, Kind::Chat).await
}

pub async fn completions(State(st): State<Shared>, raw: Body) -> Result<Response, ServerError> {
    let bytes = body(&st, raw)?;
    let req: CompletionRequest = api::parse(&bytes)?;
    let job = req.job(&st.engine)?;
    generate(st, job, Kind::Completion).await
}

/// Marks a response whose log line is written when its generation ends (not by `gate`).
#[derive(Debug, Clone, Copy)]
pub struct LogsItself;

/// Time to first token and between tokens, into the histograms; writes the request's log
/// line when the generation ends or is abandoned.
struct Timer {
    t0: Instant,
    last: Option<Instant>,
    ttft_ms: Option<f64>,
    route: &'static str,
    tokens: usize,
    logged: bool,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.logged {
            tracing::info!(
                "POST {} 200 {:.1}ms cancelled by the client after {} tokens",
                self.route,
                self.t0.elapsed().as_secs_f64() * 1e3,
                self.tokens
            );
        }
    }
}

impl Timer {
    fn tick(&mut self, st: &Shared) {
        let now = Instant::now();
        match self.last {
            None => {
                st.metrics.ttft.observe(now - self.t0);
                self.ttft_ms = Some((now - self.t0).as_secs_f64() * 1e3);
            }
            Some(prev) => st.metrics.itl.observe(now - prev),
        }
        self.last = Some(now);
        self.tokens += 1;
        st.metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&mut self, st: &Shared, f: &Finish) {
        st.metrics.e2e.observe(self.t0.elapsed());
        self.logged = true;
        tracing::info!(
            "POST {} 200 {:.1}ms prompt {} completion {} ttft {:.1}ms finish {}",
            self.route,
            self.t0.elapsed().as_secs_f64() * 1e3,
            f.prompt_tokens,
            f.completion_tokens,
            self.ttft_ms.unwrap_or(0.0),
            finish_str(f.reason)
        );
        let c = match f.reason {
            FinishReason::Length => &st.metrics.finished_length,
            _ => &st.metrics.finished_stop,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

async fn generate(st: Shared, job: Job, kind: Kind) -> Result<Response, ServerError> {
    let t0 = Instant::now();
    let guard = InflightGuard::new(&st);
    let prompt_len = job.req.prompt.len();
    // A refused request (429, 503, 400) is logged by `gate` like any other error.
    let rx = st.engine.submit(job.req)?;
    st.metrics
        .prompt_tokens
        .fetch_add(prompt_len as u64, Ordering::Relaxed);
    let timer = Timer {
        t0,
        last: None,
        ttft_ms: None,
        route: match kind {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        },
        tokens: 0,
        logged: false,
    };
    let reply = Reply::new(kind, &st.cfg.model_name, job.include_usage && job.stream);
    let mut resp = if job.stream {
        stream(st, rx, reply, timer, guard)
    } else {
        collect(st, rx, reply, timer).await?
    };
    resp.extensions_mut().insert(LogsItself);
    Ok(resp)
}

/// A non-streaming answer: the whole channel in one body.
async fn collect(
    st: Shared,
    mut rx: UnboundedReceiver<Event>,
    reply: Reply,
    mut timer: Timer,
) -> Result<Response, ServerError> {
    let tok = st.engine.tokenizer().clone();
    let mut text = String::new();
    let mut chat_lp = Vec::new();
    let mut comp_lp = CompletionLogprobs::default();
    let mut any_lp = false;
    loop {
        match rx.recv().await {
            Some(Event::Token(t)) => {
                timer.tick(&st);
                any_lp |= t.logprobs.is_some();
                match reply.kind {
                    Kind::Chat => chat_lp.extend(chat_logprob_entry(&tok, &t)),
                    Kind::Completion => comp_lp.push(&tok, &t, text.chars().count()),
                }
                text.push_str(&t.text);
            }
            Some(Event::Done(f)) => {
                timer.done(&st, &f);
                let lp = any_lp.then(|| match reply.kind {
                    Kind::Chat => json!({"content": chat_lp, "refusal": null}),
                    Kind::Completion => comp_lp.take(),
                });
                return Ok(Json(reply.full(&text, &f, lp)).into_response());
            }
            Some(Event::Error(m)) => {
                timer.logged = true;
                return Err(ServerError::Internal(m));
            }
            None => {
                timer.logged = true;
                return Err(ServerError::Internal(
                    "the engine dropped the request".into(),
                ));
            }
        }
    }
}

/// The state of one SSE stream.
struct Streamer {
    st: Shared,
    rx: UnboundedReceiver<Event>,
    reply: Reply,
    timer: Timer,
    pending: VecDeque<SseEvent>,
    done: bool,
    /// Characters sent so far (completions' `text_offset`).
    chars: usize,
    _guard: InflightGuard,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl Streamer {
    fn on_token(&mut self, t: TokenOut) {
        self.timer.tick(&self.st);
        let tok = self.st.engine.tokenizer();
        let lp = match self.reply.kind {
            Kind::Chat => chat_logprob_entry(tok, &t).map(|e| json!({"content": [e]})),
            Kind::Completion => {
                let mut c = CompletionLogprobs::default();
                c.push(tok, &t, self.chars);
                (!c.is_empty()).then(|| c.take())
            }
        };
        // Tokens that release no text (held-back bytes or stop-string prefixes) send nothing
        // unless their log-probabilities were asked for.
        if !t.text.is_empty() || lp.is_some() {
            self.chars += t.text.chars().count();
            let v = self.reply.chunk_delta(&t.text, lp, None);
            self.pending.push_back(data(&v));
        }
    }

    fn on_done(&mut self, f: Finish) {
        self.timer.done(&self.st, &f);
        let last = self.reply.chunk_delta("", None, Some(finish_str(f.reason)));
        self.pending.push_back(data(&last));
        if self.reply.include_usage {
            self.pending.push_back(data(&self.reply.chunk_usage(&f)));
        }
        self.close();
    }

    fn on_error(&mut self, msg: String) {
        tracing::error!("{} failed mid-stream: {msg}", self.timer.route);
        self.timer.logged = true;
        let e = ServerError::Internal(msg);
        self.pending.push_back(data(&e.body()));
        self.close();
    }

    fn close(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

fn stream(
    st: Shared,
    rx: UnboundedReceiver<Event>,
    reply: Reply,
    timer: Timer,
    guard: InflightGuard,
) -> Response {
    let mut s = Streamer {
        st,
        rx,
        reply,
        timer,
        pending: VecDeque::new(),
        done: false,
        chars: 0,
        _guard: guard,
    };
    if s.reply.kind == Kind::Chat {
        let first = s.reply.chunk_role();
        s.pending.push_back(data(&first));
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(Event::Token(t)) => s.on_token(t),
                Some(Event::Done(f)) => s.on_done(f),
                Some(Event::Error(m)) => s.on_error(m),
                None => s.on_error("the engine dropped the request".into()),
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn models(State(st): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.cfg.model_name,
            "object": "model",
            "created": st.started,
            "owned_by": "realizar",
            "max_model_len": st.engine.context_len(),
        }],
    }))
}

pub async fn health(State(st): State<Shared>) -> Response {
    match st.engine.state() {
        EngineState::Ready => Json(json!({"status": "ok"})).into_response(),
        EngineState::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        EngineState::Failed => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "error": st.engine.error_message()})),
        )
            .into_response(),
    }
}

pub async fn metrics(State(st): State<Shared>) -> Response {
    let text = st.metrics.render(&st.engine.stats(), st.engine.state());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn tokenize(State(st): State<Shared>, raw: Body) -> Result<Json<Value>, ServerError> {
    let bytes = body(&st, raw)?;
    let req: TokenizeRequest = api::parse(&bytes)?;
    let text = req.content.or(req.prompt).ok_or_else(|| {
        ServerError::BadRequest("'content' (the text to tokenize) is required".into())
    })?;
    let tokens = st
        .engine
        .tokenizer()
        .encode(&text, req.add_special.unwrap_or(false), true)?;
    Ok(Json(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": st.engine.context_len(),
    })))
}

pub async fn detokenize(State(st): State<Shared>, raw: Body) -> Result<Json<Value>, ServerError> {
    let bytes = body(&st, raw)?;
    let req: DetokenizeRequest = api::parse(&bytes)?;
    let vocab = st.engine.vocab_size();
    let ids = req
        .tokens
        .iter()
        .map(|&t| match u32::try_from(t) {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => Err(ServerError::BadRequest(format!(
                "token id {t} is outside the vocabulary of {vocab} tokens"
            ))),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(Json(json!({"content": st.engine.tokenizer().decode(&ids)})))
}

pub async fn not_found(uri: Uri) -> ServerError {
    ServerError::NotFound(uri.path().to_string())
}

pub async fn method_not_allowed(method: axum::http::Method) -> ServerError {
    ServerError::MethodNotAllowed(method.to_string())
}
