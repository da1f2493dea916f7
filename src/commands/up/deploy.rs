//! `release up`, second half: observe the cluster, decide the release phase
//! (`plan::up::plan_release`: the controller, nothing to release or a candidate, the first
//! release's edge), then execute that plan step by step.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::adapters::colour::{self, Colour};
use crate::adapters::stacks::Stacks;
use crate::adapters::store::StateStore;
use crate::commands::steps::{
    mark_live, protect_images, roll_out, smoke_test, wait_deployed, wait_public,
};
use crate::error::{Exit, Failure, Result};
use crate::plan::Outputs;
use crate::plan::up::{ReleasePlan, ReleaseSettings, ReleaseStep, ReleaseWorld, plan_release};
use crate::session::{Ctx, step};

/// The cluster as the release phase sees it.
pub(super) struct Observed {
    pub world: ReleaseWorld,
    pub client: kube::Client,
    /// The same cluster for the service proxy (no retries: the smoke test sees every answer).
    pub proxy: kube::Client,
    /// Each colour's load-balancer address.
    pub addresses: BTreeMap<Colour, Option<String>>,
    /// What the controller is installed for; `Err`: the stacks do not have its inputs yet.
    pub inputs: Result<crate::adapters::addons::Inputs>,
}

/// Read what the release phase decides from: the controller, the edge's origin and public URL,
/// each colour, and whether the live one already runs `image` and this build's manifests.
/// `Ok(None)`: there is no cluster yet.
pub(super) async fn observe(
    ctx: &Ctx,
    stacks: &Stacks,
    outputs: &Outputs,
    image: &str,
    digest: &str,
    id: &str,
) -> Result<Option<Observed>> {
    let c = &ctx.config;
    let Some(cluster_name) = outputs.get("cluster").and_then(|o| o.get("ClusterName")) else {
        return Ok(None);
    };
    let cluster = crate::adapters::eks::Cluster::connect(&ctx.aws, cluster_name).await?;
    let client = cluster.client().await?;
    let proxy = cluster.proxy_client().await?;
    let inputs = controller_inputs(ctx, cluster_name, outputs);
    let controller = match &inputs {
        Ok(i) => {
            crate::adapters::addons::decide(&crate::adapters::addons::observe(&client).await?, i)
        }
        Err(_) => None,
    };
    let edge = stacks.observe(&c.stack_name("edge")).await?;
    let edge_state = crate::commands::observe::edge_state(ctx, &edge, "up").await?;
    let (observed, live) = crate::commands::observe::colours(&client, c, &edge).await?;
    let addresses = observed
        .iter()
        .map(|(k, v)| (*k, v.address.clone()))
        .collect();
    let live_runs_this_build = match live {
        Some(l) => {
            let templates = ctx.base.join(&c.deploy.templates);
            let (_, hash) = colour::render(&templates, c, l, image, digest, id, "candidate")
                .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
            let o = &observed[&l];
            o.digest.as_deref() == Some(digest) && o.manifest_hash.as_deref() == Some(&hash)
        }
        None => false,
    };
    Ok(Some(Observed {
        world: ReleaseWorld {
            app: c.app.clone(),
            edge: edge_state,
            live,
            live_runs_this_build,
            public_url: crate::commands::observe::public_url(ctx, &edge),
            controller,
            image: image.to_string(),
            digests: observed
                .iter()
                .filter_map(|(c, o)| Some((*c, o.digest.clone()?)))
                .collect(),
            preview_orphan: edge
                .parameters
                .get("CandidateOriginDomain")
                .filter(|a| {
                    !a.is_empty()
                        && edge.parameters.get("Preview").is_some_and(|p| p == "on")
                        && !observed
                            .values()
                            .any(|o| o.address.as_deref() == Some(a.as_str()))
                })
                .cloned(),
            retire_due: observed
                .iter()
                .find(|(col, o)| {
                    Some(**col) != live
                        && o.role == Some(colour::Role::Previous)
                        && o.retire_after
                            .is_some_and(|t| t <= crate::adapters::store::now() as i64)
                })
                .map(|(col, _)| *col),
        },
        client,
        proxy,
        addresses,
        inputs,
    }))
}

/// A release phase refused: exit 8, the reason and what to do.
pub(super) fn refused(r: crate::plan::up::ReleaseRefusal) -> Failure {
    let (why, hint) = r.explain();
    Failure::new(Exit::Precondition, "release", why, hint)
}

