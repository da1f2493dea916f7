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
    /// How long the lease runs from each write of the lock: judged from the store's own clock
    /// (the object's Last-Modified against the store's Date, [`Lock::on_store_clock`]), never
    /// the holder's, whose clock may be off or whose laptop slept.
    #[serde(default)]
    pub lease_seconds: Option<u64>,
    /// The holding process, as exactly as it can be told apart: a lock whose process is gone is
    /// dead, and `--force-unlock` breaks it without waiting for the lease.
    #[serde(default)]
    pub process: Option<Process>,
}

/// A process, told apart from every other: a hostname and a pid alone are not enough (hosts
/// share names; containers share pids; pids are reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// The kernel's boot id (Linux: /proc/sys/kernel/random/boot_id): one machine, one boot.
    pub boot_id: String,
    /// The pid namespace it runs in (Linux: /proc/self/ns/pid): the same pid in two containers
    /// is two processes.
    pub pid_ns: String,
    /// When it started, in clock ticks after boot (/proc/<pid>/stat, field 22): a later process
    /// that reused the pid started at another time.
    pub start_ticks: u64,
}

/// What this machine can tell of a pid in its own pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidState {
    /// No process has it (kill(2) with signal 0 says ESRCH).
    Gone,
    /// A process has it, started at these clock ticks after boot.
    Started(u64),
    /// A process has it, and when it started cannot be read (`/proc` mounted with `hidepid`,
    /// another user's process): it may be the holder, so it is never taken for gone.
    Unknown,
}

impl Lock {
    pub fn expired(&self, now: u64) -> bool {
        now >= self.lease_expires
    }

    /// Held by a process that is known to be gone: it ran on this very machine and boot
    /// (`here`: this process) in the same pid namespace, and `started` (when the process with
    /// that pid started, if there is one) says it is no longer there. Anything else, a lock
    /// from another host, even one of the same name, or one that names no process, is not
    /// known to be dead.
    pub fn holder_gone(&self, here: Option<&Process>, pid: impl Fn(u32) -> PidState) -> bool {
        match (&self.process, here) {
            (Some(holder), Some(here))
                if holder.boot_id == here.boot_id && holder.pid_ns == here.pid_ns =>
            {
                match pid(holder.pid) {
                    PidState::Gone => true,
                    PidState::Started(at) => at != holder.start_ticks,
                    PidState::Unknown => false,
                }
            }
            _ => false,
        }
    }

    /// The lock with its lease measured on the store's clock: from `written` (when the store
    /// last wrote it), for its lease. A lock from before the lease was recorded keeps its own.
    pub fn on_store_clock(mut self, written: u64) -> Lock {
        if let Some(lease) = self.lease_seconds {
            self.lease_expires = written + lease;
        }
        self
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
    /// Its number: it names the release's object, `releases/<seq>.json`.
    #[serde(default)]
    pub seq: u64,
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
    /// The sha256 of the model the image ships (its `release.model.sha256` label): what the
    /// colour's `/version` must report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// A promote's shadow figures (`smoke.shadow`): how the live colour's real answers compared
    /// with the candidate's when it was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<serde_json::Value>,
    /// A running bake's latest look (its step, and the figures so far): what `status` shows
    /// while another process bakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baking: Option<String>,
    /// This run put `colour` live behind the edge and verified it there (a first `up`, a
    /// promote or a rollback): what `rollback` redeploys from once the colour is retired.
    #[serde(default)]
    pub went_live: bool,
    /// The go-live under this one on the rollback stack (its `seq`): what a rollback from this
    /// release puts back. Set when it went live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_below: Option<u64>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The ledger as one document, `ledger.json`: how releases were stored before the ledger became
/// one object per release. Read once, to move it into the new layout ([`migrate`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub releases: Vec<Release>,
}

/// The ledger's small head (`ledger-head.json`): all a run reads to open its entry, close the
/// entries of runs that died, and find what to roll back to. Each release is an object of its
/// own (`releases/<seq>.json`), so what a run moves does not grow with the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The number the next release gets. Taken by rewriting the head with `If-Match`, so two runs
    /// never get the same one, and a deleted entry never frees its number.
    pub next: u64,
    /// Releases opened and not closed yet: after a crash, the next run closes them.
    #[serde(default)]
    pub open: Vec<u64>,
    /// The newest verified go-live still on the rollback stack (see [`Release::live_below`]).
    #[serde(default)]
    pub live_top: Option<u64>,
    /// `ledger.json` holds the note that the ledger moved, which an older `release` refuses
    /// (written once per bucket, whether or not an old ledger was there).
    #[serde(default)]
    pub legacy_marked: bool,
}

