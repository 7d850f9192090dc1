//! A packed batch: several sequences back to back in one token dimension, no
//! padding. Each sequence is its real tokens followed by its *probe* tokens (the
//! `<extra_id_2>` tokens that score one assistant turn each). Consecutive
//! sequences of the same shape form a [`SpanGroup`] so attention runs once per
//! group rather than once per sequence.

use tch::{Device, Tensor};

use super::ModelError;

/// `count` consecutive sequences with the same real length and probe count.
pub struct SpanGroup {
    /// First row of the group in the batch.
    pub start: i64,
    pub count: i64,
    /// Real (causal) tokens per sequence.
    pub real_len: i64,
    /// Probe tokens per sequence, after the real ones.
    pub probes: i64,
    /// `[count, 1, probes, real_len + probes]` boolean: which keys each probe sees
    /// (the real tokens of its prefix, and itself).
    pub probe_mask: Option<Tensor>,
}

impl SpanGroup {
    /// Rows per sequence.
    pub fn width(&self) -> i64 {
        self.real_len + self.probes
    }
}

/// Sequences packed into one token dimension, ready for the model's forward.
pub struct PackedBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub groups: Vec<SpanGroup>,
    /// Rows of all probe tokens, in output order.
    pub probe_rows: Tensor,
}

/// One sequence to pack: its real tokens, and per probe `(token id, prefix length)`.
pub struct SeqInput<'a> {
    pub tokens: &'a [i64],
    pub probes: &'a [(i64, i64)],
}

/// One sequence of a [`BatchLayout`], owned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayoutSeq {
    pub tokens: Vec<i64>,
    pub probes: Vec<(i64, i64)>,
}

/// A forward batch as plain host data (no tensors): what the engine hands to a
/// backend, and what a worker group sends to its ranks ([`BatchLayout::encode`]
/// is a flat `i64` buffer for a broadcast). Every rank turns it into a
/// [`PackedBatch`] on its own device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchLayout {
    pub seqs: Vec<LayoutSeq>,
}

impl BatchLayout {
    /// Rows (tokens) the forward pass computes.
    pub fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len() + s.probes.len()).sum()
    }

    /// Scored rows: the forward returns one `[9]` row per probe, in order.
    pub fn probes(&self) -> usize {
        self.seqs.iter().map(|s| s.probes.len()).sum()
    }

    /// Keys attended over all rows, and over the probe rows alone: a row at
    /// position p attends to p + 1 keys.
    pub fn attended_keys(&self) -> (u64, u64) {
        let mut all = 0u64;
        let mut probes = 0u64;
        for s in &self.seqs {
            let n = s.tokens.len() as u64;
            all += n * (n + 1) / 2;
            for &(_, prefix) in &s.probes {
                all += prefix as u64 + 1;
                probes += prefix as u64 + 1;
            }
        }
        (all, probes)
    }

    /// `[n_seqs, (n_tokens, n_probes, tokens.., (id, prefix)..)*]`.
    pub fn encode(&self) -> Vec<i64> {
        let mut out = vec![self.seqs.len() as i64];
        for s in &self.seqs {
            out.push(s.tokens.len() as i64);
            out.push(s.probes.len() as i64);
            out.extend_from_slice(&s.tokens);
            out.extend(s.probes.iter().flat_map(|&(id, prefix)| [id, prefix]));
        }
        out
    }

    pub fn decode(data: &[i64]) -> Result<BatchLayout, ModelError> {
        let bad = || ModelError::Config("a batch layout buffer is truncated or corrupt".into());
        let mut it = data.iter().copied();
        let mut take = |n: i64| -> Result<Vec<i64>, ModelError> {
            let n = usize::try_from(n).map_err(|_| bad())?;
            let v: Vec<i64> = it.by_ref().take(n).collect();
            if v.len() == n {
                Ok(v)
            } else {
                Err(bad())
            }
        };
        let n = take(1)?[0];
        let mut seqs = Vec::new();
        for _ in 0..n {
            let head = take(2)?;
            let tokens = take(head[0])?;
            let pairs = take(head[1].checked_mul(2).ok_or_else(bad)?)?;
            let probes = pairs.chunks_exact(2).map(|p| (p[0], p[1])).collect();
            seqs.push(LayoutSeq { tokens, probes });
        }
        if take(1).is_ok() {
            return Err(bad());
        }
        Ok(BatchLayout { seqs })
    }
}

impl PackedBatch {
    /// A layout's batch on `device`.
    pub fn new(layout: &BatchLayout, device: Device) -> Result<PackedBatch, ModelError> {
        let inputs: Vec<SeqInput> =
            layout.seqs.iter().map(|s| SeqInput { tokens: &s.tokens, probes: &s.probes }).collect();
        Self::pack(&inputs, device)
    }

