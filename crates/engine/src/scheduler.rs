//! The continuous-batching scheduler: plain CPU bookkeeping that turns the set of live requests
//! into one step plan, `{request: n_tokens}`, as vLLM v1 does.
//!
//! Every request is a token list (prompt, then what it generated) of which the first
//! `computed` tokens have their KV entries in the cache. A step computes the next `n` tokens of
//! some requests; a request whose step reaches the end of its list gets logits and samples its
//! next token. Prefill (`n` = the prompt), chunked prefill (`n` = a slice of a long prompt) and
//! decode (`n` = 1) are the same thing.
//!
//! Each step, in order:
//! 1. running requests that are decoding (one token each), oldest first;
//! 2. running requests still prefilling, a chunk each, while the step's token budget lasts;
//! 3. waiting requests, first come first served, admitted only when the KV blocks of their
//!    whole token list fit, while the budget and the running-sequence limit allow.
//!
//! With the prefix cache on, admission first looks up the request's leading full blocks among
//! those computed before (`KvBlocks::admit`): the ones found are shared, count as computed, and
//! only the remaining blocks must fit. Blocks are registered as their tokens are committed.
//!
//! A decode that needs a new block when none is free preempts the most recently admitted other
//! request: its references to blocks are dropped and it goes back to the front of the queue, to
//! be recomputed from its tokens later (vLLM's recompute preemption; what it had computed stays
//! in the prefix cache until evicted). The scheduler never sees a model.

use std::collections::{HashMap, VecDeque};

use crate::kv_blocks::{KvBlocks, ReqId};

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedConfig {
    /// Sequences running at once (decoding or prefilling).
    pub max_seqs: usize,
    /// Tokens computed per step, all sequences together.
    pub max_step_tokens: usize,
    /// Most prompt tokens of one sequence per step.
    pub prefill_chunk: usize,
    /// Reuse the KV blocks of token prefixes computed before (automatic prefix caching).
    pub prefix_cache: bool,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            max_seqs: 16,
            max_step_tokens: 256 + 16,
            prefill_chunk: 256,
            prefix_cache: true,
        }
    }
}

/// One request's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepItem {
    pub id: ReqId,
    /// First position computed (the request's `computed` before the step).
    pub start: usize,
    pub n_tokens: usize,
    /// The step reaches the end of the request's tokens: sample its next token.
    pub wants_logits: bool,
}

/// What one forward pass computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub items: Vec<StepItem>,
    /// Requests sent back to the queue this step to free blocks.
    pub preempted: Vec<ReqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn n_tokens(&self) -> usize {
        self.items.iter().map(|i| i.n_tokens).sum()
    }
}

#[derive(Debug)]
struct Book {
    /// Tokens known: prompt, then generated.
    tokens: Vec<u32>,
    /// Leading tokens whose KV entries are in the cache.
    computed: usize,
}

/// Prefix-cache lookups at admission, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of the requests admitted while the cache was on.
    pub queried_tokens: u64,
    /// Of those, tokens found in the cache (not computed again).
    pub hit_tokens: u64,
}

/// Waiting and running requests, their progress, and the KV blocks.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    kv: KvBlocks,
    waiting: VecDeque<ReqId>,
    /// In admission order.
    running: Vec<ReqId>,
    books: HashMap<ReqId, Book>,
    preemptions: u64,
    prefix: PrefixCacheStats,
}

impl Scheduler {
    /// Turns `kv`'s prefix caching on or off as `cfg.prefix_cache` says.
    pub fn new(cfg: SchedConfig, mut kv: KvBlocks) -> Self {
        kv.set_prefix_caching(cfg.prefix_cache);
        Scheduler {
            cfg: SchedConfig {
                max_seqs: cfg.max_seqs.max(1),
                max_step_tokens: cfg.max_step_tokens.max(1),
                prefill_chunk: cfg.prefill_chunk.max(1),
                prefix_cache: cfg.prefix_cache,
            },
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            books: HashMap::new(),
            preemptions: 0,
            prefix: PrefixCacheStats::default(),
        }
    }

    /// Queues a request with its prompt (at least one token).
    pub fn add(&mut self, id: ReqId, prompt: Vec<u32>) {
        self.books.insert(
            id,
            Book {
                tokens: prompt,
                computed: 0,
            },
        );
        self.waiting.push_back(id);
    }

