//! The progress line of a load run, on stderr about once a second: one line rewritten in
//! place on a terminal, and plain lines otherwise, so that CI logs show the run advancing.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Counters every worker bumps once per request. Relaxed: the line is a glance, not a sum
/// anyone checks; the report is built from the workers' own results.
#[derive(Debug, Default)]
pub struct Progress {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Counts one request; `failed` when it got no 2xx answer.
    pub fn record(&self, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Prints the progress line every second until `stop` is cancelled, then ends a terminal's
/// line so that the report starts on a line of its own.
pub fn spawn_printer(
    progress: Arc<Progress>,
    started: Instant,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let terminal = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(started) + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut printed = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (requests, errors) = progress.snapshot();
            let line = line(started.elapsed(), requests, errors);
            let mut stderr = std::io::stderr().lock();
            // A failed write to stderr is no reason to stop the run.
            let _ = if terminal {
                // Trailing spaces wipe what a longer previous line left behind.
                write!(stderr, "\r{line}    ")
            } else {
                writeln!(stderr, "{line}")
            };
            let _ = stderr.flush();
            printed = true;
        }
        if terminal && printed {
            let _ = writeln!(std::io::stderr());
        }
    })
}

fn line(elapsed: Duration, requests: u64, errors: u64) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        requests as f64 / secs
    } else {
        0.0
    };
    format!("{secs:6.1}s  {requests} requests  {rate:.0} requests/s  {errors} errors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_elapsed_rate_and_errors() {
        let line = line(Duration::from_secs(2), 5000, 3);
        assert_eq!(line, "   2.0s  5000 requests  2500 requests/s  3 errors");
    }
}
