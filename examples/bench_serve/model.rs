//! A random-weight Nemotron-shaped model of a chosen size, written once in the
//! HF layout (config.json, model.safetensors, the demo model's tokenizer), so
//! the benchmark can make the forward pass as heavy as the machine needs.

use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub ffn: i64,
}

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo");

/// The model directory for `shape` under `root` (made if missing).
pub fn bench_model(root: &Path, shape: Shape) -> anyhow::Result<PathBuf> {
    let Shape { hidden, layers, heads, kv_heads, ffn } = shape;
    let dir = root.join(format!("bench-h{hidden}-l{layers}-a{heads}-kv{kv_heads}-f{ffn}"));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DEMO).join("config.json"))?)?;
    let head_dim = hidden / heads;
    for (key, value) in [
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("head_dim", head_dim),
        ("intermediate_size", ffn),
    ] {
        config[key] = value.into();
    }
    let vocab = config["vocab_size"].as_i64().expect("the demo config has vocab_size");
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    std::fs::copy(Path::new(DEMO).join("tokenizer.json"), dir.join("tokenizer.json"))?;

    tch::manual_seed(7);
    let randn = |shape: &[i64], std: f64| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * std;
    let std = 1.0 / (hidden as f64).sqrt();
    let mut tensors: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), randn(&[vocab, hidden], 1.0))];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{norm}.weight"), randn(&[hidden], 0.02)));
            tensors.push((format!("{p}.{norm}.bias"), randn(&[hidden], 0.02)));
        }
        tensors.push((format!("{p}.self_attn.q_proj.weight"), randn(&[heads * head_dim, hidden], std)));
        tensors.push((format!("{p}.self_attn.k_proj.weight"), randn(&[kv_heads * head_dim, hidden], std)));
        tensors.push((format!("{p}.self_attn.v_proj.weight"), randn(&[kv_heads * head_dim, hidden], std)));
        tensors.push((format!("{p}.self_attn.o_proj.weight"), randn(&[hidden, heads * head_dim], std)));
        tensors.push((format!("{p}.mlp.up_proj.weight"), randn(&[ffn, hidden], std)));
        tensors.push((format!("{p}.mlp.down_proj.weight"), randn(&[hidden, ffn], 1.0 / (ffn as f64).sqrt())));
    }
    tensors.push(("model.norm.weight".into(), randn(&[hidden], 0.02)));
    tensors.push(("model.norm.bias".into(), randn(&[hidden], 0.02)));
    tensors.push(("score.weight".into(), randn(&[9, hidden], std)));
    tensors.push(("score.bias".into(), randn(&[9], 0.1)));
    let partial = dir.join("model.safetensors.partial");
    Tensor::write_safetensors(&tensors, &partial)?;
    std::fs::rename(partial, dir.join("model.safetensors"))?;
    Ok(dir)
}
