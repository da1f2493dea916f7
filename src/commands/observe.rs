//! What `promote`, `rollback`, `status` and a dry-run `up` read of the world.

use std::collections::BTreeMap;

use crate::adapters::colour::{self, Colour};
use crate::adapters::stacks::{Observed, Stacks};
use crate::config::Config;
use crate::error::{Exit, Failure, Result};
use crate::plan::up::EdgeState;
use crate::session::Ctx;

/// Both colours as the cluster has them, and the one the edge stack's origin points at.
pub async fn colours(
    client: &kube::Client,
    config: &Config,
    edge: &Observed,
) -> Result<(BTreeMap<Colour, colour::Observed>, Option<Colour>)> {
    let mut colours = BTreeMap::new();
    for col in Colour::ALL {
        colours.insert(col, colour::observe(client, config, col).await?);
    }
    let addresses: BTreeMap<Colour, Option<String>> = colours
        .iter()
        .map(|(k, v)| (*k, v.address.clone()))
        .collect();
    let live = colour::live_colour(
        edge.parameters.get("OriginDomain").map(String::as_str),
        &addresses,
    );
    Ok((colours, live))
}

/// The world as `promote` and `status` need it.
pub struct World {
    pub cluster: Option<crate::adapters::eks::Cluster>,
    pub edge: Observed,
    pub colours: BTreeMap<Colour, colour::Observed>,
    pub live: Option<Colour>,
}

pub async fn observe(ctx: &Ctx, stacks: &Stacks) -> Result<World> {
    let c = &ctx.config;
    let cluster_stack = stacks.observe(&c.stack_name("cluster")).await?;
    let edge = stacks.observe(&c.stack_name("edge")).await?;
    let (mut colours, mut live, mut cluster) = (BTreeMap::new(), None, None);
    if let Some(name) = cluster_stack.outputs.get("ClusterName") {
        let conn = crate::adapters::eks::Cluster::connect(&ctx.aws, name).await?;
        (colours, live) = self::colours(&conn.client().await?, c, &edge).await?;
        cluster = Some(conn);
    }
    Ok(World {
        cluster,
        edge,
        colours,
        live,
    })
}

pub fn public_url(ctx: &Ctx, edge: &Observed) -> Option<String> {
    ctx.config.edge.public_url.clone().or_else(|| {
        edge.outputs
            .get("DistributionDomainName")
            .map(|d| format!("https://{d}"))
    })
}

/// The edge stack's phase and origin, and CloudFront's word on the distribution
/// (`GetDistribution`'s `Status`: `InProgress` while a change spreads, then `Deployed`), as
/// `command` needs it before it changes any colour (`plan::up::edge_ready`).
pub async fn edge_state(ctx: &Ctx, edge: &Observed, command: &str) -> Result<EdgeState> {
    use crate::plan::stack::StackPhase;
    Ok(match edge.phase() {
        StackPhase::Absent | StackPhase::FailedCreate => EdgeState::Absent,
        StackPhase::Ready => {
            let deployed = match edge.outputs.get("DistributionId") {
                Some(id) => crate::adapters::endpoint::cloudfront(&ctx.aws)
                    .get_distribution()
                    .id(id)
                    .send()
                    .await
                    .map_err(|e| {
                        Failure::new(
                            Exit::Aws,
                            "edge",
                            crate::error::sdk(e),
                            "check CloudFront access and re-run",
                        )
                    })?
                    .distribution()
                    .is_some_and(|d| d.status() == "Deployed"),
                None => true,
            };
            // Required before any colour changes: the real run waits for it (a run that died
            // right after an edge change finds CloudFront still spreading it); a dry run says so.
            let deployed = match (deployed, edge.outputs.get("DistributionId")) {
                (false, Some(id)) if !ctx.dry_run => {
                    crate::commands::steps::wait_deployed(
                        ctx,
                        id,
                        "edge",
                        "wait for CloudFront, then re-run",
                    )
                    .await?;
                    true
                }
                (false, Some(_)) => {
                    ctx.out.note(&format!("plan: edge: CloudFront is still deploying the edge's last change; {command} waits until it is Deployed before it changes any colour"));
                    true
                }
                (d, _) => d,
            };
            EdgeState::Serving {
                origin: edge
                    .parameters
                    .get("OriginDomain")
                    .cloned()
                    .unwrap_or_default(),
                deployed,
            }
        }
        _ => EdgeState::Unsettled {
            status: edge.status_text(),
        },
    })
}
