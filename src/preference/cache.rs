//! The attribute cache: one JSON line per pair with the raw attributes of both
//! sides, so other weights (and `tune-weights`) never re-run the model:
//!
//! `{"index": 0, "key": "9f1c…", "model": "…", "subset": "…", "chosen": [9], "rejected": [9]}`
//!
//! `key` is the hash of everything that changes the raw scores (the model's
//! files, dtype and template options: [`super::pairs::scoring_identity`]) and
//! of the pair's texts ([`super::pairs::pair_key`]); an entry is reused only
//! when its key matches, wherever the pair now sits in its file. Only the
//! scores are taken from the cache: `index`, `subset` and `id` are written for
//! readers of the file and always come from the current pairs file. `eval`
//! appends entries as it scores (a killed run keeps its progress) and finally
//! replaces the file (temporary file + rename) with exactly the entries of the
//! pairs it evaluated, in order.
//!
//! The file is read as bytes per line: a line that is not UTF-8, not JSON, too
//! long or incomplete (a killed run) is reported and skipped, never fatal.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

use super::PreferenceError;
use crate::files::lines::CACHE_LINE_BYTES;
use crate::files::{output, FileError, Line, LineReader};
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
    let mut lines = LineReader::new(Box::new(file), CACHE_LINE_BYTES);
    let err = |e: std::io::Error| PreferenceError::Data(format!("cannot read cache {}: {e}", path.display()));
    while let Some(line) = lines.next_line().map_err(err)? {
        let n = line.number;
        let text = match &line.line {
            Line::Text(bytes) => std::str::from_utf8(bytes)
                .map_err(|e| format!("invalid_utf8: not valid UTF-8 (byte {})", e.valid_up_to() + 1)),
            Line::TooLong { bytes, .. } => Err(format!("{bytes} bytes, longer than a cache line can be")),
        };
        let parsed = text.and_then(|t| if t.trim().is_empty() { Ok(None) } else { parse_line(t).map(Some) });
        match parsed {
            Ok(Some(entry)) => out.entries.push((n, entry)),
            Ok(None) => {}
            Err(message) => out.errors.push(PreferenceError::line(n, message)),
        }
    }
    Ok(out)
}

/// One cache line, with messages that say which field is wrong and how.
pub fn parse_line(line: &str) -> Result<CacheEntry, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        if line.contains("NaN") || line.contains("inf") {
            format!("invalid_json ({e}): a NaN or infinite attribute score cannot be used")
        } else {
            format!("invalid_json: {e}")
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

/// Appends entries as they are scored, a flush per call, so a killed run
/// keeps what was scored (a cut last line is skipped when read).
pub struct Appender {
    file: std::fs::File,
    path: String,
}

impl Appender {
    pub fn open(path: &Path) -> Result<Appender, FileError> {
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| FileError::Open { what: "cache", path: name.clone(), source })?;
        Ok(Appender { file, path: name })
    }

    pub fn append(&mut self, entries: &[CacheEntry]) -> Result<(), FileError> {
        let text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
        self.file.write_all(text.as_bytes()).map_err(|source| FileError::Write {
            what: "cache",
            path: self.path.clone(),
            source,
        })
    }
}

/// Replace the cache with exactly `entries` (temporary file + rename).
pub fn rewrite(path: &Path, entries: &[CacheEntry]) -> Result<(), PreferenceError> {
    let text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
    output::write_file("cache", path, text.as_bytes()).map_err(|e| PreferenceError::Data(e.to_string()))
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

    #[test]
    fn bad_bytes_and_a_cut_last_line_are_skipped_not_fatal() {
        let path = std::env::temp_dir().join(format!("rw-cache-{}.jsonl", std::process::id()));
        let good = r#"{"index": 0, "key": "k", "model": "m", "subset": "s", "chosen": [0,0,0,0,1,2,3,4,5], "rejected": [0,0,0,0,0,0,0,0,0]}"#;
        let mut bytes = format!("{good}\n\n").into_bytes();
        bytes.extend_from_slice(b"{\"index\": \xff}\n");
        bytes.extend_from_slice(&good.as_bytes()[..40]);
        std::fs::write(&path, bytes).unwrap();
        let read = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.entries.len(), 1);
        let errors: Vec<String> = read.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 3: invalid_utf8"), "{errors:?}");
        assert!(errors[1].starts_with("line 4: invalid_json"), "{errors:?}");
    }
}
