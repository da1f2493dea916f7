//! `release destroy`: observe what exists, plan every deletion in dependency order
//! (`plan::destroy::plan_destroy`), then print the plan (`--dry-run`) or execute the same plan
//! under the lock, each step skipping what is already gone so that a re-run finishes the job.

use std::time::Instant;

use serde_json::{Value, json};

use crate::adapters::colour::{self, Colour};
use crate::adapters::stacks::Stacks;
use crate::commands::print_plan;
use crate::error::{Exit, Failure, Result, sdk};
use crate::plan::destroy::{DestroyStep, DestroyWorld, plan_destroy, printed};
use crate::session::{Ctx, begin, finish_session};
/// What the summary says of the registry stack destroy keeps.
const KEPT: &str =
    "kept: it holds the images (--delete-images removes them, the registry and the state bucket)";

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

/// What destroy deletes from, read: the stacks, the colours and the app's objects when the
/// cluster answers, the images (with `--delete-images`), the state bucket. Returns the cluster's
/// client too, when there is one.
async fn observe(
    ctx: &Ctx,
    stacks: &Stacks,
    bucket: bool,
    delete_images: bool,
) -> Result<(DestroyWorld, Option<kube::Client>)> {
    let c = &ctx.config;
    let mut world = DestroyWorld {
        app: c.app.clone(),
        namespace: c.deploy.namespace.clone(),
        bucket: bucket.then(|| c.state_bucket()),
        ..Default::default()
    };
    let mut client = None;
    for t in ["edge", "cluster", "network", "registry"] {
        let name = c.stack_name(t);
        let observed = stacks.observe(&name).await?;
        if t == "cluster"
            && let Some(cluster) = observed.outputs.get("ClusterName")
        {
            let k = crate::adapters::eks::Cluster::connect(&ctx.aws, cluster)
                .await?
                .client()
                .await?;
            for col in Colour::ALL {
                let deployed = colour::observe(&k, c, col).await?.exists;
                world.deployed.push((col, deployed));
            }
            world.cluster = true;
            client = Some(k);
        }
        world.stacks.push((name, observed.status));
    }
    if delete_images {
        // Images, not tags: ListImages names an image once per tag.
        world.images = crate::adapters::image::keep::tags_by_digest(
            &crate::adapters::endpoint::ecr(&ctx.aws),
            &c.app,
        )
        .await
        .ok()
        .map(|images| images.len());
    }
    Ok((world, client))
}

/// `release destroy`: everything `release` made for the app, in dependency order. Images (and
/// with them the registry stack and the state bucket) go only with `--delete-images`.
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
    let stacks = ctx.stacks();
    let store = ctx.store();
    // A dry run deletes nothing and asks nothing, but exits as the real command would decide:
    // refused (2) where it could not ask.
    if ctx.dry_run {
        let bucket = store.bucket_exists().await?;
        store.check_lock(force_unlock, ctx.break_live_lock).await?;
        let (world, _) = observe(ctx, &stacks, bucket, delete_images).await?;
        let plan = print_plan(
            ctx,
            &printed(&plan_destroy(&world, delete_images), &c.app),
            json!({}),
        );
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
        confirm(&c.app)?;
    }
    let bucket = store.bucket_exists().await?;
    let locked = if bucket {
        begin(ctx, &store, "destroy", force_unlock, vec![]).await?;
        true
    } else {
        false
    };
    let mut run = Run {
        ctx,
        stacks: &stacks,
        store: &store,
        client: None,
        locked,
        summary: serde_json::Map::new(),
    };
    let result = async {
        let (world, client) = observe(ctx, &stacks, bucket, delete_images).await?;
        run.client = client;
        run.execute(&plan_destroy(&world, delete_images)).await
    }
    .await;
    if run.locked {
        finish_session(
            ctx,
            result.as_ref().err().map(|e| e.to_string()),
            Some(true),
        )
        .await;
    }
    let steps = result?;
    // The keys the summary always had, whether or not there was anything to keep or delete.
    if delete_images {
        run.summary
            .entry(c.state_bucket())
            .or_insert_with(|| json!("deleted"));
    } else {
        run.summary
            .entry(c.stack_name("registry"))
            .or_insert_with(|| json!(KEPT));
    }
    run.summary.insert("steps".into(), json!(steps));
    Ok(Value::Object(run.summary))
}

/// Ask for the app's name on the terminal.
fn confirm(app: &str) -> Result<()> {
    eprint!("destroy everything release made for {app}? type the app name to confirm: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(Exit::Usage, "destroy", e.to_string(), "add --yes"))?;
    if answer.trim() != app {
        return Err(Failure::new(
            Exit::Usage,
            "destroy",
            "not confirmed",
            "type the app name, or add --yes",
        ));
    }
    Ok(())
}

/// The executor of a destroy plan: each step mapped to its adapter calls; the summary says what
/// each did.
struct Run<'a> {
    ctx: &'a Ctx,
    stacks: &'a Stacks,
    store: &'a crate::adapters::store::StateStore,
    client: Option<kube::Client>,
    /// The lock is held and the ledger entry open: closed before the first step that deletes
    /// where they live.
    locked: bool,
    summary: serde_json::Map<String, Value>,
}

