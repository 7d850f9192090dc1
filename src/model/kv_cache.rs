//! The prefix cache on a rank: keys and values of prefix-tree nodes computed in
//! earlier batches, kept to be attended to again instead of recomputed.
//!
//! Rank 0's engine decides everything ([`crate::batching::prefix_cache`]): which
//! entries a batch reads, which of its rows it keeps as new entries, which
//! entries go to make room. The decision travels with the batch as
//! [`CacheOps`], so every rank of a group applies the same one to its own slice
//! (its kv heads for tensor parallelism, its stage's layers for pipeline
//! parallelism) and ranks never disagree. A rank only stores and looks up.

use std::collections::HashMap;
use tch::Tensor;

use super::ModelError;

/// Cached keys and values a batch attends to: rows `offset..offset + len` of
/// entry `entry`, at positions `depth..depth + len`, an ancestor of the batch
/// rows `below_start..below_end` (which attend to all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRead {
    pub entry: u64,
    pub offset: i64,
    pub len: i64,
    pub depth: i64,
    pub below_start: i64,
    pub below_end: i64,
}

/// Batch rows `start..start + len` kept as the new entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvStore {
    pub entry: u64,
    pub start: i64,
    pub len: i64,
}

/// What a batch does with the cache, in this order: drop everything (`clear`),
/// drop `evict`, attend to `reads`, keep `stores`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheOps {
    pub clear: bool,
    pub evict: Vec<u64>,
    pub reads: Vec<KvRead>,
    pub stores: Vec<KvStore>,
}

impl CacheOps {
    /// `[clear, evicts, reads, stores, evict.., (entry, offset, len, depth, below_start, below_end).., (entry, start, len)..]`.
    pub fn encode(&self, out: &mut Vec<i64>) {
        out.extend([self.clear as i64, self.evict.len() as i64, self.reads.len() as i64, self.stores.len() as i64]);
        out.extend(self.evict.iter().map(|&e| e as i64));
        for r in &self.reads {
            out.extend([r.entry as i64, r.offset, r.len, r.depth, r.below_start, r.below_end]);
        }
        out.extend(self.stores.iter().flat_map(|s| [s.entry as i64, s.start, s.len]));
    }

    /// The inverse of [`CacheOps::encode`]; `None` when `data` is not exactly one encoding.
    pub fn decode(data: &[i64]) -> Option<CacheOps> {
        let (head, rest) = (data.get(..4)?, &data[4..]);
        let count = |n: i64| usize::try_from(n).ok();
        let (evicts, reads, stores) = (count(head[1])?, count(head[2])?, count(head[3])?);
        if head[0] > 1
            || head[0] < 0
            || rest.len() != evicts.checked_add(reads.checked_mul(6)?)?.checked_add(stores.checked_mul(3)?)?
        {
            return None;
        }
        let (evict, rest) = rest.split_at(evicts);
        let (read, store) = rest.split_at(reads * 6);
        Some(CacheOps {
            clear: head[0] == 1,
            evict: evict.iter().map(|&e| e as u64).collect(),
            reads: read
                .chunks_exact(6)
                .map(|r| KvRead {
                    entry: r[0] as u64,
                    offset: r[1],
                    len: r[2],
                    depth: r[3],
                    below_start: r[4],
                    below_end: r[5],
                })
                .collect(),
            stores: store.chunks_exact(3).map(|s| KvStore { entry: s[0] as u64, start: s[1], len: s[2] }).collect(),
        })
    }

    /// The bounds a layout of `rows` rows needs: reads cover rows of the batch,
    /// stores keep rows of it.
    pub fn validate(&self, rows: i64) -> Result<(), String> {
        for r in &self.reads {
            if r.offset < 0
                || r.len < 1
                || r.depth < 0
                || r.below_start < 0
                || r.below_start >= r.below_end
                || r.below_end > rows
            {
                return Err(format!("cache read {r:?} is outside a batch of {rows} rows"));
            }
        }
        for s in &self.stores {
            if s.start < 0 || s.len < 1 || s.start + s.len > rows {
                return Err(format!("cache store {s:?} is outside a batch of {rows} rows"));
            }
        }
        Ok(())
    }
}

