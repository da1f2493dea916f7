//! The pure core of `release promote` and `release rollback`: from the world as observed under
//! the lock, where traffic goes and from where, whether the target must be deployed again first
//! (a rollback to a retired colour) or the flip already happened (a run that died after it), and
//! the steps in their order, each saying what it does and what undoes it. `--dry-run` prints
//! this plan; the real run executes the same one (`commands::flip`).

use std::collections::BTreeMap;

use super::colour::{Colour, Observed, Pending, Role, roles};
use super::up::{EdgeState, ReleaseRefusal, edge_ready};
use super::{PlannedStep, planned};

/// Which flip: promote (to the tested candidate) or rollback (to the previous colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Promote { retire_previous: bool },
    Rollback { keep_failed: bool },
}

impl Flip {
    pub fn action(self) -> &'static str {
        self.pending().as_str()
    }

    /// The mark a colour carries while this flip moves traffic to it.
    pub fn pending(self) -> Pending {
        match self {
            Flip::Promote { .. } => Pending::Promote,
            Flip::Rollback { .. } => Pending::Rollback,
        }
    }

    /// The colour traffic leaves is removed at the end.
    pub fn retires(self) -> bool {
        match self {
            Flip::Promote { retire_previous } => retire_previous,
            Flip::Rollback { keep_failed } => !keep_failed,
        }
    }

    /// The role the colour traffic leaves is given.
    pub fn old_role(self) -> Role {
        match self {
            Flip::Promote { .. } => Role::Previous,
            Flip::Rollback { .. } => Role::Failed,
        }
    }
}

/// The ledger's record of a verified go-live: what a rollback to a retired colour deploys again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoLive {
    pub digest: String,
    pub model_version: Option<String>,
    /// The sha256 of the model its image ships (absent in releases recorded before it was).
    pub model_sha256: Option<String>,
}

/// What a flip decides from, as observed.
#[derive(Debug, Clone, Default)]
pub struct FlipWorld {
    pub app: String,
    /// The colour the edge's origin points at.
    pub live: Option<Colour>,
    /// The edge stack and CloudFront's state of it.
    pub edge: EdgeState,
    /// Both colours (empty when there is no cluster yet).
    pub colours: BTreeMap<Colour, Observed>,
    /// The ledger's go-live before the live colour's (read for a rollback only).
    pub previous_live: Option<GoLive>,
    /// The registry stack's repository (read for a rollback only).
    pub repository_uri: Option<String>,
    /// The public URL (the config's, else the distribution's).
    pub public_url: Option<String>,
    /// The config's model version: what a colour without the annotation is taken to serve.
    pub model_version: String,
}

/// What the configuration asks of every flip.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlipSettings {
    /// Golden cases in `smoke.cases`.
    pub cases: usize,
    pub requests: u32,
    pub invalidate: bool,
    /// `edge.origin_access: vpc`: the flip goes through the target's VPC origin when its NLB is
    /// internal.
    pub vpc: bool,
    /// A promote's bake after its verified flip, in seconds (0: none).
    pub bake_seconds: u64,
    /// `promote --allow-contract-change`: a candidate whose contract differs from live's is
    /// promoted (the difference printed) instead of refused.
    pub allow_contract_change: bool,
    /// `smoke.shadow` is set: a promote judges the live colour's shadow figures first.
    pub shadow: bool,
    /// `promote --canary PERCENT` (1 to 15, `edge.preview` on): before the flip, that share of
    /// viewers reaches the candidate through the staging distribution, for a bake of
    /// `bake_seconds`.
    pub canary: Option<u8>,
    /// `analysis.alarms`: how many CloudWatch alarms each bake watches as well.
    pub alarms: usize,
    /// `analysis.max_error_rate_increase` is set: each bake compares its colour's 5xx share with
    /// the other colour's.
    pub compare: bool,
    /// `analysis.max_edge_error_rate` is set: each bake reads CloudFront's 5xxErrorRate too.
    pub edge: bool,
    /// `promote.retire_previous_after` (seconds): a promote keeps the previous colour at one
    /// replica, to be retired after this long.
    pub keep_warm: Option<u64>,
    /// `deploy.replicas`: what a colour kept warm is scaled back to before a rollback to it.
    pub replicas: u32,
}

