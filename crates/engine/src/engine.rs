//! The Engine: a thread that owns the model and runs the continuous-batching step loop.
//!
//! Callers hold an `EngineHandle` (cheap to clone, `Send`). `submit` checks a request, queues
//! it with its own response channel and returns the receiving end; the engine thread sends the
//! request's `Event`s down that channel: token deltas (UTF-8 safe, stop strings held back),
//! optional log-probabilities, then one `Done` with the finish reason and usage, or one `Error`.
//! Dropping the receiver cancels the request: the engine notices before its next step and frees
//! the request's KV blocks.
//!
//! Each step: take new requests, drop cancelled ones, let the `Scheduler` plan the step, run
//! the plan as ONE `Model::forward` over every scheduled sequence, then sample, detokenize and
//! stop-check each sequence that got logits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use realizar_model::{Backend, Draw, LogitsWanted, Model, RowOrToken, SeqChunk};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::detok::Detokenizer;
use crate::dist::{candidates_for, Candidates, Dist};
use crate::generate::FinishReason;
use crate::kv_blocks::{KvBlocks, ReqId};
use crate::sampler::{Sampler, SamplingParams, StopChecker, StopReason};
use crate::scheduler::{SchedConfig, Scheduler, StepPlan};
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// Most top log-probabilities a request may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Context of one sequence in tokens: prompt + completion never exceed it.
    pub ctx: usize,
    /// Requests waiting for a slot beyond which `submit` answers `QueueFull`.
    pub max_queue: usize,
    pub sched: SchedConfig,
    /// When to sample from the top candidates of each row (`Model::forward_top_k`) in steps
    /// where every request allows it (dist.rs), and else to draw the tokens of the requests that
    /// allow it where the logits are (`Model::forward_drawn`).
    pub candidates: Candidates,
}

/// What a step reads of its wanted logit rows (`Engine::what_to_read`): the top candidates, or
/// per wanted row a token drawn where the logits are (`Some`) or the whole row (`None`).
enum Read {
    Top(usize),
    Rows(Vec<Option<Draw>>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Tokens to generate at most (>= 1).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Never stop at end-of-generation tokens (they are masked out); for benchmarks.
    pub ignore_eos: bool,
}

/// Log-probabilities of one generated token (of the unmodified distribution).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Text released with this token (may be empty while a character or a possible stop
    /// string is incomplete; includes held-back text on the last token).
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the engine sends down a request's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(TokenOut),
    Done(Finish),
    /// The request failed inside the engine (the engine itself may have failed).
    Error(String),
}

/// Why `submit` refused a request.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the engine is not available: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Invalid(#[from] EngineError),
}

/// Loading, ready, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Loading,
    Ready,
    Failed,
}

/// Figures for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests submitted and not yet admitted to a running slot.
    pub queued: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub steps: u64,
    pub preemptions: u64,
    /// Prompt tokens computed (recomputation after preemption included; tokens found in the
    /// prefix cache are not computed).
    pub prefill_tokens: u64,
    /// Tokens of the requests admitted while the prefix cache was on (each admission, so a
    /// preempted request counts again when it comes back).
    pub prefix_cache_queried_tokens: u64,
    /// Of those, tokens whose KV entries were found in the prefix cache.
    pub prefix_cache_hit_tokens: u64,
    pub generated_tokens: u64,
    pub cancelled: u64,
    /// Nanoseconds of the steps that ran a forward pass, whole (scheduling, the pass, sampling
    /// and handing tokens to the requests), and of their forward passes alone: the difference
    /// is the engine's host work per step.
    pub step_ns: u64,
    pub forward_ns: u64,
}

#[derive(Default)]
struct Shared {
    state: AtomicU8,
    error: Mutex<Option<String>>,
    queued: AtomicUsize,
    running: AtomicUsize,
    kv_used: AtomicUsize,
    kv_total: AtomicUsize,
    steps: AtomicU64,
    preemptions: AtomicU64,
    prefill_tokens: AtomicU64,
    prefix_queried: AtomicU64,
    prefix_hits: AtomicU64,
    generated_tokens: AtomicU64,
    cancelled: AtomicU64,
    step_ns: AtomicU64,
    forward_ns: AtomicU64,
}

