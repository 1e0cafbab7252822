//! realizar-server: the OpenAI-compatible HTTP server (axum), a library separate from the
//! binary. It talks to the engine only through `EngineHandle::submit` and the per-request
//! response channel it returns, which the routes turn into JSON or SSE.
//!
//! Modules: `api` (request bodies and their checks), `routes` (the handlers), `openai`
//! (response and stream-chunk shapes), `metrics` (Prometheus text). This file holds the error
//! type, the shared state, the middleware (API key, draining, per-request log line, status
//! counts) and `serve` with its graceful shutdown.

pub mod api;
pub mod metrics;
pub mod openai;
pub mod routes;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use realizar_engine::{ChatTemplate, EngineHandle, SubmitError};
use serde_json::{json, Value};

use crate::metrics::Metrics;

/// Errors a request can meet, each mapped to an HTTP status and OpenAI's error JSON shape.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the server is busy ({0} requests waiting); retry later")]
    Overloaded(usize),
    #[error("the model is not ready: {0}")]
    Unavailable(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Engine(#[from] realizar_engine::EngineError),
}

impl ServerError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ServerError::BadRequest(_) => 400,
            ServerError::Unauthorized => 401,
            ServerError::NotFound(_) => 404,
            ServerError::MethodNotAllowed(_) => 405,
            ServerError::TooLarge { .. } => 413,
            ServerError::Overloaded(_) => 429,
            ServerError::Unavailable(_) | ServerError::ShuttingDown => 503,
            ServerError::Internal(_) => 500,
            ServerError::Engine(realizar_engine::EngineError::Request(_))
            | ServerError::Engine(realizar_engine::EngineError::Sampling(_))
            | ServerError::Engine(realizar_engine::EngineError::TemplateException(_)) => 400,
            ServerError::Engine(_) => 500,
        }
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        let kind = match self.status() {
            400 | 405 | 413 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "server_error",
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": null}})
    }
}

impl From<SubmitError> for ServerError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull(n) => ServerError::Overloaded(n),
            SubmitError::Unavailable(m) => ServerError::Unavailable(m),
            SubmitError::Invalid(e) => ServerError::Engine(e),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.body())).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests other than /health must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The id /v1/models reports.
    pub model_name: String,
    /// Largest request body in bytes (413 beyond).
    pub body_limit: usize,
    /// How long in-flight requests may run on after SIGTERM / Ctrl-C.
    pub grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            model_name: "realizar".into(),
            body_limit: 4 << 20,
            grace: Duration::from_secs(30),
        }
    }
}

/// What every handler sees.
pub struct AppState {
    pub engine: EngineHandle,
    /// `None` when the model's template fails to compile (chat requests then get the reason).
    pub template: Result<ChatTemplate, String>,
    pub cfg: ServerConfig,
    pub metrics: Metrics,
    /// Set on SIGTERM / Ctrl-C: new requests get 503.
    pub draining: AtomicBool,
    /// Generation requests not yet finished (streams included).
    pub inflight: AtomicUsize,
    /// Unix time the server started (the `created` of /v1/models).
    pub started: u64,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(engine: EngineHandle, cfg: ServerConfig) -> Shared {
        let template = ChatTemplate::for_tokenizer(engine.tokenizer()).map_err(|e| e.to_string());
        Arc::new(AppState {
            engine,
            template,
            cfg,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            started: openai::unix_now(),
        })
    }
}

/// Counts a generation request as in flight until dropped.
pub struct InflightGuard(Shared);

impl InflightGuard {
    pub fn new(st: &Shared) -> Self {
        st.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(st.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The routes with their middleware.
pub fn router(st: Shared) -> Router {
    let limit = st.cfg.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(st.clone(), gate))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(st)
}

/// API key, draining, status counts and the one log line per request.
async fn gate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let open = path == "/health";
    let resp = if !open && !authorized(&st, &req) {
        ServerError::Unauthorized.into_response()
    } else if st.draining.load(Ordering::SeqCst) && path != "/metrics" {
        ServerError::ShuttingDown.into_response()
    } else {
        next.run(req).await
    };
    let status = resp.status().as_u16();
    st.metrics.count_status(status);
    // Generation responses write their own line when the generation ends.
    if resp.extensions().get::<routes::LogsItself>().is_none() {
        tracing::info!(
            "{method} {path} {status} {:.1}ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    resp
}

fn authorized(st: &AppState, req: &Request) -> bool {
    let Some(key) = &st.cfg.api_key else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        // Compare every byte so the time taken does not reveal the matching prefix.
        Some(g) => {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        None => false,
    }
}

/// Serves on `listener` until `shutdown` resolves; then answers 503 to new requests, lets
/// in-flight ones finish for up to the grace period, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    st: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(st.clone());
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = st.clone();
    tokio::spawn(async move {
        shutdown.await;
        drain_state.draining.store(true, Ordering::SeqCst);
        let grace = drain_state.cfg.grace;
        tracing::info!(
            "shutting down: refusing new requests, waiting up to {:.0}s for {} in flight",
            grace.as_secs_f64(),
            drain_state.inflight.load(Ordering::SeqCst)
        );
        let t0 = Instant::now();
        while drain_state.inflight.load(Ordering::SeqCst) > 0 && t0.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = drained_tx.send(());
        // Connections that still linger get one more second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = deadline_tx.send(());
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = drained_rx.await;
    });
    tokio::select! {
        r = server => r,
        _ = deadline_rx => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_status_and_openai_shape() {
        let e = ServerError::BadRequest("temperature must be >= 0".into());
        assert_eq!(e.status(), 400);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.body()["error"]["message"], "temperature must be >= 0");
        assert_eq!(ServerError::Unauthorized.status(), 401);
        assert_eq!(ServerError::TooLarge { limit: 10 }.status(), 413);
        assert_eq!(
            ServerError::Overloaded(3).body()["error"]["type"],
            "rate_limit_error"
        );
        let eng = ServerError::Engine(realizar_engine::EngineError::Request(
            "prompt too long".into(),
        ));
        assert_eq!(eng.status(), 400);
        let q: ServerError = SubmitError::QueueFull(4).into();
        assert_eq!(q.status(), 429);
        let resp = q.into_response();
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
}