    /// Plans the next step. Call `commit` with the plan once it has run.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_step_tokens;
        // 1. Decodes, oldest first.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let (len, computed) = self.progress(id);
            if len - computed == 1 {
                if !self.ensure_blocks(id, len, &mut plan) {
                    // `id` itself was preempted or nothing could be freed.
                    if self.running.get(i) != Some(&id) {
                        continue;
                    }
                    i += 1;
                    continue;
                }
                plan.items.push(StepItem {
                    id,
                    start: computed,
                    n_tokens: 1,
                    wants_logits: true,
                });
                budget -= 1;
            }
            i += 1;
        }
        // 2. Running prefills, a chunk each.
        for &id in &self.running {
            if budget == 0 {
                break;
            }
            let (len, computed) = self.progress(id);
            let need = len - computed;
            if need > 1 {
                let n = need.min(self.cfg.prefill_chunk).min(budget);
                plan.items.push(item(id, len, computed, n));
                budget -= n;
            }
        }
        // 3. Admissions.
        while budget > 0 && self.running.len() < self.cfg.max_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(book) = self.books.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            // Shared blocks hold only computed tokens: the new ones are all past them.
            let Some(hit) = self.kv.admit(id, &book.tokens) else {
                break;
            };
            book.computed = hit;
            let len = book.tokens.len();
            if self.kv.prefix_caching() {
                self.prefix.queried_tokens += len as u64;
                self.prefix.hit_tokens += hit as u64;
            }
            self.waiting.pop_front();
            self.running.push(id);
            let n = (len - hit).min(self.cfg.prefill_chunk).min(budget);
            plan.items.push(item(id, len, hit, n));
            budget -= n;
        }
        plan
    }

    /// Makes `id`'s blocks cover `tokens`, preempting the newest running requests that are not
    /// in the plan yet. False when that is impossible (then `id` may itself have been
    /// preempted).
    fn ensure_blocks(&mut self, id: ReqId, tokens: usize, plan: &mut StepPlan) -> bool {
        loop {
            if self.kv.grow(id, tokens) {
                return true;
            }
            let victim = self
                .running
                .iter()
                .rev()
                .copied()
                .find(|r| !plan.items.iter().any(|it| it.id == *r));
            match victim {
                Some(v) => {
                    self.preempt(v);
                    plan.preempted.push(v);
                    if v == id {
                        return false;
                    }
                }
                None => return false,
            }
        }
    }

    fn preempt(&mut self, id: ReqId) {
        self.kv.release(id);
        self.running.retain(|&r| r != id);
        if let Some(b) = self.books.get_mut(&id) {
            b.computed = 0;
        }
        self.waiting.push_front(id);
        self.preemptions += 1;
    }

    /// `id`'s (tokens known, tokens computed).
    fn progress(&self, id: ReqId) -> (usize, usize) {
        self.books
            .get(&id)
            .map_or((0, 0), |b| (b.tokens.len(), b.computed))
    }

    /// Records that the plan ran: its tokens are in the cache, and the blocks they filled can
    /// be shared.
    pub fn commit(&mut self, plan: &StepPlan) {
        for it in &plan.items {
            if let Some(b) = self.books.get_mut(&it.id) {
                b.computed = (b.computed + it.n_tokens).min(b.tokens.len());
                self.kv.register(it.id, &b.tokens, b.computed);
            }
        }
    }

    /// `id` sampled `token`.
    pub fn append_token(&mut self, id: ReqId, token: u32) {
        if let Some(b) = self.books.get_mut(&id) {
            b.tokens.push(token);
        }
    }

    /// Forgets `id` (finished or cancelled) and frees its blocks.
    pub fn finish(&mut self, id: ReqId) {
        self.kv.release(id);
        self.books.remove(&id);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
    }

    /// The block table of `id`.
    pub fn block_table(&self, id: ReqId) -> &[u32] {
        self.kv.table(id)
    }

    pub fn kv(&self) -> &KvBlocks {
        &self.kv
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.prefix
    }

    pub fn is_idle(&self) -> bool {
        self.books.is_empty()
    }

    /// Every request the scheduler knows (waiting or running).
    pub fn ids(&self) -> impl Iterator<Item = ReqId> + '_ {
        self.books.keys().copied()
    }
}

