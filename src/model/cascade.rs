//! Attention in parts, merged by log-sum-exp (cascade attention).
//!
//! A row of a prefix tree attends to its own segment (causally) and to every
//! ancestor segment (fully). Each part is one attention call over contiguous
//! keys that returns its output and the log-sum-exp of its scores; parts merge
//! exactly: with `L = logaddexp(L1, L2)`, `out = out1 + (out2 - out1) * exp(L2 - L)`.
//! No prefix is copied per suffix and no mask is built, so the work is exactly
//! the pairs that attend (the CPU kernel does not skip masked blocks).

use tch::{Device, Kind, TchError, Tensor};

/// Attention of `q` `[B, H, Lq, d]` over `k`, `v` `[B, KVH, Lk, d]` (`H` a
/// multiple of `KVH`: grouped-query heads map to kv head `h / (H / KVH)`), and
/// the log-sum-exp of each query's scores, `[B, H, Lq]` fp32. `causal` needs
/// `Lq == Lk`. Scale `1 / sqrt(d)`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor), TchError> {
    match q.device() {
        Device::Cpu => {
            // The flash kernel for CPU handles GQA natively and returns the LSE in fp32.
            Tensor::f_internal_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, None::<Tensor>, None)
        }
        _ => attend_cuda(q, k, v, causal).or_else(|_| attend_math(q, k, v, causal)),
    }
}

/// CUDA: the memory-efficient kernel computes the LSE (padded along the query
/// dimension in some builds, hence the narrow); it wants equal head counts.
fn attend_cuda(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor), TchError> {
    let (k, v) = (expand_kv(q, k)?, expand_kv(q, v)?);
    let (out, lse, _, _) =
        Tensor::f_internal_scaled_dot_product_efficient_attention(q, &k, &v, None::<Tensor>, true, 0.0, causal, None)?;
    let lq = q.size()[2];
    Ok((out, lse.f_narrow(2, 0, lq)?.f_to_kind(Kind::Float)?))
}

/// Repeat each kv head for the query heads of its group.
fn expand_kv(q: &Tensor, kv: &Tensor) -> Result<Tensor, TchError> {
    let groups = q.size()[1] / kv.size()[1];
    if groups == 1 {
        return Ok(kv.shallow_clone());
    }
    kv.f_repeat_interleave_self_int(groups, 1, None)
}

/// The reference: explicit scores in fp32. Used where no fused kernel applies
/// and by the tests of the fused paths.
pub fn attend_math(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<(Tensor, Tensor), TchError> {
    let (k, v) = (expand_kv(q, k)?, expand_kv(q, v)?);
    let d = q.size()[3];
    let qf = q.f_to_kind(Kind::Float)?;
    let mut scores =
        qf.f_matmul(&k.f_to_kind(Kind::Float)?.f_transpose(-2, -1)?)?.f_mul_scalar(1.0 / (d as f64).sqrt())?;
    if causal {
        let (lq, lk) = (q.size()[2], k.size()[2]);
        let keep = Tensor::f_ones([lq, lk], (Kind::Bool, q.device()))?.f_tril(0)?;
        scores = scores.f_masked_fill(&keep.f_logical_not()?, f64::NEG_INFINITY)?;
    }
    let lse = scores.f_logsumexp([-1i64].as_slice(), false)?;
    let probs = scores.f_sub(&lse.f_unsqueeze(-1)?)?.f_exp()?;
    let out = probs.f_matmul(&v.f_to_kind(Kind::Float)?)?.f_to_kind(q.kind())?;
    Ok((out, lse))
}

/// Merge a part `(out, lse)` into the accumulators `acc_out` `[m, H, d]` and
/// `acc_lse` `[m, H]` (fp32 views, updated in place).
pub fn merge_into(acc_out: &mut Tensor, acc_lse: &mut Tensor, out: &Tensor, lse: &Tensor) -> Result<(), TchError> {
    let total = acc_lse.f_logaddexp(lse)?;
    let weight = lse.f_sub(&total)?.f_exp_()?.f_unsqueeze(-1)?;
    let step = out.f_to_kind(Kind::Float)?.f_sub(acc_out)?.f_mul(&weight)?;
    let _ = acc_out.f_add_(&step)?;
    acc_lse.f_copy_(&total)?;
    Ok(())
}

/// `[rows, heads, d]` -> `[1, heads, rows, d]`, a view.
pub fn as_batch(x: &Tensor) -> Result<Tensor, TchError> {
    x.f_unsqueeze(0)?.f_transpose(1, 2)
}

/// `[1, heads, rows, d]` and `[1, heads, rows]` back to `[rows, heads, d]`, `[rows, heads]`.
pub fn from_batch(out: &Tensor, lse: &Tensor) -> Result<(Tensor, Tensor), TchError> {
    Ok((out.f_squeeze_dim(0)?.f_transpose(0, 1)?, lse.f_squeeze_dim(0)?.f_transpose(0, 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest difference relative to the reference's size (at least 1), as
    /// every numeric bound in the tests (tests/common/close.rs).
    fn close(a: &Tensor, b: &Tensor) -> f64 {
        let b = b.to_kind(Kind::Float);
        let diff = (a.to_kind(Kind::Float) - &b).abs().max().double_value(&[]);
        diff / b.abs().max().double_value(&[]).max(1.0)
    }

    #[test]
    fn the_cpu_kernel_matches_the_reference_with_grouped_heads() {
        tch::manual_seed(0);
        let q = Tensor::randn([2, 6, 5, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([2, 2, 5, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 2, 5, 8], (Kind::Float, Device::Cpu));
        for causal in [false, true] {
            let (o1, l1) = attend(&q, &k, &v, causal).unwrap();
            let (o2, l2) = attend_math(&q, &k, &v, causal).unwrap();
            assert!(close(&o1, &o2) < 1e-5 && close(&l1, &l2) < 1e-5, "causal {causal}");
        }
    }

    #[test]
    fn two_parts_merge_into_attention_over_all_keys() {
        tch::manual_seed(1);
        let q = Tensor::randn([1, 4, 3, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([1, 2, 7, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([1, 2, 7, 8], (Kind::Float, Device::Cpu));
        let (whole, whole_lse) = attend_math(&q, &k, &v, false).unwrap();
        let (o1, l1) = attend(&q, &k.narrow(2, 0, 4), &v.narrow(2, 0, 4), false).unwrap();
        let (o2, l2) = attend(&q, &k.narrow(2, 4, 3), &v.narrow(2, 4, 3), false).unwrap();
        let (acc, acc_lse) = from_batch(&o1, &l1).unwrap();
        let (mut acc, mut acc_lse) = (acc.contiguous(), acc_lse.contiguous());
        let (o2, l2) = from_batch(&o2, &l2).unwrap();
        merge_into(&mut acc, &mut acc_lse, &o2, &l2).unwrap();
        let (want, want_lse) = from_batch(&whole, &whole_lse).unwrap();
        assert!(close(&acc, &want) < 1e-5);
        assert!(close(&acc_lse, &want_lse) < 1e-5);
    }
}
