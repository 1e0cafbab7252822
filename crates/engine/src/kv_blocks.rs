//! The paged KV-cache manager: a fixed number of fixed-size blocks, reference counts, one block
//! table per request, and the prefix cache.
//!
//! Block ids are indices into the model's KV cache (`Model::n_blocks()` blocks of
//! `Model::block_size()` tokens). A request's table lists, in position order, the blocks that
//! hold its tokens: position `p` lives in block `table[p / block_size]`. Growing a table is
//! all-or-nothing, so a failed allocation leaves everything as it was.
//!
//! Prefix caching (vLLM's automatic prefix caching): a block whose `block_size` tokens are all
//! computed is registered under a hash chained over the request's token chunks, `hash(parent
//! hash, the block's tokens)`, so a block stands for its whole prefix. A request admitted later
//! whose leading blocks have the same hashes takes references to those blocks instead of
//! computing them again. Only full blocks are shared and a request only ever writes at its
//! positions past what it has computed, so no shared block is ever written. A block is free at
//! reference count 0; a free block that is still registered keeps its contents until an
//! allocation needs its slot, taking free blocks that hold nothing cached first, then cached
//! ones least recently freed first, and only then does it leave the cache.
//!
//! The hash is SipHash keyed at random per process, so a client cannot craft a collision, and a
//! hit also compares the block's tokens and its parent's hash.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};

/// Request ids as the engine numbers them.
pub type ReqId = u64;

/// What a registered block holds: its place in the hash chain and its tokens.
#[derive(Debug)]
struct BlockKey {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// A request's blocks.
#[derive(Debug, Default)]
struct Held {
    table: Vec<u32>,
    /// Leading blocks of `table` whose hashes are known (registered, or found in the cache).
    hashed: usize,
    /// Hash of block `hashed - 1` (`ROOT` when none).
    last_hash: u64,
}

/// Parent hash of a sequence's first block.
const ROOT: u64 = 0;

/// Fixed-size block allocator with reference counts, per-request block tables and a cache of
/// full blocks by prefix hash.
#[derive(Debug)]
pub struct KvBlocks {
    block_size: usize,
    /// Per block: requests holding it.
    refs: Vec<u32>,
    /// Blocks at reference count 0 in the order allocation takes them: `(stamp, id)`, stamp 0
    /// for blocks that hold nothing cached, else the release clock when they became free.
    free: BTreeSet<(u64, u32)>,
    /// Per block: its key in `free` while it is free.
    stamp: Vec<u64>,
    clock: u64,
    /// Per block: the key it is registered under.
    key: Vec<Option<BlockKey>>,
    /// Registered blocks by hash.
    cached: HashMap<u64, u32>,
    tables: HashMap<ReqId, Held>,
    caching: bool,
    hasher: RandomState,
}

impl KvBlocks {
    /// `n_blocks` blocks of `block_size` tokens (both at least 1), prefix caching off.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        let n_blocks = n_blocks.max(1);
        KvBlocks {
            block_size: block_size.max(1),
            refs: vec![0; n_blocks],
            // Low ids first.
            free: (0..n_blocks as u32).map(|b| (0, b)).collect(),
            stamp: vec![0; n_blocks],
            clock: 0,
            key: (0..n_blocks).map(|_| None).collect(),
            cached: HashMap::new(),
            tables: HashMap::new(),
            caching: false,
            hasher: RandomState::new(),
        }
    }