fn item(id: ReqId, len: usize, computed: usize, n: usize) -> StepItem {
    StepItem {
        id,
        start: computed,
        n_tokens: n,
        wants_logits: computed + n == len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(max_seqs: usize, step: usize, chunk: usize, blocks: usize) -> Scheduler {
        Scheduler::new(
            SchedConfig {
                max_seqs,
                max_step_tokens: step,
                prefill_chunk: chunk,
                prefix_cache: true,
            },
            KvBlocks::new(blocks, 16),
        )
    }

    /// `n` tokens that no other request's prompt shares.
    fn own(id: ReqId, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| id as u32 * 10_000 + i).collect()
    }

    /// Runs a plan as the engine would: commit, then every request with logits samples a token.
    fn run(s: &mut Scheduler, plan: &StepPlan) {
        s.commit(plan);
        for it in &plan.items {
            if it.wants_logits {
                s.append_token(it.id, 7);
            }
        }
        s.kv().check_invariants();
    }

    fn ns(plan: &StepPlan) -> Vec<(ReqId, usize)> {
        plan.items.iter().map(|i| (i.id, i.n_tokens)).collect()
    }

    #[test]
    fn long_prompts_are_chunked_while_decodes_keep_flowing() {
        let mut s = sched(4, 300, 256, 100);
        s.add(1, own(1, 5));
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 5)]);
        assert!(p.items[0].wants_logits);
        run(&mut s, &p);
        // A 600-token prompt arrives: request 1 decodes while it is prefilled in chunks.
        s.add(2, own(2, 600));
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 256)]);
        assert!(!p.items[1].wants_logits);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 256)]);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 88)]);
        assert!(p.items[1].wants_logits);
        assert_eq!(p.items[1].start, 512);
        run(&mut s, &p);
        // Both decode in one step.
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 1)]);
        assert_eq!(p.n_tokens(), 2);
    }

    #[test]
    fn admission_respects_blocks_and_sequence_limit() {
        // 4 blocks of 16 tokens.
        let mut s = sched(2, 1000, 256, 4);
        s.add(1, own(1, 40)); // 3 blocks
        s.add(2, own(2, 20)); // 2 blocks: does not fit next to 1
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 40)]);
        assert_eq!(s.n_waiting(), 1);
        assert_eq!(s.kv().used(), 3);
        run(&mut s, &p);
        s.finish(1);
        assert_eq!(s.kv().used(), 0);
        s.add(3, own(3, 1));
        s.add(4, own(4, 1));
        let p = s.schedule();
        // Sequence limit 2: requests 2 and 3 run, 4 waits.
        assert_eq!(ns(&p), vec![(2, 20), (3, 1)]);
        assert_eq!(s.n_running(), 2);
        assert_eq!(s.n_waiting(), 1);
    }

    #[test]
    fn decode_out_of_blocks_preempts_the_newest_request() {
        for cache in [false, true] {
            // 3 blocks of 16.
            let mut s = sched(4, 1000, 256, 3);
            s.kv.set_prefix_caching(cache);
            s.add(1, own(1, 16));
            s.add(2, own(2, 16));
            s.add(3, own(3, 16));
            let p = s.schedule();
            assert_eq!(ns(&p), vec![(1, 16), (2, 16), (3, 16)]);
            run(&mut s, &p);
            assert_eq!(s.kv().free(), 0);
            // Each now holds 17 tokens and needs a second block to decode: 3 is preempted so
            // that 1 can go on, then 2 finds nothing left to preempt but itself.
            let p = s.schedule();
            assert_eq!(p.preempted, vec![3, 2]);
            assert_eq!(ns(&p), vec![(1, 1)]);
            run(&mut s, &p);
            assert_eq!(s.n_waiting(), 2);
            assert_eq!(s.preemptions(), 2);
            // Preempted requests come back first, recomputed from their tokens; with the
            // prefix cache, request 2's full block was still cached (3's was evicted for 1).
            s.finish(1);
            let p = s.schedule();
            if cache {
                assert_eq!(ns(&p), vec![(2, 1)]);
                assert_eq!(p.items[0].start, 16);
            } else {
                assert_eq!(ns(&p), vec![(2, 17)]);
                assert_eq!(p.items[0].start, 0);
            }
            assert!(p.items[0].wants_logits);
            run(&mut s, &p);
        }
    }

    #[test]
    fn a_shared_prefix_is_computed_once() {
        let mut s = sched(4, 1000, 256, 20);
        let system = own(1, 40);
        s.add(1, system.clone());
        let p = s.schedule();
        run(&mut s, &p);
        // Request 2 arrives while 1 decodes: the same 40 tokens, then its own 10. Two full
        // blocks come from the cache; the third block (tokens 32..40) was not full when 1
        // computed it, so 2 computes it again into a block of its own.
        let mut p2 = system.clone();
        p2.extend(own(2, 10));
        s.add(2, p2);
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 18)]);
        assert_eq!(p.items[1].start, 32);
        assert_eq!(s.block_table(2)[..2], s.block_table(1)[..2]);
        assert_eq!(s.kv().used(), 3 + 2);
        assert_eq!(
            s.prefix_cache_stats(),
            PrefixCacheStats {
                queried_tokens: 40 + 50,
                hit_tokens: 32
            }
        );
        run(&mut s, &p);
        // Multi-turn: request 1's prompt and output, then a new message. Everything 1 computed
        // in full blocks is found (its last token's entry is never computed).
        for _ in 0..8 {
            let p = s.schedule();
            run(&mut s, &p);
        }
        let mut turn2 = s.books[&1].tokens.clone();
        assert_eq!(turn2.len(), 40 + 1 + 1 + 8);
        s.finish(1);
        turn2.extend(own(3, 5));
        s.add(3, turn2);
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(2, 1), (3, 55 - 48)]);
        assert_eq!(p.items[1].start, 48);
        assert_eq!(s.prefix_cache_stats().hit_tokens, 32 + 48);
        run(&mut s, &p);
    }

    #[test]
    fn preempting_a_request_that_shares_blocks_keeps_them_for_the_others() {
        // 6 blocks of 16.
        let mut s = sched(4, 1000, 256, 6);
        let system = own(1, 33);
        s.add(1, system.clone());
        let p = s.schedule();
        run(&mut s, &p);
        // Two more requests on the same 32-token prefix, 47 and 46 tokens long: they get the
        // two shared blocks and one of their own each.
        for id in [2, 3] {
            let mut t = system[..32].to_vec();
            t.extend(own(id, 17 - id as usize));
            s.add(id, t);
        }
        let p = s.schedule();
        assert_eq!(ns(&p), vec![(1, 1), (2, 15), (3, 14)]);
        run(&mut s, &p);
        assert_eq!(s.kv().used(), 3 + 1 + 1);
        // Request 2 reaches position 48 first and takes the last free block; when 3 gets
        // there, the only request not yet in the step is 3 itself.
        let mut preempted = Vec::new();
        for _ in 0..40 {
            let p = s.schedule();
            preempted.extend(p.preempted.iter().copied());
            run(&mut s, &p);
            if !preempted.is_empty() {
                break;
            }
        }
        assert_eq!(preempted, vec![3]);
        // Its references are gone, the shared blocks are still held by 1 and 2.
        let shared = s.block_table(1)[..2].to_vec();
        assert_eq!(s.block_table(2)[..2], shared[..]);
        assert!(s.block_table(3).is_empty());
        s.kv().check_invariants();
        // Once 1 and 2 are done, 3 comes back on the cached prefix (and what it computed).
        s.finish(1);
        s.finish(2);
        let p = s.schedule();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].id, 3);
        assert_eq!(ns(&p), vec![(3, 1)]);
        assert_eq!(p.items[0].start, 48);
        assert_eq!(s.block_table(3)[..2], shared[..]);
        run(&mut s, &p);
        s.finish(3);
        assert_eq!(s.kv().used(), 0);
        assert_eq!(s.kv().free(), 6);
    }

    #[test]
    fn finish_frees_everything() {
        let mut s = sched(8, 64, 16, 10);
        for id in 0..5 {
            s.add(id, own(id, 30));
        }
        for _ in 0..6 {
            let p = s.schedule();
            run(&mut s, &p);
        }
        for id in 0..5 {
            s.finish(id);
        }
        assert!(s.is_idle());
        assert_eq!(s.kv().used(), 0);
        assert_eq!(s.n_running() + s.n_waiting(), 0);
    }
}
