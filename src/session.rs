//! A command's session and its steps: the context every command gets, the app's lock and ledger
//! entry a mutating command holds (`begin`, `finish_session`), and each step reported, recorded
//! in the ledger and passed through the test hooks (`step`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use crate::adapters::colour::Colour;
use crate::adapters::image::{self, Image};
use crate::adapters::stacks::Stacks;
use crate::adapters::store::{HeldLock, StateStore, now};
use crate::commands::image::image_from;
use crate::config::Config;
use crate::error::{Exit, Failure, Result};
use crate::output::Reporter;
use crate::plan::{self};
use crate::state::{Lock, Outcome, Release, StepRecord};
/// Everything a command needs: the config, the AWS clients, the reporter, the global flags.
pub struct Ctx {
    pub config: Config,
    pub base: std::path::PathBuf,
    pub aws: aws_config::SdkConfig,
    pub out: Reporter,
    pub dry_run: bool,
    pub yes: bool,
    /// `--break-live-lock`: `--force-unlock` may break a live run's lock.
    pub break_live_lock: bool,
    /// The lock and release this run holds, so that an interrupt can finish them.
    pub session: Arc<Mutex<Option<Session>>>,
    /// `finish_session` is running: a signal now waits for it (`interruptible`).
    pub closing: std::sync::atomic::AtomicBool,
    /// The steps this run took, in order: the lock, then each step recorded in the ledger. `up`
    /// reports them (`steps`), the same as its dry run's plan.
    pub executed: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    /// This run's generation: the number of its open ledger entry (`state::seq_of`), stamped on
    /// the colour objects it writes (`adapters::colour::fence`); `None` without one.
    pub async fn generation(&self) -> Option<u64> {
        let session = self.session.lock().await;
        crate::state::seq_of(&session.as_ref()?.release_id)
    }

    fn executed(&self, step: &str) {
        self.executed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(step.to_string());
    }

