//! Which paths are the same file: device + inode, as `cp` and `sort -o` decide
//! it, so a symbolic or hard link to an input, `./f` and `dir/../f` are all
//! caught, and an output that does not exist yet is compared by its directory
//! and name.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{display, is_std, FileError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of_metadata(m: &std::fs::Metadata) -> FileId {
        FileId { dev: m.dev(), ino: m.ino() }
    }

    /// The file a path names, symbolic links followed; `None` if it does not exist.
    pub fn of_path(path: &Path) -> io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileId::of_metadata(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn of_file(file: &File) -> io::Result<FileId> {
        Ok(FileId::of_metadata(&file.metadata()?))
    }
}

/// A file a command reads or writes, and what it is called in messages.
#[derive(Debug, Clone, Copy)]
pub struct FileRole<'a> {
    pub what: &'static str,
    pub path: &'a Path,
}

impl<'a> FileRole<'a> {
    pub fn new(what: &'static str, path: &'a Path) -> FileRole<'a> {
        FileRole { what, path }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ident {
    Existing(FileId),
    /// An output to be created: its directory and name.
    New(FileId, OsString),
}

/// `fstat` of stdin (fd 0) or stdout (fd 1): (id, is a regular file).
fn std_stream(stdin: bool) -> io::Result<(FileId, bool)> {
    let fd = if stdin { io::stdin().as_raw_fd() } else { io::stdout().as_raw_fd() };
    // SAFETY: fstat writes into the zeroed struct we own; fd 0/1 are valid for the process.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((FileId { dev: st.st_dev, ino: st.st_ino }, (st.st_mode & libc::S_IFMT) == libc::S_IFREG))
}

/// The identity of a regular file (or an output yet to be created); `None`
/// for streams and devices, which cannot be overwritten by accident, and for
/// an input that does not exist (left to the code that opens it).
fn identify(role: &FileRole, input: bool) -> Result<Option<Ident>, FileError> {
    let err = |source| FileError::Open { what: role.what, path: display(role.path, input), source };
    if is_std(role.path) {
        let (id, regular) = std_stream(input).map_err(err)?;
        return Ok(regular.then_some(Ident::Existing(id)));
    }
    match std::fs::metadata(role.path) {
        Ok(m) if m.is_file() => Ok(Some(Ident::Existing(FileId::of_metadata(&m)))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound && input => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(name) = role.path.file_name() else { return Ok(None) };
            let dir = match role.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Ok(FileId::of_path(dir).map_err(err)?.map(|d| Ident::New(d, name.to_owned())))
        }
        Err(e) => Err(err(e)),
    }
}

/// Refuse an output that is the same file as an input, or as another output.
/// A file a command both reads and writes (a cache, running statistics) is
/// listed once, as an output. Inputs that do not exist are left to the code
/// that opens them.
pub fn check_distinct(inputs: &[FileRole], outputs: &[FileRole]) -> Result<(), FileError> {
    let mut seen_inputs = Vec::new();
    for role in inputs {
        if let Some(id) = identify(role, true)? {
            seen_inputs.push((id, role));
        }
    }
    let mut seen_outputs: Vec<(Ident, &FileRole)> = Vec::new();
    for role in outputs {
        let Some(id) = identify(role, false)? else { continue };
        let clash =
            seen_inputs.iter().map(|(i, r)| (i, r, true)).chain(seen_outputs.iter().map(|(i, r)| (i, r, false)));
        for (other_id, other, other_is_input) in clash {
            if *other_id == id {
                return Err(FileError::SameFile {
                    what: role.what,
                    path: display(role.path, false),
                    other_what: other.what,
                    other: display(other.path, other_is_input),
                });
            }
        }
        seen_outputs.push((id, role));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_spellings_are_the_same_file() {
        let dir = std::env::temp_dir().join(format!("rw-identity-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("a.jsonl");
        std::fs::write(&file, "x\n").unwrap();
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        let _ = std::fs::remove_file(dir.join("hard"));
        std::fs::hard_link(&file, dir.join("hard")).unwrap();
        let input = [FileRole::new("input", &file)];
        for other in [dir.join("link"), dir.join("hard"), dir.join("sub/../a.jsonl")] {
            let err = check_distinct(&input, &[FileRole::new("output", &other)]).unwrap_err().to_string();
            assert!(err.contains("is the same file as input") && err.contains("a.jsonl"), "{err}");
        }
        check_distinct(&input, &[FileRole::new("output", &dir.join("new.jsonl"))]).unwrap();
        // Two outputs yet to be created, spelled differently.
        let (a, b) = (dir.join("new.jsonl"), dir.join("sub/../new.jsonl"));
        let err = check_distinct(&[], &[FileRole::new("output", &a), FileRole::new("markdown", &b)]).unwrap_err();
        assert!(err.to_string().contains("markdown"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
