//! `release rotate-origin-secret`: replace the origin-verify value that CloudFront sends and the
//! colours require, with no request refused on the way.
//!
//! CloudFront deploys a distribution change to its edge locations over minutes, and until a
//! location has it, that location keeps sending the old header value (CloudFront Developer Guide,
//! "Update a distribution": a location serves from the previous configuration until it is
//! updated). So there is a window in which both values arrive, and the colours must accept both:
//!
//! 1. **stage**: the Secret gets the new value, and the old one as `previous`;
//! 2. **restart** the live colour so its pods read both (a Secret reaches a pod's environment
//!    when the pod starts), and wait until its old pods are gone;
//! 3. **edge**: the edge stack's `OriginSecret` becomes the new value; CloudFront deploys it;
//! 4. **verify** through the public URL;
//! 5. **drop** the old value from the Secret, and **restart** the live colour again, so that the
//!    old value stops opening the origin, then the other colours (no traffic reaches them through
//!    the edge; one that cannot restart is a warning: the next `up` replaces it);
//! 6. **verify** again.
//!
//! While a rotation is under way, what `release` sends to a colour's own address (smoke tests)
//! is the old value, which every pod accepts (`adapters::colour::ensure_namespace_and_secret`).
//! A Secret that already holds a `previous` value is a rotation a crash left unfinished: it is
//! finished from step 2 with the value staged then, never staged again over it. One dropped but
//! with colours not restarted yet (their pod template's stamp names other values) is finished
//! with step 5's restarts.

use super::colour::Colour;
use super::up::{EdgeState, ReleaseRefusal, edge_ready};
use super::{PlannedStep, planned};

/// What the rotation decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateWorld {
    pub app: String,
    pub edge: EdgeState,
    pub live: Option<Colour>,
    /// The colours that have a Deployment (each must restart to take the values).
    pub deployed: Vec<Colour>,
    /// The Secret exists with its value.
    pub secret: bool,
    /// The Secret holds a `previous` value: a rotation is under way.
    pub staged: bool,
    /// Colours whose pods were restarted for values the Secret no longer holds.
    pub stale: Vec<Colour>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateStep {
    /// Put a new value in the Secret, the current one kept as `previous`.
    Stage,
    /// Restart a colour so that its pods take the Secret's values; `both`: old and new.
    /// `optional`: a colour no traffic reaches through the edge, whose failure is a warning.
    Restart {
        colour: Colour,
        both: bool,
        optional: bool,
    },
    /// Set the edge stack's `OriginSecret` to the new value and wait for CloudFront.
    Edge,
    /// The public URL answers `/predict` from the live colour: the edge's header is accepted.
    Verify { colour: Colour },
    /// Remove the old value from the Secret.
    Drop,
}

impl RotateStep {
    pub fn name(&self, app: &str) -> String {
        match self {
            RotateStep::Stage => "stage origin secret".into(),
            RotateStep::Restart { colour, .. } => format!("restart {app}-{colour}"),
            RotateStep::Edge => "edge origin secret".into(),
            RotateStep::Verify { .. } => "verify public URL".into(),
            RotateStep::Drop => "drop old origin secret".into(),
        }
    }

    pub fn what(&self, app: &str) -> String {
        match self {
            RotateStep::Stage => format!(
                "a new random value in Secret {app}-origin, the current one kept as `previous` (both accepted)"
            ),
            RotateStep::Restart { both: true, .. } => {
                "rolling restart, old pods gone: the pods accept the new and the old value".into()
            }
            RotateStep::Restart {
                both: false,
                optional,
                ..
            } => format!(
                "rolling restart: the pods accept the new value only{}",
                if *optional {
                    " (not live: a failure is a warning)"
                } else {
                    ""
                }
            ),
            RotateStep::Edge => format!(
                "stack {app}-edge: OriginSecret set to the new value (NoEcho), then wait for CloudFront's Deployed"
            ),
            RotateStep::Verify { colour } => {
                format!("the public URL's /predict answers from {colour} with the edge's header")
            }
            RotateStep::Drop => format!("remove `previous` from Secret {app}-origin"),
        }
    }
}

/// Why there is no rotation to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateRefusal {
    /// Nothing is live: there is no edge or origin to rotate a value between.
    NothingLive,
    /// The Secret is missing: there is no value to rotate from (`up` makes it).
    NoSecret,
    Edge(ReleaseRefusal),
}

