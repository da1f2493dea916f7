//! `release up` (first half): observe, plan, then provision the stacks and push the image, under
//! the app's lock, each step recorded in the ledger. The colour deployment follows in the next part.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::colour::Colour;
use crate::config::Config;
use crate::error::{Exit, Failure, Result, sdk};
use crate::image::{self, Image, ImageSpec};
use crate::output::Reporter;
use crate::plan::{self, Outputs, UP_WAVES};
use crate::stacks::{Change, Stacks};
use crate::state::{Lock, Outcome, Release, StepRecord};
use crate::store::{HeldLock, StateStore, now};

/// Everything a command needs: the config, the AWS clients, the reporter, the global flags.
pub struct Ctx {
    pub config: Config,
    pub base: std::path::PathBuf,
    pub aws: aws_config::SdkConfig,
    pub out: Reporter,
    pub dry_run: bool,
    pub yes: bool,
    /// The lock and release this run holds, so that an interrupt can finish them.
    pub session: Arc<Mutex<Option<Session>>>,
    /// `finish_session` is running: a signal now waits for it (`interruptible`).
    pub closing: std::sync::atomic::AtomicBool,
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
}

pub struct UpArgs {
    pub force_unlock: bool,
    /// Deploy a candidate even when the live colour already runs this image and these manifests.
    pub force: bool,
}

impl Ctx {
    pub fn stacks(&self) -> Stacks {
        Stacks::new(
            crate::endpoint::cloudformation(&self.aws),
            std::time::Duration::from_secs(self.config.stacks.timeout_minutes * 60),
            self.config.stacks.role_arn.clone(),
        )
    }

    pub fn store(&self) -> StateStore {
        let s3 = crate::endpoint::s3(&self.aws);
        StateStore::new(s3, self.config.state_bucket(), self.config.app.clone())
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
        image_from(
            &binary,
            model.as_deref(),
            &c.image.tag,
            &c.model.name,
            &c.model.version,
        )
    }
}

/// The model-server image `release` builds: the binary at /model-server, non-root, labelled with
/// the model version and the revision.
pub fn image_from(
    binary: &Path,
    model_file: Option<&Path>,
    tag: &str,
    model: &str,
    version: &str,
) -> Result<Image> {
    let mut env = vec![
        ("MODEL_SERVER_PORT".to_string(), "8080".to_string()),
        ("MODEL_SERVER_MODEL_NAME".into(), model.into()),
        ("MODEL_SERVER_MODEL_VERSION".into(), version.into()),
    ];
    // Relative to the image's working directory (/), so the same path works in a container and in
    // the sandbox, which runs the unpacked image without a chroot.
    let in_image = format!("model/{model}.onnx");
    if model_file.is_some() {
        env.push(("MODEL_SERVER_MODEL_PATH".into(), in_image.clone()));
    }
    let labels = [
        (
            "org.opencontainers.image.revision".to_string(),
            tag.to_string(),
        ),
        ("release.model.name".into(), model.into()),
        ("release.model.version".into(), version.into()),
    ];
    let spec = ImageSpec {
        path_in_image: "/model-server",
        env: &env,
        user: "65532:65532",
        exposed_port: 8080,
        labels: &labels,
        model: model_file.map(|m| (in_image.as_str(), m)),
    };
    image::from_binary(binary, &spec, &image::LayerCache::from_env()).map_err(|e| {
        Failure::new(
            Exit::Config,
            "image build",
            format!("{}: {e}", binary.display()),
            "build the static model-server first, or fix image.binary",
        )
    })
}

