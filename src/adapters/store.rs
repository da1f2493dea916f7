//! The state bucket: the lock (created with `If-None-Match: *`, renewed and released with
//! `If-Match` on its ETag) and the ledger (read, changed, written back with `If-Match`, retried on
//! a conflict, so no update is ever lost).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::Mutex;

use crate::error::{Exit, Failure, Result, sdk};
use crate::state::{
    Head, Ledger, Lock, LockDecision, Outcome, PidState, Process, Release, STACK_DEPTH,
    decide_lock, go_live_below, migrate, on_rollback_stack, previous_live, release_id,
    rollback_line, seq_of,
};

/// The ledger's head (`state::Head`), and the one-document ledger it replaced.
const HEAD: &str = "ledger-head.json";
const LEGACY: &str = "ledger.json";

/// The field that marks `ledger.json` as moved. What is left there after a migration: its
/// `releases` a string, so an older `release`, which would read a missing list as an empty
/// ledger and start over, refuses it instead and says why.
const MOVED: &str = "moved_to";

fn moved_ledger() -> serde_json::Value {
    serde_json::json!({
        MOVED: HEAD,
        "releases": "moved to ledger-head.json and releases/ by a newer release: upgrade release to read this ledger",
    })
}

/// Where release `seq` is kept.
fn release_key(seq: u64) -> String {
    format!("releases/{seq:010}.json")
}

/// When a write may happen.
#[derive(Clone, Copy)]
enum WriteIf<'a> {
    /// Only if there is no such object yet (`If-None-Match: *`).
    Absent,
    /// Only if the object is still the one with this ETag (`If-Match`).
    Unchanged(&'a str),
    /// Whatever is there (only for what one run alone writes under the lock).
    Always,
}

/// The head as stored (with its ETag), or, while there is none, what the one-document ledger
/// becomes in the new layout (its releases not written yet).
struct HeadRead {
    head: Head,
    etag: Option<String>,
    migrated: Vec<Release>,
}

/// This process as a lock records it (Linux: /proc); None where /proc cannot tell, and then no
/// holder is ever taken for dead.
pub fn this_process() -> Option<Process> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let pid = std::process::id();
    Some(Process {
        pid,
        boot_id: boot_id.trim().to_string(),
        pid_ns: pid_ns.to_string_lossy().into_owned(),
        start_ticks: started_at(pid)?,
    })
}

/// When process `pid` of this pid namespace started (clock ticks after boot, proc(5)'s
/// `/proc/<pid>/stat` field 22), or None when there is no such process.
pub fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// What this machine knows of `pid`: kill(2) with signal 0 tells whether a process has it
/// (ESRCH: none; EPERM: one, of another user), then `/proc` when it started. Only ESRCH makes it
/// gone: an unreadable `/proc/<pid>` (hidepid) is not taken for a missing process.
pub fn pid_state(pid: u32) -> PidState {
    let Ok(raw) = i32::try_from(pid) else {
        return PidState::Unknown;
    };
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    if unsafe { libc::kill(raw, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return PidState::Gone;
    }
    started_at(pid).map_or(PidState::Unknown, PidState::Started)
}

/// Whether `lock`'s holder is known to be gone (`Lock::holder_gone` for this process).
pub fn holder_gone(lock: &Lock) -> bool {
    lock.holder_gone(this_process().as_ref(), pid_state)
}

/// The `Date` an S3 answer carries: the store's clock, which a lease is judged by.
#[derive(Debug, Clone, Default)]
struct StoreClock(Arc<std::sync::Mutex<Option<u64>>>);

impl aws_sdk_s3::config::Intercept for StoreClock {
    fn name(&self) -> &'static str {
        "StoreClock"
    }

    fn read_after_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_s3::error::BoxError> {
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| {
                aws_sdk_s3::primitives::DateTime::from_str(
                    d,
                    aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
                )
                .ok()
            })
            .and_then(|d| u64::try_from(d.secs()).ok());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = date;
        Ok(())
    }
}

