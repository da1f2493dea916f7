//! `release promote` and `release rollback`: observe under the lock, decide the flip
//! (`plan::flip::plan_flip`), then print its plan (`--dry-run`) or execute the same plan step by
//! step: smoke the target, mark it pending, point the edge stack's origin at it, verify through
//! the public URL (flipping back by itself if that fails), write the roles, retire or keep the
//! colour traffic left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::adapters::colour::{self, Colour, Role};
use crate::adapters::stacks::{Observed, Stacks};
use crate::adapters::store::StateStore;
use crate::commands::observe::{World, observe, public_url};
use crate::commands::print_plan;
use crate::commands::steps::{
    Towards, annotate, flip, mark_live, protect_images, smoke_test, wait_public,
};
use crate::error::{Exit, Failure, Result};
use crate::plan::flip::{Flip, FlipPlan, FlipSettings, FlipStep, FlipWorld, Refusal};
use crate::session::{Ctx, begin, finish_session, step};

/// `expect_digest`: promote only if the candidate runs this image (CI passes the digest its own
/// `release up` deployed, so that an approval never promotes another pipeline's candidate).
/// `bake`: watch the new live colour this long after the verified flip (`promote --bake`);
/// `None`: `promote.bake_seconds`.
pub async fn promote(
    ctx: &Ctx,
    force_unlock: bool,
    retire_previous: bool,
    expect_digest: Option<&str>,
    bake: Option<Duration>,
    allow_contract_change: bool,
    canary: Option<u8>,
) -> Result<Value> {
    let asked = Asked {
        // `--bake 0s` turns off a bake the config asks for.
        bake_seconds: bake.map_or(ctx.config.promote.bake_seconds, |d| d.as_secs()),
        allow_contract_change,
        canary,
    };
    if canary.is_some() {
        // Refused before the lock: nothing is read or changed.
        if !ctx.config.edge.preview {
            return Err(Failure::new(
                Exit::Config,
                "canary",
                "--canary needs CloudFront continuous deployment, which edge.preview turns on",
                "set edge.preview: true and run release up (the candidate goes behind the staging distribution), then promote --canary",
            ));
        }
        if asked.bake_seconds == 0 {
            return Err(Failure::new(
                Exit::Config,
                "canary",
                "a canary without a bake is not judged by anything",
                "give --bake DURATION or promote.bake_seconds",
            ));
        }
    }
    flip_to(
        ctx,
        force_unlock,
        Flip::Promote { retire_previous },
        expect_digest,
        asked,
    )
    .await
}

/// What a promote's command line asks beyond the config (a rollback asks neither).
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    /// The bake after the verified flip, in seconds (0: none).
    bake_seconds: u64,
    /// `--allow-contract-change`.
    allow_contract_change: bool,
    /// `--canary PERCENT`.
    canary: Option<u8>,
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
        Asked::default(),
    )
    .await
}

/// What a bake compares its colour's 5xx share with (`analysis.max_error_rate_increase`).
#[derive(Debug, Clone, Copy)]
enum Baseline {
    /// The other colour over the same time: a canary's, both serving viewers.
    SameWindow,
    /// What the other colour's pods served over their lifetime, read as the bake begins: after
    /// the flip it serves no one, so its figures from before are the baseline.
    Lifetime,
}

/// What a flip decides from, and its plan.
type Prepared = (World, FlipPlan, crate::adapters::smoke::Cases);