async fn record(ctx: &Ctx, store: &StateStore, id: &str, step: StepRecord) -> Result<()> {
    let recorded = store
        .update_ledger(|l| {
            if let Some(r) = l.get_mut(id) {
                r.steps.push(step.clone());
            }
        })
        .await
        .map(|_| ())
        .inspect_err(|e| {
            ctx.out
                .note(&format!("warning: the ledger was not updated: {e}"))
        });
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

fn step_record(
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

/// Deploy one stack as a reported step.
async fn stack_step(
    ctx: &Ctx,
    stacks: &Stacks,
    template: &str,
    outputs: &Outputs,
) -> Result<(Change, crate::stacks::Observed, std::time::Duration)> {
    let name = ctx.config.stack_name(template);
    let step = format!("stack {name}");
    let params = plan::stack_parameters(template, &ctx.config, outputs).map_err(|m| {
        Failure::new(
            Exit::Internal,
            &step,
            format!("missing input: {m}"),
            "report this: the plan ran a stack before its inputs",
        )
    })?;
    let body = ctx.template(template)?;
    let start = Instant::now();
    ctx.out.start(&step, "checking");
    let result = stacks
        .deploy(&name, &body, &params, |what| ctx.out.progress(&step, what))
        .await;
    match result {
        Ok((change, observed)) => {
            ctx.out
                .finish(&step, true, &change.describe(), start.elapsed());
            Ok((change, observed, start.elapsed()))
        }
        Err(e) => {
            ctx.out.finish(&step, false, &e.message, start.elapsed());
            Err(e)
        }
    }
}

/// What `release up` did: its summary, and whether a tested candidate now waits for
/// `release promote` (false when nothing was released, or when this first release went live).
pub struct Up {
    pub summary: Value,
    pub candidate_waits: bool,
}

/// The image `up` would push is there to build or read: checked before anything touches AWS.
pub fn check_image(config: &Config, base: &std::path::Path) -> Result<()> {
    config.check_image("the configuration", base).map_err(|e| {
        Failure::new(
            Exit::Config,
            "configuration",
            e.to_string(),
            "build the model server first, or fix image.binary / image.archive",
        )
    })
}

pub async fn up(ctx: &Ctx, args: &UpArgs) -> Result<Up> {
    let started = Instant::now();
    check_image(&ctx.config, &ctx.base)?;
    let stacks = ctx.stacks();
    let store = ctx.store();
    if ctx.dry_run {
        return Ok(Up {
            summary: dry_run(ctx, &stacks, &store, args).await?,
            candidate_waits: false,
        });
    }

    let mut outputs = Outputs::new();
    let mut summary = serde_json::Map::new();
    // The lock and the ledger live in the state bucket the registry stack makes: on the very first
    // run that stack comes first, before the lock exists.
    let mut bootstrapped = None;
    if !store.bucket_exists().await? {
        ctx.out.note(&format!(
            "state bucket {} does not exist yet: creating the registry stack first",
            store.bucket
        ));
        let (change, observed, took) = stack_step(ctx, &stacks, "registry", &outputs).await?;
        outputs.insert("registry".into(), observed.outputs.clone());
        bootstrapped = Some(step_record(
            &format!("stack {}", ctx.config.stack_name("registry")),
            true,
            change != Change::Nothing,
            took,
            change.describe(),
        ));
        summary.insert(ctx.config.stack_name("registry"), json!(change.describe()));
    }

    let release_id = begin(
        ctx,
        &store,
        "up",
        args.force_unlock,
        bootstrapped.iter().cloned().collect(),
    )
    .await?;
    summary.insert("release".into(), json!(release_id));

    let mut changed = bootstrapped.is_some();
    let result = provision(
        ctx,
        &stacks,
        &store,
        &release_id,
        &mut outputs,
        &mut summary,
        &mut changed,
        args.force,
    )
    .await;
    finish_session(
        ctx,
        result.as_ref().err().map(|e| e.to_string()),
        Some(changed),
    )
    .await;
    let candidate_waits = result?;
    summary.insert(
        "duration".into(),
        json!(format!("{:.1} s", started.elapsed().as_secs_f64())),
    );
    Ok(Up {
        summary: Value::Object(summary),
        candidate_waits,
    })
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

/// Take the app's lock (renewed until the session ends) and open a ledger entry for `action`;
/// the session is kept in `ctx` so that an interrupt can close both.
pub async fn begin(
    ctx: &Ctx,
    store: &StateStore,
    action: &str,
    force_unlock: bool,
    steps: Vec<StepRecord>,
) -> Result<String> {
    let (actor, ci) = plan::actor(|k| {
        if k == "HOSTNAME" {
            Some(hostname())
        } else {
            std::env::var(k).ok().or_else(|| {
                (k == "USER")
                    .then(|| std::env::var("LOGNAME").ok())
                    .flatten()
            })
        }
    });
    let host = hostname();
    let lock = Lock {
        owner: actor.clone(),
        host,
        command: action.into(),
        ci_build_url: ci.clone(),
        started: 0,
        lease_expires: 0,
        pid: Some(std::process::id()),
    };
    ctx.out
        .start("lock", &format!("taking the lock on {}", ctx.config.app));
    let t = Instant::now();
    let held = match store
        .acquire(lock, ctx.config.state.lease_seconds, force_unlock, ctx.yes)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            ctx.out.finish("lock", false, &e.message, t.elapsed());
            return Err(e);
        }
    };
    ctx.out.finish("lock", true, "held", t.elapsed());
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
    };
    // No await between taking the lock and keeping it here (a contended tokio mutex could yield):
    // nothing else holds the session now, so try_lock takes it at once.
    match ctx.session.try_lock() {
        Ok(mut slot) => *slot = Some(session),
        Err(_) => *ctx.session.lock().await = Some(session),
    }
    let mut release_id = String::new();
    let now_s = now();
    let ledger = store
        .update_ledger(|l| {
            release_id = l.next_id(now_s);
            l.close_abandoned(&release_id, now_s);
            l.releases.push(Release {
                id: release_id.clone(),
                action: action.into(),
                actor: actor.clone(),
                ci_build_url: ci.clone(),
                started: now_s,
                finished: None,
                outcome: Outcome::InProgress,
                colour: None,
                image_tag: (action == "up").then(|| ctx.config.image.tag.clone()),
                image_digest: None,
                model_version: (action == "up").then(|| ctx.config.model.version.clone()),
                went_live: false,
                steps: steps.clone(),
                error: None,
            });
        })
        .await;
    match ledger {
        Ok(_) => {
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
    let error = match (session.closing.take(), error) {
        (Some(first), Some(now)) => Some(format!("{first}; then {now} while finishing")),
        (first, now) => first.or(now),
    };
    session.closing = error.clone();
    if let (Some(_), Some((client, colour))) = (&error, session.candidate.clone()) {
        let name = crate::colour::name(&ctx.config, colour);
        ctx.out.note(&format!("tearing down the candidate {name}"));
        hold_hook(&format!("teardown {name}")).await;
        if let Err(e) = crate::colour::teardown(&client, &ctx.config, colour).await {
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
            .update_ledger(|l| {
                if let Some(r) = l.get_mut(&id) {
                    r.outcome = outcome;
                    r.finished = Some(finished);
                    r.error = error.clone();
                }
            })
            .await;
        session.release_id.clear();
    }
    if let Err(e) = session.store.release(&session.held).await {
        ctx.out.note(&format!("warning: the lock was not released ({e}); it expires with its lease, or use --force-unlock"));
    }
    *held = None;
}

#[allow(clippy::too_many_arguments)]
async fn provision(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    id: &str,
    outputs: &mut Outputs,
    summary: &mut serde_json::Map<String, Value>,
    changed: &mut bool,
    force: bool,
) -> Result<bool> {
    for wave in UP_WAVES {
        let before: &Outputs = outputs;
        let runs = wave
            .iter()
            .filter(|t| !before.contains_key(**t))
            .map(|t| async move { (*t, stack_step(ctx, stacks, t, before).await) });
        let results = futures_util::future::join_all(runs).await;
        let mut first_error = None;
        for (template, result) in results {
            let step = format!("stack {}", ctx.config.stack_name(template));
            match result {
                Ok((change, observed, took)) => {
                    *changed |= change != Change::Nothing;
                    record(
                        ctx,
                        store,
                        id,
                        step_record(
                            &step,
                            true,
                            change != Change::Nothing,
                            took,
                            change.describe(),
                        ),
                    )
                    .await?;
                    summary.insert(ctx.config.stack_name(template), json!(change.describe()));
                    outputs.insert(template.to_string(), observed.outputs);
                }
                Err(e) => {
                    record(
                        ctx,
                        store,
                        id,
                        step_record(
                            &step,
                            false,
                            false,
                            std::time::Duration::ZERO,
                            e.message.clone(),
                        ),
                    )
                    .await?;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
    }

    // The image: built (or read), pushed, its digest recorded.
    let repository = outputs
        .get("registry")
        .and_then(|o| o.get("RepositoryName"))
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                Exit::Aws,
                "image push",
                "the registry stack has no RepositoryName output",
                "run release up again to update the registry stack",
            )
        })?;
    let step = "image push";
    let start = Instant::now();
    ctx.out
        .start(step, &format!("{repository}:{}", ctx.config.image.tag));
    let image = ctx.build_image()?;
    let total: u64 = image.blobs().map(|b| b.size).sum();
    let ecr = crate::endpoint::ecr(&ctx.aws);
    let pushed = image::push(&ecr, &repository, &ctx.config.image.tag, &image, |done| {
        ctx.out.bytes(step, done, total)
    })
    .await;
    let pushed = match pushed {
        Ok(p) => p,
        Err(e) => {
            let hint = match &e {
                image::PushError::TagTaken { .. } => {
                    "ECR tags are immutable: give this build its own image.tag (the git SHA)"
                        .to_string()
                }
                _ => "check ECR access and re-run; layers already uploaded are skipped".to_string(),
            };
            ctx.out.finish(step, false, &e.to_string(), start.elapsed());
            record(
                ctx,
                store,
                id,
                step_record(step, false, false, start.elapsed(), e.to_string()),
            )
            .await?;
            return Err(Failure::new(Exit::Aws, step, e.to_string(), hint));
        }
    };
    let detail = if pushed.uploaded_bytes == 0 {
        format!("already in {repository}: {}", pushed.digest)
    } else {
        format!(
            "{} bytes uploaded, {} blobs already there: {}",
            pushed.uploaded_bytes, pushed.skipped_blobs, pushed.digest
        )
    };
    ctx.out.finish(step, true, &detail, start.elapsed());
    record(
        ctx,
        store,
        id,
        step_record(
            step,
            true,
            pushed.uploaded_bytes > 0,
            start.elapsed(),
            detail.clone(),
        ),
    )
    .await?;
    *changed |= pushed.uploaded_bytes > 0;
    let digest = pushed.digest.clone();
    store
        .update_ledger(|l| {
            if let Some(r) = l.get_mut(id) {
                r.image_digest = Some(digest.clone());
            }
        })
        .await?;
    summary.insert(
        "image".into(),
        json!(format!(
            "{repository}:{}@{}",
            ctx.config.image.tag, pushed.digest
        )),
    );
    summary.insert("image push".into(), json!(detail));
    let uri = outputs
        .get("registry")
        .and_then(|o| o.get("RepositoryUri"))
        .cloned()
        .unwrap_or_default();
    deploy(
        ctx,
        stacks,
        store,
        id,
        outputs,
        &format!("{uri}@{}", pushed.digest),
        &pushed.digest,
        summary,
        changed,
        force,
    )
    .await
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

pub fn smoke_failure(colour: Colour, report: &crate::smoke::Report) -> Failure {
    Failure::new(
        Exit::Smoke,
        format!("smoke test of {colour}"),
        format!(
            "{} failed check(s):\n    {}",
            report.failures.len(),
            report.failures.join("\n    ")
        ),
        "the candidate was torn down and the live colour is untouched; fix the model or image and release again",
    )
}

/// Smoke-test `target` and make the report a step's result: its summary, or a failure naming
/// every failed check. `progress_step`: the step whose progress line it updates, if any.
pub async fn smoke_test(
    ctx: &Ctx,
    target: &crate::smoke::Target<'_>,
    cases: &crate::smoke::Cases,
    requests: u32,
    compare: Option<(&crate::smoke::Target<'_>, f64)>,
    progress_step: Option<&str>,
) -> Result<String> {
    let report = crate::smoke::run(
        target,
        cases,
        requests,
        ctx.config.smoke.p95_ms,
        compare,
        |p| {
            if let Some(step) = progress_step {
                ctx.out.progress(step, &p)
            }
        },
    )
    .await;
    if report.ok() {
        Ok(report.summary())
    } else {
        Err(smoke_failure(target.colour, &report))
    }
}

/// Deploy the idle colour, smoke-test it, and put it live when nothing is live yet.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    id: &str,
    outputs: &mut Outputs,
    image: &str,
    digest: &str,
    summary: &mut serde_json::Map<String, Value>,
    changed: &mut bool,
    force: bool,
) -> Result<bool> {
    use crate::colour;
    let c = &ctx.config;
    let cluster_name = outputs
        .get("cluster")
        .and_then(|o| o.get("ClusterName"))
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                Exit::Aws,
                "cluster",
                "the cluster stack has no ClusterName output",
                "re-run release up",
            )
        })?;
    let cluster = crate::eks::Cluster::connect(&ctx.aws, &cluster_name).await?;
    let client = cluster.client().await?;
    // Services get their NLBs only from the controller: in place and ready before any colour.
    let inputs = controller_inputs(ctx, &cluster_name, outputs)?;
    if let Some(what) = crate::addons::decide(&crate::addons::observe(&client).await?, &inputs) {
        let timeout = std::time::Duration::from_secs(c.deploy.controller_timeout_seconds);
        step(ctx, store, id, crate::addons::STEP, &what, async {
            crate::addons::ensure(&client, &inputs, timeout).await?;
            Ok((
                (),
                format!("{} ready", crate::addons::LB_CONTROLLER_VERSION),
            ))
        })
        .await?;
        *changed = true;
    }
    let edge_name = c.stack_name("edge");
    let edge = stacks.observe(&edge_name).await?;
    let mut observed = std::collections::BTreeMap::new();
    let mut addresses = std::collections::BTreeMap::new();
    for col in colour::Colour::ALL {
        let o = colour::observe(&client, c, col).await?;
        addresses.insert(col, o.address.clone());
        observed.insert(col, o);
    }
    let live = colour::live_colour(
        edge.parameters.get("OriginDomain").map(String::as_str),
        &addresses,
    );
    let templates = ctx.base.join(&c.deploy.templates);
    if let Some(l) = live {
        let (_, hash) = colour::render(&templates, c, l, image, digest, id, "candidate")
            .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
        let o = &observed[&l];
        if !force
            && o.digest.as_deref() == Some(digest)
            && o.manifest_hash.as_deref() == Some(hash.as_str())
        {
            ctx.out.note(&format!("{l} is live with this image ({digest}) and these manifests: nothing to release (--force deploys a candidate anyway)"));
            // Still confirm that it answers through the edge: this also finishes a first release
            // that died while the edge was being deployed.
            if let Some(public) = crate::promote::public_url(ctx, &edge) {
                step(ctx, store, id, "verify public URL", &public, async {
                    crate::promote::wait_public(
                        public.trim_end_matches('/'),
                        l,
                        std::time::Duration::from_secs(c.edge.verify_timeout_seconds),
                    )
                    .await
                    .map_err(|e| {
                        Failure::new(
                            Exit::Verify,
                            "verify public URL",
                            e,
                            "the live colour does not answer through the edge: check `release status` and the distribution",
                        )
                    })?;
                    mark_live(store, id, l).await?;
                    Ok(((), format!("{l} answers")))
                })
                .await?;
            }
            summary.insert("live".into(), json!(l));
            summary.insert("candidate".into(), json!("none: nothing to release"));
            return Ok(false);
        }
    }
    let candidate = crate::plan::colour::candidate_for(live);
    let (manifests, _) =
        colour::render(&templates, c, candidate, image, digest, id, "candidate")
            .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
    let secret = colour::ensure_namespace_and_secret(&client, c).await?;
    *changed = true;
    if let Some(s) = ctx.session.lock().await.as_mut() {
        s.candidate = Some((client.clone(), candidate));
    }
    let _ = store
        .update_ledger(|l| {
            if let Some(r) = l.get_mut(id) {
                r.colour = Some(candidate.to_string());
            }
        })
        .await;
    let name = colour::name(c, candidate);
    let step_name = format!("deploy {name}");
    let addr = step(
        ctx,
        store,
        id,
        &step_name,
        &format!("{image} ({} replicas)", c.deploy.replicas),
        async {
            let addr = roll_out(ctx, &client, candidate, &manifests, &step_name).await?;
            Ok((addr.clone(), format!("ready at {addr}")))
        },
    )
    .await?;
    let cases = crate::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
        .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?;
    let target = crate::smoke::Target {
        base_url: format!("http://{addr}:{}", c.deploy.service_port),
        colour: candidate,
        model_version: &c.model.version,
        secret: &secret,
    };
    let live_target = live.and_then(|l| addresses[&l].clone().map(|a| (l, a)));
    let live_target = live_target.as_ref().map(|(l, a)| crate::smoke::Target {
        base_url: format!("http://{a}:{}", c.deploy.service_port),
        colour: *l,
        model_version: &c.model.version,
        secret: &secret,
    });
    let compare = match (&live_target, c.smoke.compare_live) {
        (Some(t), Some(f)) => Some((t, f)),
        _ => None,
    };
    let smoke_name = format!("smoke {name}");
    step(ctx, store, id, &smoke_name, &target.base_url, async {
        let summary = smoke_test(
            ctx,
            &target,
            &cases,
            c.smoke.requests,
            compare,
            Some(&smoke_name),
        )
        .await?;
        Ok(((), summary))
    })
    .await?;
    summary.insert("candidate".into(), json!(candidate));
    summary.insert("candidate address".into(), json!(addr));

    let waits = live.is_some();
    if !waits {
        go_live(
            ctx, stacks, store, id, outputs, candidate, &addr, &secret, &cases, summary,
        )
        .await?;
    } else {
        summary.insert("live".into(), json!(live));
        ctx.out.note(&format!(
            "{candidate} is deployed and tested; `release promote` puts it live"
        ));
    }
    // The candidate stays: no teardown on the way out.
    if let Some(s) = ctx.session.lock().await.as_mut() {
        s.candidate = None;
    }
    Ok(waits)
}

/// Apply a colour's manifests, wait until it is rolled out, and return its load-balancer address.
pub async fn roll_out(
    ctx: &Ctx,
    client: &kube::Client,
    colour: Colour,
    manifests: &[Value],
    step_name: &str,
) -> Result<String> {
    let c = &ctx.config;
    let timeout = std::time::Duration::from_secs(c.deploy.rollout_timeout_seconds);
    crate::colour::apply(client, c, manifests).await?;
    crate::colour::wait_rollout(client, c, colour, timeout, |p| {
        ctx.out.progress(step_name, &p)
    })
    .await?;
    let address = std::time::Duration::from_secs(c.deploy.address_timeout_seconds);
    crate::colour::wait_address(client, c, colour, address).await
}

/// Wait until CloudFront reports the distribution `Deployed` (every edge location serves the
/// current configuration), for at most the stack timeout.
pub async fn wait_deployed(ctx: &Ctx, dist: &str, step_name: &str, hint: &str) -> Result<()> {
    let cf = crate::endpoint::cloudfront(&ctx.aws);
    // The sandbox deploys in about a second; CloudFront takes minutes.
    let poll = if ctx.aws.endpoint_url().is_some() {
        std::time::Duration::from_millis(200)
    } else {
        std::time::Duration::from_secs(10)
    };
    let timeout = std::time::Duration::from_secs(ctx.config.stacks.timeout_minutes * 60);
    crate::wait::until(
        crate::wait::Deadline::new(timeout, poll),
        async || {
            let d = cf.get_distribution().id(dist).send().await.map_err(|e| {
                Failure::new(Exit::Aws, step_name, sdk(e), "check CloudFront access")
            })?;
            let status = d
                .distribution()
                .map(|d| d.status().to_string())
                .unwrap_or_default();
            Ok(if status == "Deployed" {
                crate::wait::Check::Done(())
            } else {
                crate::wait::Check::Pending(status)
            })
        },
        |status, _| {
            Failure::new(
                Exit::Aws,
                step_name,
                format!("{dist} is still {status}"),
                hint,
            )
        },
    )
    .await
}

/// Record in the ledger that this run's colour answers through the public URL (what rollback
/// finds the previous live release by). Written inside the verifying step, so a run that dies
/// right after it still counts.
pub async fn mark_live(store: &StateStore, id: &str, colour: Colour) -> Result<()> {
    store
        .update_ledger(|l| {
            if let Some(r) = l.get_mut(id) {
                r.colour = Some(colour.to_string());
                r.went_live = true;
            }
        })
        .await
        .map(|_| ())
}

/// The first release: the edge stack with this colour as origin, then the public URL checked.
#[allow(clippy::too_many_arguments)]
async fn go_live(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    id: &str,
    outputs: &mut Outputs,
    colour: Colour,
    addr: &str,
    secret: &str,
    cases: &crate::smoke::Cases,
    summary: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let c = &ctx.config;
    let name = c.stack_name("edge");
    let params = vec![
        ("AppName".to_string(), c.app.clone()),
        ("OriginDomain".to_string(), addr.to_string()),
        (
            "OriginHttpPort".to_string(),
            c.deploy.service_port.to_string(),
        ),
        ("OriginSecret".to_string(), secret.to_string()),
    ];
    let body = ctx.template("edge")?;
    let observed = step(
        ctx,
        store,
        id,
        &format!("stack {name}"),
        &format!("origin {addr}"),
        async {
            let (change, observed) = stacks
                .deploy(&name, &body, &params, |p| {
                    ctx.out.progress(&format!("stack {name}"), p)
                })
                .await?;
            Ok((observed, change.describe()))
        },
    )
    .await?;
    outputs.insert("edge".into(), observed.outputs.clone());
    let dist = observed.output(&name, "DistributionId")?;
    let domain = observed.output(&name, "DistributionDomainName")?;
    let public = c
        .edge
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{domain}"));
    step(ctx, store, id, "edge deployed", &dist, async {
        wait_deployed(ctx, &dist, "edge", "wait for CloudFront and re-run").await?;
        Ok(((), format!("{dist} Deployed")))
    })
    .await?;
    // No origin header through the public URL: the edge must add it.
    let target = crate::smoke::Target {
        base_url: public.trim_end_matches('/').to_string(),
        colour,
        model_version: &c.model.version,
        secret: "",
    };
    let smoke_name = "smoke public URL";
    step(ctx, store, id, smoke_name, &public, async {
        let summary = smoke_test(
            ctx,
            &target,
            cases,
            c.smoke.requests.min(20),
            None,
            Some(smoke_name),
        )
        .await?;
        mark_live(store, id, colour).await?;
        Ok(((), summary))
    })
    .await?;
    summary.insert("live".into(), json!(colour));
    summary.insert("public url".into(), json!(public));
    Ok(())
}

/// What the load balancer controller is installed for: the cluster, the region, the network
/// stack's VPC and the cluster stack's role for it.
fn controller_inputs(ctx: &Ctx, cluster: &str, outputs: &Outputs) -> Result<crate::addons::Inputs> {
    let output = |stack: &str, key: &str| {
        outputs
            .get(stack)
            .and_then(|o| o.get(key))
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Exit::Aws,
                    crate::addons::STEP,
                    format!("the {stack} stack has no {key} output"),
                    "update the stacks (release up applies cloudformation/ as it is now)",
                )
            })
    };
    Ok(crate::addons::Inputs {
        cluster: cluster.to_string(),
        // Rendered as --aws-region: on Fargate the controller has no instance metadata to fall
        // back on, so an empty one would crash it.
        region: ctx.aws.region().map(|r| r.to_string()).ok_or_else(|| {
            Failure::new(
                Exit::Config,
                crate::addons::STEP,
                "no AWS region is configured",
                "set AWS_REGION (or the profile's region) and re-run",
            )
        })?,
        vpc_id: output("network", "VpcId")?,
        role_arn: output("cluster", "LoadBalancerControllerRoleArn")?,
    })
}