impl Head {
    /// Take the next release number and mark it open.
    pub fn open_release(&mut self) -> u64 {
        let seq = self.next.max(1);
        self.next = seq + 1;
        self.open.push(seq);
        seq
    }
}

/// A release's id: its day and its number (`20261205-000124`); the number names its object.
pub fn release_id(seq: u64, now: u64) -> String {
    let day = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(now),
    )
    .to_string();
    format!("{}-{seq:06}", day[..10].replace('-', ""))
}

/// The number in an id made by [`release_id`].
pub fn seq_of(id: &str) -> Option<u64> {
    let (day, seq) = id.split_once('-')?;
    (day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()) && seq.len() >= 6)
        .then(|| seq.parse().ok())
        .flatten()
}

/// The go-live a new one of `action` to `colour` goes on top of, from the rollback stack as it
/// is (`stack`: the top, then each one below it, as far as it is known; three are enough).
/// Verified go-lives stack up; a rollback pops the one it undid, and the same colour going live
/// again replaces its entry, so rolling back twice does not bring the bad one back.
pub fn go_live_below(action: &str, colour: &str, stack: &[Release]) -> Option<u64> {
    let mut i = usize::from(action == "rollback");
    if stack
        .get(i)
        .is_some_and(|t| t.colour.as_deref() == Some(colour))
    {
        i += 1;
    }
    stack.get(i).map(|r| r.seq)
}

/// The release that was live before the one now live (`live`), from the rollback stack (its top
/// first): what `rollback` puts back, and redeploys from its recorded image when that colour was
/// retired.
pub fn previous_live<'a>(live: &str, stack: &'a [Release]) -> Option<&'a Release> {
    rollback_line(live, stack).first().copied()
}

/// What successive rollbacks from `live` put back, the next one first: the rest of the rollback
/// stack under the top, when the top is what is live (a rollback pops the one it undid, so the
/// second rollback brings back the one under the first's). Empty when the ledger does not know
/// what is live.
pub fn rollback_line<'a>(live: &str, stack: &'a [Release]) -> Vec<&'a Release> {
    match stack.first() {
        Some(top) if top.colour.as_deref() == Some(live) => stack[1..].iter().collect(),
        _ => Vec::new(),
    }
}

/// Whether `r` counts on the rollback stack: it went live (written once the public URL answered
/// from its colour, so it counts even when its run died before closing its entry) with a known
/// image.
pub fn on_rollback_stack(r: &Release) -> bool {
    r.went_live && r.image_digest.is_some()
}

/// The one-document ledger moved into the new layout: each release numbered in order (their ids
/// stay as they were), the rollback stack linked, the open ones listed.
pub fn migrate(legacy: Ledger) -> (Head, Vec<Release>) {
    let mut head = Head::default();
    let mut releases: Vec<Release> = Vec::new();
    for mut r in legacy.releases {
        r.seq = head.open_release();
        if r.outcome != Outcome::InProgress {
            head.open.pop();
        }
        if on_rollback_stack(&r) {
            let stack = stack_from(head.live_top, |s| releases.get(s as usize - 1).cloned());
            r.live_below = go_live_below(&r.action, r.colour.as_deref().unwrap_or(""), &stack);
            head.live_top = Some(r.seq);
        }
        releases.push(r);
    }
    (head, releases)
}

