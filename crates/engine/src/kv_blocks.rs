//! The paged KV-cache manager: a fixed number of fixed-size blocks, a free list, and one block
//! table per request.
//!
//! Block ids are indices into the model's KV cache (`Model::n_blocks()` blocks of
//! `Model::block_size()` tokens). A request's table lists, in position order, the blocks that
//! hold its tokens: position `p` lives in block `table[p / block_size]`. Growing a table is
//! all-or-nothing, so a failed allocation leaves everything as it was.

use std::collections::HashMap;

/// Request ids as the engine numbers them.
pub type ReqId = u64;

/// Fixed-size block allocator with per-request block tables.
#[derive(Debug)]
pub struct KvBlocks {
    block_size: usize,
    total: usize,
    /// Free block ids; allocation pops from the end.
    free: Vec<u32>,
    tables: HashMap<ReqId, Vec<u32>>,
}

impl KvBlocks {
    /// `n_blocks` blocks of `block_size` tokens (both at least 1).
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        let n_blocks = n_blocks.max(1);
        KvBlocks {
            block_size: block_size.max(1),
            total: n_blocks,
            // Reversed so that the first allocations get the low ids.
            free: (0..n_blocks as u32).rev().collect(),
            tables: HashMap::new(),
        }
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
        self.total
    }

    /// Blocks not held by any request.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by requests.
    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }

    /// Tokens the whole cache holds.
    pub fn capacity_tokens(&self) -> usize {
        self.total * self.block_size
    }

    /// Whether `extra` more blocks could be allocated now.
    pub fn can_alloc(&self, extra: usize) -> bool {
        extra <= self.free.len()
    }

    /// Blocks `id` would still need to cover `tokens` tokens.
    pub fn missing(&self, id: ReqId, tokens: usize) -> usize {
        let have = self.tables.get(&id).map_or(0, Vec::len);
        self.blocks_for(tokens).saturating_sub(have)
    }

    /// Makes `id`'s table cover `tokens` tokens. Returns false, changing nothing, when there
    /// are not enough free blocks.
    pub fn grow(&mut self, id: ReqId, tokens: usize) -> bool {
        let missing = self.missing(id, tokens);
        if missing > self.free.len() {
            return false;
        }
        let table = self.tables.entry(id).or_default();
        let at = self.free.len() - missing;
        table.extend(self.free.drain(at..).rev());
        true
    }

    /// The block table of `id` (empty when it holds none).
    pub fn table(&self, id: ReqId) -> &[u32] {
        self.tables.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Returns all of `id`'s blocks to the free list; how many there were.
    pub fn release(&mut self, id: ReqId) -> usize {
        match self.tables.remove(&id) {
            Some(table) => {
                let n = table.len();
                self.free.extend(table);
                n
            }
            None => 0,
        }
    }

    /// Requests holding blocks.
    pub fn holders(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(kv.release(2), 4);
        assert_eq!(kv.release(2), 0);
        assert_eq!(kv.used(), 0);
        assert_eq!(kv.holders(), 0);
    }

    #[test]
    fn tables_never_share_blocks() {
        let mut kv = KvBlocks::new(64, 4);
        for id in 0..8u64 {
            assert!(kv.grow(id, (id as usize + 1) * 5));
        }
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
    }
}
