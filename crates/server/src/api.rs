//! Request bodies of the OpenAI routes and their checks.
//!
//! Bodies are parsed with serde into structs whose fields are all optional where OpenAI's are;
//! unknown fields are ignored, as OpenAI does. Everything a client can get wrong turns into a
//! `ServerError::BadRequest` (400) naming the field; the engine's `check` covers the rest
//! (context length, vocabulary, sampling ranges).

use std::collections::HashMap;

use realizar_engine::{ChatMessage, EngineHandle, EngineRequest, SamplingParams};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::ServerError;

/// Most stop strings per request.
pub const MAX_STOP: usize = 16;
/// Default `max_tokens` of /v1/completions (OpenAI's).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields both generation routes share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Extension (llama.cpp, vLLM): never stop at end-of-generation tokens.
    pub ignore_eos: Option<bool>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: text or token ids, alone or in a one-element list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<i64>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<i64>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub content: Option<String>,
    pub prompt: Option<String>,
    pub add_special: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// Parses a JSON body; every failure is a 400 with serde's description.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    if body.is_empty() {
        return Err(bad("the request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::BadRequest(msg.into())
}

/// A generation request ready for the engine, with how to answer it.
#[derive(Debug, Clone)]
pub struct Job {
    pub req: EngineRequest,
    pub stream: bool,
    pub include_usage: bool,
}

impl Common {
    /// Sampling parameters, stop strings and streaming flags, checked.
    fn params(&self, vocab: usize) -> Result<(SamplingParams, Vec<String>), ServerError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(bad(format!(
                    "n must be 1 (one choice per request is supported), got {n}"
                )));
            }
        }
        let mut p = SamplingParams::default();
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(bad(format!(
                    "top_k must be -1, 0 (off) or positive, got {k}"
                )));
            }
            p.top_k = usize::try_from(k).unwrap_or(0);
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        // Seeds are 64-bit patterns; negative ones are as good as any.
        p.seed = self.seed.map(|s| s as u64);
        for (name, v, slot) in [
            (
                "presence_penalty",
                self.presence_penalty,
                &mut p.presence_penalty,
            ),
            (
                "frequency_penalty",
                self.frequency_penalty,
                &mut p.frequency_penalty,
            ),
        ] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(bad(format!("{name} must be in [-2, 2], got {v}")));
                }
                *slot = v;
            }
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(bias) = &self.logit_bias {
            for (key, &v) in bias {
                let id: u32 = key
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("logit_bias key '{key}' is not a token id")))?;
                if id as usize >= vocab {
                    return Err(bad(format!(
                        "logit_bias key {id} is outside the vocabulary of {vocab} tokens"
                    )));
                }
                if !(-100.0..=100.0).contains(&v) {
                    return Err(bad(format!(
                        "logit_bias value for token {id} must be in [-100, 100], got {v}"
                    )));
                }
                p.logit_bias.push((id, v));
            }
            p.logit_bias.sort_by_key(|&(id, _)| id);
        }
        p.validate(vocab).map_err(|e| bad(e.to_string()))?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(bad(format!(
                "at most {MAX_STOP} stop strings are supported, got {}",
                stop.len()
            )));
        }
        Ok((p, stop))
    }

    fn max_tokens(&self, field: &str, given: Option<i64>) -> Result<Option<usize>, ServerError> {
        match given {
            None => Ok(None),
            Some(m) if m <= 0 => Err(bad(format!("{field} must be at least 1, got {m}"))),
            Some(m) => Ok(Some(usize::try_from(m).unwrap_or(usize::MAX))),
        }
    }

    fn job(
        &self,
        prompt: Vec<u32>,
        max_tokens: Option<usize>,
        default_max: Option<usize>,
        logprobs: Option<usize>,
        engine: &EngineHandle,
    ) -> Result<Job, ServerError> {
        let (params, stop) = self.params(engine.vocab_size())?;
        let ctx = engine.context_len();
        // Without a limit: up to the end of the context (at least 1, so that a prompt that
        // fills the context is refused by the check below, naming both numbers).
        let max_tokens = max_tokens
            .or(default_max)
            .unwrap_or_else(|| ctx.saturating_sub(prompt.len()).max(1));
        let req = EngineRequest {
            prompt,
            params,
            max_tokens,
            stop,
            logprobs,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        };
        engine.check(&req)?;
        Ok(Job {
            req,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatRequest {
    /// The conversation as template messages.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ServerError> {
        if self.messages.is_empty() {
            return Err(bad("messages must not be empty"));
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(bad(format!(
                    "messages[{i}].role '{}' is not one of {}",
                    m.role,
                    ROLES.join(", ")
                )));
            }
            let content = match &m.content {
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(bad(format!(
                                    "messages[{i}]: only text content parts are supported, got \
                                     type '{}'",
                                    p.kind
                                )))
                            }
                        }
                    }
                    s
                }
                None if m.role == "assistant" => String::new(),
                None => return Err(bad(format!("messages[{i}].content is missing"))),
            };
            // The developer role is OpenAI's new name for system.
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            out.push(ChatMessage::new(role, content));
        }
        Ok(out)
    }

    /// The engine request for an already rendered and tokenized conversation.
    pub fn job(&self, prompt: Vec<u32>, engine: &EngineHandle) -> Result<Job, ServerError> {
        let c = &self.common;
        let max = match self.max_completion_tokens {
            Some(_) => c.max_tokens("max_completion_tokens", self.max_completion_tokens)?,
            None => c.max_tokens("max_tokens", c.max_tokens)?,
        };
        let top = self.top_logprobs.unwrap_or(0);
        if !(0..=20).contains(&top) {
            return Err(bad(format!("top_logprobs must be in [0, 20], got {top}")));
        }
        let logprobs = match self.logprobs {
            Some(true) => Some(top as usize),
            _ if top > 0 => {
                return Err(bad("top_logprobs requires logprobs to be true"));
            }
            _ => None,
        };
        c.job(prompt, max, None, logprobs, engine)
    }
}

