//! A forward batch: the segments of a prefix tree laid out back to back in one
//! token dimension, no padding, no token computed twice.
//!
//! Every scored prefix of every record in the batch is a path from the root of
//! the tree; shared prefixes (the system header, a GRPO prompt, a shared
//! conversation history) are one path, computed once. A [`Segment`] is a run of
//! rows with no branch inside: its own rows attend causally to each other and to
//! all rows of its ancestors; the rows right after it, up to `end`, are its
//! descendants (depth-first order), which attend to all of it. A *read-out* row
//! (a probe `<extra_id_2>`, or the last token of a client-tokenised sequence) is
//! always the last row of its segment; its final hidden state is scored.
//!
//! [`BatchLayout`] is plain host data, what the engine hands to a backend and a
//! worker group sends to its ranks (`encode` / `decode`); [`PackedBatch`] is
//! the same batch as device tensors plus the index sets attention needs.

use tch::{Device, Tensor};

use super::kv_cache::CacheOps;
use super::ModelError;

/// A run of rows of the prefix tree: own rows `start..start + len`, then its
/// descendants up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: i64,
    pub len: i64,
    pub end: i64,
}

impl Segment {
    /// Rows of the segment's descendants.
    pub fn descendants(&self) -> std::ops::Range<i64> {
        self.start + self.len..self.end
    }

    /// Its last own row.
    pub fn last_row(&self) -> i64 {
        self.start + self.len - 1
    }
}

/// A forward batch as plain host data (no tensors).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchLayout {
    /// Token id per row, segments in depth-first order.
    pub tokens: Vec<i64>,
    /// Position id per row: its depth on its path from the root.
    pub positions: Vec<i64>,
    /// The segments, depth-first (a parent before its descendants).
    pub segments: Vec<Segment>,
    /// Read-out rows, ascending; the forward returns one `[9]` row per entry.
    pub probe_rows: Vec<i64>,
    /// Ancestors whose keys and values come from the prefix cache, and what the
    /// batch keeps there ([`super::kv_cache`]). A segment with no ancestor in
    /// the batch starts at the position after the cached ancestors over it.
    pub cache: CacheOps,
}

impl BatchLayout {
    /// Rows (tokens) the forward pass computes.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Scored rows: the forward returns one `[9]` row per read-out, in order.
    pub fn probes(&self) -> usize {
        self.probe_rows.len()
    }

    /// Keys attended over all rows, and over the read-out rows alone: a row at
    /// position p attends to p + 1 keys (its prefix and itself).
    pub fn attended_keys(&self) -> (u64, u64) {
        let all = self.positions.iter().map(|&p| p as u64 + 1).sum();
        let probes = self.probe_rows.iter().map(|&r| self.positions[r as usize] as u64 + 1).sum();
        (all, probes)
    }

    /// A flat buffer for a broadcast:
    /// `[rows, segments, probes, tokens.., positions.., (start, len, end).., probe_rows.., cache ops..]`.
    pub fn encode(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(3 + 2 * self.rows() + 3 * self.segments.len() + self.probes() + 4);
        out.extend([self.rows() as i64, self.segments.len() as i64, self.probes() as i64]);
        out.extend_from_slice(&self.tokens);
        out.extend_from_slice(&self.positions);
        out.extend(self.segments.iter().flat_map(|s| [s.start, s.len, s.end]));
        out.extend_from_slice(&self.probe_rows);
        self.cache.encode(&mut out);
        out
    }

