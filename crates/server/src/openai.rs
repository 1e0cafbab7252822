//! OpenAI's response shapes: completions, chat completions, their stream chunks, usage and
//! log-probabilities, each in the form that endpoint uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use realizar_engine::{Finish, FinishReason, TokenOut, Tokenizer};
use serde_json::{json, Map, Value};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id (`chatcmpl-...`, `cmpl-...`): unique within the process, unlikely to
/// repeat across restarts.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:x}{nanos:08x}{n:x}", unix_now())
}

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

pub fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// JSON has no infinities; OpenAI reports impossible tokens with a large negative number.
fn lp(v: f32) -> f64 {
    if v.is_finite() {
        f64::from(v)
    } else {
        -9999.0
    }
}

/// A token's text and bytes for log-probability entries.
fn piece(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat log-probabilities: one `content` entry per token.
pub fn chat_logprob_entry(tok: &Tokenizer, t: &TokenOut) -> Option<Value> {
    let l = t.logprobs.as_ref()?;
    let (text, bytes) = piece(tok, t.id);
    let top: Vec<Value> = l
        .top
        .iter()
        .map(|&(id, v)| {
            let (text, bytes) = piece(tok, id);
            json!({"token": text, "logprob": lp(v), "bytes": bytes})
        })
        .collect();
    Some(json!({"token": text, "logprob": lp(l.logprob), "bytes": bytes, "top_logprobs": top}))
}

/// Completions log-probabilities: parallel arrays over the tokens.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl CompletionLogprobs {
    /// Adds a token that starts at character `offset` of the completion text.
    pub fn push(&mut self, tok: &Tokenizer, t: &TokenOut, offset: usize) {
        let Some(l) = &t.logprobs else {
            return;
        };
        self.tokens.push(Value::String(piece(tok, t.id).0));
        self.token_logprobs.push(json!(lp(l.logprob)));
        let mut top = Map::new();
        for &(id, v) in &l.top {
            top.insert(piece(tok, id).0, json!(lp(v)));
        }
        self.top_logprobs.push(Value::Object(top));
        self.text_offset.push(json!(offset));
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn take(&mut self) -> Value {
        let v = json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        });
        *self = CompletionLogprobs::default();
        v
    }
}

/// The fixed parts of one response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Streams: every chunk carries `"usage": null` until the usage chunk.
    pub include_usage: bool,
}

impl Reply {
    pub fn new(kind: Kind, model: &str, include_usage: bool) -> Self {
        Reply {
            kind,
            id: new_id(match kind {
                Kind::Chat => "chatcmpl",
                Kind::Completion => "cmpl",
            }),
            created: unix_now(),
            model: model.to_string(),
            include_usage,
        }
    }

    /// The whole answer of a non-streaming request.
    pub fn full(&self, text: &str, finish: &Finish, logprobs: Option<Value>) -> Value {
        let reason = finish_str(finish.reason);
        let lp = logprobs.unwrap_or(Value::Null);
        match self.kind {
            Kind::Chat => json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": lp,
                    "finish_reason": reason,
                }],
                "usage": usage(finish),
            }),
            Kind::Completion => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "text": text,
                    "logprobs": lp,
                    "finish_reason": reason,
                }],
                "usage": usage(finish),
            }),
        }
    }

    fn chunk(&self, choice: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": match self.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The first chat chunk, announcing the role.
    pub fn chunk_role(&self) -> Value {
        self.chunk(json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }))
    }

    /// A chunk with new text (and its log-probabilities), or the last one with the reason.
    pub fn chunk_delta(&self, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        let lp = logprobs.unwrap_or(Value::Null);
        match self.kind {
            Kind::Chat => {
                let delta = if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                self.chunk(json!({
                    "index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish,
                }))
            }
            Kind::Completion => self.chunk(json!({
                "index": 0, "text": text, "logprobs": lp, "finish_reason": finish,
            })),
        }
    }

    /// The closing chunk of `stream_options.include_usage`: no choices, the usage.
    pub fn chunk_usage(&self, finish: &Finish) -> Value {
        let mut v = self.chunk(Value::Null);
        v["choices"] = json!([]);
        v["usage"] = usage(finish);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let f = Finish {
            reason: FinishReason::Length,
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let r = Reply::new(Kind::Chat, "m", true);
        let full = r.full("hi", &f, None);
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(full["choices"][0]["message"]["content"], "hi");
        assert_eq!(full["choices"][0]["finish_reason"], "length");
        assert_eq!(full["usage"]["total_tokens"], 5);
        assert!(r.chunk_role()["usage"].is_null());
        assert_eq!(r.chunk_usage(&f)["choices"], json!([]));
        let last = r.chunk_delta("", None, Some("stop"));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let c = Reply::new(Kind::Completion, "m", false);
        let chunk = c.chunk_delta("x", None, None);
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], "x");
        assert!(chunk.get("usage").is_none());
        assert_ne!(new_id("a"), new_id("a"));
        assert_eq!(lp(f32::NEG_INFINITY), -9999.0);
    }
}