/// The rotation's steps from `w`, or why none is made.
pub fn plan_rotation(w: &RotateWorld) -> Result<Vec<RotateStep>, RotateRefusal> {
    edge_ready(&w.edge, w.live).map_err(RotateRefusal::Edge)?;
    let (Some(live), EdgeState::Serving { .. }) = (w.live, &w.edge) else {
        return Err(RotateRefusal::NothingLive);
    };
    if !w.secret {
        return Err(RotateRefusal::NoSecret);
    }
    let others = |both: bool| {
        w.deployed
            .iter()
            .filter(move |&&c| c != live)
            .map(move |&colour| RotateStep::Restart {
                colour,
                both,
                optional: true,
            })
    };
    let live_restart = |both: bool| RotateStep::Restart {
        colour: live,
        both,
        optional: false,
    };
    let mut steps = Vec::new();
    if !w.staged && !w.stale.is_empty() {
        // Dropped, not yet restarted everywhere: finish the restarts.
        if w.stale.contains(&live) {
            steps.push(live_restart(false));
        }
        steps.extend(others(false).filter(
            |s| matches!(s, RotateStep::Restart { colour, .. } if w.stale.contains(colour)),
        ));
        steps.push(RotateStep::Verify { colour: live });
        return Ok(steps);
    }
    if !w.staged {
        steps.push(RotateStep::Stage);
    }
    steps.push(live_restart(true));
    steps.push(RotateStep::Edge);
    steps.push(RotateStep::Verify { colour: live });
    steps.push(RotateStep::Drop);
    steps.push(live_restart(false));
    steps.extend(others(false));
    steps.push(RotateStep::Verify { colour: live });
    Ok(steps)
}

/// The steps as a dry run prints them.
pub fn printed(app: &str, steps: &[RotateStep]) -> Vec<PlannedStep> {
    steps
        .iter()
        .map(|s| planned(s.name(app), s.what(app)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(staged: bool) -> RotateWorld {
        RotateWorld {
            app: "iris".into(),
            edge: EdgeState::Serving {
                origin: "blue.lb".into(),
                deployed: true,
            },
            live: Some(Colour::Blue),
            deployed: vec![Colour::Blue, Colour::Green],
            secret: true,
            staged,
            stale: vec![],
        }
    }

    fn restart(colour: Colour, both: bool, optional: bool) -> RotateStep {
        RotateStep::Restart {
            colour,
            both,
            optional,
        }
    }

    #[test]
    fn both_values_are_accepted_live_before_the_edge_changes_and_the_old_goes_after() {
        let steps = plan_rotation(&world(false)).unwrap();
        let at = |s: &RotateStep| steps.iter().position(|x| x == s).unwrap();
        let edge = at(&RotateStep::Edge);
        let drop = at(&RotateStep::Drop);
        assert_eq!(steps[0], RotateStep::Stage);
        assert!(at(&restart(Colour::Blue, true, false)) < edge);
        assert!(
            edge < drop,
            "the old value is dropped only once the edge sends the new"
        );
        assert!(at(&restart(Colour::Blue, false, false)) > drop);
        // The colour no traffic reaches through the edge restarts once, after the drop, and
        // its failure does not stop the rotation.
        assert!(!steps.contains(&restart(Colour::Green, true, true)));
        assert!(at(&restart(Colour::Green, false, true)) > drop);
        assert_eq!(
            steps.last(),
            Some(&RotateStep::Verify {
                colour: Colour::Blue
            })
        );
    }

    #[test]
    fn an_unfinished_rotation_is_finished_not_started_again() {
        let steps = plan_rotation(&world(true)).unwrap();
        assert!(!steps.contains(&RotateStep::Stage), "{steps:?}");
        assert!(steps.contains(&RotateStep::Edge));
        // Dropped, with green not restarted yet: only its restart and a verify.
        let mut w = world(false);
        w.stale = vec![Colour::Green];
        assert_eq!(
            plan_rotation(&w).unwrap(),
            [
                restart(Colour::Green, false, true),
                RotateStep::Verify {
                    colour: Colour::Blue
                }
            ]
        );
    }

    #[test]
    fn no_rotation_without_a_settled_edge_serving_a_colour_and_a_secret() {
        let mut w = world(false);
        w.secret = false;
        assert_eq!(plan_rotation(&w), Err(RotateRefusal::NoSecret));
        w.edge = EdgeState::Serving {
            origin: "blue.lb".into(),
            deployed: false,
        };
        assert_eq!(
            plan_rotation(&w),
            Err(RotateRefusal::Edge(ReleaseRefusal::EdgeDeploying))
        );
        w.edge = EdgeState::Absent;
        w.live = None;
        assert_eq!(plan_rotation(&w), Err(RotateRefusal::NothingLive));
    }
}
