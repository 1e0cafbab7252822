//! Choosing the next token from logits, log-probabilities, and when to stop.
//!
//! The sampling chain runs in llama.cpp's order:
//! penalties -> logit bias -> top-k -> top-p -> min-p -> temperature -> draw.
//! Top-k/top-p/min-p see the distribution at temperature 1, as in llama.cpp; temperature only
//! shapes the final draw. `temperature == 0` is greedy (argmax after penalties and bias).
//! A seeded `StdRng` makes a request with a seed reproducible.
//!
//! Log-probabilities (`top_logprobs`, `token_logprob`) are of the unmodified distribution:
//! `log_softmax` of the raw logits, before any penalty or filter.

use realizar_model::Draw;
use std::cmp::Ordering;
use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// Per-request sampling settings. `Default` is plain sampling at temperature 1 with every
/// filter and penalty off (the OpenAI API's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// llama.cpp/CTRL repetition penalty: positive logits divided by it, negative multiplied;
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token present in the penalty window.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the penalty window.
    pub frequency_penalty: f32,
    /// How many of the most recent previous tokens the penalties look at; 0 = penalties off.
    pub penalty_last_n: usize,
    /// Added to the logits of these tokens (`f32::NEG_INFINITY` bans one).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed for the random draw; `None` = from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Check every field; `vocab_size` bounds the logit-bias ids.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let bad = |msg: String| Err(EngineError::Sampling(msg));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return bad(format!("{name} must be finite, got {v}"));
            }
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return bad(format!(
                    "logit_bias token {id} is outside the vocabulary ({vocab_size})"
                ));
            }
            if bias.is_nan() || bias == f32::INFINITY {
                return bad(format!(
                    "logit_bias for token {id} must be a number below +inf"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Sort key: larger logit first, then smaller id (deterministic order for equal logits).
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// One request's sampler: its parameters, its random generator and scratch buffers.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    logits: Vec<f32>,
    cands: Vec<(u32, f32)>,
    /// Per-1024-block probability masses of the unfiltered draw.
    masses: Vec<f64>,
}

impl Sampler {
    /// Parameters are validated against `vocab_size`.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Self> {
        params.validate(vocab_size)?;
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Ok(Sampler {
            params,
            rng,
            logits: Vec::new(),
            cands: Vec::new(),
            masses: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given this step's `logits` (one per vocabulary entry) and the tokens
    /// before it (`prev`: what the penalties look at, most recent last).
    pub fn sample(&mut self, logits: &[f32], prev: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(EngineError::Sampling("no logits to sample from".into()));
        }
        // Penalties and bias touch a copy; without them the logits are used as they are. NaN
        // needs no cleaning: every comparison below is false for it, so it is never chosen.
        let mut buf = std::mem::take(&mut self.logits);
        let adjusted = self.penalties_apply(prev) || !self.params.logit_bias.is_empty();
        if adjusted {
            buf.clear();
            buf.extend_from_slice(logits);
            self.apply_penalties(&mut buf, prev);
            for &(id, bias) in &self.params.logit_bias {
                if let Some(l) = buf.get_mut(id as usize) {
                    *l += bias;
                }
            }
        }
        let view: &[f32] = if adjusted { &buf } else { logits };
        let result = if self.params.is_greedy() {
            argmax(view)
        } else {
            self.draw(view)
        };
        self.logits = buf;
        result.ok_or_else(|| EngineError::Sampling("every token has probability 0".into()))
    }

    /// Whether these parameters always pick the most likely token.
    pub(crate) fn is_greedy(&self) -> bool {
        self.params.is_greedy()
    }

    /// How many of the most likely tokens sampling with these parameters can ever choose, when
    /// that is a small fixed number and nothing else (penalties, logit bias) reads the other
    /// logits: 1 for greedy, `top_k` otherwise; `None` when the whole row is needed.
    pub(crate) fn candidates_needed(&self) -> Option<usize> {
        let p = &self.params;
        if self.adjusts_logits() {
            None
        } else if p.is_greedy() {
            Some(1)
        } else if p.top_k > 0 {
            Some(p.top_k)
        } else {
            None
        }
    }

    /// Whether penalties or a logit bias may change logits before sampling.
    fn adjusts_logits(&self) -> bool {
        let p = &self.params;
        let penalties = p.penalty_last_n > 0
            && (p.repetition_penalty != 1.0
                || p.presence_penalty != 0.0
                || p.frequency_penalty != 0.0);
        penalties || !p.logit_bias.is_empty()
    }

    /// Whether a backend can draw this request's tokens where the logits are
    /// (`Backend::sample_rows`): greedy, or plain sampling at a temperature, with nothing that
    /// reads or changes the other logits (top-k, top-p, min-p, penalties, logit bias).
    pub(crate) fn draws_on_device(&self) -> bool {
        let p = &self.params;
        !self.adjusts_logits()
            && (p.is_greedy() || (p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0))
    }

    /// The next token's draw for `Backend::sample_rows`, its uniform number taken from this
    /// sampler's generator exactly as `sample` takes it (one per plain draw, none when greedy).
    pub(crate) fn device_draw(&mut self, ban: bool) -> Draw {
        if self.params.is_greedy() {
            return Draw::greedy(ban);
        }
        Draw {
            inv_temp: 1.0 / self.params.temperature,
            u: self.rng.gen::<f64>(),
            ban,
        }
    }

    fn penalties_apply(&self, prev: &[u32]) -> bool {
        let p = &self.params;
        let off =
            p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0;
        !(off || p.penalty_last_n == 0 || prev.is_empty())
    }

    fn apply_penalties(&self, logits: &mut [f32], prev: &[u32]) {
        let p = &self.params;
        if !self.penalties_apply(prev) {
            return;
        }
        let window = &prev[prev.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: HashMap<u32, u32> = HashMap::with_capacity(window.len());
        for &t in window {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &c) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if *l <= 0.0 {
                *l *= p.repetition_penalty;
            } else {
                *l /= p.repetition_penalty;
            }
            *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// top-k -> top-p -> min-p -> temperature -> random draw.
    ///
    /// top-p and min-p each keep a prefix of the candidates ordered by probability, so their
    /// intersection does not depend on the order they run in; both become logit floors applied
    /// in one pass, with top-p's normalisation over the candidates top-k left, exactly as in
    /// llama.cpp's order. Only the survivors are sorted.
    fn draw(&mut self, logits: &[f32]) -> Option<u32> {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = max_logit(logits)?;
        let filtered = p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0;
        if !filtered {
            // Plain sampling over the whole vocabulary: no candidate list at all.
            // Find the block where the cumulative mass crosses the draw, then the token in it.
            // Each block's mass is computed once (summing them in order gives exactly
            // `sum_exp` of the whole row), so the row is exponentiated about once, not 2.5 times.
            const BLOCK: usize = 1024;
            let mut masses = std::mem::take(&mut self.masses);
            masses.clear();
            masses.extend(logits.chunks(BLOCK).map(|b| sum_exp(b, max, inv_t)));
            let total: f64 = masses.iter().fold(0.0, |t, &m| t + m);
            let mut r = self.rng.gen::<f64>() * total;
            let mut last = None;
            let mut found = None;
            for (b, block) in logits.chunks(BLOCK).enumerate() {
                let mass = masses[b];
                if r > mass {
                    r -= mass;
                    if mass > 0.0 {
                        last = Some(b * BLOCK);
                    }
                    continue;
                }
                for (i, &l) in block.iter().enumerate() {
                    if l > f32::NEG_INFINITY {
                        r -= f64::from(fast_exp((l - max) * inv_t));
                        last = Some(b * BLOCK + i);
                        if r <= 0.0 {
                            found = last;
                            break;
                        }
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            self.masses = masses;
            if let Some(t) = found {
                return Some(t as u32);
            }
            // Rounding left a sliver: take the last possible token.
            return logits
                .iter()
                .rposition(|&l| l > f32::NEG_INFINITY)
                .or(last)
                .map(|t| t as u32);
        }
        let cands = &mut self.cands;
        cands.clear();
        // Candidates after top-k, and the normalising mass top-p needs.
        let (pool_len, total) = if p.top_k > 0 && p.top_k < logits.len() {
            top_k_into(logits, p.top_k, cands);
            // The draw walks the pool in order: a canonical one (logit, then id), not whatever
            // order the selection left, so the same pool gives the same token from a whole row
            // or from a few candidates (dist.rs).
            cands.sort_unstable_by(by_logit_desc);
            let total: f64 = cands.iter().map(|c| f64::from(fast_exp(c.1 - max))).sum();
            (cands.len(), total)
        } else {
            let total = if p.top_p < 1.0 {
                sum_exp(logits, max, 1.0)
            } else {
                0.0
            };
            (logits.len(), total)
        };
        // min-p keeps weights >= min_p (relative to the best); top-p needs no token lighter than
        // (1 - top_p) * total / n (the mass from such a token onwards would be at least
        // (1 - top_p) * total yet at most n times its weight). Both are logit floors.
        let mut floor = f32::NEG_INFINITY;
        if p.min_p > 0.0 {
            floor = floor.max(max + p.min_p.ln());
        }
        if p.top_p < 1.0 {
            let w_min = (1.0 - f64::from(p.top_p)) * total / pool_len as f64;
            floor = floor.max(max + (w_min.ln() as f32) - 1e-3);
        }
        if cands.is_empty() {
            cands.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, &l)| l >= floor && l > f32::NEG_INFINITY)
                    .map(|(i, &l)| (i as u32, l)),
            );
        } else {
            cands.retain(|c| c.1 >= floor);
        }
        if p.top_p < 1.0 {
            cands.sort_unstable_by(by_logit_desc);
            let target = f64::from(p.top_p) * total;
            let mut cum = 0.0f64;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += f64::from(fast_exp(c.1 - max));
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        // Temperature, then a draw from the softmax of what is left.
        let total: f64 = cands
            .iter()
            .map(|c| f64::from(fast_exp((c.1 - max) * inv_t)))
            .sum();
        let mut r = self.rng.gen::<f64>() * total;
        for c in cands.iter() {
            r -= f64::from(fast_exp((c.1 - max) * inv_t));
            if r <= 0.0 {
                return Some(c.0);
            }
        }
        cands.last().map(|c| c.0)
    }
}

/// The largest logit; `None` if every logit is -inf (or NaN). Eight lanes, so it vectorizes.
fn max_logit(logits: &[f32]) -> Option<f32> {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut it = logits.chunks_exact(8);
    for c in &mut it {
        for (m, &l) in lanes.iter_mut().zip(c) {
            *m = if l > *m { l } else { *m };
        }
    }
    for &l in it.remainder() {
        lanes[0] = if l > lanes[0] { l } else { lanes[0] };
    }
    let m = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (m > f32::NEG_INFINITY).then_some(m)
}

/// sum(exp((l - max) * scale)) in 8 f32 lanes per 1024-block, summed in f64. With AVX2 the
/// lanes are one register (`sum_exp_avx2`: the same operations in the same order as
/// `fast_exp`, so the same bits; the compiler does not vectorize the scalar form).
fn sum_exp(logits: &[f32], max: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { sum_exp_avx2(logits, max, scale) };
    }
    sum_exp_lanes(logits, max, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_exp_avx2(logits: &[f32], max: f32, scale: f32) -> f64 {
    use std::arch::x86_64::*;
    let f = |v: f32| _mm256_set1_ps(v);
    let mut total = 0.0f64;
    for chunk in logits.chunks(1024) {
        let mut acc = _mm256_setzero_ps();
        let mut it = chunk.chunks_exact(8);
        for c in &mut it {
            // SAFETY: `c` holds 8 f32 (chunks_exact); the load is unaligned.
            let l = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let x = _mm256_mul_ps(_mm256_sub_ps(l, f(max)), f(scale));
            // fast_exp, lane by lane.
            let ok = _mm256_cmp_ps::<_CMP_GE_OQ>(x, f(-87.0));
            let xc = _mm256_blendv_ps(f(-87.0), _mm256_min_ps(x, f(0.0)), ok);
            let t = _mm256_add_ps(
                _mm256_mul_ps(xc, f(std::f32::consts::LOG2_E)),
                f(12_582_912.0),
            );
            let n = _mm256_sub_ps(t, f(12_582_912.0));
            let r = _mm256_sub_ps(
                _mm256_sub_ps(xc, _mm256_mul_ps(n, f(0.693_145_75))),
                _mm256_mul_ps(n, f(1.428_606_8e-6)),
            );
            let mut p = _mm256_add_ps(f(1.0 / 120.0), _mm256_mul_ps(r, f(1.0 / 720.0)));
            for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_add_ps(f(c), _mm256_mul_ps(r, p));
            }
            let n_int = _mm256_sub_epi32(
                _mm256_castps_si256(t),
                _mm256_set1_epi32(12_582_912.0f32.to_bits() as i32),
            );
            let sc = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                n_int,
                _mm256_set1_epi32(127),
            )));
            let e = _mm256_blendv_ps(f(0.0), _mm256_mul_ps(p, sc), ok);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for &l in it.remainder() {
            lanes[0] += fast_exp((l - max) * scale);
        }
        total += lanes.iter().map(|&a| f64::from(a)).sum::<f64>();
    }
    total
}

#[inline(always)]
fn sum_exp_lanes(logits: &[f32], max: f32, scale: f32) -> f64 {
    let mut total = 0.0f64;
    for chunk in logits.chunks(1024) {
        let mut acc = [0.0f32; 8];
        let mut it = chunk.chunks_exact(8);
        for c in &mut it {
            for (a, &l) in acc.iter_mut().zip(c) {
                *a += fast_exp((l - max) * scale);
            }
        }
        for &l in it.remainder() {
            acc[0] += fast_exp((l - max) * scale);
        }
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
    }
    total
}

/// exp(x) for x <= 0 (0 below -87 and for -inf/NaN), branch-free so loops over it vectorize.
/// Relative error about 2e-7 (Cody-Waite reduction, degree-6 Taylor polynomial).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let ok = x >= -87.0; // false for NaN and -inf
    let xc = if ok { x.min(0.0) } else { -87.0 };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_int = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if ok {
        poly * scale
    } else {
        0.0
    }
}

/// The `k` largest logits (ties: lower id), in no particular order, by one pass that keeps a
/// small buffer and a running threshold.
fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let mut threshold = f32::NEG_INFINITY;
    let cap = 2 * k + 64;
    for (i, &l) in logits.iter().enumerate() {
        if l > threshold {
            out.push((i as u32, l));
            if out.len() >= cap {
                out.select_nth_unstable_by(k - 1, by_logit_desc);
                out.truncate(k);
                threshold = out[k - 1].1;
            }
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, by_logit_desc);
        out.truncate(k);
    }
}

/// Index of the largest logit (the first one on ties); `None` if all are -inf or NaN.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let m = max_logit(logits)?;
    logits.iter().position(|&l| l == m).map(|i| i as u32)
}

/// log(sum(exp(logits))), NaN treated as -inf.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits
        .iter()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if max.is_infinite() {
        return max;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from((l - max).exp()))
        .sum();
    max + sum.ln() as f32
}

