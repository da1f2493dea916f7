//! `release promote`: put the tested candidate live by changing the edge stack's origin, verify
//! through the public URL, and flip back by itself if that fails. `release status` and
//! `release history`: what is there, and what happened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::colour::{self, Colour, Pending, Role};
use crate::error::{Exit, Failure, Result, sdk};
use crate::stacks::{Observed, Stacks};
use crate::up::{Ctx, begin, finish_session, mark_live, smoke_test, step, wait_deployed};

/// The world as `promote` and `status` need it.
pub struct World {
    pub cluster: Option<crate::eks::Cluster>,
    pub edge: Observed,
    pub colours: BTreeMap<Colour, colour::Observed>,
    pub live: Option<Colour>,
}

pub async fn observe(ctx: &Ctx, stacks: &Stacks) -> Result<World> {
    let c = &ctx.config;
    let cluster_stack = stacks.observe(&c.stack_name("cluster")).await?;
    let edge = stacks.observe(&c.stack_name("edge")).await?;
    let mut colours = BTreeMap::new();
    let mut cluster = None;
    if let Some(name) = cluster_stack.outputs.get("ClusterName") {
        let conn = crate::eks::Cluster::connect(&ctx.aws, name).await?;
        let client = conn.client().await?;
        for col in Colour::ALL {
            colours.insert(col, colour::observe(&client, c, col).await?);
        }
        cluster = Some(conn);
    }
    let addresses: BTreeMap<Colour, Option<String>> = colours
        .iter()
        .map(|(k, v)| (*k, v.address.clone()))
        .collect();
    let live = colour::live_colour(
        edge.parameters.get("OriginDomain").map(String::as_str),
        &addresses,
    );
    Ok(World {
        cluster,
        edge,
        colours,
        live,
    })
}

pub fn public_url(ctx: &Ctx, edge: &Observed) -> Option<String> {
    ctx.config.edge.public_url.clone().or_else(|| {
        edge.outputs
            .get("DistributionDomainName")
            .map(|d| format!("https://{d}"))
    })
}

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

/// Poll the public URL until `/version` reports `colour`.
pub async fn wait_public(
    url: &str,
    colour: Colour,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let http = crate::smoke::http_client(Duration::from_secs(5));
    crate::wait::until(
        crate::wait::Deadline::new(timeout, Duration::from_millis(250)),
        async || {
            Ok(match http.get(format!("{url}/version")).send().await {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) if v["colour"] == colour.as_str() => crate::wait::Check::Done(()),
                    Ok(v) => crate::wait::Check::Pending(format!("answered by {}", v["colour"])),
                    Err(e) => crate::wait::Check::Pending(e.to_string()),
                },
                Err(e) => crate::wait::Check::Pending(e.to_string()),
            })
        },
        |last, _| format!("{url} did not answer from {colour} within {timeout:?} ({last})"),
    )
    .await
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
        .check_lock(&crate::up::hostname(), force_unlock, ctx.yes)
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
        let addr = crate::up::roll_out(ctx, client, to, &manifests, &name).await?;
        Ok((
            addr.clone(),
            format!("{digest} (model {version}) ready at {addr}"),
        ))
    })
    .await
}