/// A lock as found, judged on the store's clock: its lease from when S3 last wrote it, and
/// S3's time now.
pub struct FoundLock {
    pub lock: Lock,
    etag: String,
    pub now: u64,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct StateStore {
    s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// The account that must own the bucket: every call says so (`ExpectedBucketOwner`; S3
    /// answers 403 when another account owns it, S3 User Guide, "Verifying bucket ownership with
    /// bucket owner condition").
    owner: Option<String>,
    app: String,
}

/// A lock we hold: its ETag, for renewal and release, and whether we have learnt that it is no
/// longer ours (a renewal found another run's lock).
#[derive(Clone)]
pub struct HeldLock {
    etag: Arc<Mutex<String>>,
    pub lock: Lock,
    lease: u64,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl HeldLock {
    fn new(etag: String, lock: Lock, lease: u64) -> Self {
        HeldLock {
            etag: Arc::new(Mutex::new(etag)),
            lock,
            lease,
            lost: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// This run has learnt that another one holds the lock now.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn conflict<E: ProvideErrorMetadata>(e: &E, status: Option<u16>) -> bool {
    matches!(
        e.code(),
        Some("PreconditionFailed") | Some("ConditionalRequestConflict")
    ) || matches!(status, Some(412) | Some(409))
}

fn step_failure(step: &str, what: String, bucket: &str) -> Failure {
    Failure::new(
        Exit::Aws,
        step,
        what,
        format!(
            "check that the state bucket {bucket} exists (the registry stack makes it) and that your credentials may read and write it; re-run"
        ),
    )
}

impl StateStore {
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, owner: Option<String>, app: String) -> Self {
        StateStore {
            s3,
            bucket,
            owner,
            app,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("apps/{}/{name}", self.app)
    }

    pub async fn bucket_exists(&self) -> Result<bool> {
        match self
            .s3
            .head_bucket()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            // HeadBucket answers 403 when the bucket exists and this identity may not read it:
            // most often a name another account took (S3 names are global), else missing rights
            // (S3 API reference, HeadBucket: "403 Forbidden" vs "404 Not Found").
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                Err(Failure::new(
                    Exit::Aws,
                    "state bucket",
                    format!(
                        "{} exists but this identity may not read it: an AWS account other than {} owns that name (every call names that owner; bucket names are global), or the role lacks s3:ListBucket on it",
                        self.bucket,
                        self.owner.as_deref().unwrap_or("(unknown)")
                    ),
                    "leave state.bucket out (the default is unique to the account and region) or choose a name of your own; if the bucket is yours but in another account, set state.bucket_owner to that account's id; else grant the role access to it",
                ))
            }
            Err(e) => Err(step_failure("state bucket", sdk(e), &self.bucket)),
        }
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<(T, String)>> {
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(self.key(name))
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| step_failure("state", e.to_string(), &self.bucket))?
                    .into_bytes();
                let value = serde_json::from_slice(&bytes).map_err(|e| {
                    Failure::new(
                        Exit::Aws,
                        "state",
                        format!("s3://{}/{} is not valid: {e}", self.bucket, self.key(name)),
                        "restore an earlier version from the bucket's versioning",
                    )
                })?;
                Ok(Some((value, etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(step_failure("state", sdk(e), &self.bucket)),
        }
    }

    /// Write `value` if `when` allows. `Ok(None)` is a lost race: someone wrote first.
    async fn write<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        when: WriteIf<'_>,
    ) -> Result<Option<String>> {
        let body = serde_json::to_vec_pretty(value).expect("state serialises");
        let mut put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(self.key(name))
            .content_type("application/json")
            .body(ByteStream::from(body));
        put = match when {
            WriteIf::Unchanged(e) => put.if_match(e),
            WriteIf::Absent => put.if_none_match("*"),
            WriteIf::Always => put,
        };
        match put.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if e.as_service_error().is_some_and(|s| conflict(s, status)) {
                    Ok(None)
                } else {
                    Err(step_failure("state", sdk(e), &self.bucket))
                }
            }
        }
    }

