//! The prefix cache, as rank 0's engine sees it: which token paths have their
//! keys and values kept on the ranks, within a byte bound.
//!
//! The index is a radix tree of entries. An entry is a run of tokens whose keys
//! and values one earlier batch computed (one prefix-tree node), hanging off a
//! point of its parent entry: its end, or the middle where a later path left
//! it (a GRPO response after the prompt part of the first response's entry).
//! Matching a path walks entries from the root; a tree node whose tokens all
//! match is *free*: the plan does not count it, and the batch attends to the
//! cached rows instead ([`crate::model::kv_cache::KvRead`], the cascade
//! attention's ancestor part). A node computed by a batch is kept as a new
//! entry when the bound allows, so a later batch of the same call (a group cut
//! across batches) or a later call (the next request, the next chunk, the next
//! step of a conversation) finds it.
//!
//! Eviction is least-recently-used, by entry, among entries nothing hangs off
//! (a parent goes after its children), never one the running batch reads or
//! writes, nor one a planned call relies on (pinned until the call ends). Every
//! decision goes to the ranks with the batch ([`CacheOps`]), so all ranks of a
//! group hold the same entries. Exactness does not depend on any of it: a
//! cached row's keys and values are the ones the batch would have computed.

use std::collections::HashMap;

use super::cut::PlannedBatch;
use super::prefix_tree::PrefixTree;
use crate::model::{BatchLayout, CacheOps, KvRead, KvStore, Segment};

const ROOT: u64 = 0;

struct Entry {
    tokens: Vec<i64>,
    /// (parent entry, offset in the parent after which it hangs).
    parent: (u64, usize),
    /// By (offset in this entry, first token).
    children: HashMap<(usize, i64), u64>,
    last_used: u64,
    /// Calls whose plans rely on it.
    pins: u32,
}

/// A point on a cached path: `offset` tokens into entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    entry: u64,
    offset: usize,
}

const START: Pos = Pos { entry: ROOT, offset: 0 };

/// Counters since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// The bound in bytes (0: off).
    pub bound_bytes: usize,
    pub bytes_per_token: usize,
    pub entries: usize,
    pub tokens_held: usize,
    pub bytes_held: usize,
    pub evictions: u64,
    /// Tokens read from the cache instead of computed.
    pub tokens_hit: u64,
}

/// Entries one call pinned; hand back to [`PrefixCache::release`].
#[derive(Debug, Default)]
pub struct Pins(Vec<u64>);

/// The index of the prefix cache (host side, no tensors).
pub struct PrefixCache {
    bound_bytes: usize,
    bytes_per_token: usize,
    entries: HashMap<u64, Entry>,
    next_id: u64,
    clock: u64,
    tokens_held: usize,
    evictions: u64,
    tokens_hit: u64,
    /// Decisions not yet sent to the ranks.
    pending: CacheOps,
}

impl PrefixCache {
    /// A cache of at most `bound_bytes` of keys and values, `bytes_per_token`
    /// each (every layer, every kv head). `0` turns it off.
    pub fn new(bound_bytes: usize, bytes_per_token: usize) -> PrefixCache {
        let root = Entry { tokens: vec![], parent: (ROOT, 0), children: HashMap::new(), last_used: 0, pins: 0 };
        PrefixCache {
            bound_bytes,
            bytes_per_token: bytes_per_token.max(1),
            entries: HashMap::from([(ROOT, root)]),
            next_id: 1,
            clock: 0,
            tokens_held: 0,
            evictions: 0,
            tokens_hit: 0,
            pending: CacheOps::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.bound_bytes >= self.bytes_per_token
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bound_bytes: self.bound_bytes,
            bytes_per_token: self.bytes_per_token,
            entries: self.entries.len() - 1,
            tokens_held: self.tokens_held,
            bytes_held: self.tokens_held * self.bytes_per_token,
            evictions: self.evictions,
            tokens_hit: self.tokens_hit,
        }
    }

    /// Forget everything (a batch failed, the group lost a rank): the next
    /// batch tells the ranks to drop what they hold.
    pub fn invalidate(&mut self) {
        let bound = (self.bound_bytes, self.bytes_per_token);
        let (evictions, hit) = (self.evictions, self.tokens_hit);
        *self = PrefixCache::new(bound.0, bound.1);
        self.evictions = evictions;
        self.tokens_hit = hit;
        self.pending.clear = true;
    }

    /// The tokens of `path` a walk from the root finds cached.
    pub fn cached_prefix(&self, path: &[i64]) -> usize {
        self.walk(START, path).0
    }

