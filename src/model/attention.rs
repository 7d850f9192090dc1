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
use super::cpu_flash;
use super::packed::{PackedBatch, Segment};
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
    /// Its weights, for sleep and wake (`super::sleep`).
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }

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
    /// `[probes, hidden]` when only the read-out rows are needed (the last layer);
    /// and the batch's keys and values `[T, kv_heads, d]` (what the prefix cache
    /// keeps). `cached` holds the keys and values of each of the batch's cached
    /// reads ([`PackedBatch::cache`]), ancestors of the rows below them.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        batch: &PackedBatch,
        rows: Rows,
        cached: &[(Tensor, Tensor)],
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let (t, d) = (x.size()[0], self.head_dim);
        let kind = attention_kind(x);
        let k = rotary.apply(&x.f_linear::<&Tensor>(&self.k, None)?.f_view([t, self.kv_heads, d])?).f_to_kind(kind)?;
        let v = x.f_linear::<&Tensor>(&self.v, None)?.f_view([t, self.kv_heads, d])?.f_to_kind(kind)?;
        let keys = Keys { k: &k, v: &v };
        let out = match rows {
            Rows::All => {
                let q =
                    rotary.apply(&x.f_linear::<&Tensor>(&self.q, None)?.f_view([t, self.heads, d])?).f_to_kind(kind)?;
                all_rows(&q, keys, batch, cached)?
            }
            Rows::Probes => {
                let xp = x.f_index_select(0, &batch.probe_rows)?;
                let p = xp.size()[0];
                let q = xp.f_linear::<&Tensor>(&self.q, None)?.f_view([p, self.heads, d])?;
                probe_rows(&rotary.rows(&batch.probe_rows).apply(&q).f_to_kind(kind)?, keys, batch, cached)?
            }
        };
        let n = out.size()[0];
        let out = out.f_to_kind(x.kind())?.f_reshape([n, self.heads * d])?;
        Ok((out.f_linear::<&Tensor>(&self.o, None)?, k, v))
    }
}

/// The element type attention runs in. On CUDA the model's dtype, as fused GPU
/// kernels want (parts are still merged in fp32). On the CPU, a bf16 model on
/// a CPU with AVX512-BF16 keeps bf16 for [`cpu_flash`], which sums in fp32 and
/// returns fp32 parts; otherwise fp32 and libtorch's flash kernel: its bf16
/// outputs, rounded before the log-sum-exp merge, moved bf16 scores past the
/// parity bound, and its fp32 kernel was the faster of its two here.
fn attention_kind(x: &Tensor) -> Kind {
    attention_kind_of(x.kind(), x.device())
}

/// [`attention_kind`] of a model of `kind` on `device`: also the element type
/// of the keys and values the prefix cache keeps.
pub fn attention_kind_of(kind: Kind, device: Device) -> Kind {
    match device {
        Device::Cpu if kind == Kind::BFloat16 && use_cpu_flash() => Kind::BFloat16,
        Device::Cpu => Kind::Float,
        _ => kind,
    }
}

/// Whether bf16 attention on the CPU runs in [`cpu_flash`]: where the CPU has
/// AVX512-BF16, unless `RW_CPU_ATTENTION=torch` asks for libtorch's kernel (to
/// compare the two).
fn use_cpu_flash() -> bool {
    static TORCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let torch = *TORCH.get_or_init(|| std::env::var("RW_CPU_ATTENTION").is_ok_and(|v| v == "torch"));
    !torch && cpu_flash::available()
}

/// Keys and values of every row, `[T, kv_heads, d]`.
struct Keys<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
}

impl Keys<'_> {
    /// One key per batch entry: `[n, kv_heads, 1, d]` for the given rows.
    fn single(&self, rows: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        Ok((self.k.f_index_select(0, rows)?.f_unsqueeze(2)?, self.v.f_index_select(0, rows)?.f_unsqueeze(2)?))
    }
}

/// Accumulators for the queried rows: output `[n, heads, d]` and LSE `[n, heads]`, fp32.
struct Acc<'a> {
    q: &'a Tensor,
    keys: Keys<'a>,
    out: Tensor,
    lse: Tensor,
}

impl<'a> Acc<'a> {
    fn new(q: &'a Tensor, keys: Keys<'a>) -> Result<Acc<'a>, ModelError> {
        let s = q.size();
        let opts = (Kind::Float, q.device());
        Ok(Acc { q, keys, out: Tensor::f_empty([s[0], s[1], s[2]], opts)?, lse: Tensor::f_empty([s[0], s[1]], opts)? })
    }

    /// Query rows `queries` each attend to the one key row `key_rows` (the first
    /// and only part of a one-row segment): one call for all of them.
    fn singles(&mut self, queries: &Tensor, key_rows: &Tensor) -> Result<(), ModelError> {
        if queries.numel() == 0 {
            return Ok(());
        }
        let q = self.q.f_index_select(0, queries)?.f_unsqueeze(2)?;
        let (k, v) = self.keys.single(key_rows)?;
        let (out, lse) = attend(&q, &k, &v, false)?;
        let _ = self.out.f_index_copy_(0, queries, &out.f_squeeze_dim(2)?.f_to_kind(Kind::Float)?)?;
        let _ = self.lse.f_index_copy_(0, queries, &lse.f_squeeze_dim(2)?)?;
        Ok(())
    }

    /// Query rows `first..first + n` attend to segment `s`'s keys: their first
    /// part (`Part::Own`, causal when they are the segment's own rows) or one
    /// more merged in (`Part::Ancestor`).
    fn segment(&mut self, s: Segment, first: i64, n: i64, part: Part) -> Result<(), ModelError> {
        let (k, v) = (self.keys.k.f_narrow(0, s.start, s.len)?, self.keys.v.f_narrow(0, s.start, s.len)?);
        self.part(&k, &v, first, n, part)
    }

    /// Query rows `first..first + n` attend to keys `k`, values `v` `[m, kv_heads, d]`.
    fn part(&mut self, k: &Tensor, v: &Tensor, first: i64, n: i64, part: Part) -> Result<(), ModelError> {
        // Queries stay bf16 on the CPU only where `attention_kind` chose cpu_flash.
        if self.q.device() == Device::Cpu && self.q.kind() == Kind::BFloat16 {
            return self.part_cpu_bf16(k, v, first, n, part);
        }
        let (k, v) = (as_batch(k)?, as_batch(v)?);
        let q = as_batch(&self.q.f_narrow(0, first, n)?)?;
        let (out, lse) = attend(&q, &k, &v, part == Part::OwnCausal)?;
        let (out, lse) = from_batch(&out, &lse)?;
        let (mut acc_out, mut acc_lse) = (self.out.f_narrow(0, first, n)?, self.lse.f_narrow(0, first, n)?);
        if part == Part::Ancestor {
            merge_into(&mut acc_out, &mut acc_lse, &out, &lse)?;
        } else {
            acc_out.f_copy_(&out)?;
            acc_lse.f_copy_(&lse)?;
        }
        Ok(())
    }
}

