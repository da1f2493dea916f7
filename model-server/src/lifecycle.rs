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

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops us; not worth failing start-up for.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
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

    #[test]
    fn draining_wins_even_before_warm_up() {
        let l = Lifecycle::default();
        l.start_draining();
        assert_eq!(l.phase(), Phase::Draining);
    }
}
