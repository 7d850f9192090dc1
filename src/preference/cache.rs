//! The attribute cache: one JSON line per pair with the raw attributes of both
//! sides, so other weights (and `tune-weights`) never re-run the model:
//!
//! `{"index": 0, "key": "9f1c…", "model": "…", "subset": "…", "chosen": [9], "rejected": [9]}`
//!
//! `index` is the pair's 0-based position in its pairs file and `key` the hash
//! of the model name and the pair's texts ([`super::pairs::pair_key`]); an entry
//! is reused only when both match. `eval` appends entries as it scores (a killed
//! run keeps its progress) and finally rewrites the file with exactly the
//! entries of the pairs it evaluated, in order.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::PreferenceError;
use crate::reward::ATTRIBUTES;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub index: usize,
    pub key: String,
    pub model: String,
    pub subset: String,
    pub chosen: [f32; 9],
    pub rejected: [f32; 9],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl CacheEntry {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a cache entry serialises: this is a bug")
    }
}

/// What reading a cache found.
#[derive(Debug, Default)]
pub struct CacheRead {
    /// Good entries with their 1-based line numbers.
    pub entries: Vec<(usize, CacheEntry)>,
    /// One error per bad line (which never stops the others).
    pub errors: Vec<PreferenceError>,
}

/// Read a cache. A missing file is an empty cache.
pub fn read(path: &Path) -> Result<CacheRead, PreferenceError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheRead::default()),
        Err(e) => return Err(PreferenceError::Data(format!("cannot open cache {}: {e}", path.display()))),
    };
    let mut out = CacheRead::default();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| PreferenceError::Data(format!("cannot read cache {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(entry) => out.entries.push((i + 1, entry)),
            Err(message) => out.errors.push(PreferenceError::line(i + 1, message)),
        }
    }
    Ok(out)
}

/// One cache line, with messages that say which field is wrong and how.
pub fn parse_line(line: &str) -> Result<CacheEntry, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        if line.contains("NaN") || line.contains("inf") {
            format!("invalid JSON ({e}): a NaN or infinite attribute score cannot be used")
        } else {
            format!("invalid JSON: {e}")
        }
    })?;
    let text = |name: &str| -> Result<String, String> {
        value.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("`{name}` must be a string"))
    };
    Ok(CacheEntry {
        index: value.get("index").and_then(Value::as_u64).ok_or("`index` must be a non-negative integer")? as usize,
        key: text("key")?,
        model: text("model")?,
        subset: text("subset")?,
        chosen: attributes(&value, "chosen")?,
        rejected: attributes(&value, "rejected")?,
        id: value.get("id").cloned(),
    })
}

fn attributes(value: &Value, field: &str) -> Result<[f32; 9], String> {
    let items =
        value.get(field).and_then(Value::as_array).ok_or_else(|| format!("`{field}` must be an array of 9 numbers"))?;
    if items.len() != 9 {
        return Err(format!("`{field}` has {} values, expected 9", items.len()));
    }
    let mut out = [0f32; 9];
    for (i, item) in items.iter().enumerate() {
        let x = item.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
            format!("`{field}`[{i}] ({}) is {item}, not a finite number (a NaN is written as null)", ATTRIBUTES[i])
        })?;
        out[i] = x as f32;
        if !out[i].is_finite() {
            return Err(format!("`{field}`[{i}] ({}) overflows f32", ATTRIBUTES[i]));
        }
    }
    Ok(out)
}

/// Append entries (one flush per call, so a killed run keeps what was scored).
pub fn append(path: &Path, entries: &[CacheEntry]) -> Result<(), PreferenceError> {
    let err = |e: std::io::Error| PreferenceError::Data(format!("cannot write cache {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
    let text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
    file.write_all(text.as_bytes()).map_err(err)
}

/// Replace the cache with exactly `entries` (temporary file + rename).
pub fn rewrite(path: &Path, entries: &[&CacheEntry]) -> Result<(), PreferenceError> {
    let err = |e: std::io::Error| PreferenceError::Data(format!("cannot write cache {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_field() {
        let good = r#"{"index": 0, "key": "k", "model": "m", "subset": "s",
                       "chosen": [0,0,0,0,1,2,3,4,5], "rejected": [0,0,0,0,0,0,0,0,0]}"#;
        assert_eq!(parse_line(good).unwrap().chosen[8], 5.0);
        let null = good.replace("[0,0,0,0,1,2,3,4,5]", "[0,0,0,0,1,null,3,4,5]");
        let err = parse_line(&null).unwrap_err();
        assert!(err.contains("`chosen`[5] (correctness) is null"), "{err}");
        let nan = good.replace("[0,0,0,0,1,2,3,4,5]", "[0,0,0,0,1,NaN,3,4,5]");
        assert!(parse_line(&nan).unwrap_err().contains("NaN"));
        let short = good.replace("[0,0,0,0,0,0,0,0,0]", "[0,0]");
        assert!(parse_line(&short).unwrap_err().contains("`rejected` has 2 values"));
    }
}
