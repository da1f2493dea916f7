//! `release promote` and `release rollback`: put a tested colour live by changing the edge stack's
//! origin, verify through the public URL, and flip back by itself if that fails.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::colour::{self, Colour, Pending, Role};
use crate::commands::observe::{World, observe, public_url};
use crate::commands::steps::{mark_live, smoke_test, wait_deployed, wait_public};
use crate::error::{Exit, Failure, Result, sdk};
use crate::session::{Ctx, begin, finish_session, step};
use crate::stacks::{Observed, Stacks};

/// Point the edge stack at `addr` and wait until CloudFront has deployed it.
async fn flip(
    ctx: &Ctx,
    stacks: &Stacks,
    edge: &Observed,
    addr: &str,
    step_name: &str,
) -> Result<()> {
    let c = &ctx.config;
    let name = c.stack_name("edge");
    // Only the origin changes; every other parameter (the NoEcho secret included) keeps its value.
    let params = crate::stacks::keeping(edge, &[("OriginDomain".to_string(), addr.to_string())]);
    let body = ctx.template("edge")?;
    let (_, after) = stacks
        .deploy_with(&name, &body, params, |p| ctx.out.progress(step_name, p))
        .await?;
    let dist = after.output(&name, "DistributionId")?;
    wait_deployed(
        ctx,
        &dist,
        step_name,
        "wait for CloudFront, then check `release status`",
    )
    .await?;
    if c.edge.invalidate {
        let paths = aws_sdk_cloudfront::types::Paths::builder()
            .quantity(1)
            .items("/*")
            .build()
            .map_err(|e| Failure::new(Exit::Internal, step_name, e.to_string(), ""))?;
        let batch = aws_sdk_cloudfront::types::InvalidationBatch::builder()
            .paths(paths)
            .caller_reference(format!("release-{}", crate::store::now()))
            .build()
            .map_err(|e| Failure::new(Exit::Internal, step_name, e.to_string(), ""))?;
        crate::endpoint::cloudfront(&ctx.aws)
            .create_invalidation()
            .distribution_id(&dist)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(|e| {
                Failure::new(
                    Exit::Aws,
                    step_name,
                    sdk(e),
                    "the flip is done; invalidate by hand if cached answers matter",
                )
            })?;
    }
    Ok(())
}

/// Which flip: promote (to the tested candidate) or rollback (to the previous colour).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Promote { retire_previous: bool },
    Rollback { keep_failed: bool },
}

impl Flip {
    fn action(self) -> &'static str {
        self.pending().as_str()
    }

    /// The mark a colour carries while this flip moves traffic to it.
    fn pending(self) -> Pending {
        match self {
            Flip::Promote { .. } => Pending::Promote,
            Flip::Rollback { .. } => Pending::Rollback,
        }
    }
}

/// `expect_digest`: promote only if the candidate runs this image (CI passes the digest its own
/// `release up` deployed, so that an approval never promotes another pipeline's candidate).
pub async fn promote(
    ctx: &Ctx,
    force_unlock: bool,
    retire_previous: bool,
    expect_digest: Option<&str>,
) -> Result<Value> {
    flip_to(
        ctx,
        force_unlock,
        Flip::Promote { retire_previous },
        expect_digest,
    )
    .await
}

/// `expect_digest`: roll back only if the live colour runs this image (what CI promoted).
pub async fn rollback(
    ctx: &Ctx,
    force_unlock: bool,
    keep_failed: bool,
    expect_digest: Option<&str>,
) -> Result<Value> {
    flip_to(
        ctx,
        force_unlock,
        Flip::Rollback { keep_failed },
        expect_digest,
    )
    .await
}

/// Annotate a colour: its role, and the flip in flight towards it (`None` clears it).
async fn annotate(
    client: &kube::Client,
    ctx: &Ctx,
    colour: Colour,
    role: Option<Role>,
    pending: Option<Pending>,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ctx.config.deploy.namespace);
    let mut annotations = json!({"release/pending": pending.map(Pending::as_str)});
    if let Some(r) = role {
        annotations["release/role"] = json!(r.as_str());
    }
    api.patch(
        &colour::name(&ctx.config, colour),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        Failure::new(
            Exit::Deploy,
            "roles",
            e.to_string(),
            "re-run the command; the roles are annotations on the Deployments",
        )
    })
}

