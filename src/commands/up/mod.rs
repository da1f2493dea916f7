//! `release up`: under the app's lock, each step recorded in the ledger, provision the stacks in
//! their waves, push the image, then deploy and test a candidate colour (`deploy`); `--dry-run`
//! prints what it would do (`dry_run`).

mod deploy;
mod dry_run;

use deploy::deploy;
use dry_run::dry_run;

use std::time::Instant;

use serde_json::{Value, json};

use crate::adapters::image::{self};
use crate::adapters::stacks::{Change, Stacks};
use crate::adapters::store::StateStore;
use crate::config::Config;
use crate::error::{Exit, Failure, Result};
use crate::plan::{self, Outputs, UP_WAVES};
use crate::session::{Ctx, begin, finish_session, record, step_record};

pub struct UpArgs {
    pub force_unlock: bool,
    /// Deploy a candidate even when the live colour already runs this image and these manifests.
    pub force: bool,
}

/// Deploy one stack as a reported step.
async fn stack_step(
    ctx: &Ctx,
    stacks: &Stacks,
    template: &str,
    outputs: &Outputs,
) -> Result<(
    Change,
    crate::adapters::stacks::Observed,
    std::time::Duration,
)> {
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

    let mut run = Provision {
        ctx,
        stacks: &stacks,
        store: &store,
        id: &release_id,
        outputs,
        summary,
        changed: bootstrapped.is_some(),
    };
    let result = run.execute(args.force).await;
    finish_session(
        ctx,
        result.as_ref().err().map(|e| e.to_string()),
        Some(run.changed),
    )
    .await;
    let mut summary = run.summary;
    let candidate_waits = result?;
    // What ran, in order: the same steps as the dry run's plan.
    summary.insert("steps".into(), json!(ctx.steps_taken()));
    summary.insert(
        "duration".into(),
        json!(format!("{:.1} s", started.elapsed().as_secs_f64())),
    );
    Ok(Up {
        summary: Value::Object(summary),
        candidate_waits,
    })
}

/// The image scan gate's step.
pub(crate) const SCAN_STEP: &str = "image scan gate";

/// What the image scan gate step does, as the plan prints it.
pub(crate) fn scan_gate_what(gate: crate::config::Severity, timeout: u64) -> String {
    format!(
        "wait (up to {timeout} s) for ECR's scan of the pushed image; refuse it, deploying nothing, with a {} finding or worse, or when the scan cannot judge it",
        gate.ecr_name()
    )
}

/// What to do about a failed push.
fn push_hint(e: &image::PushError) -> &'static str {
    match e {
        image::PushError::TagTaken { .. } => {
            "ECR tags are immutable: give this build its own image.tag (the git SHA)"
        }
        _ => "check ECR access and re-run; layers already uploaded are skipped",
    }
}

/// The provisioning half of `up` under the lock: the stacks in their waves, the image, then the
/// release phase (`deploy`). What it did goes in `summary`; `changed`: anything changed.
struct Provision<'a> {
    ctx: &'a Ctx,
    stacks: &'a Stacks,
    store: &'a StateStore,
    id: &'a str,
    outputs: Outputs,
    summary: serde_json::Map<String, Value>,
    changed: bool,
}

