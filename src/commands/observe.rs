//! What `promote`, `rollback`, `status` and a dry-run `up` read of the world.

use std::collections::BTreeMap;

use crate::adapters::colour::{self, Colour};
use crate::adapters::stacks::{Observed, Stacks};
use crate::config::Config;
use crate::error::Result;
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