/// The `n` most likely tokens of the unmodified distribution with their log-probabilities,
/// most likely first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 || logits.is_empty() {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    let mut cands: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_nan())
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let n = n.min(cands.len());
    if n == 0 {
        return Vec::new();
    }
    if n < cands.len() {
        cands.select_nth_unstable_by(n - 1, by_logit_desc);
        cands.truncate(n);
    }
    cands.sort_unstable_by(by_logit_desc);
    cands.into_iter().map(|(i, l)| (i, l - lse)).collect()
}

/// Log-probability of `id` under the unmodified distribution.
pub fn token_logprob(logits: &[f32], id: u32) -> Option<f32> {
    let l = *logits.get(id as usize)?;
    if l.is_nan() {
        return Some(f32::NEG_INFINITY);
    }
    Some(l - log_sum_exp(logits))
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (end of generation or one the request named) was produced.
    Token(u32),
    /// The stop string with this index in the request's list appeared in the text.
    String(usize),
    /// `max_tokens` tokens were produced.
    MaxTokens,
}

/// What one step lets through to the client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text safe to emit now (never part of a stop string).
    pub text: String,
    /// Set once, on the step that ends the generation.
    pub stop: Option<StopReason>,
}

/// Watches the detokenized stream for stop strings and the token stream for stop tokens and
/// the length limit. Text that could be the beginning of a stop string is held back until it
/// is clear either way; the stop string itself is never emitted.
#[derive(Debug, Clone)]
pub struct StopChecker {
    strings: Vec<String>,
    tokens: Vec<u32>,
    max_tokens: Option<usize>,
    n_tokens: usize,
    held: String,
    stopped: Option<StopReason>,
}

