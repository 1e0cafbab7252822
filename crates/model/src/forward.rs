//! The one forward pass, for every architecture and every backend.
//!
//! Read it top to bottom: embed, then per layer attention and MLP with their norms and residuals,
//! then the final norm and the output head for the tokens whose logits are wanted. Every
//! architectural difference is a field of `ModelConfig`.

use crate::backend::{AttnParams, AttnPlan, Backend, KvType, RopeParams, TopK};
use crate::config::ModelConfig;
use crate::draw::Draw;
use crate::weights::Weights;
use crate::ModelError;

/// A wanted row as `Model::forward_drawn` returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOrToken {
    /// The logits (`vocab` values).
    Row(Vec<f32>),
    /// The token drawn from them (`u32::MAX`: nothing to draw).
    Token(u32),
}

/// How a step hands its logits buffer (`rows` wanted rows) back: all of it, or the top k.
type ReadLogits<'a, B, T> =
    dyn Fn(&B, &<B as Backend>::Buf, usize) -> Result<Vec<T>, ModelError> + 'a;

/// One sequence's share of a batch: a run of consecutive tokens starting at `start_pos`.
#[derive(Debug, Clone)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// KV blocks of this sequence, covering positions up to `start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    /// Which tokens need logits.
    pub logits: LogitsWanted,
}

/// Which tokens of a chunk return logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    Last,
    All,
}

/// Activation buffers, sized once at load for `max_tokens` tokens per step.
struct RunState<B: Backend> {
    x: B::Buf,      // [T, n_embd] residual stream
    xn: B::Buf,     // [T, n_embd] normed input of a sub-block
    q: B::Buf,      // [T, q_dim]
    k: B::Buf,      // [T, kv_dim]
    v: B::Buf,      // [T, kv_dim]
    attn: B::Buf,   // [T, q_dim] attention output
    o: B::Buf,      // [T, n_embd] sub-block output
    gate: B::Buf,   // [T, n_ff]
    up: B::Buf,     // [T, n_ff]
    picked: B::Buf, // [T, n_embd] rows that need logits
    logits: B::Buf, // [T, vocab]
}

/// A loaded model on a backend: config, resident weights, buffers and the KV cache.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub backend: B,
    weights: Weights<B::Weight>,
    state: RunState<B>,
    kv: B::Kv,
    max_tokens: usize,
    block_size: usize,
    n_blocks: usize,
}

