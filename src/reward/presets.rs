//! Named weight presets, so a mixing is chosen by name in a recipe, on the
//! command line or in a request, and a fitted one (`tune-weights`) is used the
//! same way as a shipped one.
//!
//! Three layers, later ones adding to earlier ones: `default` (the model card's,
//! compiled in and never redefinable, so the name always means the same thing),
//! the presets shipped in `configs/presets.json`, and any presets file a user
//! passes (`--presets FILE`). A presets file is JSON:
//!
//! ```json
//! {"presets": {"tuned": {"weights": [0,0,0,0,0.3,0.74,0.46,0.47,-0.33],
//!                        "description": "...", "any other field": "kept"}}}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

use super::{AttributeWeights, RewardError, DEFAULT_WEIGHTS};

const SHIPPED: &str = include_str!("../../configs/presets.json");

/// One preset as written in a presets file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub weights: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Anything else (e.g. the fit report `tune-weights` stores), kept on rewrite.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetsFile {
    presets: BTreeMap<String, Preset>,
}

/// All presets known to a run, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetBook {
    presets: BTreeMap<String, AttributeWeights>,
}

impl PresetBook {
    /// `default` plus the presets shipped in `configs/presets.json`.
    pub fn builtin() -> PresetBook {
        let mut book = PresetBook { presets: BTreeMap::from([("default".to_string(), DEFAULT_WEIGHTS)]) };
        book.add_json(SHIPPED, "configs/presets.json")
            .expect("configs/presets.json is compiled in and tested: this is a bug");
        book
    }

    /// The built-in presets plus those of `path`, if given.
    pub fn load(path: Option<&Path>) -> Result<PresetBook, RewardError> {
        let mut book = PresetBook::builtin();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| RewardError::PresetsFile {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
            })?;
            book.add_json(&text, &path.display().to_string())?;
        }
        Ok(book)
    }

    /// Add the presets of a presets-file text; `origin` names it in errors.
    pub fn add_json(&mut self, text: &str, origin: &str) -> Result<(), RewardError> {
        let bad = |message: String| RewardError::PresetsFile { path: origin.to_string(), message };
        let file: PresetsFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (name, preset) in file.presets {
            check_name(&name).map_err(&bad)?;
            if name == "default" {
                return Err(bad(
                    "`default` is the model card's mixing and cannot be redefined; give the preset another name".into(),
                ));
            }
            let weights =
                AttributeWeights::from_slice(&preset.weights).map_err(|e| bad(format!("preset `{name}`: {e}")))?;
            self.presets.insert(name, weights);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<AttributeWeights, RewardError> {
        self.presets.get(name).copied().ok_or_else(|| RewardError::UnknownPreset(name.into(), self.names().join(", ")))
    }

    pub fn names(&self) -> Vec<&str> {
        self.presets.keys().map(String::as_str).collect()
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("preset name `{name}` must be non-empty ASCII letters, digits, `-`, `_` or `.`"))
    }
}

/// Add or replace preset `name` in the presets file at `path` (created if
/// missing; its other presets are kept). Written to a temporary file and renamed,
/// so a reader never sees half a file.
pub fn save_preset(path: &Path, name: &str, preset: Preset) -> Result<(), RewardError> {
    let bad = |message: String| RewardError::PresetsFile { path: path.display().to_string(), message };
    check_name(name).map_err(&bad)?;
    if name == "default" {
        return Err(bad("`default` cannot be redefined".into()));
    }
    AttributeWeights::from_slice(&preset.weights).map_err(|e| bad(e.to_string()))?;
    let mut file = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<PresetsFile>(&text).map_err(|e| bad(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PresetsFile::default(),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    file.presets.insert(name.to_string(), preset);
    let text = serde_json::to_string_pretty(&file).expect("presets serialise: this is a bug");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| bad(format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_presets_parse_and_default_is_the_model_card() {
        let book = PresetBook::builtin();
        assert_eq!(book.get("default").unwrap(), DEFAULT_WEIGHTS);
        assert_eq!(book.get("helpfulness").unwrap().0[4], 1.0);
        assert!(book.names().contains(&"no-verbosity-penalty"));
    }

    #[test]
    fn a_file_adds_presets_and_errors_name_the_preset() {
        let mut book = PresetBook::builtin();
        book.add_json(r#"{"presets": {"mine": {"weights": [1,2,3,4,5,6,7,8,9]}}}"#, "f.json").unwrap();
        assert_eq!(book.get("mine").unwrap().0[8], 9.0);
        let err = book.add_json(r#"{"presets": {"short": {"weights": [1,2]}}}"#, "f.json").unwrap_err().to_string();
        assert!(err.contains("f.json") && err.contains("preset `short`") && err.contains("got 2"), "{err}");
        let err = book
            .add_json(r#"{"presets": {"default": {"weights": [0,0,0,0,0,0,0,0,1]}}}"#, "f.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be redefined"), "{err}");
        let err = book.get("nope").unwrap_err().to_string();
        assert!(err.contains("unknown preset `nope`") && err.contains("mine"), "{err}");
    }
}
