//! The release vocabulary, defined once: the two colours, the role each plays, the flip a colour
//! may be left marked with, and which colour is which, decided from what the edge and the colours'
//! annotations say. Pure: the adapters read and write these as the strings in the annotations,
//! the ledger and the JSON summaries (`blue`, `live`, `promote`, ...), which are unchanged.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the two colours a release alternates between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub const ALL: [Colour; 2] = [Colour::Blue, Colour::Green];

    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    /// `blue` or `green`; anything else is no colour.
    pub fn parse(s: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a colour is in the release, as `release/role` and `status` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The edge serves it.
    Live,
    /// Deployed and smoke-tested by `up`, waiting for `promote`.
    Candidate,
    /// Live before the last promote: what `rollback` goes back to.
    Previous,
    /// Rolled back from: kept for a look (`rollback --keep-failed`) until the next `up`.
    Failed,
    /// Deployed without a role `release` knows (by hand, or by another tool).
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Candidate => "candidate",
            Role::Previous => "previous",
            Role::Failed => "failed",
            Role::Unknown => "unknown",
        }
    }

    /// A `release/role` annotation; one `release` did not write is `Unknown`.
    pub fn parse(s: &str) -> Role {
        [Role::Live, Role::Candidate, Role::Previous, Role::Failed]
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(Role::Unknown)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The flip a colour is marked with (`release/pending`) while traffic moves to it: set before the
/// edge changes, cleared once the public URL answers from it and the roles are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Promote,
    Rollback,
}

