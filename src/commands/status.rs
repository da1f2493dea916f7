//! `release status` and `release history`: what is there, and what happened.

use std::time::Duration;

use serde_json::{Value, json};

use crate::adapters::colour::{self, Colour};
use crate::commands::observe::{observe, public_url};
use crate::error::{Result, sdk};
use crate::session::Ctx;

/// `release status`: live, candidate and previous colours, the public URL, the stacks, the lock.
pub async fn status(ctx: &Ctx) -> Result<Value> {
    let stacks = ctx.stacks();
    let store = ctx.store();
    let c = &ctx.config;
    let mut stack_states = serde_json::Map::new();
    for t in crate::config::TEMPLATES {
        let o = stacks.observe(&c.stack_name(t)).await?;
        stack_states.insert(
            c.stack_name(t),
            json!(o.status.unwrap_or_else(|| "absent".into())),
        );
    }
    let world = observe(ctx, &stacks).await?;
    let http = crate::adapters::smoke::http_client(Duration::from_secs(5));
    let client = match &world.cluster {
        Some(conn) => Some(conn.proxy_client().await?),
        None => None,
    };
    let roles = colour::roles(world.live, &world.colours);
    let now = crate::adapters::store::now() as i64;
    let mut colours = serde_json::Map::new();
    for (col, o) in &world.colours {
        if !o.exists {
            continue;
        }
        // Ready through the API server's service proxy: status needs no path to the colour's
        // load balancer, which is CloudFront's origin, not the operator's.
        let (healthy, served) = match (&o.address, &client) {
            (Some(_), Some(client)) => {
                let base = crate::adapters::smoke::Base::proxy(client, c, *col);
                let healthy = crate::adapters::smoke::call(
                    &http,
                    &base,
                    http::Method::GET,
                    "/readyz",
                    "",
                    None,
                )
                .await
                .is_ok_and(|a| a.ok());
                let served = crate::adapters::smoke::version(&http, &base, "")
                    .await
                    .ok()
                    .and_then(|v| v["model_sha256"].as_str().map(str::to_string));
                (healthy, served)
            }
            _ => (false, None),
        };
        let identity =
            crate::plan::colour::model_identity(o.model_sha256.as_deref(), served.as_deref());
        colours.insert(
            colour::name(c, *col),
            json!({
                "colour": col, "role": roles.roles.get(col), "image_digest": o.digest,
                "model_version": o.model_version, "model_sha256": o.model_sha256, "model_identity": identity,
                "age": o.created.map(|t| humantime::format_duration(Duration::from_secs(now.saturating_sub(t).max(0) as u64)).to_string()),
                "pods_ready": format!("{}/{}", o.ready, o.replicas), "address": o.address, "healthy": healthy,
            }),
        );
        // promote.retire_previous_after: kept warm until then (instant rollback until then).
        if let (Some(t), Some(colour::Role::Previous)) = (o.retire_after, roles.roles.get(col)) {
            colours[&colour::name(c, *col)]["kept_warm_until"] = json!(format!(
                "{} (instant rollback until then; then the next `release up` retires it, or `release retire` at once)",
                crate::output::rfc3339_seconds(t)
            ));
        }
    }
    let edge_state = edge_status(ctx, &world.edge).await;
    let public = public_url(ctx, &world.edge);
    let public_colour = match &public {
        Some(u) => match http.get(format!("{u}/version")).send().await {
            Ok(r) => r.json::<Value>().await.ok().map(|v| v["colour"].clone()),
            Err(_) => None,
        },
        None => None,
    };
    // With smoke.shadow and a candidate: how the live colour's real answers compare with it so
    // far, and what a promote would decide.
    let shadow = match (&c.smoke.shadow, world.live, &world.cluster, &client) {
        (Some(s), Some(live), Some(conn), Some(proxy)) => {
            let candidate = world.colours.get(&live.other()).filter(|o| {
                o.exists && roles.roles.get(&live.other()) == Some(&colour::Role::Candidate)
            });
            match (candidate, conn.client().await) {
                (Some(o), Ok(kube)) => {
                    use crate::plan::shadow::{Verdict, judge, merge};
                    let reports = colour::shadow_reports(&kube, proxy, c, live, "status")
                        .await
                        .unwrap_or_default();
                    let version = o.model_version.clone().unwrap_or(c.model.version.clone());
                    let f = merge(
                        &reports,
                        live.other().as_str(),
                        &version,
                        o.model_sha256.as_deref().unwrap_or_default(),
                    );
                    let mut j = f.to_json();
                    j["candidate"] = json!(colour::name(c, live.other()));
                    j["promote would"] =
                        json!(
                            match judge(&f, s.min_agreement, s.min_requests, s.required) {
                                Verdict::Pass(w) => format!("pass: {w}"),
                                Verdict::NotJudged(w) => format!("go on, {w}"),
                                Verdict::Refuse(w) => format!("refuse: {w}"),
                            }
                        );
                    Some(j)
                }
                _ => None,
            }
        }
        _ => None,
    };
    let lock = lock_status(&store).await?;
    // A bake in another process: its latest look, from the open ledger entry.
    let baking = match lock {
        Some(_) => store
            .history(1)
            .await?
            .pop()
            .filter(|r| r.outcome == crate::state::Outcome::InProgress)
            .and_then(|r| r.baking),
        None => None,
    };
    let mut out = json!({
        "app": c.app,
        "live": world.live,
        "colours": colours,
        "public url": public,
        "public url answers from": public_colour,
        "edge": edge_state,
        "unfinished": roles.unfinished.map(|a| format!(
            "a {a} moved the edge to {} and died before verifying it: re-run `release {a}` to finish it (or `release rollback`)",
            world.live.map_or("-", Colour::as_str)
        )),
        "stacks": stack_states,
        "lock": lock.unwrap_or_else(|| "free".into()),
    });
    if let Some(s) = shadow {
        out["shadow"] = s;
    }
    if let Some(b) = baking {
        out["baking"] = json!(b);
    }
    // edge.preview: the candidate the staging distribution serves, and how to ask it.
    let p = &world.edge.parameters;
    if let Some(addr) = p
        .get("CandidateOriginDomain")
        .filter(|a| !a.is_empty() && p.get("Preview").is_some_and(|v| v == "on"))
    {
        let serves = world
            .colours
            .iter()
            .find(|(_, o)| o.address.as_deref() == Some(addr.as_str()))
            .map(|(col, _)| colour::name(c, *col));
        let weight = p.get("CanaryWeight").map_or("0", String::as_str);
        out["preview"] = json!({
            "serves": serves.unwrap_or_else(|| format!("{addr}, no colour's load balancer now")),
            "curl": crate::plan::up::preview_curl(public.as_deref().unwrap_or_default()),
            "canary": (weight != "0").then(|| format!("{}% of viewers", (weight.parse::<f64>().unwrap_or(0.0) * 100.0).round())),
        });
    }
    Ok(out)
}

