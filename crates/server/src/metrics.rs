//! Server metrics in the Prometheus text format (version 0.0.4).
//!
//! Counters and histograms the routes update, plus the engine's figures read at scrape time:
//! queue depth, running sequences, KV-cache blocks, preemptions and prefix-cache lookups.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use realizar_engine::{EngineState, EngineStats};

/// Bucket bounds in seconds for time to first token.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
];
/// Bucket bounds in seconds for the time between two tokens of a stream.
const ITL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
];
/// Bucket bounds in seconds for a whole request.
const E2E_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0];

/// A cumulative histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (non-cumulative), then the +Inf bucket.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

/// Everything /metrics reports besides the engine's own figures.
#[derive(Debug)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Finished generations by reason.
    pub finished_stop: AtomicU64,
    pub finished_length: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            by_status: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished_stop: AtomicU64::new(0),
            finished_length: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn count_status(&self, status: u16) {
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// The Prometheus text for these metrics and the engine's figures.
    pub fn render(&self, e: &EngineStats, state: EngineState) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP realizar_requests_total HTTP requests by status code.\n\
             # TYPE realizar_requests_total counter"
        );
        if let Ok(m) = self.by_status.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(o, "realizar_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            o,
            "realizar_prompt_tokens_total",
            "Prompt tokens of accepted generation requests.",
            ld(&self.prompt_tokens),
        );
        counter(
            o,
            "realizar_generation_tokens_total",
            "Tokens generated and delivered.",
            ld(&self.generation_tokens),
        );
        let _ = writeln!(
            o,
            "# HELP realizar_requests_finished_total Generations finished, by reason.\n\
             # TYPE realizar_requests_finished_total counter\n\
             realizar_requests_finished_total{{reason=\"stop\"}} {}\n\
             realizar_requests_finished_total{{reason=\"length\"}} {}\n\
             realizar_requests_finished_total{{reason=\"cancelled\"}} {}",
            ld(&self.finished_stop),
            ld(&self.finished_length),
            e.cancelled
        );
        self.ttft.render(
            o,
            "realizar_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
        );
        self.itl.render(
            o,
            "realizar_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        self.e2e.render(
            o,
            "realizar_request_duration_seconds",
            "Time from request arrival to its last token.",
        );
        gauge(
            o,
            "realizar_queue_depth",
            "Requests waiting for a running slot.",
            e.queued as f64,
        );
        gauge(
            o,
            "realizar_running_sequences",
            "Sequences being prefilled or decoded.",
            e.running as f64,
        );
        gauge(
            o,
            "realizar_kv_blocks_used",
            "KV-cache blocks held by requests.",
            e.kv_blocks_used as f64,
        );
        gauge(
            o,
            "realizar_kv_blocks_total",
            "KV-cache blocks in all.",
            e.kv_blocks_total as f64,
        );
        let usage = if e.kv_blocks_total > 0 {
            e.kv_blocks_used as f64 / e.kv_blocks_total as f64
        } else {
            0.0
        };
        gauge(
            o,
            "realizar_kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use.",
            usage,
        );
        counter(
            o,
            "realizar_engine_steps_total",
            "Forward passes the engine ran.",
            e.steps,
        );
        let seconds = |o: &mut String, name: &str, help: &str, ns: u64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                ns as f64 / 1e9
            );
        };
        seconds(
            o,
            "realizar_engine_step_seconds_total",
            "Time of the engine steps that ran a forward pass, whole: scheduling, the forward pass, sampling, handing tokens on.",
            e.step_ns,
        );
        seconds(
            o,
            "realizar_engine_forward_seconds_total",
            "Time of those steps' forward passes alone (the rest of a step is host work).",
            e.forward_ns,
        );
        counter(
            o,
            "realizar_preemptions_total",
            "Requests preempted to free KV blocks.",
            e.preemptions,
        );
        counter(
            o,
            "realizar_prefill_tokens_total",
            "Prompt tokens computed (recomputation after preemption included).",
            e.prefill_tokens,
        );
        counter(
            o,
            "realizar_prefix_cache_queried_tokens_total",
            "Prompt tokens looked up in the prefix cache at admission.",
            e.prefix_cache_queried_tokens,
        );
        counter(
            o,
            "realizar_prefix_cache_hit_tokens_total",
            "Prompt tokens found in the prefix cache (not computed again).",
            e.prefix_cache_hit_tokens,
        );
        gauge(
            o,
            "realizar_engine_ready",
            "1 when the engine serves requests, 0 while loading or after a failure.",
            if state == EngineState::Ready {
                1.0
            } else {
                0.0
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_cumulatively() {
        let m = Metrics::default();
        m.count_status(200);
        m.count_status(200);
        m.count_status(400);
        m.ttft.observe(Duration::from_millis(30));
        m.ttft.observe(Duration::from_millis(300));
        m.ttft.observe(Duration::from_secs(100));
        let e = EngineStats {
            kv_blocks_total: 10,
            kv_blocks_used: 5,
            preemptions: 3,
            prefix_cache_queried_tokens: 200,
            prefix_cache_hit_tokens: 48,
            step_ns: 2_500_000_000,
            forward_ns: 2_000_000_000,
            ..EngineStats::default()
        };
        let text = m.render(&e, EngineState::Ready);
        assert!(
            text.contains("realizar_requests_total{status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("realizar_requests_total{status=\"400\"} 1"));
        assert!(text.contains("realizar_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("realizar_time_to_first_token_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("realizar_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("realizar_time_to_first_token_seconds_count 3"));
        assert!(text.contains("realizar_kv_cache_usage_ratio 0.5"));
        assert!(text.contains("realizar_engine_ready 1"));
        assert!(text.contains("realizar_preemptions_total 3"));
        assert!(text.contains("realizar_prefix_cache_queried_tokens_total 200"));
        assert!(text.contains("realizar_prefix_cache_hit_tokens_total 48"));
        assert!(text.contains("# TYPE realizar_prefix_cache_hit_tokens_total counter"));
        assert!(
            text.contains("realizar_engine_step_seconds_total 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains("realizar_engine_forward_seconds_total 2\n"),
            "{text}"
        );
    }
}