/// The release phase's settings, from the config and `--force`.
pub(super) fn settings(ctx: &Ctx, force: bool) -> ReleaseSettings {
    let c = &ctx.config;
    ReleaseSettings {
        force,
        replicas: c.deploy.replicas,
        requests: c.smoke.requests,
        compare_live: c.smoke.compare_live.is_some(),
        preview: c.edge.preview,
    }
}

/// Observe the cluster, decide, and execute the release phase: deploy the idle colour,
/// smoke-test it, and put it live when nothing is live yet. Returns the plan it executed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn deploy(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    id: &str,
    image: &str,
    digest: &str,
    summary: &mut serde_json::Map<String, Value>,
    changed: &mut bool,
    outputs: &Outputs,
    force: bool,
) -> Result<ReleasePlan> {
    let Some(seen) = observe(ctx, stacks, outputs, image, digest, id).await? else {
        return Err(Failure::new(
            Exit::Aws,
            "cluster",
            "the cluster stack has no ClusterName output",
            "re-run release up",
        ));
    };
    let inputs = seen.inputs?;
    let mut plan = plan_release(&seen.world, settings(ctx, force)).map_err(refused)?;
    let mut run = Release {
        ctx,
        stacks,
        store,
        id,
        digest,
        client: seen.client,
        proxy: seen.proxy,
        inputs,
        addresses: seen.addresses,
        summary,
        changed,
        secret: String::new(),
        addr: String::new(),
        cases: None,
        // Known once the edge stack exists; a first release sets it when it makes the stack.
        public: seen.world.public_url.clone().unwrap_or_default(),
        dist: String::new(),
    };
    // The controller first; then the colours are read again (it is what gives a Service its
    // address) and the rest decided from what is there now: the same steps as the dry run's
    // unless the repair changed what is live.
    let mut done = 0;
    if let Some(first @ ReleaseStep::Controller { .. }) = plan.steps.first().cloned() {
        run.run(&first).await?;
        done = 1;
        if let Some(again) = observe(ctx, stacks, outputs, image, digest, id).await? {
            run.addresses = again.addresses;
            let world = ReleaseWorld {
                controller: None,
                ..again.world
            };
            let rest = plan_release(&world, settings(ctx, force)).map_err(refused)?;
            plan = ReleasePlan {
                steps: std::iter::once(first).chain(rest.steps).collect(),
                ..rest
            };
        }
    }
    if let (None, Some(l)) = (plan.candidate, plan.live) {
        ctx.out.note(&format!("{l} is live with this image ({digest}) and these manifests: nothing to release (--force deploys a candidate anyway)"));
    }
    for s in &plan.steps[done..] {
        run.run(s).await?;
    }
    match (plan.candidate, plan.live) {
        (None, live) => {
            run.summary.insert("live".into(), json!(live));
            run.summary
                .insert("candidate".into(), json!("none: nothing to release"));
        }
        (Some(candidate), Some(live)) => {
            run.summary.insert("live".into(), json!(live));
            ctx.out.note(&format!(
                "{candidate} is deployed and tested; `release promote` puts it live"
            ));
        }
        (Some(_), None) => {}
    }
    // The candidate stays: no teardown on the way out.
    if let Some(s) = ctx.session.lock().await.as_mut() {
        s.candidate = None;
    }
    Ok(plan)
}

/// The executor of the release phase: each step mapped to its adapter calls, reported and
/// recorded in the ledger.
struct Release<'a> {
    ctx: &'a Ctx,
    stacks: &'a Stacks,
    store: &'a StateStore,
    id: &'a str,
    digest: &'a str,
    client: kube::Client,
    proxy: kube::Client,
    inputs: crate::adapters::addons::Inputs,
    addresses: BTreeMap<Colour, Option<String>>,
    summary: &'a mut serde_json::Map<String, Value>,
    changed: &'a mut bool,
    /// Made by the steps for the ones after them: the origin secret, the candidate's address,
    /// the golden cases, the public URL and the distribution of a first release.
    secret: String,
    addr: String,
    cases: Option<crate::adapters::smoke::Cases>,
    public: String,
    dist: String,
}