/// CloudFront's own word on the edge: `InProgress` while a change spreads, then `Deployed`.
async fn edge_status(ctx: &Ctx, edge: &crate::adapters::stacks::Observed) -> String {
    match edge.outputs.get("DistributionId") {
        Some(id) => crate::adapters::endpoint::cloudfront(&ctx.aws)
            .get_distribution()
            .id(id)
            .send()
            .await
            .map(|d| {
                d.distribution()
                    .map(|d| d.status().to_string())
                    .unwrap_or_default()
            })
            .unwrap_or_else(|e| format!("unknown ({})", sdk(e))),
        None => "absent".into(),
    }
}

/// Who holds the lock, and whether its process is gone.
async fn lock_status(store: &crate::adapters::store::StateStore) -> Result<Option<String>> {
    if !store.bucket_exists().await? {
        return Ok(None);
    }
    Ok(store.read_lock().await?.map(|found| {
        let gone = crate::adapters::store::holder_gone(&found.lock);
        let d = found.lock.describe(found.now);
        if gone {
            format!("{d}; its process is gone: the next command needs --force-unlock")
        } else {
            d
        }
    }))
}

/// `release history`: the ledger, newest last.
pub async fn history(ctx: &Ctx, limit: usize) -> Result<Value> {
    let store = ctx.store();
    if !store.bucket_exists().await? {
        return Ok(json!({"releases": []}));
    }
    let rows: Vec<Value> = store
        .history(limit)
        .await?
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "action": r.action, "colour": r.colour, "image": r.image_tag, "digest": r.image_digest,
                "outcome": r.outcome, "went_live": r.went_live, "model_version": r.model_version, "duration_s": r.finished.map(|f| f.saturating_sub(r.started)), "actor": r.actor,
                "ci_build_url": r.ci_build_url, "error": r.error,
            })
        })
        .collect();
    Ok(json!({"releases": rows}))
}