impl StopChecker {
    /// `stop_tokens` usually includes the tokenizer's end-of-generation ids. Empty stop strings
    /// are ignored (their indices in `StopReason::String` still refer to the given list).
    pub fn new(
        stop_strings: Vec<String>,
        stop_tokens: Vec<u32>,
        max_tokens: Option<usize>,
    ) -> Self {
        StopChecker {
            strings: stop_strings,
            tokens: stop_tokens,
            max_tokens,
            n_tokens: 0,
            held: String::new(),
            stopped: None,
        }
    }

    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Tokens seen so far.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// One generated token `id` and the text the detokenizer produced for it.
    pub fn push(&mut self, id: u32, text: &str) -> StopOutput {
        if self.stopped.is_some() {
            return StopOutput::default();
        }
        self.n_tokens += 1;
        if self.tokens.contains(&id) {
            return self.stop(StopReason::Token(id), None);
        }
        let mut out = self.push_text(text);
        if out.stop.is_none() && self.max_tokens.is_some_and(|m| self.n_tokens >= m) {
            let rest = self.stop(StopReason::MaxTokens, None);
            out.text.push_str(&rest.text);
            out.stop = rest.stop;
        }
        out
    }

    /// Text that belongs to no new token (e.g. the detokenizer's final flush).
    pub fn push_text(&mut self, text: &str) -> StopOutput {
        if self.stopped.is_some() {
            return StopOutput::default();
        }
        self.held.push_str(text);
        // The earliest stop string in the held text ends the generation.
        let found = self
            .strings
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, i)))
            .min();
        if let Some((pos, i)) = found {
            return self.stop(StopReason::String(i), Some(pos));
        }
        // Hold back the longest tail that could still grow into a stop string.
        let hold = self.partial_match_len();
        let emit = self.held.len() - hold;
        let text: String = self.held.drain(..emit).collect();
        StopOutput { text, stop: None }
    }

    /// End of stream without a stop: release whatever is held.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn stop(&mut self, reason: StopReason, cut: Option<usize>) -> StopOutput {
        let mut text = std::mem::take(&mut self.held);
        if let Some(pos) = cut {
            text.truncate(pos);
        }
        self.stopped = Some(reason.clone());
        StopOutput {
            text,
            stop: Some(reason),
        }
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string.
    fn partial_match_len(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.strings {
            let max = s.len().saturating_sub(1).min(h.len());
            for len in (best + 1..=max).rev() {
                let start = h.len() - len;
                if h.is_char_boundary(start) && s.as_bytes().starts_with(&h.as_bytes()[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_exp_simd_is_bit_identical_to_the_lanes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for n in [0usize, 1, 7, 8, 9, 1023, 1024, 1025, 5000, 49_155] {
            let mut v: Vec<f32> = (0..n).map(|_| next() * 60.0 - 50.0).collect();
            for (i, x) in v.iter_mut().enumerate() {
                match i % 97 {
                    3 => *x = f32::NEG_INFINITY,
                    5 => *x = f32::NAN,
                    7 => *x = -200.0,
                    _ => {}
                }
            }
            for (max, scale) in [(10.0, 1.0), (9.5, 1.25), (0.0, 0.5)] {
                let want = sum_exp_lanes(&v, max, scale);
                assert_eq!(sum_exp(&v, max, scale).to_bits(), want.to_bits(), "n {n}");
            }
        }
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut x = -90.0f32;
        while x <= 0.0 {
            let (a, b) = (fast_exp(x), x.exp());
            if x >= -87.0 {
                assert!((a - b).abs() <= 4e-7 * b, "x={x}: {a} vs {b}");
            } else {
                assert_eq!(a, 0.0);
            }
            x += 0.0137;
        }
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(f32::NAN), 0.0);
    }

    #[test]
    fn streaming_top_k_matches_a_sort() {
        let logits: Vec<f32> = (0..10_000u32)
            .map(|i| ((i * 7919) % 1000) as f32 / 7.0)
            .collect();
        for k in [1, 5, 40, 999] {
            let mut got = Vec::new();
            top_k_into(&logits, k, &mut got);
            got.sort_unstable_by(by_logit_desc);
            let mut all: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            all.sort_unstable_by(by_logit_desc);
            all.truncate(k);
            assert_eq!(got, all, "k={k}");
        }
    }
}
