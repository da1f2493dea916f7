//! `release --dry-run up`: the stacks, the image and the colour decision, from read-only calls.

use serde_json::{Value, json};

use super::deploy::controller_inputs;
use crate::commands::up::UpArgs;
use crate::error::{Exit, Failure, Result, sdk};
use crate::plan::{self, Outputs, UP_WAVES};
use crate::session::{Ctx, hostname};
use crate::stacks::Stacks;
use crate::store::StateStore;

/// `--dry-run`: what `up` would do, changing nothing.
pub(super) async fn dry_run(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    args: &UpArgs,
) -> Result<Value> {
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
    let world = crate::commands::observe::observe(ctx, stacks).await?;
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
    world: &crate::commands::observe::World,
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
