//! The exclusive lock of a file that a run appends to (`annotate`'s output):
//! `flock(LOCK_EX | LOCK_NB)` on the open file, held until the file is closed.
//! A second run is refused at once rather than made to wait, and a lock is
//! never left behind by a killed process (the kernel drops it with the file).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::identity::FileId;
use super::FileError;

/// Open `path` for reading and writing (created if missing, never truncated)
/// and lock it exclusively, or fail with [`FileError::Locked`].
pub fn open_locked(what: &'static str, path: &Path) -> Result<File, FileError> {
    let name = path.display().to_string();
    let err = |source| FileError::Open { what, path: name.clone(), source };
    // A run that replaced the file (rename) between our open and our lock
    // would leave us holding the lock of a file nobody sees: open again.
    for _ in 0..10 {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(err)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                FileError::Locked { what, path: name }
            } else {
                err(e)
            });
        }
        if FileId::of_path(path).map_err(err)? == Some(FileId::of_file(&file).map_err(err)?) {
            return Ok(file);
        }
    }
    Err(FileError::Invalid { what, path: name, message: "keeps being replaced while we lock it".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_file_is_closed() {
        let path = std::env::temp_dir().join(format!("rw-lock-{}.jsonl", std::process::id()));
        let first = open_locked("output", &path).unwrap();
        let err = open_locked("output", &path).unwrap_err();
        assert!(matches!(err, FileError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("locked by another run"), "{err}");
        drop(first);
        drop(open_locked("output", &path).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