/// `release status`: live, candidate and previous colours, the public URL, the stacks, the lock.
pub async fn status(ctx: &Ctx) -> Result<Value> {
    let stacks = ctx.stacks();
    let store = ctx.store();
    let c = &ctx.config;
    let mut stack_states = serde_json::Map::new();
    for t in crate::config::TEMPLATES {
        let o = stacks.observe(&c.stack_name(t)).await?;
        stack_states.insert(
            c.stack_name(t),
            json!(o.status.unwrap_or_else(|| "absent".into())),
        );
    }
    let world = observe(ctx, &stacks).await?;
    let http = crate::smoke::http_client(Duration::from_secs(5));
    let roles = colour::roles(world.live, &world.colours);
    let now = crate::store::now() as i64;
    let mut colours = serde_json::Map::new();
    for (col, o) in &world.colours {
        if !o.exists {
            continue;
        }
        let healthy = match &o.address {
            Some(a) => http
                .get(format!("http://{a}:{}/readyz", c.deploy.service_port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            None => false,
        };
        colours.insert(
            colour::name(c, *col),
            json!({
                "colour": col, "role": roles.roles.get(col), "image_digest": o.digest,
                "model_version": o.model_version,
                "age": o.created.map(|t| humantime::format_duration(Duration::from_secs(now.saturating_sub(t).max(0) as u64)).to_string()),
                "pods_ready": format!("{}/{}", o.ready, o.replicas), "address": o.address, "healthy": healthy,
            }),
        );
    }
    // CloudFront's own word on the edge: `InProgress` while a change spreads, then `Deployed`.
    let edge_state = match world.edge.outputs.get("DistributionId") {
        Some(id) => crate::endpoint::cloudfront(&ctx.aws)
            .get_distribution()
            .id(id)
            .send()
            .await
            .map(|d| {
                d.distribution()
                    .map(|d| d.status().to_string())
                    .unwrap_or_default()
            })
            .unwrap_or_else(|e| format!("unknown ({})", sdk(e))),
        None => "absent".into(),
    };
    let public = public_url(ctx, &world.edge);
    let public_colour = match &public {
        Some(u) => match http.get(format!("{u}/version")).send().await {
            Ok(r) => r.json::<Value>().await.ok().map(|v| v["colour"].clone()),
            Err(_) => None,
        },
        None => None,
    };
    let lock = if store.bucket_exists().await? {
        store.read_lock().await?.map(|l| {
            let gone = l.holder_gone(&crate::up::hostname(), crate::store::process_alive);
            let d = l.describe(crate::store::now());
            if gone {
                format!("{d}; its process is gone: the next command needs --force-unlock")
            } else {
                d
            }
        })
    } else {
        None
    };
    Ok(json!({
        "app": c.app,
        "live": world.live,
        "colours": colours,
        "public url": public,
        "public url answers from": public_colour,
        "edge": edge_state,
        "unfinished": roles.unfinished.map(|a| format!(
            "a {a} moved the edge to {} and died before verifying it: re-run `release {a}` to finish it (or `release rollback`)",
            world.live.map_or("-", Colour::as_str)
        )),
        "stacks": stack_states,
        "lock": lock.unwrap_or_else(|| "free".into()),
    }))
}

/// `release history`: the ledger, newest last.
pub async fn history(ctx: &Ctx, limit: usize) -> Result<Value> {
    let store = ctx.store();
    if !store.bucket_exists().await? {
        return Ok(json!({"releases": []}));
    }
    let ledger = store.ledger().await?;
    let skip = ledger.releases.len().saturating_sub(limit);
    let rows: Vec<Value> = ledger
        .releases
        .iter()
        .skip(skip)
        .map(|r| {
            json!({
                "id": r.id, "action": r.action, "colour": r.colour, "image": r.image_tag, "digest": r.image_digest,
                "outcome": r.outcome, "went_live": r.went_live, "model_version": r.model_version, "duration_s": r.finished.map(|f| f.saturating_sub(r.started)), "actor": r.actor,
                "ci_build_url": r.ci_build_url, "error": r.error,
            })
        })
        .collect();
    Ok(json!({"releases": rows}))
}

/// Delete one stack as a reported step; one already gone is "absent".
async fn delete_stack(ctx: &Ctx, stacks: &Stacks, name: &str) -> Result<&'static str> {
    if !stacks.observe(name).await?.exists() {
        return Ok("absent");
    }
    let step = format!("delete {name}");
    ctx.out.start(&step, "");
    crate::up::hold_hook(&step).await;
    let start = Instant::now();
    match stacks
        .delete(name, &mut |p| ctx.out.progress(&step, p))
        .await
    {
        Ok(()) => {
            ctx.out.finish(&step, true, "deleted", start.elapsed());
            Ok("deleted")
        }
        Err(e) => {
            ctx.out.finish(&step, false, &e.message, start.elapsed());
            Err(e)
        }
    }
}

/// `--dry-run` of destroy: what it would delete, in its order, and what it would keep.
async fn dry_run_destroy(ctx: &Ctx, force_unlock: bool, delete_images: bool) -> Result<Value> {
    let c = &ctx.config;
    let stacks = ctx.stacks();
    let store = ctx.store();
    let bucket = store.bucket_exists().await?;
    store
        .check_lock(&crate::up::hostname(), force_unlock, ctx.yes)
        .await?;
    let mut facts = crate::plan::DestroyFacts {
        namespace: c.deploy.namespace.clone(),
        app: c.app.clone(),
        delete_images,
        bucket: bucket.then(|| c.state_bucket()),
        ..Default::default()
    };
    for t in ["edge", "cluster", "network", "registry"] {
        let name = c.stack_name(t);
        let observed = stacks.observe(&name).await?;
        if t == "cluster"
            && let Some(cluster) = observed.outputs.get("ClusterName")
        {
            let client = crate::eks::Cluster::connect(&ctx.aws, cluster)
                .await?
                .client()
                .await?;
            for col in Colour::ALL {
                if colour::observe(&client, c, col).await?.exists {
                    facts.colours.push(colour::name(c, col));
                }
            }
            facts.cluster = true;
        }
        facts.stacks.push((name, observed.status));
    }
    if delete_images {
        facts.images = crate::endpoint::ecr(&ctx.aws)
            .list_images()
            .repository_name(&c.app)
            .send()
            .await
            .ok()
            .map(|i| i.image_ids().len());
    }
    Ok(print_plan(
        ctx,
        &crate::plan::destroy_steps(&facts),
        json!({}),
    ))
}

/// `release destroy`: everything `release` made for the app, in dependency order, each step
/// skipping what is already gone, so a re-run after a crash finishes the job. Images (and with
/// them the registry stack and the state bucket) go only with `--delete-images`.
pub async fn destroy(ctx: &Ctx, force_unlock: bool, delete_images: bool) -> Result<Value> {
    use std::io::IsTerminal;
    let c = &ctx.config;
    let unconfirmable = !ctx.yes && !std::io::stdin().is_terminal();
    let refusal = |hint: &str| {
        Failure::new(
            Exit::Usage,
            "destroy",
            "refusing to destroy without confirmation",
            hint,
        )
    };
    // A dry run deletes nothing and asks nothing, but exits as the real command would decide:
    // refused (2) where it could not ask.
    if ctx.dry_run {
        let plan = dry_run_destroy(ctx, force_unlock, delete_images).await?;
        if unconfirmable {
            return Err(refusal(
                "add --yes (no TTY to ask on); the plan above is what destroy would do",
            ));
        }
        return Ok(plan);
    }
    if !ctx.yes {
        if unconfirmable {
            return Err(refusal("add --yes (no TTY to ask on)"));
        }
        eprint!(
            "destroy everything release made for {}? type the app name to confirm: ",
            c.app
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Failure::new(Exit::Usage, "destroy", e.to_string(), "add --yes"))?;
        if answer.trim() != c.app {
            return Err(Failure::new(
                Exit::Usage,
                "destroy",
                "not confirmed",
                "type the app name, or add --yes",
            ));
        }
    }
    let stacks = ctx.stacks();
    let store = ctx.store();
    let mut summary = serde_json::Map::new();
    let locked = store.bucket_exists().await?;
    let id = if locked {
        Some(begin(ctx, &store, "destroy", force_unlock, vec![]).await?)
    } else {
        None
    };
    let result = async {
        let cluster_stack = stacks.observe(&c.stack_name("cluster")).await?;
        if let Some(name) = cluster_stack.outputs.get("ClusterName") {
            let client = crate::eks::Cluster::connect(&ctx.aws, name)
                .await?
                .client()
                .await?;
            for col in Colour::ALL {
                colour::teardown(&client, c, col).await?;
            }
            colour::remove_app(&client, c).await?;
            summary.insert("colours".into(), json!("removed"));
            // Before the cluster goes: the controller deletes each NLB while it still runs.
            let step = "load balancers";
            ctx.out
                .start(step, "waiting for the Services' NLBs to be deleted");
            let start = Instant::now();
            let timeout = std::time::Duration::from_secs(c.deploy.address_timeout_seconds);
            match colour::wait_load_balancers_gone(&client, c, timeout, |p| {
                ctx.out.progress(step, &p)
            })
            .await
            {
                Ok(done) => {
                    ctx.out.finish(step, true, &done, start.elapsed());
                    summary.insert(step.into(), json!(done));
                }
                Err(e) => {
                    ctx.out.finish(step, false, &e.message, start.elapsed());
                    return Err(e);
                }
            }
        }
        for t in ["edge", "cluster", "network"] {
            let name = c.stack_name(t);
            let done = delete_stack(ctx, &stacks, &name).await?;
            summary.insert(name, json!(done));
        }
        Ok::<(), Failure>(())
    }
    .await;
    if let Err(e) = result {
        if id.is_some() {
            finish_session(ctx, Some(e.to_string()), Some(true)).await;
        }
        return Err(e);
    }
    let registry = c.stack_name("registry");
    if !delete_images {
        if id.is_some() {
            finish_session(ctx, None, Some(true)).await;
        }
        summary.insert(registry, json!("kept: it holds the images (--delete-images removes them, the registry and the state bucket)"));
        return Ok(Value::Object(summary));
    }
    // The images, the registry stack, then the state bucket (its ledger and lock) last.
    if id.is_some() {
        finish_session(ctx, None, Some(true)).await;
    }
    let ecr = crate::endpoint::ecr(&ctx.aws);
    let fail = |step: &str, e: String| {
        Failure::new(
            Exit::Aws,
            step,
            e,
            "re-run release destroy --delete-images; it continues",
        )
    };
    if let Ok(images) = ecr.list_images().repository_name(&c.app).send().await {
        let ids: Vec<_> = images.image_ids().to_vec();
        if !ids.is_empty() {
            ecr.batch_delete_image()
                .repository_name(&c.app)
                .set_image_ids(Some(ids))
                .send()
                .await
                .map_err(|e| fail("delete images", sdk(e)))?;
        }
    }
    delete_stack(ctx, &stacks, &registry).await?;
    summary.insert(registry, json!("deleted, with its images"));
    let bucket = c.state_bucket();
    if store.bucket_exists().await? {
        let s3 = crate::endpoint::s3(&ctx.aws);
        // Every version of every object (the ledger has one per write), a page at a time: each
        // page deleted is gone from the next listing.
        loop {
            let page = s3
                .list_object_versions()
                .bucket(&bucket)
                .send()
                .await
                .map_err(|e| fail("state bucket", sdk(e)))?;
            let ids = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                )
                .map(|(key, version)| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(key.unwrap_or_default())
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .map_err(|e| fail("state bucket", e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            if ids.is_empty() {
                break;
            }
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(ids))
                .build()
                .map_err(|e| fail("state bucket", e.to_string()))?;
            let deleted = s3
                .delete_objects()
                .bucket(&bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| fail("state bucket", sdk(e)))?;
            if let Some(e) = deleted.errors().first() {
                return Err(fail(
                    "state bucket",
                    format!(
                        "{} could not be deleted: {}",
                        e.key().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                ));
            }
        }
        s3.delete_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| fail("state bucket", sdk(e)))?;
    }
    summary.insert(bucket, json!("deleted"));
    Ok(Value::Object(summary))
}