impl Shared {
    fn fail(&self, msg: String) {
        tracing::error!("engine failed: {msg}");
        if let Ok(mut e) = self.error.lock() {
            *e = Some(msg);
        }
        // Nothing runs or waits any more, and no KV block is held for anyone.
        self.running.store(0, Ordering::Relaxed);
        self.queued.store(0, Ordering::Relaxed);
        self.kv_used.store(0, Ordering::Relaxed);
        self.state.store(2, Ordering::SeqCst);
    }
}

struct Submission {
    req: EngineRequest,
    sampler: Sampler,
    tx: UnboundedSender<Event>,
}

/// The server's side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: std_mpsc::Sender<Submission>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
}

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Starts the engine thread, which loads the model with `load` (the handle reports
    /// `Loading` until then) and serves requests until every handle is dropped.
    pub fn spawn<B, F>(
        cfg: EngineConfig,
        tokenizer: Arc<Tokenizer>,
        load: F,
    ) -> std::io::Result<(EngineHandle, JoinHandle<()>)>
    where
        B: Backend + 'static,
        F: FnOnce() -> Result<Model<B>, EngineError> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared::default());
        let handle = EngineHandle {
            tx,
            shared: shared.clone(),
            tokenizer: tokenizer.clone(),
            cfg,
        };
        let join = std::thread::Builder::new()
            .name("realizar-engine".into())
            .spawn(move || {
                let guard = FailGuard(shared.clone());
                match load() {
                    Ok(model) => {
                        let cap = model.n_blocks() * model.block_size();
                        if cap < cfg.ctx {
                            shared.fail(format!(
                                "the KV cache holds {cap} tokens, less than the context of {}",
                                cfg.ctx
                            ));
                        } else {
                            let mut lp = Loop::new(model, rx, shared.clone(), tokenizer, cfg);
                            shared.state.store(1, Ordering::SeqCst);
                            lp.run();
                        }
                    }
                    Err(e) => shared.fail(format!("loading the model: {e}")),
                }
                drop(guard);
            })?;
        Ok((handle, join))
    }
}

/// Marks the engine failed if its thread unwinds.
struct FailGuard(Arc<Shared>);

impl Drop for FailGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the engine thread panicked".into());
        }
    }
}

impl EngineHandle {
    /// Checks and queues a request; its events arrive on the returned receiver.
    pub fn submit(&self, req: EngineRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        match self.state() {
            EngineState::Ready => {}
            EngineState::Loading => {
                return Err(SubmitError::Unavailable("the model is loading".into()))
            }
            EngineState::Failed => return Err(SubmitError::Unavailable(self.error_message())),
        }
        self.check(&req)?;
        let sampler = Sampler::new(req.params.clone(), self.vocab_size())?;
        let max = self.cfg.max_queue;
        self.shared
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < max).then_some(q + 1)
            })
            .map_err(SubmitError::QueueFull)?;
        let (tx, rx) = unbounded_channel();
        if self.tx.send(Submission { req, sampler, tx }).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Unavailable(self.error_message()));
        }
        Ok(rx)
    }

    /// The request checks `submit` makes, without queueing.
    pub fn check(&self, req: &EngineRequest) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Request(m));
        let vocab = self.vocab_size();
        if req.prompt.is_empty() {
            return bad("the prompt is empty".into());
        }
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!(
                "token id {t} is outside the vocabulary of {vocab} tokens"
            ));
        }
        if req.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        let (p, m, ctx) = (req.prompt.len(), req.max_tokens, self.cfg.ctx);
        if p.saturating_add(m) > ctx {
            return bad(format!(
                "this model's maximum context length is {ctx} tokens, but {} tokens were \
                 requested ({p} in the prompt, {m} for the completion); shorten the prompt or \
                 lower max_tokens",
                p.saturating_add(m)
            ));
        }
        if let Some(k) = req.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return bad(format!(
                    "at most {MAX_TOP_LOGPROBS} top log-probabilities may be asked for, got {k}"
                ));
            }
        }
        req.params.validate(vocab)
    }

    pub fn state(&self) -> EngineState {
        match self.shared.state.load(Ordering::SeqCst) {
            0 => EngineState::Loading,
            1 => EngineState::Ready,
            _ => EngineState::Failed,
        }
    }

    /// Why the engine failed (or is not ready).
    pub fn error_message(&self) -> String {
        self.shared
            .error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "the engine has stopped".into())
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            queued: s.queued.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            kv_blocks_used: s.kv_used.load(Ordering::Relaxed),
            kv_blocks_total: s.kv_total.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            preemptions: s.preemptions.load(Ordering::Relaxed),
            prefill_tokens: s.prefill_tokens.load(Ordering::Relaxed),
            prefix_cache_queried_tokens: s.prefix_queried.load(Ordering::Relaxed),
            prefix_cache_hit_tokens: s.prefix_hits.load(Ordering::Relaxed),
            generated_tokens: s.generated_tokens.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            step_ns: s.step_ns.load(Ordering::Relaxed),
            forward_ns: s.forward_ns.load(Ordering::Relaxed),
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn context_len(&self) -> usize {
        self.cfg.ctx
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
}