/// One step of a flip, with everything it needs to be printed and executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlipStep {
    /// The app's lock is held (taken before observing) and the ledger entry names the target.
    Lock,
    /// Deploy `colour` again from the ledger's image; torn down if a step before the flip fails.
    Redeploy {
        colour: Colour,
        image: String,
        digest: String,
        model_version: String,
        model_sha256: String,
    },
    /// The golden cases and the request burst at the colour's Service, through the API server's
    /// service proxy (no network path from CI to its load balancer needed).
    Smoke {
        colour: Colour,
        cases: usize,
        requests: u32,
    },
    /// A promote: `to`'s model contract (`/version`'s input and output) must be live `from`'s,
    /// unless `allow`.
    Contract {
        from: Colour,
        to: Colour,
        allow: bool,
    },
    /// A promote with `smoke.shadow`: live `from`'s pods' figures of how a sample of their real
    /// answers compared with `to`'s must meet `smoke.shadow`.
    Shadow { from: Colour, to: Colour },
    /// `promote --canary`: the edge stack's continuous-deployment policy sends `percent` % of
    /// viewers (sticky sessions) to `to` behind the staging distribution; wait until Deployed.
    Canary {
        to: Colour,
        percent: u8,
        to_addr: Option<String>,
    },
    /// Watch `to`'s `/predict` while it serves the canary's share, for `seconds`; on a breach the
    /// share goes back to 0 (the preview header only), nothing is flipped, exit 9.
    CanaryBake {
        to: Colour,
        percent: u8,
        seconds: u64,
        alarms: usize,
        /// The live colour `to`'s 5xx share is compared with over the same window, when
        /// `analysis.max_error_rate_increase` is set.
        against: Option<Colour>,
        /// CloudFront's 5xxErrorRate of the staging distribution is judged too.
        edge: bool,
    },
    /// Mark `to` pending, point the edge stack's origin at it, wait until CloudFront is Deployed.
    Flip {
        from: Colour,
        to: Colour,
        from_addr: Option<String>,
        to_addr: Option<String>,
        invalidate: bool,
        vpc: bool,
    },
    /// An earlier run flipped to `to` and died: nothing to flip.
    Flipped { to: Colour, action: &'static str },
    /// The public URL answers from `colour`; else flip back to `from` at `back`, its address,
    /// when it still exists.
    Verify {
        colour: Colour,
        url: String,
        requests: u32,
        from: Colour,
        back: Option<String>,
    },
    /// Watch `colour` (now live) for `seconds`: its pods' `/predict` error rate and p99 against
    /// `analysis`; on a breach flip back to `from` at `back`. The release counts as live (the
    /// ledger) only once the bake has passed.
    Bake {
        colour: Colour,
        seconds: u64,
        from: Colour,
        back: Option<String>,
        alarms: usize,
        /// `analysis.max_error_rate_increase`: compare with `from`'s pods' lifetime figures.
        compare: bool,
        /// CloudFront's 5xxErrorRate of the distribution is judged too.
        edge: bool,
    },
    /// Write the roles: `live`, and the colour traffic left with its new role.
    Roles {
        live: Colour,
        old: Option<(Colour, Role)>,
    },
    /// Delete the colour's Deployment and Service.
    Retire { colour: Colour },
    /// Leave the colour deployed.
    Keep { colour: Colour, why: &'static str },
    /// Leave the colour deployed at one replica, to be retired after `seconds`
    /// (`promote.retire_previous_after`).
    KeepWarm { colour: Colour, seconds: u64 },
    /// A rollback to a colour kept warm: back to `replicas`, and ready, before anything else.
    ScaleUp { colour: Colour, replicas: u32 },
    /// Keep the images the colours run after the flip, and the one a rollback would deploy
    /// again (`plan::images`): the digest of each keep slot.
    ProtectImages { in_use: BTreeMap<String, String> },
}

fn name(app: &str, colour: Colour) -> String {
    format!("{app}-{colour}")
}

/// What a bake says of CloudFront's own figures of `which`, when it reads them.
fn edge_watch(on: bool, which: &str, seconds: u64) -> String {
    match on {
        false => String::new(),
        true => format!(
            "; CloudFront's 5xxErrorRate of {which} (us-east-1) from the bake's first whole minute, against analysis.max_edge_error_rate{}",
            if seconds < 300 {
                " (under 5 minutes: CloudFront's datapoints, minutes late, may not come in time to judge)"
            } else {
                ""
            }
        ),
    }
}

/// What a bake says of the CloudWatch alarms it watches too.
fn watched_alarms(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(
            "; and the {n} CloudWatch alarm(s) of analysis.alarms: one in ALARM, or missing, is a breach"
        ),
    }
}

impl FlipStep {
    /// The step's name: the ledger's, the progress line's and the plan's.
    pub fn name(&self, app: &str) -> String {
        match self {
            FlipStep::Lock => "lock".into(),
            FlipStep::Redeploy { colour, .. } => format!("redeploy {}", name(app, *colour)),
            FlipStep::Smoke { colour, .. } => format!("smoke {}", name(app, *colour)),
            FlipStep::Contract { to, .. } => format!("contract {}", name(app, *to)),
            FlipStep::Shadow { to, .. } => format!("shadow {}", name(app, *to)),
            FlipStep::Canary { to, .. } => format!("canary {}", name(app, *to)),
            FlipStep::CanaryBake { to, .. } => format!("canary bake {}", name(app, *to)),
            FlipStep::Flip { .. } | FlipStep::Flipped { .. } => "flip".into(),
            FlipStep::Verify { .. } => "verify public URL".into(),
            FlipStep::Bake { colour, .. } => format!("bake {}", name(app, *colour)),
            FlipStep::Roles { .. } => "roles".into(),
            FlipStep::Retire { colour } => format!("retire {}", name(app, *colour)),
            FlipStep::Keep { colour, .. } | FlipStep::KeepWarm { colour, .. } => {
                format!("keep {}", name(app, *colour))
            }
            FlipStep::ScaleUp { colour, .. } => format!("scale {}", name(app, *colour)),
            FlipStep::ProtectImages { .. } => super::images::PROTECT_STEP.into(),
        }
    }

    /// Recorded in the ledger as a step of its own (the crash tests count these).
    pub fn recorded(&self) -> bool {
        matches!(
            self,
            FlipStep::Redeploy { .. }
                | FlipStep::Smoke { .. }
                | FlipStep::Contract { .. }
                | FlipStep::Shadow { .. }
                | FlipStep::Canary { .. }
                | FlipStep::CanaryBake { .. }
                | FlipStep::Flip { .. }
                | FlipStep::Verify { .. }
                | FlipStep::Bake { .. }
                | FlipStep::Retire { .. }
                | FlipStep::KeepWarm { .. }
                | FlipStep::ScaleUp { .. }
                | FlipStep::ProtectImages { .. }
        )
    }

