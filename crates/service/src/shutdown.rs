//! Shutdown, as one small type every task receives.
//!
//! The first SIGTERM or Ctrl-C *requests* a shutdown: stop accepting, finish in-flight
//! requests, flush, exit. A second one *forces* it: stop waiting for a database that does not
//! answer and exit with what could not be written reported in the log.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    requested: CancellationToken,
    forced: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a graceful shutdown.
    pub fn request(&self) {
        self.requested.cancel();
    }

    /// Stops waiting for anything; implies [`request`](Self::request).
    pub fn force(&self) {
        self.requested.cancel();
        self.forced.cancel();
    }

    /// A token cancelled once a shutdown is requested.
    pub fn requested_token(&self) -> CancellationToken {
        self.requested.clone()
    }

    /// A token cancelled once a shutdown is forced.
    pub fn forced_token(&self) -> CancellationToken {
        self.forced.clone()
    }

    /// Completes once a shutdown is requested.
    pub async fn requested(&self) {
        self.requested.cancelled().await
    }

    /// Turns SIGTERM and SIGINT into requests: the first graceful, the second forced.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            let name = |is_term: bool| if is_term { "SIGTERM" } else { "SIGINT" };
            let first = tokio::select! { _ = term.recv() => true, _ = int.recv() => false };
            tracing::info!(
                signal = name(first),
                "shutting down: draining requests, then flushing"
            );
            this.request();
            let second = tokio::select! { _ = term.recv() => true, _ = int.recv() => false };
            tracing::warn!(
                signal = name(second),
                "second signal: shutting down without waiting for the database"
            );
            this.force();
        });
        Ok(())
    }
}
