//! The running-normalisation statistics on disk (`--running-state FILE`), kept
//! crash-safe: every committed step is written to a temporary file beside the
//! state file, fsynced, renamed over it and the directory fsynced, all before
//! `POST /v1/rewards/step` answers. A SIGKILL at any moment therefore leaves
//! the file holding the last answered step or the one being committed, never a
//! torn mix (the rename is atomic; the old file stays until it happens).
//!
//! The path is checked at start-up by creating, syncing and removing a probe
//! file in its directory, so a directory that does not exist, a parent that is
//! a regular file or a read-only mount is a start-up error rather than lost
//! statistics at exit.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::files::OutputPlan;
use crate::reward::RunningStats;

/// Why the state file cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("--running-state {path}: {message}")]
    Unusable { path: String, message: String },
    #[error("cannot write the running state {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// A state file whose directory is known to be writable.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    dir: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl StateFile {
    /// Check that `path` can be replaced: its directory exists and takes a new
    /// file (created, synced and removed here). The file itself is not changed.
    pub fn open(path: &Path) -> Result<StateFile, StateFileError> {
        let unusable = |message: String| StateFileError::Unusable { path: path.display().to_string(), message };
        OutputPlan::check("running state", path).map_err(|e| unusable(e.to_string()))?;
        if path.exists() && !path.is_file() {
            return Err(unusable("is not a regular file".into()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = StateFile { path: path.to_path_buf(), dir };
        file.remove_stale_temps();
        let probe = file.temp_path();
        let created = OpenOptions::new().write(true).create_new(true).open(&probe).and_then(|mut f| {
            f.write_all(b"{}")?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        created.map_err(|e| unusable(format!("cannot create a file in {}: {e}", file.dir.display())))?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Temp files a killed server left beside the state file (`.NAME.PID.N.tmp`).
    fn remove_stale_temps(&self) {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!(".{name}.");
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&prefix) && file.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn temp_path(&self) -> PathBuf {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()))
    }

    /// Replace the file with `stats`, durably: temp file, fsync, rename, fsync
    /// of the directory. On error the old file is untouched and the temp file removed.
    pub fn save(&self, stats: &RunningStats) -> Result<(), StateFileError> {
        let text = serde_json::to_string_pretty(stats).expect("running stats serialise: this is a bug") + "\n";
        let temp = self.temp_path();
        let written = write_synced(&temp, text.as_bytes()).and_then(|()| std::fs::rename(&temp, &self.path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(StateFileError::Write { path: self.path.display().to_string(), source });
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateFileError::Write { path: self.dir.display().to_string(), source })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_whose_directory_is_missing_or_a_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/state.json");
        assert!(StateFile::open(&missing).unwrap_err().to_string().contains("does not exist"));
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let under_file = file.join("state.json");
        assert!(StateFile::open(&under_file).is_err());
        assert!(StateFile::open(dir.path()).is_err(), "a directory is not a state file");
    }

    #[test]
    fn save_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let file = StateFile::open(&path).unwrap();
        assert!(!path.exists(), "open creates nothing");
        let mut stats = RunningStats::default();
        stats.commit(&[1.0, 2.0], None);
        file.save(&stats).unwrap();
        stats.commit(&[3.0], None);
        file.save(&stats).unwrap();
        let back: RunningStats = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, stats);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}
