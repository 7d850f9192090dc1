//! Input read once, as bytes per line, with a byte limit per line.
//!
//! A line is bytes up to `\n`; whether they are UTF-8 or JSON is the caller's
//! per-record question, so one bad byte is one bad record. A line longer than
//! the limit is never held in memory: it is counted and hashed as it streams
//! past (and, for a caller that writes bad lines through, copied to an
//! anonymous spill file), so memory stays bounded by the limit whatever the
//! input. A UTF-8 byte-order mark at the start of the input is skipped.
//!
//! The limit for records comes from the model's context ([`record_line_limit`]):
//! a line that could not fit the context at any plausible number of bytes per
//! token is refused before it is tokenised.

use serde_json::Value;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};

use crate::chat::{RecordError, Truncate};

/// Bytes of a JSON line one token can take, generously: a long token is 16+
/// characters (indentation, runs of symbols), and escapes multiply that
/// (`\u00e9` is 6 bytes for one character, a surrogate pair 12; Python's
/// `json.dumps` escapes every non-ASCII character).
pub const BYTES_PER_TOKEN: usize = 64;
/// Room for fields that are not tokenised (ids, labels, metadata).
pub const UNTOKENISED_BYTES: usize = 64 << 10;
/// With `--truncate left` a conversation may legitimately be longer than the
/// context (its oldest turns are dropped), so its line may hold this many
/// contexts' worth of text before it is refused untokenised.
pub const TRUNCATE_LEFT_CONTEXTS: usize = 16;
/// The largest `--max-line-bytes` (and derived limit): 1 GiB.
pub const MAX_LINE_BYTES: usize = 1 << 30;
/// Lines of the attribute cache are short (18 numbers, a key, a subset and an id).
pub const CACHE_LINE_BYTES: usize = 1 << 20;

/// The byte limit of a line holding `records` conversations for a model with
/// `context` positions.
pub fn record_line_limit(context: usize, truncate: Truncate, records: usize) -> usize {
    let contexts = if truncate == Truncate::Left { TRUNCATE_LEFT_CONTEXTS } else { 1 };
    context
        .saturating_mul(BYTES_PER_TOKEN)
        .saturating_mul(contexts)
        .saturating_mul(records.max(1))
        .saturating_add(UNTOKENISED_BYTES)
        .min(MAX_LINE_BYTES)
}

/// One line of input.
#[derive(Debug)]
pub enum Line {
    /// The line's bytes, without `\n`.
    Text(Vec<u8>),
    /// Longer than the limit: its length and a hash of its bytes, and the bytes
    /// themselves in a spill file when the reader was asked to keep them.
    TooLong { bytes: u64, digest: u64, spill: Option<File> },
}

#[derive(Debug)]
pub struct NumberedLine {
    /// 1-based.
    pub number: usize,
    pub line: Line,
    /// Ended by `\n` (false only for a last line without one).
    pub terminated: bool,
}

impl NumberedLine {
    /// Bytes this line took in the input, `\n` included.
    pub fn input_bytes(&self) -> u64 {
        let body = match &self.line {
            Line::Text(b) => b.len() as u64,
            Line::TooLong { bytes, .. } => *bytes,
        };
        body + u64::from(self.terminated)
    }

    /// Same bytes as `other` (over-long lines compared by length and hash).
    pub fn same_bytes(&self, other: &NumberedLine) -> bool {
        match (&self.line, &other.line) {
            (Line::Text(a), Line::Text(b)) => a == b,
            (Line::TooLong { bytes: a, digest: da, .. }, Line::TooLong { bytes: b, digest: db, .. }) => {
                a == b && da == db
            }
            (Line::Text(t), Line::TooLong { bytes, digest, .. })
            | (Line::TooLong { bytes, digest, .. }, Line::Text(t)) => {
                t.len() as u64 == *bytes && digest_of(t) == *digest
            }
        }
    }

