//! The pure core of `release destroy`: from what exists, every resource it deletes, in dependency
//! order, and what it keeps. `--dry-run` prints this plan; the real run executes the same one
//! (`commands::destroy`), each step skipping what is already gone so that a re-run after a crash
//! finishes the job.

use super::colour::Colour;
use super::{PlannedStep, planned};

/// What `release destroy` finds, as observed.
#[derive(Debug, Clone, Default)]
pub struct DestroyWorld {
    pub app: String,
    pub namespace: String,
    /// The cluster is reachable: the colours and the app's objects in it go too.
    pub cluster: bool,
    /// Per colour: its Deployment exists. Either colour may still have a Service, a
    /// PodDisruptionBudget or a NetworkPolicy without one (a teardown cut short): both are
    /// deleted whenever the cluster is there.
    pub deployed: Vec<(Colour, bool)>,
    /// Each stack release made, with its status (`None`: absent), in deletion order: edge,
    /// cluster, network, then registry.
    pub stacks: Vec<(String, Option<String>)>,
    /// Images in the repository (`None`: no repository).
    pub images: Option<usize>,
    /// The state bucket, if it exists.
    pub bucket: Option<String>,
}

/// One step of `release destroy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestroyStep {
    /// The app's lock is held and a ledger entry open (when the state bucket exists).
    Lock,
    /// A colour's Deployment, Service, PodDisruptionBudget and NetworkPolicy.
    Colour { colour: Colour, deployed: bool },
    /// The origin Secret, and the namespace if release made it.
    AppObjects { namespace: String },
    /// Wait until the Services and their NLBs are gone, while the controller can still delete them.
    LoadBalancers,
    /// Delete a stack (`status: None`: absent, nothing to do). `holds_state`: the registry stack,
    /// which made the state bucket.
    Stack {
        name: String,
        status: Option<String>,
        holds_state: bool,
    },
    /// Every image in the app's repository.
    Images { count: usize },
    /// The registry stack stays: it holds the images and the state bucket.
    KeepRegistry { name: String },
    /// Every version of the ledger and the lock, then the bucket.
    Bucket { name: String },
}

impl DestroyStep {
    pub fn name(&self, app: &str) -> String {
        match self {
            DestroyStep::Lock => "lock".into(),
            DestroyStep::Colour { colour, .. } => format!("delete {app}-{colour}"),
            DestroyStep::AppObjects { .. } => "delete app objects".into(),
            DestroyStep::LoadBalancers => "load balancers".into(),
            DestroyStep::Stack { name, .. } | DestroyStep::Bucket { name } => {
                format!("delete {name}")
            }
            DestroyStep::Images { .. } => "delete images".into(),
            DestroyStep::KeepRegistry { name } => format!("keep {name}"),
        }
    }

    pub fn what(&self, app: &str) -> String {
        match self {
            DestroyStep::Lock => "take the app's lock and open a ledger entry".into(),
            DestroyStep::Colour { deployed: true, .. } => {
                "its Deployment, Service, PodDisruptionBudget and NetworkPolicy".into()
            }
            DestroyStep::Colour {
                deployed: false, ..
            } => "whatever is left of its Service, PodDisruptionBudget and NetworkPolicy (no Deployment)".into(),
            DestroyStep::AppObjects { namespace } => format!(
                "Secret {app}-origin, and namespace {namespace} if release made it"
            ),
            DestroyStep::LoadBalancers => "wait until the Services and their NLBs are gone, while the cluster's controller can still delete them".into(),
            DestroyStep::Stack {
                status: Some(s), ..
            } => format!("stack ({s})"),
            DestroyStep::Stack { status: None, .. } => "none: absent".into(),
            DestroyStep::Images { count } => format!("{count} images in repository {app}"),
            DestroyStep::KeepRegistry { .. } => {
                "it holds the images and the state bucket (--delete-images removes them)".into()
            }
            DestroyStep::Bucket { .. } => {
                "every version of the ledger and the lock, then the bucket".into()
            }
        }
    }

    /// It deletes where the lock and the ledger live: the run's ledger entry is closed and the
    /// lock released before it.
    pub fn ends_the_ledger(&self) -> bool {
        matches!(
            self,
            DestroyStep::Images { .. }
                | DestroyStep::Bucket { .. }
                | DestroyStep::Stack {
                    holds_state: true,
                    ..
                }
        )
    }
}

