//! `release destroy`: every resource release made, in order, under the lock.

use std::time::Instant;

use serde_json::{Value, json};

use crate::colour::{self, Colour};
use crate::commands::print_plan;
use crate::error::{Exit, Failure, Result, sdk};
use crate::session::{Ctx, begin, finish_session};
use crate::stacks::Stacks;

/// Delete one stack as a reported step; one already gone is "absent".
async fn delete_stack(ctx: &Ctx, stacks: &Stacks, name: &str) -> Result<&'static str> {
    if !stacks.observe(name).await?.exists() {
        return Ok("absent");
    }
    let step = format!("delete {name}");
    ctx.out.start(&step, "");
    crate::session::hold_hook(&step).await;
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
        .check_lock(&crate::session::hostname(), force_unlock, ctx.yes)
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
