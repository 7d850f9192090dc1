//! Outputs written safely. A regular file is written to a temporary file in
//! its own directory (so the rename is atomic), made durable and renamed into
//! place only when the run succeeds; until then the earlier file, if any, is
//! untouched, and a failed run removes its temporary file. Stdout, pipes and
//! devices are written straight through (there is nothing to replace).
//!
//! An output is checked ([`OutputPlan::check`]) before the model is loaded and
//! opened ([`OutputPlan::open`]) only after everything else is validated.
//! A run killed by a signal can leave its `.NAME.PID.N.tmp` beside the
//! output; the output itself is never half-written.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{display, is_std, FileError};

#[derive(Debug)]
enum Target {
    Stdout,
    /// An existing device, pipe or socket: opened and written as it is.
    Stream,
    /// A regular file (symbolic links resolved, so the link survives), replaced at the end.
    Replace(PathBuf),
}

/// An output that has been checked but not opened.
#[derive(Debug)]
pub struct OutputPlan {
    what: &'static str,
    path: PathBuf,
    target: Target,
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: access() only reads the NUL-terminated path we own.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

impl OutputPlan {
    /// Can `path` be written? Nothing is created or changed.
    pub fn check(what: &'static str, path: &Path) -> Result<OutputPlan, FileError> {
        let plan = |target| Ok(OutputPlan { what, path: path.to_path_buf(), target });
        if is_std(path) {
            return plan(Target::Stdout);
        }
        let invalid = |message: String| FileError::Invalid { what, path: path.display().to_string(), message };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Err(invalid("is a directory".into())),
            Ok(m) if m.is_file() => {
                let real = path.canonicalize().map_err(|e| invalid(e.to_string()))?;
                let dir = real.parent().unwrap_or(Path::new("/"));
                if !writable(&real) {
                    return Err(invalid("is not writable".into()));
                }
                if !writable(dir) {
                    return Err(invalid(format!("its directory {} is not writable", dir.display())));
                }
                plan(Target::Replace(real))
            }
            Ok(_) => plan(Target::Stream),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                if !dir.is_dir() {
                    return Err(invalid(format!("directory {} does not exist", dir.display())));
                }
                if !writable(dir) {
                    return Err(invalid(format!("directory {} is not writable", dir.display())));
                }
                plan(Target::Replace(path.to_path_buf()))
            }
            Err(e) => Err(invalid(e.to_string())),
        }
    }

    /// Stdout, a pipe or a device: written straight through, cannot be resumed.
    pub fn is_stream(&self) -> bool {
        !matches!(self.target, Target::Replace(_))
    }

    /// Open, write `bytes` and commit (a closed pipe ends it quietly).
    pub fn write_all(self, bytes: &[u8]) -> Result<(), FileError> {
        let mut out = self.open()?;
        match out.write_all(bytes).and_then(|_| out.commit()) {
            Err(e) if e.is_closed_pipe() => Ok(()),
            other => other,
        }
    }

    pub fn open(self) -> Result<SafeOutput, FileError> {
        let name = display(&self.path, false);
        let err = |source| FileError::Open { what: self.what, path: name.clone(), source };
        let (sink, temp, target) = match self.target {
            Target::Stdout => (Sink::Stdout(io::stdout()), None, self.path.clone()),
            Target::Stream => {
                (Sink::File(OpenOptions::new().write(true).open(&self.path).map_err(err)?), None, self.path.clone())
            }
            Target::Replace(target) => {
                let (file, temp) = temp_beside(&target).map_err(err)?;
                if let Ok(m) = std::fs::metadata(&target) {
                    file.set_permissions(m.permissions()).map_err(err)?;
                }
                (Sink::File(file), Some(temp), target)
            }
        };
        Ok(SafeOutput { what: self.what, name, writer: Some(BufWriter::with_capacity(1 << 16, sink)), temp, target })
    }
}

/// A new, empty temporary file in `target`'s directory.
fn temp_beside(target: &Path) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(buf),
            Sink::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// An open output. Dropped without [`SafeOutput::commit`], it leaves the
/// earlier file in place and removes its temporary file.
pub struct SafeOutput {
    what: &'static str,
    name: String,
    writer: Option<BufWriter<Sink>>,
    temp: Option<PathBuf>,
    target: PathBuf,
}

impl SafeOutput {
    fn error(&self, source: io::Error) -> FileError {
        FileError::Write { what: self.what, path: self.name.clone(), source }
    }

    fn writer(&mut self) -> &mut BufWriter<Sink> {
        self.writer.as_mut().expect("the writer lives until commit: this is a bug")
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.writer().write_all(bytes).map_err(|e| self.error(e))
    }

    /// Copy a reader (a spilled line) to the output.
    pub fn copy_from(&mut self, reader: &mut impl Read) -> Result<(), FileError> {
        io::copy(reader, self.writer()).map(|_| ()).map_err(|e| self.error(e))
    }

    /// Push what is buffered to the file or stream.
    pub fn flush(&mut self) -> Result<(), FileError> {
        self.writer().flush().map_err(|e| self.error(e))
    }

    /// Finish: flush, and for a file make it durable and rename it into place.
    pub fn commit(mut self) -> Result<(), FileError> {
        self.flush()?;
        let writer = self.writer.take().expect("the writer lives until commit: this is a bug");
        let sink = writer.into_inner().map_err(|e| self.error(e.into_error()))?;
        let Some(temp) = self.temp.clone() else { return Ok(()) };
        if let Sink::File(file) = &sink {
            file.sync_all().map_err(|e| self.error(e))?;
        }
        drop(sink);
        std::fs::rename(&temp, &self.target).map_err(|e| self.error(e))?;
        self.temp = None;
        // The rename is durable once the directory is; best effort.
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for SafeOutput {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            self.writer = None;
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Write a whole small output (a report, a plot, a state file) safely. A
/// closed pipe is not an error: its reader did not want the rest.
pub fn write_file(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    OutputPlan::check(what, path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_only_on_commit_and_a_dropped_output_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("rw-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        std::fs::write(&path, "earlier\n").unwrap();
        let mut out = OutputPlan::check("output", &path).unwrap().open().unwrap();
        out.write_all(b"new\n").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\n");
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the temporary file is gone");
        let mut out = OutputPlan::check("output", &path).unwrap().open().unwrap();
        out.write_all(b"new\n").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let err = OutputPlan::check("output", &dir.join("missing/out.jsonl")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = OutputPlan::check("output", &dir).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
