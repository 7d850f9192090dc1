//! `config.json` (Hugging Face `NemotronConfig`) -> a resolved [`Config`] with no options.

use serde::Deserialize;
use std::path::Path;

use super::ConfigError;

/// The fields of `config.json` this crate reads, as the file spells them.
/// Both the current layout (`rope_parameters`) and the older one (top-level
/// `rope_theta` / `partial_rotary_factor` / `rope_percent`) are accepted.
#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    pub vocab_size: Option<i64>,
    pub hidden_size: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub num_hidden_layers: Option<i64>,
    pub num_attention_heads: Option<i64>,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub max_position_embeddings: Option<i64>,
    pub norm_eps: Option<f64>,
    pub layer_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    pub rope_parameters: Option<RopeParameters>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_percent: Option<f64>,
    pub num_labels: Option<i64>,
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_type: Option<String>,
}

/// The resolved architecture of a Nemotron-4 reward model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Number of leading dims of each head that rotate (`head_dim * partial_rotary_factor`).
    pub rotary_dim: i64,
    pub rope_theta: f64,
    pub norm_eps: f64,
    pub max_position_embeddings: i64,
    pub num_labels: i64,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        Self::from_json(&text).map_err(|e| e.in_file(path))
    }

    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Invalid(format!("config.json is not valid: {e}")))?;
        raw.resolve()
    }
}

fn need(value: Option<i64>, field: &str) -> Result<i64, ConfigError> {
    match value {
        Some(v) if v > 0 => Ok(v),
        Some(v) => Err(ConfigError::Invalid(format!("`{field}` must be positive, got {v}"))),
        None => Err(ConfigError::Invalid(format!("`{field}` is missing"))),
    }
}

impl RawConfig {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        if let Some(t) = &self.model_type {
            if t != "nemotron" {
                return Err(ConfigError::Invalid(format!(
                    "model_type is `{t}`, this worker serves Nemotron-4 reward models (`nemotron`)"
                )));
            }
        } else {
            let archs = self.architectures.clone().unwrap_or_default();
            if !archs.iter().any(|a| a.starts_with("Nemotron")) {
                return Err(ConfigError::Invalid(
                    "config.json has no `model_type` and no Nemotron architecture".into(),
                ));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "relu2" {
                return Err(ConfigError::Invalid(format!(
                    "hidden_act is `{act}`, Nemotron-4 uses squared ReLU (`relu2`)"
                )));
            }
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(ConfigError::Invalid(
                "attention_bias / mlp_bias are set; Nemotron-4 has no linear biases".into(),
            ));
        }
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = need(self.num_key_value_heads.or(Some(num_heads)), "num_key_value_heads")?;
        if num_heads % num_kv_heads != 0 {
            return Err(ConfigError::Invalid(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) => need(Some(d), "head_dim")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(ConfigError::Invalid(format!(
                    "head_dim is missing and hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_heads})"
                )))
            }
        };
        let rope = self.rope_parameters.as_ref();
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref()) {
            if kind != "default" {
                return Err(ConfigError::Invalid(format!("rope_type `{kind}` is not supported (only `default`)")));
            }
        }
        let rope_theta = rope.and_then(|r| r.rope_theta).or(self.rope_theta).unwrap_or(10000.0);
        let factor = rope
            .and_then(|r| r.partial_rotary_factor)
            .or(self.partial_rotary_factor)
            .or(self.rope_percent)
            .unwrap_or(0.5);
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(ConfigError::Invalid(format!("partial_rotary_factor must be in (0, 1], got {factor}")));
        }
        // transformers: int(head_dim * partial_rotary_factor)
        let rotary_dim = (head_dim as f64 * factor) as i64;
        if rotary_dim % 2 != 0 || rotary_dim == 0 {
            return Err(ConfigError::Invalid(format!(
                "rotary dims ({rotary_dim} = head_dim {head_dim} x {factor}) must be even and positive"
            )));
        }
        let num_labels = self.num_labels.or(self.id2label.as_ref().map(|m| m.len() as i64)).unwrap_or(9);
        if num_labels != 9 {
            return Err(ConfigError::Invalid(format!(
                "the reward head has {num_labels} labels; Nemotron-4 reward models have 9 attributes"
            )));
        }
        Ok(Config {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rope_theta,
            norm_eps: self.norm_eps.or(self.layer_norm_eps).unwrap_or(1e-5),
            max_position_embeddings: need(self.max_position_embeddings.or(Some(4096)), "max_position_embeddings")?,
            num_labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_340b_architecture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/nemotron-4-340b/config.json");
        let cfg = Config::from_file(&path).unwrap();
        assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.intermediate_size), (96, 18432, 73728));
        assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rotary_dim), (96, 8, 192, 96));
        assert_eq!((cfg.vocab_size, cfg.max_position_embeddings), (256000, 4096));
    }

    #[test]
    fn older_layout_and_defaults() {
        let text = r#"{"model_type": "nemotron", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
                       "num_hidden_layers": 1, "num_attention_heads": 4, "rope_percent": 0.25, "rope_theta": 500.0}"#;
        let cfg = Config::from_json(text).unwrap();
        assert_eq!((cfg.num_kv_heads, cfg.head_dim, cfg.rotary_dim, cfg.rope_theta), (4, 16, 4, 500.0));
    }

    #[test]
    fn rejects_other_architectures_and_bad_shapes() {
        let err = Config::from_json(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert!(err.contains("model_type is `llama`"), "{err}");
        let text = r#"{"model_type": "nemotron", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
                       "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3}"#;
        let err = Config::from_json(text).unwrap_err().to_string();
        assert!(err.contains("not a multiple of num_key_value_heads (3)"), "{err}");
        let err = Config::from_json(r#"{"model_type": "nemotron", "hidden_size": 64}"#).unwrap_err().to_string();
        assert!(err.contains("`num_attention_heads` is missing"), "{err}");
    }
}