impl Run<'_> {
    async fn execute(&mut self, steps: &[DestroyStep]) -> Result<Vec<String>> {
        let app = &self.ctx.config.app;
        let mut done = Vec::new();
        for s in steps {
            if s.ends_the_ledger() && self.locked {
                finish_session(self.ctx, None, Some(true)).await;
                self.locked = false;
            }
            self.run(s).await?;
            done.push(s.name(app));
        }
        Ok(done)
    }

    fn client(&self) -> &kube::Client {
        self.client
            .as_ref()
            .expect("the plan deletes cluster objects only when the cluster answered")
    }

    async fn run(&mut self, s: &DestroyStep) -> Result<()> {
        let (ctx, c) = (self.ctx, &self.ctx.config);
        if self.locked {
            crate::session::fence(ctx, &s.name(&c.app)).await?;
        }
        match s {
            DestroyStep::Lock => {}
            DestroyStep::Colour { colour, .. } => {
                colour::teardown(self.client(), c, *colour, ctx.generation().await).await?;
            }
            DestroyStep::AppObjects { .. } => {
                colour::remove_app(self.client(), c).await?;
                self.summary.insert("colours".into(), json!("removed"));
            }
            DestroyStep::LoadBalancers => {
                // Before the cluster goes: the controller deletes each NLB while it still runs.
                let step = "load balancers";
                ctx.out
                    .start(step, "waiting for the Services' NLBs to be deleted");
                let start = Instant::now();
                let timeout = std::time::Duration::from_secs(c.deploy.address_timeout_seconds);
                let gone = colour::wait_load_balancers_gone(self.client(), c, timeout, |p| {
                    ctx.out.progress(step, &p)
                })
                .await;
                match gone {
                    Ok(done) => {
                        ctx.out.finish(step, true, &done, start.elapsed());
                        self.summary.insert(step.into(), json!(done));
                    }
                    Err(e) => {
                        ctx.out.finish(step, false, &e.message, start.elapsed());
                        return Err(e);
                    }
                }
            }
            DestroyStep::Stack {
                name, holds_state, ..
            } => {
                let done = delete_stack(ctx, self.stacks, name).await?;
                let said = if *holds_state {
                    "deleted, with its images"
                } else {
                    done
                };
                self.summary.insert(name.clone(), json!(said));
            }
            DestroyStep::KeepRegistry { name } => {
                self.summary.insert(name.clone(), json!(KEPT));
            }
            DestroyStep::Images { .. } => delete_images(ctx).await?,
            DestroyStep::Bucket { name } => {
                if self.store.bucket_exists().await? {
                    delete_bucket(ctx, name).await?;
                }
                self.summary.insert(name.clone(), json!("deleted"));
            }
        }
        Ok(())
    }
}

fn aws_failure(step: &str, e: String) -> Failure {
    Failure::new(
        Exit::Aws,
        step,
        e,
        "re-run release destroy --delete-images; it continues",
    )
}

/// Every image in the app's repository, by digest (every page of ListImages), in batches of
/// 100, BatchDeleteImage's limit (ECR API reference).
async fn delete_images(ctx: &Ctx) -> Result<()> {
    use aws_sdk_ecr::types::ImageIdentifier;
    let app = &ctx.config.app;
    let ecr = crate::adapters::endpoint::ecr(&ctx.aws);
    let Ok(images) = crate::adapters::image::keep::tags_by_digest(&ecr, app).await else {
        return Ok(());
    };
    let digests: Vec<&String> = images.keys().collect();
    for batch in digests.chunks(100) {
        let ids = batch
            .iter()
            .map(|d| ImageIdentifier::builder().image_digest(d.as_str()).build())
            .collect();
        let out = ecr
            .batch_delete_image()
            .repository_name(app)
            .set_image_ids(Some(ids))
            .send()
            .await
            .map_err(|e| aws_failure("delete images", sdk(e)))?;
        if let Some(f) = out.failures().first() {
            return Err(aws_failure(
                "delete images",
                format!(
                    "{}: {}",
                    f.image_id()
                        .and_then(|i| i.image_digest())
                        .unwrap_or("an image"),
                    f.failure_reason().unwrap_or("not deleted")
                ),
            ));
        }
    }
    Ok(())
}

/// Every version of every object in the state bucket (each ledger object has one per write), a page at a
/// time (each page deleted is gone from the next listing), then the bucket.
async fn delete_bucket(ctx: &Ctx, bucket: &str) -> Result<()> {
    let fail = aws_failure;
    let s3 = crate::adapters::endpoint::s3(&ctx.aws);
    let owner = ctx.config.state.bucket_owner.clone();
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .set_expected_bucket_owner(owner.clone())
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
            .bucket(bucket)
            .set_expected_bucket_owner(owner.clone())
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
        .bucket(bucket)
        .set_expected_bucket_owner(owner)
        .send()
        .await
        .map_err(|e| fail("state bucket", sdk(e)))?;
    Ok(())
}
