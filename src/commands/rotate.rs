//! `release rotate-origin-secret`: observe under the lock, decide the rotation
//! (`plan::rotate::plan_rotation`), then print it (`--dry-run`) or execute the same steps.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::adapters::colour::{self, OriginSecret};
use crate::commands::observe::{edge_state, observe, public_url};
use crate::commands::print_plan;
use crate::commands::steps::{smoke_test, wait_public};
use crate::error::{Exit, Failure, Result};
use crate::plan::rotate::{RotateRefusal, RotateStep, RotateWorld, plan_rotation, printed};
use crate::session::{Ctx, begin, finish_unless_nothing, step};

const ACTION: &str = "rotate-origin-secret";

/// A new origin-verify value: 64 random hex characters, as the first deploy makes one.
fn new_value() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn refused(ctx: &Ctx, r: RotateRefusal) -> Failure {
    match r {
        RotateRefusal::NothingLive => Failure::new(
            Exit::Precondition,
            ACTION,
            format!(
                "nothing to rotate: {} has no live colour behind an edge",
                ctx.config.app
            ),
            "run `release up` first; the first release makes the value",
        ),
        RotateRefusal::NoSecret => Failure::new(
            Exit::Precondition,
            ACTION,
            format!(
                "the origin-verify Secret {}-origin is missing from namespace {}",
                ctx.config.app, ctx.config.deploy.namespace
            ),
            "run `release up --force`: it makes the Secret and a candidate that reads it, then promote",
        ),
        RotateRefusal::Edge(r) => {
            let (why, hint) = r.explain();
            Failure::new(Exit::Precondition, ACTION, why, hint)
        }
    }
}