    /// The lock, if any, judged on S3's clock (`Lock::on_store_clock`; this host's clock only
    /// where S3 says no time).
    pub async fn read_lock(&self) -> Result<Option<FoundLock>> {
        let clock = StoreClock::default();
        let got = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(self.key("lock.json"))
            .customize()
            .interceptor(clock.clone())
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(step_failure("lock", sdk(e), &self.bucket)),
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        let written = out
            .last_modified()
            .and_then(|t| u64::try_from(t.secs()).ok());
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| step_failure("lock", e.to_string(), &self.bucket))?
            .into_bytes();
        let lock: Lock = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                Exit::Aws,
                "lock",
                format!(
                    "s3://{}/{} is not a lock: {e}",
                    self.bucket,
                    self.key("lock.json")
                ),
                "if no run is going, delete it (or restore an earlier version)",
            )
        })?;
        let store_now = *clock.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(FoundLock {
            lock: match written {
                Some(w) => lock.on_store_clock(w),
                None => lock,
            },
            etag,
            now: store_now.unwrap_or_else(now),
        }))
    }

    /// What `acquire` would do about `existing`: break it, or the failure that says who holds it.
    fn decide(
        &self,
        existing: &Lock,
        now: u64,
        gone: bool,
        force_unlock: bool,
        yes: bool,
    ) -> Result<LockDecision> {
        match decide_lock(existing, now, gone, force_unlock, yes) {
            LockDecision::Held if gone => Err(Failure::new(
                Exit::Locked,
                "lock",
                format!(
                    "{} is locked by a run that died: {} (process {} is gone from this host)",
                    self.app,
                    existing.describe(now),
                    existing.process.as_ref().map_or(0, |p| p.pid)
                ),
                "re-run with --force-unlock; the command re-plans from what is really there",
            )),
            LockDecision::Held => Err(Failure::new(
                Exit::Locked,
                "lock",
                format!(
                    "another release holds {}: {}",
                    self.app,
                    existing.describe(now)
                ),
                "wait for that run to finish; if it died, re-run with --force-unlock once its lease has expired (docs/runbook.md)",
            )),
            LockDecision::RefuseLive => Err(Failure::new(
                Exit::Locked,
                "lock",
                format!("refusing to break a live lock: {}", existing.describe(now)),
                "make sure that run is really gone, then add --break-live-lock to break it anyway (--yes does not)",
            )),
            d => Ok(d),
        }
    }

    /// `--dry-run`'s lock check: fail as `acquire` would (exit 4 when another run holds the
    /// lock), write nothing.
    pub async fn check_lock(&self, force_unlock: bool, yes: bool) -> Result<()> {
        if !self.bucket_exists().await? {
            return Ok(());
        }
        if let Some(found) = self.read_lock().await? {
            let gone = holder_gone(&found.lock);
            self.decide(&found.lock, found.now, gone, force_unlock, yes)?;
        }
        Ok(())
    }

    /// Take the app's lock, or fail with who holds it.
    pub async fn acquire(
        &self,
        mut lock: Lock,
        lease: u64,
        force_unlock: bool,
        yes: bool,
    ) -> Result<HeldLock> {
        for _ in 0..5 {
            let now = now();
            lock.started = now;
            lock.lease_expires = now + lease;
            lock.lease_seconds = Some(lease);
            if let Some(etag) = self.write("lock.json", &lock, WriteIf::Absent).await? {
                return Ok(HeldLock::new(etag, lock, lease));
            }
            let Some(found) = self.read_lock().await? else {
                continue;
            };
            let gone = holder_gone(&found.lock);
            // Ok only when the lock may be broken (an expired lease, or --force-unlock --break-live-lock).
            self.decide(&found.lock, found.now, gone, force_unlock, yes)?;
            if let Some(new_etag) = self
                .write("lock.json", &lock, WriteIf::Unchanged(&found.etag))
                .await?
            {
                return Ok(HeldLock::new(new_etag, lock, lease));
            }
        }
        Err(Failure::new(
            Exit::Locked,
            "lock",
            "the lock kept changing under us",
            "another run is starting at the same time; retry",
        ))
    }

    /// Extend the lease. Fails if the lock is no longer ours (someone broke it).
    pub async fn renew(&self, held: &HeldLock) -> Result<()> {
        let mut etag = held.etag.lock().await;
        let mut lock = held.lock.clone();
        lock.lease_expires = now() + held.lease;
        match self
            .write("lock.json", &lock, WriteIf::Unchanged(&etag))
            .await?
        {
            Some(new) => {
                *etag = new;
                Ok(())
            }
            None => {
                held.mark_lost();
                Err(Failure::new(
                    Exit::Locked,
                    "lock",
                    "our lock was broken by another run (--force-unlock)",
                    "check `release status` and the ledger before re-running",
                ))
            }
        }
    }

    /// The lock is still `held`'s: lock.json is the object this run last wrote (a conditional
    /// HEAD on its ETag; S3 answers 412 for another run's lock, 404 for none). A lock another run
    /// took, or one that is gone, is lost for good.
    pub async fn still_held(&self, held: &HeldLock) -> Result<bool> {
        if held.lost() {
            return Ok(false);
        }
        let etag = held.etag.lock().await.clone();
        let head = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(self.key("lock.json"))
            .if_match(etag.as_str())
            .send()
            .await;
        match head {
            Ok(_) => Ok(true),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(412) | Some(404)) {
                    held.mark_lost();
                    return Ok(false);
                }
                Err(step_failure("lock", sdk(e), &self.bucket))
            }
        }
    }

    /// Renew every third of the lease until the returned handle is dropped or aborted.
    pub fn keep_renewed(&self, held: &HeldLock) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let held = held.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs((held.lease / 3).max(5))).await;
                if let Err(e) = store.renew(&held).await {
                    tracing::warn!(error = %e, "lock renewal failed");
                }
            }
        })
    }

    pub async fn release(&self, held: &HeldLock) -> Result<()> {
        let etag = held.etag.lock().await;
        match self
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .key(self.key("lock.json"))
            .if_match(etag.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(step_failure("releasing the lock", sdk(e), &self.bucket)),
        }
    }

    async fn head(&self) -> Result<HeadRead> {
        if let Some((head, etag)) = self.read::<Head>(HEAD).await? {
            return Ok(HeadRead {
                head,
                etag: Some(etag),
                migrated: Vec::new(),
            });
        }
        // Releases kept mean the ledger was moved before (perhaps by a release that left the old
        // document readable): the head is rebuilt from them, never from the old document again.
        if !self.release_numbers().await?.is_empty() {
            return Ok(HeadRead {
                head: self.recovered_head().await?,
                etag: None,
                migrated: Vec::new(),
            });
        }
        if let Some((legacy, _)) = self.read::<serde_json::Value>(LEGACY).await?
            && legacy.get(MOVED).is_none()
        {
            let legacy: Ledger = serde_json::from_value(legacy).map_err(|e| {
                Failure::new(
                    Exit::Aws,
                    "state",
                    format!(
                        "s3://{}/{} is not valid: {e}",
                        self.bucket,
                        self.key(LEGACY)
                    ),
                    "restore an earlier version from the bucket's versioning",
                )
            })?;
            let (head, migrated) = migrate(legacy);
            return Ok(HeadRead {
                head,
                etag: None,
                migrated,
            });
        }
        Ok(HeadRead {
            head: Head::default(),
            etag: None,
            migrated: Vec::new(),
        })
    }

    /// The head when there is none but releases may exist (it was deleted, or never written
    /// after a migration): the counter past the highest release kept, so no number is ever given
    /// twice, and the rollback stack's top found from the newest release down.
    async fn recovered_head(&self) -> Result<Head> {
        let seqs = self.release_numbers().await?;
        let mut head = Head {
            next: seqs.last().map_or(1, |s| s + 1),
            ..Head::default()
        };
        for &seq in seqs.iter().rev() {
            let Some((r, _)) = self.read_release(seq).await? else {
                continue;
            };
            if r.outcome == Outcome::InProgress {
                head.open.push(seq);
            }
            if on_rollback_stack(&r) {
                head.live_top = Some(seq);
                break;
            }
        }
        Ok(head)
    }

    /// The numbers of the releases kept (`releases/<seq>.json`), in order, over every page.
    async fn release_numbers(&self) -> Result<Vec<u64>> {
        let prefix = self.key("releases/");
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.owner.clone())
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut seqs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| step_failure("state", sdk(e), &self.bucket))?;
            seqs.extend(page.contents().iter().filter_map(|o| {
                o.key()?
                    .strip_prefix(&prefix)?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()
            }));
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    async fn read_release(&self, seq: u64) -> Result<Option<(Release, String)>> {
        self.read::<Release>(&release_key(seq)).await
    }

    /// Release `seq`, from what a migration has not written yet or from its object.
    async fn release_at(&self, seq: u64, migrated: &[Release]) -> Result<Option<Release>> {
        if let Some(r) = migrated.iter().find(|r| r.seq == seq) {
            return Ok(Some(r.clone()));
        }
        Ok(self.read_release(seq).await?.map(|(r, _)| r))
    }

    /// The top of the rollback stack, as `state::stack_from` makes it, one release read at a
    /// time.
    async fn rollback_stack(&self, at: &HeadRead) -> Result<Vec<Release>> {
        let mut stack = Vec::new();
        let mut next = at.head.live_top;
        while let Some(seq) = next.filter(|_| stack.len() < STACK_DEPTH) {
            let Some(r) = self.release_at(seq, &at.migrated).await? else {
                break;
            };
            next = r.live_below;
            stack.push(r);
        }
        Ok(stack)
    }

    /// Open the ledger entry of a run (its number taken from the head, so no two runs get the
    /// same one), after closing the entries of runs that died; `make` builds it from its number
    /// and id. The one-document ledger of an older `release` is moved into one object per release
    /// here, under the lock.
    pub async fn open_release(
        &self,
        now: u64,
        make: impl Fn(u64, String) -> Release,
    ) -> Result<String> {
        for _ in 0..10 {
            let mut at = self.head().await?;
            for r in &at.migrated {
                self.write(&release_key(r.seq), r, WriteIf::Always).await?;
            }
            for seq in std::mem::take(&mut at.head.open) {
                let Some((mut dead, etag)) = self.read_release(seq).await? else {
                    continue;
                };
                if dead.close_abandoned(now) {
                    self.write(&release_key(seq), &dead, WriteIf::Unchanged(&etag))
                        .await?;
                }
                // It went live and died before the head said so: it is the top of the stack.
                if on_rollback_stack(&dead) && at.head.live_top.is_none_or(|top| top < seq) {
                    at.head.live_top = Some(seq);
                }
            }
            let seq = at.head.open_release();
            let id = release_id(seq, now);
            let when = at
                .etag
                .as_deref()
                .map_or(WriteIf::Absent, WriteIf::Unchanged);
            if !at.head.legacy_marked {
                // Before the head: a crash in between leaves releases and no head, which
                // `recovered_head` reads back.
                self.write(LEGACY, &moved_ledger(), WriteIf::Always).await?;
                at.head.legacy_marked = true;
            }
            let Some(etag) = self.write(HEAD, &at.head, when).await? else {
                continue;
            };
            let mine = make(seq, id.clone());
            if self
                .write(&release_key(seq), &mine, WriteIf::Absent)
                .await?
                .is_some()
            {
                return Ok(id);
            }
            // A retried write whose first answer was lost finds its own object: it is ours.
            if self
                .read_release(seq)
                .await?
                .is_some_and(|(found, _)| found == mine)
            {
                return Ok(id);
            }
            // That number is taken: the head was rewound (an older version restored). Rebuild it
            // from the releases kept (the counter past them all, the rollback stack's top, the
            // open ones) and take another number; a number is never given twice.
            let mut rebuilt = self.recovered_head().await?;
            for s in at.head.open.into_iter().filter(|&s| s != seq) {
                if !rebuilt.open.contains(&s) {
                    rebuilt.open.push(s);
                }
            }
            rebuilt.next = rebuilt.next.max(at.head.next);
            rebuilt.legacy_marked = true;
            self.write(HEAD, &rebuilt, WriteIf::Unchanged(&etag))
                .await?;
        }
        Err(conflicts("ledger head"))
    }

    /// Change release `id` (read, changed, written back with `If-Match`; retried on a conflict).
    pub async fn update_release(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Release),
    ) -> Result<Release> {
        let seq = seq_of(id).ok_or_else(|| {
            Failure::new(
                Exit::Internal,
                "ledger",
                format!("{id:?} is not a release id"),
                "report it",
            )
        })?;
        for _ in 0..10 {
            let Some((mut release, etag)) = self.read_release(seq).await? else {
                return Err(Failure::new(
                    Exit::Aws,
                    "ledger",
                    format!(
                        "release {id} is missing from s3://{}/{}",
                        self.bucket,
                        self.key(&release_key(seq))
                    ),
                    "something deleted it while the run was going: check the bucket's object versions",
                ));
            };
            change(&mut release);
            if self
                .write(&release_key(seq), &release, WriteIf::Unchanged(&etag))
                .await?
                .is_some()
            {
                return Ok(release);
            }
        }
        Err(conflicts("ledger"))
    }

    /// Record that release `id`'s colour answers through the public URL, and put it on top of
    /// the rollback stack (what `rollback` finds the previous live release by).
    pub async fn mark_live(&self, id: &str, colour: &str) -> Result<()> {
        for _ in 0..10 {
            let at = self.head().await?;
            let already = at.head.live_top.is_some() && at.head.live_top == seq_of(id);
            let stack = if already {
                Vec::new()
            } else {
                self.rollback_stack(&at).await?
            };
            let release = self
                .update_release(id, |r| {
                    r.colour = Some(colour.to_string());
                    r.went_live = true;
                    if !already {
                        r.live_below = go_live_below(&r.action, colour, &stack);
                    }
                })
                .await?;
            if already || !on_rollback_stack(&release) {
                return Ok(());
            }
            let mut head = at.head;
            head.live_top = Some(release.seq);
            let when = at
                .etag
                .as_deref()
                .map_or(WriteIf::Absent, WriteIf::Unchanged);
            if self.write(HEAD, &head, when).await?.is_some() {
                return Ok(());
            }
        }
        Err(conflicts("ledger head"))
    }

    /// The release that was live before `live` (`state::previous_live`): read from the head and
    /// at most two releases, whatever the length of the history.
    pub async fn previous_live(&self, live: &str) -> Result<Option<Release>> {
        let at = self.head().await?;
        let stack = self.rollback_stack(&at).await?;
        Ok(previous_live(live, &stack).cloned())
    }

    /// What successive rollbacks from `live` put back (`state::rollback_line`), as far as the
    /// rollback stack is read (`STACK_DEPTH`).
    pub async fn rollback_line(&self, live: &str) -> Result<Vec<Release>> {
        let at = self.head().await?;
        let stack = self.rollback_stack(&at).await?;
        Ok(rollback_line(live, &stack).into_iter().cloned().collect())
    }

    /// The newest `limit` releases, oldest first: the head and those releases' objects only.
    pub async fn history(&self, limit: usize) -> Result<Vec<Release>> {
        use futures_util::{StreamExt, TryStreamExt};
        let at = self.head().await?;
        if !at.migrated.is_empty() {
            let skip = at.migrated.len().saturating_sub(limit);
            return Ok(at.migrated.into_iter().skip(skip).collect());
        }
        let first = at.head.next.saturating_sub(limit as u64).max(1);
        let found: Vec<Option<(Release, String)>> = futures_util::stream::iter(first..at.head.next)
            .map(|seq| self.read_release(seq))
            .buffered(16)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().map(|(r, _)| r).collect())
    }
}

fn conflicts(what: &str) -> Failure {
    Failure::new(
        Exit::Aws,
        "ledger",
        format!("the {what} kept changing under us (10 conflicting writes)"),
        "retry; if it persists, look for a runaway process writing the state bucket",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_gone_only_when_no_process_has_it() {
        let me = std::process::id();
        assert_eq!(pid_state(me), PidState::Started(started_at(me).unwrap()));
        // A child that has been reaped: its pid is free (unless the kernel reuses it within
        // these lines, which a 4-million pid space makes vanishingly rare).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(pid_state(pid), PidState::Gone);
        // pid 1 exists in every pid namespace; whether /proc shows when it started or not,
        // it is never gone.
        assert_ne!(pid_state(1), PidState::Gone);
    }
}