/// What a flip starts from: where traffic goes, from where, and whether `to` must be redeployed
/// (a rollback to a retired colour) or the flip already happened (a run that died after it).
struct FlipPlan {
    from: Colour,
    to: Colour,
    /// The ledger's record of `to`'s last go-live, when `to` must be deployed again.
    redeploy: Option<crate::state::Release>,
    /// The edge already serves `to`: verify and write the roles only.
    finishing: bool,
}

async fn plan_flip(ctx: &Ctx, world: &World, kind: Flip) -> Result<FlipPlan> {
    let c = &ctx.config;
    let action = kind.action();
    let nothing = |why: String| {
        let hint = match kind {
            Flip::Promote { .. } => "run `release up` to deploy and test a candidate first",
            Flip::Rollback { .. } => {
                "nothing was live before this colour; release an older image with `release up` instead"
            }
        };
        Failure::new(
            Exit::Precondition,
            action,
            format!("nothing to {action}: {why}"),
            hint,
        )
    };
    let Some(live) = world.live else {
        return Err(nothing(
            "nothing is live yet (the first `release up` puts its colour live)".into(),
        ));
    };
    let roles = colour::roles(world.live, &world.colours);
    let other = live.other();
    if roles.unfinished == Some(kind.pending()) {
        ctx.out.note(&format!(
            "an earlier {action} moved the edge to {} but did not finish: verifying it and writing the roles",
            colour::name(c, live)
        ));
        return Ok(FlipPlan {
            from: other,
            to: live,
            redeploy: None,
            finishing: true,
        });
    }
    let role = roles.roles.get(&other).copied();
    let redeploy = match (kind, role) {
        (Flip::Promote { .. }, Some(Role::Candidate))
        | (Flip::Rollback { .. }, Some(Role::Previous)) => None,
        (Flip::Promote { .. }, r) => {
            return Err(nothing(format!(
                "{} is not a tested candidate ({})",
                colour::name(c, other),
                r.map_or("absent", Role::as_str)
            )));
        }
        (Flip::Rollback { .. }, _) => {
            let ledger = ctx.store().ledger().await?;
            let Some(r) = ledger.previous_live(live.as_str()) else {
                return Err(nothing(format!(
                    "the ledger has no earlier live release than {}",
                    colour::name(c, live)
                )));
            };
            Some(r.clone())
        }
    };
    if redeploy.is_none() {
        let o = &world.colours[&other];
        if o.ready < o.replicas || o.replicas == 0 || o.address.is_none() {
            return Err(nothing(format!(
                "{} has {}/{} pods ready and {} load-balancer address",
                colour::name(c, other),
                o.ready,
                o.replicas,
                if o.address.is_some() { "a" } else { "no" }
            )));
        }
    }
    Ok(FlipPlan {
        from: live,
        to: other,
        redeploy,
        finishing: false,
    })
}

/// Observe and decide a flip, and check what the caller asked for: the part of a promote or
/// rollback that changes nothing, shared by the real run and `--dry-run`. Returns the world, the
/// plan and the public URL.
async fn prepare(
    ctx: &Ctx,
    stacks: &Stacks,
    kind: Flip,
    expect_digest: Option<&str>,
) -> Result<(World, FlipPlan, String)> {
    let c = &ctx.config;
    let action = kind.action();
    let world = observe(ctx, stacks).await?;
    let plan = plan_flip(ctx, &world, kind).await?;
    // Promote: the candidate must run the expected image; rollback: the colour being rolled
    // back from must (so CI never rolls back a release it did not make).
    if let Some(want) = expect_digest {
        let (checked, hint) = match kind {
            Flip::Promote { .. } => (
                plan.to,
                "another release replaced the candidate; run `release up` for this build again",
            ),
            Flip::Rollback { .. } => (
                plan.from,
                "that image is not live (a failed promote flips back by itself); check `release status`",
            ),
        };
        let got = world.colours[&checked].digest.as_deref().unwrap_or("none");
        if got != want {
            return Err(Failure::new(
                Exit::Precondition,
                action,
                format!(
                    "nothing to {action}: {} runs {got}, not the expected {want}",
                    colour::name(c, checked)
                ),
                hint,
            ));
        }
    }
    let Some(public) = public_url(ctx, &world.edge) else {
        return Err(Failure::new(
            Exit::Precondition,
            action,
            "the edge stack has no public URL",
            "run `release up` to finish the edge stack",
        ));
    };
    Ok((world, plan, public))
}