    /// Turns prefix caching on or off. Turning it off forgets every cached block.
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.caching = on;
        if !on {
            let blocks: Vec<u32> = self.cached.values().copied().collect();
            for b in blocks {
                self.uncache(b);
            }
        }
    }

    pub fn prefix_caching(&self) -> bool {
        self.caching
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the cache.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks not held by any request (cached or not).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by requests.
    pub fn used(&self) -> usize {
        self.total() - self.free.len()
    }

    /// Blocks registered in the prefix cache (held or free).
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Tokens the whole cache holds.
    pub fn capacity_tokens(&self) -> usize {
        self.total() * self.block_size
    }

    /// Whether `extra` more blocks could be allocated now.
    pub fn can_alloc(&self, extra: usize) -> bool {
        extra <= self.free.len()
    }

    /// Blocks `id` would still need to cover `tokens` tokens.
    pub fn missing(&self, id: ReqId, tokens: usize) -> usize {
        let have = self.tables.get(&id).map_or(0, |h| h.table.len());
        self.blocks_for(tokens).saturating_sub(have)
    }

    /// Makes `id`'s table cover `tokens` tokens. Returns false, changing nothing, when there
    /// are not enough free blocks.
    pub fn grow(&mut self, id: ReqId, tokens: usize) -> bool {
        let missing = self.missing(id, tokens);
        if missing > self.free.len() {
            return false;
        }
        let new = self.take_free(missing);
        self.tables.entry(id).or_default().table.extend(new);
        true
    }

    /// Admits `id`, which holds no blocks yet, with its token list: takes references to the
    /// cached blocks that match its leading full blocks (never the block of its last token,
    /// which must be computed to get logits) and allocates the rest of `tokens.len()` tokens.
    /// Returns the tokens found in the cache, or `None`, changing nothing, when the new blocks
    /// do not fit.
    pub fn admit(&mut self, id: ReqId, tokens: &[u32]) -> Option<usize> {
        let (hits, last_hash) = self.lookup(tokens);
        let missing = self.blocks_for(tokens.len()).saturating_sub(hits.len());
        // Free hits leave the free set when taken, so they cannot serve as new blocks.
        let free_hits = hits.iter().filter(|&&b| self.ref_of(b) == 0).count();
        if missing > self.free.len() - free_hits {
            return None;
        }
        for &b in &hits {
            self.take_ref(b);
        }
        let held = self.tables.entry(id).or_default();
        debug_assert!(held.table.is_empty(), "admit of a request holding blocks");
        held.hashed = hits.len();
        held.last_hash = last_hash;
        held.table = hits;
        let n_hit = held.table.len();
        let new = self.take_free(missing);
        if let Some(held) = self.tables.get_mut(&id) {
            held.table.extend(new);
        }
        Some(n_hit * self.block_size)
    }

    /// The cached blocks matching the leading full blocks of `tokens`, leaving at least the
    /// last token out, and the hash of the last of them.
    fn lookup(&self, tokens: &[u32]) -> (Vec<u32>, u64) {
        let mut hits = Vec::new();
        let mut parent = ROOT;
        if !self.caching {
            return (hits, parent);
        }
        let usable = tokens.len().saturating_sub(1);
        for chunk in tokens[..usable].chunks_exact(self.block_size) {
            let hash = self.chain(parent, chunk);
            let hit = self.cached.get(&hash).copied().filter(|&b| {
                self.key_of(b)
                    .is_some_and(|k| k.hash == hash && k.parent == parent && *k.tokens == *chunk)
            });
            match hit {
                Some(b) => hits.push(b),
                None => break,
            }
            parent = hash;
        }
        (hits, parent)
    }

    /// Records that `id` has computed the first `computed` of `tokens` (its token list):
    /// registers the full blocks among them that are not registered yet. A block whose hash is
    /// already cached under another block (two requests computed the same prefix at once)
    /// stays private.
    pub fn register(&mut self, id: ReqId, tokens: &[u32], computed: usize) {
        if !self.caching {
            return;
        }
        let bs = self.block_size;
        let Some(held) = self.tables.get_mut(&id) else {
            return;
        };
        let full = (computed.min(tokens.len()) / bs).min(held.table.len());
        while held.hashed < full {
            let j = held.hashed;
            let chunk = &tokens[j * bs..(j + 1) * bs];
            let hash = self.hasher.hash_one((held.last_hash, chunk));
            let b = held.table[j];
            let slot = &mut self.key[b as usize];
            if slot.is_none() {
                if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
                    e.insert(b);
                    *slot = Some(BlockKey {
                        hash,
                        parent: held.last_hash,
                        tokens: chunk.into(),
                    });
                }
            }
            held.last_hash = hash;
            held.hashed += 1;
        }
    }

    /// The block table of `id` (empty when it holds none).
    pub fn table(&self, id: ReqId) -> &[u32] {
        self.tables.get(&id).map_or(&[], |h| h.table.as_slice())
    }

    /// Drops `id`'s references to its blocks; how many blocks it held. Blocks nobody holds any
    /// more become free; cached ones keep their contents, the end of the table first in line
    /// for eviction (a prefix outlives its extensions).
    pub fn release(&mut self, id: ReqId) -> usize {
        let Some(held) = self.tables.remove(&id) else {
            return 0;
        };
        for &b in held.table.iter().rev() {
            let Some(r) = self.refs.get_mut(b as usize) else {
                continue;
            };
            debug_assert!(*r > 0, "block {b} released twice");
            *r = r.saturating_sub(1);
            if *r == 0 {
                let stamp = if self.key[b as usize].is_some() {
                    self.clock += 1;
                    self.clock
                } else {
                    0
                };
                self.stamp[b as usize] = stamp;
                self.free.insert((stamp, b));
            }
        }
        held.table.len()
    }

    /// Requests holding blocks.
    pub fn holders(&self) -> usize {
        self.tables.len()
    }

    fn chain(&self, parent: u64, chunk: &[u32]) -> u64 {
        self.hasher.hash_one((parent, chunk))
    }

    fn ref_of(&self, b: u32) -> u32 {
        self.refs.get(b as usize).copied().unwrap_or(0)
    }

    fn key_of(&self, b: u32) -> Option<&BlockKey> {
        self.key.get(b as usize).and_then(Option::as_ref)
    }

    /// One more reference to `b`; a free block leaves the free set and keeps its contents.
    fn take_ref(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.free.remove(&(self.stamp[i], b));
        }
        self.refs[i] += 1;
    }

    /// Takes `n` (<= free) free blocks, in eviction order, for new contents.
    fn take_free(&mut self, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some((_, b)) = self.free.pop_first() else {
                break;
            };
            self.uncache(b);
            self.refs[b as usize] = 1;
            out.push(b);
        }
        out
    }

    /// Takes `b` out of the prefix cache.
    fn uncache(&mut self, b: u32) {
        if let Some(k) = self.key.get_mut(b as usize).and_then(Option::take) {
            if self.cached.get(&k.hash) == Some(&b) {
                self.cached.remove(&k.hash);
            }
            // A free block that was cached moves to the front of the line.
            let i = b as usize;
            if self.refs[i] == 0 && self.free.remove(&(self.stamp[i], b)) {
                self.stamp[i] = 0;
                self.free.insert((0, b));
            }
        }
    }
}