    /// Walk `tokens` from `from`: how many match, the cached runs they match
    /// (entry, offset, len), and where the walk stopped.
    fn walk(&self, from: Pos, tokens: &[i64]) -> (usize, Runs, Pos) {
        let (mut pos, mut runs, mut i) = (from, Runs::new(), 0);
        while i < tokens.len() {
            let entry = &self.entries[&pos.entry];
            if entry.tokens.get(pos.offset) == Some(&tokens[i]) {
                match runs.last_mut() {
                    Some((e, off, len)) if *e == pos.entry && *off + *len == pos.offset => *len += 1,
                    _ => runs.push((pos.entry, pos.offset, 1)),
                }
                pos.offset += 1;
                i += 1;
            } else if let Some(&child) = entry.children.get(&(pos.offset, tokens[i])) {
                pos = Pos { entry: child, offset: 0 };
            } else {
                break;
            }
        }
        (i, runs, pos)
    }

    /// Mark the nodes of `tree` whose tokens are all cached as free (a node
    /// cached in part is split where the cached part ends) and pin the entries
    /// they match until [`PrefixCache::release`]. A read-out node keeps its last
    /// token: its hidden state is what is scored.
    pub fn cover(&mut self, tree: &mut PrefixTree) -> Pins {
        let mut pins = Pins::default();
        if !self.enabled() {
            return pins;
        }
        self.clock += 1;
        let mut stack: Vec<(usize, Pos)> = tree.nodes[0].children.iter().map(|&c| (c, START)).collect();
        while let Some((n, from)) = stack.pop() {
            let node = &tree.nodes[n];
            let limit = node.tokens.len() - node.readout as usize;
            let (matched, runs, end) = self.walk(from, &node.tokens[..limit]);
            if matched == 0 {
                continue;
            }
            for (e, _, _) in runs {
                let entry = self.entries.get_mut(&e).expect("a walk visits entries that exist");
                entry.pins += 1;
                entry.last_used = self.clock;
                pins.0.push(e);
            }
            let head = if matched < node.tokens.len() { tree.split(n, matched) } else { n };
            tree.nodes[head].free = true;
            if head == n {
                stack.extend(tree.nodes[n].children.iter().map(|&c| (c, end)));
            }
        }
        pins
    }

    pub fn release(&mut self, pins: Pins) {
        for e in pins.0 {
            if let Some(entry) = self.entries.get_mut(&e) {
                entry.pins = entry.pins.saturating_sub(1);
            }
        }
    }

    /// The layout of `batch` against the cache as it is now: nodes whose
    /// tokens are cached (free in the plan, or kept by an earlier batch of the
    /// same call) become cached reads, computed nodes are kept as new entries
    /// where the bound allows (evicting to make room), and the decisions not
    /// yet sent go with it. Returns the layout and the tokens it reads from the
    /// cache.
    pub fn lay_out(&mut self, tree: &PrefixTree, batch: &PlannedBatch) -> (BatchLayout, usize) {
        if !self.enabled() {
            let mut layout = batch.layout.clone();
            layout.cache = std::mem::take(&mut self.pending);
            return (layout, 0);
        }
        self.clock += 1;
        let mut b = Builder::default();
        // Where each node's path ends in the cache (None: it left the cache).
        let mut ends: HashMap<usize, Option<Pos>> = HashMap::from([(0, Some(START))]);
        let mut used: Vec<u64> = Vec::new();
        for &n in &batch.nodes {
            let node = &tree.nodes[n];
            b.close_until(node.parent);
            let from = ends[&node.parent];
            let parent_read = node.parent == 0 || b.is_read(node.parent);
            let walk = from.map(|p| self.walk(p, &node.tokens));
            match walk {
                Some((matched, runs, end)) if parent_read && matched == node.tokens.len() && !node.readout => {
                    for &(e, _, _) in &runs {
                        used.push(e);
                        self.touch(e);
                    }
                    b.open_read(n, node.depth, runs);
                    ends.insert(n, Some(end));
                }
                walk => {
                    let seg_start = b.open_rows(n, node);
                    let end = walk.and_then(|(matched, _, at)| {
                        self.keep(&node.tokens[matched..], at, seg_start + matched as i64, &mut b.stores, &mut used)
                    });
                    ends.insert(n, end);
                }
            }
        }
        let (mut layout, hits) = b.finish(tree, &batch.readouts);
        self.tokens_hit += hits as u64;
        let mut ops = std::mem::take(&mut self.pending);
        ops.reads = layout.cache.reads.split_off(0);
        ops.stores = layout.cache.stores.split_off(0);
        layout.cache = ops;
        (layout, hits)
    }

