//! Failures: the step that failed, what happened, what to do, and the documented exit code.

use std::fmt;

/// The exit codes, as documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Unexpected failure (a bug, or an error no other code covers).
    Internal = 1,
    /// Bad command line (clap prints the usage).
    Usage = 2,
    /// The configuration is invalid (file, field, line named).
    Config = 3,
    /// Another run holds the app's lock, or a lock could not be taken or kept.
    Locked = 4,
    /// An AWS step failed: a stack, the image push, the state bucket.
    Aws = 5,
    /// Deploying the candidate colour failed (it was torn down).
    Deploy = 6,
    /// The candidate failed its smoke test (it was torn down).
    Smoke = 7,
    /// Nothing to promote or roll back to: the command's precondition does not hold.
    Precondition = 8,
    /// After the flip, the public URL did not answer correctly; the flip was reverted.
    Verify = 9,
    /// Its terminal hung up (SIGHUP); what was started was compensated, the lock released.
    HangUp = 129,
    /// Interrupted (Ctrl-C); what was started was compensated, the lock released.
    Interrupted = 130,
    /// Terminated (SIGTERM: a cancelled CI job); what was started was compensated, the lock
    /// released.
    Terminated = 143,
}

#[derive(Debug)]
pub struct Failure {
    pub step: String,
    pub message: String,
    pub hint: String,
    pub exit: Exit,
}

impl Failure {
    pub fn new(
        exit: Exit,
        step: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Failure {
            step: step.into(),
            message: message.into(),
            hint: hint.into(),
            exit,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  what to do: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

pub type Result<T> = std::result::Result<T, Failure>;

/// An AWS SDK error with its code and message (DisplayErrorContext walks the source chain).
pub fn sdk<E: std::error::Error + 'static>(e: E) -> String {
    // An endpoint nobody answers at: say that, not the SDK's dispatch-failure chain.
    if let Some(u) = crate::adapters::endpoint::unreachable_in(&e) {
        return u.to_string();
    }
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}
