//! What the commands' steps do, in adapter calls: smoke tests, roll-outs, waiting for CloudFront
//! and for the public URL, marking a release live, the edge's origin flip, the roles.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::adapters::colour::{self, Colour, Pending, Role};
use crate::adapters::stacks::{Observed, Stacks};
use crate::adapters::store::StateStore;
use crate::error::{Exit, Failure, Result, sdk};
use crate::session::Ctx;

pub fn smoke_failure(colour: Colour, report: &crate::adapters::smoke::Report) -> Failure {
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
    target: &crate::adapters::smoke::Target<'_>,
    cases: &crate::adapters::smoke::Cases,
    requests: u32,
    compare: Option<(&crate::adapters::smoke::Target<'_>, f64)>,
    progress_step: Option<&str>,
) -> Result<String> {
    let report = crate::adapters::smoke::run(
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
    crate::adapters::colour::apply(client, c, manifests, ctx.generation().await).await?;
    crate::adapters::colour::wait_rollout(client, c, colour, timeout, |p| {
        ctx.out.progress(step_name, &p)
    })
    .await?;
    let address = std::time::Duration::from_secs(c.deploy.address_timeout_seconds);
    // The sandbox answers at once; ELBv2's Describe calls share an account-wide rate limit.
    let every = ctx.poll_every(
        std::time::Duration::from_millis(300),
        std::time::Duration::from_secs(5),
    );
    let elb = crate::adapters::endpoint::elbv2(&ctx.aws);
    let deadline = crate::wait::Deadline::new(address, every);
    crate::adapters::colour::wait_address(client, &elb, c, colour, deadline).await
}

/// Wait until CloudFront reports the distribution `Deployed` (every edge location serves the
/// current configuration), for at most the stack timeout.
pub async fn wait_deployed(ctx: &Ctx, dist: &str, step_name: &str, hint: &str) -> Result<()> {
    let cf = crate::adapters::endpoint::cloudfront(&ctx.aws);
    // The sandbox deploys in about a second; CloudFront takes minutes.
    let poll = ctx.poll_every(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(10),
    );
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
    store.mark_live(id, colour.as_str()).await
}

/// Poll the public URL until `/version` reports `colour`.
pub async fn wait_public(
    url: &str,
    colour: Colour,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let http = crate::adapters::smoke::http_client(Duration::from_secs(5));
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

/// The edge stack's parameters that make `colour`'s load balancer at `addr` the origin. With
/// `edge.origin_access: public` (and an edge that never used a VPC origin), only `OriginDomain`,
/// as always. Otherwise the way in follows the colour's NLB as ELBv2 shows it: an internal one
/// through the colour's own VPC origin (`OriginAccess` vpc, `LiveColour`, and `<Colour>OriginArn`
/// its ARN: that VPC origin is not in use, so it may be made or changed), an internet-facing one
/// (a colour deployed before the switch to vpc, or a rollback to it) as a custom origin.
pub async fn origin_params(
    ctx: &Ctx,
    edge: Option<&Observed>,
    colour: Colour,
    addr: &str,
    step_name: &str,
) -> Result<Vec<(String, String)>> {
    let mut set = vec![("OriginDomain".to_string(), addr.to_string())];
    // An app that ever had a VPC origin may have an internal colour whatever the config says now
    // (switched back to public, then a rollback): the target's own NLB decides.
    let ever_vpc = edge.is_some_and(|e| {
        e.parameters.get("OriginAccess").is_some_and(|a| a == "vpc")
            || ["BlueOriginArn", "GreenOriginArn"]
                .iter()
                .any(|k| e.parameters.get(*k).is_some_and(|v| !v.is_empty()))
    });
    if ctx.config.edge.origin_access == crate::config::OriginAccess::Public && !ever_vpc {
        return Ok(set);
    }
    let elb = crate::adapters::endpoint::elbv2(&ctx.aws);
    let found = match crate::adapters::balancer::by_dns_name(&elb, addr, None).await? {
        crate::adapters::balancer::Look::Got(found) => found,
        crate::adapters::balancer::Look::Throttled(why) => {
            return Err(Failure::new(
                Exit::Aws,
                step_name,
                format!("DescribeLoadBalancers was throttled: {why}"),
                "nothing was changed; run the command again",
            ));
        }
    };
    let lb = found.ok_or_else(|| {
            Failure::new(
                Exit::Deploy,
                step_name,
                format!("no load balancer has the DNS name {addr} (DescribeLoadBalancers)"),
                "check the AWS Load Balancer Controller's events on the colour's Service, then run the command again",
            )
        })?;
    if lb.scheme == "internal" {
        let arn_key = match colour {
            Colour::Blue => "BlueOriginArn",
            Colour::Green => "GreenOriginArn",
        };
        set.extend([
            ("OriginAccess".to_string(), "vpc".to_string()),
            ("LiveColour".to_string(), colour.to_string()),
            (arn_key.to_string(), lb.arn),
        ]);
    } else {
        set.push(("OriginAccess".to_string(), "public".to_string()));
    }
    Ok(set)
}

/// The edge stack's parameters for continuous deployment (`edge.preview`): `Preview` as the
/// config has it, and the tested candidate behind the staging distribution (`candidate`, with
/// the share of viewers it gets: "0" for the preview header only), or none (`None`: the staging
/// distribution and the policy go). An internal candidate is reached through its own VPC origin,
/// made here while nothing uses it; the live colour keeps the way in it has.
pub async fn candidate_params(
    ctx: &Ctx,
    edge: &Observed,
    candidate: Option<(Colour, &str, &str)>,
    step_name: &str,
) -> Result<Vec<(String, String)>> {
    let on = if ctx.config.edge.preview { "on" } else { "off" };
    let mut set = vec![("Preview".to_string(), on.to_string())];
    let Some((colour, addr, weight)) = candidate.filter(|_| ctx.config.edge.preview) else {
        set.extend(
            [
                ("CandidateOriginDomain", ""),
                ("CandidateColour", ""),
                ("CanaryWeight", "0"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        return Ok(set);
    };
    set.extend([
        ("CandidateOriginDomain".to_string(), addr.to_string()),
        ("CandidateColour".to_string(), colour.to_string()),
        ("CanaryWeight".to_string(), weight.to_string()),
    ]);
    let was_vpc = edge
        .parameters
        .get("OriginAccess")
        .is_some_and(|a| a == "vpc");
    for (k, v) in origin_params(ctx, Some(edge), colour, addr, step_name).await? {
        match k.as_str() {
            // An internet-facing candidate is a custom origin: no VPC origin of its colour (an
            // old one may still be there) is used.
            "OriginAccess" if v == "public" => {
                set.retain(|(k, _)| k != "CandidateColour");
                set.push(("CandidateColour".to_string(), String::new()));
            }
            "OriginAccess" if v == "vpc" && !was_vpc => {
                // The live colour stays on its custom origin: no colour is its VPC origin's yet.
                set.push(("LiveColour".to_string(), String::new()));
                set.push((k, v));
            }
            "OriginAccess" if v == "vpc" => set.push((k, v)),
            "BlueOriginArn" | "GreenOriginArn" => set.push((k, v)),
            _ => {}
        }
    }
    Ok(set)
}

/// Put `colour` at `addr` behind the edge stack's staging distribution with `weight` of viewers
/// ("0": the preview header only), and wait until CloudFront has deployed both distributions.
/// Returns what the stack update changed.
pub async fn set_candidate(
    ctx: &Ctx,
    stacks: &Stacks,
    colour: Colour,
    addr: &str,
    weight: &str,
    step_name: &str,
) -> Result<String> {
    update_candidate(ctx, stacks, Some((colour, addr, weight)), step_name).await
}

/// Take the staging distribution and its policy away (`edge.preview`), and wait until CloudFront
/// has deployed the primary without them. Returns what the stack update changed.
pub async fn clear_candidate(ctx: &Ctx, stacks: &Stacks, step_name: &str) -> Result<String> {
    update_candidate(ctx, stacks, None, step_name).await
}

/// The edge stack's candidate parameters as `candidate_params` makes them, every other one kept.
async fn update_candidate(
    ctx: &Ctx,
    stacks: &Stacks,
    candidate: Option<(Colour, &str, &str)>,
    step_name: &str,
) -> Result<String> {
    let edge = stacks.observe(&ctx.config.stack_name("edge")).await?;
    let set = candidate_params(ctx, &edge, candidate, step_name).await?;
    let (changed, _) = update_edge(
        ctx,
        stacks,
        crate::adapters::stacks::keeping(&edge, &set),
        step_name,
        "wait for CloudFront, then check `release status`",
    )
    .await?;
    Ok(changed)
}

/// Update the edge stack to the current template with `params`, and wait until CloudFront has
/// deployed its distribution (and its staging distribution, when it has one). Returns what the
/// update changed and the stack after it.
pub async fn update_edge(
    ctx: &Ctx,
    stacks: &Stacks,
    params: Vec<aws_sdk_cloudformation::types::Parameter>,
    step_name: &str,
    hint: &str,
) -> Result<(String, Observed)> {
    let name = ctx.config.stack_name("edge");
    let (change, after) = stacks
        .deploy_with(&name, &ctx.template("edge")?, params, |p| {
            ctx.out.progress(step_name, p)
        })
        .await?;
    wait_edge_deployed(ctx, &after, &name, step_name, hint).await?;
    Ok((change.describe(), after))
}

/// Wait until CloudFront has deployed the edge stack's distribution, and its staging
/// distribution when it has one.
pub async fn wait_edge_deployed(
    ctx: &Ctx,
    edge: &Observed,
    stack: &str,
    step_name: &str,
    hint: &str,
) -> Result<()> {
    let dist = edge.output(stack, "DistributionId")?;
    wait_deployed(ctx, &dist, step_name, hint).await?;
    if let Some(staging) = edge
        .outputs
        .get("StagingDistributionId")
        .filter(|s| !s.is_empty())
    {
        wait_deployed(ctx, staging, step_name, hint).await?;
    }
    Ok(())
}

/// Where a flip points the edge.
pub enum Towards<'a> {
    /// `colour`'s load balancer at `addr`, the way in decided by `origin_params`.
    Colour(Colour, &'a str),
    /// Back to what `edge` (observed before the flip) served: its origin domain and its way in,
    /// as they were; every other parameter (the VPC origins' ARNs included) kept as the flip left
    /// it, so no VPC origin is deleted and nothing is looked up on the way back.
    Back,
}

/// Point the edge stack at a colour's load balancer and wait until CloudFront has deployed it.
pub async fn flip(
    ctx: &Ctx,
    stacks: &Stacks,
    edge: &Observed,
    towards: Towards<'_>,
    step_name: &str,
) -> Result<()> {
    let c = &ctx.config;
    let name = c.stack_name("edge");
    // Only the origin changes; every other parameter (the NoEcho secret included) keeps its value.
    let params = match towards {
        Towards::Colour(colour, addr) => {
            let mut set = origin_params(ctx, Some(edge), colour, addr, step_name).await?;
            // The candidate goes live (or a rollback leaves it): nothing is previewed any more.
            set.extend(candidate_params(ctx, edge, None, step_name).await?);
            crate::adapters::stacks::keeping(edge, &set)
        }
        Towards::Back => {
            let now = stacks.observe(&name).await?;
            let was = |k: &str, default: &str| {
                edge.parameters
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| default.to_string())
            };
            let mut set = vec![("OriginDomain".to_string(), was("OriginDomain", ""))];
            if now.parameters.contains_key("OriginAccess") {
                set.push(("OriginAccess".to_string(), was("OriginAccess", "public")));
                set.push(("LiveColour".to_string(), was("LiveColour", "")));
            }
            // No staging distribution on the way back: making one would hold the edge on the
            // failing colour for minutes (and a failure there would keep it there). The caller
            // puts a promote's preview back afterwards.
            if now.parameters.contains_key("Preview") {
                set.push(("Preview".to_string(), was("Preview", "off")));
                set.extend(
                    [
                        ("CandidateOriginDomain", ""),
                        ("CandidateColour", ""),
                        ("CanaryWeight", "0"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string())),
                );
            }
            crate::adapters::stacks::keeping(&now, &set)
        }
    };
    let (_, after) = update_edge(
        ctx,
        stacks,
        params,
        step_name,
        "wait for CloudFront, then check `release status`",
    )
    .await?;
    let dist = after.output(&name, "DistributionId")?;
    if c.edge.invalidate {
        let paths = aws_sdk_cloudfront::types::Paths::builder()
            .quantity(1)
            .items("/*")
            .build()
            .map_err(|e| Failure::new(Exit::Internal, step_name, e.to_string(), ""))?;
        let batch = aws_sdk_cloudfront::types::InvalidationBatch::builder()
            .paths(paths)
            .caller_reference(format!("release-{}", crate::adapters::store::now()))
            .build()
            .map_err(|e| Failure::new(Exit::Internal, step_name, e.to_string(), ""))?;
        crate::adapters::endpoint::cloudfront(&ctx.aws)
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

/// Annotate a colour: its role, and the flip in flight towards it (`None` clears it).
pub async fn annotate(
    client: &kube::Client,
    ctx: &Ctx,
    colour: Colour,
    role: Option<Role>,
    pending: Option<Pending>,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ctx.config.deploy.namespace);
    let name = colour::name(&ctx.config, colour);
    let generation = ctx.generation().await;
    colour::fence(client, &ctx.config, &name, generation).await?;
    let mut annotations = json!({"release/pending": pending.map(Pending::as_str)});
    if let Some(r) = role {
        annotations["release/role"] = json!(r.as_str());
    }
    if let Some(g) = generation {
        annotations[colour::GENERATION] = json!(g.to_string());
    }
    api.patch(
        &name,
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

/// The step `name`: delete `colour`'s Deployment and Service (a flip's retire, `up`'s retire of
/// a colour whose keep-warm time is over, `release retire`), described as `what`.
pub async fn retire(
    ctx: &Ctx,
    store: &StateStore,
    id: &str,
    client: &kube::Client,
    colour: Colour,
    name: &str,
    what: &str,
) -> Result<()> {
    crate::session::step(ctx, store, id, name, what, async {
        colour::teardown(client, &ctx.config, colour, ctx.generation().await).await?;
        Ok(((), "removed".to_string()))
    })
    .await
}

/// Scale `colour` to `replicas` (when given) and set, or clear, when it is due to be retired
/// (`release/retire-after`, Unix seconds): `promote.retire_previous_after` keeps the previous
/// colour warm at one replica; a rollback to it scales it back and clears the mark.
pub async fn keep_warm(
    client: &kube::Client,
    ctx: &Ctx,
    colour: Colour,
    replicas: Option<u32>,
    retire_after: Option<i64>,
    step_name: &str,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ctx.config.deploy.namespace);
    let name = colour::name(&ctx.config, colour);
    colour::fence(client, &ctx.config, &name, ctx.generation().await).await?;
    let mut patch = json!({"metadata": {"annotations": {
        colour::RETIRE_AFTER: retire_after.map(|t| t.to_string()),
    }}});
    if let Some(n) = replicas {
        patch["spec"] = json!({ "replicas": n });
    }
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| {
            Failure::new(
                Exit::Deploy,
                step_name,
                e.to_string(),
                "re-run the command; `release status` shows the colours",
            )
        })
}

/// Tag the images in use (`in_use`, and those the rollbacks in a row from `live` would deploy
/// again, from the ledger) so that the registry's 30-day lifecycle rule does not expire them
/// (`plan::images`). Recorded as the step `name`; a registry that cannot be changed now is a
/// warning, not a failed release: the next release command tries again.
pub async fn protect_images(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    id: &str,
    name: &str,
    in_use: &std::collections::BTreeMap<String, String>,
    live: Option<Colour>,
) -> Result<()> {
    let what = crate::plan::images::protect_what(in_use);
    crate::session::step(ctx, store, id, name, &what, async {
        let kept = async {
            let mut in_use = in_use.clone();
            if let Some(live) = live {
                let line = store.rollback_line(live.as_str()).await?;
                for (level, r) in line.iter().enumerate() {
                    let slot = crate::plan::images::rollback_slot(level + 1);
                    if let (false, Ok(g)) =
                        (in_use.contains_key(&slot), crate::state::go_live_of(r))
                    {
                        in_use.insert(slot, g.digest);
                    }
                }
            }
            let registry = stacks
                .observe(&ctx.config.stack_name("registry"))
                .await?;
            let Some(repository) = registry.outputs.get("RepositoryName") else {
                return Ok("no repository yet".to_string());
            };
            let ecr = crate::adapters::endpoint::ecr(&ctx.aws);
            crate::adapters::image::keep::protect(&ecr, repository, &in_use)
                .await
                .map_err(|e| {
                    Failure::new(Exit::Aws, name, e.to_string(), "the next release command retries")
                })
        }
        .await;
        Ok((
            (),
            kept.unwrap_or_else(|e| {
                ctx.out.note(&format!(
                    "warning: the images in use are not protected from the registry's lifecycle rule yet ({}); the next release command retries",
                    e.message
                ));
                format!("not done: {}", e.message)
            }),
        ))
    })
    .await
}