impl CompletionRequest {
    /// The prompt's token ids.
    pub fn prompt_tokens(&self, engine: &EngineHandle) -> Result<Vec<u32>, ServerError> {
        let vocab = engine.vocab_size();
        let ids = |v: &[i64]| -> Result<Vec<u32>, ServerError> {
            v.iter()
                .map(|&t| match u32::try_from(t) {
                    Ok(id) if (id as usize) < vocab => Ok(id),
                    _ => Err(bad(format!(
                        "prompt token id {t} is outside the vocabulary of {vocab} tokens"
                    ))),
                })
                .collect()
        };
        let text = |s: &str| {
            engine
                .tokenizer()
                .encode(s, true, true)
                .map_err(|e| bad(format!("cannot tokenize the prompt: {e}")))
        };
        let one = "only one prompt per request is supported";
        let tokens = match &self.prompt {
            Prompt::Text(s) => text(s)?,
            Prompt::Tokens(v) => ids(v)?,
            Prompt::Texts(v) if v.len() == 1 => text(&v[0])?,
            Prompt::TokenLists(v) if v.len() == 1 => ids(&v[0])?,
            Prompt::Texts(v) if v.is_empty() => Vec::new(),
            Prompt::TokenLists(v) if v.is_empty() => Vec::new(),
            _ => return Err(bad(one)),
        };
        if tokens.is_empty() {
            return Err(bad("the prompt is empty"));
        }
        Ok(tokens)
    }

    pub fn job(&self, engine: &EngineHandle) -> Result<Job, ServerError> {
        if self.echo == Some(true) {
            return Err(bad("echo is not supported"));
        }
        let c = &self.common;
        let max = c.max_tokens("max_tokens", c.max_tokens)?;
        let logprobs = match self.logprobs {
            None => None,
            Some(k) if (0..=20).contains(&k) => Some(k as usize),
            Some(k) => return Err(bad(format!("logprobs must be in [0, 20], got {k}"))),
        };
        let prompt = self.prompt_tokens(engine)?;
        c.job(
            prompt,
            max,
            Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
            logprobs,
            engine,
        )
    }
}