impl Pending {
    pub fn as_str(self) -> &'static str {
        match self {
            Pending::Promote => "promote",
            Pending::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Pending> {
        [Pending::Promote, Pending::Rollback]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is deployed of a colour, from its objects' annotations and status.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub exists: bool,
    pub digest: Option<String>,
    pub manifest_hash: Option<String>,
    /// Its `release/role` annotation (set by up and promote).
    pub role: Option<Role>,
    pub ready: i32,
    pub replicas: i32,
    pub address: Option<String>,
    pub model_version: Option<String>,
    /// Its `release/model-sha256` annotation: the sha256 of the model its image ships.
    pub model_sha256: Option<String>,
    /// When the Deployment was created (Unix seconds).
    pub created: Option<i64>,
    /// Set on the colour a flip is moving traffic to. Still set on the live colour = a flip died
    /// between moving traffic and finishing.
    pub pending: Option<Pending>,
    /// Its `release/retire-after` annotation (Unix seconds): a previous colour kept warm
    /// (`promote.retire_previous_after`) until then.
    pub retire_after: Option<i64>,
}

/// What each colour is, as the edge and the annotations together say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    pub live: Option<Colour>,
    /// Per colour that exists.
    pub roles: BTreeMap<Colour, Role>,
    /// A flip that moved traffic to the live colour but died before it verified the public URL
    /// and wrote the roles.
    pub unfinished: Option<Pending>,
}

/// The edge is the truth about which colour is live; the annotations say the rest. A colour
/// still annotated `live` that the edge no longer serves was left by an unfinished flip: it is
/// `previous` after a promote, `failed` after a rollback.
pub fn roles(live: Option<Colour>, colours: &BTreeMap<Colour, Observed>) -> Roles {
    let unfinished = live.and_then(|l| colours.get(&l)).and_then(|o| o.pending);
    let roles = colours
        .iter()
        .filter(|(_, o)| o.exists)
        .map(|(c, o)| {
            let role = if Some(*c) == live {
                Role::Live
            } else {
                match (o.role, unfinished) {
                    (Some(Role::Live), Some(Pending::Rollback)) => Role::Failed,
                    (Some(Role::Live), _) => Role::Previous,
                    (Some(r), _) => r,
                    (None, _) => Role::Unknown,
                }
            };
            (*c, role)
        })
        .collect();
    Roles {
        live,
        roles,
        unfinished,
    }
}

/// The colour to deploy: the one that is not live (blue when nothing is).
pub fn candidate_for(live: Option<Colour>) -> Colour {
    live.map_or(Colour::Blue, Colour::other)
}

/// Which colour the edge serves: the one whose load-balancer address is the edge stack's origin.
pub fn live_colour(
    origin: Option<&str>,
    addresses: &BTreeMap<Colour, Option<String>>,
) -> Option<Colour> {
    let origin = origin?;
    addresses
        .iter()
        .find(|(_, a)| a.as_deref() == Some(origin))
        .map(|(c, _)| *c)
}

/// The annotation every run stamps on the colour objects it writes: its release's number in the
/// ledger (`state::seq_of`), a counter that only grows.
pub const GENERATION: &str = "release/generation";

/// A fencing token check: the generation a colour was last written with (`found`, its
/// annotation) is newer than this run's (`mine`), so a run that took the lock after this one has
/// written it, and this run must not touch it. Returns that newer generation.
pub fn fenced_out(found: Option<&str>, mine: u64) -> Option<u64> {
    found
        .and_then(|g| g.parse::<u64>().ok())
        .filter(|&g| g > mine)
}

/// Whether a colour serves the model its image ships, as `status` says it: `shipped` is the
/// colour's `release/model-sha256` annotation, `served` what its `/version` reports.
pub fn model_identity(shipped: Option<&str>, served: Option<&str>) -> String {
    match (shipped.filter(|s| !s.is_empty()), served) {
        (None, _) => "not recorded (deployed before release recorded the model's sha256)".into(),
        (Some(_), None) => "unknown (no /version answer)".into(),
        (Some(a), Some(b)) if a == b => "serves the model its image ships".into(),
        (Some(a), Some(b)) => format!(
            "MISMATCH: serves the model with sha256 {b}, its image ships {a}: roll back or redeploy"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_newer_generation_fences_a_run_out() {
        assert_eq!(super::fenced_out(Some("12"), 11), Some(12));
        assert_eq!(super::fenced_out(Some("11"), 11), None, "its own write");
        assert_eq!(super::fenced_out(Some("3"), 11), None, "an older run's");
        assert_eq!(
            super::fenced_out(None, 11),
            None,
            "written before generations"
        );
        assert_eq!(super::fenced_out(Some("x"), 11), None);
    }

    use super::*;
    use Colour::{Blue, Green};

    fn seen(role: Role, pending: Option<Pending>) -> Observed {
        Observed {
            exists: true,
            role: Some(role),
            pending,
            ..Observed::default()
        }
    }

    fn both(blue: Observed, green: Observed) -> BTreeMap<Colour, Observed> {
        [(Blue, blue), (Green, green)].into_iter().collect()
    }

    #[test]
    fn the_edge_says_which_colour_is_live_and_an_unfinished_flip_is_recognised() {
        use Role::*;
        // After a finished promote.
        let r = roles(Some(Green), &both(seen(Previous, None), seen(Live, None)));
        assert_eq!((r.roles[&Blue], r.roles[&Green]), (Previous, Live));
        assert_eq!(r.unfinished, None);
        // A promote that died after the flip: green serves, blue is still annotated live.
        let r = roles(
            Some(Green),
            &both(seen(Live, None), seen(Candidate, Some(Pending::Promote))),
        );
        assert_eq!((r.roles[&Blue], r.roles[&Green]), (Previous, Live));
        assert_eq!(r.unfinished, Some(Pending::Promote));
        // A rollback that died after the flip: the colour still annotated live is the failed one.
        let r = roles(
            Some(Blue),
            &both(seen(Previous, Some(Pending::Rollback)), seen(Live, None)),
        );
        assert_eq!(r.roles[&Green], Failed);
        assert_eq!(r.unfinished, Some(Pending::Rollback));
        // A flip marked but never made: the edge still serves blue, nothing is unfinished.
        let r = roles(
            Some(Blue),
            &both(seen(Live, None), seen(Candidate, Some(Pending::Promote))),
        );
        assert_eq!((r.roles[&Blue], r.roles[&Green]), (Live, Candidate));
        assert_eq!(r.unfinished, None);
        // Colours that do not exist have no role.
        let r = roles(None, &both(Observed::default(), seen(Candidate, None)));
        assert_eq!(r.roles.len(), 1);
    }

    #[test]
    fn colours_alternate_and_blue_goes_first() {
        assert_eq!(candidate_for(None), Blue);
        assert_eq!(candidate_for(Some(Blue)), Green);
        assert_eq!(candidate_for(Some(Green)), Blue);
        let addrs: BTreeMap<Colour, Option<String>> = [
            (Blue, Some("a".to_string())),
            (Green, Some("b".to_string())),
        ]
        .into();
        assert_eq!(live_colour(Some("b"), &addrs), Some(Green));
        assert_eq!(live_colour(Some("c"), &addrs), None);
        assert_eq!(live_colour(None, &addrs), None);
    }

    #[test]
    fn only_the_two_colours_and_the_known_roles_are_read_as_such() {
        assert_eq!(Colour::parse("green"), Some(Green));
        assert_eq!(
            Colour::parse("anything"),
            None,
            "not blue, as `other` once said"
        );
        assert_eq!(Role::parse("previous"), Role::Previous);
        assert_eq!(Role::parse("canary"), Role::Unknown);
        assert_eq!(Pending::parse("rollback"), Some(Pending::Rollback));
        assert_eq!(Pending::parse(""), None);
        assert_eq!(serde_json::to_string(&Green).unwrap(), "\"green\"");
        assert_eq!(
            serde_json::to_string(&Role::Candidate).unwrap(),
            "\"candidate\""
        );
    }

    #[test]
    fn status_says_whether_a_colour_serves_the_model_its_image_ships() {
        assert_eq!(
            model_identity(Some("ab"), Some("ab")),
            "serves the model its image ships"
        );
        assert!(model_identity(Some("ab"), Some("cd")).starts_with("MISMATCH"));
        assert!(model_identity(Some("ab"), None).starts_with("unknown"));
        assert!(model_identity(None, Some("cd")).starts_with("not recorded"));
        assert!(model_identity(Some(""), Some("cd")).starts_with("not recorded"));
    }
}