#[cfg(test)]
impl KvBlocks {
    /// Panics unless every count agrees: each block's reference count is the number of tables
    /// holding it, the free set is exactly the blocks at count 0, and the cache map and the
    /// per-block keys describe each other.
    pub(crate) fn check_invariants(&self) {
        let mut holders = vec![0u32; self.total()];
        for held in self.tables.values() {
            assert!(held.hashed <= held.table.len());
            for &b in &held.table {
                holders[b as usize] += 1;
            }
        }
        assert_eq!(holders, self.refs, "reference counts");
        for (b, &r) in self.refs.iter().enumerate() {
            let in_free = self.free.contains(&(self.stamp[b], b as u32));
            assert_eq!(in_free, r == 0, "block {b}: {r} references, free {in_free}");
        }
        assert_eq!(
            self.free.len(),
            self.refs.iter().filter(|&&r| r == 0).count()
        );
        for (&h, &b) in &self.cached {
            assert_eq!(self.key_of(b).map(|k| k.hash), Some(h), "block {b}");
        }
        let keyed = self.key.iter().filter(|k| k.is_some()).count();
        assert_eq!(keyed, self.cached.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caching(n_blocks: usize, block_size: usize) -> KvBlocks {
        let mut kv = KvBlocks::new(n_blocks, block_size);
        kv.set_prefix_caching(true);
        kv
    }

    /// Admits `id` with `tokens` and registers all of them as computed, as a finished prefill.
    fn prefill(kv: &mut KvBlocks, id: ReqId, tokens: &[u32]) -> usize {
        let Some(hit) = kv.admit(id, tokens) else {
            panic!("request {id} does not fit");
        };
        kv.register(id, tokens, tokens.len());
        kv.check_invariants();
        hit
    }

    #[test]
    fn grows_all_or_nothing_and_releases() {
        let mut kv = KvBlocks::new(4, 16);
        assert_eq!(kv.blocks_for(0), 0);
        assert_eq!(kv.blocks_for(1), 1);
        assert_eq!(kv.blocks_for(16), 1);
        assert_eq!(kv.blocks_for(17), 2);
        assert!(kv.grow(1, 20));
        assert_eq!(kv.table(1), &[0, 1]);
        assert_eq!(kv.used(), 2);
        // Growing within the blocks held allocates nothing.
        assert!(kv.grow(1, 32));
        assert_eq!(kv.used(), 2);
        assert!(kv.grow(2, 16));
        assert_eq!(kv.table(2), &[2]);
        // Two more blocks do not fit: nothing changes.
        assert!(!kv.grow(2, 48));
        assert_eq!(kv.table(2), &[2]);
        assert_eq!(kv.free(), 1);
        assert_eq!(kv.release(1), 2);
        assert_eq!(kv.free(), 3);
        assert!(kv.grow(2, 64));
        assert_eq!(kv.table(2).len(), 4);
        kv.check_invariants();
        assert_eq!(kv.release(2), 4);
        assert_eq!(kv.release(2), 0);
        assert_eq!(kv.used(), 0);
        assert_eq!(kv.holders(), 0);
        kv.check_invariants();
    }

    #[test]
    fn tables_never_share_blocks_without_the_prefix_cache() {
        let mut kv = KvBlocks::new(64, 4);
        let tokens: Vec<u32> = (0..40).collect();
        for id in 0..8u64 {
            // The same tokens every time: without caching nothing is shared.
            assert_eq!(kv.admit(id, &tokens[..(id as usize + 1) * 5]), Some(0));
            kv.register(id, &tokens, (id as usize + 1) * 5);
        }
        assert_eq!(kv.cached(), 0);
        let mut seen = std::collections::HashSet::new();
        for id in 0..8u64 {
            for &b in kv.table(id) {
                assert!(seen.insert(b), "block {b} handed out twice");
                assert!((b as usize) < kv.total());
            }
        }
        for id in (0..8u64).step_by(2) {
            kv.release(id);
        }
        assert!(kv.grow(100, 40));
        for &b in kv.table(100) {
            for id in (1..8u64).step_by(2) {
                assert!(!kv.table(id).contains(&b));
            }
        }
        kv.check_invariants();
    }

    #[test]
    fn full_blocks_of_a_common_prefix_are_shared_and_the_tail_is_private() {
        let mut kv = caching(8, 4);
        let a: Vec<u32> = (100..110).collect(); // 2 full blocks + 2 tokens
        assert_eq!(prefill(&mut kv, 1, &a), 0);
        assert_eq!(kv.cached(), 2);
        assert_eq!(kv.used(), 3);
        // Same prompt: both full blocks come from the cache, the partial last block is new.
        assert_eq!(prefill(&mut kv, 2, &a), 8);
        assert_eq!(kv.table(2)[..2], kv.table(1)[..2]);
        assert_ne!(kv.table(2)[2], kv.table(1)[2]);
        assert_eq!(kv.used(), 4);
        // A prompt that ends exactly on a block boundary computes its last block itself.
        assert_eq!(prefill(&mut kv, 3, &a[..8]), 4);
        assert_eq!(kv.table(3)[0], kv.table(1)[0]);
        assert_ne!(kv.table(3)[1], kv.table(1)[1]);
        // Its own second block has the hash of block 1's: it stays private, uncached.
        assert_eq!(kv.cached(), 2);
        assert_eq!(kv.used(), 5);
        // Releasing a holder keeps the shared blocks for the others.
        assert_eq!(kv.release(1), 3);
        assert_eq!(kv.used(), 4);
        assert_eq!(kv.release(2), 3);
        assert_eq!(kv.release(3), 2);
        assert_eq!(kv.used(), 0);
        assert_eq!(kv.free(), 8);
        // Free but still cached: a later request finds them.
        assert_eq!(kv.cached(), 2);
        assert_eq!(prefill(&mut kv, 4, &a), 8);
        assert_eq!(kv.used(), 3);
        kv.check_invariants();
    }

    #[test]
    fn a_hit_needs_the_whole_chain_before_it() {
        let mut kv = caching(16, 4);
        prefill(&mut kv, 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // The second block's tokens after another first block: no hit at all.
        assert_eq!(prefill(&mut kv, 2, &[0, 2, 3, 4, 5, 6, 7, 8, 9]), 0);
        // Same first block, different second: one block.
        assert_eq!(prefill(&mut kv, 3, &[1, 2, 3, 4, 5, 6, 7, 0, 9]), 4);
        // Everything but the last token may come from the cache, extended by new tokens.
        assert_eq!(prefill(&mut kv, 4, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 8);
        // Off: no lookups, nothing registered, the cache forgotten.
        kv.set_prefix_caching(false);
        assert_eq!(kv.cached(), 0);
        assert_eq!(prefill(&mut kv, 5, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), 0);
        assert_eq!(kv.cached(), 0);
    }

    #[test]
    fn registration_follows_the_computed_tokens() {
        let mut kv = caching(8, 4);
        let a: Vec<u32> = (0..13).collect();
        assert_eq!(kv.admit(1, &a), Some(0));
        // A prefill chunk of 6 tokens: one full block.
        kv.register(1, &a, 6);
        assert_eq!(kv.cached(), 1);
        assert_eq!(kv.admit(2, &a), Some(4));
        kv.register(1, &a, 13);
        assert_eq!(kv.cached(), 3);
        // Decoding past the end: the table grows, the block fills, then it is registered.
        let mut a = a;
        for t in 13..17 {
            a.push(t);
            assert!(kv.grow(1, a.len()));
            kv.register(1, &a, a.len());
        }
        assert_eq!(kv.cached(), 4);
        kv.release(2);
        assert_eq!(kv.admit(3, &a[..17]), Some(16));
        kv.check_invariants();
    }

    #[test]
    fn eviction_takes_uncached_blocks_first_then_the_least_recently_freed() {
        // 4 blocks of 2 tokens.
        let mut kv = caching(4, 2);
        let a = [1, 2, 3, 4, 5];
        prefill(&mut kv, 1, &a); // blocks 0, 1 cached, 2 private
        assert_eq!(kv.table(1), &[0, 1, 2]);
        kv.release(1);
        assert_eq!((kv.free(), kv.cached()), (4, 2));
        // Two new blocks: the never-used block 3 and the private block 2.
        assert_eq!(prefill(&mut kv, 2, &[9, 9, 9]), 0);
        assert_eq!(kv.cached(), 3, "request 2's own full block is cached");
        let mut t2 = kv.table(2).to_vec();
        t2.sort_unstable();
        assert_eq!(t2, [2, 3]);
        // One more block: the end of request 1's chain goes first, its first block stays.
        assert_eq!(prefill(&mut kv, 3, &[7]), 0);
        assert_eq!(kv.table(3), &[1]);
        assert_eq!(kv.cached(), 2);
        kv.release(2);
        kv.release(3);
        assert_eq!(prefill(&mut kv, 4, &a), 2);
        assert_eq!(kv.table(4)[0], 0);
        kv.check_invariants();
    }

    #[test]
    fn admission_counts_only_the_new_blocks() {
        let mut kv = caching(4, 2);
        let a = [1, 2, 3, 4, 5, 6, 7];
        prefill(&mut kv, 1, &a); // 4 blocks, 3 of them cached
        assert_eq!(kv.free(), 0);
        // The same prompt needs one new block and none is free: refused, nothing taken.
        assert_eq!(kv.admit(2, &a), None);
        assert_eq!(kv.table(2), &[] as &[u32]);
        kv.check_invariants();
        kv.release(1);
        // Now its three cached blocks are free, but they cannot also be the new block: one of
        // the four free blocks is left for it.
        assert_eq!(kv.admit(2, &a), Some(6));
        assert_eq!(kv.free(), 0);
        kv.check_invariants();
        // A request that would need to evict another's held blocks does not fit.
        kv.release(2);
        assert_eq!(prefill(&mut kv, 3, &a[..5]), 4);
        assert_eq!(kv.free(), 1);
        assert_eq!(kv.admit(4, &[8, 8, 8, 8]), None);
        assert_eq!(kv.admit(4, &[8, 8]), Some(0));
        kv.check_invariants();
    }
}
