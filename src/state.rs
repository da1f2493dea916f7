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
    /// The holder's process id on `host`: a lock whose process is gone from this very host is
    /// dead, and `--force-unlock` breaks it without waiting for the lease.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl Lock {
    pub fn expired(&self, now: u64) -> bool {
        now >= self.lease_expires
    }

    /// Held by a process on `host` that no longer runs (`alive` answers for a pid on this host).
    pub fn holder_gone(&self, host: &str, alive: impl Fn(u32) -> bool) -> bool {
        self.host == host && self.pid.is_some_and(|p| !alive(p))
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
    /// `--force-unlock --break-live-lock` on a live lock: take it over anyway.
    BreakLive,
    /// `--force-unlock` on a live lock without `--break-live-lock`: refuse.
    RefuseLive,
}

/// `holder_gone`: the holder's process is known to be dead (see [`Lock::holder_gone`]); such a
/// lock counts as expired.
pub fn decide_lock(
    existing: &Lock,
    now: u64,
    holder_gone: bool,
    force_unlock: bool,
    break_live: bool,
) -> LockDecision {
    match (
        force_unlock,
        existing.expired(now) || holder_gone,
        break_live,
    ) {
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
    /// The model version the colour serves.
    #[serde(default)]
    pub model_version: Option<String>,
    /// This run put `colour` live behind the edge and verified it there (a first `up`, a
    /// promote or a rollback): what `rollback` redeploys from once the colour is retired.
    #[serde(default)]
    pub went_live: bool,
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

    /// The release that was live before the one now live (`live`): what `rollback` puts back, and
    /// redeploys from its recorded image when that colour was retired. Verified go-lives stack up;
    /// a rollback pops the one it undid, so rolling back twice does not bring the bad one back.
    pub fn previous_live(&self, live: &str) -> Option<&Release> {
        let mut stack: Vec<&Release> = Vec::new();
        // `went_live` is written once the public URL answered from the colour, so it counts even
        // when the run died before closing its ledger entry.
        for r in self
            .releases
            .iter()
            .filter(|r| r.went_live && r.image_digest.is_some())
        {
            if r.action == "rollback" {
                stack.pop();
            }
            // The same colour going live again replaces its entry.
            if stack.last().is_some_and(|top| top.colour == r.colour) {
                stack.pop();
            }
            stack.push(r);
        }
        let top = stack.pop()?;
        if top.colour.as_deref() != Some(live) {
            return None;
        }
        stack.pop()
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
            pid: Some(42),
        }
    }

    #[test]
    fn a_live_lock_is_only_broken_with_force_and_break_live_lock() {
        assert_eq!(
            decide_lock(&lock(200), 150, false, false, true),
            LockDecision::Held
        );
        assert_eq!(
            decide_lock(&lock(200), 150, false, true, false),
            LockDecision::RefuseLive
        );
        assert_eq!(
            decide_lock(&lock(200), 150, false, true, true),
            LockDecision::BreakLive
        );
        assert_eq!(
            decide_lock(&lock(200), 250, false, true, false),
            LockDecision::BreakExpired
        );
        assert_eq!(
            decide_lock(&lock(200), 250, false, false, false),
            LockDecision::Held,
            "an expired lock still needs --force-unlock"
        );
    }

    #[test]
    fn a_lock_whose_process_is_gone_from_this_host_counts_as_expired() {
        let l = lock(200);
        assert!(l.holder_gone("h", |_| false));
        assert!(!l.holder_gone("h", |p| p == 42), "its process still runs");
        assert!(
            !l.holder_gone("other", |_| false),
            "a pid on another host says nothing"
        );
        let no_pid = Lock {
            pid: None,
            ..l.clone()
        };
        assert!(!no_pid.holder_gone("h", |_| false));
        assert_eq!(
            decide_lock(&l, 150, true, true, false),
            LockDecision::BreakExpired,
            "--force-unlock breaks a dead holder's lock without --break-live-lock"
        );
        assert_eq!(decide_lock(&l, 150, true, false, false), LockDecision::Held);
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
            model_version: None,
            went_live: false,
            steps: vec![],
            error: None,
        });
        assert_eq!(ledger.next_id(now), "20261118-002");
        assert_eq!(ledger.close_abandoned("other", now + 5), 1);
        assert_eq!(ledger.releases[0].outcome, Outcome::Failed);
        assert_eq!(ledger.close_abandoned("other", now + 6), 0);
    }

    fn went_live(action: &str, colour: &str, digest: &str, outcome: Outcome) -> Release {
        Release {
            id: digest.into(),
            action: action.into(),
            actor: "a".into(),
            ci_build_url: None,
            started: 1,
            finished: Some(2),
            outcome,
            colour: Some(colour.into()),
            image_tag: None,
            image_digest: Some(digest.into()),
            model_version: Some("1".into()),
            went_live: true,
            steps: vec![],
            error: None,
        }
    }

    fn digest_before(ledger: &Ledger, live: &str) -> Option<String> {
        ledger
            .previous_live(live)
            .and_then(|r| r.image_digest.clone())
    }

    #[test]
    fn the_previous_live_release_is_the_one_before_the_current_and_rollbacks_undo() {
        let mut candidate_only = went_live("up", "green", "d9", Outcome::Succeeded);
        candidate_only.went_live = false;
        let mut ledger = Ledger {
            releases: vec![
                went_live("up", "blue", "d1", Outcome::Succeeded),
                went_live("promote", "green", "d2", Outcome::Succeeded),
                went_live("promote", "blue", "d3", Outcome::Succeeded),
                went_live("promote", "green", "d4", Outcome::Failed),
                candidate_only,
            ],
        };
        assert_eq!(
            digest_before(&ledger, "green").as_deref(),
            Some("d3"),
            "a run that died after going live still counts (d4); an untested candidate does not (d9)"
        );
        ledger.releases.pop();
        ledger.releases.pop();
        assert_eq!(digest_before(&ledger, "blue").as_deref(), Some("d2"));
        assert_eq!(digest_before(&ledger, "green"), None, "green is not live");
        // A no-op `up` that confirms blue live again changes nothing.
        ledger
            .releases
            .push(went_live("up", "blue", "d3", Outcome::NothingToDo));
        assert_eq!(digest_before(&ledger, "blue").as_deref(), Some("d2"));
        // Roll back to green d2: the one before it is blue d1, not the blue d3 rolled back from.
        ledger
            .releases
            .push(went_live("rollback", "green", "d2", Outcome::Succeeded));
        assert_eq!(digest_before(&ledger, "green").as_deref(), Some("d1"));
        // And again, to blue d1: nothing was live before it.
        ledger
            .releases
            .push(went_live("rollback", "blue", "d1", Outcome::Succeeded));
        assert_eq!(digest_before(&ledger, "blue"), None);
        assert!(Ledger::default().previous_live("blue").is_none());
    }
}
