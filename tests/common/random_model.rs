//! A random-weight Nemotron-shaped model written at test time (too big to
//! ship), with the tiny fixture's tokenizer. Shared by the memory test and the
//! group benchmark (`examples/group_bench.rs` includes this file).

use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The shape of a random model; the vocabulary is the fixture tokenizer's 1024.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: i64,
    pub hidden: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub ffn: i64,
}

impl Shape {
    /// Bytes of its f32 weights.
    pub fn bytes(&self) -> u64 {
        let (h, d) = (self.hidden, self.hidden / self.heads);
        let layer = 2 * h * h + 2 * self.kv_heads * d * h + 2 * self.ffn * h + 4 * h;
        ((1024 * h + self.layers * layer + 2 * h + 9 * h + 9) * 4) as u64
    }
}

/// Write `config.json`, `model.safetensors` and `tokenizer.json` into `dir`.
pub fn write_random_model(dir: &Path, shape: Shape, tokenizer: &Path) {
    let (h, d) = (shape.hidden, shape.hidden / shape.heads);
    let config = serde_json::json!({
        "model_type": "nemotron", "architectures": ["NemotronForSequenceClassification"],
        "vocab_size": 1024, "hidden_size": h, "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": d, "max_position_embeddings": 4096,
        "norm_eps": 1e-5, "hidden_act": "relu2", "num_labels": 9,
        "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    tch::manual_seed(0);
    let rand = |shape: &[i64], scale: f64| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * scale;
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("model.embed_tokens.weight".into(), rand(&[1024, h], 1.0)),
        ("model.norm.weight".into(), rand(&[h], 0.1)),
        ("model.norm.bias".into(), rand(&[h], 0.1)),
        ("score.weight".into(), rand(&[9, h], 0.05)),
        ("score.bias".into(), rand(&[9], 0.1)),
    ];
    let s = 1.0 / (h as f64).sqrt();
    for i in 0..shape.layers {
        let p = format!("model.layers.{i}");
        for (name, dims, scale) in [
            ("self_attn.q_proj.weight", [shape.heads * d, h], s),
            ("self_attn.k_proj.weight", [shape.kv_heads * d, h], s),
            ("self_attn.v_proj.weight", [shape.kv_heads * d, h], s),
            ("self_attn.o_proj.weight", [h, shape.heads * d], s),
            ("mlp.up_proj.weight", [shape.ffn, h], s),
            ("mlp.down_proj.weight", [h, shape.ffn], 1.0 / (shape.ffn as f64).sqrt()),
        ] {
            tensors.push((format!("{p}.{name}"), rand(&dims, scale)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{norm}.weight"), rand(&[h], 0.1)));
            tensors.push((format!("{p}.{norm}.bias"), rand(&[h], 0.1)));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}