/// How much of the rollback stack a decision needs: [`go_live_below`] looks three deep.
pub const STACK_DEPTH: usize = 3;

/// The top of the rollback stack, from `top`, reading each release with `read`.
pub fn stack_from(top: Option<u64>, mut read: impl FnMut(u64) -> Option<Release>) -> Vec<Release> {
    let mut stack = Vec::new();
    let mut at = top;
    while let Some(seq) = at.filter(|_| stack.len() < STACK_DEPTH) {
        let Some(r) = read(seq) else { break };
        at = r.live_below;
        stack.push(r);
    }
    stack
}

/// The reason a release that died without finishing is closed as failed.
pub const ABANDONED: &str = "the run ended without finishing (crash or kill); the next command re-planned from what was really there";

impl Release {
    /// Close an entry whose run is gone (the lock is ours now): a crash. False when it was closed
    /// already.
    pub fn close_abandoned(&mut self, now: u64) -> bool {
        if self.outcome != Outcome::InProgress {
            return false;
        }
        self.outcome = Outcome::Failed;
        self.finished = Some(now);
        self.error = Some(ABANDONED.into());
        true
    }
}

/// What a rollback redeploys, read back from a release: its digest, model version and model
/// sha256, checked before they reach a manifest (whoever can write the state bucket must not be
/// able to put anything else into a pod spec).
pub fn go_live_of(r: &Release) -> std::result::Result<crate::plan::flip::GoLive, String> {
    let digest = r.image_digest.clone().ok_or("no image digest")?;
    check_digest(&digest)?;
    if let Some(v) = &r.model_version {
        check_model_version(v)?;
    }
    if let Some(h) = &r.model_sha256 {
        check_model_sha256(h)?;
    }
    Ok(crate::plan::flip::GoLive {
        digest,
        model_version: r.model_version.clone(),
        model_sha256: r.model_sha256.clone(),
    })
}

/// A model's sha256: 64 lowercase hex digits.
pub fn check_model_sha256(h: &str) -> std::result::Result<(), String> {
    if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a model sha256 (64 lowercase hex digits)"
        ))
    }
}

/// An OCI image digest as ECR names it: `sha256:` and 64 lowercase hex digits.
pub fn check_digest(d: &str) -> std::result::Result<(), String> {
    let hex = d.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "{d:?} is not an image digest (sha256: and 64 hex digits)"
        ))
    }
}

