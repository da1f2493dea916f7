//! The state bucket: the lock (created with `If-None-Match: *`, renewed and released with
//! `If-Match` on its ETag) and the ledger (read, changed, written back with `If-Match`, retried on
//! a conflict, so no update is ever lost).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::Mutex;

use crate::error::{Exit, Failure, Result, sdk};
use crate::state::{Ledger, Lock, LockDecision, decide_lock};

/// Whether process `pid` runs on this host (Linux: /proc; elsewhere assume it does).
pub fn process_alive(pid: u32) -> bool {
    !std::path::Path::new("/proc/self").exists()
        || std::path::Path::new(&format!("/proc/{pid}")).exists()
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
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, app: String) -> Self {
        StateStore { s3, bucket, app }
    }

    fn key(&self, name: &str) -> String {
        format!("apps/{}/{name}", self.app)
    }

    pub async fn bucket_exists(&self) -> Result<bool> {
        match self.s3.head_bucket().bucket(&self.bucket).send().await {
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
                        "{} exists but this identity may not read it: another AWS account owns that name (bucket names are global), or the role lacks s3:ListBucket on it",
                        self.bucket
                    ),
                    "leave state.bucket out (the default is unique to the account and region) or choose a name of your own; if the bucket is yours, grant the role access to it",
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

    /// Write `value`: only if the object still has `etag`, or (None) only if it does not exist.
    /// `Ok(None)` is a lost race: someone wrote first.
    async fn write<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        etag: Option<&str>,
    ) -> Result<Option<String>> {
        let body = serde_json::to_vec_pretty(value).expect("state serialises");
        let mut put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_type("application/json")
            .body(ByteStream::from(body));
        put = match etag {
            Some(e) => put.if_match(e),
            None => put.if_none_match("*"),
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

    pub async fn read_lock(&self) -> Result<Option<Lock>> {
        Ok(self.read::<Lock>("lock.json").await?.map(|(l, _)| l))
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
                    existing.pid.unwrap_or_default()
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
    pub async fn check_lock(&self, host: &str, force_unlock: bool, yes: bool) -> Result<()> {
        if !self.bucket_exists().await? {
            return Ok(());
        }
        if let Some((existing, _)) = self.read::<Lock>("lock.json").await? {
            let gone = existing.holder_gone(host, process_alive);
            self.decide(&existing, now(), gone, force_unlock, yes)?;
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
            if let Some(etag) = self.write("lock.json", &lock, None).await? {
                return Ok(HeldLock::new(etag, lock, lease));
            }
            let Some((existing, etag)) = self.read::<Lock>("lock.json").await? else {
                continue;
            };
            let gone = existing.holder_gone(&lock.host, process_alive);
            // Ok only when the lock may be broken (an expired lease, or --force-unlock --break-live-lock).
            self.decide(&existing, now, gone, force_unlock, yes)?;
            if let Some(new_etag) = self.write("lock.json", &lock, Some(&etag)).await? {
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
        match self.write("lock.json", &lock, Some(&etag)).await? {
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
            .key(self.key("lock.json"))
            .if_match(etag.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(step_failure("releasing the lock", sdk(e), &self.bucket)),
        }
    }

    pub async fn ledger(&self) -> Result<Ledger> {
        Ok(self
            .read::<Ledger>("ledger.json")
            .await?
            .map(|(l, _)| l)
            .unwrap_or_default())
    }

    /// Read the ledger, change it, write it back only if nobody wrote in between; retried.
    pub async fn update_ledger(&self, mut change: impl FnMut(&mut Ledger)) -> Result<Ledger> {
        for _ in 0..10 {
            let (mut ledger, etag) = match self.read::<Ledger>("ledger.json").await? {
                Some((l, e)) => (l, Some(e)),
                None => (Ledger::default(), None),
            };
            change(&mut ledger);
            if self
                .write("ledger.json", &ledger, etag.as_deref())
                .await?
                .is_some()
            {
                return Ok(ledger);
            }
        }
        Err(Failure::new(
            Exit::Aws,
            "ledger",
            "the ledger kept changing under us (10 conflicting writes)",
            "retry; if it persists, look for a runaway process writing the state bucket",
        ))
    }
}