/// A request the engine is working on.
struct Active {
    tx: UnboundedSender<Event>,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopChecker,
    logprobs: Option<usize>,
    ignore_eos: bool,
    /// Has held a running slot (no longer counts as queued).
    admitted: bool,
}

/// The engine thread's state.
struct Loop<B: Backend> {
    model: Model<B>,
    rx: std_mpsc::Receiver<Submission>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    sched: Scheduler,
    active: HashMap<ReqId, Active>,
    next_id: ReqId,
    disconnected: bool,
    /// Row buffer for sampling (dist.rs).
    scratch: Vec<f32>,
}

impl<B: Backend> Loop<B> {
    fn new(
        model: Model<B>,
        rx: std_mpsc::Receiver<Submission>,
        shared: Arc<Shared>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
    ) -> Self {
        let kv = KvBlocks::new(model.n_blocks(), model.block_size());
        shared.kv_total.store(kv.total(), Ordering::Relaxed);
        Loop {
            model,
            rx,
            shared,
            tokenizer,
            cfg,
            sched: Scheduler::new(cfg.sched, kv),
            active: HashMap::new(),
            next_id: 0,
            disconnected: false,
            scratch: Vec::new(),
        }
    }

    fn run(&mut self) {
        loop {
            // Block for work when idle; otherwise take what arrived since the last step.
            if self.active.is_empty() {
                if self.disconnected {
                    return;
                }
                match self.rx.recv() {
                    Ok(sub) => self.add(sub),
                    Err(_) => return,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(sub) => self.add(sub),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        self.disconnected = true;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            if let Err(e) = self.step() {
                let msg = format!("forward pass failed: {e}");
                for (_, a) in self.active.drain() {
                    let _ = a.tx.send(Event::Error(msg.clone()));
                }
                self.shared.fail(msg);
                return;
            }
            self.publish();
        }
    }

    fn add(&mut self, sub: Submission) {
        let Submission { req, sampler, tx } = sub;
        // The model's own vocabulary bounds what it can embed.
        let vocab = self.model.cfg.vocab_size;
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(Event::Error(format!(
                "token id {t} is outside the model's vocabulary of {vocab}"
            )));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let stop_tokens = if req.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eog_ids().to_vec()
        };
        let stop = StopChecker::new(req.stop, stop_tokens, Some(req.max_tokens));
        self.sched.add(id, req.prompt.clone());
        self.active.insert(
            id,
            Active {
                tx,
                prompt_len: req.prompt.len(),
                tokens: req.prompt,
                sampler,
                detok: Detokenizer::new(),
                stop,
                logprobs: req.logprobs,
                ignore_eos: req.ignore_eos,
                admitted: false,
            },
        );
    }

    /// Requests whose receiver is gone: free their blocks now.
    fn drop_cancelled(&mut self) {
        let gone: Vec<ReqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            self.remove(id);
        }
    }