impl Release<'_> {
    async fn run(&mut self, s: &ReleaseStep) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let (store, id) = (self.store, self.id);
        let name = s.name(&c.app);
        match s {
            ReleaseStep::Controller { what } => {
                let timeout = std::time::Duration::from_secs(c.deploy.controller_timeout_seconds);
                let inputs = &self.inputs;
                let client = &self.client;
                step(ctx, store, id, &name, what, async {
                    crate::adapters::addons::ensure(client, inputs, timeout).await?;
                    Ok((
                        (),
                        format!("{} ready", crate::adapters::addons::LB_CONTROLLER_VERSION),
                    ))
                })
                .await?;
                *self.changed = true;
            }
            ReleaseStep::VerifyLive { colour, url } => {
                step(ctx, store, id, &name, url, async {
                    wait_public(
                        url.trim_end_matches('/'),
                        *colour,
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
                    mark_live(store, id, *colour).await?;
                    Ok(((), format!("{colour} answers")))
                })
                .await?;
            }
            ReleaseStep::Deploy { colour, image, .. } => {
                self.addr = self.deploy_colour(&name, *colour, image).await?;
            }
            ReleaseStep::Smoke {
                colour, compare, ..
            } => {
                self.smoke(&name, *colour, *compare).await?;
            }
            ReleaseStep::Preview { colour } => self.preview(&name, *colour).await?,
            ReleaseStep::RetireDue { colour } => {
                crate::commands::steps::retire(ctx, store, id, &self.client, *colour, &name, "")
                    .await?;
                *self.changed = true;
            }
            ReleaseStep::PreviewOff { address } => {
                let stacks = self.stacks;
                step(ctx, store, id, &name, address, async {
                    let changed =
                        crate::commands::steps::clear_candidate(ctx, stacks, &name).await?;
                    Ok(((), changed))
                })
                .await?;
                *self.changed = true;
            }
            ReleaseStep::Edge { colour } => self.edge(&name, *colour).await?,
            ReleaseStep::EdgeDeployed => {
                let dist = self.dist.clone();
                step(ctx, store, id, &name, &dist, async {
                    wait_deployed(ctx, &dist, "edge", "wait for CloudFront and re-run").await?;
                    Ok(((), format!("{dist} Deployed")))
                })
                .await?;
            }
            ReleaseStep::ProtectImages { in_use, live } => {
                protect_images(ctx, self.stacks, store, id, &name, in_use, *live).await?;
            }
            ReleaseStep::SmokePublic { colour, requests } => {
                // No origin header through the public URL: the edge must add it.
                let target = crate::adapters::smoke::Target {
                    base: crate::adapters::smoke::Base::Url(
                        self.public.trim_end_matches('/').to_string(),
                    ),
                    colour: *colour,
                    model_version: &c.model.version,
                    model_sha256: &c.model.sha256,
                    secret: "",
                };
                let cases = self
                    .cases
                    .as_ref()
                    .expect("the smoke step loaded the cases");
                step(ctx, store, id, &name, &self.public, async {
                    let summary =
                        smoke_test(ctx, &target, cases, *requests, None, Some(&name)).await?;
                    mark_live(store, id, *colour).await?;
                    Ok(((), summary))
                })
                .await?;
                self.summary.insert("live".into(), json!(colour));
                self.summary.insert("public url".into(), json!(self.public));
            }
        }
        Ok(())
    }

    /// Render, apply and roll out the candidate; it is torn down from here on if the run fails
    /// (the session's candidate). Returns its load-balancer address.
    async fn deploy_colour(
        &mut self,
        name: &str,
        candidate: Colour,
        image: &str,
    ) -> Result<String> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let templates = ctx.base.join(&c.deploy.templates);
        let (manifests, _) = colour::render(
            &templates,
            c,
            candidate,
            image,
            self.digest,
            self.id,
            "candidate",
        )
        .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))?;
        self.secret = colour::ensure_namespace_and_secret(&self.client, c).await?;
        *self.changed = true;
        if let Some(s) = ctx.session.lock().await.as_mut() {
            s.candidate = Some((self.client.clone(), candidate));
        }
        let id = self.id;
        let _ = self
            .store
            .update_release(id, |r| r.colour = Some(candidate.to_string()))
            .await;
        let client = &self.client;
        let what = format!("{image} ({} replicas)", c.deploy.replicas);
        step(ctx, self.store, id, name, &what, async {
            let addr = roll_out(ctx, client, candidate, &manifests, name).await?;
            Ok((addr.clone(), format!("ready at {addr}")))
        })
        .await
    }

    /// The candidate's smoke test at its own address, compared with `compare`'s answers when
    /// the config asks.
    async fn smoke(
        &mut self,
        name: &str,
        candidate: Colour,
        compare: Option<Colour>,
    ) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        self.cases = Some(
            crate::adapters::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
                .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?,
        );
        // Each colour's Service through the API server's service proxy, not its load balancer.
        let at = |colour: Colour| crate::adapters::smoke::Target {
            base: crate::adapters::smoke::Base::proxy(&self.proxy, c, colour),
            colour,
            model_version: &c.model.version,
            model_sha256: &c.model.sha256,
            secret: &self.secret,
        };
        let target = at(candidate);
        let live = compare.filter(|l| self.addresses[l].is_some());
        let live_target = live.map(at);
        let compare = match (&live_target, c.smoke.compare_live) {
            (Some(t), Some(f)) => Some((t, f)),
            _ => None,
        };
        let cases = self.cases.as_ref().expect("loaded above");
        step(
            ctx,
            self.store,
            self.id,
            name,
            &target.base.describe(),
            async {
                let summary =
                    smoke_test(ctx, &target, cases, c.smoke.requests, compare, Some(name)).await?;
                Ok(((), summary))
            },
        )
        .await?;
        self.summary.insert("candidate".into(), json!(candidate));
        self.summary
            .insert("candidate address".into(), json!(self.addr));
        Ok(())
    }

    /// `edge.preview`: the tested candidate behind the edge stack's staging distribution, reached
    /// through the public URL by the requests that carry the preview header. Nothing live
    /// changes: the primary distribution keeps its origin and gains the policy.
    async fn preview(&mut self, name: &str, colour: Colour) -> Result<()> {
        let ctx = self.ctx;
        let (stacks, addr) = (self.stacks, self.addr.clone());
        let what = format!("staging origin {addr}");
        step(ctx, self.store, self.id, name, &what, async {
            let changed =
                crate::commands::steps::set_candidate(ctx, stacks, colour, &addr, "0", name)
                    .await?;
            Ok(((), changed))
        })
        .await?;
        *self.changed = true;
        let curl = crate::plan::up::preview_curl(&self.public);
        ctx.out
            .note(&format!("preview {colour} through the public URL: {curl}"));
        self.summary.insert("preview".into(), json!(curl));
        Ok(())
    }

    /// The first release's edge stack, with the candidate as its origin.
    async fn edge(&mut self, name: &str, colour: Colour) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        let stack = c.stack_name("edge");
        let fixed = [
            ("AppName".to_string(), c.app.clone()),
            (
                "OriginHttpPort".to_string(),
                c.deploy.service_port.to_string(),
            ),
            ("OriginSecret".to_string(), self.secret.clone()),
            (
                "Preview".to_string(),
                if c.edge.preview { "on" } else { "off" }.to_string(),
            ),
        ];
        let body = ctx.template("edge")?;
        let stacks = self.stacks;
        let what = format!("origin {}", self.addr);
        let addr = self.addr.clone();
        let observed = step(ctx, self.store, self.id, name, &what, async {
            // Inside the step: a failed load-balancer lookup is this step's failure.
            let mut params =
                crate::commands::steps::origin_params(ctx, None, colour, &addr, name).await?;
            params.extend(fixed);
            let (change, observed) = stacks
                .deploy(&stack, &body, &params, |p| ctx.out.progress(name, p))
                .await?;
            Ok((observed, change.describe()))
        })
        .await?;
        self.dist = observed.output(&stack, "DistributionId")?;
        let domain = observed.output(&stack, "DistributionDomainName")?;
        self.public = c
            .edge
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://{domain}"));
        Ok(())
    }
}

/// What the load balancer controller is installed for: the cluster, the region, the network
/// stack's VPC and the cluster stack's role for it.
pub(super) fn controller_inputs(
    ctx: &Ctx,
    cluster: &str,
    outputs: &Outputs,
) -> Result<crate::adapters::addons::Inputs> {
    let output = |stack: &str, key: &str| {
        outputs
            .get(stack)
            .and_then(|o| o.get(key))
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Exit::Aws,
                    crate::adapters::addons::STEP,
                    format!("the {stack} stack has no {key} output"),
                    "update the stacks (release up applies cloudformation/ as it is now)",
                )
            })
    };
    Ok(crate::adapters::addons::Inputs {
        cluster: cluster.to_string(),
        // Rendered as --aws-region: on Fargate the controller has no instance metadata to fall
        // back on, so an empty one would crash it.
        region: ctx.aws.region().map(|r| r.to_string()).ok_or_else(|| {
            Failure::new(
                Exit::Config,
                crate::adapters::addons::STEP,
                "no AWS region is configured",
                "set AWS_REGION (or the profile's region) and re-run",
            )
        })?,
        vpc_id: output("network", "VpcId")?,
        role_arn: output("cluster", "LoadBalancerControllerRoleArn")?,
    })
}
