//! `release --dry-run up`: the stacks, the image and the colour decision, from read-only calls.

use serde_json::{Value, json};

use super::deploy::{observe, settings};
use crate::adapters::stacks::Stacks;
use crate::adapters::store::StateStore;
use crate::commands::up::UpArgs;
use crate::error::{Exit, Failure, Result};
use crate::plan::up::{ReleasePlan, plan_release};
use crate::plan::{self, Outputs, UP_WAVES};
use crate::session::Ctx;

/// `--dry-run`: what `up` would do, changing nothing.
pub(super) async fn dry_run(
    ctx: &Ctx,
    stacks: &Stacks,
    store: &StateStore,
    args: &UpArgs,
) -> Result<Value> {
    // First, as the real run: a lock held by someone else is exit 4, not a plan.
    store
        .check_lock(args.force_unlock, ctx.break_live_lock)
        .await?;
    let bucket = store.bucket_exists().await?;
    let mut summary = serde_json::Map::new();
    let (changes, outputs) = stack_changes(ctx, stacks).await?;
    for (name, what) in &changes {
        ctx.out.note(&format!("plan: stack {name}: {what}"));
        summary.insert(name.clone(), json!(what));
    }
    let image = ctx.build_image()?;
    let push = image_push(ctx, &outputs, &image).await?;
    ctx.out.note(&format!("plan: image: {push}"));
    summary.insert("image".into(), json!(push));
    let (controller, what, release) =
        dry_run_colour(ctx, stacks, &outputs, &image.digest(), args.force).await?;
    let step = crate::adapters::addons::STEP;
    ctx.out.note(&format!("plan: {step}: {controller}"));
    summary.insert(step.into(), json!(controller));
    ctx.out.note(&format!("plan: colour: {what}"));
    summary.insert("colour".into(), json!(what));
    let registry = ctx.config.stack_name("registry");
    let mut steps = crate::plan::up::provision_steps(&registry, bucket, &changes, &push);
    if let Some(gate) = ctx.config.image.scan_gate {
        let what = super::scan_gate_what(gate, ctx.config.image.scan_timeout_seconds);
        ctx.out.note(&format!("plan: {}: {what}", super::SCAN_STEP));
        steps.push(crate::plan::planned(super::SCAN_STEP, what));
    }
    match release {
        Some(r) => {
            for s in r.printed(&ctx.config.app) {
                crate::commands::print_step(ctx, &s);
                steps.push(s);
            }
        }
        None => steps.push(crate::plan::planned("release", what)),
    }
    summary.insert("plan".into(), json!(steps));
    summary.insert("dry run".into(), json!("nothing was changed"));
    Ok(Value::Object(summary))
}

/// What deploying each stack would change, in wave order (from its template and parameters, no
/// change set), and the outputs of those that exist.
async fn stack_changes(ctx: &Ctx, stacks: &Stacks) -> Result<(Vec<(String, String)>, Outputs)> {
    let mut changes = Vec::new();
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
            changes.push((name, what));
        }
    }
    Ok((changes, outputs))
}

/// What pushing `image` would upload: the bytes of the layers the repository lacks.
async fn image_push(
    ctx: &Ctx,
    outputs: &Outputs,
    image: &crate::adapters::image::Image,
) -> Result<String> {
    let tag = &ctx.config.image.tag;
    let Some(repo) = outputs
        .get("registry")
        .and_then(|o| o.get("RepositoryName"))
    else {
        return Ok(format!(
            "push {}:{tag} ({}) once the registry exists",
            ctx.config.app,
            image.digest()
        ));
    };
    let ecr = crate::adapters::endpoint::ecr(&ctx.aws);
    let present = crate::adapters::image::present_layers(&ecr, repo, image)
        .await
        .map_err(|e| Failure::new(Exit::Aws, "image push", e.to_string(), "check ECR access"))?;
    let missing: u64 = image
        .blobs()
        .filter(|b| !present.contains(&b.digest))
        .map(|b| b.size)
        .sum();
    Ok(format!(
        "push {repo}:{tag} ({}), {missing} bytes to upload",
        image.digest()
    ))
}

/// The decisions of a dry run about the cluster, from the same observation and planner as the
/// real run's: whether the load balancer controller is installed or updated first, then nothing
/// to release, or which colour is deployed and smoke-tested, and whether it goes live at once
/// (the first release). The release plan is `None` while the cluster does not exist.
async fn dry_run_colour(
    ctx: &Ctx,
    stacks: &Stacks,
    outputs: &Outputs,
    digest: &str,
    force: bool,
) -> Result<(String, String, Option<ReleasePlan>)> {
    use crate::adapters::colour;
    let c = &ctx.config;
    let smoke = format!(
        "smoke-test it ({} requests and the golden cases)",
        c.smoke.requests
    );
    let first = || {
        (
            format!(
                "install the AWS Load Balancer Controller {} once the cluster exists",
                crate::adapters::addons::LB_CONTROLLER_VERSION
            ),
            format!(
                "deploy {} once the cluster exists, {smoke}, put it live through a new edge stack",
                colour::name(c, crate::plan::colour::candidate_for(None))
            ),
            None,
        )
    };
    let Some(uri) = outputs.get("registry").and_then(|o| o.get("RepositoryUri")) else {
        return Ok(first());
    };
    let image = format!("{uri}@{digest}");
    let Some(seen) = observe(ctx, stacks, outputs, &image, digest, "dry-run").await? else {
        return Ok(first());
    };
    let controller = match (&seen.inputs, &seen.world.controller) {
        (Ok(_), Some(what)) => what.clone(),
        (Ok(_), None) => format!(
            "{} in place",
            crate::adapters::addons::LB_CONTROLLER_VERSION
        ),
        // A cluster stack from before the controller's role: the stack update above adds it.
        (Err(_), _) => format!(
            "install the AWS Load Balancer Controller {} once the cluster stack has its role",
            crate::adapters::addons::LB_CONTROLLER_VERSION
        ),
    };
    // The stack update above adds the controller's role; the real run then installs it.
    let mut world = seen.world;
    if seen.inputs.is_err() {
        world.controller = Some(controller.clone());
    }
    let plan = plan_release(&world, settings(ctx, force)).map_err(super::deploy::refused)?;
    let what = match (plan.candidate, plan.live) {
        (None, _) => format!(
            "nothing to release: {} is live with this image and these manifests (--force deploys a candidate anyway); verify it through the public URL",
            l_name(c, plan.live)
        ),
        (Some(candidate), None) => format!(
            "deploy {} ({image}, {} replicas), {smoke}, put it live through the edge",
            colour::name(c, candidate),
            c.deploy.replicas
        ),
        (Some(candidate), Some(l)) => format!(
            "deploy {} ({image}, {} replicas) as the candidate while {} serves, {smoke}; `release promote` puts it live",
            colour::name(c, candidate),
            c.deploy.replicas,
            colour::name(c, l)
        ),
    };
    Ok((controller, what, Some(plan)))
}

fn l_name(c: &crate::config::Config, live: Option<crate::adapters::colour::Colour>) -> String {
    live.map_or_else(|| "-".into(), |l| crate::adapters::colour::name(c, l))
}
