//! One place that sorts every CloudFormation stack status into what `release` does about it (as
//! eksctl's waiter does), so that observing, planning, deploying, waiting and deleting agree.
//! The statuses are those of `Stack.StackStatus` in the CloudFormation API reference
//! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_Stack.html>); what each
//! means is from the User Guide's "Stack status codes".

/// What a stack's status means for the next operation on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackPhase {
    /// No stack: never made, or `DELETE_COMPLETE`.
    Absent,
    /// Idle and usable: the last operation finished, or was rolled back to the previous template
    /// (`UPDATE_ROLLBACK_COMPLETE` is a working stack).
    Ready,
    /// An operation is running; wait for it to end.
    InProgress,
    /// A create change set was made but never executed (`REVIEW_IN_PROGRESS`): the stack holds no
    /// resources. Deploying deletes it and creates the stack again; a wait right after executing
    /// a create change set can still see it, and goes on waiting.
    Unstarted,
    /// A create that failed and was rolled back (`ROLLBACK_COMPLETE`): it can only be deleted.
    /// Deploying deletes it and creates the stack again.
    FailedCreate,
    /// An operation failed and left the stack for a person to resolve (`*_FAILED`: continue the
    /// rollback, or delete the stack). `release` does not guess how to go on.
    Failed,
}

impl StackPhase {
    /// `status` as DescribeStacks returns it; `None` for a stack that does not exist.
    pub fn of(status: Option<&str>) -> StackPhase {
        let Some(s) = status else {
            return StackPhase::Absent;
        };
        match s {
            "DELETE_COMPLETE" => StackPhase::Absent,
            "CREATE_COMPLETE"
            | "UPDATE_COMPLETE"
            | "UPDATE_ROLLBACK_COMPLETE"
            | "IMPORT_COMPLETE"
            | "IMPORT_ROLLBACK_COMPLETE" => StackPhase::Ready,
            "REVIEW_IN_PROGRESS" => StackPhase::Unstarted,
            "ROLLBACK_COMPLETE" => StackPhase::FailedCreate,
            // CREATE_, ROLLBACK_, DELETE_, UPDATE_, UPDATE_ROLLBACK_, IMPORT_ and
            // IMPORT_ROLLBACK_IN_PROGRESS, and the two *_CLEANUP_IN_PROGRESS.
            _ if s.ends_with("_IN_PROGRESS") => StackPhase::InProgress,
            // CREATE_FAILED, ROLLBACK_FAILED, DELETE_FAILED, UPDATE_FAILED,
            // UPDATE_ROLLBACK_FAILED, IMPORT_ROLLBACK_FAILED, and any status AWS adds later that
            // `release` cannot know what to do with.
            _ => StackPhase::Failed,
        }
    }

    /// A wait on the stack ends (with `InProgress` or, just after an execute, `Unstarted` it goes on).
    pub fn settled(self) -> bool {
        !matches!(self, StackPhase::InProgress | StackPhase::Unstarted)
    }

    /// A deploy deletes the stack and creates it again (nothing in it is worth keeping).
    pub fn recreate(self) -> bool {
        matches!(self, StackPhase::Unstarted | StackPhase::FailedCreate)
    }
}

#[cfg(test)]
mod tests {
    use super::StackPhase::{self, *};

    #[test]
    fn every_status_has_one_meaning() {
        for (status, phase) in [
            (None, Absent),
            (Some("DELETE_COMPLETE"), Absent),
            (Some("CREATE_COMPLETE"), Ready),
            (Some("UPDATE_ROLLBACK_COMPLETE"), Ready),
            (Some("IMPORT_ROLLBACK_COMPLETE"), Ready),
            (Some("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"), InProgress),
            (Some("DELETE_IN_PROGRESS"), InProgress),
            (Some("REVIEW_IN_PROGRESS"), Unstarted),
            (Some("ROLLBACK_COMPLETE"), FailedCreate),
            (Some("UPDATE_ROLLBACK_FAILED"), Failed),
            (Some("DELETE_FAILED"), Failed),
            (Some("CREATE_FAILED"), Failed),
            (Some("SOMETHING_NEW"), Failed),
        ] {
            assert_eq!(StackPhase::of(status), phase, "{status:?}");
        }
    }

    #[test]
    fn a_wait_goes_on_through_review_and_ends_on_a_failed_create() {
        assert!(!StackPhase::of(Some("REVIEW_IN_PROGRESS")).settled());
        assert!(!StackPhase::of(Some("UPDATE_ROLLBACK_IN_PROGRESS")).settled());
        assert!(StackPhase::of(Some("ROLLBACK_COMPLETE")).settled());
        assert!(StackPhase::of(Some("UPDATE_ROLLBACK_FAILED")).settled());
        assert!(StackPhase::of(None).settled());
    }

    #[test]
    fn only_a_stack_with_nothing_in_it_is_made_again() {
        assert!(StackPhase::of(Some("ROLLBACK_COMPLETE")).recreate());
        assert!(StackPhase::of(Some("REVIEW_IN_PROGRESS")).recreate());
        assert!(!StackPhase::of(Some("UPDATE_ROLLBACK_COMPLETE")).recreate());
        assert!(!StackPhase::of(Some("DELETE_FAILED")).recreate());
    }
}
