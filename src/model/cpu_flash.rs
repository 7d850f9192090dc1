//! Flash attention for bf16 models on x86-64 CPUs with AVX512-BF16.
//!
//! libtorch's CPU attention runs at 40-150 GFLOP/s on this model's shapes
//! against about 400 for its bf16 matmul, so attention took about a third of a
//! bf16 forward for an eighth of its FLOPs (README, "Measured"). This kernel
//! multiplies bf16 pairs into fp32 sums with `vdpbf16ps`, the instruction the
//! bf16 matmul uses, and keeps everything else in fp32:
//!
//! - scores `q . k` of bf16 queries and keys, summed in fp32 (the products of
//!   two bf16 numbers are exact in fp32, so this is the fp32 computation up to
//!   summation order: q and k are bf16 already, the outputs of bf16 projections);
//! - the online softmax (running max and sum) in fp32, with `exp2` by a
//!   polynomial (relative error about 1e-7);
//! - `p . v` in fp32 (fused multiply-adds on fp32 probabilities and values):
//!   rounding the probabilities to bf16, as bf16 flash kernels do, made a
//!   record's bf16 scores depend on how its prefix is split across the tree
//!   (about 1e-2 on the demo model); in fp32 they agree like the fp32 path's.
//!   The output and its log-sum-exp are fp32.
//!
//! One call is one part of cascade attention ([`super::cascade`]): query rows
//! against one contiguous run of keys, causal (a segment's own rows) or not (rows
//! below an ancestor). With `merge`, the call continues the softmax state already
//! in `out` / `lse` (maximum `lse`, sum 1, output `out`) instead of merging a
//! separate part afterwards; that is the same log-sum-exp merge, done in place.
//!
//! Grouped-query heads are stacked: the query heads of one kv head are one block
//! of query vectors against the same keys, so each packed key block serves all
//! of them. Work is split over `(kv head, block of rows)` units and threads.

/// Shapes of one call: `q` `[n, heads, d]`, `k`/`v` `[m, kv_heads, d]`, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub m: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
}

