//! Single-sequence generation: prompt ids in, a stream of token events out.
//!
//! `Generator` owns a model and its tokenizer, keeps the tokens whose KV entries are cached so a
//! follow-up prompt that extends them (a chat's next turn) only prefills the new part, and runs
//! prefill -> sample -> detokenize -> stop checks. The server's continuous-batching engine is a
//! separate scheduler over the same model.

use std::time::Instant;

use realizar_model::{Backend, LogitsWanted, Model, SeqChunk};

use crate::detok::Detokenizer;
use crate::dist::{candidates_for, Candidates, Dist};
use crate::sampler::{Sampler, SamplingParams, StopChecker, StopReason};
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// How many top log-probabilities to report per token (0 for none).
    pub top_logprobs: usize,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub id: u32,
    /// Text released by this token (may be empty while a UTF-8 character or a possible stop
    /// string is incomplete).
    pub text: String,
    /// Log-probability of `id` under the unmodified distribution.
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// max_tokens or the context was reached.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

/// Figures of one generation.
#[derive(Debug, Clone)]
pub struct GenSummary {
    pub prompt_tokens: usize,
    /// Prompt tokens actually computed (the rest were already cached).
    pub prefilled: usize,
    pub generated: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub finish: FinishReason,
    /// Text held back at the end (flushed detokenizer bytes), already included in events.
    pub tail: String,
}

/// A model, its tokenizer and one cached sequence.
pub struct Generator<B: Backend> {
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    /// When to sample from the top candidates (`Model::forward_top_k`) if the request allows
    /// it (dist.rs; the full-row path is the reference).
    pub candidates: Candidates,
    /// Tokens whose KV entries are in the cache, in order from position 0.
    cached: Vec<u32>,
    table: Vec<u32>,
}

impl<B: Backend> Generator<B> {
    pub fn new(model: Model<B>, tokenizer: Tokenizer) -> Self {
        let table = (0..model.n_blocks() as u32).collect();
        Generator {
            model,
            tokenizer,
            candidates: Candidates::Auto,
            cached: Vec::new(),
            table,
        }
    }

    /// Tokens the KV cache holds for one sequence.
    pub fn context_size(&self) -> usize {
        self.model.n_blocks() * self.model.block_size()
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Computes the logits after `tokens`, reusing the cached prefix. Returns the last token's
    /// distribution (top `k` candidates when `k` is set) and how many tokens were computed.
    fn prefill(&mut self, tokens: &[u32], k: Option<usize>) -> Result<(Dist, usize), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Request("the prompt is empty".into()));
        }
        if tokens.len() > self.context_size() {
            return Err(EngineError::Request(format!(
                "the prompt has {} tokens, more than the context of {}",
                tokens.len(),
                self.context_size()
            )));
        }
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // Recompute at least the last token to get its logits.
        let start = common.min(tokens.len() - 1);
        self.cached.truncate(start);
        let dist = self.run(&tokens[start..], start, k)?;
        self.cached.extend_from_slice(&tokens[start..]);
        Ok((dist, tokens.len() - start))
    }

    /// Runs `tokens` at `pos` and returns the last one's distribution.
    fn run(&mut self, tokens: &[u32], pos: usize, k: Option<usize>) -> Result<Dist, EngineError> {
        let chunk = SeqChunk {
            tokens,
            start_pos: pos,
            block_table: &self.table,
            logits: LogitsWanted::Last,
        };
        let dist = match k {
            Some(k) => self.model.forward_top_k(&[chunk], k)?.pop().map(Dist::Top),
            None => self.model.forward(&[chunk])?.pop().map(Dist::Full),
        };
        dist.ok_or_else(|| EngineError::Request("no logits".into()))
    }

    /// Generates, calling `on_token` for each token; generation stops early when it returns
    /// false.
    pub fn generate(
        &mut self,
        req: &GenRequest,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<GenSummary, EngineError> {
        let vocab = self.model.cfg.vocab_size;
        let mut sampler = Sampler::new(req.params.clone(), vocab)?;
        let stop_tokens = if req.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eog_ids().to_vec()
        };
        let mut stop = StopChecker::new(req.stop.clone(), stop_tokens, Some(req.max_tokens));
        let mut detok = Detokenizer::new();
        // Sampling from the top candidates alone gives the same token (see dist.rs).
        let banned = if req.ignore_eos {
            self.tokenizer.eog_ids().len()
        } else {
            0
        };
        let k = candidates_for(&sampler, req.top_logprobs, banned)
            .filter(|_| self.candidates.enabled(self.model.backend.selects_top_k()));
        let mut sparse = Vec::new();
        let t0 = Instant::now();
        let (mut dist, prefilled) = self.prefill(&req.prompt, k)?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut history = req.prompt.clone();
        let mut finish = FinishReason::Length;
        let mut generated = 0;
        while generated < req.max_tokens {
            let banned = if req.ignore_eos {
                self.tokenizer.eog_ids()
            } else {
                &[]
            };
            let id = dist.sample(&mut sampler, &history, banned, vocab, &mut sparse)?;
            generated += 1;
            history.push(id);
            let piece = if self.tokenizer.is_eog(id) && !req.ignore_eos {
                String::new()
            } else {
                detok.push(&self.tokenizer, id)
            };
            let out = stop.push(id, &piece);
            let event = TokenEvent {
                id,
                text: out.text,
                logprob: dist.logprob(id),
                top_logprobs: dist.top_logprobs(req.top_logprobs),
            };
            if !on_token(&event) {
                finish = FinishReason::Cancelled;
                break;
            }
            match out.stop {
                Some(StopReason::Token(_)) | Some(StopReason::String(_)) => {
                    finish = FinishReason::Stop;
                    break;
                }
                Some(StopReason::MaxTokens) => break,
                None => {}
            }
            if self.cached.len() >= self.context_size() {
                break;
            }
            let pos = self.cached.len();
            dist = self.run(&[id], pos, k)?;
            self.cached.push(id);
        }
        let mut tail = detok.flush();
        if finish != FinishReason::Stop {
            tail.push_str(&stop.finish());
        }
        Ok(GenSummary {
            prompt_tokens: req.prompt.len(),
            prefilled,
            generated,
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
            finish,
            tail,
        })
    }

    /// Log-likelihood evaluation for perplexity: the logits at every position of `tokens`,
    /// evaluated as a fresh sequence.
    pub fn all_logits(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.cached.clear();
        let chunk = SeqChunk {
            tokens,
            start_pos: 0,
            block_table: &self.table,
            logits: LogitsWanted::All,
        };
        Ok(self.model.forward(&[chunk])?)
    }
}
