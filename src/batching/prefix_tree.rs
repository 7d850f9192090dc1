//! The prefix tree over the scored prefixes of a batch of records, and its cut
//! into forward batches by a budget of tokens *computed*.
//!
//! Every scored prefix (the tokens up to an assistant turn, then its probe
//! `<extra_id_2>`) is inserted as a path; paths that share tokens share nodes,
//! so a system header, a GRPO prompt or a conversation history common to many
//! records is one node, computed once. A node is a run of tokens with no branch
//! and at most one read-out, its last token. Two probes with the same prefix
//! are one read-out (computed once, its scores given to both).
//!
//! Depth is unbounded: header -> prompt -> responses is three levels, a shared
//! multi-turn history is one level per shared turn; attention handles any depth
//! by merging one partial result per ancestor ([`crate::model::attention`]).
//!
//! [`PrefixTree::plan`] (in `cut.rs`) cuts it into forward batches.

use std::collections::HashMap;

use crate::model::BatchLayout;

/// A read-out of the tree: the node whose last token is scored.
pub type ReadoutId = usize;

pub(super) struct Node {
    pub(super) tokens: Vec<i64>,
    /// Position of the first token (its depth on the path from the root).
    pub(super) depth: usize,
    pub(super) parent: usize,
    /// Children in insertion order, and by first token.
    pub(super) children: Vec<usize>,
    by_token: HashMap<i64, usize>,
    pub(super) readout: bool,
    /// Its keys and values are in the prefix cache: it costs a batch nothing.
    pub(super) free: bool,
}

/// A radix tree of token paths. Node 0 is the empty root.
pub struct PrefixTree {
    pub(super) nodes: Vec<Node>,
    /// Tokens in all nodes.
    tokens: usize,
}

impl Default for PrefixTree {
    fn default() -> Self {
        Self::new()
    }
}

impl PrefixTree {
    pub fn new() -> PrefixTree {
        let root = Node {
            tokens: vec![],
            depth: 0,
            parent: 0,
            children: vec![],
            by_token: HashMap::new(),
            readout: false,
            free: false,
        };
        PrefixTree { nodes: vec![root], tokens: 0 }
    }

    /// Insert the path `prefix` + `token` and mark its last token as read out.
    /// Equal paths give the same id.
    pub fn insert(&mut self, prefix: &[i64], token: i64) -> ReadoutId {
        let path: Vec<i64> = prefix.iter().copied().chain([token]).collect();
        let (mut node, mut i) = (0, 0);
        while i < path.len() {
            let Some(&child) = self.nodes[node].by_token.get(&path[i]) else {
                node = self.add_child(node, path[i..].to_vec(), i);
                i = path.len();
                break;
            };
            let shared = self.nodes[child].tokens.iter().zip(&path[i..]).take_while(|(a, b)| a == b).count();
            node = if shared < self.nodes[child].tokens.len() { self.split(child, shared) } else { child };
            i += shared;
        }
        debug_assert_eq!(i, path.len());
        self.nodes[node].readout = true;
        node
    }

    /// Insert every scored prefix of one laid-out sequence: for each probe
    /// `(token, prefix length)`, the path `tokens[..prefix]` + `token`. The
    /// read-out ids come back in the probes' order.
    pub fn insert_sequence(&mut self, tokens: &[i64], probes: &[(i64, i64)]) -> Vec<ReadoutId> {
        probes.iter().map(|&(token, prefix)| self.insert(&tokens[..prefix as usize], token)).collect()
    }

    fn add_child(&mut self, parent: usize, tokens: Vec<i64>, depth: usize) -> usize {
        let id = self.nodes.len();
        self.tokens += tokens.len();
        self.nodes[parent].by_token.insert(tokens[0], id);
        self.nodes[parent].children.push(id);
        let node =
            Node { tokens, depth, parent, children: vec![], by_token: HashMap::new(), readout: false, free: false };
        self.nodes.push(node);
        id
    }

    /// Cut `node` after its first `at` tokens: a new node takes the head and
    /// becomes its parent; `node` keeps the tail, its children and its read-out,
    /// so read-out ids never change. Returns the head.
    pub(super) fn split(&mut self, node: usize, at: usize) -> usize {
        let head_id = self.nodes.len();
        let n = &mut self.nodes[node];
        let tail = n.tokens.split_off(at);
        let head = Node {
            tokens: std::mem::replace(&mut n.tokens, tail),
            depth: n.depth,
            parent: n.parent,
            children: vec![node],
            by_token: HashMap::from([(n.tokens[0], node)]),
            readout: false,
            free: n.free,
        };
        n.depth += at;
        n.parent = head_id;
        let parent = &mut self.nodes[head.parent];
        parent.by_token.insert(head.tokens[0], head_id);
        let slot = parent.children.iter().position(|&c| c == node).expect("a child is in its parent's list");
        parent.children[slot] = head_id;
        self.nodes.push(head);
        head_id
    }