    /// The inverse of [`BatchLayout::encode`], checked with [`BatchLayout::validate`].
    pub fn decode(data: &[i64]) -> Result<BatchLayout, ModelError> {
        let bad = || ModelError::Config("a batch layout buffer is truncated or corrupt".into());
        let head = data.get(..3).ok_or_else(bad)?;
        let count = |n: i64| usize::try_from(n).map_err(|_| bad());
        let (rows, segs, probes) = (count(head[0])?, count(head[1])?, count(head[2])?);
        let total = segs.checked_mul(3).and_then(|s| s.checked_add(rows.checked_mul(2)?)?.checked_add(probes));
        let Some(cache_at) = total.and_then(|t| t.checked_add(3)).filter(|&t| t <= data.len()) else {
            return Err(bad());
        };
        let cache = CacheOps::decode(&data[cache_at..]).ok_or_else(bad)?;
        let mut rest = &data[3..];
        let mut take = |n: usize| {
            let (a, b) = rest.split_at(n);
            rest = b;
            a
        };
        let layout = BatchLayout {
            tokens: take(rows).to_vec(),
            positions: take(rows).to_vec(),
            segments: take(3 * segs).chunks_exact(3).map(|s| Segment { start: s[0], len: s[1], end: s[2] }).collect(),
            probe_rows: take(probes).to_vec(),
            cache,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// The invariants the forward relies on: segments tile the rows in
    /// depth-first order and nest; a segment's positions continue its parent's;
    /// read-outs are ascending segment ends.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Config(format!("invalid batch layout: {what}")));
        let rows = self.rows() as i64;
        if self.positions.len() != self.tokens.len() {
            return bad(format!("{} positions for {} tokens", self.positions.len(), rows));
        }
        // Open ancestors: (end, position of the last own row).
        let mut open: Vec<(i64, i64)> = Vec::new();
        let mut next = 0i64;
        for (i, s) in self.segments.iter().enumerate() {
            while open.last().is_some_and(|&(end, _)| end <= s.start) {
                open.pop();
            }
            if s.start != next || s.len < 1 || s.end < s.start + s.len || s.end > rows {
                return bad(format!("segment {i} {s:?} does not follow row {next} or overruns {rows} rows"));
            }
            if let Some(&(end, _)) = open.last() {
                if s.end > end {
                    return bad(format!("segment {i} {s:?} ends after its parent's end {end}"));
                }
            }
            let first = open.last().map_or_else(|| self.cached_depth(s.start), |&(_, last)| last + 1);
            let own = &self.positions[s.start as usize..(s.start + s.len) as usize];
            if own.iter().zip(first..).any(|(&p, want)| p != want) {
                return bad(format!("segment {i} positions do not continue from {first}"));
            }
            open.push((s.end, first + s.len - 1));
            next = s.start + s.len;
        }
        if next != rows {
            return bad(format!("segments cover {next} of {rows} rows"));
        }
        self.cache.validate(rows).map_err(|e| ModelError::Config(format!("invalid batch layout: {e}")))?;
        let ends: std::collections::HashSet<i64> = self.segments.iter().map(Segment::last_row).collect();
        if self.probe_rows.windows(2).any(|w| w[0] >= w[1]) || self.probe_rows.iter().any(|r| !ends.contains(r)) {
            return bad("read-out rows must be ascending segment ends".into());
        }
        Ok(())
    }
}

impl BatchLayout {
    /// The position after the cached ancestors of row `row` (0 without any).
    fn cached_depth(&self, row: i64) -> i64 {
        let over = self.cache.reads.iter().filter(|r| r.below_start <= row && row < r.below_end);
        over.map(|r| r.depth + r.len).max().unwrap_or(0)
    }
}

/// A layout on a device, with what attention needs precomputed.
pub struct PackedBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub segments: Vec<Segment>,
    /// Read-out rows in output order.
    pub probe_rows: Tensor,
    /// Positions of the read-out rows (their rotary angles).
    pub probe_positions: Tensor,
    /// Per segment: the range of read-out indices among its descendants, and
    /// whether its own last row is a read-out (and which).
    pub probe_ranges: Vec<(std::ops::Range<i64>, Option<i64>)>,
    /// Rows of one-row segments (mostly probes): their self-attention is batched.
    pub single_rows: Tensor,
    /// Segments with more than one row.
    pub multi: Vec<usize>,
    /// One-row segments whose row is a read-out: `(read-out indices, rows)`.
    pub single_probes: (Tensor, Tensor),
    /// Longer segments that end in a read-out: `(segment, read-out index)`.
    pub multi_probes: Vec<(usize, i64)>,
    /// The prefix cache's part of the batch.
    pub cache: CacheOps,
    /// Per cached read: the read-out indices among the rows below it.
    pub read_probes: Vec<std::ops::Range<i64>>,
}