impl<B: Backend> Model<B> {
    /// Builds a model from uploaded weights with a KV cache of `n_blocks` blocks of
    /// `block_size` tokens, processing at most `max_tokens` tokens per internal step.
    pub fn new(
        cfg: ModelConfig,
        backend: B,
        weights: Weights<B::Weight>,
        max_tokens: usize,
        block_size: usize,
        n_blocks: usize,
        kv_type: KvType,
    ) -> Result<Self, ModelError> {
        let t = max_tokens.max(1);
        let b = &backend;
        let state = RunState {
            x: b.alloc(t, cfg.n_embd)?,
            xn: b.alloc(t, cfg.n_embd)?,
            q: b.alloc(t, cfg.q_dim())?,
            k: b.alloc(t, cfg.kv_dim())?,
            v: b.alloc(t, cfg.kv_dim())?,
            attn: b.alloc(t, cfg.q_dim())?,
            o: b.alloc(t, cfg.n_embd)?,
            gate: b.alloc(t, cfg.n_ff)?,
            up: b.alloc(t, cfg.n_ff)?,
            picked: b.alloc(t, cfg.n_embd)?,
            logits: b.alloc(t, cfg.vocab_size)?,
        };
        if kv_type == KvType::Q8_0 && !cfg.head_dim.is_multiple_of(32) {
            return Err(ModelError::BadConfig(format!(
                "a q8_0 KV cache needs a head dimension divisible by 32 (this model's is {}); \
                 use --kv-type f16 or fp8",
                cfg.head_dim
            )));
        }
        let kv = backend.alloc_kv(cfg.n_layers, n_blocks * block_size, cfg.kv_dim(), kv_type)?;
        Ok(Model {
            cfg,
            backend,
            weights,
            state,
            kv,
            max_tokens: t,
            block_size,
            n_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Runs a few step shapes once on a throwaway sequence, so that the backend's first-use
    /// costs of those shapes fall before the first request instead of into its latency (a GPU
    /// library loading its kernels at their first launch: cuBLAS picks kernels by the token
    /// count; scratch buffers growing): prompt steps of `max_tokens` tokens (or as many as the
    /// cache holds), then of halves of that down to 64, then one decode step whose token is
    /// drawn where the logits are (`forward_drawn`, as serving draws). Other step sizes still
    /// pay their own first use. The KV blocks written hold nothing a sequence reads later: a
    /// sequence reads only positions it has written. Returns the tokens run.
    pub fn warm_up(&mut self) -> Result<usize, ModelError> {
        let cap = (self.n_blocks * self.block_size).saturating_sub(1);
        let vocab = self.cfg.vocab_size.max(1);
        let mut n = self.max_tokens.min(cap);
        let mut done = 0;
        while n > 0 {
            let tokens: Vec<u32> = (0..n + 1).map(|i| (i % vocab) as u32).collect();
            let table: Vec<u32> = (0..(n + 1).div_ceil(self.block_size) as u32).collect();
            let chunk = |tokens, start_pos| SeqChunk {
                tokens,
                start_pos,
                block_table: &table,
                logits: LogitsWanted::Last,
            };
            self.forward(&[chunk(&tokens[..n], 0)])?;
            done += n;
            if n <= 64 {
                self.forward_drawn(&[chunk(&tokens[n..], n)], &[Some(Draw::greedy(false))], &[])?;
                return Ok(done + 1);
            }
            n = (n / 2).max(64);
        }
        Ok(done)
    }

    /// Runs a batch and returns the logits wanted, in batch order: one `vocab`-long row per
    /// token with logits. Chunks longer than the step size are processed in several steps.
    pub fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let vocab = self.cfg.vocab_size;
        self.forward_with(batch, &|b: &B, logits: &B::Buf, n: usize| {
            Ok(b.read(logits, n)?
                .chunks_exact(vocab)
                .map(<[f32]>::to_vec)
                .collect())
        })
    }

    /// As `forward`, but returns only the `k` largest logits of each wanted row and the row's
    /// log-sum-exp (`Backend::top_k`): on a GPU, a few numbers per token cross to the host
    /// instead of the vocabulary.
    pub fn forward_top_k(
        &mut self,
        batch: &[SeqChunk<'_>],
        k: usize,
    ) -> Result<Vec<TopK>, ModelError> {
        self.forward_with(batch, &|b: &B, logits: &B::Buf, n: usize| {
            b.top_k(logits, n, k)
        })
    }

    /// As `forward`, but each wanted row whose draw is given comes back as the token drawn
    /// where the logits are (`Backend::sample_rows`), the others as whole rows; `draws` in the
    /// order of the wanted rows. With every row drawn, on a GPU only the ids cross to the host.
    pub fn forward_drawn(
        &mut self,
        batch: &[SeqChunk<'_>],
        draws: &[Option<Draw>],
        banned: &[u32],
    ) -> Result<Vec<RowOrToken>, ModelError> {
        let vocab = self.cfg.vocab_size;
        let next = std::cell::Cell::new(0usize);
        let out = self.forward_with(batch, &|b: &B, logits: &B::Buf, n: usize| {
            let at = next.get();
            let these = draws.get(at..at + n).ok_or_else(|| {
                ModelError::Batch(format!("{} draws for more wanted rows", draws.len()))
            })?;
            next.set(at + n);
            let ids = if these.iter().any(Option::is_some) {
                // Rows that come back whole get a throwaway greedy draw.
                let d: Vec<Draw> = these
                    .iter()
                    .map(|d| d.unwrap_or(Draw::greedy(false)))
                    .collect();
                b.sample_rows(logits, &d, banned)?
            } else {
                Vec::new()
            };
            let rows = if these.iter().any(Option::is_none) {
                b.read(logits, n)?
            } else {
                Vec::new()
            };
            Ok(these
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Some(_) => RowOrToken::Token(ids[i]),
                    None => RowOrToken::Row(rows[i * vocab..(i + 1) * vocab].to_vec()),
                })
                .collect())
        })?;
        if next.get() != draws.len() {
            return Err(ModelError::Batch(format!(
                "{} draws for {} wanted rows",
                draws.len(),
                next.get()
            )));
        }
        Ok(out)
    }

    fn forward_with<T>(
        &mut self,
        batch: &[SeqChunk<'_>],
        out_of: &ReadLogits<'_, B, T>,
    ) -> Result<Vec<T>, ModelError> {
        let mut out = Vec::new();
        // Split into steps of at most max_tokens tokens, keeping each piece of a chunk in order.
        let mut pieces: Vec<SeqChunk<'_>> = Vec::new();
        let mut used = 0;
        for chunk in batch {
            self.check_chunk(chunk)?;
            let mut start = 0;
            while start < chunk.tokens.len() {
                if used == self.max_tokens {
                    out.extend(self.step(&pieces, out_of)?);
                    pieces.clear();
                    used = 0;
                }
                let n = (chunk.tokens.len() - start).min(self.max_tokens - used);
                let last_piece = start + n == chunk.tokens.len();
                pieces.push(SeqChunk {
                    tokens: &chunk.tokens[start..start + n],
                    start_pos: chunk.start_pos + start,
                    block_table: chunk.block_table,
                    logits: match chunk.logits {
                        LogitsWanted::Last if !last_piece => LogitsWanted::None,
                        w => w,
                    },
                });
                used += n;
                start += n;
            }
        }
        if !pieces.is_empty() {
            out.extend(self.step(&pieces, out_of)?);
        }
        Ok(out)
    }

    fn check_chunk(&self, c: &SeqChunk<'_>) -> Result<(), ModelError> {
        let end = c.start_pos + c.tokens.len();
        if end > c.block_table.len() * self.block_size {
            return Err(ModelError::Batch(format!(
                "positions up to {end} need more than the {} KV blocks given",
                c.block_table.len()
            )));
        }
        if let Some(&b) = c.block_table.iter().find(|&&b| b as usize >= self.n_blocks) {
            return Err(ModelError::Batch(format!(
                "KV block {b} out of range (have {})",
                self.n_blocks
            )));
        }
        if let Some(&t) = c
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::Batch(format!(
                "token id {t} outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// One step of at most `max_tokens` tokens.
    fn step<T>(
        &mut self,
        batch: &[SeqChunk<'_>],
        out_of: &ReadLogits<'_, B, T>,
    ) -> Result<Vec<T>, ModelError> {
        // Flatten the batch: one entry per token.
        let mut ids = Vec::new();
        let mut plan = AttnPlan {
            block_size: self.block_size,
            ..AttnPlan::default()
        };
        let mut want_rows = Vec::new();
        for (si, c) in batch.iter().enumerate() {
            plan.seqs.push(c.block_table.to_vec());
            for (i, &tok) in c.tokens.iter().enumerate() {
                let pos = c.start_pos + i;
                let blk = c.block_table[pos / self.block_size] as usize;
                let wanted = match c.logits {
                    LogitsWanted::All => true,
                    LogitsWanted::Last => i + 1 == c.tokens.len(),
                    LogitsWanted::None => false,
                };
                if wanted {
                    want_rows.push(ids.len());
                }
                ids.push(tok);
                plan.positions.push(pos as u32);
                plan.slots
                    .push((blk * self.block_size + pos % self.block_size) as u32);
                plan.seq_of.push(si as u32);
            }
        }
        self.backend.begin_step(&ids, &plan, &want_rows);
        let ran = self.run_ops(&ids, &plan, &want_rows);
        let queued = self.backend.end_step(ran.is_ok())?;
        ran?;
        if !queued {
            // The backend recorded the ops without running them and could not replay them.
            self.run_ops(&ids, &plan, &want_rows)?;
        }
        if want_rows.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.state;
        out_of(&self.backend, &s.logits, want_rows.len())
    }

    /// The step's ops, from the embedding to the logits of the wanted rows.
    fn run_ops(
        &mut self,
        ids: &[u32],
        plan: &AttnPlan,
        want_rows: &[usize],
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let b = &self.backend;
        let s = &mut self.state;
        let w = &self.weights;
        let t = ids.len();
        for buf in [
            &mut s.x,
            &mut s.xn,
            &mut s.q,
            &mut s.k,
            &mut s.v,
            &mut s.attn,
            &mut s.o,
            &mut s.gate,
            &mut s.up,
            &mut s.picked,
        ] {
            b.set_rows(buf, t);
        }

        b.embed(&w.tok_embd, ids, cfg.embed_scale.unwrap_or(1.0), &mut s.x)?;
        if let Some(first) = w.layers.first() {
            b.rms_norm(&s.x, &first.attn_norm, cfg.norm_eps, &mut s.xn);
        }
        for (il, lw) in w.layers.iter().enumerate() {
            let sliding = cfg.sliding_layers[il];
            // Attention block (its input norm is in s.xn: the embedding's, or the previous
            // layer's residual add fused with it).
            b.matmul_many(
                &[&lw.wq, &lw.wk, &lw.wv],
                &s.xn,
                &mut [&mut s.q, &mut s.k, &mut s.v],
            )?;
            if let (Some(bq), Some(bk), Some(bv)) = (&lw.bq, &lw.bk, &lw.bv) {
                b.add_bias(&mut s.q, bq);
                b.add_bias(&mut s.k, bk);
                b.add_bias(&mut s.v, bv);
            }
            if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                b.rms_norm_heads(&mut s.q, qn, cfg.head_dim, cfg.norm_eps);
                b.rms_norm_heads(&mut s.k, kn, cfg.head_dim, cfg.norm_eps);
            }
            let rope = RopeParams {
                theta: if sliding {
                    cfg.rope_theta_local
                } else {
                    cfg.rope_theta
                },
                scale: if sliding { 1.0 } else { cfg.rope_scale },
                rope_dim: cfg.rope_dim,
                head_dim: cfg.head_dim,
                layout: cfg.rope_layout,
            };
            b.rope_kv_store(&mut s.q, &mut s.k, &s.v, &mut self.kv, il, plan, rope);
            let attn = AttnParams {
                n_head: cfg.n_head,
                n_head_kv: cfg.n_head_kv,
                head_dim: cfg.head_dim,
                scale: cfg.attn_scale,
                window: if sliding { cfg.sliding_window } else { None },
            };
            b.attention(&s.q, &self.kv, il, plan, attn, &mut s.attn);
            b.matmul(&lw.wo, &s.attn, &mut s.o)?;
            // The residual add, fused with the MLP's input norm (a post-norm's output goes to
            // s.picked, free until the logits).
            let res = match &lw.post_attn_norm {
                Some(pn) => {
                    b.rms_norm(&s.o, pn, cfg.norm_eps, &mut s.picked);
                    &s.picked
                }
                None => &s.o,
            };
            b.add_rms_norm(&mut s.x, res, &lw.ffn_norm, cfg.norm_eps, &mut s.xn);

            // MLP block.
            b.gate_up_glu(
                &lw.ffn_gate,
                &lw.ffn_up,
                &s.xn,
                &mut s.gate,
                &mut s.up,
                cfg.activation,
            )?;
            b.matmul(&lw.ffn_down, &s.gate, &mut s.o)?;
            let res = match &lw.post_ffn_norm {
                Some(pn) => {
                    b.rms_norm(&s.o, pn, cfg.norm_eps, &mut s.picked);
                    &s.picked
                }
                None => &s.o,
            };
            // The residual add, fused with the next layer's input norm.
            match w.layers.get(il + 1) {
                Some(next) => {
                    b.add_rms_norm(&mut s.x, res, &next.attn_norm, cfg.norm_eps, &mut s.xn)
                }
                None => b.add(&mut s.x, res),
            }
        }

        if want_rows.is_empty() {
            return Ok(());
        }
        let n = want_rows.len();
        b.set_rows(&mut s.picked, n);
        b.set_rows(&mut s.xn, n);
        b.set_rows(&mut s.logits, n);
        b.gather_rows(&s.x, want_rows, &mut s.picked);
        b.rms_norm(&s.picked, &w.output_norm, cfg.norm_eps, &mut s.xn);
        b.matmul(
            w.output.as_ref().unwrap_or(&w.tok_embd),
            &s.xn,
            &mut s.logits,
        )?;
        if let Some(cap) = cfg.final_logit_softcap {
            b.softcap(&mut s.logits, cap);
        }
        Ok(())
    }
}
