//! Partial rotary position embeddings (non-interleaved `rotate_half`), as in
//! transformers' Nemotron: only the first `rotary_dim` dims of each head rotate.

use tch::{Device, Kind, Tensor};

use super::Config;

/// cos/sin tables for every position up to the model's context, in fp32.
pub struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: i64,
}

/// cos/sin gathered for the positions of one batch, in the model dtype, `[T, 1, rot]`.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: i64,
}

impl RotaryTable {
    /// Its tensors, for sleep and wake (`super::sleep`).
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.cos, &mut self.sin]
    }

    pub fn new(cfg: &Config, device: Device) -> RotaryTable {
        let rot = cfg.rotary_dim;
        let exponents = Tensor::arange_start_step(0, rot, 2, (Kind::Int64, device)).to_kind(Kind::Float) / rot as f64;
        let inv_freq = Tensor::from(cfg.rope_theta as f32).to_device(device).pow(&exponents).reciprocal();
        let positions = Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, device)).to_kind(Kind::Float);
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], 1);
        RotaryTable { cos: emb.cos(), sin: emb.sin(), rotary_dim: rot }
    }

    /// Gather the rows for `positions` (`[T]`, int64) and cast to `kind`.
    pub fn at(&self, positions: &Tensor, kind: Kind) -> Rotary {
        let pick = |t: &Tensor| t.index_select(0, positions).to_kind(kind).unsqueeze(1);
        Rotary { cos: pick(&self.cos), sin: pick(&self.sin), rotary_dim: self.rotary_dim }
    }
}

impl Rotary {
    /// The angles of some rows only (`rows` int64 indices into this batch's rows).
    pub fn rows(&self, rows: &Tensor) -> Rotary {
        let pick = |t: &Tensor| t.index_select(0, rows);
        Rotary { cos: pick(&self.cos), sin: pick(&self.sin), rotary_dim: self.rotary_dim }
    }

    /// Rotate `x` of shape `[T, heads, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let head_dim = x.size()[2];
        let rot = x.narrow(2, 0, self.rotary_dim);
        let half = self.rotary_dim / 2;
        let rotated = Tensor::cat(&[-rot.narrow(2, half, half), rot.narrow(2, 0, half)], 2);
        let embedded = &rot * &self.cos + rotated * &self.sin;
        if self.rotary_dim == head_dim {
            embedded
        } else {
            Tensor::cat(&[embedded, x.narrow(2, self.rotary_dim, head_dim - self.rotary_dim)], 2)
        }
    }
}
