//! realizar-server: the OpenAI-compatible HTTP server (axum), a library separate from the
//! binary. It talks to the engine only through the engine's request channel.
//!
//! This crate so far holds the error type and the OpenAI error body every route will answer
//! with; the routes, SSE streaming and the engine loop come with the server issue.

use serde_json::{json, Value};

/// Errors a request can meet, each mapped to an HTTP status and OpenAI's error JSON shape.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the server is busy; retry later")]
    Overloaded,
    #[error("the model is not ready")]
    Unavailable,
    #[error(transparent)]
    Engine(#[from] realizar_engine::EngineError),
}

impl ServerError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ServerError::BadRequest(_) => 400,
            ServerError::Unauthorized => 401,
            ServerError::TooLarge { .. } => 413,
            ServerError::Overloaded => 429,
            ServerError::Unavailable => 503,
            ServerError::Engine(realizar_engine::EngineError::Request(_))
            | ServerError::Engine(realizar_engine::EngineError::Sampling(_))
            | ServerError::Engine(realizar_engine::EngineError::TemplateException(_)) => 400,
            ServerError::Engine(_) => 500,
        }
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        let kind = match self.status() {
            400 | 413 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "server_error",
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": null}})
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
            ServerError::Overloaded.body()["error"]["type"],
            "rate_limit_error"
        );
        let eng = ServerError::Engine(realizar_engine::EngineError::Request(
            "prompt too long".into(),
        ));
        assert_eq!(eng.status(), 400);
    }
}