pub async fn rotate_origin_secret(ctx: &Ctx, force_unlock: bool) -> Result<Value> {
    let started = Instant::now();
    let (stacks, store, c) = (ctx.stacks(), ctx.store(), &ctx.config);
    if !store.bucket_exists().await? {
        return Err(refused(ctx, RotateRefusal::NothingLive));
    }
    let prepare = async || {
        let world = observe(ctx, &stacks).await?;
        let edge = edge_state(ctx, &world.edge, ACTION).await?;
        let (mut secret, mut stale) = (None, Vec::new());
        if let Some(cluster) = &world.cluster {
            let client = cluster.client().await?;
            secret = colour::origin_secret(&client, c).await?;
            for (&col, o) in &world.colours {
                let stamp = colour::secret_stamp(&client, c, col).await?;
                if let (true, Some(stamp), Some(s)) = (o.exists, stamp, &secret)
                    && stamp != s.stamp()
                {
                    stale.push(col);
                }
            }
        }
        let facts = RotateWorld {
            app: c.app.clone(),
            edge,
            live: world.live,
            deployed: world
                .colours
                .iter()
                .filter(|(_, o)| o.exists)
                .map(|(&colour, _)| colour)
                .collect(),
            secret: secret.is_some(),
            staged: secret.as_ref().is_some_and(|s| s.previous.is_some()),
            stale,
        };
        Ok::<_, Failure>((world, secret, plan_rotation(&facts)))
    };
    if ctx.dry_run {
        store.check_lock(force_unlock, ctx.break_live_lock).await?;
        let (world, _, plan) = prepare().await?;
        let steps = plan.map_err(|r| refused(ctx, r))?;
        return Ok(print_plan(
            ctx,
            &printed(&c.app, &steps),
            json!({"live": world.live}),
        ));
    }
    let id = begin(ctx, &store, ACTION, force_unlock, vec![]).await?;
    // Nothing to rotate is not a failed run: the ledger says so (as for a flip).
    let mut nothing = false;
    let result = async {
        let (world, secret, plan) = prepare().await?;
        let steps = plan.map_err(|r| {
            nothing = r == RotateRefusal::NothingLive;
            refused(ctx, r)
        })?;
        let (Some(cluster), Some(secret), Some(url)) =
            (&world.cluster, secret, public_url(ctx, &world.edge))
        else {
            nothing = true;
            return Err(refused(ctx, RotateRefusal::NothingLive));
        };
        let client = cluster.client().await?;
        let cases = crate::adapters::smoke::load_cases(&ctx.base.join(&c.smoke.cases))
            .map_err(|e| Failure::new(Exit::Config, "smoke", e, "fix smoke.cases"))?;
        let mut value = secret;
        let mut done = Vec::new();
        for s in &steps {
            let name = s.name(&c.app);
            let what = s.what(&c.app);
            match s {
                RotateStep::Stage => {
                    step(ctx, &store, &id, &name, &what, async {
                        value = OriginSecret {
                            previous: Some(value.current.clone()),
                            current: new_value(),
                        };
                        colour::set_origin_secret(&client, c, &value).await?;
                        Ok(((), "staged".to_string()))
                    })
                    .await?
                }
                RotateStep::Restart {
                    colour: col,
                    both,
                    optional,
                } => {
                    let restarted = step(ctx, &store, &id, &name, &what, async {
                        let timeout = Duration::from_secs(c.deploy.rollout_timeout_seconds);
                        let restarted = colour::restart_for_secret(
                            &client,
                            c,
                            *col,
                            &value.stamp(),
                            ctx.generation().await,
                        )
                        .await?;
                        colour::wait_rollout(&client, c, *col, timeout, |p| {
                            ctx.out.progress(&name, &p)
                        })
                        .await?;
                        if *both {
                            // A draining pod still accepts only what it started with.
                            colour::wait_old_pods_gone(&client, c, *col, timeout).await?;
                        }
                        Ok((
                            (),
                            if restarted {
                                "restarted".to_string()
                            } else {
                                "already takes these values".to_string()
                            },
                        ))
                    })
                    .await;
                    match restarted {
                        Err(e) if *optional && e.exit != Exit::Locked => {
                            ctx.out.note(&format!(
                                "warning: {name} failed ({}); it is not live, so the rotation goes on: it refuses the edge's new value until the next `release up` replaces it",
                                e.message
                            ));
                            continue;
                        }
                        other => other?,
                    }
                }
                RotateStep::Edge => {
                    step(ctx, &store, &id, &name, &what, async {
                        let params = crate::adapters::stacks::keeping(
                            &world.edge,
                            &[("OriginSecret".to_string(), value.current.clone())],
                        );
                        // The staging distribution (edge.preview) carries the secret too: the
                        // update waits for both.
                        let (changed, _) = crate::commands::steps::update_edge(
                            ctx,
                            &stacks,
                            params,
                            &name,
                            "run release rotate-origin-secret again: the edge's value stays accepted until it finishes",
                        )
                        .await?;
                        Ok(((), changed))
                    })
                    .await?
                }
                RotateStep::Verify { colour: col } => {
                    step(ctx, &store, &id, &name, &url, async {
                        let base = url.trim_end_matches('/').to_string();
                        let public = crate::adapters::smoke::Target {
                            base: crate::adapters::smoke::Base::Url(base.clone()),
                            colour: *col,
                            model_version: "",
                            model_sha256: "",
                            secret: "",
                        };
                        let timeout = Duration::from_secs(c.edge.verify_timeout_seconds);
                        wait_public(&base, *col, timeout)
                            .await
                            .map_err(|e| Failure::new(Exit::Verify, name.as_str(), e, ""))?;
                        let summary =
                            smoke_test(ctx, &public, &cases, c.smoke.requests.min(20), None, None)
                                .await?;
                        Ok(((), summary))
                    })
                    .await?
                }
                RotateStep::Drop => {
                    step(ctx, &store, &id, &name, &what, async {
                        value.previous = None;
                        colour::set_origin_secret(&client, c, &value).await?;
                        Ok(((), "dropped".to_string()))
                    })
                    .await?
                }
            }
            done.push(name);
        }
        Ok(done)
    }
    .await;
    finish_unless_nothing(ctx, &result, nothing).await;
    let done = result.map_err(|mut e| {
        if e.hint.is_empty() {
            e.hint = "run release rotate-origin-secret again: it finishes the rotation; the edge's value stays accepted until then".into();
        }
        e
    })?;
    Ok(json!({
        "release": id,
        "steps": done,
        "duration": format!("{:.1} s", started.elapsed().as_secs_f64()),
    }))
}