/// Observe what a flip of `kind` decides from, and decide it: the part of a promote or rollback
/// that changes nothing, shared by the real run (under the lock) and `--dry-run`. The inner
/// error is the planner's refusal, kept apart so that the ledger can tell "nothing to do" from a
/// refusal (an unsettled or stray edge) that is a failed release.
async fn prepare(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    kind: Flip,
    expect_digest: Option<&str>,
    asked: Asked,
) -> Result<std::result::Result<Prepared, Refusal>> {
    let c = &ctx.config;
    let world = observe(ctx, stacks).await?;
    let edge = crate::commands::observe::edge_state(ctx, &world.edge, kind.action()).await?;
    let mut facts = FlipWorld {
        app: c.app.clone(),
        live: world.live,
        edge,
        colours: world.colours.clone(),
        previous_live: None,
        repository_uri: None,
        public_url: public_url(ctx, &world.edge),
        model_version: c.model.version.clone(),
    };
    // Only a rollback may redeploy a retired colour: only it reads the ledger and the registry.
    if let (Flip::Rollback { .. }, Some(live)) = (kind, world.live) {
        if let Some(r) = store.previous_live(live.as_str()).await? {
            let go_live = crate::state::go_live_of(&r).map_err(|e| {
                Failure::new(
                    Exit::Aws,
                    "ledger",
                    format!("release {} in the ledger cannot be redeployed: {e}", r.id),
                    "the state bucket holds a value release never wrote: check who wrote it (its object versions, CloudTrail) before rolling back",
                )
            })?;
            facts.previous_live = Some(go_live);
        }
        let registry = stacks.observe(&c.stack_name("registry")).await?;
        facts.repository_uri = registry.outputs.get("RepositoryUri").cloned();
    }
    let cases = crate::adapters::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
        .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?;
    let settings = FlipSettings {
        cases: cases.cases.len(),
        requests: c.smoke.requests,
        invalidate: c.edge.invalidate,
        vpc: c.edge.origin_access == crate::config::OriginAccess::Vpc,
        bake_seconds: asked.bake_seconds,
        allow_contract_change: asked.allow_contract_change,
        shadow: c.smoke.shadow.is_some(),
        canary: asked.canary,
        alarms: c.analysis.alarms.len(),
        compare: c.analysis.max_error_rate_increase.is_some(),
        edge: c.analysis.max_edge_error_rate.is_some(),
        keep_warm: c.promote.retire_previous_after,
        replicas: c.deploy.replicas,
    };
    let plan = match crate::plan::flip::plan_flip(&facts, kind, expect_digest, settings) {
        Ok(plan) => plan,
        Err(r) => return Ok(Err(r)),
    };
    if plan.finishing {
        ctx.out.note(&format!(
            "an earlier {} moved the edge to {} but did not finish: verifying it and writing the roles",
            kind.action(),
            colour::name(c, plan.to)
        ));
    }
    if asked.canary.is_some()
        && !plan
            .steps
            .iter()
            .any(|s| matches!(s, FlipStep::Canary { .. }))
    {
        // A canary needs a live colour to share viewers with and a flip still to make.
        ctx.out.note(
            "--canary: no canary (nothing is live to share viewers with, or an earlier promote already flipped); the promote goes on without one",
        );
    }
    Ok(Ok((world, plan, cases)))
}

/// A refused flip as the command's failure: exit 8, or 5 for a registry stack without its output.
fn refused(ctx: &Ctx, kind: Flip, r: Refusal) -> Failure {
    let action = kind.action();
    match r {
        Refusal::Nothing { why, hint } => Failure::new(Exit::Precondition, action, why, hint),
        Refusal::NoPublicUrl => Failure::new(
            Exit::Precondition,
            action,
            "the edge stack has no public URL",
            "run `release up` to finish the edge stack",
        ),
        Refusal::Edge(r) => {
            let (why, hint) = r.explain();
            Failure::new(Exit::Precondition, action, why, hint)
        }
        Refusal::NoRepository => Failure::new(
            Exit::Aws,
            format!("stack {}", ctx.config.stack_name("registry")),
            "the stack has no output RepositoryUri",
            "the template in use is not the one release expects; run release up to update it",
        ),
    }
}

/// What a promote or rollback reports.
#[derive(Serialize)]
struct FlipSummary {
    release: String,
    live: Colour,
    /// Promote: the colour traffic left (`retired`, `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    /// Rollback: the colour traffic left (`<colour> (failed, kept)`, `retired`, `none`).
    #[serde(rename = "rolled back from", skip_serializing_if = "Option::is_none")]
    rolled_back_from: Option<String>,
    image_digest: Option<String>,
    model_version: String,
    #[serde(rename = "public url")]
    public_url: String,
    /// The plan's steps, as they were executed: the same as `--dry-run` prints.
    steps: Vec<String>,
    duration: String,
}

impl FlipSummary {
    /// The summary of `plan` executed as `steps` in `release`; `left_exists`: the colour traffic
    /// left was deployed.
    fn of(
        plan: &FlipPlan,
        release: String,
        left_exists: bool,
        steps: Vec<String>,
        started: Instant,
    ) -> FlipSummary {
        let (from, kind) = (plan.from, plan.kind);
        let old = match (left_exists, kind.retires(), kind) {
            (false, _, _) => "none".to_string(),
            (true, true, _) => "retired".to_string(),
            (true, false, Flip::Promote { .. }) => from.to_string(),
            (true, false, Flip::Rollback { .. }) => format!("{from} (failed, kept)"),
        };
        let promoted = matches!(kind, Flip::Promote { .. });
        FlipSummary {
            release,
            live: plan.to,
            previous: promoted.then(|| old.clone()),
            rolled_back_from: (!promoted).then_some(old),
            image_digest: plan.digest.clone(),
            model_version: plan.model_version.clone(),
            public_url: plan.public_url.clone(),
            steps,
            duration: format!("{:.1} s", started.elapsed().as_secs_f64()),
        }
    }
}