impl Provision<'_> {
    /// Returns whether a tested candidate now waits for `release promote`.
    async fn execute(&mut self, force: bool) -> Result<bool> {
        self.waves().await?;
        let digest = self.push_image().await?;
        if let Some(gate) = self.ctx.config.image.scan_gate {
            self.scan_gate(&digest, gate).await?;
        }
        let uri = self
            .outputs
            .get("registry")
            .and_then(|o| o.get("RepositoryUri"))
            .cloned()
            .unwrap_or_default();
        deploy(
            self.ctx,
            self.stacks,
            self.store,
            self.id,
            &format!("{uri}@{digest}"),
            &digest,
            &mut self.summary,
            &mut self.changed,
            &self.outputs,
            force,
        )
        .await
        .map(|plan| plan.candidate_waits())
    }

    /// Each wave's stacks deployed together, each recorded; a failed one stops the run after
    /// the rest of its wave.
    async fn waves(&mut self) -> Result<()> {
        let (ctx, stacks) = (self.ctx, self.stacks);
        for wave in UP_WAVES {
            let first = format!("stack {}", ctx.config.stack_name(wave[0]));
            crate::session::fence(ctx, &first).await?;
            let before: &Outputs = &self.outputs;
            let runs = wave
                .iter()
                .filter(|t| !before.contains_key(**t))
                .map(|t| async move { (*t, stack_step(ctx, stacks, t, before).await) });
            let results = futures_util::future::join_all(runs).await;
            let mut first_error = None;
            for (template, result) in results {
                let step = format!("stack {}", ctx.config.stack_name(template));
                let record_as = match &result {
                    Ok((change, _, took)) => step_record(
                        &step,
                        true,
                        *change != Change::Nothing,
                        *took,
                        change.describe(),
                    ),
                    Err(e) => step_record(
                        &step,
                        false,
                        false,
                        std::time::Duration::ZERO,
                        e.message.clone(),
                    ),
                };
                record(ctx, self.store, self.id, record_as).await?;
                match result {
                    Ok((change, observed, _)) => {
                        self.changed |= change != Change::Nothing;
                        self.summary
                            .insert(ctx.config.stack_name(template), json!(change.describe()));
                        self.outputs.insert(template.to_string(), observed.outputs);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The image scan gate: wait for ECR's scan of the pushed image and refuse it (exit 8,
    /// nothing deployed) when it has a finding at the gate's severity or worse, or when the scan
    /// cannot judge it (`plan::scan`).
    async fn scan_gate(&self, digest: &str, gate: crate::config::Severity) -> Result<()> {
        use crate::plan::scan::{Verdict, judge};
        let ctx = self.ctx;
        let repository = self
            .outputs
            .get("registry")
            .and_then(|o| o.get("RepositoryName"))
            .cloned()
            .unwrap_or_default();
        let timeout = std::time::Duration::from_secs(ctx.config.image.scan_timeout_seconds);
        let every = ctx.poll_every(
            std::time::Duration::from_millis(300),
            std::time::Duration::from_secs(5),
        );
        let ecr = crate::adapters::endpoint::ecr(&ctx.aws);
        let what = scan_gate_what(gate, ctx.config.image.scan_timeout_seconds);
        crate::session::step(ctx, self.store, self.id, SCAN_STEP, &what, async {
            let passed = crate::wait::until(
                crate::wait::Deadline::new(timeout, every),
                async || {
                    let seen = image::scan::findings(&ecr, &repository, digest)
                        .await
                        .map_err(|e| {
                            Failure::new(
                                Exit::Aws,
                                SCAN_STEP,
                                e,
                                "check that the credentials may call ecr:DescribeImageScanFindings on the repository and, with enhanced scanning, inspector2:ListFindings and inspector2:ListCoverage (the ci-role stack grants them)",
                            )
                        })?;
                    let refused = |why: String, hint: &str| {
                        Failure::new(
                            Exit::Precondition,
                            SCAN_STEP,
                            format!("{digest} refused: {why}"),
                            hint,
                        )
                    };
                    match judge(&seen, gate) {
                        Verdict::Pass(found) => Ok(crate::wait::Check::Done(found)),
                        Verdict::Wait(why) => Ok(crate::wait::Check::Pending(why)),
                        Verdict::Refuse(why) => Err(refused(
                            why,
                            "nothing was deployed; rebuild the image without the findings (aws ecr describe-image-scan-findings lists them), or set image.scan_gate to a worse severity",
                        )),
                        Verdict::CannotJudge(why) => Err(refused(
                            why,
                            "nothing was deployed; ECR's basic scanning reads only an operating system's packages: turn on enhanced scanning (Amazon Inspector) for the registry, or remove image.scan_gate",
                        )),
                    }
                },
                |why, waited| {
                    Failure::new(
                        Exit::Precondition,
                        SCAN_STEP,
                        format!("{digest} refused: no judged scan after {waited:.0?}: {why}"),
                        "nothing was deployed; check the repository's scanning, or raise image.scan_timeout_seconds",
                    )
                },
            )
            .await?;
            Ok(((), passed))
        })
        .await
    }

    /// Build (or read) the image and push it; its digest goes in the ledger. Returns the digest.
    async fn push_image(&mut self) -> Result<String> {
        let ctx = self.ctx;
        crate::session::fence(ctx, "image push").await?;
        // The image: built (or read), pushed, its digest recorded.
        let repository = self
            .outputs
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
        let ecr = crate::adapters::endpoint::ecr(&ctx.aws);
        let pushed = image::push(&ecr, &repository, &ctx.config.image.tag, &image, |done| {
            ctx.out.bytes(step, done, total)
        })
        .await;
        let pushed = match pushed {
            Ok(p) => p,
            Err(e) => {
                ctx.out.finish(step, false, &e.to_string(), start.elapsed());
                record(
                    ctx,
                    self.store,
                    self.id,
                    step_record(step, false, false, start.elapsed(), e.to_string()),
                )
                .await?;
                return Err(Failure::new(Exit::Aws, step, e.to_string(), push_hint(&e)));
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
            self.store,
            self.id,
            step_record(
                step,
                true,
                pushed.uploaded_bytes > 0,
                start.elapsed(),
                detail.clone(),
            ),
        )
        .await?;
        self.changed |= pushed.uploaded_bytes > 0;
        let digest = pushed.digest.clone();
        let id = self.id;
        self.store
            .update_release(id, |r| r.image_digest = Some(digest.clone()))
            .await?;
        self.summary.insert(
            "image".into(),
            json!(format!(
                "{repository}:{}@{}",
                ctx.config.image.tag, pushed.digest
            )),
        );
        self.summary.insert("image push".into(), json!(detail));
        Ok(pushed.digest)
    }
}