    /// What it does, as the plan prints it.
    pub fn what(&self, app: &str) -> String {
        let new_lb = || "its new load balancer".to_string();
        match self {
            FlipStep::Lock => "take the app's lock and open a ledger entry".into(),
            FlipStep::Redeploy {
                colour,
                image,
                model_version,
                ..
            } => format!(
                "{} was retired: deploy it again from the ledger's image {image} (model {model_version})",
                name(app, *colour)
            ),
            FlipStep::Smoke {
                colour,
                cases,
                requests,
            } => format!(
                "{cases} golden cases and {requests} requests to {} through the API server's service proxy",
                name(app, *colour)
            ),
            FlipStep::Contract { from, to, allow } => format!(
                "{}'s /version must report live {}'s input and output (feature count, output kind, classes in order or regression targets){}",
                name(app, *to),
                name(app, *from),
                if *allow {
                    "; a difference is printed and allowed (--allow-contract-change)"
                } else {
                    "; a difference refuses the promote (--allow-contract-change allows it)"
                }
            ),
            FlipStep::Shadow { from, to } => format!(
                "{}'s pods' comparison of a sample of their real /predict answers with {}'s: agreement at least smoke.shadow.min_agreement once smoke.shadow.min_requests rows were compared (fewer: not judged, said so)",
                name(app, *from),
                name(app, *to)
            ),
            FlipStep::Canary {
                to,
                percent,
                to_addr,
            } => format!(
                "edge stack: the staging distribution serves {} ({}), and the continuous-deployment policy sends it {percent} % of viewers, each kept on its side by a session cookie (CloudFront may send everyone to the primary under heavy load); wait until CloudFront is Deployed",
                name(app, *to),
                to_addr.clone().unwrap_or_else(new_lb),
            ),
            FlipStep::CanaryBake {
                to,
                percent,
                seconds,
                alarms,
                against,
                edge,
            } => format!(
                "watch {}'s /predict for {seconds} s while it serves {percent} % of viewers (its pods' /metrics: error rate and p99 against analysis.*{}{}{}); on a breach the share goes back to 0 and nothing is flipped (exit 9)",
                name(app, *to),
                against.map_or(String::new(), |l| format!(
                    "; its error rate against {}'s over the same time, by analysis.max_error_rate_increase",
                    name(app, l)
                )),
                edge_watch(*edge, "the staging distribution", *seconds),
                watched_alarms(*alarms)
            ),
            FlipStep::Flip {
                from,
                to,
                from_addr,
                to_addr,
                invalidate,
                vpc,
            } => format!(
                "edge stack parameter OriginDomain: {} -> {} ({} -> {}){}; wait until CloudFront is Deployed{}",
                from_addr.as_deref().unwrap_or("-"),
                to_addr.clone().unwrap_or_else(new_lb),
                name(app, *from),
                name(app, *to),
                if *vpc {
                    format!(
                        ", through {}'s own VPC origin when its NLB is internal (LiveColour {to}; the VPC origin made or changed first, while nothing uses it: minutes on AWS)",
                        name(app, *to)
                    )
                } else {
                    String::new()
                },
                if *invalidate {
                    ", then invalidate /*"
                } else {
                    ""
                }
            ),
            FlipStep::Flipped { to, action } => format!(
                "none: the edge already serves {} (an earlier {action} died after its flip)",
                name(app, *to)
            ),
            FlipStep::Verify {
                colour,
                url,
                requests,
                from,
                back,
            } => {
                let back = match back {
                    Some(_) => format!("on failure flip back to {}", name(app, *from)),
                    None => format!(
                        "{} is gone: nothing to flip back to on failure",
                        name(app, *from)
                    ),
                };
                format!(
                    "{url} answers from {} ({requests} requests); {back}",
                    name(app, *colour)
                )
            }
            FlipStep::Bake {
                colour,
                seconds,
                from,
                back,
                alarms,
                compare,
                edge,
            } => format!(
                "watch {}'s /predict for {seconds} s (its pods' /metrics: error rate and p99 against analysis.*{}{}{}); {}",
                name(app, *colour),
                if *compare {
                    format!(
                        "; its error rate against what {}'s pods served, by analysis.max_error_rate_increase",
                        name(app, *from)
                    )
                } else {
                    String::new()
                },
                edge_watch(*edge, "the distribution", *seconds),
                watched_alarms(*alarms),
                match back {
                    Some(_) => format!("on a breach flip back to {} (exit 9)", name(app, *from)),
                    None => format!(
                        "{} is gone: nothing to flip back to on a breach",
                        name(app, *from)
                    ),
                }
            ),
            FlipStep::Roles { live, old } => {
                let mut roles = format!("{} live", name(app, *live));
                if let Some((c, r)) = old {
                    roles.push_str(&format!(", {} {r}", name(app, *c)));
                }
                roles
            }
            FlipStep::Retire { .. } => "delete its Deployment and Service".into(),
            FlipStep::Keep { why, .. } => (*why).into(),
            FlipStep::KeepWarm { seconds, .. } => format!(
                "kept for an instant rollback at 1 replica for {} (promote.retire_previous_after); then the next `release up` retires it (`release retire`: at once)",
                humantime::format_duration(std::time::Duration::from_secs(*seconds))
            ),
            FlipStep::ScaleUp { colour, replicas } => format!(
                "{} was kept warm: back to {replicas} replicas, and ready, before its smoke test",
                name(app, *colour)
            ),
            FlipStep::ProtectImages { in_use } => super::images::protect_what(in_use),
        }
    }

    /// What undoes it if a later step fails, when something does.
    pub fn undo(&self, app: &str) -> Option<String> {
        match self {
            FlipStep::Redeploy { colour, .. } => Some(format!(
                "{} is torn down if a step fails before its smoke test passes",
                name(app, *colour)
            )),
            FlipStep::Canary { .. } => Some(
                "on a breach, or if a later step before the flip fails, the share goes back to 0 (the preview header only)".into(),
            ),
            FlipStep::Flip {
                from,
                from_addr: Some(addr),
                ..
            } => Some(format!(
                "if the public URL does not answer, flip back to {} ({addr})",
                name(app, *from)
            )),
            _ => None,
        }
    }
}

/// A flip decided: where traffic goes, what it serves, and the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlipPlan {
    pub kind: Flip,
    pub from: Colour,
    pub to: Colour,
    /// The image digest and model version traffic goes to.
    pub digest: Option<String>,
    pub model_version: String,
    /// The sha256 of the model `to`'s image ships, which its `/version` must report at the smoke
    /// test and through the public URL (empty: not recorded, not checked).
    pub model_sha256: String,
    pub public_url: String,
    /// The edge already serves `to` (an earlier run died after its flip).
    pub finishing: bool,
    pub steps: Vec<FlipStep>,
}

