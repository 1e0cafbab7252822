//! The next token's distribution as the model returned it, and sampling from it.
//!
//! A step returns either whole logit rows (`Model::forward`) or, when every request in it can
//! be served from a few candidates, the top candidates of each row and the row's log-sum-exp
//! (`Model::forward_top_k`: on a GPU only those numbers cross to the host). A request can use
//! candidates when its sampler would never choose outside them and nothing else reads the
//! other logits: greedy, or top-k sampling, without penalties or logit bias
//! (`Sampler::candidates_needed`), and with at most `MAX_CANDIDATES` log-probabilities.
//! Sampling from the candidates placed in a row of -inf then gives the same token, and the
//! log-probabilities are the same up to rounding. Banned ids (ignore_eos) cost one more
//! candidate each, dropped before sampling. A third kind, `Dist::Chosen`, is a token the backend
//! drew itself (`Model::forward_drawn`).

use realizar_model::TopK;

use crate::sampler::{token_logprob, top_logprobs, Sampler};
use crate::EngineError;

/// Most candidates fetched per row; sampling that needs more reads whole rows.
pub const MAX_CANDIDATES: usize = 64;

/// When steps fetch candidates instead of whole rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Candidates {
    /// Where the backend selects them on the device (`Backend::selects_top_k`: the GPU), so a
    /// transfer is saved; on the CPU a whole row costs nothing extra.
    #[default]
    Auto,
    /// Whenever the requests allow it, on any backend (tests of the candidate path).
    Always,
    /// Never: whole rows every step.
    Never,
}

impl Candidates {
    pub(crate) fn enabled(self, backend_selects: bool) -> bool {
        match self {
            Candidates::Auto => backend_selects,
            Candidates::Always => true,
            Candidates::Never => false,
        }
    }
}

/// How many candidates a request needs, or `None` when it needs whole rows. `banned` ids
/// (ignore_eos) are removed before sampling: with that many more candidates, the ones left
/// still hold the best `k` of the row without them.
pub(crate) fn candidates_for(
    sampler: &Sampler,
    top_logprobs: usize,
    banned: usize,
) -> Option<usize> {
    sampler
        .candidates_needed()
        .map(|k| (k + banned).max(top_logprobs))
        .filter(|&k| k <= MAX_CANDIDATES)
}

pub(crate) enum Dist {
    Full(Vec<f32>),
    Top(TopK),
    /// The token the backend drew (`Model::forward_drawn`; `u32::MAX`: nothing to draw). Only
    /// requests without log-probabilities are drawn so, so the log-probability methods are
    /// never asked of it.
    Chosen(u32),
}

impl Dist {
    /// Log-probability of `id` under the unmodified distribution.
    pub(crate) fn logprob(&self, id: u32) -> f32 {
        match self {
            Dist::Full(l) => token_logprob(l, id).unwrap_or(f32::NEG_INFINITY),
            Dist::Top(t) => t
                .ids
                .iter()
                .position(|&i| i == id)
                .map_or(f32::NEG_INFINITY, |j| t.logits[j] - t.lse),
            Dist::Chosen(_) => f32::NAN,
        }
    }

    /// The `n` most likely tokens and their log-probabilities.
    pub(crate) fn top_logprobs(&self, n: usize) -> Vec<(u32, f32)> {
        match self {
            Dist::Full(l) => top_logprobs(l, n),
            Dist::Top(t) => t
                .ids
                .iter()
                .zip(&t.logits)
                .take(n)
                .map(|(&i, &l)| (i, l - t.lse))
                .collect(),
            Dist::Chosen(_) => Vec::new(),
        }
    }

    /// Samples the next token, never one of `banned`; `scratch` is a reusable row buffer. The
    /// distribution itself is left unmodified (for the log-probabilities).
    pub(crate) fn sample(
        &self,
        sampler: &mut Sampler,
        history: &[u32],
        banned: &[u32],
        vocab: usize,
        scratch: &mut Vec<f32>,
    ) -> Result<u32, EngineError> {
        match self {
            Dist::Chosen(id) if *id != u32::MAX => Ok(*id),
            Dist::Chosen(_) => Err(EngineError::Sampling(
                "every token has probability 0".into(),
            )),
            Dist::Full(logits) if banned.is_empty() => sampler.sample(logits, history),
            Dist::Full(logits) => {
                scratch.clear();
                scratch.extend_from_slice(logits);
                for &id in banned {
                    if let Some(l) = scratch.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                sampler.sample(scratch, history)
            }
            Dist::Top(t) if sampler.is_greedy() => t
                .ids
                .iter()
                .copied()
                .find(|i| !banned.contains(i))
                .ok_or_else(|| EngineError::Sampling("every token has probability 0".into())),
            Dist::Top(t) => {
                // The allowed candidates in a row of -inf: the sampler's own top-k keeps exactly
                // them (`candidates_for` fetched one more per banned id).
                scratch.clear();
                scratch.resize(vocab, f32::NEG_INFINITY);
                for (&i, &l) in t.ids.iter().zip(&t.logits) {
                    if banned.contains(&i) {
                        continue;
                    }
                    if let Some(s) = scratch.get_mut(i as usize) {
                        *s = l;
                    }
                }
                sampler.sample(scratch, history)
            }
        }
    }
}
