//! Overlap for the batch commands: the next chunk is read, parsed, tokenised
//! and laid out on a reader thread while the model runs the current one on the
//! calling thread (which owns it: the model side is `Send`, not `Sync`), and
//! output is written on a writer thread while the next chunk runs.
//!
//! Each channel holds one chunk, so at most five chunks exist at once (being
//! read, waiting, being scored, waiting, being written): memory is bounded by
//! the chunk size whatever the input. Both channels are FIFOs, so output order
//! is input order. When the writer stops (a closed pipe, a full disk) or the
//! model side fails, the reader is not waited for: it may be blocked on a
//! stream that never ends, and it stops at its next send anyway.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::files::FileError;

/// How often the model side, waiting for a chunk, checks that the writer is still there.
const WRITER_CHECK: Duration = Duration::from_millis(200);

/// What the model side is given: a chunk, then (once, if the input was read
/// to its end without error) the end.
pub enum Next<C> {
    Chunk(C),
    End,
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The reader of the output went away: end quietly.
    ClosedPipe,
    Failed(String),
}

/// How each of the three sides ended.
pub struct Outcome<W> {
    /// `None` when the run stopped before the input ended (the reader was not waited for).
    pub read: Option<Result<(), String>>,
    pub work: Result<(), String>,
    pub written: Result<W, FileError>,
    /// How long the model side waited for the reader: near zero when reading
    /// and tokenising keep up with the model.
    pub waited: Duration,
    /// How long the reader worked (read, parse, tokenise; not blocked on a full
    /// channel), when it was waited for: the time the overlap hides.
    pub read_busy: Option<Duration>,
}

impl<W> Outcome<W> {
    /// The writer's result if all three sides succeeded, else the first cause.
    pub fn finish(self) -> Result<W, Stop> {
        let written = match self.written {
            Err(e) if e.is_closed_pipe() => return Err(Stop::ClosedPipe),
            Err(e) => return Err(Stop::Failed(e.to_string())),
            Ok(w) => w,
        };
        if let Some(Err(e)) = self.read {
            return Err(Stop::Failed(e));
        }
        self.work.map_err(Stop::Failed)?;
        Ok(written)
    }
}

/// Run `read` on a reader thread (it calls `send` per chunk and stops when
/// `send` returns false), `work` here, and `write` on a writer thread.
pub fn run<C, O, W>(
    read: impl FnOnce(&mut dyn FnMut(C) -> bool) -> Result<(), String> + Send + 'static,
    mut work: impl FnMut(Next<C>) -> Result<Option<O>, String>,
    write: impl FnOnce(Receiver<O>) -> Result<W, FileError> + Send + 'static,
) -> Outcome<W>
where
    C: Send + 'static,
    O: Send + 'static,
    W: Send + 'static,
{
    let (chunk_tx, chunk_rx) = sync_channel::<C>(1);
    let (out_tx, out_rx) = sync_channel::<O>(1);
    let reader = thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let (started, mut blocked) = (Instant::now(), Duration::ZERO);
            let result = read(&mut |chunk| {
                let at = Instant::now();
                let sent = chunk_tx.send(chunk).is_ok();
                blocked += at.elapsed();
                sent
            });
            (result, started.elapsed().saturating_sub(blocked))
        })
        .expect("cannot start the reader thread");
    let writer = thread::Builder::new()
        .name("writer".into())
        .spawn(move || write(out_rx))
        .expect("cannot start the writer thread");
    let mut worked = Ok(());
    let mut ended = true;
    let mut waited = Duration::ZERO;
    loop {
        // Wake up now and then to notice a writer that stopped while the
        // reader waits on a stream that has nothing to say.
        let asked = Instant::now();
        let received = chunk_rx.recv_timeout(WRITER_CHECK);
        waited += asked.elapsed();
        let chunk = match received {
            Ok(chunk) => chunk,
            Err(RecvTimeoutError::Timeout) if writer.is_finished() => {
                ended = false;
                break;
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match work(Next::Chunk(chunk)) {
            Ok(Some(out)) => {
                if out_tx.send(out).is_err() {
                    ended = false;
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                worked = Err(e);
                ended = false;
                break;
            }
        }
    }
    drop(chunk_rx);
    let (read, read_busy) = match ended {
        true => {
            let (result, busy) = join(reader);
            (Some(result), Some(busy))
        }
        false => (None, None),
    };
    if matches!(read, Some(Ok(()))) {
        match work(Next::End) {
            Ok(Some(out)) => {
                // A writer that already stopped reports why below.
                let _ = out_tx.send(out);
            }
            Ok(None) => {}
            Err(e) => worked = Err(e),
        }
    }
    drop(out_tx);
    Outcome { read, work: worked, written: join(writer), waited, read_busy }
}

fn join<T>(handle: thread::JoinHandle<T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_kept_and_the_end_comes_last() {
        let outcome = run(
            |send| {
                for i in 0..50 {
                    if !send(i) {
                        break;
                    }
                }
                Ok(())
            },
            |next| {
                Ok(Some(match next {
                    Next::Chunk(i) => i * 2,
                    Next::End => -1,
                }))
            },
            |rx| Ok(rx.iter().collect::<Vec<i32>>()),
        );
        let mut want: Vec<i32> = (0..50).map(|i| i * 2).collect();
        want.push(-1);
        assert_eq!(outcome.finish().unwrap(), want);
    }

    #[test]
    fn a_stopped_writer_stops_the_run_without_waiting_for_a_stuck_reader() {
        let outcome = run(
            |send| {
                send(1);
                send(2);
                // A stream that never ends: the run must not wait for it.
                loop {
                    thread::sleep(std::time::Duration::from_secs(60));
                }
            },
            |next| Ok(Some(matches!(next, Next::Chunk(_)))),
            |rx| {
                rx.recv().unwrap();
                Err::<(), _>(FileError::Write {
                    what: "output",
                    path: "stdout".into(),
                    source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
                })
            },
        );
        assert!(outcome.read.is_none());
        assert!(matches!(outcome.finish(), Err(Stop::ClosedPipe)));
    }

    #[test]
    fn a_read_error_fails_the_run_and_end_is_not_called() {
        let outcome = run(
            |send| {
                send(1);
                Err("cannot read input: Input/output error".to_string())
            },
            |next| match next {
                Next::Chunk(_) => Ok(None::<i32>),
                Next::End => panic!("end after a read error"),
            },
            |rx| Ok(rx.iter().count()),
        );
        assert!(matches!(outcome.finish(), Err(Stop::Failed(e)) if e.contains("Input/output")));
    }
}