    pub fn pack(seqs: &[SeqInput<'_>], device: Device) -> Result<PackedBatch, ModelError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut probe_rows = Vec::new();
        let mut groups: Vec<SpanGroup> = Vec::new();
        let mut masks: Vec<Vec<bool>> = Vec::new(); // per group, `count` masks back to back
        for seq in seqs {
            let start = ids.len() as i64;
            let (real_len, probes) = (seq.tokens.len() as i64, seq.probes.len() as i64);
            ids.extend_from_slice(seq.tokens);
            positions.extend(0..real_len);
            let width = (real_len + probes) as usize;
            let mut mask = vec![false; probes as usize * width];
            for (i, &(token, prefix)) in seq.probes.iter().enumerate() {
                if prefix > real_len {
                    return Err(ModelError::Config(format!(
                        "probe prefix {prefix} is past the sequence end {real_len}"
                    )));
                }
                probe_rows.push(start + real_len + i as i64);
                ids.push(token);
                positions.push(prefix);
                mask[i * width..i * width + prefix as usize].fill(true);
                mask[i * width + real_len as usize + i] = true;
            }
            match groups.last_mut() {
                Some(g) if g.real_len == real_len && g.probes == probes => {
                    g.count += 1;
                    masks.last_mut().expect("one mask list per group").extend(mask);
                }
                _ => {
                    groups.push(SpanGroup { start, count: 1, real_len, probes, probe_mask: None });
                    masks.push(mask);
                }
            }
        }
        for (group, mask) in groups.iter_mut().zip(masks) {
            if group.probes > 0 {
                let shape = [group.count, 1, group.probes, group.width()];
                group.probe_mask = Some(Tensor::from_slice(&mask).f_view(shape)?.f_to_device(device)?);
            }
        }
        Ok(PackedBatch {
            input_ids: Tensor::from_slice(&ids).f_to_device(device)?,
            positions: Tensor::from_slice(&positions).f_to_device(device)?,
            groups,
            probe_rows: Tensor::from_slice(&probe_rows).f_to_device(device)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_sequences_of_one_shape_and_masks_probes() {
        let a = [1, 2, 3];
        let b = [4, 5, 6];
        let c = [7, 8];
        let probes = [(9, 2), (9, 3)];
        let seqs = [
            SeqInput { tokens: &a, probes: &probes },
            SeqInput { tokens: &b, probes: &probes },
            SeqInput { tokens: &c, probes: &probes[..1] },
        ];
        let batch = PackedBatch::pack(&seqs, Device::Cpu).unwrap();
        let shapes: Vec<(i64, i64, i64, i64)> =
            batch.groups.iter().map(|g| (g.start, g.count, g.real_len, g.probes)).collect();
        assert_eq!(shapes, vec![(0, 2, 3, 2), (10, 1, 2, 1)]);
        assert_eq!(Vec::<i64>::try_from(&batch.probe_rows).unwrap(), vec![3, 4, 8, 9, 12]);
        assert_eq!(Vec::<i64>::try_from(&batch.positions).unwrap(), vec![0, 1, 2, 2, 3, 0, 1, 2, 2, 3, 0, 1, 2]);
        let mask = batch.groups[0].probe_mask.as_ref().unwrap();
        assert_eq!(mask.size(), vec![2, 1, 2, 5]);
        // probe 0 sees real tokens 0..2 and itself; probe 1 sees 0..3 and itself
        let rows = Vec::<bool>::try_from(mask.get(1).flatten(0, -1)).unwrap();
        assert_eq!(rows, vec![true, true, false, true, false, true, true, true, false, true]);
        assert!(PackedBatch::pack(&[SeqInput { tokens: &c, probes: &[(9, 5)] }], Device::Cpu).is_err());
    }

    #[test]
    fn a_layout_survives_encoding() {
        let layout = BatchLayout {
            seqs: vec![
                LayoutSeq { tokens: vec![1, 2, 3], probes: vec![(9, 2), (9, 3)] },
                LayoutSeq { tokens: vec![4], probes: vec![(9, 1)] },
            ],
        };
        let data = layout.encode();
        assert_eq!(BatchLayout::decode(&data).unwrap(), layout);
        assert!(BatchLayout::decode(&data[..data.len() - 1]).is_err());
        assert!(BatchLayout::decode(&[data.clone(), vec![0]].concat()).is_err());
        assert_eq!((layout.rows(), layout.probes()), (7, 3));
    }
}
