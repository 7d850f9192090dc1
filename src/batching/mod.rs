//! Grouping work into forward batches: a prefix tree over the batch's scored
//! prefixes, cut by a budget of tokens computed (not by request count), and the
//! prefix cache that keeps computed prefixes for later batches.

pub mod cut;
pub mod prefix_cache;
pub mod prefix_tree;

pub use cut::PlannedBatch;
pub use prefix_cache::{CacheStats, PrefixCache};
pub use prefix_tree::{layout_of, PlainSequence, PrefixTree, ReadoutId};