    /// The line as a JSON record: `empty_line`, `invalid_utf8`, `invalid_json`
    /// or (over the limit) `context_length_exceeded`, each naming the line.
    pub fn json(&self, limit: usize) -> Result<Value, RecordError> {
        let n = self.number;
        let bytes = match &self.line {
            Line::Text(b) => b,
            Line::TooLong { bytes, .. } => return Err(too_long(n, *bytes, limit)),
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            RecordError::new("invalid_utf8", format!("line {n} is not valid UTF-8 (byte {})", e.valid_up_to() + 1))
        })?;
        if text.trim().is_empty() {
            return Err(RecordError::new("empty_line", format!("line {n} is empty")));
        }
        serde_json::from_str(text).map_err(|e| RecordError::new("invalid_json", format!("line {n}: {e}")))
    }
}

fn too_long(line: usize, bytes: u64, limit: usize) -> RecordError {
    RecordError::new(
        "context_length_exceeded",
        format!(
            "line {line} has {bytes} bytes, more than the {limit} that fit the model's context at {BYTES_PER_TOKEN} bytes \
             per token; not tokenised (--max-line-bytes raises the limit)"
        ),
    )
}

/// The hash over-long lines are compared by (within one process).
pub fn digest_of(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// A line in progress that went over the limit.
struct Overflow {
    bytes: u64,
    hasher: std::collections::hash_map::DefaultHasher,
    spill: Option<io::BufWriter<File>>,
}

impl Overflow {
    fn add(&mut self, piece: &[u8]) -> io::Result<()> {
        self.bytes += piece.len() as u64;
        self.hasher.write(piece);
        if let Some(s) = &mut self.spill {
            s.write_all(piece)?;
        }
        Ok(())
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

pub struct LineReader {
    inner: Box<dyn BufRead + Send>,
    limit: usize,
    number: usize,
    skip_bom: bool,
    spill: bool,
    peeked: Option<NumberedLine>,
}

impl LineReader {
    pub fn new(input: Box<dyn Read + Send>, limit: usize) -> LineReader {
        LineReader {
            inner: Box::new(BufReader::with_capacity(1 << 16, input)),
            limit,
            number: 0,
            skip_bom: true,
            spill: false,
            peeked: None,
        }
    }

    /// Keep the bytes of over-long lines (in an anonymous spill file).
    pub fn keep_long_lines(mut self) -> LineReader {
        self.spill = true;
        self
    }

    /// Read a byte-order mark as data (for reading back a file this program wrote).
    pub fn keep_bom(mut self) -> LineReader {
        self.skip_bom = false;
        self
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The next line without consuming it.
    pub fn peek(&mut self) -> io::Result<Option<&NumberedLine>> {
        if self.peeked.is_none() {
            self.peeked = self.read_line()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The next line; `None` at the end of the input.
    pub fn next_line(&mut self) -> io::Result<Option<NumberedLine>> {
        match self.peeked.take() {
            Some(line) => Ok(Some(line)),
            None => self.read_line(),
        }
    }

    fn read_line(&mut self) -> io::Result<Option<NumberedLine>> {
        let first = self.number == 0;
        let mut buf = Vec::new();
        let mut over: Option<Overflow> = None;
        let (mut any, mut terminated) = (false, false);
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (piece, found) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            let used = piece.len() + usize::from(found);
            match &mut over {
                Some(o) => o.add(piece)?,
                None if buf.len() + piece.len() <= self.limit => buf.extend_from_slice(piece),
                None => {
                    if first && self.skip_bom && buf.starts_with(BOM) {
                        buf.drain(..BOM.len());
                    }
                    let spill = if self.spill { Some(io::BufWriter::new(super::anonymous_file()?)) } else { None };
                    let mut o = Overflow { bytes: 0, hasher: Default::default(), spill };
                    o.add(&buf)?;
                    o.add(piece)?;
                    buf = Vec::new();
                    over = Some(o);
                }
            }
            self.inner.consume(used);
            if found {
                terminated = true;
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.number += 1;
        let line = match over {
            None => {
                if first && self.skip_bom && buf.starts_with(BOM) {
                    buf.drain(..BOM.len());
                }
                Line::Text(buf)
            }
            Some(o) => {
                let spill = match o.spill {
                    Some(w) => {
                        let mut file = w.into_inner().map_err(|e| e.into_error())?;
                        file.rewind()?;
                        Some(file)
                    }
                    None => None,
                };
                Line::TooLong { bytes: o.bytes, digest: o.hasher.finish(), spill }
            }
        };
        Ok(Some(NumberedLine { number: self.number, line, terminated }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], limit: usize, spill: bool) -> Vec<NumberedLine> {
        let mut r = LineReader::new(Box::new(io::Cursor::new(bytes.to_vec())), limit);
        if spill {
            r = r.keep_long_lines();
        }
        std::iter::from_fn(|| r.next_line().unwrap()).collect()
    }

    fn text(l: &NumberedLine) -> &[u8] {
        match &l.line {
            Line::Text(b) => b,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn lines_are_bytes_with_a_bom_skipped_and_a_last_line_without_newline() {
        let lines = read_all(b"\xEF\xBB\xBF{\"a\":1}\n\xff\xfe\n\nlast", 100, false);
        assert_eq!(lines.len(), 4);
        assert_eq!(text(&lines[0]), b"{\"a\":1}");
        assert_eq!(lines[0].json(100).unwrap()["a"], 1);
        let err = lines[1].json(100).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), ("invalid_utf8", "line 2 is not valid UTF-8 (byte 1)"));
        assert_eq!(lines[2].json(100).unwrap_err().code, "empty_line");
        assert_eq!(lines[3].json(100).unwrap_err().code, "invalid_json");
        assert!(lines[2].terminated && !lines[3].terminated);
        assert_eq!(lines.iter().map(NumberedLine::input_bytes).sum::<u64>(), 19 - 3, "the BOM is not counted");
    }

    #[test]
    fn an_over_long_line_is_counted_hashed_and_spilled_not_kept() {
        let long = vec![b'x'; 1000];
        let mut input = b"short\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nafter\n");
        let lines = read_all(&input, 10, true);
        assert_eq!(lines.len(), 3);
        assert_eq!(text(&lines[2]), b"after");
        let Line::TooLong { bytes, digest, spill } = &lines[1].line else { panic!("{:?}", lines[1]) };
        assert_eq!((*bytes, *digest), (1000, digest_of(&long)));
        let mut copy = Vec::new();
        spill.as_ref().unwrap().read_to_end(&mut copy).unwrap();
        assert_eq!(copy, long);
        let err = lines[1].json(10).unwrap_err();
        assert_eq!(err.code, "context_length_exceeded");
        assert!(
            err.message.contains("line 2 has 1000 bytes") && err.message.contains("not tokenised"),
            "{}",
            err.message
        );
        // A text line and an over-long line with the same bytes are the same.
        let as_text = NumberedLine { number: 2, line: Line::Text(long), terminated: true };
        assert!(as_text.same_bytes(&lines[1]) && !lines[0].same_bytes(&lines[1]));
    }

    #[test]
    fn limits_grow_with_context_truncation_and_records_but_stay_bounded() {
        let one = record_line_limit(4096, Truncate::None, 1);
        assert_eq!(one, 4096 * 64 + 65536);
        assert_eq!(record_line_limit(4096, Truncate::Left, 1), 4096 * 64 * 16 + 65536);
        assert_eq!(record_line_limit(4096, Truncate::None, 3), 4096 * 64 * 3 + 65536);
        assert_eq!(record_line_limit(usize::MAX, Truncate::Left, 3), MAX_LINE_BYTES);
    }
}