    /// The steps taken so far.
    pub fn steps_taken(&self) -> Vec<String> {
        self.executed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub struct Session {
    pub store: StateStore,
    pub held: HeldLock,
    /// The open ledger entry; empty before it is opened and once it is closed.
    pub release_id: String,
    pub renewal: tokio::task::JoinHandle<()>,
    /// A candidate colour being deployed: torn down if the run is interrupted.
    pub candidate: Option<(kube::Client, Colour)>,
    /// The error the session is being closed with, kept for a second `finish_session` when an
    /// interrupt cut the first one short (the first reason is the one that matters).
    pub closing: Option<String>,
    /// The lock is another run's now (`fence`): closing the session writes nothing.
    pub lost: bool,
}

impl Ctx {
    /// How often a wait looks: `local` against an endpoint of our own (the sandbox answers at
    /// once), `aws` against AWS, whose calls are slow to change and share rate limits.
    pub fn poll_every(
        &self,
        local: std::time::Duration,
        aws: std::time::Duration,
    ) -> std::time::Duration {
        if self.aws.endpoint_url().is_some() {
            local
        } else {
            aws
        }
    }

    pub fn stacks(&self) -> Stacks {
        Stacks::new(
            crate::adapters::endpoint::cloudformation(&self.aws),
            std::time::Duration::from_secs(self.config.stacks.timeout_minutes * 60),
            self.config.stacks.role_arn.clone(),
        )
    }

    pub fn store(&self) -> StateStore {
        let s3 = crate::adapters::endpoint::s3(&self.aws);
        StateStore::new(
            s3,
            self.config.state_bucket(),
            self.config.state.bucket_owner.clone(),
            self.config.app.clone(),
        )
    }

    pub fn template(&self, name: &str) -> Result<String> {
        let path = self
            .base
            .join(&self.config.stacks.templates)
            .join(format!("{name}.yaml"));
        std::fs::read_to_string(&path).map_err(|e| {
            Failure::new(
                Exit::Config,
                format!("stack {}", self.config.stack_name(name)),
                format!("cannot read {}: {e}", path.display()),
                "check stacks.templates in release.yaml",
            )
        })
    }

    pub fn build_image(&self) -> Result<Image> {
        let c = &self.config;
        if let Some(archive) = &c.image.archive {
            let path = self.base.join(archive);
            return image::read_archive(&path).map_err(|e| {
                Failure::new(
                    Exit::Config,
                    "image",
                    format!("{}: {e}", path.display()),
                    "give an OCI image layout, an OCI archive or a docker save tar",
                )
            });
        }
        let binary = c
            .image
            .binary
            .as_ref()
            .map(|b| self.base.join(b))
            .ok_or_else(|| {
                Failure::new(
                    Exit::Config,
                    "image",
                    "image.binary is not set",
                    "set image.binary in release.yaml",
                )
            })?;
        let model = c.model.path.as_ref().map(|m| self.base.join(m));
        image_from(&binary, model.as_deref(), &c.image.tag, &c.model)
    }
}

pub(crate) async fn record(
    ctx: &Ctx,
    store: &StateStore,
    id: &str,
    step: StepRecord,
) -> Result<()> {
    let recorded = store
        .update_release(id, |r| r.steps.push(step.clone()))
        .await
        .map(|_| ())
        .inspect_err(|e| {
            ctx.out
                .note(&format!("warning: the ledger was not updated: {e}"))
        });
    ctx.executed(&step.name);
    crash_hook(&step.name);
    recorded
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A handled signal arrived (`interruptible`); what [`hold_hook`] waits for.
pub fn signalled() {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// TEST-ONLY HOOK (docs/runbook.md): with `RELEASE_TEST_HOLD_AT=<point>` the first run through
/// `point` (a step name such as `delete iris-edge`, or `teardown iris-blue`) waits there until the
/// process is signalled, so that the tests can interrupt a command at an exact place (a signal
/// that stops the command never lets it go on; one that waits for its closing does).
pub async fn hold_hook(point: &str) {
    static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("RELEASE_TEST_HOLD_AT").is_ok_and(|p| p == point)
        && !HELD.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        eprintln!("RELEASE_TEST_HOLD_AT: holding at {point}");
        while !SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// TEST-ONLY HOOK (compiled in on purpose, documented in docs/runbook.md): with
/// `RELEASE_TEST_CRASH_AFTER_STEP=N`, the process kills itself with SIGKILL right after recording
/// its Nth step, as `kill -9` or a lost CI runner would, so that the tests can prove every command
/// converges after a crash at any step. `RELEASE_TEST_PANIC_AFTER_STEP=N` panics there instead (a
/// bug), so that the tests can prove a panic still closes the ledger and releases the lock. Never
/// set either outside a test.
fn crash_hook(step: &str) {
    static STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STEPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let wanted = std::env::var("RELEASE_TEST_CRASH_AFTER_STEP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if wanted == Some(n) {
        eprintln!("RELEASE_TEST_CRASH_AFTER_STEP: killing this process after step {n} ({step})");
        // SAFETY: kill(2) on our own pid; nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    let panic_at = std::env::var("RELEASE_TEST_PANIC_AFTER_STEP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if panic_at == Some(n) {
        panic!("RELEASE_TEST_PANIC_AFTER_STEP: panicking after step {n} ({step})");
    }
}

pub(crate) fn step_record(
    name: &str,
    ok: bool,
    changed: bool,
    took: std::time::Duration,
    detail: String,
) -> StepRecord {
    let outcome = match (ok, changed) {
        (false, _) => Outcome::Failed,
        (true, true) => Outcome::Succeeded,
        (true, false) => Outcome::NothingToDo,
    };
    StepRecord {
        name: name.into(),
        outcome,
        duration_ms: took.as_millis() as u64,
        detail: Some(detail),
    }
}

/// This machine's name, for the lock and the ledger.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Who runs this: the CI build when there is one, else user@host.
pub fn this_actor() -> (String, Option<String>) {
    plan::actor(|k| {
        if k == "HOSTNAME" {
            Some(hostname())
        } else {
            std::env::var(k).ok().or_else(|| {
                (k == "USER")
                    .then(|| std::env::var("LOGNAME").ok())
                    .flatten()
            })
        }
    })
}

/// Open the ledger entry of a run of `action` (closing the entries of runs that died); returns
/// its id.
async fn open_entry(
    ctx: &Ctx,
    store: &StateStore,
    action: &str,
    actor: &str,
    ci: Option<String>,
    steps: Vec<StepRecord>,
) -> Result<String> {
    let now_s = now();
    store
        .open_release(now_s, |seq, id| Release {
            id,
            seq,
            action: action.into(),
            actor: actor.to_string(),
            ci_build_url: ci.clone(),
            started: now_s,
            finished: None,
            outcome: Outcome::InProgress,
            colour: None,
            image_tag: (action == "up").then(|| ctx.config.image.tag.clone()),
            image_digest: None,
            model_version: (action == "up").then(|| ctx.config.model.version.clone()),
            model_sha256: (action == "up").then(|| ctx.config.model.sha256.clone()),
            shadow: None,
            baking: None,
            went_live: false,
            live_below: None,
            steps: steps.clone(),
            error: None,
        })
        .await
}

/// Take the app's lock (renewed until the session ends) and open a ledger entry for `action`;
/// the session is kept in `ctx` so that an interrupt can close both.
pub async fn begin(
    ctx: &Ctx,
    store: &StateStore,
    action: &str,
    force_unlock: bool,
    steps: Vec<StepRecord>,
) -> Result<String> {
    let (actor, ci) = this_actor();
    let host = hostname();
    let lock = Lock {
        owner: actor.clone(),
        host,
        command: action.into(),
        ci_build_url: ci.clone(),
        started: 0,
        lease_expires: 0,
        lease_seconds: None,
        process: crate::adapters::store::this_process(),
    };
    ctx.out
        .start("lock", &format!("taking the lock on {}", ctx.config.app));
    let t = Instant::now();
    let held = match store
        .acquire(
            lock,
            ctx.config.state.lease_seconds,
            force_unlock,
            ctx.break_live_lock,
        )
        .await
    {
        Ok(h) => h,
        Err(e) => {
            ctx.out.finish("lock", false, &e.message, t.elapsed());
            return Err(e);
        }
    };
    ctx.out.finish("lock", true, "held", t.elapsed());
    for s in &steps {
        ctx.executed(&s.name);
    }
    ctx.executed("lock");
    // Kept in `ctx` at once, before any other await: an interrupt from here on finds the lock to
    // release (the entry is not open yet: `release_id` stays empty until it is).
    let renewal = store.keep_renewed(&held);
    let session = Session {
        store: store.clone(),
        held,
        release_id: String::new(),
        renewal,
        candidate: None,
        closing: None,
        lost: false,
    };
    // No await between taking the lock and keeping it here (a contended tokio mutex could yield):
    // nothing else holds the session now, so try_lock takes it at once.
    match ctx.session.try_lock() {
        Ok(mut slot) => *slot = Some(session),
        Err(_) => *ctx.session.lock().await = Some(session),
    }
    let ledger = open_entry(ctx, store, action, &actor, ci.clone(), steps).await;
    match ledger {
        Ok(release_id) => {
            if let Some(s) = ctx.session.lock().await.as_mut() {
                s.release_id = release_id.clone();
            }
            Ok(release_id)
        }
        Err(e) => {
            finish_session(ctx, Some(e.to_string()), None).await;
            Err(e)
        }
    }
}

/// Close the session of a command whose `result` may be a refusal with nothing to do
/// (`nothing`): the ledger records that as nothing done, not as a failure.
pub async fn finish_unless_nothing<T>(ctx: &Ctx, result: &Result<T>, nothing: bool) {
    let error = result
        .as_ref()
        .err()
        .filter(|_| !nothing)
        .map(|e| e.to_string());
    finish_session(ctx, error, Some(!nothing)).await;
}

/// Close the ledger entry and release the lock: on success, on failure, on interrupt.
///
/// The session stays in `ctx` until the lock is released, and each part done is marked in it
/// before the next starts, so that an interrupt arriving in the middle (this runs inside the
/// command's work, which a signal drops at its next await) leaves the rest to the second call that
/// `interruptible` makes: nothing is skipped and nothing done twice but the part cut short.
pub async fn finish_session(ctx: &Ctx, error: Option<String>, changed: Option<bool>) {
    use std::sync::atomic::Ordering::SeqCst;
    ctx.closing.store(true, SeqCst);
    struct Closed<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Closed<'_> {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _closed = Closed(&ctx.closing);
    let mut held = ctx.session.lock().await;
    let Some(session) = held.as_mut() else {
        return;
    };
    session.renewal.abort();
    if session.lost || session.held.lost() {
        ctx.out.note(
            "the app's lock is another run's now: this run leaves its ledger entry and the lock alone (the next command closes the entry as abandoned)",
        );
        *held = None;
        return;
    }
    let error = match (session.closing.take(), error) {
        (Some(first), Some(now)) => Some(format!("{first}; then {now} while finishing")),
        (first, now) => first.or(now),
    };
    session.closing = error.clone();
    if let (Some(_), Some((client, colour))) = (&error, session.candidate.clone()) {
        let name = crate::adapters::colour::name(&ctx.config, colour);
        ctx.out.note(&format!("tearing down the candidate {name}"));
        hold_hook(&format!("teardown {name}")).await;
        let generation = crate::state::seq_of(&session.release_id);
        if let Err(e) =
            crate::adapters::colour::teardown(&client, &ctx.config, colour, generation).await
        {
            ctx.out.note(&format!(
                "warning: the candidate was not torn down ({e}); the next release up replaces it"
            ));
        }
    }
    session.candidate = None;
    if !session.release_id.is_empty() {
        let finished = now();
        let outcome = match (&error, changed) {
            (Some(_), _) => Outcome::Failed,
            (None, Some(false)) => Outcome::NothingToDo,
            (None, _) => Outcome::Succeeded,
        };
        let id = session.release_id.clone();
        let _ = session
            .store
            .update_release(&id, |r| {
                r.outcome = outcome;
                r.finished = Some(finished);
                r.error = error.clone();
            })
            .await;
        session.release_id.clear();
    }
    if let Err(e) = session.store.release(&session.held).await {
        ctx.out.note(&format!("warning: the lock was not released ({e}); it expires with its lease, or use --force-unlock"));
    }
    *held = None;
}

/// TEST-ONLY HOOK (docs/runbook.md): with `RELEASE_TEST_PAUSE_AT=<step>` the first run through
/// that step stops itself (SIGSTOP) just before it, as a laptop that sleeps or a CI runner that
/// freezes would, so that the tests can let its lease run out and resume it (SIGCONT).
fn pause_hook(step: &str) {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("RELEASE_TEST_PAUSE_AT").is_ok_and(|p| p == step)
        && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        eprintln!("RELEASE_TEST_PAUSE_AT: stopping before {step}");
        // SAFETY: raise(3) on our own process; it resumes on SIGCONT.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}

/// Fencing: before a step that changes anything, the app's lock must still be this run's. One a
/// run lost (its lease ran out while it was stopped, or another run broke it) stops it here, and
/// from then on it changes nothing: no teardown of a candidate another run may have made live,
/// no ledger write, no lock release (the next command closes its entry as abandoned).
pub async fn fence(ctx: &Ctx, step: &str) -> Result<()> {
    pause_hook(step);
    let mut slot = ctx.session.lock().await;
    let Some(session) = slot.as_mut() else {
        return Ok(());
    };
    if session.store.still_held(&session.held).await? {
        return Ok(());
    }
    session.lost = true;
    session.candidate = None;
    Err(Failure::new(
        Exit::Locked,
        step,
        "the app's lock is no longer this run's: another run has taken it (this one's lease ran out while it was stopped, or it was broken with --force-unlock); this run stopped before this step and changes nothing more",
        "check `release status` and `release history`: what this run did so far is the other run's to judge now",
    ))
}

/// The generation fence on a colour (`adapters::colour::fence`): a colour a later run wrote
/// stops this run as one that lost its lock (nothing more written, the ledger entry left for the
/// next run to close).
pub async fn fence_colour(
    ctx: &Ctx,
    client: &kube::Client,
    colour: crate::adapters::colour::Colour,
) -> Result<()> {
    let name = crate::adapters::colour::name(&ctx.config, colour);
    let generation = ctx.generation().await;
    let fenced = crate::adapters::colour::fence(client, &ctx.config, &name, generation).await;
    if fenced
        .as_ref()
        .is_err_and(|e| matches!(e.exit, Exit::Locked))
    {
        let mut slot = ctx.session.lock().await;
        if let Some(session) = slot.as_mut() {
            session.lost = true;
            session.candidate = None;
        }
    }
    fenced
}

/// Run `f` as a reported step recorded in the ledger.
pub async fn step<T>(
    ctx: &Ctx,
    store: &StateStore,
    id: &str,
    name: &str,
    what: &str,
    f: impl std::future::Future<Output = Result<(T, String)>>,
) -> Result<T> {
    fence(ctx, name).await?;
    let start = Instant::now();
    ctx.out.start(name, what);
    match f.await {
        Ok((v, detail)) => {
            ctx.out.finish(name, true, &detail, start.elapsed());
            record(
                ctx,
                store,
                id,
                step_record(name, true, true, start.elapsed(), detail),
            )
            .await?;
            Ok(v)
        }
        Err(e) => {
            ctx.out.finish(name, false, &e.message, start.elapsed());
            record(
                ctx,
                store,
                id,
                step_record(name, false, false, start.elapsed(), e.message.clone()),
            )
            .await?;
            Err(e)
        }
    }
}
