//! The pure core of `release up` once the stacks and the image are there: whether the load
//! balancer controller is installed first, then "nothing to release" or which colour is deployed
//! and smoke-tested, and whether it goes live at once (the first release). `--dry-run` prints
//! this plan; the real run executes the same one (`commands::up::deploy`).

use std::collections::BTreeMap;

use super::colour::{Colour, candidate_for};
use super::{PlannedStep, planned};

/// The header (and its value) that sends a request to the tested candidate while `edge.preview`
/// is on: CloudFront takes only header names starting with `aws-cf-cd-` for a continuous
/// deployment policy (API reference, ContinuousDeploymentSingleHeaderConfig).
pub const PREVIEW_HEADER: &str = "aws-cf-cd-release";
pub const PREVIEW_VALUE: &str = "candidate";

/// The command that asks the tested candidate through the public URL while `edge.preview` is on.
pub fn preview_curl(public_url: &str) -> String {
    format!(
        "curl -H '{PREVIEW_HEADER}: {PREVIEW_VALUE}' {}/version",
        public_url.trim_end_matches('/')
    )
}

/// The edge as the release phase finds it: before `up` changes a colour, the edge must be
/// settled and CloudFront done with its last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EdgeState {
    /// No edge stack, or one whose create failed (the first release makes it again).
    #[default]
    Absent,
    /// A usable edge stack with its origin, and whether CloudFront reports the distribution
    /// `Deployed`.
    Serving { origin: String, deployed: bool },
    /// An edge stack in the middle of an operation, or left failed: its status.
    Unsettled { status: String },
}

/// Why the release phase changes no colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRefusal {
    /// The edge stack is in the middle of an operation, or failed.
    EdgeUnsettled { status: String },
    /// CloudFront is still deploying the edge's last change.
    EdgeDeploying,
    /// The edge serves an origin that is neither colour's load balancer: a "first release" here
    /// would deploy over whatever serves traffic.
    StrayOrigin { origin: String },
}

impl ReleaseRefusal {
    /// What is wrong, and what to do.
    pub fn explain(&self) -> (String, &'static str) {
        match self {
            ReleaseRefusal::EdgeUnsettled { status } => (
                format!("the edge stack is {status}: no colour is changed until it is settled"),
                "wait for its operation to end (release status), or resolve the failed stack in CloudFormation, then re-run",
            ),
            ReleaseRefusal::EdgeDeploying => (
                "CloudFront is still deploying the edge's last change: no colour is changed until it is Deployed".into(),
                "wait until `release status` shows the edge Deployed, then re-run",
            ),
            ReleaseRefusal::StrayOrigin { origin } => (
                format!(
                    "the edge serves {origin}, which is neither colour's load balancer: a first release would deploy over what serves traffic"
                ),
                "point the edge stack's OriginDomain back at a colour, or remove the edge (release destroy) before releasing again (docs/runbook.md)",
            ),
        }
    }
}

/// What the release phase of `up` decides from, as observed.
#[derive(Debug, Clone, Default)]
pub struct ReleaseWorld {
    pub app: String,
    /// The edge stack and CloudFront's state of it.
    pub edge: EdgeState,
    /// The colour the edge serves.
    pub live: Option<Colour>,
    /// The live colour already runs this build's image digest and manifests.
    pub live_runs_this_build: bool,
    /// The public URL, once the edge stack has one.
    pub public_url: Option<String>,
    /// What the load balancer controller needs (`addons::decide`), `None`: in place.
    pub controller: Option<String>,
    /// The image this build deploys, `<repository>@<digest>`.
    pub image: String,
    /// The image digest each colour that exists runs.
    pub digests: BTreeMap<Colour, String>,
    /// The address the edge's staging distribution serves (`edge.preview`) when no colour has it
    /// any more (a candidate torn down after its preview).
    pub preview_orphan: Option<String>,
    /// The previous colour kept warm (`promote.retire_previous_after`) whose time is up.
    pub retire_due: Option<Colour>,
}

/// What the configuration asks of the release phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseSettings {
    /// `up --force`: deploy a candidate even when the live colour runs this build.
    pub force: bool,
    pub replicas: u32,
    pub requests: u32,
    /// `smoke.compare_live` is set: the candidate's answers are compared with the live colour's.
    pub compare_live: bool,
    /// `edge.preview`: a tested candidate is served through the public URL to the requests
    /// carrying the preview header.
    pub preview: bool,
}