/// The image digest and model version traffic goes to: the ledger's when `to` is redeployed,
/// else what `to` runs.
fn target_image(
    c: &crate::config::Config,
    world: &World,
    plan: &FlipPlan,
) -> (Option<String>, String) {
    match &plan.redeploy {
        Some(r) => (
            r.image_digest.clone(),
            r.model_version.clone().unwrap_or_default(),
        ),
        None => (
            world.colours[&plan.to].digest.clone(),
            world.colours[&plan.to]
                .model_version
                .clone()
                .unwrap_or_else(|| c.model.version.clone()),
        ),
    }
}

/// The retirement a flip of `kind` ends with.
fn retires(kind: Flip) -> bool {
    match kind {
        Flip::Promote { retire_previous } => retire_previous,
        Flip::Rollback { keep_failed } => !keep_failed,
    }
}

/// `--dry-run` of promote and rollback: the same checks and decisions as the real run (and its
/// exit codes), printed as a plan; nothing is written, not even the lock.
async fn dry_run_flip(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &crate::store::StateStore,
    force_unlock: bool,
    kind: Flip,
    expect_digest: Option<&str>,
) -> Result<Value> {
    let c = &ctx.config;
    store
        .check_lock(&crate::session::hostname(), force_unlock, ctx.yes)
        .await?;
    let (world, plan, public) = prepare(ctx, stacks, kind, expect_digest).await?;
    let cases = crate::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
        .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?;
    let (digest, version) = target_image(c, &world, &plan);
    let redeploy = match (&plan.redeploy, &digest) {
        (Some(_), Some(d)) => {
            let registry = stacks.observe(&c.stack_name("registry")).await?;
            let uri = registry.output(&c.stack_name("registry"), "RepositoryUri")?;
            Some(format!("{uri}@{d}"))
        }
        _ => None,
    };
    let facts = crate::plan::FlipFacts {
        action: kind.action(),
        from: colour::name(c, plan.from),
        to: colour::name(c, plan.to),
        from_exists: world.colours[&plan.from].exists,
        from_addr: world.colours[&plan.from].address.clone(),
        to_addr: redeploy
            .is_none()
            .then(|| world.colours[&plan.to].address.clone())
            .flatten(),
        redeploy,
        model_version: version.clone(),
        finishing: plan.finishing,
        cases: cases.cases.len(),
        requests: c.smoke.requests,
        public_url: public.clone(),
        invalidate: c.edge.invalidate,
        retire: retires(kind),
    };
    let steps = crate::plan::flip_steps(&facts);
    Ok(print_plan(
        ctx,
        &steps,
        json!({"live": plan.from, "to": plan.to, "image_digest": digest, "model_version": version, "public url": public}),
    ))
}

