//! Self-attention of one layer over a packed prefix-tree batch.
//!
//! Every row attends to its own segment causally and to each ancestor segment
//! fully ([`super::cascade`]): one causal call per segment (one-row segments,
//! mostly probes, batched into a single call), and one call per segment for all
//! of its descendants' rows at once against its keys, merged by log-sum-exp.
//! Trees of any depth are handled the same way: a row at depth n takes n - 1
//! merges. In the last layer only the read-out rows are queried.

use tch::{Device, Kind, Tensor};

use super::cascade::{as_batch, attend, from_batch, merge_into};
use super::packed::PackedBatch;
use super::rope::Rotary;
use super::{Config, ModelError, Weights};
use crate::parallel::ShardPlan;

/// Which rows a layer must produce: all of them, or (in the last layer, whose
/// other rows nobody reads) only the read-out rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    All,
    Probes,
}

pub struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    pub fn load(
        w: &Weights,
        p: &str,
        cfg: &Config,
        plan: &ShardPlan,
        kind: Kind,
        dev: Device,
    ) -> Result<Attention, ModelError> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (r, n) = (plan.rank, plan.world);
        let rows = |name: &str, out: i64, rank, world| {
            w.get_sharded(&format!("{p}.{name}.weight"), &[out, h], 0, rank, world, kind, dev)
        };
        Ok(Attention {
            q: rows("q_proj", cfg.num_heads * d, r, n)?,
            k: rows("k_proj", cfg.num_kv_heads * d, plan.kv_rank, plan.kv_world)?,
            v: rows("v_proj", cfg.num_kv_heads * d, plan.kv_rank, plan.kv_world)?,
            o: w.get_sharded(&format!("{p}.o_proj.weight"), &[h, cfg.num_heads * d], 1, r, n, kind, dev)?,
            heads: plan.heads,
            kv_heads: plan.kv_heads,
            head_dim: d,
        })
    }

    /// Attention output before o_proj's all-reduce: `[T, hidden]` partial sums, or
    /// `[probes, hidden]` when only the read-out rows are needed (the last layer).
    pub fn forward(&self, x: &Tensor, rotary: &Rotary, batch: &PackedBatch, rows: Rows) -> Result<Tensor, ModelError> {
        let (t, d) = (x.size()[0], self.head_dim);
        let k = rotary
            .apply(&x.f_linear::<&Tensor>(&self.k, None)?.f_view([t, self.kv_heads, d])?)
            .f_to_kind(Kind::Float)?;
        let v = x.f_linear::<&Tensor>(&self.v, None)?.f_view([t, self.kv_heads, d])?.f_to_kind(Kind::Float)?;
        let keys = Keys { k: &k, v: &v };
        let out = match rows {
            Rows::All => {
                let q = rotary
                    .apply(&x.f_linear::<&Tensor>(&self.q, None)?.f_view([t, self.heads, d])?)
                    .f_to_kind(Kind::Float)?;
                all_rows(&q, &keys, batch)?
            }
            Rows::Probes => {
                let xp = x.f_index_select(0, &batch.probe_rows)?;
                let p = xp.size()[0];
                let q = xp.f_linear::<&Tensor>(&self.q, None)?.f_view([p, self.heads, d])?;
                probe_rows(&rotary.rows(&batch.probe_rows).apply(&q).f_to_kind(Kind::Float)?, &keys, batch)?
            }
        };
        let n = out.size()[0];
        let out = out.f_to_kind(x.kind())?.f_reshape([n, self.heads * d])?;
        Ok(out.f_linear::<&Tensor>(&self.o, None)?)
    }
}

/// Keys and values of every row, `[T, kv_heads, d]`.
struct Keys<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
}

impl Keys<'_> {
    fn rows(&self, start: i64, len: i64) -> Result<(Tensor, Tensor), ModelError> {
        Ok((as_batch(&self.k.f_narrow(0, start, len)?)?, as_batch(&self.v.f_narrow(0, start, len)?)?))
    }

    /// One key per batch entry: `[n, kv_heads, 1, d]` for the given rows.
    fn single(&self, rows: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        Ok((self.k.f_index_select(0, rows)?.f_unsqueeze(2)?, self.v.f_index_select(0, rows)?.f_unsqueeze(2)?))
    }
}

/// Accumulators for the queried rows: output `[n, heads, d]` and LSE `[n, heads]`, fp32.
struct Acc {
    out: Tensor,
    lse: Tensor,
}