/// One step of the release phase of `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStep {
    /// Install, update or repair the AWS Load Balancer Controller, and wait for it.
    Controller { what: String },
    /// Nothing to release: confirm the live colour answers through the edge (this also finishes
    /// a first release that died while the edge was being deployed).
    VerifyLive { colour: Colour, url: String },
    /// Apply the colour's manifests and wait for its rollout and its load-balancer address; torn
    /// down if a later step fails.
    Deploy {
        colour: Colour,
        image: String,
        replicas: u32,
    },
    /// The golden cases and the request burst against the candidate's own address, compared with
    /// `compare` (the live colour) when the config asks.
    Smoke {
        colour: Colour,
        requests: u32,
        compare: Option<Colour>,
    },
    /// `edge.preview`: the edge stack's staging distribution with the tested candidate as its
    /// origin, and the policy sending it the requests that carry the preview header.
    Preview { colour: Colour },
    /// The staging distribution serves `address`, which no colour has: take it and its policy
    /// away before a colour is deployed (its VPC origin may then change).
    PreviewOff { address: String },
    /// The previous colour's warm keep (`promote.retire_previous_after`) is over: delete it.
    RetireDue { colour: Colour },
    /// The first release: the edge stack with the colour as its origin.
    Edge { colour: Colour },
    /// Wait until CloudFront reports the distribution Deployed.
    EdgeDeployed,
    /// The smoke requests through the public URL; the release is then live.
    SmokePublic { colour: Colour, requests: u32 },
    /// Keep the images the colours run once this release is done, and the one a rollback from
    /// `live` (live then) would deploy again (`plan::images`).
    ProtectImages {
        in_use: BTreeMap<String, String>,
        live: Option<Colour>,
    },
}

impl ReleaseStep {
    /// The step's name, as the ledger and the progress lines have it.
    pub fn name(&self, app: &str) -> String {
        match self {
            ReleaseStep::Controller { .. } => super::CONTROLLER_STEP.into(),
            ReleaseStep::VerifyLive { .. } => "verify public URL".into(),
            ReleaseStep::Deploy { colour, .. } => format!("deploy {app}-{colour}"),
            ReleaseStep::Smoke { colour, .. } => format!("smoke {app}-{colour}"),
            ReleaseStep::Preview { colour } => format!("preview {app}-{colour}"),
            ReleaseStep::PreviewOff { .. } => "preview off".into(),
            ReleaseStep::RetireDue { colour } => format!("retire {app}-{colour}"),
            ReleaseStep::Edge { .. } => format!("stack {app}-edge"),
            ReleaseStep::EdgeDeployed => "edge deployed".into(),
            ReleaseStep::SmokePublic { .. } => "smoke public URL".into(),
            ReleaseStep::ProtectImages { .. } => super::images::PROTECT_STEP.into(),
        }
    }

    pub fn what(&self, app: &str) -> String {
        match self {
            ReleaseStep::Controller { what } => what.clone(),
            ReleaseStep::VerifyLive { colour, url } => {
                format!("{url} answers from {app}-{colour}")
            }
            ReleaseStep::Deploy {
                image, replicas, ..
            } => format!("{image} ({replicas} replicas)"),
            ReleaseStep::Smoke {
                requests, compare, ..
            } => {
                let compare = compare
                    .map(|l| format!(", answers compared with {app}-{l}'s"))
                    .unwrap_or_default();
                format!(
                    "the golden cases and {requests} requests through the API server's service proxy{compare}"
                )
            }
            ReleaseStep::RetireDue { .. } => {
                "kept warm for promote.retire_previous_after, which is over: delete its Deployment and Service (instant rollback ends; a rollback redeploys it from the ledger)".into()
            }
            ReleaseStep::PreviewOff { address } => format!(
                "edge stack: the staging distribution serves {address}, which no colour has now: remove it and its policy; wait until CloudFront is Deployed"
            ),
            ReleaseStep::Preview { colour } => format!(
                "edge stack: a staging distribution with {app}-{colour}'s load balancer as its origin, and a continuous-deployment policy sending it the requests that carry `{PREVIEW_HEADER}: {PREVIEW_VALUE}`; wait until CloudFront is Deployed"
            ),
            ReleaseStep::Edge { colour } => format!(
                "create it with {app}-{colour}'s load balancer as the origin and the origin secret"
            ),
            ReleaseStep::EdgeDeployed => "wait until CloudFront is Deployed".into(),
            ReleaseStep::SmokePublic { colour, requests } => format!(
                "{requests} requests through the public URL answer from {app}-{colour}; then it is live"
            ),
            ReleaseStep::ProtectImages { in_use, .. } => super::images::protect_what(in_use),
        }
    }