/// One rank's slice of the cached keys and values: per entry, `(k, v)`
/// `[len, kv_heads, head_dim]` for each layer of its stage, in order.
#[derive(Default)]
pub struct KvCache {
    entries: HashMap<u64, Vec<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Apply a batch's clear and evictions, and check that what it reads is here.
    pub fn begin(&mut self, ops: &CacheOps) -> Result<(), ModelError> {
        if ops.clear {
            self.entries.clear();
        }
        for e in &ops.evict {
            self.entries.remove(e);
        }
        for r in &ops.reads {
            if !self.entries.contains_key(&r.entry) {
                return Err(ModelError::Config(format!(
                    "the batch reads prefix-cache entry {} that this rank does not hold: this is a bug",
                    r.entry
                )));
            }
        }
        Ok(())
    }

    /// The keys and values of each read for `layer` (an index into this
    /// stage's layers): views, no copy.
    pub fn reads(&self, ops: &CacheOps, layer: usize) -> Result<Vec<(Tensor, Tensor)>, ModelError> {
        ops.reads
            .iter()
            .map(|r| {
                let missing = || {
                    ModelError::Config(format!("prefix-cache entry {} has no layer {layer}: this is a bug", r.entry))
                };
                let (k, v) = self.entries.get(&r.entry).and_then(|layers| layers.get(layer)).ok_or_else(missing)?;
                Ok((k.f_narrow(0, r.offset, r.len)?, v.f_narrow(0, r.offset, r.len)?))
            })
            .collect()
    }

    /// Keep the stored rows of `layer`'s keys and values `[rows, kv_heads, d]`
    /// (copies: a view would keep the whole batch's tensors alive). Layers come
    /// in order, the first creating the entry.
    pub fn store(&mut self, ops: &CacheOps, layer: usize, k: &Tensor, v: &Tensor) -> Result<(), ModelError> {
        for s in &ops.stores {
            let kept =
                (k.f_narrow(0, s.start, s.len)?.f_detach_copy()?, v.f_narrow(0, s.start, s.len)?.f_detach_copy()?);
            let layers = self.entries.entry(s.entry).or_default();
            if layer == 0 {
                layers.clear();
            }
            layers.push(kept);
        }
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of every key and value held.
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        self.entries.values().flatten().map(|(k, v)| size(k) + size(v)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn ops_survive_encoding_and_bad_bounds_are_caught() {
        let ops = CacheOps {
            clear: true,
            evict: vec![3, 9],
            reads: vec![KvRead { entry: 4, offset: 2, len: 5, depth: 7, below_start: 0, below_end: 6 }],
            stores: vec![KvStore { entry: 11, start: 1, len: 3 }],
        };
        let mut data = Vec::new();
        ops.encode(&mut data);
        assert_eq!(CacheOps::decode(&data), Some(ops.clone()));
        assert_eq!(CacheOps::decode(&data[..data.len() - 1]), None);
        ops.validate(6).unwrap();
        assert!(ops.validate(5).unwrap_err().contains("outside a batch of 5 rows"));
    }

    #[test]
    fn stores_copy_rows_and_reads_slice_them() {
        let k = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([6, 1, 2]);
        let mut cache = KvCache::default();
        let store = CacheOps { stores: vec![KvStore { entry: 1, start: 2, len: 3 }], ..CacheOps::default() };
        cache.store(&store, 0, &k, &(&k * 10.0)).unwrap();
        let read = CacheOps {
            reads: vec![KvRead { entry: 1, offset: 1, len: 2, depth: 3, below_start: 0, below_end: 1 }],
            ..CacheOps::default()
        };
        cache.begin(&read).unwrap();
        let got = cache.reads(&read, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(got[0].0.flatten(0, -1)).unwrap(), vec![6.0, 7.0, 8.0, 9.0]);
        assert_eq!(Vec::<f32>::try_from(got[0].1.flatten(0, -1)).unwrap(), vec![60.0, 70.0, 80.0, 90.0]);
        assert_eq!(cache.bytes(), 2 * 3 * 2 * 4);
        let evict = CacheOps { evict: vec![1], ..read.clone() };
        assert!(cache.begin(&evict).unwrap_err().to_string().contains("does not hold"));
        assert!(cache.is_empty());
    }
}