/// Every resource `release destroy` deletes, in its order, then what it keeps. `delete_images`:
/// the images, the registry stack and the state bucket go too.
///
/// The edge goes first, before the colours its origins name: what refers to a thing is deleted
/// before the thing (a VPC origin names a colour's NLB by ARN, and CloudFront refuses to delete a
/// VPC origin a distribution still uses, DeleteVpcOrigin: CannotDeleteEntityWhileInUse; whether
/// ELBv2 refuses to delete an NLB a VPC origin names is not documented, and this order never
/// asks). The public URL stops answering first, rather than answering 502 while its origins go.
pub fn plan_destroy(w: &DestroyWorld, delete_images: bool) -> Vec<DestroyStep> {
    let mut steps = Vec::new();
    if w.bucket.is_some() {
        steps.push(DestroyStep::Lock);
    }
    let (registry, others) = w
        .stacks
        .split_last()
        .map_or((None, &w.stacks[..]), |(r, o)| (Some(r), o));
    let stack = |(name, status): &(String, Option<String>)| DestroyStep::Stack {
        name: name.clone(),
        status: status.clone(),
        holds_state: false,
    };
    let (edge, others) = others
        .split_first()
        .map_or((None, others), |(e, o)| (Some(e), o));
    steps.extend(edge.map(stack));
    if w.cluster {
        for (colour, deployed) in &w.deployed {
            steps.push(DestroyStep::Colour {
                colour: *colour,
                deployed: *deployed,
            });
        }
        steps.push(DestroyStep::AppObjects {
            namespace: w.namespace.clone(),
        });
        steps.push(DestroyStep::LoadBalancers);
    }
    steps.extend(others.iter().map(stack));
    if let Some((name, status)) = registry {
        if delete_images {
            if let Some(count) = w.images {
                steps.push(DestroyStep::Images { count });
            }
            steps.push(DestroyStep::Stack {
                name: name.clone(),
                status: status.clone(),
                holds_state: true,
            });
            if let Some(b) = &w.bucket {
                steps.push(DestroyStep::Bucket { name: b.clone() });
            }
        } else if status.is_some() {
            steps.push(DestroyStep::KeepRegistry { name: name.clone() });
        }
    }
    steps
}

/// The steps as `--dry-run` prints them.
pub fn printed(steps: &[DestroyStep], app: &str) -> Vec<PlannedStep> {
    steps
        .iter()
        .map(|s| planned(s.name(app), s.what(app)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> DestroyWorld {
        DestroyWorld {
            app: "iris".into(),
            namespace: "ml".into(),
            cluster: true,
            deployed: vec![(Colour::Blue, true), (Colour::Green, true)],
            stacks: vec![
                ("iris-edge".into(), Some("CREATE_COMPLETE".into())),
                ("iris-cluster".into(), Some("UPDATE_COMPLETE".into())),
                ("iris-network".into(), None),
                ("iris-registry".into(), Some("CREATE_COMPLETE".into())),
            ],
            images: Some(3),
            bucket: Some("iris-release-state".into()),
        }
    }

    fn names(steps: &[DestroyStep]) -> Vec<String> {
        steps.iter().map(|s| s.name("iris")).collect()
    }

    #[test]
    fn destroy_deletes_every_resource_in_order_and_keeps_the_registry_without_delete_images() {
        let steps = plan_destroy(&world(), false);
        assert_eq!(
            names(&steps),
            [
                "lock",
                "delete iris-edge",
                "delete iris-blue",
                "delete iris-green",
                "delete app objects",
                "load balancers",
                "delete iris-cluster",
                "delete iris-network",
                "keep iris-registry"
            ]
        );
        assert_eq!(steps[7].what("iris"), "none: absent");
        assert_eq!(
            steps[1],
            DestroyStep::Stack {
                name: "iris-edge".into(),
                status: Some("CREATE_COMPLETE".into()),
                holds_state: false
            },
            "the edge goes before the colours its origins name"
        );
        assert!(!steps.iter().any(DestroyStep::ends_the_ledger));
        let all = plan_destroy(&world(), true);
        assert_eq!(
            names(&all)[8..],
            [
                "delete images",
                "delete iris-registry",
                "delete iris-release-state"
            ]
        );
        assert_eq!(all[8].what("iris"), "3 images in repository iris");
        // The ledger is closed before the first step that deletes where it lives.
        let first = all.iter().position(DestroyStep::ends_the_ledger);
        assert_eq!(first, Some(8));
    }

    #[test]
    fn a_colour_without_its_deployment_is_still_cleaned_up_and_said_so() {
        let mut w = world();
        w.deployed[1].1 = false;
        let steps = plan_destroy(&w, false);
        assert_eq!(
            steps[3],
            DestroyStep::Colour {
                colour: Colour::Green,
                deployed: false
            }
        );
        assert!(steps[3].what("iris").starts_with("whatever is left"));
    }

    #[test]
    fn without_a_cluster_or_a_state_bucket_only_the_stacks_are_planned() {
        let w = DestroyWorld {
            cluster: false,
            bucket: None,
            images: None,
            ..world()
        };
        let steps = plan_destroy(&w, true);
        assert_eq!(
            names(&steps),
            [
                "delete iris-edge",
                "delete iris-cluster",
                "delete iris-network",
                "delete iris-registry"
            ]
        );
        assert_eq!(steps.iter().position(DestroyStep::ends_the_ledger), Some(3));
    }
}
