//! `release up`, second half: deploy the idle colour, smoke-test it, and put the first release live.

use serde_json::{Value, json};

use crate::colour::Colour;
use crate::commands::steps::{mark_live, roll_out, smoke_test, wait_deployed};
use crate::error::{Exit, Failure, Result};
use crate::plan::Outputs;
use crate::session::{Ctx, step};
use crate::stacks::Stacks;
use crate::store::StateStore;

/// Deploy the idle colour, smoke-test it, and put it live when nothing is live yet.
#[allow(clippy::too_many_arguments)]
pub(super) async fn deploy(
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
            if let Some(public) = crate::commands::observe::public_url(ctx, &edge) {
                step(ctx, store, id, "verify public URL", &public, async {
                    crate::commands::steps::wait_public(
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
pub(super) fn controller_inputs(
    ctx: &Ctx,
    cluster: &str,
    outputs: &Outputs,
) -> Result<crate::addons::Inputs> {
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