impl Acc<'_> {
    /// [`Acc::part`] in [`cpu_flash`]: the part goes straight into the
    /// accumulators (an ancestor's keys continue their softmax state).
    fn part_cpu_bf16(&mut self, k: &Tensor, v: &Tensor, first: i64, n: i64, part: Part) -> Result<(), ModelError> {
        let q = self.q.f_narrow(0, first, n)?;
        let (mut out, mut lse) = (self.out.f_narrow(0, first, n)?, self.lse.f_narrow(0, first, n)?);
        let size = q.size();
        let shape = cpu_flash::Shape {
            n: n as usize,
            m: k.size()[0] as usize,
            heads: size[1] as usize,
            kv_heads: k.size()[1] as usize,
            d: size[2] as usize,
        };
        let threads = tch::get_num_threads().max(1) as usize;
        cpu_flash::attend(
            bf16_bits(&q)?,
            bf16_bits(k)?,
            bf16_bits(v)?,
            f32_mut(&mut out)?,
            f32_mut(&mut lse)?,
            shape,
            part == Part::OwnCausal,
            part == Part::Ancestor,
            threads,
        );
        Ok(())
    }
}

/// The bits of a contiguous bf16 CPU tensor.
fn bf16_bits(t: &Tensor) -> Result<&[u16], ModelError> {
    if t.kind() != Kind::BFloat16 || t.device() != Device::Cpu || !t.is_contiguous() {
        return Err(ModelError::Config(format!("cpu attention wants contiguous bf16 on the CPU, got {t:?}")));
    }
    // SAFETY: a contiguous CPU tensor of numel 2-byte elements, borrowed for as
    // long as `t`.
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u16, t.numel()) })
}

/// The elements of a contiguous fp32 CPU tensor, to write.
fn f32_mut(t: &mut Tensor) -> Result<&mut [f32], ModelError> {
    if t.kind() != Kind::Float || t.device() != Device::Cpu || !t.is_contiguous() {
        return Err(ModelError::Config(format!("cpu attention writes contiguous fp32 on the CPU, got {t:?}")));
    }
    // SAFETY: as above; the view is borrowed mutably, and nothing else reads
    // its storage while the slice lives.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The segment's own rows, causally: the first part.
    OwnCausal,
    /// A read-out that ends the segment sees all of it: the first part.
    OwnLast,
    /// Descendant rows see all of an ancestor: merged in.
    Ancestor,
}

/// Every row: own segment causally, then every ancestor's keys merged in (the
/// batch's own ancestors, then the cached ones).
fn all_rows(q: &Tensor, keys: Keys, batch: &PackedBatch, cached: &[(Tensor, Tensor)]) -> Result<Tensor, ModelError> {
    let mut acc = Acc::new(q, keys)?;
    acc.singles(&batch.single_rows, &batch.single_rows)?;
    for &i in &batch.multi {
        let s = batch.segments[i];
        acc.segment(s, s.start, s.len, Part::OwnCausal)?;
    }
    for s in &batch.segments {
        let below = s.descendants();
        if !below.is_empty() {
            acc.segment(*s, below.start, below.end - below.start, Part::Ancestor)?;
        }
    }
    for (r, (k, v)) in batch.cache.reads.iter().zip(cached) {
        acc.part(k, v, r.below_start, r.below_end - r.below_start, Part::Ancestor)?;
    }
    Ok(acc.out)
}

/// Read-out rows only (`q` is theirs, `[probes, heads, d]`): each attends to its
/// own segment (it is the segment's last row, so that is all of it) and merges
/// in every ancestor's keys.
fn probe_rows(q: &Tensor, keys: Keys, batch: &PackedBatch, cached: &[(Tensor, Tensor)]) -> Result<Tensor, ModelError> {
    let mut acc = Acc::new(q, keys)?;
    acc.singles(&batch.single_probes.0, &batch.single_probes.1)?;
    for &(i, p) in &batch.multi_probes {
        acc.segment(batch.segments[i], p, 1, Part::OwnLast)?;
    }
    for (s, (below, _)) in batch.segments.iter().zip(&batch.probe_ranges) {
        if !below.is_empty() {
            acc.segment(*s, below.start, below.end - below.start, Part::Ancestor)?;
        }
    }
    for (below, (k, v)) in batch.read_probes.iter().zip(cached) {
        if !below.is_empty() {
            acc.part(k, v, below.start, below.end - below.start, Part::Ancestor)?;
        }
    }
    Ok(acc.out)
}