async fn flip_to(
    ctx: &Ctx,
    force_unlock: bool,
    kind: Flip,
    expect_digest: Option<&str>,
    asked: Asked,
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
        // The same checks and decisions as the real run (and its exit codes), printed as a plan;
        // nothing is written, not even the lock.
        store.check_lock(force_unlock, ctx.break_live_lock).await?;
        let (_, plan, _) = prepare(ctx, &stacks, &store, kind, expect_digest, asked)
            .await?
            .map_err(|r| refused(ctx, kind, r))?;
        return Ok(print_plan(
            ctx,
            &plan.printed(&c.app),
            json!({"live": plan.from, "to": plan.to, "image_digest": plan.digest,
                   "model_version": plan.model_version, "public url": plan.public_url}),
        ));
    }
    // The lock first, so that what is observed cannot change under this run.
    let id = begin(ctx, &store, action, force_unlock, vec![]).await?;
    let prepared = async {
        let failed = |e: Failure| (e, false);
        let (world, plan, cases) = match prepare(ctx, &stacks, &store, kind, expect_digest, asked)
            .await
            .map_err(failed)?
        {
            Ok(p) => p,
            Err(r) => {
                let nothing = matches!(r, Refusal::Nothing { .. });
                return Err((refused(ctx, kind, r), nothing));
            }
        };
        let cluster = world
            .cluster
            .as_ref()
            .expect("a live colour implies a cluster");
        let client = cluster.client().await.map_err(failed)?;
        let proxy = cluster.proxy_client().await.map_err(failed)?;
        Ok::<_, (Failure, bool)>((world, plan, cases, client, proxy))
    }
    .await;
    let (world, plan, cases, client, proxy) = match prepared {
        Ok(p) => p,
        Err((e, nothing)) => {
            // Nothing to do is not a failed release: the ledger says so. A refusal for another
            // reason (the edge unsettled or serving a stray origin) is, with its reason.
            finish_session(ctx, (!nothing).then(|| e.to_string()), Some(!nothing)).await;
            return Err(e);
        }
    };
    let mut run = Run {
        ctx,
        stacks: &stacks,
        store: &store,
        id: &id,
        client,
        proxy,
        edge: &world.edge,
        cases,
        plan: &plan,
        to_addr: world.colours[&plan.to].address.clone().unwrap_or_default(),
        secret: None,
        contract_changed: false,
        canary: None,
    };
    let result = run.execute().await;
    finish_session(
        ctx,
        result.as_ref().err().map(|e| e.to_string()),
        Some(true),
    )
    .await;
    let steps = result?;
    let summary = FlipSummary::of(&plan, id, world.colours[&plan.from].exists, steps, started);
    Ok(serde_json::to_value(summary).expect("a summary is plain data"))
}

/// The one executor of a flip's plan: each step mapped to its adapter calls, reported, recorded
/// in the ledger (the crash hook runs there), compensated when a later one fails.
struct Run<'a> {
    ctx: &'a Ctx,
    stacks: &'a Stacks,
    store: &'a StateStore,
    id: &'a str,
    client: kube::Client,
    /// The same cluster for the service proxy (no retries: the smoke test sees every answer).
    proxy: kube::Client,
    edge: &'a Observed,
    cases: crate::adapters::smoke::Cases,
    plan: &'a FlipPlan,
    /// The target's load-balancer address: as observed, or the one `Redeploy` made.
    to_addr: String,
    /// The origin Secret's value, once ensured.
    secret: Option<String>,
    /// The contract step found a change and `--allow-contract-change` allowed it.
    contract_changed: bool,
    /// The canary step gave the candidate at this address a share of viewers.
    canary: Option<String>,
}