    /// Forgets a request and frees its blocks; the gauges show it at once.
    fn remove(&mut self, id: ReqId) {
        self.sched.finish(id);
        if let Some(a) = self.active.remove(&id) {
            if !a.admitted {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.publish();
    }

    /// What a step reads of its wanted logit rows. Top candidates instead of whole rows when
    /// every request sampling now allows it (dist.rs). Otherwise every request that is greedy or
    /// plain temperature sampling without log-probabilities gets its token drawn where the
    /// logits are (its uniform number taken from its generator now, as the host sampler would),
    /// in every step, whatever else the step holds, so that its tokens do not depend on the
    /// batch; the others get whole rows. On a GPU a step of drawn tokens keeps the
    /// vocabulary-sized rows on the device.
    fn what_to_read(&mut self, plan: &StepPlan) -> Read {
        let wanted = || plan.items.iter().filter(|i| i.wants_logits);
        let mut k_step = Some(1);
        let n_eog = self.tokenizer.eog_ids().len();
        for it in wanted() {
            let need = self.active.get(&it.id).and_then(|a| {
                let banned = if a.ignore_eos { n_eog } else { 0 };
                candidates_for(&a.sampler, a.logprobs.unwrap_or(0), banned)
            });
            k_step = k_step.zip(need).map(|(a, b)| a.max(b));
        }
        let backend = &self.model.backend;
        if let Some(k) = k_step.filter(|_| self.cfg.candidates.enabled(backend.selects_top_k())) {
            return Read::Top(k);
        }
        let on_device = self.cfg.candidates.enabled(backend.samples_on_device());
        let mut draws = Vec::new();
        for it in wanted() {
            let a = self.active.get_mut(&it.id);
            draws.push(a.and_then(|a| {
                (on_device && a.logprobs.is_none() && a.sampler.draws_on_device())
                    .then(|| a.sampler.device_draw(a.ignore_eos))
            }));
        }
        Read::Rows(draws)
    }

    /// One scheduled forward pass and the sampling after it.
    fn step(&mut self) -> Result<(), EngineError> {
        let t_step = std::time::Instant::now();
        let plan = self.sched.schedule();
        let prefix = self.sched.prefix_cache_stats();
        let s = &self.shared;
        s.preemptions
            .store(self.sched.preemptions(), Ordering::Relaxed);
        s.prefix_queried
            .store(prefix.queried_tokens, Ordering::Relaxed);
        s.prefix_hits.store(prefix.hit_tokens, Ordering::Relaxed);
        for it in &plan.items {
            if let Some(a) = self.active.get_mut(&it.id) {
                if !a.admitted {
                    a.admitted = true;
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        if plan.is_empty() {
            if !self.active.is_empty() {
                // Nothing fits right now (cannot persist: running requests finish). Yield.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return Ok(());
        }
        let read = self.what_to_read(&plan);
        let mut chunks = Vec::with_capacity(plan.items.len());
        for it in &plan.items {
            let tokens = self
                .active
                .get(&it.id)
                .and_then(|a| a.tokens.get(it.start..it.start + it.n_tokens))
                .ok_or_else(|| {
                    EngineError::Request(format!("plan for unknown request {}", it.id))
                })?;
            chunks.push(SeqChunk {
                tokens,
                start_pos: it.start,
                block_table: self.sched.block_table(it.id),
                logits: if it.wants_logits {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            });
        }
        let t0 = std::time::Instant::now();
        let rows: Vec<Dist> = match read {
            Read::Top(k) => self
                .model
                .forward_top_k(&chunks, k)?
                .into_iter()
                .map(Dist::Top)
                .collect(),
            Read::Rows(draws) => self
                .model
                .forward_drawn(&chunks, &draws, self.tokenizer.eog_ids())?
                .into_iter()
                .map(|r| match r {
                    RowOrToken::Row(row) => Dist::Full(row),
                    RowOrToken::Token(id) => Dist::Chosen(id),
                })
                .collect(),
        };
        drop(chunks);
        let forward = t0.elapsed();
        let forward_ms = forward.as_secs_f64() * 1e3;
        self.sched.commit(&plan);
        self.shared.steps.fetch_add(1, Ordering::Relaxed);
        // Everything but one-token steps past the prompt (decodes) is prefill; a prompt whose
        // all but last token came from the prefix cache is a one-token prefill.
        let prefill: usize = plan
            .items
            .iter()
            .filter(|i| {
                let prompt_len = self.active.get(&i.id).map_or(0, |a| a.prompt_len);
                i.n_tokens > 1 || !i.wants_logits || i.start < prompt_len
            })
            .map(|i| i.n_tokens)
            .sum();
        self.shared
            .prefill_tokens
            .fetch_add(prefill as u64, Ordering::Relaxed);
        let mut rows = rows.into_iter();
        for it in plan.items.iter().filter(|i| i.wants_logits) {
            let Some(dist) = rows.next() else {
                return Err(EngineError::Request(
                    "the forward pass returned too few rows".into(),
                ));
            };
            self.emit(it.id, &dist);
        }
        let whole = t_step.elapsed();
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.step_ns.fetch_add(ns(whole), Ordering::Relaxed);
        self.shared
            .forward_ns
            .fetch_add(ns(forward), Ordering::Relaxed);
        tracing::debug!(
            "step: {} sequences, {} tokens, forward {forward_ms:.1} ms, whole step {:.1} ms",
            plan.items.len(),
            plan.n_tokens(),
            whole.as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Samples request `id`'s next token from `dist` and sends it on.
    fn emit(&mut self, id: ReqId, dist: &Dist) {
        let ctx = self.cfg.ctx;
        let vocab = self.model.cfg.vocab_size;
        let tok = &self.tokenizer;
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        let banned = if a.ignore_eos { tok.eog_ids() } else { &[] };
        let next = match dist.sample(&mut a.sampler, &a.tokens, banned, vocab, &mut self.scratch) {
            Ok(t) => t,
            Err(e) => {
                let _ = a.tx.send(Event::Error(format!("sampling failed: {e}")));
                self.remove(id);
                return;
            }
        };
        a.tokens.push(next);
        self.sched.append_token(id, next);
        self.shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let piece = if tok.is_eog(next) && !a.ignore_eos {
            String::new()
        } else {
            a.detok.push(tok, next)
        };
        let out = a.stop.push(next, &piece);
        let mut text = out.text;
        let reason = match out.stop {
            Some(StopReason::Token(_)) => {
                text.push_str(&a.detok.flush());
                Some(FinishReason::Stop)
            }
            Some(StopReason::String(_)) => Some(FinishReason::Stop),
            Some(StopReason::MaxTokens) => Some(FinishReason::Length),
            None if a.tokens.len() >= ctx => Some(FinishReason::Length),
            None => None,
        };
        if reason == Some(FinishReason::Length) {
            // Nothing can complete a held-back stop string or character any more.
            text.push_str(&a.stop.finish());
            text.push_str(&a.detok.flush());
        }
        // Log-probabilities of the unmodified distribution (bans and sampling do not touch it).
        let logprobs = a.logprobs.map(|k| TokenLogprobs {
            logprob: dist.logprob(next),
            top: dist.top_logprobs(k),
        });
        let sent = a.tx.send(Event::Token(TokenOut {
            id: next,
            text,
            logprobs,
        }));
        if sent.is_err() {
            self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
            self.remove(id);
            return;
        }
        if let Some(reason) = reason {
            let done = Event::Done(Finish {
                reason,
                prompt_tokens: a.prompt_len,
                completion_tokens: a.tokens.len() - a.prompt_len,
            });
            let tx = a.tx.clone();
            // Free the blocks before the client hears that the request is over.
            self.remove(id);
            let _ = tx.send(done);
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        s.running.store(self.sched.n_running(), Ordering::Relaxed);
        s.kv_used.store(self.sched.kv().used(), Ordering::Relaxed);
    }
}
