//! The one way `release` waits: a check polled until it says done, with an explicit deadline and
//! poll interval (as kube-runtime's `await_condition` under a `timeout`). The check decides what
//! "done" means and what to report while it is not; the caller turns the last report into its
//! own error when time runs out.

use std::time::{Duration, Instant};

/// What one look at the world found.
pub enum Check<T, S> {
    /// The wait is over, with what it waited for.
    Done(T),
    /// Not yet; what stands in the way, for the error if the deadline passes.
    Pending(S),
}

/// How long to wait and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub timeout: Duration,
    pub every: Duration,
}

impl Deadline {
    pub fn new(timeout: Duration, every: Duration) -> Self {
        Deadline { timeout, every }
    }
}

/// Run `check` until it is `Done`, at most `deadline.timeout` (the last look is the one at or past
/// the deadline, so a wait of zero still looks once). A check's error ends the wait at once; when
/// the deadline passes, `timed_out` gets the last `Pending` report and the time waited.
pub async fn until<T, S, E>(
    deadline: Deadline,
    mut check: impl AsyncFnMut() -> Result<Check<T, S>, E>,
    timed_out: impl FnOnce(S, Duration) -> E,
) -> Result<T, E> {
    let start = Instant::now();
    loop {
        match check().await? {
            Check::Done(value) => return Ok(value),
            Check::Pending(report) if start.elapsed() > deadline.timeout => {
                return Err(timed_out(report, start.elapsed()));
            }
            Check::Pending(_) => tokio::time::sleep(deadline.every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(timeout_ms: u64) -> Deadline {
        Deadline::new(Duration::from_millis(timeout_ms), Duration::from_millis(1))
    }

    #[tokio::test]
    async fn it_looks_until_the_check_is_done_and_returns_what_it_found() {
        let mut looks = 0;
        let found: Result<u32, String> = until(
            quick(5_000),
            async || {
                looks += 1;
                Ok(if looks == 3 {
                    Check::Done(looks)
                } else {
                    Check::Pending(())
                })
            },
            |_, _| "timed out".to_string(),
        )
        .await;
        assert_eq!(found, Ok(3));
    }

    #[tokio::test]
    async fn past_the_deadline_the_last_report_makes_the_error() {
        let mut looks = 0;
        let found: Result<(), String> = until(
            quick(20),
            async || {
                looks += 1;
                Ok(Check::Pending(format!("look {looks}")))
            },
            |last, after| format!("{last} after {}", after >= Duration::from_millis(20)),
        )
        .await;
        let message = found.unwrap_err();
        assert_eq!(message, format!("look {looks} after true"));
        assert!(looks >= 2, "it looked again before giving up ({looks})");
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_at_once() {
        let mut looks = 0;
        let found: Result<(), String> = until(
            quick(5_000),
            async || {
                looks += 1;
                Err::<Check<(), ()>, _>("denied".to_string())
            },
            |_, _| "timed out".to_string(),
        )
        .await;
        assert_eq!(found, Err("denied".to_string()));
        assert_eq!(looks, 1);
    }

    #[tokio::test]
    async fn a_zero_timeout_still_looks_once() {
        let found: Result<&str, String> = until(
            quick(0),
            async || Ok(Check::<_, ()>::Done("there")),
            |_, _| "timed out".to_string(),
        )
        .await;
        assert_eq!(found, Ok("there"));
    }
}