/// `--dry-run`: what `up` would do, changing nothing.
async fn dry_run(ctx: &Ctx, stacks: &Stacks, store: &StateStore, args: &UpArgs) -> Result<Value> {
    // First, as the real run: a lock held by someone else is exit 4, not a plan.
    store
        .check_lock(&hostname(), args.force_unlock, ctx.yes)
        .await?;
    let force = args.force;
    let mut plan = serde_json::Map::new();
    let mut outputs = Outputs::new();
    for wave in UP_WAVES {
        for template in wave.iter() {
            let name = ctx.config.stack_name(template);
            let observed = stacks.observe(&name).await?;
            let what = match plan::stack_parameters(template, &ctx.config, &outputs) {
                Ok(params) => stacks
                    .plan(&name, &ctx.template(template)?, &params)
                    .await?
                    .describe(),
                Err(missing) => format!("create or update once {missing} exists"),
            };
            if observed.exists() {
                outputs.insert(template.to_string(), observed.outputs);
            }
            ctx.out.note(&format!("plan: stack {name}: {what}"));
            plan.insert(name, json!(what));
        }
    }
    let image = ctx.build_image()?;
    let what = match outputs
        .get("registry")
        .and_then(|o| o.get("RepositoryName"))
    {
        Some(repo) => {
            let ecr = crate::endpoint::ecr(&ctx.aws);
            let digests: Vec<String> = image.blobs().map(|b| b.digest.clone()).collect();
            let check = ecr
                .batch_check_layer_availability()
                .repository_name(repo)
                .set_layer_digests(Some(digests))
                .send()
                .await
                .map_err(|e| Failure::new(Exit::Aws, "image push", sdk(e), "check ECR access"))?;
            let present: Vec<String> = check
                .layers()
                .iter()
                .filter(|l| {
                    l.layer_availability()
                        .is_some_and(|a| a.as_str() == "AVAILABLE")
                })
                .filter_map(|l| l.layer_digest().map(str::to_string))
                .collect();
            let missing: u64 = image
                .blobs()
                .filter(|b| !present.contains(&b.digest))
                .map(|b| b.size)
                .sum();
            format!(
                "push {repo}:{} ({}), {missing} bytes to upload",
                ctx.config.image.tag,
                image.digest()
            )
        }
        None => format!(
            "push {}:{} ({}) once the registry exists",
            ctx.config.app,
            ctx.config.image.tag,
            image.digest()
        ),
    };
    ctx.out.note(&format!("plan: image: {what}"));
    plan.insert("image".into(), json!(what));
    let (controller, what) = dry_run_colour(ctx, stacks, &outputs, &image.digest(), force).await?;
    ctx.out
        .note(&format!("plan: {}: {controller}", crate::addons::STEP));
    plan.insert(crate::addons::STEP.into(), json!(controller));
    ctx.out.note(&format!("plan: colour: {what}"));
    plan.insert("colour".into(), json!(what));
    plan.insert("dry run".into(), json!("nothing was changed"));
    Ok(Value::Object(plan))
}

