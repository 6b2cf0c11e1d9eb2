//! The writer thread of `tether run`'s log.
//!
//! Lines are appended to one shared buffer and the thread takes the whole buffer at
//! each turn, so a burst (a mass outage logs a line per target) costs one `write` per
//! batch and one wake-up of the thread per batch, not one of each per line; a line
//! that comes alone is written at once. A thread that woke per line made, in a mass
//! outage of 1,000 targets, a thousand writes, some 2,700 `sched_yield`s of its own and
//! a wake-up call from an actor per line, on the cores the actors needed.
//!
//! The buffer is bounded: a stderr whose reader stopped reading blocks the thread, and
//! lines that arrive meanwhile beyond the bound are dropped and counted rather than
//! waited for, so a logging actor never blocks.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;

use crate::handoff::Handoff;

/// A buffer keeps at most this much between bursts; a burst's larger buffer is given
/// back once it is written.
const KEPT_CAPACITY: usize = 64 * 1024;

/// How long the thread lets lines gather in a burst, after the first line that wakes
/// it: it then wakes and writes once per period instead of once per line, each time
/// taking a core from the actors. A line that comes alone is written at once.
const GATHER: Duration = Duration::from_millis(5);

/// Lines that come within this long of the last write are taken as a burst.
const BURST: Duration = Duration::from_millis(50);

/// The shared end: what the actors write lines into.
struct Shared {
    lines: Handoff<Vec<u8>>,
    dropped: AtomicU64,
    /// Bytes queued at most before lines are dropped.
    limit: usize,
}

/// The handle the log layer writes through; one line per `write`.
#[derive(Clone)]
pub struct Writer(Arc<Shared>);

/// Ends the thread once it has written what is queued; see [`Guard::finish`].
pub struct Guard {
    shared: Arc<Shared>,
    /// Disconnected when the thread ends.
    ended: mpsc::Receiver<()>,
}

/// Starts the writer thread over `out`, queueing at most `limit` bytes.
pub fn start(
    name: &str,
    limit: usize,
    out: impl Write + Send + 'static,
) -> io::Result<(Writer, Guard)> {
    let shared = Arc::new(Shared {
        lines: Handoff::default(),
        dropped: AtomicU64::new(0),
        limit,
    });
    let (alive, ended) = mpsc::channel::<()>();
    let thread = shared.clone();
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _alive = alive;
            run(&thread, out);
        })?;
    Ok((Writer(shared.clone()), Guard { shared, ended }))
}

fn run(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let burst = last_write.is_some_and(|at| at.elapsed() < BURST);
        if !shared
            .lines
            .take(&mut batch, if burst { GATHER } else { Duration::ZERO })
        {
            return;
        }
        // A stderr that is gone (closed by the parent) loses the lines, as it would
        // lose them written in place.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        last_write = Some(Instant::now());
        batch.clear();
        batch.shrink_to(KEPT_CAPACITY);
    }
}

impl Shared {
    fn push(&self, line: &[u8]) {
        let added = self.lines.put(line, |lines, line| {
            if lines.len() + line.len() > self.limit {
                return Err(line);
            }
            lines.extend_from_slice(line);
            Ok(())
        });
        if added.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Writer {
    /// Lines dropped so far: the queue was full, or the thread had been told to end.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Write for Writer {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        self.clone()
    }
}

impl Guard {
    /// Takes no more lines, and waits until the thread has written those queued, at
    /// most `patience` (it may be blocked on a stderr nobody reads).
    pub fn finish(self, patience: Duration) {
        self.shared.lines.close();
        let _ = self.ended.recv_timeout(patience);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An output that records what reached it, and how many writes it took.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut r = self.0.lock().unwrap();
            r.0.extend_from_slice(buf);
            r.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An output that blocks every write until the test lets it go.
    struct Stalled {
        gate: mpsc::Receiver<()>,
        out: Recorded,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.gate.recv();
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_before_finish_returns() {
        let out = Recorded::default();
        let (mut writer, guard) = start("test-log", 1 << 20, out.clone()).unwrap();
        let mut expected = Vec::new();
        for i in 0..2_000 {
            let line = format!("line {i}\n");
            writer.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        guard.finish(Duration::from_secs(10));
        let (written, _) = out.0.lock().unwrap().clone();
        assert_eq!(written, expected);
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_burst_written_while_the_output_is_busy_goes_out_in_one_write() {
        let (open, gate) = mpsc::channel();
        let out = Recorded::default();
        let stalled = Stalled {
            gate,
            out: out.clone(),
        };
        let (mut writer, guard) = start("test-log", 1 << 20, stalled).unwrap();
        // The first line is taken alone and its write blocks; the next 999 queue behind it.
        writer.write_all(b"first\n").unwrap();
        let taken = || writer.0.lines.is_empty();
        while !taken() {
            std::thread::yield_now();
        }
        for i in 0..999 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        open.send(()).unwrap();
        open.send(()).unwrap();
        drop(open);
        guard.finish(Duration::from_secs(10));
        let (written, writes) = out.0.lock().unwrap().clone();
        assert_eq!(written.iter().filter(|&&b| b == b'\n').count(), 1_000);
        assert_eq!(writes, 2, "one write for the first line, one for the burst");
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_counted_while_the_output_is_stuck() {
        let (open, gate) = mpsc::channel();
        let out = Recorded::default();
        let stalled = Stalled {
            gate,
            out: out.clone(),
        };
        let (mut writer, guard) = start("test-log", 100, stalled).unwrap();
        writer.write_all(b"first\n").unwrap();
        while !writer.0.lines.is_empty() {
            std::thread::yield_now();
        }
        // 10 bytes a line: ten fit in 100 bytes, the other five are dropped.
        for i in 0..15 {
            writer
                .write_all(format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(writer.dropped(), 5);
        drop(open);
        guard.finish(Duration::from_secs(10));
        let (written, _) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(written).unwrap();
        assert!(text.ends_with("line 0009\n"), "{text}");
        // After finish, nothing more is taken.
        writer.write_all(b"late\n").unwrap();
        assert_eq!(writer.dropped(), 6);
    }

    #[test]
    fn finish_gives_up_on_an_output_that_never_returns() {
        let (_open, gate) = mpsc::channel();
        let stalled = Stalled {
            gate,
            out: Recorded::default(),
        };
        let (mut writer, guard) = start("test-log", 1 << 20, stalled).unwrap();
        writer.write_all(b"stuck\n").unwrap();
        let started = tokio::time::Instant::now();
        guard.finish(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
