//! `release rotate-origin-secret`: replace the origin-verify value that CloudFront sends and the
//! colours require, with no request refused on the way.
//!
//! CloudFront deploys a distribution change to its edge locations over minutes, and until a
//! location has it, that location keeps sending the old header value (CloudFront Developer Guide,
//! "Update a distribution": a location serves from the previous configuration until it is
//! updated). So there is a window in which both values arrive, and the colours must accept both:
//!
//! 1. **stage**: the Secret gets the new value, and the old one as `previous`;
//! 2. **restart** each colour so its pods read both (a Secret reaches a pod's environment when
//!    the pod starts);
//! 3. **edge**: the edge stack's `OriginSecret` becomes the new value; CloudFront deploys it;
//! 4. **verify** through the public URL;
//! 5. **drop** the old value from the Secret, and **restart** each colour again, so that the old
//!    value stops opening the origin;
//! 6. **verify** again.
//!
//! A Secret that already holds a `previous` value is a rotation a crash left unfinished: it is
//! finished from step 2 with the value staged then, never staged again over it.

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
    /// The Secret holds a `previous` value: a rotation is under way.
    pub staged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateStep {
    /// Put a new value in the Secret, the current one kept as `previous`.
    Stage,
    /// Restart a colour so that its pods take the Secret's values; `both`: old and new.
    Restart { colour: Colour, both: bool },
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
                "rolling restart: the pods accept the new and the old value".into()
            }
            RotateStep::Restart { both: false, .. } => {
                "rolling restart: the pods accept the new value only".into()
            }
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
    Edge(ReleaseRefusal),
}

/// The rotation's steps from `w`, or why none is made.
pub fn plan_rotation(w: &RotateWorld) -> Result<Vec<RotateStep>, RotateRefusal> {
    edge_ready(&w.edge, w.live).map_err(RotateRefusal::Edge)?;
    let (Some(live), EdgeState::Serving { .. }) = (w.live, &w.edge) else {
        return Err(RotateRefusal::NothingLive);
    };
    let mut steps = Vec::new();
    if !w.staged {
        steps.push(RotateStep::Stage);
    }
    let restart = |both: bool| {
        w.deployed
            .iter()
            .map(move |&colour| RotateStep::Restart { colour, both })
    };
    steps.extend(restart(true));
    steps.push(RotateStep::Edge);
    steps.push(RotateStep::Verify { colour: live });
    steps.push(RotateStep::Drop);
    steps.extend(restart(false));
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
            staged,
        }
    }

    #[test]
    fn both_values_are_accepted_everywhere_before_the_edge_changes_and_the_old_goes_after() {
        let steps = plan_rotation(&world(false)).unwrap();
        let at = |s: &RotateStep| steps.iter().position(|x| x == s).unwrap();
        let edge = at(&RotateStep::Edge);
        let drop = at(&RotateStep::Drop);
        assert_eq!(steps[0], RotateStep::Stage);
        for colour in [Colour::Blue, Colour::Green] {
            assert!(at(&RotateStep::Restart { colour, both: true }) < edge);
            assert!(
                at(&RotateStep::Restart {
                    colour,
                    both: false
                }) > drop
            );
        }
        assert!(
            edge < drop,
            "the old value is dropped only once the edge sends the new"
        );
        assert_eq!(
            steps.last(),
            Some(&RotateStep::Verify {
                colour: Colour::Blue
            })
        );
    }

    #[test]
    fn an_unfinished_rotation_is_finished_not_staged_again() {
        let steps = plan_rotation(&world(true)).unwrap();
        assert!(!steps.contains(&RotateStep::Stage), "{steps:?}");
        assert!(steps.contains(&RotateStep::Edge));
    }

    #[test]
    fn no_rotation_without_a_settled_edge_serving_a_colour() {
        let mut w = world(false);
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