/// The decisions of a dry run about the cluster, as `deploy` would make them: whether the load
/// balancer controller is installed or updated first, then nothing to release, or which colour
/// is deployed and smoke-tested, and whether it goes live at once (the first release).
async fn dry_run_colour(
    ctx: &Ctx,
    stacks: &Stacks,
    outputs: &Outputs,
    digest: &str,
    force: bool,
) -> Result<(String, String)> {
    use crate::colour;
    let c = &ctx.config;
    let smoke = format!(
        "smoke-test it ({} requests and the golden cases)",
        c.smoke.requests
    );
    let first = || {
        (
            format!(
                "install the AWS Load Balancer Controller {} once the cluster exists",
                crate::addons::LB_CONTROLLER_VERSION
            ),
            format!(
                "deploy {} once the cluster exists, {smoke}, put it live through a new edge stack",
                colour::name(c, crate::plan::colour::candidate_for(None))
            ),
        )
    };
    let Some(uri) = outputs.get("registry").and_then(|o| o.get("RepositoryUri")) else {
        return Ok(first());
    };
    let world = crate::promote::observe(ctx, stacks).await?;
    let Some(cluster) = world.cluster.as_ref() else {
        return Ok(first());
    };
    let controller = match controller_inputs(ctx, &cluster.name, outputs) {
        Ok(inputs) => {
            let installed = crate::addons::observe(&cluster.client().await?).await?;
            crate::addons::decide(&installed, &inputs)
                .unwrap_or_else(|| format!("{} in place", crate::addons::LB_CONTROLLER_VERSION))
        }
        // A cluster stack from before the controller's role: the stack update above adds it.
        Err(_) => format!(
            "install the AWS Load Balancer Controller {} once the cluster stack has its role",
            crate::addons::LB_CONTROLLER_VERSION
        ),
    };
    let colour = dry_run_candidate(ctx, &world, uri, digest, force, &smoke)?;
    Ok((controller, colour))
}

