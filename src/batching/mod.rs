//! Grouping work into forward batches: a prefix tree over the batch's scored
//! prefixes, cut by a budget of tokens computed (not by request count).

pub mod cut;
pub mod prefix_tree;

pub use cut::PlannedBatch;
pub use prefix_tree::{layout_of, PlainSequence, PrefixTree, ReadoutId};
