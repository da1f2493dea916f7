//! The ledger (every release, its steps and results) and the lock, as stored in the state bucket,
//! and the decisions about them. Pure: no I/O; `store.rs` reads and writes them with S3's
//! conditional writes.

use serde::{Deserialize, Serialize};

/// Who holds the lock on an app, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub owner: String,
    pub host: String,
    pub command: String,
    #[serde(default)]
    pub ci_build_url: Option<String>,
    /// Unix seconds.
    pub started: u64,
    pub lease_expires: u64,
}

impl Lock {
    pub fn expired(&self, now: u64) -> bool {
        now >= self.lease_expires
    }

    pub fn describe(&self, now: u64) -> String {
        let since = now.saturating_sub(self.started);
        let ci = self
            .ci_build_url
            .as_deref()
            .map(|u| format!(", CI build {u}"))
            .unwrap_or_default();
        let lease = if self.expired(now) {
            format!("lease expired {} s ago", now - self.lease_expires)
        } else {
            format!("lease valid for {} s more", self.lease_expires - now)
        };
        format!(
            "{} on {} running `{}`{ci}, for {since} s ({lease})",
            self.owner, self.host, self.command
        )
    }
}

/// What to do about a lock found in place when we want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockDecision {
    /// Someone else holds it: stop.
    Held,
    /// Its lease expired and `--force-unlock` was given: take it over.
    BreakExpired,
    /// `--force-unlock --yes` on a live lock: take it over anyway.
    BreakLive,
    /// `--force-unlock` on a live lock without `--yes`: refuse.
    RefuseLive,
}

pub fn decide_lock(existing: &Lock, now: u64, force_unlock: bool, yes: bool) -> LockDecision {
    match (force_unlock, existing.expired(now), yes) {
        (false, _, _) => LockDecision::Held,
        (true, true, _) => LockDecision::BreakExpired,
        (true, false, true) => LockDecision::BreakLive,
        (true, false, false) => LockDecision::RefuseLive,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    InProgress,
    Succeeded,
    NothingToDo,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub action: String,
    pub actor: String,
    #[serde(default)]
    pub ci_build_url: Option<String>,
    pub started: u64,
    #[serde(default)]
    pub finished: Option<u64>,
    pub outcome: Outcome,
    #[serde(default)]
    pub colour: Option<String>,
    #[serde(default)]
    pub image_tag: Option<String>,
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub releases: Vec<Release>,
}

impl Ledger {
    /// A new release id: the date and a counter, unique within this ledger.
    pub fn next_id(&self, now: u64) -> String {
        let day = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(now),
        )
        .to_string();
        let day = day[..10].replace('-', "");
        let n = self
            .releases
            .iter()
            .filter(|r| r.id.starts_with(&day))
            .count()
            + 1;
        format!("{day}-{n:03}")
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.id == id)
    }

    /// Releases still marked in progress whose run is gone (the lock is ours now): a crash.
    pub fn close_abandoned(&mut self, except: &str, now: u64) -> usize {
        let mut n = 0;
        for r in self
            .releases
            .iter_mut()
            .filter(|r| r.outcome == Outcome::InProgress && r.id != except)
        {
            r.outcome = Outcome::Failed;
            r.finished = Some(now);
            r.error = Some("the run ended without finishing (crash or kill); the next command re-planned from what was really there".into());
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(expires: u64) -> Lock {
        Lock {
            owner: "ci".into(),
            host: "h".into(),
            command: "up".into(),
            ci_build_url: Some("https://ci/1".into()),
            started: 100,
            lease_expires: expires,
        }
    }

    #[test]
    fn a_live_lock_is_only_broken_with_force_and_yes() {
        assert_eq!(
            decide_lock(&lock(200), 150, false, true),
            LockDecision::Held
        );
        assert_eq!(
            decide_lock(&lock(200), 150, true, false),
            LockDecision::RefuseLive
        );
        assert_eq!(
            decide_lock(&lock(200), 150, true, true),
            LockDecision::BreakLive
        );
        assert_eq!(
            decide_lock(&lock(200), 250, true, false),
            LockDecision::BreakExpired
        );
        assert_eq!(
            decide_lock(&lock(200), 250, false, false),
            LockDecision::Held,
            "an expired lock still needs --force-unlock"
        );
    }

    #[test]
    fn the_lock_says_who_holds_it_and_since_when() {
        let d = lock(200).describe(160);
        assert!(
            d.contains("ci on h running `up`")
                && d.contains("https://ci/1")
                && d.contains("for 60 s")
                && d.contains("40 s more"),
            "{d}"
        );
        assert!(lock(200).describe(230).contains("expired 30 s ago"));
    }

    #[test]
    fn release_ids_are_unique_per_day_and_abandoned_runs_are_closed() {
        let mut ledger = Ledger::default();
        let now = 1_795_000_000; // 2026-11-18
        let id = ledger.next_id(now);
        assert_eq!(id, "20261118-001");
        ledger.releases.push(Release {
            id: id.clone(),
            action: "up".into(),
            actor: "a".into(),
            ci_build_url: None,
            started: now,
            finished: None,
            outcome: Outcome::InProgress,
            colour: None,
            image_tag: None,
            image_digest: None,
            steps: vec![],
            error: None,
        });
        assert_eq!(ledger.next_id(now), "20261118-002");
        assert_eq!(ledger.close_abandoned("other", now + 5), 1);
        assert_eq!(ledger.releases[0].outcome, Outcome::Failed);
        assert_eq!(ledger.close_abandoned("other", now + 6), 0);
    }
}
