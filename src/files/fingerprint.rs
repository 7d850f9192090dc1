//! A stable fingerprint of a model's files, so a cache of its scores is never
//! reused for another model that happens to sit in a directory of the same
//! name. It hashes `config.json`, `tokenizer.json`, the safetensors index and,
//! of each safetensors file, its length, its header (names, shapes, dtypes,
//! offsets) and 16 evenly spaced 4 KiB samples of the weights: cheap for a
//! 680 GB checkpoint, and any fine-tune changes the samples.
//!
//! FNV-1a 64: stable across runs, platforms and Rust versions (unlike
//! `DefaultHasher`), which a cache file kept between runs needs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::FileError;
use crate::engine::ModelSource;

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

const SAMPLES: u64 = 16;
const SAMPLE_BYTES: usize = 4096;
/// safetensors caps its header at 100 MB.
const MAX_HEADER: u64 = 100 << 20;

/// `demo@VERSION` for the embedded model, else the hash of the directory's files.
pub fn model_fingerprint(source: &ModelSource) -> Result<String, FileError> {
    let dir = match source {
        ModelSource::EmbeddedDemo => return Ok(format!("{}@{}", source.name(), env!("CARGO_PKG_VERSION"))),
        ModelSource::Dir(dir) => dir,
    };
    let err = |path: &Path, source| FileError::Read { what: "model file", path: path.display().to_string(), source };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == "config.json"
                || n == "tokenizer.json"
                || n.ends_with(".safetensors")
                || n.ends_with(".safetensors.index.json")
        })
        .collect();
    names.sort();
    let mut hash = Fnv64::default();
    for name in &names {
        let path = dir.join(name);
        hash.write(name.as_bytes());
        if name.ends_with(".json") {
            hash.write(&std::fs::read(&path).map_err(|e| err(&path, e))?);
        } else {
            sample_safetensors(&path, &mut hash).map_err(|e| err(&path, e))?;
        }
    }
    Ok(format!("{:016x}", hash.finish()))
}

fn sample_safetensors(path: &Path, hash: &mut Fnv64) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    hash.write(&len.to_le_bytes());
    let mut size = [0u8; 8];
    if len < 8 {
        return Ok(());
    }
    file.read_exact(&mut size)?;
    let header = u64::from_le_bytes(size).min(MAX_HEADER).min(len - 8);
    let mut buf = vec![0u8; header as usize];
    file.read_exact(&mut buf)?;
    hash.write(&buf);
    let mut sample = vec![0u8; SAMPLE_BYTES];
    for i in 0..SAMPLES {
        let at = (len.saturating_sub(SAMPLE_BYTES as u64)) * i / (SAMPLES - 1);
        file.seek(SeekFrom::Start(at))?;
        let n = file.read(&mut sample)?;
        hash.write(&sample[..n]);
    }
    Ok(())
}