fn dry_run_candidate(
    ctx: &Ctx,
    world: &crate::promote::World,
    uri: &str,
    digest: &str,
    force: bool,
    smoke: &str,
) -> Result<String> {
    use crate::colour;
    let c = &ctx.config;
    let image = format!("{uri}@{digest}");
    let templates = ctx.base.join(&c.deploy.templates);
    if let Some(l) = world.live {
        let (_, hash) = colour::render(&templates, c, l, &image, digest, "dry-run", "candidate")
            .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
        let o = &world.colours[&l];
        if !force
            && o.digest.as_deref() == Some(digest)
            && o.manifest_hash.as_deref() == Some(hash.as_str())
        {
            return Ok(format!(
                "nothing to release: {} is live with this image and these manifests (--force deploys a candidate anyway); verify it through the public URL",
                colour::name(c, l)
            ));
        }
    }
    let candidate = colour::name(c, crate::plan::colour::candidate_for(world.live));
    Ok(match world.live {
        None => format!(
            "deploy {candidate} ({image}, {} replicas), {smoke}, put it live through the edge",
            c.deploy.replicas
        ),
        Some(l) => format!(
            "deploy {candidate} ({image}, {} replicas) as the candidate while {} serves, {smoke}; `release promote` puts it live",
            c.deploy.replicas,
            colour::name(c, l)
        ),
    })
}
