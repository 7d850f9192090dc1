//! Cutting a prefix tree into forward batches by a budget of tokens computed.
//!
//! Subtrees are kept whole where they can be: a subtree (a GRPO prompt with
//! its responses, a shared history with its continuations) goes into the
//! current batch if it fits, else into a fresh one if it fits there, and only
//! a subtree larger than a whole batch is split, child by child. A batch
//! repeats the ancestors of what it holds (the system header, at least), and
//! they count against its budget. Batches follow depth-first order, so records
//! that share a prefix land in the same batch.

use std::collections::HashMap;

use super::prefix_tree::{PrefixTree, ReadoutId};
use crate::model::{BatchLayout, Segment};

/// One forward batch cut from the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBatch {
    pub layout: BatchLayout,
    /// The read-out of each of the layout's probe rows, in order.
    pub readouts: Vec<ReadoutId>,
    /// The tree nodes it holds, depth-first, closed under ancestors (the root
    /// excluded): what [`super::prefix_cache`] lays out again with the cache.
    pub nodes: Vec<usize>,
}

impl PrefixTree {
    /// Cut the tree into batches of at most `budget` computed tokens (a single
    /// path longer than the budget gets a batch of its own).
    pub fn plan(&self, budget: usize) -> Vec<PlannedBatch> {
        let mut sizes = vec![0usize; self.nodes.len()];
        // Children always come after their parent in `nodes`, except across a
        // split (the head is pushed after the tail): sum in reverse DFS order.
        for &n in self.dfs_order().iter().rev() {
            sizes[n] += self.cost(n);
            if n != 0 {
                sizes[self.nodes[n].parent] += sizes[n];
            }
        }
        let mut cut = Cut {
            tree: self,
            sizes,
            budget,
            batches: vec![],
            current: Builder::default(),
            stamp: vec![usize::MAX; self.nodes.len()],
        };
        cut.place(0, &mut Vec::new());
        if !cut.current.nodes.is_empty() {
            let last = std::mem::take(&mut cut.current);
            cut.batches.push(last.finish(self));
        }
        cut.batches
    }

    /// Tokens a batch computes for node `n`: none when the prefix cache has them.
    pub(super) fn cost(&self, n: usize) -> usize {
        if self.nodes[n].free {
            0
        } else {
            self.nodes[n].tokens.len()
        }
    }

    /// Node ids in depth-first preorder (children in insertion order), root first.
    fn dfs_order(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0];
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes[n].children.iter().rev());
        }
        order
    }
}

struct Cut<'a> {
    tree: &'a PrefixTree,
    /// Tokens in each node's subtree, itself included.
    sizes: Vec<usize>,
    budget: usize,
    batches: Vec<PlannedBatch>,
    current: Builder,
    /// The batch each node was last added to.
    stamp: Vec<usize>,
}

impl Cut<'_> {
    /// Place `node`'s subtree; `path` holds its ancestors (root excluded).
    fn place(&mut self, node: usize, path: &mut Vec<usize>) {
        let whole = self.missing(path) + self.sizes[node];
        if self.current.rows + whole <= self.budget {
            return self.add_subtree(node, path);
        }
        let fresh = path.iter().map(|&n| self.len(n)).sum::<usize>() + self.sizes[node];
        if fresh <= self.budget && !self.current.readouts.is_empty() {
            self.close();
            return self.add_subtree(node, path);
        }
        // Larger than a batch: this node on its own, then its children one by one.
        // (A batch that holds no read-out yet holds only ancestors of what comes
        // next, so it is never closed.)
        if node != 0 {
            if !self.current.readouts.is_empty()
                && self.current.rows + self.missing(path) + self.len(node) > self.budget
            {
                self.close();
            }
            self.add_path(path);
            self.add(node);
        }
        if node != 0 {
            path.push(node);
        }
        for &child in &self.tree.nodes[node].children {
            self.place(child, path);
        }
        if node != 0 {
            path.pop();
        }
    }

    fn len(&self, node: usize) -> usize {
        self.tree.cost(node)
    }

    /// Tokens of `path` not yet in the current batch.
    fn missing(&self, path: &[usize]) -> usize {
        let id = self.batches.len();
        path.iter().filter(|&&n| self.stamp[n] != id).map(|&n| self.len(n)).sum()
    }

    fn close(&mut self) {
        let done = std::mem::take(&mut self.current);
        self.batches.push(done.finish(self.tree));
    }

    fn add_path(&mut self, path: &[usize]) {
        for &n in path {
            if self.stamp[n] != self.batches.len() {
                self.stamp[n] = self.batches.len();
                self.current.nodes.push(n);
                self.current.rows += self.len(n);
            }
        }
    }

    /// Add a node placed here for the first time (its read-out belongs to this batch).
    fn add(&mut self, node: usize) {
        self.add_path(&[node]);
        if self.tree.nodes[node].readout {
            self.current.readouts.push(node);
        }
    }

    fn add_subtree(&mut self, node: usize, path: &[usize]) {
        self.add_path(path);
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            if n != 0 {
                self.add(n);
            }
            stack.extend(self.tree.nodes[n].children.iter().rev());
        }
    }
}

#[derive(Default)]
struct Builder {
    /// Nodes in depth-first order, closed under ancestors.
    nodes: Vec<usize>,
    rows: usize,
    readouts: Vec<ReadoutId>,
}

impl Builder {
    fn finish(self, tree: &PrefixTree) -> PlannedBatch {
        let mut layout = BatchLayout::default();
        let mut open: Vec<(usize, usize)> = Vec::new(); // (node, segment index) on the current path
        let mut last_row: HashMap<usize, i64> = HashMap::new();
        for &n in &self.nodes {
            let node = &tree.nodes[n];
            let start = layout.tokens.len() as i64;
            while open.last().is_some_and(|&(o, _)| o != node.parent) {
                let (_, s) = open.pop().expect("checked non-empty");
                layout.segments[s].end = start;
            }
            layout.tokens.extend_from_slice(&node.tokens);
            layout.positions.extend((node.depth..node.depth + node.tokens.len()).map(|p| p as i64));
            let len = node.tokens.len() as i64;
            layout.segments.push(Segment { start, len, end: start + len });
            open.push((n, layout.segments.len() - 1));
            last_row.insert(n, start + len - 1);
        }
        let rows = layout.tokens.len() as i64;
        for (_, s) in open {
            layout.segments[s].end = rows;
        }
        layout.probe_rows = self.readouts.iter().map(|r| last_row[r]).collect();
        PlannedBatch { layout, readouts: self.readouts, nodes: self.nodes }
    }
}
