//! The pure core of `release retire`: remove the colour traffic left, now, instead of at its
//! keep-warm deadline (`promote.retire_previous_after`) or never (a plain keep). Only a colour
//! `release` itself left behind a flip is retired: `previous` (what an instant rollback goes back
//! to) or `failed` (`rollback --keep-failed`). A candidate, a colour of unknown origin, or an
//! edge that is not settled on the live colour is refused with what to do instead.

use std::collections::BTreeMap;

use super::colour::{Colour, Observed, Role, roles};
use super::up::{EdgeState, ReleaseRefusal, edge_ready};
use super::{PlannedStep, planned};

/// How a refusal with nothing to retire begins (a notification skips it: `plan::notify`).
pub const NOTHING_TO_RETIRE: &str = "nothing to retire";

/// What a retire decides from, as observed under the lock.
#[derive(Debug, Clone, Default)]
pub struct RetireWorld {
    pub app: String,
    pub live: Option<Colour>,
    pub edge: EdgeState,
    pub colours: BTreeMap<Colour, Observed>,
    /// Now, Unix seconds: said against a keep-warm deadline.
    pub now: i64,
}

/// The one colour to retire and why it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetirePlan {
    pub colour: Colour,
    pub role: Role,
    /// Its keep-warm deadline, when it had one.
    pub retire_after: Option<i64>,
}

/// Why nothing is retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireRefusal {
    /// Nothing live, or only the live colour deployed: nothing to retire.
    Nothing {
        why: String,
        hint: &'static str,
    },
    /// The other colour is not one a flip left: a candidate or of unknown origin.
    NotLeftBehind {
        colour: Colour,
        role: Role,
    },
    /// A flip died between moving traffic and finishing: it must be finished first.
    Unfinished {
        action: &'static str,
    },
    Edge(ReleaseRefusal),
}

impl RetireRefusal {
    /// Why, and what to do.
    pub fn explain(&self, app: &str) -> (String, String) {
        match self {
            RetireRefusal::Nothing { why, hint } => (why.clone(), hint.to_string()),
            RetireRefusal::NotLeftBehind { colour, role } => (
                format!(
                    "{app}-{colour} is {}, not a colour a flip left behind: release retire removes only a previous or failed colour",
                    match role {
                        Role::Candidate => "the tested candidate",
                        _ => "deployed without a role release knows",
                    }
                ),
                match role {
                    Role::Candidate => {
                        "promote it, or let the next `release up` of another build replace it"
                            .into()
                    }
                    _ => format!(
                        "look at who made {app}-{colour} (its annotations) and remove it by hand, or run release destroy"
                    ),
                },
            ),
            RetireRefusal::Unfinished { action } => (
                format!("an earlier {action} moved the edge but did not finish"),
                format!("run release {action} to finish it, then retire"),
            ),
            RetireRefusal::Edge(r) => {
                let (why, hint) = r.explain();
                (why, hint.to_string())
            }
        }
    }
}

impl RetirePlan {
    pub fn step_name(&self, app: &str) -> String {
        format!("retire {app}-{}", self.colour)
    }

    pub fn what(&self, now: i64) -> String {
        let why = match (self.role, self.retire_after) {
            (Role::Failed, _) => "the failed colour kept by rollback --keep-failed".to_string(),
            (_, Some(t)) if t > now => format!(
                "the previous colour, kept warm for {} s more (promote.retire_previous_after): no instant rollback after this",
                t - now
            ),
            (_, Some(_)) => "the previous colour, past its keep-warm deadline".to_string(),
            (_, None) => {
                "the previous colour: no instant rollback after this (a rollback redeploys it from the ledger's image)".to_string()
            }
        };
        format!("delete its Deployment and Service: {why}")
    }

    /// The steps as a dry run prints them.
    pub fn printed(&self, app: &str, now: i64) -> Vec<PlannedStep> {
        vec![
            planned(
                "lock",
                "take the app's lock; the ledger entry names the colour",
            ),
            planned(self.step_name(app), self.what(now)),
        ]
    }
}