/// Print a dry run's steps (`plan: <step>: <what>`) and return them as the command's summary,
/// with `extra`'s fields.
pub fn print_plan(ctx: &Ctx, steps: &[crate::plan::PlannedStep], extra: Value) -> Value {
    for s in steps {
        ctx.out.note(&format!("plan: {}: {}", s.step, s.what));
    }
    let mut summary = match extra {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    summary.insert("plan".into(), json!(steps));
    summary.insert("dry run".into(), json!("nothing was changed"));
    Value::Object(summary)
}

async fn flip_to(
    ctx: &Ctx,
    force_unlock: bool,
    kind: Flip,
    expect_digest: Option<&str>,
) -> Result<Value> {
    let started = Instant::now();
    let stacks = ctx.stacks();
    let store = ctx.store();
    let c = &ctx.config;
    let action = kind.action();
    if !store.bucket_exists().await? {
        return Err(Failure::new(
            Exit::Precondition,
            action,
            format!("nothing to {action}: {} was never released", c.app),
            "run `release up` first",
        ));
    }
    if ctx.dry_run {
        return dry_run_flip(ctx, &stacks, &store, force_unlock, kind, expect_digest).await;
    }
    // The lock first, so that what is observed cannot change under this run.
    let id = begin(ctx, &store, action, force_unlock, vec![]).await?;
    let planned = async {
        let (world, plan, public) = prepare(ctx, &stacks, kind, expect_digest).await?;
        let client = world
            .cluster
            .as_ref()
            .expect("a live colour implies a cluster")
            .client()
            .await?;
        Ok::<_, Failure>((world, plan, public, client))
    }
    .await;
    let (world, plan, public, client) = match planned {
        Ok(p) => p,
        Err(e) => {
            // Nothing to do is not a failed release: the ledger says so.
            let nothing = e.exit == Exit::Precondition;
            finish_session(ctx, (!nothing).then(|| e.to_string()), Some(!nothing)).await;
            return Err(e);
        }
    };
    let (from, to) = (plan.from, plan.to);
    let from_addr = world.colours[&from].address.clone();
    let (digest, version) = target_image(c, &world, &plan);
    // What this run moves traffic to, in the ledger before anything changes.
    let _ = store
        .update_ledger(|l| {
            if let Some(r) = l.get_mut(&id) {
                r.colour = Some(to.to_string());
                r.image_digest = digest.clone();
                r.model_version = Some(version.clone());
            }
        })
        .await;

    let result = async {
        let secret = colour::ensure_namespace_and_secret(&client, c).await?;
        let cases = crate::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
            .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?;
        let to_addr = match &digest {
            Some(d) if plan.redeploy.is_some() => {
                redeploy(ctx, &stacks, &client, &store, &id, to, d, &version).await?
            }
            _ => world.colours[&to].address.clone().unwrap_or_default(),
        };
        let target = crate::smoke::Target {
            base_url: format!("http://{to_addr}:{}", c.deploy.service_port),
            colour: to,
            model_version: &version,
            secret: &secret,
        };
        if !plan.finishing {
            let smoke_name = format!("smoke {}", colour::name(c, to));
            step(ctx, &store, &id, &smoke_name, &target.base_url, async {
                let summary =
                    smoke_test(ctx, &target, &cases, c.smoke.requests, None, Some(&smoke_name))
                        .await?;
                Ok(((), summary))
            })
            .await?;
            // The colour keeps `redeploy`'s teardown-on-failure no longer: it is tested.
            if let Some(s) = ctx.session.lock().await.as_mut() {
                s.candidate = None;
            }
            // Mark the flip before making it, so that a run dying after it is finished, not redone.
            annotate(&client, ctx, to, None, Some(kind.pending())).await?;
            step(
                ctx,
                &store,
                &id,
                "flip",
                &format!(
                    "edge origin {} -> {to_addr}",
                    from_addr.as_deref().unwrap_or("-")
                ),
                async {
                    flip(ctx, &stacks, &world.edge, &to_addr, "flip").await?;
                    Ok(((), format!("{from} -> {to}")))
                },
            )
            .await?;
        }
        // No origin header through the public URL: the edge must add it.
        let public_target = crate::smoke::Target {
            base_url: public.trim_end_matches('/').to_string(),
            secret: "",
            ..target
        };
        let verified = step(ctx, &store, &id, "verify public URL", &public, async {
            wait_public(
                &public_target.base_url,
                to,
                Duration::from_secs(c.edge.verify_timeout_seconds),
            )
                .await
                .map_err(|e| Failure::new(Exit::Verify, "verify public URL", e, ""))?;
            let summary = smoke_test(
                ctx,
                &public_target,
                &cases,
                c.smoke.requests.min(20),
                None,
                None,
            )
            .await?;
            // Live and answering: from now on this is the colour a later rollback returns from.
            mark_live(&store, &id, to).await?;
            Ok(((), summary))
        })
        .await;
        if let Err(e) = verified {
            let Some(back) = from_addr.clone().filter(|_| world.colours[&from].exists) else {
                return Err(Failure::new(
                    Exit::Verify,
                    "verify public URL",
                    e.message,
                    format!("{from} is gone, so there is nothing to flip back to; check `release status`"),
                ));
            };
            ctx.out
                .note(&format!("verification failed: flipping back to {from}"));
            step(
                ctx,
                &store,
                &id,
                "flip back",
                &format!("edge origin -> {back}"),
                async {
                    flip(ctx, &stacks, &world.edge, &back, "flip back").await?;
                    Ok(((), format!("{from} is live again")))
                },
            )
            .await?;
            annotate(&client, ctx, to, None, None).await?;
            return Err(Failure::new(
                Exit::Verify,
                "verify public URL",
                e.message,
                format!("flipped back: {from} serves again; {to} stays deployed for inspection"),
            ));
        }
        annotate(&client, ctx, to, Some(Role::Live), None).await?;
        if world.colours[&from].exists {
            let role = match kind {
                Flip::Promote { .. } => Role::Previous,
                Flip::Rollback { .. } => Role::Failed,
            };
            annotate(&client, ctx, from, Some(role), None).await?;
        }
        let retire = retires(kind);
        if retire && world.colours[&from].exists {
            step(
                ctx,
                &store,
                &id,
                &format!("retire {}", colour::name(c, from)),
                "",
                async {
                    colour::teardown(&client, c, from).await?;
                    Ok(((), "removed".to_string()))
                },
            )
            .await?;
        }
        Ok(retire)
    }
    .await;
    finish_session(
        ctx,
        result.as_ref().err().map(|e| e.to_string()),
        Some(true),
    )
    .await;
    let retired = result?;
    let old = match (kind, retired, world.colours[&from].exists) {
        (_, _, false) => json!("none"),
        (_, true, _) => json!("retired"),
        (Flip::Promote { .. }, false, _) => json!(from),
        (Flip::Rollback { .. }, false, _) => json!(format!("{from} (failed, kept)")),
    };
    let label = if matches!(kind, Flip::Promote { .. }) {
        "previous"
    } else {
        "rolled back from"
    };
    Ok(json!({
        "release": id, "live": to, label: old, "image_digest": digest, "model_version": version,
        "public url": public, "duration": format!("{:.1} s", started.elapsed().as_secs_f64()),
    }))
}

/// Deploy `colour` again from an image digest the ledger recorded (a rollback to a retired
/// colour), as the `previous` colour; torn down again if the run fails before the flip.
#[allow(clippy::too_many_arguments)]
async fn redeploy(
    ctx: &Ctx,
    stacks: &Stacks,
    client: &kube::Client,
    store: &crate::store::StateStore,
    id: &str,
    to: Colour,
    digest: &str,
    version: &str,
) -> Result<String> {
    let c = &ctx.config;
    let registry = stacks.observe(&c.stack_name("registry")).await?;
    let uri = registry.output(&c.stack_name("registry"), "RepositoryUri")?;
    let image = format!("{uri}@{digest}");
    let mut then = c.clone();
    then.model.version = version.to_string();
    let (manifests, _) = colour::render(
        &ctx.base.join(&c.deploy.templates),
        &then,
        to,
        &image,
        digest,
        id,
        "previous",
    )
    .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
    if let Some(s) = ctx.session.lock().await.as_mut() {
        s.candidate = Some((client.clone(), to));
    }
    let name = format!("redeploy {}", colour::name(c, to));
    step(ctx, store, id, &name, &image, async {
        let addr = crate::commands::steps::roll_out(ctx, client, to, &manifests, &name).await?;
        Ok((
            addr.clone(),
            format!("{digest} (model {version}) ready at {addr}"),
        ))
    })
    .await
}
