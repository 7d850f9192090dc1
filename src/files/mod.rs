//! Files and lines, the one way every command handles them, so that the
//! command line never destroys a file, never drops a good record and never
//! hangs on a closed stream.
//!
//! - [`identity`]: which paths are the same file (device + inode, so links and
//!   different spellings of one path are caught); an output that is an input is
//!   refused before anything is opened for writing.
//! - [`output`]: outputs written to a temporary file beside them and renamed
//!   into place at the end (coreutils `sort -o`); stdout, pipes and devices are
//!   written straight through.
//! - [`lines`]: input read once, as bytes per line, with a byte limit per line:
//!   a bad byte is one bad record, and an over-long line is skipped without
//!   being held in memory.
//! - [`lock`]: the exclusive lock an appending writer (`annotate`) holds on its
//!   output, so two runs never write one file.
//! - [`fingerprint`]: a stable hash of a model's files, for cache keys.

pub mod fingerprint;
pub mod identity;
pub mod lines;
pub mod lock;
pub mod output;

use std::io;
use std::path::{Path, PathBuf};

pub use identity::{check_distinct, FileRole};
pub use lines::{Line, LineReader, NumberedLine};
pub use output::{OutputPlan, SafeOutput};

/// A file problem that stops a run (a bad *line* is a per-record error instead).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {what} {path}: {source}")]
    Open { what: &'static str, path: String, source: io::Error },
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: io::Error },
    #[error("cannot write {what} {path}: {source}")]
    Write { what: &'static str, path: String, source: io::Error },
    #[error("{what} {path} is the same file as {other_what} {other}: refusing to overwrite it (pick another {what})")]
    SameFile { what: &'static str, path: String, other_what: &'static str, other: String },
    #[error(
        "{what} {path} is locked by another run that is writing it; wait for that run to end or pick another {what}"
    )]
    Locked { what: &'static str, path: String },
    #[error("{what} {path}: {message}")]
    Invalid { what: &'static str, path: String, message: String },
}

impl FileError {
    /// The reader of an output stream went away (EPIPE): the run ends quietly,
    /// as Unix tools do when `| head` has read enough.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, FileError::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// How a path is named in messages: `-` is stdin or stdout.
pub fn display(path: &Path, stdin: bool) -> String {
    if is_std(path) {
        return if stdin { "stdin".into() } else { "stdout".into() };
    }
    path.display().to_string()
}

/// `-`: stdin for an input, stdout for an output.
pub fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Open an input for reading (`-` = stdin). A directory is refused here, not
/// at the first read.
pub fn open_input(what: &'static str, path: &Path) -> Result<Box<dyn io::Read + Send>, FileError> {
    if is_std(path) {
        return Ok(Box::new(io::stdin()));
    }
    let err = |source| FileError::Open { what, path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    if file.metadata().map_err(err)?.is_dir() {
        return Err(FileError::Invalid { what, path: path.display().to_string(), message: "is a directory".into() });
    }
    Ok(Box::new(file))
}

/// Size in bytes of an input that is a regular file (for a progress bar);
/// `None` for stdin, pipes and devices.
pub fn regular_file_size(path: &Path) -> Option<u64> {
    if is_std(path) {
        return None;
    }
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// A file that holds one spilled over-long line (see [`lines`]): created in
/// the temporary directory and unlinked at once, so nothing is left behind
/// whatever happens to the process.
pub fn anonymous_file() -> io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path: PathBuf = dir.join(format!(".reward-worker-spill.{}.{attempt}", std::process::id()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a spill file in the temporary directory"))
}

/// A write past `RLIMIT_FSIZE` kills the process with SIGXFSZ by default,
/// before it can remove its temporary file; ignored, the write fails with
/// EFBIG and the run ends like on a full disk. (SIGPIPE is already ignored
/// by the Rust runtime: a closed pipe is an EPIPE write error.)
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal to SIG_IGN has no handler to run and is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