    /// Tokens in the tree: what one batch holding all of it computes.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tokens of the nodes the prefix cache holds (see [`super::prefix_cache`]).
    pub fn free_tokens(&self) -> usize {
        self.nodes.iter().filter(|n| n.free).map(|n| n.tokens.len()).sum()
    }
}

/// A sequence as `(tokens, [(probe token, prefix length)])`.
pub type PlainSequence = (Vec<i64>, Vec<(i64, i64)>);

/// One batch holding `seqs`, whatever its size (tests and tools; the engine
/// plans by budget).
pub fn layout_of(seqs: &[PlainSequence]) -> BatchLayout {
    let mut tree = PrefixTree::new();
    for (tokens, probes) in seqs {
        tree.insert_sequence(tokens, probes);
    }
    tree.plan(usize::MAX).pop().map(|b| b.layout).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: i64 = 99;

    #[test]
    fn shared_prompts_are_one_node_and_equal_paths_one_readout() {
        let mut tree = PrefixTree::new();
        let a = tree.insert(&[1, 2, 3, 4], P);
        let b = tree.insert(&[1, 2, 3, 5, 6], P);
        let c = tree.insert(&[1, 2, 3, 4], P);
        let d = tree.insert(&[1, 2], P); // a probe inside the shared prompt
        assert_eq!(a, c);
        assert_ne!(a, b);
        // [1 2] -> {P, [3] -> {[4 P], [5 6 P]}}
        assert_eq!(tree.tokens(), 2 + 1 + 1 + 2 + 3);
        let batches = tree.plan(1 << 20);
        assert_eq!(batches.len(), 1);
        let l = &batches[0].layout;
        assert_eq!(l.tokens, vec![1, 2, 3, 4, P, 5, 6, P, P]);
        assert_eq!(l.positions, vec![0, 1, 2, 3, 4, 3, 4, 5, 2]);
        l.validate().unwrap();
        assert_eq!(batches[0].readouts, vec![a, b, d]);
        assert_eq!(l.probe_rows, vec![4, 7, 8]);
    }

    #[test]
    fn a_response_that_is_a_prefix_of_another_reads_out_mid_path() {
        let mut tree = PrefixTree::new();
        let long = tree.insert(&[1, 2, 3], 4);
        let short = tree.insert(&[1, 2], 3); // its read-out token is the long path's third token
        let l = &tree.plan(100)[0];
        assert_eq!(l.layout.tokens, vec![1, 2, 3, 4]);
        assert_eq!(l.readouts, vec![short, long]);
        assert_eq!(l.layout.probe_rows, vec![2, 3]);
        l.layout.validate().unwrap();
    }

    #[test]
    fn a_group_that_fits_a_fresh_batch_is_not_split() {
        let mut tree = PrefixTree::new();
        // header [1]; group 1: prompt [2 3 4] + 2 responses; group 2: prompt [5 6 7] + 3 responses
        for r in 0..2 {
            tree.insert(&[1, 2, 3, 4, 10 + r], P);
        }
        for r in 0..3 {
            tree.insert(&[1, 5, 6, 7, 20 + r], P);
        }
        // group 2's first response would fit after group 1 (8 + 5 = 13): it goes
        // with its group into the next batch instead, so its prompt is computed once
        let batches = tree.plan(13);
        let rows: Vec<usize> = batches.iter().map(|b| b.layout.rows()).collect();
        assert_eq!(rows, vec![1 + 3 + 4, 1 + 3 + 6]);
        assert_eq!(batches[1].layout.tokens[..4], [1, 5, 6, 7]);
    }

    #[test]
    fn a_cut_inside_a_subtree_repeats_the_ancestors() {
        let mut tree = PrefixTree::new();
        for r in 0..4 {
            tree.insert(&[1, 2, 3, 10 + r, 20 + r], P);
        }
        // each path: 3 shared + 3 own; budget 10 takes the prompt and two responses
        let batches = tree.plan(10);
        assert_eq!(batches.len(), 2);
        for b in &batches {
            b.layout.validate().unwrap();
            assert_eq!(b.layout.rows(), 9);
            assert_eq!(&b.layout.tokens[..3], &[1, 2, 3]);
            assert_eq!(b.readouts.len(), 2);
        }
        // a budget below one path still gives every path a batch
        let tiny = tree.plan(2);
        assert_eq!(tiny.len(), 4);
        assert!(tiny.iter().all(|b| b.layout.rows() == 6));
    }
}
