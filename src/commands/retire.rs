//! `release retire`: observe under the lock, decide which colour goes (`plan::retire`), then
//! print the plan (`--dry-run`) or remove it, as the ledger's step `retire <app>-<colour>`.

use std::time::Instant;

use serde_json::{Value, json};

use crate::commands::observe::{edge_state, observe};
use crate::commands::print_plan;
use crate::error::{Exit, Failure, Result};
use crate::plan::retire::{RetirePlan, RetireRefusal, RetireWorld, plan_retire};
use crate::session::{Ctx, begin, finish_unless_nothing};

const ACTION: &str = "retire";

fn refused(ctx: &Ctx, r: &RetireRefusal) -> Failure {
    let (why, hint) = r.explain(&ctx.config.app);
    Failure::new(Exit::Precondition, ACTION, why, hint)
}

pub async fn retire(ctx: &Ctx, force_unlock: bool) -> Result<Value> {
    let started = Instant::now();
    let (stacks, store, c) = (ctx.stacks(), ctx.store(), &ctx.config);
    if !store.bucket_exists().await? {
        return Err(refused(
            ctx,
            &RetireRefusal::Nothing {
                why: format!(
                    "{}: {} was never released",
                    crate::plan::retire::NOTHING_TO_RETIRE,
                    c.app
                ),
                hint: "run `release up` first",
            },
        ));
    }
    let now = crate::adapters::store::now() as i64;
    let prepare = async || {
        let world = observe(ctx, &stacks).await?;
        let facts = RetireWorld {
            app: c.app.clone(),
            live: world.live,
            edge: edge_state(ctx, &world.edge, ACTION).await?,
            colours: world.colours.clone(),
            now,
        };
        Ok::<_, Failure>((world, plan_retire(&facts)))
    };
    if ctx.dry_run {
        store.check_lock(force_unlock, ctx.break_live_lock).await?;
        let (world, plan) = prepare().await?;
        let plan = plan.map_err(|r| refused(ctx, &r))?;
        return Ok(print_plan(
            ctx,
            &plan.printed(&c.app, now),
            json!({"live": world.live, "retire": plan.colour}),
        ));
    }
    let id = begin(ctx, &store, ACTION, force_unlock, vec![]).await?;
    // Nothing to retire is not a failed run (as for a flip); a refusal for another reason is.
    let mut nothing = false;
    let result = async {
        let (world, plan) = prepare().await?;
        let plan: RetirePlan = plan.map_err(|r| {
            nothing = matches!(r, RetireRefusal::Nothing { .. });
            refused(ctx, &r)
        })?;
        let cluster = world
            .cluster
            .as_ref()
            .expect("a colour to retire implies a cluster");
        let client = cluster.client().await?;
        let name = plan.step_name(&c.app);
        crate::commands::steps::retire(
            ctx,
            &store,
            &id,
            &client,
            plan.colour,
            &name,
            &plan.what(now),
        )
        .await?;
        Ok::<_, Failure>((world.live, plan.colour, name))
    }
    .await;
    finish_unless_nothing(ctx, &result, nothing).await;
    let (live, retired, name) = result?;
    Ok(json!({
        "release": id,
        "live": live,
        "retired": retired,
        "steps": [name],
        "duration": format!("{:.1} s", started.elapsed().as_secs_f64()),
    }))
}