impl PackedBatch {
    pub fn new(layout: &BatchLayout, device: Device) -> Result<PackedBatch, ModelError> {
        layout.validate()?;
        let probe_index: std::collections::HashMap<i64, i64> =
            layout.probe_rows.iter().enumerate().map(|(i, &r)| (r, i as i64)).collect();
        let mut probe_ranges = Vec::with_capacity(layout.segments.len());
        let (mut single_rows, mut multi) = (Vec::new(), Vec::new());
        let (mut single_probe_idx, mut single_probe_rows, mut multi_probes) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in layout.segments.iter().enumerate() {
            let first = layout.probe_rows.partition_point(|&r| r < s.start + s.len) as i64;
            let last = layout.probe_rows.partition_point(|&r| r < s.end) as i64;
            let own = probe_index.get(&s.last_row()).copied();
            probe_ranges.push((first..last, own));
            if s.len == 1 {
                single_rows.push(s.start);
            } else {
                multi.push(i);
            }
            match own {
                Some(p) if s.len == 1 => {
                    single_probe_idx.push(p);
                    single_probe_rows.push(s.start);
                }
                Some(p) => multi_probes.push((i, p)),
                None => {}
            }
        }
        let on = |v: &[i64]| Tensor::from_slice(v).f_to_device(device);
        let probe_positions: Vec<i64> = layout.probe_rows.iter().map(|&r| layout.positions[r as usize]).collect();
        Ok(PackedBatch {
            input_ids: on(&layout.tokens)?,
            positions: on(&layout.positions)?,
            segments: layout.segments.clone(),
            probe_rows: on(&layout.probe_rows)?,
            probe_positions: on(&probe_positions)?,
            probe_ranges,
            single_rows: on(&single_rows)?,
            multi,
            single_probes: (on(&single_probe_idx)?, on(&single_probe_rows)?),
            multi_probes,
            read_probes: layout
                .cache
                .reads
                .iter()
                .map(|r| {
                    let at = |row: i64| layout.probe_rows.partition_point(|&p| p < row) as i64;
                    at(r.below_start)..at(r.below_end)
                })
                .collect(),
            cache: layout.cache.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root [1 2] -> child [3 4] -> probe [9]; root -> probe [9] (both read out).
    fn layout() -> BatchLayout {
        BatchLayout {
            tokens: vec![1, 2, 3, 4, 9, 9],
            positions: vec![0, 1, 2, 3, 4, 2],
            segments: vec![
                Segment { start: 0, len: 2, end: 6 },
                Segment { start: 2, len: 2, end: 5 },
                Segment { start: 4, len: 1, end: 5 },
                Segment { start: 5, len: 1, end: 6 },
            ],
            probe_rows: vec![4, 5],
            cache: CacheOps::default(),
        }
    }

    #[test]
    fn a_layout_survives_encoding_and_corruption_is_caught() {
        let l = layout();
        let data = l.encode();
        assert_eq!(BatchLayout::decode(&data).unwrap(), l);
        assert!(BatchLayout::decode(&data[..data.len() - 1]).is_err());
        assert!(BatchLayout::decode(&[data.clone(), vec![0]].concat()).is_err());
        let mut wrong = l.clone();
        wrong.positions[5] = 3; // a probe under the root continues from position 1
        assert!(wrong.validate().unwrap_err().to_string().contains("positions do not continue from 2"));
        let mut wrong = l.clone();
        wrong.segments[1].end = 6; // overlaps its sibling
        assert!(wrong.validate().is_err());
        let mut wrong = l.clone();
        wrong.probe_rows = vec![2];
        assert!(wrong.validate().unwrap_err().to_string().contains("segment ends"));
        assert_eq!((l.rows(), l.probes(), l.attended_keys()), (6, 2, (1 + 2 + 3 + 4 + 5 + 3, 5 + 3)));
    }

    #[test]
    fn precomputes_probe_ranges_and_one_row_segments() {
        let b = PackedBatch::new(&layout(), Device::Cpu).unwrap();
        let ranges: Vec<_> = b.probe_ranges.iter().map(|(r, own)| (r.clone(), *own)).collect();
        assert_eq!(ranges, vec![(0..2, None), (0..1, None), (1..1, Some(0)), (2..2, Some(1))]);
        assert_eq!(Vec::<i64>::try_from(&b.single_rows).unwrap(), vec![4, 5]);
        assert_eq!(b.multi, vec![0, 1]);
        assert_eq!(Vec::<i64>::try_from(&b.single_probes.0).unwrap(), vec![0, 1]);
        assert_eq!(Vec::<i64>::try_from(&b.probe_positions).unwrap(), vec![4, 2]);
    }

    #[test]
    fn segments_under_a_cached_ancestor_continue_its_positions() {
        use crate::model::kv_cache::KvRead;
        let read = KvRead { entry: 1, offset: 0, len: 3, depth: 0, below_start: 0, below_end: 2 };
        let mut l = BatchLayout {
            tokens: vec![5, 9],
            positions: vec![3, 4],
            segments: vec![Segment { start: 0, len: 1, end: 2 }, Segment { start: 1, len: 1, end: 2 }],
            probe_rows: vec![1],
            cache: CacheOps { reads: vec![read], ..CacheOps::default() },
        };
        l.validate().unwrap();
        assert_eq!(BatchLayout::decode(&l.encode()).unwrap(), l);
        let b = PackedBatch::new(&l, Device::Cpu).unwrap();
        assert_eq!(b.read_probes, vec![0..1]);
        l.positions = vec![0, 1];
        assert!(l.validate().unwrap_err().to_string().contains("positions do not continue from 3"));
        l.positions = vec![3, 4];
        l.cache.reads[0].below_end = 3;
        assert!(l.validate().unwrap_err().to_string().contains("outside a batch of 2 rows"));
    }
}
