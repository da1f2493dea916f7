//! What `promote`, `rollback`, `status` and a dry-run `up` read of the world.

use std::collections::BTreeMap;

use crate::adapters::colour::{self, Colour};
use crate::adapters::stacks::{Observed, Stacks};
use crate::error::Result;
use crate::session::Ctx;
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
    let mut colours = BTreeMap::new();
    let mut cluster = None;
    if let Some(name) = cluster_stack.outputs.get("ClusterName") {
        let conn = crate::adapters::eks::Cluster::connect(&ctx.aws, name).await?;
        let client = conn.client().await?;
        for col in Colour::ALL {
            colours.insert(col, colour::observe(&client, c, col).await?);
        }
        cluster = Some(conn);
    }
    let addresses: BTreeMap<Colour, Option<String>> = colours
        .iter()
        .map(|(k, v)| (*k, v.address.clone()))
        .collect();
    let live = colour::live_colour(
        edge.parameters.get("OriginDomain").map(String::as_str),
        &addresses,
    );
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