/// A model version: 1 to 64 of letters, digits and `.`, `_`, `+`, `-` (what an annotation and
/// an environment variable carry without quoting).
pub fn check_model_version(v: &str) -> std::result::Result<(), String> {
    if (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a model version (1 to 64 letters, digits, '.', '_', '+', '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32) -> Process {
        Process {
            pid,
            boot_id: "boot-a".into(),
            pid_ns: "pid:[4026531836]".into(),
            start_ticks: 1000,
        }
    }

    fn lock(expires: u64) -> Lock {
        Lock {
            owner: "ci".into(),
            host: "h".into(),
            command: "up".into(),
            ci_build_url: Some("https://ci/1".into()),
            started: 100,
            lease_expires: expires,
            lease_seconds: None,
            process: Some(process(42)),
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
    fn a_holder_is_dead_only_when_its_very_process_is_gone_from_this_machine() {
        let l = lock(200);
        let here = process(7);
        use PidState::{Gone, Started, Unknown};
        assert!(l.holder_gone(Some(&here), |_| Gone), "no process 42 here");
        assert!(
            l.holder_gone(Some(&here), |_| Started(5000)),
            "pid 42 reused by a process that started later"
        );
        assert!(
            !l.holder_gone(Some(&here), |p| if p == 42 { Started(1000) } else { Gone }),
            "its process still runs"
        );
        assert!(
            !l.holder_gone(Some(&here), |_| Unknown),
            "a process has the pid and /proc hides when it started (hidepid)"
        );
        let other_host = Process {
            boot_id: "boot-b".into(),
            ..here.clone()
        };
        assert!(
            !l.holder_gone(Some(&other_host), |_| Gone),
            "a pid on another machine (whatever its hostname) says nothing"
        );
        let other_container = Process {
            pid_ns: "pid:[4026532000]".into(),
            ..here.clone()
        };
        assert!(!l.holder_gone(Some(&other_container), |_| Gone));
        let unknown = Lock {
            process: None,
            ..l.clone()
        };
        assert!(!unknown.holder_gone(Some(&here), |_| Gone));
        assert!(!l.holder_gone(None, |_| Gone), "this machine cannot tell");
        assert_eq!(
            decide_lock(&l, 150, true, true, false),
            LockDecision::BreakExpired,
            "--force-unlock breaks a dead holder's lock without --break-live-lock"
        );
        assert_eq!(decide_lock(&l, 150, true, false, false), LockDecision::Held);
    }

    #[test]
    fn the_lease_runs_on_the_stores_clock_not_the_holders() {
        // The holder's clock was two hours behind: by it the lease ran out long ago.
        let skewed = Lock {
            started: 1_000,
            lease_expires: 1_120,
            lease_seconds: Some(120),
            ..lock(0)
        };
        let judged = skewed.clone().on_store_clock(8_200);
        assert_eq!(judged.lease_expires, 8_320);
        assert!(
            !judged.expired(8_250),
            "written 50 s ago by the store's clock"
        );
        assert!(judged.expired(8_320));
        assert_eq!(
            Lock {
                lease_seconds: None,
                ..skewed.clone()
            }
            .on_store_clock(8_200)
            .lease_expires,
            1_120,
            "a lock that recorded no lease keeps its own"
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
    fn release_numbers_come_from_the_head_and_never_repeat() {
        let mut head = Head::default();
        let now = 1_795_000_000; // 2026-11-18
        let first = head.open_release();
        assert_eq!(release_id(first, now), "20261118-000001");
        assert_eq!(seq_of(&release_id(first, now)), Some(1));
        let second = head.open_release();
        assert_eq!((second, head.open.clone()), (2, vec![1, 2]));
        // Closing (or deleting) an entry frees no number: ids do not collide.
        head.open.clear();
        assert_eq!(head.open_release(), 3);
        assert_eq!(seq_of(&release_id(1_234_567, now)), Some(1_234_567));
        for legacy in [
            "20261118-001",
            "x-000001",
            "2026111-000001",
            "20261118-00000a",
        ] {
            assert_eq!(seq_of(legacy), None, "{legacy}");
        }
    }

    #[test]
    fn an_abandoned_release_is_closed_once() {
        let mut r = went_live("up", "blue", "d1", Outcome::InProgress);
        assert!(r.close_abandoned(7));
        assert_eq!((r.outcome, r.finished), (Outcome::Failed, Some(7)));
        assert!(!r.close_abandoned(8), "closed already");
        assert_eq!(r.finished, Some(7));
    }

    #[test]
    fn values_read_back_from_the_ledger_are_checked_before_they_reach_a_manifest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let mut r = went_live("promote", "blue", &digest, Outcome::Succeeded);
        let g = go_live_of(&r).unwrap();
        assert_eq!(
            (g.digest, g.model_version),
            (digest.clone(), Some("1".into()))
        );
        assert_eq!(
            g.model_sha256, None,
            "a release recorded before the sha256 was"
        );
        r.model_sha256 = Some("ab".repeat(32));
        assert_eq!(go_live_of(&r).unwrap().model_sha256, r.model_sha256);
        for bad in [
            "AB".repeat(32),
            "ab".repeat(31),
            format!("{}\"x", "ab".repeat(32)),
        ] {
            r.model_sha256 = Some(bad.clone());
            assert!(
                go_live_of(&r).unwrap_err().contains("not a model sha256"),
                "{bad}"
            );
        }
        r.model_sha256 = None;
        r.model_version = Some("1\"\n    evil: true".into());
        assert!(go_live_of(&r).unwrap_err().contains("not a model version"));
        r.model_version = Some("2.1.0+build_7-rc".into());
        assert!(go_live_of(&r).is_ok());
        for bad in [
            "sha256:AB".to_string(),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}\nx", "a".repeat(64)),
        ] {
            r.image_digest = Some(bad.clone());
            assert!(
                go_live_of(&r).unwrap_err().contains("not an image digest"),
                "{bad}"
            );
        }
        r.image_digest = None;
        assert!(go_live_of(&r).is_err());
        assert!(check_model_version(&"a".repeat(65)).is_err());
        assert!(check_model_version("").is_err());
    }

    fn went_live(action: &str, colour: &str, digest: &str, outcome: Outcome) -> Release {
        Release {
            id: digest.into(),
            seq: 0,
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
            model_sha256: None,
            shadow: None,
            baking: None,
            went_live: true,
            live_below: None,
            steps: vec![],
            error: None,
        }
    }

    /// The digest a rollback from `live` puts back: the ledger moved into the new layout, then
    /// the rollback stack read from its head.
    fn digest_before(ledger: &Ledger, live: &str) -> Option<String> {
        let (head, releases) = migrate(ledger.clone());
        let stack = stack_from(head.live_top, |s| releases.get(s as usize - 1).cloned());
        previous_live(live, &stack).and_then(|r| r.image_digest.clone())
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
        assert_eq!(digest_before(&Ledger::default(), "blue"), None);
    }

    /// The images every rollback in a row puts back are what the rollback slots keep: the
    /// line from the top of the stack is what the rollbacks, one after another, really deploy.
    #[test]
    fn the_rollback_line_is_what_rollbacks_in_a_row_put_back() {
        let mut ledger = Ledger {
            releases: vec![
                went_live("up", "blue", "d1", Outcome::Succeeded),
                went_live("promote", "green", "d2", Outcome::Succeeded),
                went_live("promote", "blue", "d3", Outcome::Succeeded),
            ],
        };
        let line = |ledger: &Ledger, live: &str| {
            let (head, releases) = migrate(ledger.clone());
            let stack = stack_from(head.live_top, |s| releases.get(s as usize - 1).cloned());
            rollback_line(live, &stack)
                .iter()
                .map(|r| r.image_digest.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(line(&ledger, "blue"), ["d2", "d1"]);
        assert_eq!(
            line(&ledger, "green"),
            Vec::<String>::new(),
            "not what is live"
        );
        // The first rollback puts d2 back; the next one deploys d1, as the line said.
        ledger
            .releases
            .push(went_live("rollback", "green", "d2", Outcome::Succeeded));
        assert_eq!(line(&ledger, "green"), ["d1"]);
        assert_eq!(digest_before(&ledger, "green").as_deref(), Some("d1"));
    }

    #[test]
    fn the_move_to_one_object_per_release_numbers_them_in_order_and_keeps_the_open_ones() {
        let mut open = went_live("up", "green", "d2", Outcome::InProgress);
        open.went_live = false;
        let ledger = Ledger {
            releases: vec![went_live("up", "blue", "d1", Outcome::Succeeded), open],
        };
        let (head, releases) = migrate(ledger);
        assert_eq!(
            releases
                .iter()
                .map(|r| (r.seq, r.id.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "d1"), (2, "d2")],
            "numbered in order, ids kept"
        );
        assert_eq!(
            head,
            Head {
                next: 3,
                open: vec![2],
                live_top: Some(1),
                legacy_marked: false,
            }
        );
    }
}