/// The colour to retire from `w`, or why none is.
pub fn plan_retire(w: &RetireWorld) -> Result<RetirePlan, RetireRefusal> {
    edge_ready(&w.edge, w.live).map_err(RetireRefusal::Edge)?;
    let Some(live) = w.live else {
        return Err(RetireRefusal::Nothing {
            why: format!("{NOTHING_TO_RETIRE}: {} has no live colour", w.app),
            hint: "run `release up` first",
        });
    };
    let r = roles(w.live, &w.colours);
    if let Some(p) = r.unfinished {
        return Err(RetireRefusal::Unfinished { action: p.as_str() });
    }
    let Some((&colour, &role)) = r.roles.iter().find(|(c, _)| **c != live) else {
        return Err(RetireRefusal::Nothing {
            why: format!(
                "{NOTHING_TO_RETIRE}: only the live colour {}-{live} is deployed",
                w.app
            ),
            hint: "nothing to do",
        });
    };
    if !matches!(role, Role::Previous | Role::Failed) {
        return Err(RetireRefusal::NotLeftBehind { colour, role });
    }
    Ok(RetirePlan {
        colour,
        role,
        retire_after: w.colours[&colour].retire_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::colour::Pending;
    use Colour::{Blue, Green};

    fn deployed(role: Role) -> Observed {
        Observed {
            exists: true,
            role: Some(role),
            address: Some("x.lb".into()),
            ..Default::default()
        }
    }

    fn world(green: Option<Observed>) -> RetireWorld {
        let mut colours = BTreeMap::from([(Blue, deployed(Role::Live))]);
        colours.insert(Green, green.unwrap_or_default());
        RetireWorld {
            app: "iris".into(),
            live: Some(Blue),
            edge: EdgeState::Serving {
                origin: "x.lb".into(),
                deployed: true,
            },
            colours,
            now: 1_000,
        }
    }

    #[test]
    fn the_previous_or_failed_colour_is_retired_and_the_plan_says_what_is_lost() {
        let warm = Observed {
            retire_after: Some(4_600),
            ..deployed(Role::Previous)
        };
        let w = world(Some(warm));
        let plan = plan_retire(&w).unwrap();
        assert_eq!((plan.colour, plan.role), (Green, Role::Previous));
        let printed = plan.printed("iris", w.now);
        assert_eq!(printed[1].step, "retire iris-green");
        assert!(
            printed[1].what.contains("kept warm for 3600 s more"),
            "{printed:?}"
        );
        let kept = plan_retire(&world(Some(deployed(Role::Previous)))).unwrap();
        assert!(kept.what(w.now).contains("redeploys it from the ledger"));
        let failed = plan_retire(&world(Some(deployed(Role::Failed)))).unwrap();
        assert!(failed.what(w.now).contains("--keep-failed"));
    }

    #[test]
    fn a_candidate_an_unknown_colour_or_nothing_else_is_refused() {
        for role in [Role::Candidate, Role::Unknown] {
            let r = plan_retire(&world(Some(deployed(role)))).unwrap_err();
            assert_eq!(
                r,
                RetireRefusal::NotLeftBehind {
                    colour: Green,
                    role
                }
            );
            let (why, _) = r.explain("iris");
            assert!(why.contains("not a colour a flip left behind"), "{why}");
        }
        assert!(matches!(
            plan_retire(&world(None)).unwrap_err(),
            RetireRefusal::Nothing { .. }
        ));
        let nothing_live = RetireWorld {
            live: None,
            edge: EdgeState::Absent,
            ..world(Some(deployed(Role::Previous)))
        };
        assert!(matches!(
            plan_retire(&nothing_live).unwrap_err(),
            RetireRefusal::Nothing { .. }
        ));
    }

    #[test]
    fn an_unfinished_flip_or_an_unsettled_edge_is_refused() {
        let mut w = world(Some(deployed(Role::Previous)));
        w.colours.get_mut(&Blue).unwrap().pending = Some(Pending::Promote);
        assert_eq!(
            plan_retire(&w).unwrap_err(),
            RetireRefusal::Unfinished { action: "promote" }
        );
        let mut w = world(Some(deployed(Role::Previous)));
        w.edge = EdgeState::Serving {
            origin: "x.lb".into(),
            deployed: false,
        };
        assert!(matches!(
            plan_retire(&w).unwrap_err(),
            RetireRefusal::Edge(_)
        ));
    }
}