impl Run<'_> {
    /// The app's namespace and origin Secret, ensured once (the first step that deploys or
    /// smoke-tests); returns the secret's value.
    async fn secret(&mut self) -> Result<String> {
        if self.secret.is_none() {
            self.secret =
                Some(colour::ensure_namespace_and_secret(&self.client, &self.ctx.config).await?);
        }
        Ok(self.secret.clone().unwrap_or_default())
    }

    /// Execute every step in order; returns their names.
    async fn execute(&mut self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for s in &self.plan.steps {
            if let Err(e) = self.run(s).await {
                // From the canary's stack update until the flip's, whatever fails takes the
                // canary's share back (nothing was flipped).
                return Err(match self.canary.is_some() {
                    true => self.canary_off(e, self.plan.to).await,
                    false => e,
                });
            }
            done.push(s.name(&self.ctx.config.app));
        }
        Ok(done)
    }

    async fn run(&mut self, s: &FlipStep) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let name = s.name(&c.app);
        let plan = self.plan;
        match s {
            FlipStep::Lock => {
                // Neither colour written by a run that took the lock after this one (the
                // generation fence), before anything changes.
                for c in [plan.from, plan.to] {
                    crate::session::fence_colour(ctx, &self.client, c).await?;
                }
                // Taken before observing; what this run moves traffic to goes in its entry now,
                // before anything changes.
                let _ = self
                    .store
                    .update_release(self.id, |r| {
                        r.colour = Some(plan.to.to_string());
                        r.image_digest = plan.digest.clone();
                        r.model_version = Some(plan.model_version.clone());
                        r.model_sha256 = Some(plan.model_sha256.clone()).filter(|h| !h.is_empty());
                    })
                    .await;
            }
            FlipStep::Redeploy {
                colour,
                image,
                digest,
                model_version,
                model_sha256,
            } => {
                crate::session::fence(ctx, &name).await?;
                // The pods read the origin Secret: in place before they are deployed.
                self.secret().await?;
                self.to_addr = self
                    .redeploy(&name, *colour, image, digest, (model_version, model_sha256))
                    .await?;
            }
            FlipStep::Smoke { colour, .. } => {
                let secret = self.secret().await?;
                let target = self.target(*colour, &secret);
                step(
                    ctx,
                    self.store,
                    self.id,
                    &name,
                    &target.base.describe(),
                    async {
                        let summary = smoke_test(
                            ctx,
                            &target,
                            &self.cases,
                            c.smoke.requests,
                            None,
                            Some(&name),
                        )
                        .await?;
                        Ok(((), summary))
                    },
                )
                .await?;
                // A redeployed colour is torn down on failure no longer: it is tested.
                if let Some(s) = ctx.session.lock().await.as_mut() {
                    s.candidate = None;
                }
            }
            FlipStep::Contract { from, to, allow } => {
                let secret = self.secret().await?;
                let what = "both colours' /version, through the API server's service proxy";
                self.contract_changed = step(ctx, self.store, self.id, &name, what, async {
                    self.contract(&name, *from, *to, *allow, &secret).await
                })
                .await?;
            }
            FlipStep::Shadow { from, to } => {
                let what = "the live pods' /shadow figures, through the API server's pod proxy";
                step(ctx, self.store, self.id, &name, what, async {
                    let summary = self.shadow(&name, *from, *to).await?;
                    Ok(((), summary))
                })
                .await?;
            }
            FlipStep::Canary {
                to,
                percent,
                to_addr,
            } => {
                crate::session::fence(ctx, &name).await?;
                let addr = to_addr.clone().ok_or_else(|| {
                    Failure::new(
                        Exit::Deploy,
                        &name,
                        format!("{} has no load-balancer address", colour::name(c, *to)),
                        "check `release status`, then re-run release promote",
                    )
                })?;
                let weight = format!("0.{percent:02}");
                // Set first: a wait that times out after the stack took the share is compensated.
                self.canary = Some(addr.clone());
                step(ctx, self.store, self.id, &name, &s.what(&c.app), async {
                    let changed = crate::commands::steps::set_candidate(
                        ctx,
                        self.stacks,
                        *to,
                        &addr,
                        &weight,
                        &name,
                    )
                    .await?;
                    Ok(((), changed))
                })
                .await?;
            }
            FlipStep::CanaryBake {
                to,
                seconds,
                against,
                ..
            } => {
                let against = against.map(|l| (l, Baseline::SameWindow));
                self.bake(&name, s, *to, *seconds, against, false).await?;
            }
            FlipStep::Flip {
                from,
                to,
                from_addr,
                ..
            } => {
                crate::session::fence(ctx, &name).await?;
                // Neither colour written by a later run (the generation fence), before the edge
                // moves.
                for c in [*from, *to] {
                    crate::session::fence_colour(ctx, &self.client, c).await?;
                }
                // Mark the flip before making it, so that a run dying after it is finished, not
                // redone.
                annotate(&self.client, ctx, *to, None, Some(plan.kind.pending())).await?;
                let to_addr = self.to_addr.clone();
                let what = format!(
                    "edge origin {} -> {to_addr}",
                    from_addr.as_deref().unwrap_or("-")
                );
                step(ctx, self.store, self.id, "flip", &what, async {
                    flip(
                        ctx,
                        self.stacks,
                        self.edge,
                        Towards::Colour(*to, &to_addr),
                        "flip",
                    )
                    .await?;
                    Ok(((), format!("{from} -> {to}")))
                })
                .await?;
                // The flip's stack update took the staging distribution and its policy away.
                self.canary = None;
            }
            FlipStep::Flipped { .. } => {}
            FlipStep::Keep { colour, .. } => {
                // Kept as it is: no deadline from an earlier promote stays on it.
                crate::commands::steps::keep_warm(&self.client, ctx, *colour, None, None, &name)
                    .await?;
            }
            FlipStep::KeepWarm { colour, seconds } => {
                let until = crate::adapters::store::now() as i64 + *seconds as i64;
                let what = s.what(&c.app);
                step(ctx, self.store, self.id, &name, &what, async {
                    crate::commands::steps::keep_warm(
                        &self.client,
                        ctx,
                        *colour,
                        Some(1),
                        Some(until),
                        &name,
                    )
                    .await?;
                    Ok((
                        (),
                        format!("1 replica until {}", crate::output::rfc3339_seconds(until)),
                    ))
                })
                .await?;
            }
            FlipStep::ScaleUp { colour, replicas } => {
                crate::session::fence(ctx, &name).await?;
                let what = s.what(&c.app);
                step(ctx, self.store, self.id, &name, &what, async {
                    crate::commands::steps::keep_warm(
                        &self.client,
                        ctx,
                        *colour,
                        Some(*replicas),
                        None,
                        &name,
                    )
                    .await?;
                    // The rollout's own wait: every replica ready, a crash loop or a pull
                    // failure named at once.
                    let timeout = Duration::from_secs(c.deploy.rollout_timeout_seconds);
                    colour::wait_rollout(&self.client, c, *colour, timeout, |p| {
                        ctx.out.progress(&name, &p)
                    })
                    .await?;
                    Ok(((), format!("{replicas} ready")))
                })
                .await?;
            }
            FlipStep::Verify {
                colour,
                url,
                requests,
                from,
                back,
            } => {
                // With a bake to come, the release counts as live only once it has passed.
                let baking = plan
                    .steps
                    .iter()
                    .any(|s| matches!(s, FlipStep::Bake { .. }));
                let verified = self.verify(*colour, url, *requests, !baking).await;
                if let Err(e) = verified {
                    return Err(self.flip_back(e, *colour, *from, back.as_deref()).await);
                }
            }
            FlipStep::Bake {
                colour,
                seconds,
                from,
                back,
                compare,
                ..
            } => {
                let against = compare.then_some((*from, Baseline::Lifetime));
                let baked = self.bake(&name, s, *colour, *seconds, against, true).await;
                if let Err(e) = baked {
                    return Err(self.flip_back(e, *colour, *from, back.as_deref()).await);
                }
            }
            FlipStep::Roles { live, old } => {
                crate::session::fence(ctx, &name).await?;
                annotate(&self.client, ctx, *live, Some(Role::Live), None).await?;
                if let Some((c, role)) = old {
                    annotate(&self.client, ctx, *c, Some(*role), None).await?;
                }
            }
            FlipStep::Retire { colour } => {
                crate::commands::steps::retire(
                    ctx,
                    self.store,
                    self.id,
                    &self.client,
                    *colour,
                    &name,
                    "",
                )
                .await?;
            }
            FlipStep::ProtectImages { in_use } => {
                protect_images(
                    ctx,
                    self.stacks,
                    self.store,
                    self.id,
                    &name,
                    in_use,
                    Some(plan.to),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The target as the smoke test sees it: its Service through the API server's service proxy.
    fn target<'s>(&'s self, colour: Colour, secret: &'s str) -> crate::adapters::smoke::Target<'s> {
        let c = &self.ctx.config;
        crate::adapters::smoke::Target {
            base: crate::adapters::smoke::Base::proxy(&self.proxy, c, colour),
            colour,
            model_version: &self.plan.model_version,
            model_sha256: &self.plan.model_sha256,
            secret,
        }
    }

    /// The contract step: `to`'s `/version` input and output against live `from`'s
    /// (`plan::contract`); a difference fails it (exit 7) unless `allow`. Returns whether the
    /// contract changed, and what it found. With `allow`, a live colour that does not answer
    /// is not compared (a promote that would restore service is not held up by it).
    async fn contract(
        &self,
        name: &str,
        from: Colour,
        to: Colour,
        allow: bool,
        secret: &str,
    ) -> Result<(bool, String)> {
        use crate::plan::contract::{Comparison, compare};
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let http = crate::adapters::smoke::http_client(Duration::from_secs(10));
        let mut seen = Vec::new();
        for col in [from, to] {
            let base = crate::adapters::smoke::Base::proxy(&self.proxy, c, col);
            let answer = crate::adapters::smoke::version(&http, &base, secret).await;
            if let (Err(e), true, true) = (&answer, allow, col == from) {
                let what = format!(
                    "not compared: live {} did not answer /version ({e}); allowed by --allow-contract-change",
                    colour::name(c, from)
                );
                ctx.out.note(&format!("{name}: {what}"));
                return Ok((false, what));
            }
            let v = answer.map_err(|e| {
                    Failure::new(
                        Exit::Smoke,
                        name,
                        format!("{}: /version: {e}", colour::name(c, col)),
                        "the colour must answer /version through the API server's service proxy; check its pods (`release status`)",
                    )
                })?;
            seen.push(v);
        }
        Ok(match compare(&seen[0], &seen[1]) {
            Comparison::Same(s) => (false, format!("the same as live's: {s}")),
            Comparison::LiveUnknown(why) => (false, why),
            Comparison::Differs(d) if allow => {
                let d = d.join("; ");
                ctx.out.note(&format!(
                    "the model contract changes (allowed by --allow-contract-change): {d}"
                ));
                (
                    true,
                    format!("changed, allowed by --allow-contract-change: {d}"),
                )
            }
            Comparison::Differs(d) => {
                return Err(Failure::new(
                    Exit::Smoke,
                    name,
                    format!(
                        "{}'s model contract differs from live {}'s: {}",
                        colour::name(c, to),
                        colour::name(c, from),
                        d.join("; ")
                    ),
                    "clients of the live model break on this change; if it is intended (and they are ready), promote with --allow-contract-change; the candidate stays deployed",
                ));
            }
        })
    }

    /// The shadow step: live `from`'s pods' `/shadow` figures about `to` (serving the plan's
    /// model version), summed and judged against `smoke.shadow` (`plan::shadow`); under the
    /// minimum fails it (exit 7) with the class changes. Returns what it found.
    async fn shadow(&self, name: &str, from: Colour, to: Colour) -> Result<String> {
        use crate::plan::shadow::{Verdict, judge, merge};
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let Some(s) = &c.smoke.shadow else {
            return Ok("smoke.shadow is not set".into());
        };
        let reports = colour::shadow_reports(&self.client, &self.proxy, c, from, "shadow").await?;
        let figures = merge(
            &reports,
            to.as_str(),
            &self.plan.model_version,
            &self.plan.model_sha256,
        );
        let _ = self
            .store
            .update_release(self.id, |r| r.shadow = Some(figures.to_json()))
            .await;
        if self.contract_changed {
            // Its answers mean something else now (other classes, another kind): agreement with
            // live's says nothing, and the change was allowed.
            let what = "not judged: the model contract changed (allowed by --allow-contract-change), so its answers are not comparable with live's".to_string();
            ctx.out
                .note(&format!("shadow {}: {what}", colour::name(c, to)));
            return Ok(what);
        }
        match judge(&figures, s.min_agreement, s.min_requests, s.required) {
            Verdict::Pass(what) => Ok(what),
            Verdict::NotJudged(what) => {
                ctx.out
                    .note(&format!("shadow {}: {what}", colour::name(c, to)));
                Ok(what)
            }
            Verdict::Refuse(why) => Err(Failure::new(
                Exit::Smoke,
                name,
                format!("{}: {why}", colour::name(c, to)),
                "the candidate answers real requests differently from live: check the model (its training data, features, preprocessing); if the change is intended, lower smoke.shadow.min_agreement for this promote's config; the candidate stays deployed",
            )),
        }
    }

    /// The public URL answers from `colour`, then passes `requests` smoke requests; the ledger
    /// marks the release live.
    async fn verify(&self, colour: Colour, url: &str, requests: u32, mark: bool) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        // No origin header through the public URL: the edge must add it.
        let public = crate::adapters::smoke::Target {
            base: crate::adapters::smoke::Base::Url(url.trim_end_matches('/').to_string()),
            ..self.target(colour, "")
        };
        step(ctx, self.store, self.id, "verify public URL", url, async {
            wait_public(
                url.trim_end_matches('/'),
                colour,
                Duration::from_secs(c.edge.verify_timeout_seconds),
            )
            .await
            .map_err(|e| Failure::new(Exit::Verify, "verify public URL", e, ""))?;
            let summary = smoke_test(ctx, &public, &self.cases, requests, None, None).await?;
            // Live and answering: from now on this is the colour a later rollback returns from
            // (after the bake, when there is one: a run that dies during it is finished by the
            // next, which sees the pending mark, verifies and bakes again).
            if mark {
                mark_live(self.store, self.id, colour).await?;
            }
            Ok(((), summary))
        })
        .await
    }

    /// The bake: for `seconds`, `colour`'s pods' `/predict` since the bake began (their own
    /// `/metrics`, summed, through the pod proxy) judged against `analysis` at each look
    /// (`plan::bake`); the first breach fails the step (exit 9: the caller flips back). Passed,
    /// the release is marked live.
    /// Watch `colour`'s `/predict` for `seconds`; `against`: the colour its 5xx share is compared
    /// with (`analysis.max_error_rate_increase`), and over which figures; `live`: it serves
    /// everyone now, and passing marks the release live (a canary's bake does not).
    async fn bake(
        &self,
        name: &str,
        s: &FlipStep,
        colour: Colour,
        seconds: u64,
        against: Option<(Colour, Baseline)>,
        live: bool,
    ) -> Result<()> {
        use crate::plan::bake::{Counts, Thresholds, judge, judge_increase, parse, since, total};
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let thresholds = Thresholds {
            min_requests: c.analysis.min_requests,
            max_error_rate: c.analysis.max_error_rate,
            max_p99_ms: c.analysis.max_p99_ms,
        };
        let every = ctx.poll_every(Duration::from_millis(500), Duration::from_secs(10));
        let look = |colour: Colour| async move {
            colour::pod_metrics(&self.client, &self.proxy, c, colour)
                .await
                .map(|m| {
                    m.into_iter()
                        .map(|(pod, text)| (pod, parse(&text)))
                        .collect::<BTreeMap<_, _>>()
                })
        };
        step(ctx, self.store, self.id, name, &s.what(&c.app), async {
            // A bake that cannot see is not a pass: no pod answering /metrics is a breach.
            let blind = |when: &str| {
                format!(
                    "no pod of {} answered /metrics through the API server's pod proxy {when} (check the pods, and that release may get pods/proxy)",
                    colour::name(c, colour)
                )
            };
            let baseline = look(colour).await?;
            // The other colour's figures as the bake begins: a pod without any counts from zero.
            let other_start = match against {
                Some((other, _)) => look(other).await?,
                None => BTreeMap::new(),
            };
            if baseline.is_empty() {
                return Err(Failure::new(Exit::Verify, name, blind("as the bake began"), ""));
            }
            // The distribution whose viewers the bake's colour serves: the staging one during a
            // canary, the primary after the flip; read from its first whole minute on.
            let edge = match c.analysis.max_edge_error_rate {
                Some(max) => {
                    let stack = c.stack_name("edge");
                    let output = if live { "DistributionId" } else { "StagingDistributionId" };
                    // An edge stack without a candidate outputs an empty StagingDistributionId.
                    let dist = self
                        .stacks
                        .observe(&stack)
                        .await?
                        .output(&stack, output)?
                        .to_string();
                    if dist.is_empty() {
                        return Err(Failure::new(
                            Exit::Aws,
                            name,
                            format!("the edge stack's output {output} is empty: no distribution to read CloudFront's figures of"),
                            "check `release status` (the preview), then re-run release promote",
                        ));
                    }
                    let from = crate::plan::bake::first_whole_minute(
                        crate::adapters::store::now() as i64,
                    );
                    Some((max, dist, std::time::UNIX_EPOCH + Duration::from_secs(from as u64)))
                }
                None => None,
            };
            let end = Instant::now() + Duration::from_secs(seconds);
            let verdict = loop {
                tokio::time::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
                let now = look(colour).await?;
                if now.is_empty() && Instant::now() >= end {
                    break Err(blind("at the end of the bake"));
                }
                // A pod that came since the bake began counts from zero.
                let seen: Vec<_> = now
                    .iter()
                    .map(|(pod, n)| since(baseline.get(pod).unwrap_or(&Default::default()), n))
                    .collect();
                let seen = total(&seen);
                let mut verdict = judge(&seen, &thresholds);
                if let (Ok(so_far), Some((other, how)), Some(max)) =
                    (&verdict, against, c.analysis.max_error_rate_increase)
                {
                    let figures: Vec<Counts> = match how {
                        Baseline::Lifetime => other_start.values().cloned().collect(),
                        Baseline::SameWindow => look(other)
                            .await?
                            .iter()
                            .map(|(pod, n)| {
                                since(other_start.get(pod).unwrap_or(&Default::default()), n)
                            })
                            .collect(),
                    };
                    let other = colour::name(c, other);
                    verdict = judge_increase(&seen, &total(&figures), &other, max, c.analysis.min_requests)
                        .map(|compared| format!("{so_far}; {compared}"));
                }
                if let (Ok(so_far), Some((max, dist, from))) = (&verdict, &edge) {
                    let at = std::time::SystemTime::now();
                    let minutes = match at > *from {
                        true => {
                            crate::adapters::alarms::edge_minutes(&ctx.aws, dist, *from, at, name)
                                .await?
                        }
                        false => Vec::new(),
                    };
                    verdict = crate::plan::bake::judge_edge(&minutes, dist, *max, c.analysis.min_requests)
                        .map(|edge| format!("{so_far}; {edge}"));
                }
                if let (Ok(so_far), false) = (&verdict, c.analysis.alarms.is_empty()) {
                    let found = crate::adapters::alarms::watched(&ctx.aws, &c.analysis.alarms, name)
                        .await?;
                    verdict = crate::plan::bake::judge_alarms(&c.analysis.alarms, &found)
                        .map(|alarms| format!("{so_far}; {alarms}"));
                }
                if let Ok(so_far) = &verdict {
                    // A line per look: the bake is alive (CI kills a silent job); the ledger
                    // keeps the last one for `status` (best effort: the bake goes on without).
                    let look = format!("{} pods: {so_far}", now.len());
                    ctx.out.progress(name, &look);
                    let left = end.saturating_duration_since(Instant::now()).as_secs();
                    let _ = self
                        .store
                        .update_release(self.id, |r| {
                            r.baking = Some(format!("{name}, {left} s to go: {look}"))
                        })
                        .await;
                }
                if verdict.is_err() || Instant::now() >= end {
                    break verdict;
                }
            };
            let figures = verdict.map_err(|breach| {
                Failure::new(Exit::Verify, name, format!("{breach} during the bake"), "")
            })?;
            // The lock may have been lost during a long bake: a run that lost it marks nothing.
            crate::session::fence(ctx, name).await?;
            if live {
                mark_live(self.store, self.id, colour).await?;
            }
            Ok(((), format!("{seconds} s: {figures}")))
        })
        .await
    }

    /// The compensation of a canary whose bake failed `e`: the candidate's share back to 0 (the
    /// preview header only; recorded as the step `canary off`). Nothing was flipped.
    async fn canary_off(&self, e: Failure, to: Colour) -> Failure {
        let ctx = self.ctx;
        // A run that lost its lock leaves the edge to the run that holds it.
        let Some(addr) = self.canary.clone().filter(|_| e.exit != Exit::Locked) else {
            return e;
        };
        // The flip's own update may have gone through before its step failed (a wait that timed
        // out): then there is no share, and the failure says what happened as it is.
        match self.stacks.observe(&ctx.config.stack_name("edge")).await {
            Ok(edge)
                if edge.parameters.get("CanaryWeight").is_none_or(|w| w == "0")
                    || edge
                        .parameters
                        .get("CandidateOriginDomain")
                        .is_none_or(String::is_empty) =>
            {
                return e;
            }
            _ => {}
        }
        ctx.out.note(&format!(
            "{} failed: taking the canary's share back",
            e.step
        ));
        let off = step(ctx, self.store, self.id, "canary off", "share 0", async {
            let changed = crate::commands::steps::set_candidate(
                ctx,
                self.stacks,
                to,
                &addr,
                "0",
                "canary off",
            )
            .await?;
            Ok(((), changed))
        })
        .await;
        let hint = match off {
            Ok(()) => format!(
                "nothing was flipped: {} serves everyone again and {} stays the candidate (the preview header reaches it); fix it and release up, or promote again",
                self.plan.from,
                colour::name(&ctx.config, to)
            ),
            Err(off) if off.exit == Exit::Locked => return off,
            Err(off) => format!(
                "taking the canary's share back failed too ({}): set the edge stack's CanaryWeight to 0 (docs/runbook.md), then check `release status`",
                off.message
            ),
        };
        Failure::new(e.exit, e.step, e.message, hint)
    }

    /// The compensation of the flip when the public URL failed `e`: the edge back to `from` at
    /// `back` (recorded as the step `flip back`), `to`'s pending mark cleared. The failure says
    /// what was done.
    async fn flip_back(&self, e: Failure, to: Colour, from: Colour, back: Option<&str>) -> Failure {
        let ctx = self.ctx;
        let Some(back) = back else {
            return Failure::new(
                Exit::Verify,
                e.step,
                e.message,
                format!(
                    "{from} is gone, so there is nothing to flip back to; check `release status`"
                ),
            );
        };
        ctx.out
            .note(&format!("{} failed: flipping back to {from}", e.step));
        let flipped = step(
            ctx,
            self.store,
            self.id,
            "flip back",
            &format!("edge origin -> {back}"),
            async {
                flip(ctx, self.stacks, self.edge, Towards::Back, "flip back").await?;
                Ok(((), format!("{from} is live again")))
            },
        )
        .await;
        // The pending mark stays while the edge may still serve `to` (a failed flip back): the
        // next run then finishes this flip instead of deciding from roles it never wrote.
        if let Err(f) = flipped {
            return f;
        }
        if let Err(f) = annotate(&self.client, ctx, to, None, None).await {
            return f;
        }
        // A promote's candidate is previewed again (edge.preview): best effort, the flip back
        // stands either way.
        let mut preview = String::new();
        let was = &self.edge.parameters;
        // At the address the flip used (`to`'s load balancer now).
        let addr = self.to_addr.as_str();
        if let (Flip::Promote { .. }, true, Some("on")) = (
            self.plan.kind,
            was.get("CandidateOriginDomain")
                .is_some_and(|a| !a.is_empty())
                && !addr.is_empty(),
            was.get("Preview").map(String::as_str),
        ) {
            let back = step(ctx, self.store, self.id, "preview back", addr, async {
                let changed = crate::commands::steps::set_candidate(
                    ctx,
                    self.stacks,
                    to,
                    addr,
                    "0",
                    "preview back",
                )
                .await?;
                Ok(((), changed))
            })
            .await;
            preview = match back {
                Ok(()) => format!(" (the preview header reaches {to} again)"),
                Err(f) => format!(
                    " (its preview was not put back: {}; `release up` puts it back)",
                    f.message
                ),
            };
        }
        Failure::new(
            Exit::Verify,
            e.step,
            e.message,
            format!(
                "flipped back: {from} serves again; {to} stays deployed for inspection{preview}"
            ),
        )
    }

    /// Deploy `colour` again from an image digest the ledger recorded (a rollback to a retired
    /// colour), as the `previous` colour; torn down again if the run fails before its smoke test
    /// passes. Returns its load-balancer address.
    async fn redeploy(
        &self,
        name: &str,
        colour: Colour,
        image: &str,
        digest: &str,
        (version, sha256): (&str, &str),
    ) -> Result<String> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let mut then = c.clone();
        then.model.version = version.to_string();
        then.model.sha256 = sha256.to_string();
        let (manifests, _) = colour::render(
            &ctx.base.join(&c.deploy.templates),
            &then,
            colour,
            image,
            digest,
            self.id,
            "previous",
        )
        .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
        if let Some(s) = ctx.session.lock().await.as_mut() {
            s.candidate = Some((self.client.clone(), colour));
        }
        step(ctx, self.store, self.id, name, image, async {
            let addr =
                crate::commands::steps::roll_out(ctx, &self.client, colour, &manifests, name)
                    .await?;
            Ok((
                addr.clone(),
                format!("{digest} (model {version}) ready at {addr}"),
            ))
        })
        .await
    }
}
