//! CUDA graphs: a decode step's few hundred small launches recorded once and replayed as one.
//!
//! The forward pass calls `begin_step` with every index array of the step (token ids, positions,
//! KV slots, block tables, wanted rows). They are copied to their device buffers there, all
//! before the first launch, so the launches themselves only ever read device memory whose
//! address does not change from step to step. A step shape (tokens, sequences, wanted rows) seen
//! once runs directly (that run also allocates any scratch it needs); the second time it is
//! recorded with stream capture and the record is launched; from then on the ops skip their
//! launches and `end_step` launches the record. Anything that moves a buffer a record points at
//! (an index array or a scratch buffer growing) bumps `CudaBackend::gen`, which drops every
//! record. Steps from `gemm_min_tokens` tokens up (cuBLAS prefill) are not recorded, there
//! launches being few next to the work, except pure decode steps (one token per sequence)
//! whose matmuls the mmq kernels take (batched decode: the same shape repeats every step; a
//! prefill chunk's rarely does), and pure decode steps whose matmuls take f16 weight copies
//! (cuBLAS, `set_f16_weights`): cuBLAS calls are recorded too (`set_graph_blas`; with it off, a
//! recording that reaches cuBLAS skips the call, is thrown away, and the step runs directly).
//! A batched cuBLAS call's pointer table entry is written by the step's direct run; the table
//! starting over bumps `gen`.
//!
//! A record replays exactly the launches of the step it was made from, with the same arguments,
//! so results are bit-identical with and without graphs (tests/model.rs checks it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use cudarc::driver::{sys, CudaGraph};
use realizar_model::backend::AttnPlan;
use realizar_model::ModelError;

use super::CudaBackend;
use crate::CudaError;

/// Most records kept; more distinct shapes than this (a server sees one per batch size) start
/// the collection over.
const MAX_RECORDS: usize = 64;

/// What the ops do with their launches during a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Mode {
    /// Launch them.
    #[default]
    Eager,
    /// Launch them into a stream capture.
    Capture,
    /// Skip them: `end_step` launches the record.
    Replay,
}

/// The shape of a step: what fixes its sequence of launches and their arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    tokens: usize,
    seqs: usize,
    wanted: usize,
    /// The longest context in units of split-K attention's keys per split (the split count,
    /// a launch dimension, follows from it).
    context: usize,
}

/// A recorded step. The driver's graph objects are not internally synchronized; this one is
/// only touched under `CudaBackend::graphs`' mutex.
struct Record(CudaGraph);

// SAFETY: the graph is created, launched and dropped only while the backend's `graphs` mutex is
// held, which serializes every API call on it as the driver requires; its stream and context
// are themselves Send.
unsafe impl Send for Record {}

/// Counts, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Steps recorded (each also ran once from its record).
    pub recorded: u64,
    /// Steps run from a record made earlier.
    pub replayed: u64,
    /// Steps run launch by launch.
    pub eager: u64,
}

#[derive(Default)]
pub(super) struct Graphs {
    enabled: bool,
    mode: Mode,
    key: Option<Key>,
    /// `CudaBackend::gen` when the records were made.
    gen: u64,
    seen: HashMap<Key, u32>,
    records: HashMap<Key, Record>,
    /// Shapes whose capture failed: run directly from then on.
    failed: HashSet<Key>,
    stats: GraphStats,
}

impl Graphs {
    pub(super) fn new(enabled: bool) -> Graphs {
        Graphs {
            enabled,
            ..Graphs::default()
        }
    }
}

impl CudaBackend {
    pub(super) fn graphs(&self) -> std::sync::MutexGuard<'_, Graphs> {
        self.graphs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records and replays decode steps as CUDA graphs (on by default; `REALIZAR_CUDA_GRAPHS=0`
    /// turns it off).
    pub fn set_graphs(&mut self, on: bool) {
        let mut g = self.graphs();
        g.enabled = on;
        g.records.clear();
        g.seen.clear();
    }

    /// How many steps were recorded, replayed and run directly so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs().stats
    }

    /// Copies every index array of a step to its device buffer, as the ops will ask for them.
    fn upload_step(
        &self,
        ids: &[u32],
        plan: &AttnPlan,
        want_rows: &[usize],
    ) -> Result<(), CudaError> {
        let (offs, tables) = flat_tables(plan);
        let wanted: Vec<u32> = want_rows.iter().map(|&r| r as u32).collect();
        let mut idx = self.indices();
        let (s, g) = (&self.stream, &self.gen);
        idx.ids.set(s, g, ids)?;
        idx.positions.set(s, g, &plan.positions)?;
        idx.slots.set(s, g, &plan.slots)?;
        idx.seq_of.set(s, g, &plan.seq_of)?;
        idx.table_off.set(s, g, &offs)?;
        idx.tables.set(s, g, &tables)?;
        if !wanted.is_empty() {
            idx.gather.set(s, g, &wanted)?;
        }
        Ok(())
    }

