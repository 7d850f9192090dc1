//! `annotate`'s output: resumable, so it is appended to in place rather than
//! replaced, under an exclusive lock (a second run on the same output is
//! refused). Resuming keeps the complete lines already written, after checking
//! that each belongs to the input line at its position; a partial last line
//! (what a killed run leaves) is cut off. Stdout, pipes and devices are written
//! straight through and never resumed.
//!
//! An output line *belongs* to its input line when it has the same bytes (a
//! bad line written through, or a record with nothing to label), or when both
//! are JSON and equal once every `conversations[].label` is set to null (the
//! labels are the only thing annotate changes).

use serde_json::Value;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::files::lines::MAX_LINE_BYTES;
use crate::files::{self, lock, FileError, Line, LineReader, NumberedLine};

/// What resuming keeps of the output.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kept {
    pub lines: usize,
    /// Bytes of the kept complete lines (where appending starts).
    pub end: u64,
    /// Bytes of the input lines they belong to (for the progress bar).
    pub input_bytes: u64,
    /// A partial last line follows them.
    pub partial: bool,
}

enum Kind {
    Stream(Box<dyn Write + Send>),
    /// A regular file, locked while it is open.
    Locked(File),
    /// No file yet: created (and locked) by `start`, once the model has loaded,
    /// so a run that cannot start leaves nothing behind.
    New(std::path::PathBuf),
}

pub struct AnnotateOutput {
    name: String,
    kind: Kind,
}

impl AnnotateOutput {
    /// Open (and lock) the output. Nothing in it is changed yet.
    pub fn open(path: &Path, stream: bool) -> Result<AnnotateOutput, FileError> {
        let name = files::display(path, false);
        let kind = if files::is_std(path) {
            Kind::Stream(Box::new(io::stdout()))
        } else if stream {
            let err = |source| FileError::Open { what: "output", path: name.clone(), source };
            Kind::Stream(Box::new(std::fs::OpenOptions::new().write(true).open(path).map_err(err)?))
        } else if !path.exists() {
            Kind::New(path.to_path_buf())
        } else {
            Kind::Locked(lock::open_locked("output", path)?)
        };
        Ok(AnnotateOutput { name, kind })
    }

    /// Check the complete lines already in the output against `input`, which
    /// is left at the first line not yet annotated.
    pub fn verify(&mut self, input: &mut LineReader, input_name: &str) -> Result<Kept, String> {
        let Kind::Locked(file) = &self.kind else { return Ok(Kept::default()) };
        let err = |e: io::Error| format!("cannot resume from output {}: {e}", self.name);
        let mut reader = file.try_clone().map_err(err)?;
        reader.rewind().map_err(err)?;
        // Labelled lines are longer than their input lines.
        let limit = input.limit().saturating_mul(2).saturating_add(1 << 20).min(MAX_LINE_BYTES);
        let mut lines = LineReader::new(Box::new(reader), limit).keep_bom();
        let mut kept = Kept::default();
        while let Some(out_line) = lines.next_line().map_err(err)? {
            if !out_line.terminated {
                kept.partial = true;
                break;
            }
            let read = input.next_line().map_err(|e| format!("cannot read input {input_name}: {e}"))?;
            let Some(in_line) = read else {
                let mut total = kept.lines + 1;
                while let Some(l) = lines.next_line().map_err(err)? {
                    total += usize::from(l.terminated);
                }
                return Err(format!(
                    "output {} has {total} lines but input {input_name} has only {}: not an output of this input? \
                     (--overwrite starts over)",
                    self.name, kept.lines
                ));
            };
            if !belongs(&in_line, &out_line) {
                let n = in_line.number;
                return Err(format!(
                    "output {} line {n} does not belong to input {input_name} line {n} (they differ in more than \
                     the labels): resuming needs the input the output was made from (--overwrite starts over)",
                    self.name
                ));
            }
            kept.lines += 1;
            kept.end += out_line.input_bytes();
            kept.input_bytes += in_line.input_bytes();
        }
        Ok(kept)
    }

    /// Make the file hold exactly the kept lines (nothing with `--overwrite`),
    /// ready to append; a stream is left as it is.
    pub fn start(self, kept: &Kept, overwrite: bool) -> Result<LineWriter, FileError> {
        let name = self.name;
        let writer = |out: Box<dyn Write + Send>, lock| LineWriter {
            out: BufWriter::with_capacity(1 << 16, out),
            name: name.clone(),
            lock,
        };
        let mut file = match self.kind {
            Kind::Stream(out) => return Ok(writer(out, None)),
            Kind::New(path) => lock::open_locked("output", &path)?,
            Kind::Locked(file) => file,
        };
        let err = |source| FileError::Write { what: "output", path: name.clone(), source };
        if overwrite {
            file.set_len(0).map_err(err)?;
        } else if kept.partial {
            tracing::warn!(line = kept.lines + 1, "dropping the partial last line of the output");
            file.set_len(kept.end).map_err(err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(err)?;
        let out = Box::new(file.try_clone().map_err(err)?);
        Ok(writer(out, Some(file)))
    }
}

fn belongs(input: &NumberedLine, output: &NumberedLine) -> bool {
    if input.same_bytes(output) {
        return true;
    }
    let (Line::Text(a), Line::Text(b)) = (&input.line, &output.line) else { return false };
    match (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b)) {
        (Ok(mut a), Ok(mut b)) => {
            without_labels(&mut a);
            without_labels(&mut b);
            a == b
        }
        _ => false,
    }
}

fn without_labels(record: &mut Value) {
    let turns = record.get_mut("conversations").and_then(Value::as_array_mut).into_iter().flatten();
    for label in turns.filter_map(|t| t.get_mut("label")) {
        *label = Value::Null;
    }
}

/// Appends whole lines; flushed chunk by chunk, so a killed run loses at most
/// a partial line.
pub struct LineWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    name: String,
    /// The locked file (the lock lasts as long as it is open).
    lock: Option<File>,
}

impl LineWriter {
    fn error(&self, source: io::Error) -> FileError {
        FileError::Write { what: "output", path: self.name.clone(), source }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.out.write_all(bytes).map_err(|e| self.error(e))
    }

    pub fn copy_from(&mut self, reader: &mut impl Read) -> Result<(), FileError> {
        io::copy(reader, &mut self.out).map(|_| ()).map_err(|e| self.error(e))
    }

    pub fn flush(&mut self) -> Result<(), FileError> {
        self.out.flush().map_err(|e| self.error(e))
    }

    /// Flush, and make a file durable.
    pub fn finish(mut self) -> Result<(), FileError> {
        self.flush()?;
        if let Some(file) = &self.lock {
            file.sync_all().map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}