impl Acc {
    fn new(q: &Tensor) -> Result<Acc, ModelError> {
        let s = q.size();
        let opts = (Kind::Float, q.device());
        Ok(Acc { out: Tensor::f_empty([s[0], s[1], s[2]], opts)?, lse: Tensor::f_empty([s[0], s[1]], opts)? })
    }

    /// Set rows `start..start + n` to a first part.
    fn set(&mut self, start: i64, out: &Tensor, lse: &Tensor) -> Result<(), ModelError> {
        let n = out.size()[0];
        self.out.f_narrow(0, start, n)?.f_copy_(out)?;
        self.lse.f_narrow(0, start, n)?.f_copy_(lse)?;
        Ok(())
    }

    /// Set scattered rows to a first part.
    fn set_rows(&mut self, rows: &Tensor, out: &Tensor, lse: &Tensor) -> Result<(), ModelError> {
        let _ = self.out.f_index_copy_(0, rows, &out.f_to_kind(Kind::Float)?)?;
        let _ = self.lse.f_index_copy_(0, rows, lse)?;
        Ok(())
    }

    fn merge(&mut self, start: i64, out: &Tensor, lse: &Tensor) -> Result<(), ModelError> {
        let n = out.size()[0];
        merge_into(&mut self.out.f_narrow(0, start, n)?, &mut self.lse.f_narrow(0, start, n)?, out, lse)?;
        Ok(())
    }
}

/// Every row: own segment causally, then every ancestor's keys merged in.
fn all_rows(q: &Tensor, keys: &Keys, batch: &PackedBatch) -> Result<Tensor, ModelError> {
    let mut acc = Acc::new(q)?;
    if batch.single_rows.numel() > 0 {
        // One-row segments attend only to themselves: one call for all of them.
        let qs = q.f_index_select(0, &batch.single_rows)?.f_unsqueeze(2)?;
        let (k, v) = keys.single(&batch.single_rows)?;
        let (out, lse) = attend(&qs, &k, &v, false)?;
        acc.set_rows(&batch.single_rows, &out.f_squeeze_dim(2)?, &lse.f_squeeze_dim(2)?)?;
    }
    for &i in &batch.multi {
        let s = batch.segments[i];
        let (k, v) = keys.rows(s.start, s.len)?;
        let (out, lse) = from_batch_pair(attend(&as_batch(&q.f_narrow(0, s.start, s.len)?)?, &k, &v, true)?)?;
        acc.set(s.start, &out, &lse)?;
    }
    for s in &batch.segments {
        let below = s.descendants();
        if below.is_empty() {
            continue;
        }
        let (k, v) = keys.rows(s.start, s.len)?;
        let qd = as_batch(&q.f_narrow(0, below.start, below.end - below.start)?)?;
        let (out, lse) = from_batch_pair(attend(&qd, &k, &v, false)?)?;
        acc.merge(below.start, &out, &lse)?;
    }
    Ok(acc.out)
}

/// Read-out rows only (`q` is theirs, `[probes, heads, d]`): each attends to its
/// own segment (it is the segment's last row, so that is all of it) and merges
/// in every ancestor's keys.
fn probe_rows(q: &Tensor, keys: &Keys, batch: &PackedBatch) -> Result<Tensor, ModelError> {
    let mut acc = Acc::new(q)?;
    let (index, rows) = &batch.single_probes;
    if index.numel() > 0 {
        let qs = q.f_index_select(0, index)?.f_unsqueeze(2)?;
        let (k, v) = keys.single(rows)?;
        let (out, lse) = attend(&qs, &k, &v, false)?;
        acc.set_rows(index, &out.f_squeeze_dim(2)?, &lse.f_squeeze_dim(2)?)?;
    }
    for &(i, p) in &batch.multi_probes {
        let s = batch.segments[i];
        let (k, v) = keys.rows(s.start, s.len)?;
        let (out, lse) = from_batch_pair(attend(&as_batch(&q.f_narrow(0, p, 1)?)?, &k, &v, false)?)?;
        acc.set(p, &out, &lse)?;
    }
    for (s, (below, _)) in batch.segments.iter().zip(&batch.probe_ranges) {
        if below.is_empty() {
            continue;
        }
        let (k, v) = keys.rows(s.start, s.len)?;
        let qd = as_batch(&q.f_narrow(0, below.start, below.end - below.start)?)?;
        let (out, lse) = from_batch_pair(attend(&qd, &k, &v, false)?)?;
        acc.merge(below.start, &out, &lse)?;
    }
    Ok(acc.out)
}

fn from_batch_pair((out, lse): (Tensor, Tensor)) -> Result<(Tensor, Tensor), ModelError> {
    Ok(from_batch(&out, &lse)?)
}