/// Whether the kernel runs on this CPU: x86-64 with AVX512F and AVX512-BF16.
/// Any head dimension works; inside, heads are padded with zeros to a multiple
/// of 64 (none for Nemotron-4's 64, 128 and 192; the test fixtures' 12 and 16
/// pay for it).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Attention of `q` over `k`, `v` (bf16 bits), scale `1 / sqrt(d)`, into `out`
/// `[n, heads, d]` and `lse` `[n, heads]` (fp32): written, or with `merge`
/// combined with what they hold. `causal` needs `n == m`. Panics if the slices
/// do not match `shape` or [`available`] is false.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[u16],
    k: &[u16],
    v: &[u16],
    out: &mut [f32],
    lse: &mut [f32],
    shape: Shape,
    causal: bool,
    merge: bool,
    threads: usize,
) {
    let Shape { n, m, heads, kv_heads, d } = shape;
    assert!(available(), "cpu_flash::attend on a CPU without AVX512-BF16");
    assert!(d > 0, "head dim 0");
    assert!(kv_heads > 0 && heads % kv_heads == 0, "{heads} heads over {kv_heads} kv heads");
    assert!(!causal || n == m, "causal attention of {n} queries over {m} keys");
    assert_eq!((q.len(), out.len(), lse.len()), (n * heads * d, n * heads * d, n * heads));
    assert_eq!((k.len(), v.len()), (m * kv_heads * d, m * kv_heads * d));
    if n == 0 {
        return;
    }
    assert!(m > 0 || merge, "attention over no keys");
    if m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512F and AVX512-BF16 (asserted above); every
    // pointer stays inside the slices checked above.
    unsafe {
        x86::attend(q, k, v, out, lse, shape, causal, merge, threads.max(1))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Shape;
    use std::arch::x86_64::*;

    /// Keys per block of the online softmax.
    const KEYS: usize = 128;
    /// Query vectors per work unit (rows x stacked heads), at least.
    const QUERIES: usize = 64;

    /// Raw output pointers shared by the threads; each unit writes only its own
    /// rows and heads.
    #[derive(Clone, Copy)]
    struct Out {
        out: *mut f32,
        lse: *mut f32,
    }
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    /// The head dimension inside the kernel: `d` padded with zeros to a multiple of 64.
    fn padded_dim(d: usize) -> usize {
        d.div_ceil(64) * 64
    }

    /// Keys and values of every kv head, packed for `vdpbf16ps` and padded with
    /// zeros to whole key blocks and to the padded head dimension `dp`.
    struct Packed {
        /// Per kv head, 16-key groups: `[group][dp / 2][16][2]`.
        k: Vec<u16>,
        /// Per kv head, values in fp32: `[keys][dp]`.
        v: Vec<f32>,
        /// Keys per kv head after padding.
        padded: usize,
    }

    fn pack(k: &[u16], v: &[u16], s: Shape) -> Packed {
        let padded = s.m.div_ceil(KEYS) * KEYS;
        let (d, dp, kvh) = (s.d, padded_dim(s.d), s.kv_heads);
        let mut pk = vec![0u16; kvh * padded * dp];
        let mut pv = vec![0f32; kvh * padded * dp];
        for g in 0..kvh {
            let (pk, pv) = (&mut pk[g * padded * dp..], &mut pv[g * padded * dp..]);
            for j in 0..s.m {
                let (group, lane) = (j / 16, j % 16);
                for (dd, &x) in k[(j * kvh + g) * d..][..d].iter().enumerate() {
                    pk[((group * (dp / 2) + dd / 2) * 16 + lane) * 2 + dd % 2] = x;
                }
                for (dd, &x) in v[(j * kvh + g) * d..][..d].iter().enumerate() {
                    pv[j * dp + dd] = f32::from_bits((x as u32) << 16);
                }
            }
        }
        Packed { k: pk, v: pv, padded }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend(
        q: &[u16],
        k: &[u16],
        v: &[u16],
        out: &mut [f32],
        lse: &mut [f32],
        s: Shape,
        causal: bool,
        merge: bool,
        threads: usize,
    ) {
        let packed = pack(k, v, s);
        let group = s.heads / s.kv_heads;
        let rows_per_unit = QUERIES.div_ceil(group);
        let blocks = s.n.div_ceil(rows_per_unit);
        let units = s.kv_heads * blocks;
        let dst = Out { out: out.as_mut_ptr(), lse: lse.as_mut_ptr() };
        let run = |first: usize, step: usize| {
            let mut scratch = Scratch::new(rows_per_unit * group, padded_dim(s.d));
            let mut u = first;
            while u < units {
                let (g, b) = (u / blocks, u % blocks);
                let r0 = b * rows_per_unit;
                let rows = rows_per_unit.min(s.n - r0);
                // SAFETY: the caller's feature check covers this call; units
                // write disjoint (row, head) cells of `out` and `lse`.
                unsafe { unit(q, &packed, dst, s, g, r0, rows, causal, merge, &mut scratch) };
                u += step;
            }
        };
        let threads = threads.min(units);
        if threads <= 1 {
            run(0, 1);
            return;
        }
        std::thread::scope(|sc| {
            for t in 1..threads {
                let run = &run;
                sc.spawn(move || run(t, threads));
            }
            run(0, threads);
        });
    }

    /// Per-thread buffers for one unit: `qv` query vectors padded to 8, rows of
    /// the padded head dimension.
    struct Scratch {
        q: Vec<u16>,
        s: Vec<f32>,
        o: Vec<f32>,
        max: Vec<f32>,
        sum: Vec<f32>,
    }

    impl Scratch {
        fn new(qv: usize, d: usize) -> Scratch {
            let qv = qv.div_ceil(8) * 8;
            Scratch {
                q: vec![0; qv * d],
                s: vec![0.0; qv * KEYS],
                o: vec![0.0; qv * d],
                max: vec![0.0; qv],
                sum: vec![0.0; qv],
            }
        }
    }

    /// Rows `r0..r0 + rows`, the query heads of kv head `g`, against every key
    /// (causal: against keys up to each row).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit(
        q: &[u16],
        kv: &Packed,
        dst: Out,
        s: Shape,
        g: usize,
        r0: usize,
        rows: usize,
        causal: bool,
        merge: bool,
        sc: &mut Scratch,
    ) {
        let (d, dp, group) = (s.d, padded_dim(s.d), s.heads / s.kv_heads);
        let qv = rows * group;
        let qv8 = qv.div_ceil(8) * 8;
        let log2e = std::f32::consts::LOG2_E;
        // Query vector t is row r0 + t / group, head g * group + t % group.
        let cell = |t: usize| (r0 + t / group) * s.heads + g * group + t % group;
        sc.q[..qv8 * dp].fill(0);
        sc.o[..qv8 * dp].fill(0.0);
        for t in 0..qv {
            sc.q[t * dp..][..d].copy_from_slice(&q[cell(t) * d..][..d]);
            if merge {
                let o = std::slice::from_raw_parts(dst.out.add(cell(t) * d), d);
                sc.o[t * dp..][..d].copy_from_slice(o);
                sc.max[t] = *dst.lse.add(cell(t)) * log2e;
                sc.sum[t] = 1.0;
            } else {
                sc.max[t] = f32::NEG_INFINITY;
                sc.sum[t] = 0.0;
            }
        }
        let keys_end = if causal { s.m.min(r0 + rows) } else { s.m };
        let scale = log2e / (d as f32).sqrt();
        let kg = &kv.k[g * kv.padded * dp..(g + 1) * kv.padded * dp];
        let vg = &kv.v[g * kv.padded * dp..(g + 1) * kv.padded * dp];
        let mut k0 = 0;
        while k0 < keys_end {
            let len = KEYS.min(keys_end - k0);
            let cols = len.div_ceil(32) * 32;
            for t in (0..qv8).step_by(8) {
                for c in (0..cols).step_by(32) {
                    let kp = kg.as_ptr().add((k0 + c) / 16 * (dp / 2) * 32);
                    qk_tile(sc.q.as_ptr().add(t * dp), kp, dp, sc.s.as_mut_ptr().add(t * KEYS + c));
                }
            }
            for t in 0..qv {
                let row = r0 + t / group;
                let valid = if causal { len.min((row + 1).saturating_sub(k0)) } else { len };
                softmax_row(
                    &mut sc.s[t * KEYS..][..KEYS],
                    &mut sc.o[t * dp..][..dp],
                    &mut sc.max[t],
                    &mut sc.sum[t],
                    valid,
                    cols,
                    scale,
                );
            }
            for t in qv..qv8 {
                sc.s[t * KEYS..][..cols].fill(0.0);
            }
            let vp = vg.as_ptr().add(k0 * dp);
            for t in (0..qv8).step_by(4) {
                for dc in (0..dp).step_by(64) {
                    pv_tile(sc.s.as_ptr().add(t * KEYS), vp, dp, dc, cols, sc.o.as_mut_ptr().add(t * dp));
                }
            }
            k0 += KEYS;
        }
        let ln2 = std::f32::consts::LN_2;
        for t in 0..qv {
            let inv = 1.0 / sc.sum[t];
            let o = std::slice::from_raw_parts_mut(dst.out.add(cell(t) * d), d);
            for (x, &y) in o.iter_mut().zip(&sc.o[t * dp..][..d]) {
                *x = y * inv;
            }
            *dst.lse.add(cell(t)) = (sc.max[t] + sc.sum[t].log2()) * ln2;
        }
    }

    /// Scores of 8 query vectors (`q`, rows of `d` bf16) against 32 keys (two
    /// packed 16-key groups at `k`) into `s` (row stride `KEYS`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn qk_tile(q: *const u16, k: *const u16, d: usize, s: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        let half = d / 2;
        for p in 0..half {
            let k0: __m512bh = std::mem::transmute(_mm512_loadu_si512(k.add(p * 32) as *const _));
            let k1: __m512bh = std::mem::transmute(_mm512_loadu_si512(k.add((half + p) * 32) as *const _));
            for (i, a) in acc.iter_mut().enumerate() {
                let pair = (q.add(i * d + 2 * p) as *const i32).read_unaligned();
                let qb: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                a[0] = _mm512_dpbf16_ps(a[0], qb, k0);
                a[1] = _mm512_dpbf16_ps(a[1], qb, k1);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(s.add(i * KEYS), a[0]);
            _mm512_storeu_ps(s.add(i * KEYS + 16), a[1]);
        }
    }

    /// `o` (4 rows of `d` fp32, columns `dc..dc + 64`) += `p` (4 rows of
    /// probabilities, stride `KEYS`) times `keys` rows of `v` (fp32, stride `d`).
    #[target_feature(enable = "avx512f")]
    unsafe fn pv_tile(p: *const f32, v: *const f32, d: usize, dc: usize, keys: usize, o: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for (i, a) in acc.iter_mut().enumerate() {
            for (c, x) in a.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(o.add(i * d + dc + 16 * c));
            }
        }
        for j in 0..keys {
            let mut vs = [_mm512_setzero_ps(); 4];
            for (c, x) in vs.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(v.add(j * d + dc + 16 * c));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let pb = _mm512_set1_ps(*p.add(i * KEYS + j));
                for c in 0..4 {
                    a[c] = _mm512_fmadd_ps(pb, vs[c], a[c]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (c, x) in a.iter().enumerate() {
                _mm512_storeu_ps(o.add(i * d + dc + 16 * c), *x);
            }
        }
    }

    /// One query vector's step of the online softmax over a key block: scores
    /// `s[..valid]` (the rest masked) become probabilities in place (zero past
    /// `valid`, up to `cols`); running `max` (log2 units) and `sum`, output `o`
    /// rescaled.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn softmax_row(
        s: &mut [f32],
        o: &mut [f32],
        max: &mut f32,
        sum: &mut f32,
        valid: usize,
        cols: usize,
        scale: f32,
    ) {
        if valid == 0 {
            s[..cols].fill(0.0);
            return;
        }
        let sv = _mm512_set1_ps(scale);
        let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in (0..cols).step_by(16) {
            let mask = lanes(valid, c);
            let x = _mm512_maskz_mul_ps(mask, _mm512_maskz_loadu_ps(mask, s.as_ptr().add(c)), sv);
            _mm512_storeu_ps(s.as_mut_ptr().add(c), x);
            mv = _mm512_mask_max_ps(mv, mask, mv, x);
        }
        let new_max = max.max(_mm512_reduce_max_ps(mv));
        let alpha = exp2_scalar(*max - new_max);
        *max = new_max;
        let nm = _mm512_set1_ps(new_max);
        let mut total = _mm512_setzero_ps();
        for c in (0..cols).step_by(16) {
            let mask = lanes(valid, c);
            let x = _mm512_loadu_ps(s.as_ptr().add(c));
            let e = _mm512_maskz_mov_ps(mask, exp2(_mm512_sub_ps(x, nm)));
            total = _mm512_add_ps(total, e);
            _mm512_storeu_ps(s.as_mut_ptr().add(c), e);
        }
        *sum = *sum * alpha + _mm512_reduce_add_ps(total);
        if alpha != 1.0 {
            let av = _mm512_set1_ps(alpha);
            for c in (0..o.len()).step_by(16) {
                let x = _mm512_loadu_ps(o.as_ptr().add(c));
                _mm512_storeu_ps(o.as_mut_ptr().add(c), _mm512_mul_ps(x, av));
            }
        }
    }

    /// Lanes `c..c + 16` that are below `valid`.
    fn lanes(valid: usize, c: usize) -> __mmask16 {
        match valid.saturating_sub(c) {
            0 => 0,
            n if n >= 16 => 0xffff,
            n => ((1u32 << n) - 1) as __mmask16,
        }
    }

    /// `2^x` for `x <= 0` (and -inf, giving 0 through the clamp's underflow),
    /// relative error about 1e-7: `x = n + f`, `|f| <= 1/2`, `2^f` by its Taylor
    /// polynomial of degree 7, `2^n` by `vscalefps`.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp2(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-150.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm512_sub_ps(x, n);
        const C: [f32; 8] = [
            1.0,
            std::f32::consts::LN_2,
            0.240_226_5,
            0.055_504_11,
            0.009_618_129,
            0.001_333_355_8,
            0.000_154_035_3,
            0.000_015_252_734,
        ];
        let mut y = _mm512_set1_ps(C[7]);
        for &c in C[..7].iter().rev() {
            y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(y, n)
    }

    fn exp2_scalar(x: f32) -> f32 {
        if x == f32::NEG_INFINITY {
            0.0
        } else {
            x.exp2()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cascade::attend_math;
    use tch::{Device, Kind, Tensor};

    /// Random bf16 q/k/v, the kernel's output and LSE, and the fp32 reference
    /// on the same (bf16-valued) inputs.
    fn case(s: Shape, causal: bool, merge_at: Option<usize>, seed: i64) -> (f64, f64) {
        tch::manual_seed(seed);
        let opts = (Kind::Float, Device::Cpu);
        let q = (Tensor::randn([s.n as i64, s.heads as i64, s.d as i64], opts) * 2.0).to_kind(Kind::BFloat16);
        let k = (Tensor::randn([s.m as i64, s.kv_heads as i64, s.d as i64], opts) * 2.0).to_kind(Kind::BFloat16);
        let v = Tensor::randn([s.m as i64, s.kv_heads as i64, s.d as i64], opts).to_kind(Kind::BFloat16);
        let bits = |t: &Tensor| -> Vec<u16> {
            let raw: Vec<i16> = Vec::try_from(t.contiguous().view_dtype(Kind::Int16).flatten(0, -1)).unwrap();
            raw.into_iter().map(|x| x as u16).collect()
        };
        let batch = |t: &Tensor| t.to_kind(Kind::Float).unsqueeze(0).transpose(1, 2);
        let (want, want_lse) = attend_math(&batch(&q), &batch(&k), &batch(&v), causal).unwrap();
        let want = want.squeeze_dim(0).transpose(0, 1).contiguous();
        let want_lse = want_lse.squeeze_dim(0).transpose(0, 1).contiguous();
        let mut out = vec![0f32; s.n * s.heads * s.d];
        let mut lse = vec![0f32; s.n * s.heads];
        let (qb, kb, vb) = (bits(&q), bits(&k), bits(&v));
        match merge_at {
            // Keys 0..at first, then the rest merged in (non-causal only).
            Some(at) => {
                let part =
                    |x: &[u16], from: usize, to: usize| x[from * s.kv_heads * s.d..to * s.kv_heads * s.d].to_vec();
                let first = Shape { m: at, ..s };
                attend(&qb, &part(&kb, 0, at), &part(&vb, 0, at), &mut out, &mut lse, first, false, false, 2);
                let rest = Shape { m: s.m - at, ..s };
                attend(&qb, &part(&kb, at, s.m), &part(&vb, at, s.m), &mut out, &mut lse, rest, false, true, 2);
            }
            None => attend(&qb, &kb, &vb, &mut out, &mut lse, s, causal, false, 2),
        }
        let got = Tensor::from_slice(&out).view([s.n as i64, s.heads as i64, s.d as i64]);
        let got_lse = Tensor::from_slice(&lse).view([s.n as i64, s.heads as i64]);
        // Relative to the reference's size (at least 1), as every numeric bound
        // in the tests (tests/common/close.rs): log-sum-exps here reach ~30.
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
        (diff(&got, &want), diff(&got_lse, &want_lse))
    }

    #[test]
    fn matches_fp32_attention_on_bf16_inputs() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let shapes = [
            (Shape { n: 1, m: 1, heads: 16, kv_heads: 4, d: 64 }, true),
            (Shape { n: 7, m: 7, heads: 16, kv_heads: 4, d: 64 }, true),
            (Shape { n: 130, m: 130, heads: 16, kv_heads: 4, d: 64 }, true),
            (Shape { n: 70, m: 70, heads: 6, kv_heads: 2, d: 128 }, true),
            (Shape { n: 33, m: 200, heads: 4, kv_heads: 4, d: 64 }, false),
            (Shape { n: 1, m: 97, heads: 12, kv_heads: 1, d: 64 }, false),
            (Shape { n: 65, m: 64, heads: 16, kv_heads: 4, d: 192 }, false),
            (Shape { n: 50, m: 50, heads: 5, kv_heads: 1, d: 12 }, true),
            (Shape { n: 9, m: 300, heads: 3, kv_heads: 3, d: 16 }, false),
            (Shape { n: 3, m: 3, heads: 2, kv_heads: 2, d: 7 }, true),
        ];
        for (i, (s, causal)) in shapes.into_iter().enumerate() {
            let (out, lse) = case(s, causal, None, i as i64);
            eprintln!("{s:?} causal {causal}: relative out diff {out:.2e}, lse diff {lse:.2e}");
            assert!(out < 2e-5 && lse < 2e-5, "{s:?} causal {causal}: out {out:.2e}, lse {lse:.2e}");
        }
    }

    #[test]
    fn a_merged_second_part_equals_one_call_over_all_keys() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (i, at) in [1usize, 64, 100].into_iter().enumerate() {
            let s = Shape { n: 40, m: 150, heads: 16, kv_heads: 4, d: 64 };
            let (out, lse) = case(s, false, Some(at), 10 + i as i64);
            eprintln!("split at {at}: relative out diff {out:.2e}, lse diff {lse:.2e}");
            assert!(out < 2e-5 && lse < 2e-5, "split at {at}: out {out:.2e}, lse {lse:.2e}");
        }
    }
}
