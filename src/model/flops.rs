//! The matmul work of a forward pass, to report achieved FLOP/s against the
//! machine's matmul rate. Counted as executed: every layer projects k and v for
//! all rows; the last layer computes q, o, attention and the MLP for the probe
//! rows only. A query at position p attends to p + 1 keys (its prefix and
//! itself), whatever the batch's layout.

use super::{BatchLayout, Config};

/// Floating-point operations (multiply and add counted apart) of one forward pass.
pub fn forward_flops(cfg: &Config, layout: &BatchLayout) -> f64 {
    let (h, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let (q_width, kv_width) = ((cfg.num_heads * cfg.head_dim) as f64, (cfg.num_kv_heads * cfg.head_dim) as f64);
    let rows = layout.rows() as f64;
    let probes = layout.probes() as f64;
    let (keys_all, keys_probes) = layout.attended_keys();
    let kv = 2.0 * h * 2.0 * kv_width;
    let per_query_row = 2.0 * h * q_width + 2.0 * q_width * h + 2.0 * 2.0 * h * f;
    let attention = |keys: f64| 2.0 * 2.0 * q_width * keys;
    let layers = cfg.num_layers as f64;
    let full = (layers - 1.0) * (rows * (kv + per_query_row) + attention(keys_all as f64));
    let last = rows * kv + probes * per_query_row + attention(keys_probes as f64);
    let head = 2.0 * probes * h * cfg.num_labels as f64;
    full + last + head
}