impl FlipPlan {
    /// The steps as `--dry-run` prints them.
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

/// Why a flip is not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing to flip to (exit 8): the reason, and what to do.
    Nothing { why: String, hint: &'static str },
    /// The edge stack has no public URL to verify through (exit 8).
    NoPublicUrl,
    /// A retired colour must be redeployed and the registry stack names no repository (exit 5).
    NoRepository,
    /// The edge is not settled, not Deployed, or serves no colour (exit 8): no colour changes.
    Edge(ReleaseRefusal),
}

/// Decide a flip of `kind` from `w`. `expect_digest`: promote only if the candidate runs this
/// image, roll back only if the colour rolled back from does (CI passes the digest its own
/// `release up` deployed, so that an approval never flips another pipeline's release).
pub fn plan_flip(
    w: &FlipWorld,
    kind: Flip,
    expect_digest: Option<&str>,
    s: FlipSettings,
) -> Result<FlipPlan, Refusal> {
    edge_ready(&w.edge, w.live).map_err(Refusal::Edge)?;
    let t = target(w, kind)?;
    if let Some(want) = expect_digest {
        expected(w, kind, &t, want)?;
    }
    let Some(public_url) = w.public_url.clone() else {
        return Err(Refusal::NoPublicUrl);
    };
    let to_o = observed(w, t.to);
    let (digest, model_version, model_sha256) = match &t.redeploy {
        Some(g) => (
            Some(g.digest.clone()),
            g.model_version.clone().unwrap_or_default(),
            g.model_sha256.clone().unwrap_or_default(),
        ),
        None => (
            to_o.digest.clone(),
            to_o.model_version
                .clone()
                .unwrap_or_else(|| w.model_version.clone()),
            to_o.model_sha256.clone().unwrap_or_default(),
        ),
    };
    let redeploy = match &t.redeploy {
        Some(g) => {
            let Some(repo) = &w.repository_uri else {
                return Err(Refusal::NoRepository);
            };
            Some(FlipStep::Redeploy {
                colour: t.to,
                image: format!("{repo}@{}", g.digest),
                digest: g.digest.clone(),
                model_version: model_version.clone(),
                model_sha256: model_sha256.clone(),
            })
        }
        None => None,
    };
    let steps = steps(w, kind, &t, redeploy, digest.clone(), &public_url, s);
    Ok(FlipPlan {
        kind,
        from: t.from,
        to: t.to,
        digest,
        model_version,
        model_sha256,
        steps,
        public_url,
        finishing: t.finishing,
    })
}

/// Where a flip goes, and how.
struct Target {
    from: Colour,
    to: Colour,
    /// The ledger's go-live to deploy `to` again from (a rollback to a retired colour).
    redeploy: Option<GoLive>,
    /// The edge already serves `to`: an earlier run died after its flip.
    finishing: bool,
}

fn observed(w: &FlipWorld, c: Colour) -> Observed {
    w.colours.get(&c).cloned().unwrap_or_default()
}

/// The colour traffic goes to and whether it must be redeployed, or why there is none.
fn target(w: &FlipWorld, kind: Flip) -> Result<Target, Refusal> {
    let action = kind.action();
    let nothing = |why: String| Refusal::Nothing {
        why: format!("nothing to {action}: {why}"),
        hint: match kind {
            Flip::Promote { .. } => "run `release up` to deploy and test a candidate first",
            Flip::Rollback { .. } => {
                "nothing was live before this colour; release an older image with `release up` instead"
            }
        },
    };
    let Some(live) = w.live else {
        return Err(nothing(
            "nothing is live yet (the first `release up` puts its colour live)".into(),
        ));
    };
    let roles = roles(w.live, &w.colours);
    if roles.unfinished == Some(kind.pending()) {
        return Ok(Target {
            from: live.other(),
            to: live,
            redeploy: None,
            finishing: true,
        });
    }
    let other = live.other();
    let redeploy = match (kind, roles.roles.get(&other).copied()) {
        (Flip::Promote { .. }, Some(Role::Candidate))
        | (Flip::Rollback { .. }, Some(Role::Previous)) => None,
        (Flip::Promote { .. }, r) => {
            return Err(nothing(format!(
                "{} is not a tested candidate ({})",
                name(&w.app, other),
                r.map_or("absent", Role::as_str)
            )));
        }
        (Flip::Rollback { .. }, _) => match &w.previous_live {
            Some(g) => Some(g.clone()),
            None => {
                return Err(nothing(format!(
                    "the ledger has no earlier live release than {}",
                    name(&w.app, live)
                )));
            }
        },
    };
    if redeploy.is_none() {
        let o = observed(w, other);
        if o.ready < o.replicas || o.replicas == 0 || o.address.is_none() {
            return Err(nothing(format!(
                "{} has {}/{} pods ready and {} load-balancer address",
                name(&w.app, other),
                o.ready,
                o.replicas,
                if o.address.is_some() { "a" } else { "no" }
            )));
        }
    }
    Ok(Target {
        from: live,
        to: other,
        redeploy,
        finishing: false,
    })
}

/// The colour CI vouches for runs `want`: the candidate for a promote, the colour rolled back
/// from for a rollback.
fn expected(w: &FlipWorld, kind: Flip, t: &Target, want: &str) -> Result<(), Refusal> {
    let (checked, hint) = match kind {
        Flip::Promote { .. } => (
            t.to,
            "another release replaced the candidate; run `release up` for this build again",
        ),
        Flip::Rollback { .. } => (
            t.from,
            "that image is not live (a failed promote flips back by itself); check `release status`",
        ),
    };
    let got = observed(w, checked).digest.unwrap_or_else(|| "none".into());
    if got == want {
        return Ok(());
    }
    Err(Refusal::Nothing {
        why: format!(
            "nothing to {}: {} runs {got}, not the expected {want}",
            kind.action(),
            name(&w.app, checked)
        ),
        hint,
    })
}

/// The steps of a decided flip, in the order the executor takes them.
fn steps(
    w: &FlipWorld,
    kind: Flip,
    t: &Target,
    redeploy: Option<FlipStep>,
    digest: Option<String>,
    public_url: &str,
    s: FlipSettings,
) -> Vec<FlipStep> {
    let (from, to) = (t.from, t.to);
    let (from_o, to_o) = (observed(w, from), observed(w, to));
    let to_addr = t.redeploy.is_none().then(|| to_o.address.clone()).flatten();
    let mut steps = vec![FlipStep::Lock];
    steps.extend(redeploy);
    if t.finishing {
        steps.push(FlipStep::Flipped {
            to,
            action: kind.action(),
        });
    } else {
        if matches!(kind, Flip::Rollback { .. })
            && t.redeploy.is_none()
            && to_o.exists
            && to_o.replicas < s.replicas as i32
        {
            steps.push(FlipStep::ScaleUp {
                colour: to,
                replicas: s.replicas,
            });
        }
        steps.push(FlipStep::Smoke {
            colour: to,
            cases: s.cases,
            requests: s.requests,
        });
        // Only a promote: a rollback goes back to what clients used before. Nothing to compare
        // with on a first go-live (no colour serves).
        if matches!(kind, Flip::Promote { .. }) && from_o.exists {
            steps.push(FlipStep::Contract {
                from,
                to,
                allow: s.allow_contract_change,
            });
            if s.shadow {
                steps.push(FlipStep::Shadow { from, to });
            }
            if let (Some(percent), None) = (s.canary, &t.redeploy) {
                steps.push(FlipStep::Canary {
                    to,
                    percent,
                    to_addr: to_addr.clone(),
                });
                steps.push(FlipStep::CanaryBake {
                    to,
                    percent,
                    seconds: s.bake_seconds,
                    alarms: s.alarms,
                    against: s.compare.then_some(from),
                    edge: s.edge,
                });
            }
        }
        steps.push(FlipStep::Flip {
            from,
            to,
            from_addr: from_o.address.clone(),
            to_addr,
            invalidate: s.invalidate,
            vpc: s.vpc,
        });
    }
    let back = from_o.address.clone().filter(|_| from_o.exists);
    steps.push(FlipStep::Verify {
        colour: to,
        url: public_url.to_string(),
        requests: s.requests.min(20),
        from,
        back: back.clone(),
    });
    if matches!(kind, Flip::Promote { .. }) && s.bake_seconds > 0 {
        steps.push(FlipStep::Bake {
            colour: to,
            seconds: s.bake_seconds,
            from,
            back,
            alarms: s.alarms,
            // A first go-live has nothing to compare with.
            compare: s.compare && from_o.exists,
            edge: s.edge,
        });
    }
    // Before the roles are written: until then a run that died is finished by the same command
    // again (`Pending`), so the keep tags are never left undone by a crash.
    // What live runs after the flip; what traffic left while it stays deployed; after a
    // promote, what traffic left is also what a rollback deploys again (retired or not). After a
    // rollback the ledger names the next rollback's image.
    let mut in_use = BTreeMap::new();
    if let Some(d) = digest {
        in_use.insert(to.as_str().to_string(), d);
    }
    if let Some(d) = from_o.digest.clone() {
        if from_o.exists && !kind.retires() {
            in_use.insert(from.as_str().to_string(), d.clone());
        }
        if matches!(kind, Flip::Promote { .. }) {
            in_use.insert(super::images::ROLLBACK_SLOT.to_string(), d);
        }
    }
    steps.push(FlipStep::ProtectImages { in_use });
    steps.push(FlipStep::Roles {
        live: to,
        old: from_o.exists.then_some((from, kind.old_role())),
    });
    if from_o.exists {
        steps.push(if kind.retires() {
            FlipStep::Retire { colour: from }
        } else if let (Flip::Promote { .. }, Some(seconds)) = (kind, s.keep_warm) {
            FlipStep::KeepWarm {
                colour: from,
                seconds,
            }
        } else {
            FlipStep::Keep {
                colour: from,
                why: match kind {
                    Flip::Promote { .. } => "kept for an instant rollback",
                    Flip::Rollback { .. } => "kept for inspection (--keep-failed)",
                },
            }
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use Colour::{Blue, Green};

    fn deployed(role: Role, address: &str, digest: &str) -> Observed {
        Observed {
            exists: true,
            digest: Some(digest.into()),
            role: Some(role),
            ready: 2,
            replicas: 2,
            address: Some(address.into()),
            model_version: Some(format!("model-of-{digest}")),
            model_sha256: Some(format!("sha-of-{digest}")),
            ..Observed::default()
        }
    }

    /// Blue live, green deployed and tested by `up`.
    fn blue_live_green_candidate() -> FlipWorld {
        FlipWorld {
            app: "iris".into(),
            live: Some(Blue),
            edge: EdgeState::Serving {
                origin: "blue.lb".into(),
                deployed: true,
            },
            colours: BTreeMap::from([
                (Blue, deployed(Role::Live, "blue.lb", "sha256:b1")),
                (Green, deployed(Role::Candidate, "green.lb", "sha256:g2")),
            ]),
            previous_live: None,
            repository_uri: None,
            public_url: Some("https://d1.cloudfront.net".into()),
            model_version: "v-config".into(),
        }
    }

    /// Green live after a promote with --retire-previous: blue is gone, the ledger remembers it.
    fn green_live_blue_retired() -> FlipWorld {
        let mut w = blue_live_green_candidate();
        w.live = Some(Green);
        w.colours = BTreeMap::from([
            (Blue, Observed::default()),
            (Green, deployed(Role::Live, "green.lb", "sha256:g2")),
        ]);
        w.previous_live = Some(GoLive {
            digest: "sha256:b1".into(),
            model_version: Some("v1".into()),
            model_sha256: Some("sha-of-b1".into()),
        });
        w.repository_uri = Some("123.dkr.ecr.eu-west-1.amazonaws.com/iris".into());
        w
    }

    const PROMOTE: Flip = Flip::Promote {
        retire_previous: false,
    };
    const ROLLBACK: Flip = Flip::Rollback { keep_failed: false };

    fn settings() -> FlipSettings {
        FlipSettings {
            cases: 6,
            requests: 50,
            invalidate: false,
            vpc: false,
            bake_seconds: 0,
            allow_contract_change: false,
            shadow: false,
            canary: None,
            alarms: 0,
            compare: false,
            edge: false,
            keep_warm: None,
            replicas: 2,
        }
    }

    /// The plan as `--dry-run` prints it, or the refusal.
    fn printed(w: &FlipWorld, kind: Flip, expect: Option<&str>, s: FlipSettings) -> String {
        match plan_flip(w, kind, expect, s) {
            Ok(p) => {
                let mut text = format!(
                    "{} -> {} ({:?}, model {})\n",
                    p.from, p.to, p.digest, p.model_version
                );
                for s in p.printed(&w.app) {
                    text.push_str(&format!("{}: {}\n", s.step, s.what));
                    if let Some(u) = s.undo {
                        text.push_str(&format!("    undo: {u}\n"));
                    }
                }
                text
            }
            Err(r) => format!("refused: {r:?}\n"),
        }
    }

    fn slots(s: &[(&str, &str)]) -> BTreeMap<String, String> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(p: &FlipPlan) -> Vec<String> {
        p.steps.iter().map(|s| s.name("iris")).collect()
    }

    #[test]
    fn a_promote_smoke_tests_the_candidate_flips_the_origin_verifies_and_keeps_the_previous() {
        insta::assert_snapshot!(printed(
            &blue_live_green_candidate(),
            PROMOTE,
            None,
            settings()
        ));
    }

    #[test]
    fn a_promote_bakes_after_its_verification_and_before_the_roles_a_rollback_never() {
        let s = FlipSettings {
            bake_seconds: 90,
            ..settings()
        };
        let kind = Flip::Promote {
            retire_previous: true,
        };
        let p = plan_flip(&blue_live_green_candidate(), kind, None, s).unwrap();
        let n = names(&p);
        let verify = n.iter().position(|s| s == "verify public URL").unwrap();
        assert_eq!(n[verify + 1], "bake iris-green", "{n:?}");
        let roles = n.iter().position(|s| s == "roles").unwrap();
        let retire = n.iter().position(|s| s == "retire iris-blue").unwrap();
        assert!(
            roles > verify + 1 && retire > roles,
            "the roles and the retirement wait for the bake: {n:?}"
        );
        let what = p.steps[verify + 1].what("iris");
        assert!(
            what.starts_with("watch iris-green's /predict for 90 s")
                && what.ends_with("on a breach flip back to iris-blue (exit 9)"),
            "{what}"
        );
        assert!(
            !names(&plan_flip(&blue_live_green_candidate(), PROMOTE, None, settings()).unwrap())
                .iter()
                .any(|s| s.starts_with("bake")),
            "no bake unless asked"
        );
    }

    #[test]
    fn a_promote_can_keep_the_previous_warm_and_a_rollback_to_it_scales_it_up_first() {
        let s = FlipSettings {
            keep_warm: Some(3600),
            ..settings()
        };
        let p = plan_flip(&blue_live_green_candidate(), PROMOTE, None, s).unwrap();
        let last = p.steps.last().unwrap();
        assert_eq!(last.name("iris"), "keep iris-blue");
        assert!(matches!(
            last,
            FlipStep::KeepWarm {
                colour: Blue,
                seconds: 3600
            }
        ));
        assert!(
            last.what("iris").contains("at 1 replica for 1h"),
            "{}",
            last.what("iris")
        );
        // --retire-previous wins; without the setting the previous is kept as it is.
        let retiring = plan_flip(
            &blue_live_green_candidate(),
            Flip::Promote {
                retire_previous: true,
            },
            None,
            s,
        )
        .unwrap();
        assert!(matches!(
            retiring.steps.last(),
            Some(FlipStep::Retire { .. })
        ));
        let plain = plan_flip(&blue_live_green_candidate(), PROMOTE, None, settings()).unwrap();
        assert!(matches!(plain.steps.last(), Some(FlipStep::Keep { .. })));

        // Green live, blue previous at one replica: the rollback scales blue up before its smoke.
        let mut w = blue_live_green_candidate();
        w.live = Some(Green);
        w.edge = EdgeState::Serving {
            origin: "green.lb".into(),
            deployed: true,
        };
        w.colours
            .insert(Green, deployed(Role::Live, "green.lb", "sha256:g"));
        let mut blue = deployed(Role::Previous, "blue.lb", "sha256:b");
        blue.replicas = 1;
        w.colours.insert(Blue, blue.clone());
        let back = plan_flip(&w, ROLLBACK, None, s).unwrap();
        let n = names(&back);
        assert_eq!(
            n[1..3],
            ["scale iris-blue".to_string(), "smoke iris-blue".to_string()],
            "{n:?}"
        );
        blue.replicas = 2;
        w.colours.insert(Blue, blue);
        assert!(
            !names(&plan_flip(&w, ROLLBACK, None, s).unwrap())
                .contains(&"scale iris-blue".to_string())
        );
    }

    #[test]
    fn a_canary_serves_its_share_and_bakes_before_the_flip_a_rollback_never_has_one() {
        let s = FlipSettings {
            bake_seconds: 60,
            canary: Some(10),
            ..settings()
        };
        let p = plan_flip(&blue_live_green_candidate(), PROMOTE, None, s).unwrap();
        let n = names(&p);
        let at = |step: &str| n.iter().position(|s| s == step).unwrap();
        assert!(
            at("contract iris-green") < at("canary iris-green")
                && at("canary iris-green") + 1 == at("canary bake iris-green")
                && at("canary bake iris-green") + 1 == at("flip")
                && at("verify public URL") + 1 == at("bake iris-green"),
            "{n:?}"
        );
        let canary = p.steps[at("canary iris-green")].what("iris");
        assert!(
            canary.contains("green.lb") && canary.contains("10 % of viewers"),
            "{canary}"
        );
        let bake = p.steps[at("canary bake iris-green")].what("iris");
        assert!(
            bake.starts_with("watch iris-green's /predict for 60 s while it serves 10 %"),
            "{bake}"
        );
        assert!(!bake.contains("max_error_rate_increase"), "{bake}");
        // With analysis.max_error_rate_increase each bake says what it compares with.
        let compared = plan_flip(
            &blue_live_green_candidate(),
            PROMOTE,
            None,
            FlipSettings { compare: true, ..s },
        )
        .unwrap();
        let said = |step: &str| compared.steps[at(step)].what("iris");
        assert!(
            said("canary bake iris-green").contains("against iris-blue's over the same time"),
            "{}",
            said("canary bake iris-green")
        );
        assert!(
            said("bake iris-green").contains("against what iris-blue's pods served"),
            "{}",
            said("bake iris-green")
        );
        let edge = plan_flip(
            &blue_live_green_candidate(),
            PROMOTE,
            None,
            FlipSettings { edge: true, ..s },
        )
        .unwrap();
        let said = |step: &str| edge.steps[at(step)].what("iris");
        assert!(
            said("canary bake iris-green").contains("5xxErrorRate of the staging distribution")
                && said("bake iris-green").contains("5xxErrorRate of the distribution (us-east-1)"),
            "{}",
            said("bake iris-green")
        );
        let rollback = plan_flip(
            &green_live_blue_retired(),
            Flip::Rollback { keep_failed: false },
            None,
            s,
        )
        .unwrap();
        assert!(
            !names(&rollback).iter().any(|s| s.starts_with("canary")),
            "{:?}",
            names(&rollback)
        );
    }

    #[test]
    fn a_promote_with_retire_previous_ends_by_retiring_it_and_can_invalidate() {
        let s = FlipSettings {
            invalidate: true,
            ..settings()
        };
        let kind = Flip::Promote {
            retire_previous: true,
        };
        let p = plan_flip(&blue_live_green_candidate(), kind, None, s).unwrap();
        assert_eq!(names(&p).last().unwrap(), "retire iris-blue");
        // Retired, blue's image is still what a rollback deploys again: it stays protected.
        assert_eq!(
            &p.steps[p.steps.len() - 3],
            &FlipStep::ProtectImages {
                in_use: slots(&[("green", "sha256:g2"), ("rollback", "sha256:b1")])
            }
        );
        let flip = p.steps.iter().find(|s| matches!(s, FlipStep::Flip { .. }));
        assert!(flip.unwrap().what("iris").ends_with("then invalidate /*"));
        assert_eq!(p.digest.as_deref(), Some("sha256:g2"));
        assert_eq!(p.model_version, "model-of-sha256:g2");
        // What the candidate's image ships: its smoke test and the public URL must report it.
        assert_eq!(p.model_sha256, "sha-of-sha256:g2");
    }

    #[test]
    fn a_promote_checks_the_model_contract_before_its_flip_and_a_rollback_does_not() {
        let contract = |kind, s| {
            let w = match kind {
                Flip::Promote { .. } => blue_live_green_candidate(),
                Flip::Rollback { .. } => green_live_blue_retired(),
            };
            let p = plan_flip(&w, kind, None, s).unwrap();
            let at = |f: fn(&FlipStep) -> bool| p.steps.iter().position(f);
            let contract = at(|s| matches!(s, FlipStep::Contract { .. }));
            if let Some(i) = contract {
                // After the candidate's smoke test, before the edge moves.
                assert!(at(|s| matches!(s, FlipStep::Smoke { .. })).unwrap() < i);
                assert!(i < at(|s| matches!(s, FlipStep::Flip { .. })).unwrap());
            }
            contract.map(|i| p.steps[i].clone())
        };
        assert_eq!(
            contract(PROMOTE, settings()),
            Some(FlipStep::Contract {
                from: Colour::Blue,
                to: Colour::Green,
                allow: false
            })
        );
        let allowed = FlipSettings {
            allow_contract_change: true,
            ..settings()
        };
        let step = contract(PROMOTE, allowed).unwrap();
        assert!(
            step.what("iris")
                .contains("allowed (--allow-contract-change)")
        );
        // A rollback goes back to what clients used before.
        assert_eq!(contract(ROLLBACK, settings()), None);
        // With smoke.shadow, the shadow figures are judged after the contract, before the flip.
        let shadow = FlipSettings {
            shadow: true,
            ..settings()
        };
        let p = plan_flip(&blue_live_green_candidate(), PROMOTE, None, shadow).unwrap();
        let steps = names(&p);
        let at = |n: &str| steps.iter().position(|s| s == n).unwrap();
        assert!(at("contract iris-green") < at("shadow iris-green"));
        assert!(at("shadow iris-green") < at("flip"));
        let p = plan_flip(&blue_live_green_candidate(), PROMOTE, None, settings()).unwrap();
        assert!(!names(&p).contains(&"shadow iris-green".to_string()));
    }

    #[test]
    fn with_vpc_origins_the_flip_says_it_goes_through_the_targets_vpc_origin() {
        let flip_line = |vpc: bool| {
            let s = FlipSettings { vpc, ..settings() };
            let p = plan_flip(&blue_live_green_candidate(), PROMOTE, None, s).unwrap();
            p.steps
                .iter()
                .find(|s| matches!(s, FlipStep::Flip { .. }))
                .unwrap()
                .what("iris")
        };
        let vpc = flip_line(true);
        assert!(
            vpc.contains("through iris-green's own VPC origin") && vpc.contains("LiveColour green"),
            "{vpc}"
        );
        assert!(!flip_line(false).contains("VPC origin"));
    }

    #[test]
    fn a_promote_is_refused_without_a_ready_tested_candidate_or_anything_live() {
        let refusal = |w: &FlipWorld| match plan_flip(w, PROMOTE, None, settings()) {
            Err(Refusal::Nothing { why, .. }) => why,
            other => panic!("not refused: {other:?}"),
        };
        let mut w = blue_live_green_candidate();
        w.colours.get_mut(&Green).unwrap().role = Some(Role::Previous);
        assert_eq!(
            refusal(&w),
            "nothing to promote: iris-green is not a tested candidate (previous)"
        );
        let mut w = blue_live_green_candidate();
        w.colours.get_mut(&Green).unwrap().ready = 1;
        assert_eq!(
            refusal(&w),
            "nothing to promote: iris-green has 1/2 pods ready and a load-balancer address"
        );
        let mut w = blue_live_green_candidate();
        w.colours.remove(&Green);
        assert!(refusal(&w).ends_with("is not a tested candidate (absent)"));
        let mut w = blue_live_green_candidate();
        w.live = None;
        w.edge = EdgeState::Absent;
        assert!(refusal(&w).starts_with("nothing to promote: nothing is live yet"));
    }

    #[test]
    fn no_colour_changes_while_the_edge_is_unsettled_deploying_or_serves_no_colour() {
        let refused = |w: &FlipWorld, kind| match plan_flip(w, kind, None, settings()) {
            Err(Refusal::Edge(r)) => r,
            other => panic!("not refused for the edge: {other:?}"),
        };
        let mut w = blue_live_green_candidate();
        w.edge = EdgeState::Unsettled {
            status: "UPDATE_IN_PROGRESS".into(),
        };
        assert_eq!(
            refused(&w, PROMOTE),
            ReleaseRefusal::EdgeUnsettled {
                status: "UPDATE_IN_PROGRESS".into()
            }
        );
        w.edge = EdgeState::Serving {
            origin: "blue.lb".into(),
            deployed: false,
        };
        assert_eq!(refused(&w, ROLLBACK), ReleaseRefusal::EdgeDeploying);
        // An edge whose origin is neither colour's address: nothing is live that a flip could
        // leave, and the edge serves something release did not put there.
        w.edge = EdgeState::Serving {
            origin: "elsewhere.example".into(),
            deployed: true,
        };
        w.live = None;
        assert_eq!(
            refused(&w, PROMOTE),
            ReleaseRefusal::StrayOrigin {
                origin: "elsewhere.example".into()
            }
        );
    }

    #[test]
    fn an_expected_digest_is_the_candidates_for_a_promote_and_the_live_ones_for_a_rollback() {
        let w = blue_live_green_candidate();
        assert!(plan_flip(&w, PROMOTE, Some("sha256:g2"), settings()).is_ok());
        match plan_flip(&w, PROMOTE, Some("sha256:b1"), settings()) {
            Err(Refusal::Nothing { why, hint }) => {
                assert_eq!(
                    why,
                    "nothing to promote: iris-green runs sha256:g2, not the expected sha256:b1"
                );
                assert!(hint.contains("another release replaced the candidate"));
            }
            other => panic!("{other:?}"),
        }
        let w = green_live_blue_retired();
        assert!(plan_flip(&w, ROLLBACK, Some("sha256:g2"), settings()).is_ok());
        assert!(plan_flip(&w, ROLLBACK, Some("sha256:b1"), settings()).is_err());
    }

    #[test]
    fn a_rollback_to_a_retired_colour_redeploys_the_ledgers_image_first() {
        insta::assert_snapshot!(printed(
            &green_live_blue_retired(),
            ROLLBACK,
            None,
            settings()
        ));
        // The redeployed colour is held to the model the ledger recorded for its image.
        let p = plan_flip(&green_live_blue_retired(), ROLLBACK, None, settings()).unwrap();
        assert_eq!(p.model_sha256, "sha-of-b1");
        assert!(
            matches!(&p.steps[1], FlipStep::Redeploy { model_sha256, .. } if model_sha256 == "sha-of-b1")
        );
    }

    #[test]
    fn a_rollback_to_a_kept_previous_colour_retires_the_failed_one_unless_kept() {
        let mut w = blue_live_green_candidate();
        w.live = Some(Green);
        w.colours = BTreeMap::from([
            (Blue, deployed(Role::Previous, "blue.lb", "sha256:b1")),
            (Green, deployed(Role::Live, "green.lb", "sha256:g2")),
        ]);
        let p = plan_flip(&w, ROLLBACK, None, settings()).unwrap();
        assert_eq!(
            names(&p),
            [
                "lock",
                "smoke iris-blue",
                "flip",
                "verify public URL",
                "protect images",
                "roles",
                "retire iris-green"
            ]
        );
        assert_eq!(p.steps[5].what("iris"), "iris-blue live, iris-green failed");
        // The failed image is let go once retired, kept while its colour stays deployed.
        assert_eq!(
            p.steps[4],
            FlipStep::ProtectImages {
                in_use: slots(&[("blue", "sha256:b1")])
            }
        );
        let kept = plan_flip(&w, Flip::Rollback { keep_failed: true }, None, settings()).unwrap();
        assert_eq!(
            kept.steps.last().unwrap(),
            &FlipStep::Keep {
                colour: Green,
                why: "kept for inspection (--keep-failed)"
            }
        );
        assert_eq!(
            &kept.steps[kept.steps.len() - 3],
            &FlipStep::ProtectImages {
                in_use: slots(&[("blue", "sha256:b1"), ("green", "sha256:g2")])
            }
        );
    }

    #[test]
    fn a_rollback_needs_an_earlier_go_live_and_a_repository_to_redeploy_from() {
        let mut w = green_live_blue_retired();
        w.previous_live = None;
        match plan_flip(&w, ROLLBACK, None, settings()) {
            Err(Refusal::Nothing { why, .. }) => assert_eq!(
                why,
                "nothing to rollback: the ledger has no earlier live release than iris-green"
            ),
            other => panic!("{other:?}"),
        }
        let mut w = green_live_blue_retired();
        w.repository_uri = None;
        assert_eq!(
            plan_flip(&w, ROLLBACK, None, settings()),
            Err(Refusal::NoRepository)
        );
        let mut w = blue_live_green_candidate();
        w.public_url = None;
        assert_eq!(
            plan_flip(&w, PROMOTE, None, settings()),
            Err(Refusal::NoPublicUrl)
        );
    }

    #[test]
    fn a_flip_left_unfinished_is_verified_and_finished_not_made_again() {
        // A promote moved the edge to green and died before writing the roles.
        let mut w = blue_live_green_candidate();
        w.live = Some(Green);
        w.colours.get_mut(&Green).unwrap().pending = Some(Pending::Promote);
        insta::assert_snapshot!(printed(&w, PROMOTE, None, settings()));
        // A rollback instead undoes it: back to blue, which the dead promote left as previous.
        let back = plan_flip(&w, ROLLBACK, None, settings()).unwrap();
        assert_eq!((back.from, back.to, back.finishing), (Green, Blue, false));
    }

    #[test]
    fn nothing_to_flip_back_to_when_the_colour_traffic_leaves_is_gone() {
        let mut w = blue_live_green_candidate();
        w.live = Some(Green);
        w.colours = BTreeMap::from([
            (Blue, Observed::default()),
            (Green, deployed(Role::Live, "green.lb", "sha256:g2")),
        ]);
        w.colours.get_mut(&Green).unwrap().pending = Some(Pending::Promote);
        let p = plan_flip(&w, PROMOTE, None, settings()).unwrap();
        assert_eq!(
            names(&p),
            [
                "lock",
                "flip",
                "verify public URL",
                "protect images",
                "roles"
            ]
        );
        assert!(
            p.steps[2]
                .what("iris")
                .ends_with("iris-blue is gone: nothing to flip back to on failure")
        );
        assert_eq!(p.steps[4].what("iris"), "iris-green live");
    }
}
