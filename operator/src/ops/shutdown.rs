//! Graceful shutdown: the signals that start it, and one handle that every loop of the process waits on.

use std::fmt;
use std::future::Future;
use std::io;

use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio_util::sync::CancellationToken;

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT, e.g. Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM, what the kubelet sends when it stops a pod.
    Terminate,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// Handlers for SIGINT and SIGTERM, installed when this is created: from then on these signals no
/// longer kill the process but are delivered to `recv`.
#[derive(Debug)]
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> io::Result<Self> {
        let interrupt =
            unix_signal(SignalKind::interrupt()).map_err(|error| io::Error::new(error.kind(), format!("cannot handle SIGINT: {error}")))?;
        let terminate = unix_signal(SignalKind::terminate())
            .map_err(|error| io::Error::new(error.kind(), format!("cannot handle SIGTERM: {error}")))?;
        Ok(Self { interrupt, terminate })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            Some(()) = self.interrupt.recv() => StopSignal::Interrupt,
            Some(()) = self.terminate.recv() => StopSignal::Terminate,
            // Both streams end only when the runtime shuts down; nothing is left to wait for.
            else => std::future::pending().await,
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM after the call.
pub async fn signal() -> io::Result<StopSignal> {
    Ok(StopSignals::install()?.recv().await)
}

/// The process-wide "stop now" flag. Clones share it; `trigger` once and every `wait` resolves.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A future that resolves once triggered; it owns its handle, so it can be given to a spawned task
    /// (e.g. `http::serve`'s or `LeaderElector::run`'s `shutdown` argument).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for APIs that take a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Installs the signal handlers now and triggers on the first SIGINT or SIGTERM. A second signal
    /// does nothing more: the kubelet's SIGKILL after the grace period is the hard stop.
    pub fn trigger_on_signal(&self) -> io::Result<tokio::task::JoinHandle<()>> {
        let mut signals = StopSignals::install()?;
        let shutdown = self.clone();
        Ok(tokio::spawn(async move {
            tokio::select! {
                received = signals.recv() => {
                    tracing::info!(signal = %received, "shutting down");
                    shutdown.trigger();
                }
                () = shutdown.wait() => {}
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_resolves_every_waiter() {
        let shutdown = Shutdown::new();
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(shutdown.wait())).collect();
        assert!(!shutdown.is_triggered());
        shutdown.clone().trigger();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("resolved").expect("join");
        }
        assert!(shutdown.is_triggered());
        assert!(shutdown.token().is_cancelled());
    }

    /// One test for both signals: handlers are process-wide, so two tests raising signals in
    /// parallel would each see the other's.
    #[tokio::test]
    async fn sigterm_and_sigint_are_received_and_trigger_shutdown() {
        let mut signals = StopSignals::install().expect("install handlers");
        // SAFETY: raise only sends a signal to this process; our handler is installed, so it is not fatal.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        let received = tokio::time::timeout(Duration::from_secs(5), signals.recv()).await.expect("SIGTERM delivered");
        assert_eq!(received, StopSignal::Terminate);

        let shutdown = Shutdown::new();
        let listener = shutdown.trigger_on_signal().expect("install handlers");
        assert!(!shutdown.is_triggered());
        // SAFETY: as above.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait()).await.expect("SIGINT triggered the shutdown");
        tokio::time::timeout(Duration::from_secs(1), listener).await.expect("listener ends").expect("join");
        assert_eq!(signals.recv().await, StopSignal::Interrupt, "every listener sees the signal");
    }
}
