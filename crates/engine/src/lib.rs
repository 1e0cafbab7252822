//! realizar-engine: tokenizer, chat template, sampler, incremental detokenizer, the paged
//! KV-block manager (`KvBlocks`), the continuous-batching `Scheduler` and the `Engine` step loop.
//!
//! Text flows `Tokenizer::encode` -> ids -> forward pass -> logits -> `Sampler::sample` -> id
//! -> `Detokenizer::push` -> `StopChecker::push` -> the caller.

pub mod chat_template;
pub mod detok;
mod dist;
pub use dist::Candidates;
pub mod engine;
pub mod generate;
pub mod kv_blocks;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use detok::Detokenizer;
pub use engine::{
    Engine, EngineConfig, EngineHandle, EngineRequest, EngineState, EngineStats, Event, Finish,
    SubmitError, TokenLogprobs, TokenOut,
};
pub use generate::{FinishReason, GenRequest, GenSummary, Generator, TokenEvent};
pub use kv_blocks::KvBlocks;
pub use sampler::{Sampler, SamplingParams, StopChecker, StopReason};
pub use scheduler::{PrefixCacheStats, SchedConfig, Scheduler, StepPlan};
pub use tokenizer::{Tokenizer, TokenizerSpec};

use std::path::PathBuf;

/// Everything that can go wrong in the engine. Request-controlled problems (a bad sampling
/// parameter, a template that raises) are ordinary variants, never panics.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] realizar_formats::FormatError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A vocabulary that cannot be built or used (bad metadata, unknown model kind, ...).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template that fails to compile or render, or that ran past its limits.
    #[error("chat template: {0}")]
    Template(String),
    /// A chat template called `raise_exception(message)`: usually the conversation is not
    /// one the model supports (e.g. roles out of order). The message is the template's own.
    #[error("chat template raised an exception: {0}")]
    TemplateException(String),
    /// Sampling parameters out of range.
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// A request the engine cannot serve as asked (empty prompt, longer than the context, ...).
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Model(#[from] realizar_model::ModelError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