    pub(super) fn graph_begin(&self, ids: &[u32], plan: &AttnPlan, want_rows: &[usize]) {
        self.keep(self.upload_step(ids, plan, want_rows));
        let mut g = self.graphs();
        g.mode = Mode::Eager;
        g.key = None;
        self.replaying.store(false, Ordering::Relaxed);
        let copies = self.f16_weights_take(ids.len());
        let pure_decode = plan.seqs.len() == ids.len();
        let eligible = g.enabled
            && !self.sync_each
            && !ids.is_empty()
            && (ids.len() < self.gemm_min_tokens
                || self.blas.is_none()
                || (pure_decode && (self.mmq_takes(ids.len()) || copies)))
            && (!copies || self.graph_blas)
            && self.check().is_ok();
        if !eligible {
            g.stats.eager += 1;
            return;
        }
        let gen = self.gen.load(Ordering::Relaxed);
        if gen != g.gen || g.records.len() >= MAX_RECORDS {
            g.records.clear();
            g.seen.clear();
            g.gen = gen;
        }
        let max_len = plan.positions.iter().max().map_or(1, |&p| p as usize + 1);
        let key = Key {
            tokens: ids.len(),
            seqs: plan.seqs.len(),
            wanted: want_rows.len(),
            context: max_len.div_ceil(super::attention::ATTN_SPLIT_KEYS),
        };
        if g.records.contains_key(&key) {
            g.mode = Mode::Replay;
            g.key = Some(key);
            self.replaying.store(true, Ordering::Relaxed);
            return;
        }
        let seen = g.seen.entry(key).or_insert(0);
        *seen += 1;
        if *seen < 2 || g.failed.contains(&key) {
            g.stats.eager += 1;
            return;
        }
        let relaxed = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        match self.stream.begin_capture(relaxed) {
            Ok(()) => {
                g.mode = Mode::Capture;
                g.key = Some(key);
                self.capture_spoiled.store(false, Ordering::Relaxed);
                self.capturing.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                g.failed.insert(key);
                g.stats.eager += 1;
            }
        }
    }

    pub(super) fn graph_end(&self, ok: bool) -> Result<bool, ModelError> {
        let mut g = self.graphs();
        let (mode, key) = (g.mode, g.key.take());
        g.mode = Mode::Eager;
        self.replaying.store(false, Ordering::Relaxed);
        let spoiled = self.capture_spoiled.swap(false, Ordering::Relaxed);
        self.capturing.store(false, Ordering::Relaxed);
        let Some(key) = key else {
            return Ok(true);
        };
        match mode {
            Mode::Eager => Ok(true),
            Mode::Replay => {
                if !ok {
                    return Ok(true);
                }
                let Some(rec) = g.records.get(&key) else {
                    return Err(CudaError::Unsupported("CUDA graph record missing".into()).into());
                };
                rec.0
                    .launch()
                    .map_err(|e| CudaError::call("cuGraphLaunch", e))?;
                g.stats.replayed += 1;
                Ok(true)
            }
            Mode::Capture => {
                let flags = sys::CUgraphInstantiate_flags(0);
                let captured = self.stream.end_capture(flags);
                let clean = ok
                    && !spoiled
                    && self.check().is_ok()
                    && self.gen.load(Ordering::Relaxed) == g.gen;
                match captured {
                    Ok(Some(graph)) if clean => {
                        graph
                            .launch()
                            .map_err(|e| CudaError::call("cuGraphLaunch", e))?;
                        g.records.insert(key, Record(graph));
                        g.stats.recorded += 1;
                        Ok(true)
                    }
                    _ => {
                        // Nothing of the step ran. Errors raised while recording belong to the
                        // record; the direct run that follows raises any real one again.
                        *self.sticky.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        g.failed.insert(key);
                        g.stats.eager += 1;
                        Ok(false)
                    }
                }
            }
        }
    }
}

/// The block tables of a plan laid end to end, and where each sequence's starts.
pub(super) fn flat_tables(plan: &AttnPlan) -> (Vec<u32>, Vec<u32>) {
    let mut offs = Vec::with_capacity(plan.seqs.len());
    let mut tables = Vec::new();
    for s in &plan.seqs {
        offs.push(tables.len() as u32);
        tables.extend_from_slice(s);
    }
    (offs, tables)
}