    pub fn undo(&self, app: &str) -> Option<String> {
        match self {
            ReleaseStep::Deploy { colour, .. } => Some(format!(
                "{app}-{colour} is torn down if a later step fails or the run is interrupted"
            )),
            ReleaseStep::Preview { .. } => Some(
                "the stack update rolls back if it fails; the next promote or rollback removes the preview".into(),
            ),
            _ => None,
        }
    }
}

/// The release phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    pub live: Option<Colour>,
    /// The colour deployed and tested; `None`: nothing to release.
    pub candidate: Option<Colour>,
    pub steps: Vec<ReleaseStep>,
}

impl ReleasePlan {
    /// A tested candidate waits for `release promote` (not a first release, which goes live).
    pub fn candidate_waits(&self) -> bool {
        self.candidate.is_some() && self.live.is_some()
    }

    pub fn printed(&self, app: &str) -> Vec<PlannedStep> {
        self.steps
            .iter()
            .map(|s| PlannedStep {
                undo: s.undo(app),
                ..planned(s.name(app), s.what(app))
            })
            .collect()
    }
}

/// Whether any colour may change, for `up`, `promote` and `rollback` alike: the edge stack is
/// absent or settled (`*_COMPLETE`), CloudFront reports its distribution `Deployed`, and an edge
/// that exists points at a colour (`live`).
pub fn edge_ready(edge: &EdgeState, live: Option<Colour>) -> Result<(), ReleaseRefusal> {
    match edge {
        EdgeState::Unsettled { status } => Err(ReleaseRefusal::EdgeUnsettled {
            status: status.clone(),
        }),
        EdgeState::Serving {
            deployed: false, ..
        } => Err(ReleaseRefusal::EdgeDeploying),
        EdgeState::Serving { origin, .. } if live.is_none() => Err(ReleaseRefusal::StrayOrigin {
            origin: origin.clone(),
        }),
        _ => Ok(()),
    }
}

/// Decide the release phase of `up` from `w`, or refuse to change any colour.
pub fn plan_release(w: &ReleaseWorld, s: ReleaseSettings) -> Result<ReleasePlan, ReleaseRefusal> {
    edge_ready(&w.edge, w.live)?;
    let mut steps = Vec::new();
    if let Some(what) = &w.controller {
        steps.push(ReleaseStep::Controller { what: what.clone() });
    }
    if let (Some(live), true, false) = (w.live, w.live_runs_this_build, s.force) {
        if let Some(url) = &w.public_url {
            steps.push(ReleaseStep::VerifyLive {
                colour: live,
                url: url.clone(),
            });
        }
        if let Some(colour) = w.retire_due {
            steps.push(ReleaseStep::RetireDue { colour });
        }
        steps.push(ReleaseStep::ProtectImages {
            in_use: w
                .digests
                .iter()
                .map(|(c, d)| (c.as_str().to_string(), d.clone()))
                .collect(),
            live: w.live,
        });
        return Ok(ReleasePlan {
            live: w.live,
            candidate: None,
            steps,
        });
    }
    let colour = candidate_for(w.live);
    if let Some(address) = &w.preview_orphan {
        steps.push(ReleaseStep::PreviewOff {
            address: address.clone(),
        });
    }
    steps.push(ReleaseStep::Deploy {
        colour,
        image: w.image.clone(),
        replicas: s.replicas,
    });
    steps.push(ReleaseStep::Smoke {
        colour,
        requests: s.requests,
        compare: w.live.filter(|_| s.compare_live),
    });
    if w.live.is_some() && s.preview {
        steps.push(ReleaseStep::Preview { colour });
    }
    if w.live.is_none() {
        steps.push(ReleaseStep::Edge { colour });
        steps.push(ReleaseStep::EdgeDeployed);
        steps.push(ReleaseStep::SmokePublic {
            colour,
            requests: s.requests.min(20),
        });
    }
    // The candidate replaces whatever the idle colour ran.
    let in_use = w
        .live
        .and_then(|l| Some((l, w.digests.get(&l)?.clone())))
        .into_iter()
        .chain(
            w.image
                .split_once('@')
                .map(|(_, d)| (colour, d.to_string())),
        )
        .map(|(c, d)| (c.as_str().to_string(), d))
        .collect();
    steps.push(ReleaseStep::ProtectImages {
        in_use,
        live: w.live.or(Some(colour)),
    });
    Ok(ReleasePlan {
        live: w.live,
        candidate: Some(colour),
        steps,
    })
}

