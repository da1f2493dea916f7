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
    /// The error it came from, kept with its own sources: printed as `caused by:` lines.
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
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
            source: None,
        }
    }

    /// Keep `e` as this failure's cause.
    pub fn because(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// Each cause's message, outermost first, leaving out those the message already says (an
    /// SDK error's message is its whole chain already).
    pub fn causes(&self) -> Vec<String> {
        let mut causes = Vec::new();
        let mut next = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = next {
            let said = e.to_string();
            if !said.is_empty()
                && !self.message.contains(&said)
                && !causes.iter().any(|c: &String| c.contains(&said))
            {
                causes.push(said);
            }
            next = e.source();
        }
        causes
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.message)?;
        for cause in self.causes() {
            write!(f, "\n  caused by: {cause}")?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  what to do: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// An AWS SDK error with its code and message (DisplayErrorContext walks the source chain).
pub fn sdk<E: std::error::Error + 'static>(e: E) -> String {
    // An endpoint nobody answers at: say that, not the SDK's dispatch-failure chain.
    if let Some(u) = crate::adapters::endpoint::unreachable_in(&e) {
        return u.to_string();
    }
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Io(&'static str, Option<Box<Io>>);
    impl fmt::Display for Io {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Io {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_failure_prints_each_cause_it_does_not_already_say() {
        let e = Io(
            "error trying to connect",
            Some(Box::new(Io("connection refused", None))),
        );
        let f = Failure::new(
            Exit::Deploy,
            "observe",
            "the cluster did not answer",
            "retry",
        )
        .because(e);
        assert_eq!(
            f.to_string(),
            "observe failed: the cluster did not answer\n  caused by: error trying to connect\n  caused by: connection refused\n  what to do: retry"
        );
        // A message that already carries the chain (DisplayErrorContext) prints it once.
        let said = Failure::new(Exit::Aws, "s", "refused: connection refused", "")
            .because(Io("connection refused", None));
        assert!(said.causes().is_empty());
        assert!(std::error::Error::source(&said).is_some());
    }
}
