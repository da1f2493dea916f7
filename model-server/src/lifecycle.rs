//! Readiness and draining, the two facts a blue/green release depends on.
//!
//! `/readyz` is 200 only once the model has answered a warm-up inference, and turns 503 the moment
//! SIGTERM arrives, so the load balancer stops sending new connections while the ones it already has
//! are still served for the drain period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the server is in its life; read by `/readyz` on every probe.
#[derive(Debug, Default)]
pub struct Lifecycle {
    warmed_up: AtomicBool,
    draining: AtomicBool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Model loaded but no warm-up inference has run yet.
    Starting,
    /// Serving and wanting traffic.
    Ready,
    /// SIGTERM received: still serving, but asking to be taken out of rotation.
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

impl Lifecycle {
    pub fn mark_warmed_up(&self) {
        self.warmed_up.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> Phase {
        if self.is_draining() {
            Phase::Draining
        } else if self.warmed_up.load(Ordering::Acquire) {
            Phase::Ready
        } else {
            Phase::Starting
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: `axum::serve` spawns its shutdown future, so a handler
/// installed there could come after the server has said it is serving, and a SIGTERM in between
/// would kill the process (the default action) instead of draining it. Call it before listening.
/// Needs a Tokio runtime.
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        // A handler that cannot be installed leaves that signal's default; not worth failing
        // start-up for.
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async fn first(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = first(term) => {},
                () = first(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The future handed to `axum::serve(..).with_graceful_shutdown`: waits for a termination signal,
/// turns readiness off at once, keeps serving for `drain`, then lets axum stop accepting and finish
/// in-flight requests.
pub async fn drain_on_signal(
    lifecycle: std::sync::Arc<Lifecycle>,
    drain: Duration,
    signal: impl std::future::Future<Output = ()>,
) {
    signal.await;
    lifecycle.start_draining();
    tracing::info!(
        drain_seconds = drain.as_secs_f64(),
        "termination signal: readiness off, draining"
    );
    tokio::time::sleep(drain).await;
    tracing::info!("drain period over: closing the listener, finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_go_starting_ready_draining() {
        let l = Lifecycle::default();
        assert_eq!(l.phase(), Phase::Starting);
        l.mark_warmed_up();
        assert_eq!(l.phase(), Phase::Ready);
        l.start_draining();
        assert_eq!(l.phase(), Phase::Draining);
    }

    /// A SIGTERM that comes after `termination_signal()` but before its future is first polled
    /// (`axum::serve` polls it in a task of its own, later) is seen. Were the handler installed on
    /// first poll, the signal's default action would kill this test process.
    #[cfg(unix)]
    #[test]
    fn a_sigterm_before_the_first_poll_is_seen_not_fatal() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let signal = termination_signal();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            tokio::time::timeout(Duration::from_secs(10), signal)
                .await
                .expect("the SIGTERM sent before the first poll resolves the future");
        });
    }

    #[test]
    fn draining_wins_even_before_warm_up() {
        let l = Lifecycle::default();
        l.start_draining();
        assert_eq!(l.phase(), Phase::Draining);
    }
}