/// The provisioning steps of `up` before the release phase, in the order the real run takes
/// them: the lock (after the registry stack when the state bucket it makes does not exist yet),
/// each stack (`changes`: name and what deploying it changes, in wave order), the image push.
pub fn provision_steps(
    registry: &str,
    bucket_exists: bool,
    changes: &[(String, String)],
    push: &str,
) -> Vec<PlannedStep> {
    let stack = |(name, what): &(String, String)| planned(format!("stack {name}"), what.clone());
    let mut steps: Vec<PlannedStep> = changes
        .iter()
        .filter(|(name, _)| !bucket_exists && name == registry)
        .map(stack)
        .collect();
    steps.push(planned(
        "lock",
        "take the app's lock and open a ledger entry",
    ));
    steps.extend(
        changes
            .iter()
            .filter(|(name, _)| bucket_exists || name != registry)
            .map(stack),
    );
    steps.push(planned("image push", push));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use Colour::{Blue, Green};

    fn blue_live() -> ReleaseWorld {
        ReleaseWorld {
            app: "iris".into(),
            edge: EdgeState::Serving {
                origin: "blue.lb".into(),
                deployed: true,
            },
            live: Some(Blue),
            live_runs_this_build: false,
            public_url: Some("https://d1.cloudfront.net".into()),
            controller: None,
            image: "repo/iris@sha256:new".into(),
            digests: BTreeMap::from([(Blue, "sha256:live".to_string())]),
            preview_orphan: None,
            retire_due: None,
        }
    }

    fn settings() -> ReleaseSettings {
        ReleaseSettings {
            force: false,
            replicas: 2,
            requests: 30,
            compare_live: false,
            preview: false,
        }
    }

    fn names(p: &ReleasePlan) -> Vec<String> {
        p.steps.iter().map(|s| s.name("iris")).collect()
    }

    #[test]
    fn a_new_build_is_deployed_to_the_idle_colour_and_tested_as_a_candidate() {
        let p = plan_release(&blue_live(), settings()).unwrap();
        assert_eq!(
            names(&p),
            ["deploy iris-green", "smoke iris-green", "protect images"]
        );
        // Kept: what live runs and the candidate; not what the idle colour ran before.
        assert!(matches!(
            &p.steps[2],
            ReleaseStep::ProtectImages { in_use, live: Some(Blue) }
                if in_use.iter().eq([(&"blue".to_string(), &"sha256:live".to_string()), (&"green".to_string(), &"sha256:new".to_string())])
        ));
        assert_eq!(p.candidate, Some(Green));
        assert!(p.candidate_waits());
        assert_eq!(p.steps[0].what("iris"), "repo/iris@sha256:new (2 replicas)");
        let previewed = plan_release(
            &blue_live(),
            ReleaseSettings {
                preview: true,
                ..settings()
            },
        )
        .unwrap();
        assert_eq!(
            names(&previewed),
            [
                "deploy iris-green",
                "smoke iris-green",
                "preview iris-green",
                "protect images"
            ]
        );
        assert!(
            previewed.steps[2]
                .what("iris")
                .contains("aws-cf-cd-release: candidate")
        );
        // A first release has no live colour to preview against: it goes live instead.
        let first = plan_release(
            &ReleaseWorld {
                live: None,
                edge: EdgeState::Absent,
                ..blue_live()
            },
            ReleaseSettings {
                preview: true,
                ..settings()
            },
        )
        .unwrap();
        assert!(!names(&first).iter().any(|n| n.starts_with("preview")));
        // A staging distribution left serving a torn-down candidate goes before the deploy.
        let orphaned = plan_release(
            &ReleaseWorld {
                preview_orphan: Some("gone.lb".into()),
                ..blue_live()
            },
            ReleaseSettings {
                preview: true,
                ..settings()
            },
        )
        .unwrap();
        assert_eq!(
            names(&orphaned)[..2],
            ["preview off".to_string(), "deploy iris-green".to_string()]
        );
        assert!(orphaned.steps[0].what("iris").contains("gone.lb"));
        let compared = plan_release(
            &blue_live(),
            ReleaseSettings {
                compare_live: true,
                ..settings()
            },
        )
        .unwrap();
        assert!(
            compared.steps[1]
                .what("iris")
                .ends_with("compared with iris-blue's")
        );
    }

    #[test]
    fn the_build_the_live_colour_runs_is_nothing_to_release_but_is_verified_unless_forced() {
        let same = ReleaseWorld {
            live_runs_this_build: true,
            ..blue_live()
        };
        let p = plan_release(&same, settings()).unwrap();
        assert_eq!(p.candidate, None);
        assert!(!p.candidate_waits());
        assert_eq!(names(&p), ["verify public URL", "protect images"]);
        // A previous colour whose warm keep is over goes then; a new build deploys over it.
        let due = ReleaseWorld {
            retire_due: Some(Green),
            ..same.clone()
        };
        assert_eq!(
            names(&plan_release(&due, settings()).unwrap()),
            ["verify public URL", "retire iris-green", "protect images"]
        );
        assert!(
            !names(
                &plan_release(
                    &ReleaseWorld {
                        retire_due: Some(Green),
                        ..blue_live()
                    },
                    settings()
                )
                .unwrap()
            )
            .contains(&"retire iris-green".to_string())
        );
        let no_edge = ReleaseWorld {
            public_url: None,
            ..same.clone()
        };
        assert_eq!(
            names(&plan_release(&no_edge, settings()).unwrap()),
            ["protect images"]
        );
        let forced = plan_release(
            &same,
            ReleaseSettings {
                force: true,
                ..settings()
            },
        )
        .unwrap();
        assert_eq!(forced.candidate, Some(Green));
    }

    #[test]
    fn without_the_state_bucket_the_registry_stack_comes_before_the_lock() {
        let changes = [
            ("iris-network".to_string(), "create".to_string()),
            ("iris-registry".to_string(), "create".to_string()),
            ("iris-cluster".to_string(), "create".to_string()),
        ];
        let names = |steps: Vec<PlannedStep>| -> Vec<String> {
            steps.into_iter().map(|s| s.step).collect()
        };
        assert_eq!(
            names(provision_steps("iris-registry", false, &changes, "push")),
            [
                "stack iris-registry",
                "lock",
                "stack iris-network",
                "stack iris-cluster",
                "image push"
            ]
        );
        assert_eq!(
            names(provision_steps("iris-registry", true, &changes, "push")),
            [
                "lock",
                "stack iris-network",
                "stack iris-registry",
                "stack iris-cluster",
                "image push"
            ]
        );
    }

    #[test]
    fn no_colour_changes_while_the_edge_is_unsettled_deploying_or_serving_a_stray_origin() {
        let refused = |edge: EdgeState, live: Option<Colour>| {
            let w = ReleaseWorld {
                edge,
                live,
                ..blue_live()
            };
            plan_release(&w, settings()).unwrap_err()
        };
        assert_eq!(
            refused(
                EdgeState::Unsettled {
                    status: "UPDATE_IN_PROGRESS".into()
                },
                Some(Blue)
            ),
            ReleaseRefusal::EdgeUnsettled {
                status: "UPDATE_IN_PROGRESS".into()
            }
        );
        let deploying = EdgeState::Serving {
            origin: "blue.lb".into(),
            deployed: false,
        };
        assert_eq!(
            refused(deploying, Some(Blue)),
            ReleaseRefusal::EdgeDeploying
        );
        // An edge whose origin is no colour's: not a first release.
        let stray = EdgeState::Serving {
            origin: "old.lb".into(),
            deployed: true,
        };
        let r = refused(stray, None);
        assert_eq!(
            r,
            ReleaseRefusal::StrayOrigin {
                origin: "old.lb".into()
            }
        );
        assert!(r.explain().0.contains("neither colour's load balancer"));
        // A failed first create of the edge is made again: still a first release.
        let w = ReleaseWorld {
            edge: EdgeState::Absent,
            live: None,
            ..blue_live()
        };
        assert_eq!(plan_release(&w, settings()).unwrap().candidate, Some(Blue));
    }

    #[test]
    fn the_first_release_deploys_blue_and_puts_it_live_through_a_new_edge() {
        let w = ReleaseWorld {
            live: None,
            edge: EdgeState::Absent,
            public_url: None,
            controller: Some("install".into()),
            ..blue_live()
        };
        let p = plan_release(&w, settings()).unwrap();
        assert_eq!(
            names(&p),
            [
                "load balancer controller",
                "deploy iris-blue",
                "smoke iris-blue",
                "stack iris-edge",
                "edge deployed",
                "smoke public URL",
                "protect images"
            ]
        );
        assert!(matches!(
            &p.steps[6],
            ReleaseStep::ProtectImages { in_use, live: Some(Blue) }
                if in_use.iter().eq([(&"blue".to_string(), &"sha256:new".to_string())])
        ));
        assert!(!p.candidate_waits());
        assert_eq!(
            p.steps[5],
            ReleaseStep::SmokePublic {
                colour: Blue,
                requests: 20
            }
        );
    }
}