    /// Keep `tokens` (batch rows from `row`) as a new entry hanging at `at`, if
    /// room can be made; returns where the path then ends.
    fn keep(
        &mut self,
        tokens: &[i64],
        at: Pos,
        row: i64,
        stores: &mut Vec<KvStore>,
        used: &mut Vec<u64>,
    ) -> Option<Pos> {
        if tokens.is_empty() {
            return Some(at);
        }
        used.push(at.entry);
        if !self.make_room(tokens.len(), used) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let entry = Entry {
            tokens: tokens.to_vec(),
            parent: (at.entry, at.offset),
            children: HashMap::new(),
            last_used: self.clock,
            pins: 0,
        };
        self.entries.insert(id, entry);
        let parent = self.entries.get_mut(&at.entry).expect("a walk ends in an entry that exists");
        parent.children.insert((at.offset, tokens[0]), id);
        self.tokens_held += tokens.len();
        used.push(id);
        stores.push(KvStore { entry: id, start: row, len: tokens.len() as i64 });
        Some(Pos { entry: id, offset: tokens.len() })
    }

    fn touch(&mut self, e: u64) {
        if let Some(entry) = self.entries.get_mut(&e) {
            entry.last_used = self.clock;
        }
    }

    /// Evict least-recently-used entries until `tokens` more fit; false when
    /// they cannot (what is left is pinned, in use, or the bound is too small).
    fn make_room(&mut self, tokens: usize, used: &[u64]) -> bool {
        let limit = self.bound_bytes / self.bytes_per_token;
        if tokens > limit {
            return false;
        }
        while self.tokens_held + tokens > limit {
            let victim = self
                .entries
                .iter()
                .filter(|(id, e)| **id != ROOT && e.children.is_empty() && e.pins == 0 && !used.contains(*id))
                .min_by_key(|(id, e)| (e.last_used, **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else { return false };
            let entry = self.entries.remove(&victim).expect("the victim exists");
            let (parent, offset) = entry.parent;
            if let Some(p) = self.entries.get_mut(&parent) {
                p.children.remove(&(offset, entry.tokens[0]));
            }
            self.tokens_held -= entry.tokens.len();
            self.evictions += 1;
            self.pending.evict.push(victim);
        }
        true
    }
}

/// Runs of cached tokens a walk matched: (entry, offset, len).
type Runs = Vec<(u64, usize, usize)>;

/// A layout built node by node: computed nodes are segments, cached ones are
/// reads over the rows that follow them in depth-first order.
#[derive(Default)]
struct Builder {
    layout: BatchLayout,
    /// Nodes on the current path: (node, segment index or None for a read, first row below it).
    open: Vec<(usize, Option<usize>, i64)>,
    /// Per open read node: its runs (entry, offset, len) and first position.
    reads: HashMap<usize, (Runs, usize)>,
    stores: Vec<KvStore>,
    last_row: HashMap<usize, i64>,
    hits: usize,
}

impl Builder {
    fn is_read(&self, n: usize) -> bool {
        self.open.iter().any(|&(o, seg, _)| o == n && seg.is_none())
    }

    /// Close the open nodes that are not `parent` or its ancestors.
    fn close_until(&mut self, parent: usize) {
        while self.open.last().is_some_and(|&(o, _, _)| o != parent) {
            self.close_last();
        }
    }

    fn close_last(&mut self) {
        let (n, seg, below) = self.open.pop().expect("checked non-empty");
        let rows = self.layout.tokens.len() as i64;
        match seg {
            Some(s) => self.layout.segments[s].end = rows,
            None => {
                let (runs, depth) = self.reads.remove(&n).expect("an open read has its runs");
                if rows > below {
                    let mut at = depth as i64;
                    for (entry, offset, len) in runs {
                        let (offset, len) = (offset as i64, len as i64);
                        self.layout.cache.reads.push(KvRead {
                            entry,
                            offset,
                            len,
                            depth: at,
                            below_start: below,
                            below_end: rows,
                        });
                        self.hits += len as usize;
                        at += len;
                    }
                }
            }
        }
    }

    fn open_read(&mut self, n: usize, depth: usize, runs: Runs) {
        self.reads.insert(n, (runs, depth));
        self.open.push((n, None, self.layout.tokens.len() as i64));
    }

    /// A computed node: its segment. Returns its first row.
    fn open_rows(&mut self, n: usize, node: &super::prefix_tree::Node) -> i64 {
        let start = self.layout.tokens.len() as i64;
        self.layout.tokens.extend_from_slice(&node.tokens);
        self.layout.positions.extend((node.depth..node.depth + node.tokens.len()).map(|p| p as i64));
        let len = node.tokens.len() as i64;
        self.layout.segments.push(Segment { start, len, end: start + len });
        self.open.push((n, Some(self.layout.segments.len() - 1), start + len));
        self.last_row.insert(n, start + len - 1);
        start
    }

    fn finish(mut self, _tree: &PrefixTree, readouts: &[usize]) -> (BatchLayout, usize) {
        while !self.open.is_empty() {
            self.close_last();
        }
        self.layout.probe_rows = readouts.iter().map(|r| self.last_row[r]).collect();
        self.layout.cache.stores = std::mem::take(&mut self.stores);
        (self.layout, self.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: i64 = 99;

    fn tree(paths: &[&[i64]]) -> PrefixTree {
        let mut t = PrefixTree::new();
        for p in paths {
            t.insert(p, P);
        }
        t
    }

    /// Plan and lay out every batch of `paths` against `cache`.
    fn run(cache: &mut PrefixCache, paths: &[&[i64]], budget: usize) -> Vec<BatchLayout> {
        let mut t = tree(paths);
        let pins = cache.cover(&mut t);
        let out = t.plan(budget).iter().map(|b| cache.lay_out(&t, b).0).collect::<Vec<_>>();
        cache.release(pins);
        for l in &out {
            l.validate().unwrap();
        }
        out
    }

    #[test]
    fn a_later_call_reads_the_shared_prompt_and_computes_only_its_own_tokens() {
        let mut cache = PrefixCache::new(1000, 1);
        let first = run(&mut cache, &[&[1, 2, 3, 4, 10, 11]], 100);
        assert_eq!(first[0].rows(), 7);
        assert_eq!(first[0].cache.stores, vec![KvStore { entry: 1, start: 0, len: 7 }]);
        // a second response to the same prompt: the prompt's part of entry 1 is read
        let second = run(&mut cache, &[&[1, 2, 3, 4, 20, 21]], 100);
        let l = &second[0];
        assert_eq!(l.tokens, vec![20, 21, P]);
        assert_eq!(l.positions, vec![4, 5, 6]);
        assert_eq!(l.cache.reads, vec![KvRead { entry: 1, offset: 0, len: 4, depth: 0, below_start: 0, below_end: 3 }]);
        // kept, hanging off entry 1 after its 4th token
        assert_eq!(l.cache.stores, vec![KvStore { entry: 2, start: 0, len: 3 }]);
        // the same record again computes only its read-out token
        let again = run(&mut cache, &[&[1, 2, 3, 4, 20, 21]], 100);
        assert_eq!(again[0].tokens, vec![P]);
        assert_eq!(again[0].positions, vec![6]);
        let reads: Vec<(u64, i64, i64, i64)> =
            again[0].cache.reads.iter().map(|r| (r.entry, r.offset, r.len, r.depth)).collect();
        assert_eq!(reads, vec![(1, 0, 4, 0), (2, 0, 2, 4)]);
        assert_eq!(cache.stats().tokens_hit, 4 + 6);
    }

    #[test]
    fn a_group_cut_across_batches_computes_its_prompt_once() {
        let mut cache = PrefixCache::new(1000, 1);
        let paths: Vec<Vec<i64>> = (0..4).map(|r| vec![1, 2, 3, 10 + r, 20 + r]).collect();
        let refs: Vec<&[i64]> = paths.iter().map(Vec::as_slice).collect();
        let batches = run(&mut cache, &refs, 10);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].rows(), 9);
        // the second batch reads the prompt the first one kept
        assert_eq!(batches[1].rows(), 6);
        assert_eq!(batches[1].cache.reads.len(), 1);
        assert_eq!(batches[1].cache.reads[0].len, 3);
    }

    #[test]
    fn the_bound_evicts_least_recently_used_leaves_and_a_tiny_bound_keeps_nothing() {
        let mut cache = PrefixCache::new(8, 1);
        run(&mut cache, &[&[1, 2, 3]], 100); // entry 1: 4 tokens
        run(&mut cache, &[&[5, 6, 7]], 100); // entry 2: 4 tokens, full
        run(&mut cache, &[&[1, 2, 3]], 100); // reads entry 1 (touches it)
        let third = run(&mut cache, &[&[8, 9]], 100); // 3 tokens: entry 2 goes
        assert_eq!(third[0].cache.evict, vec![2]);
        assert_eq!(cache.stats().evictions, 1);
        assert_eq!(cache.cached_prefix(&[1, 2, 3, P]), 4);
        assert_eq!(cache.cached_prefix(&[5, 6]), 0);
        let mut tiny = PrefixCache::new(2, 1);
        let l = run(&mut tiny, &[&[1, 2, 3]], 100);
        assert!(l[0].cache.stores.is_empty());
        assert_eq!(tiny.stats().tokens_held, 0);
    }

    #[test]
    fn invalidation_clears_the_ranks_with_the_next_batch() {
        let mut cache = PrefixCache::new(100, 1);
        run(&mut cache, &[&[1, 2, 3]], 100);
        cache.invalidate();
        let l = run(&mut cache, &[&[1, 2, 3]], 100);
        assert!(l[0].cache.clear && l[0].cache.reads.is_empty());
        assert_eq!(l[0].rows(), 4);
    }
}
