//! The pure core of `release up`: which stacks, in which order, with which parameters. No I/O:
//! the observed world comes in, decisions come out.

use std::collections::BTreeMap;

use crate::config::Config;

pub mod colour;
pub mod stack;

/// Stacks that can be deployed together: each wave waits for the one before it.
pub const UP_WAVES: &[&[&str]] = &[&["network", "registry"], &["cluster"]];

/// Outputs of the stacks already deployed, by template.
pub type Outputs = BTreeMap<String, BTreeMap<String, String>>;

/// The parameters a stack gets, from the config and the outputs of the stacks before it.
/// `Err` names the output that is missing (its stack has not been deployed yet).
pub fn stack_parameters(
    template: &str,
    config: &Config,
    outputs: &Outputs,
) -> Result<Vec<(String, String)>, String> {
    let out = |stack: &str, key: &str| -> Result<String, String> {
        outputs
            .get(stack)
            .and_then(|o| o.get(key))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "{} (output {key} of the {stack} stack)",
                    config.stack_name(stack)
                )
            })
    };
    let app = ("AppName".to_string(), config.app.clone());
    let p = |k: &str, v: String| (k.to_string(), v);
    Ok(match template {
        "network" => vec![app, p("VpcCidr", config.stacks.vpc_cidr.clone())],
        "registry" => vec![app, p("StateBucketName", config.state_bucket())],
        "cluster" => vec![
            app,
            p(
                "KubernetesVersion",
                config.stacks.kubernetes_version.clone(),
            ),
            p("SubnetIds", out("network", "PrivateSubnetIds")?),
            p("Namespace", config.deploy.namespace.clone()),
            p(
                "DeployerRoleArn",
                config.stacks.deployer_role_arn.clone().unwrap_or_default(),
            ),
        ],
        other => return Err(format!("no parameters known for template {other}")),
    })
}

/// The ledger's actor: the CI build when there is one, else user@host.
pub fn actor(env: impl Fn(&str) -> Option<String>) -> (String, Option<String>) {
    let ci = env("CIRCLE_BUILD_URL").or_else(|| env("RELEASE_CI_BUILD_URL"));
    let user = env("CIRCLE_USERNAME")
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "unknown".into());
    let host = env("HOSTNAME").unwrap_or_else(|| "unknown-host".into());
    (format!("{user}@{host}"), ci)
}

/// One step a command would take, and what it would do: `--dry-run` prints these and changes
/// nothing; the real run takes the same steps in the same order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedStep {
    pub step: String,
    pub what: String,
}

pub fn planned(step: impl Into<String>, what: impl Into<String>) -> PlannedStep {
    PlannedStep {
        step: step.into(),
        what: what.into(),
    }
}

/// What a promote or rollback starts from, as observed: the facts [`flip_steps`] decides on.
#[derive(Debug, Clone)]
pub struct FlipFacts {
    pub action: &'static str,
    /// Full names (`<app>-blue`) of the colour traffic leaves and the one it goes to.
    pub from: String,
    pub to: String,
    pub from_exists: bool,
    pub from_addr: Option<String>,
    /// `to`'s load-balancer address, or `None` when it must be redeployed first.
    pub to_addr: Option<String>,
    /// `Some(image)` when `to` was retired and is deployed again from the ledger's digest.
    pub redeploy: Option<String>,
    pub model_version: String,
    /// The edge already serves `to` (an earlier run died after its flip).
    pub finishing: bool,
    pub cases: usize,
    pub requests: u32,
    pub public_url: String,
    pub invalidate: bool,
    /// Remove `from` at the end (promote --retire-previous, or rollback without --keep-failed).
    pub retire: bool,
}

/// The steps of a promote or rollback, in the order `flip_to` takes them.
pub fn flip_steps(f: &FlipFacts) -> Vec<PlannedStep> {
    let mut steps = vec![planned(
        "lock",
        "take the app's lock and open a ledger entry",
    )];
    if let Some(image) = &f.redeploy {
        steps.push(planned(
            format!("redeploy {}", f.to),
            format!(
                "{} was retired: deploy it again from the ledger's image {image} (model {})",
                f.to, f.model_version
            ),
        ));
    }
    let to_addr = f
        .to_addr
        .clone()
        .unwrap_or_else(|| "its new load balancer".into());
    if f.finishing {
        steps.push(planned(
            "flip",
            format!(
                "none: the edge already serves {} (an earlier {} died after its flip)",
                f.to, f.action
            ),
        ));
    } else {
        steps.push(planned(
            format!("smoke {}", f.to),
            format!(
                "{} golden cases and {} requests against {to_addr}",
                f.cases, f.requests
            ),
        ));
        let invalidate = if f.invalidate {
            ", then invalidate /*"
        } else {
            ""
        };
        steps.push(planned(
            "flip",
            format!(
                "edge stack parameter OriginDomain: {} -> {to_addr} ({} -> {}); wait until CloudFront is Deployed{invalidate}",
                f.from_addr.as_deref().unwrap_or("-"),
                f.from,
                f.to
            ),
        ));
    }
    let back = if f.from_exists && f.from_addr.is_some() {
        format!("on failure flip back to {}", f.from)
    } else {
        format!("{} is gone: nothing to flip back to on failure", f.from)
    };
    steps.push(planned(
        "verify public URL",
        format!(
            "{} answers from {} ({} requests); {back}",
            f.public_url,
            f.to,
            f.requests.min(20)
        ),
    ));
    let (old_role, kept) = match f.action {
        "rollback" => ("failed", "kept for inspection (--keep-failed)"),
        _ => ("previous", "kept for an instant rollback"),
    };
    let mut roles = format!("{} live", f.to);
    if f.from_exists {
        roles.push_str(&format!(", {} {old_role}", f.from));
    }
    steps.push(planned("roles", roles));
    if f.from_exists {
        steps.push(if f.retire {
            planned(
                format!("retire {}", f.from),
                "delete its Deployment and Service",
            )
        } else {
            planned(format!("keep {}", f.from), kept)
        });
    }
    steps
}

/// What `release destroy` finds, as observed.
#[derive(Debug, Clone, Default)]
pub struct DestroyFacts {
    /// The colours (full names) whose objects exist.
    pub colours: Vec<String>,
    /// The cluster is reachable: its app objects (origin Secret, namespace) go too.
    pub cluster: bool,
    pub namespace: String,
    pub app: String,
    /// Each stack release made, with its status (`None`: absent), in deletion order: edge,
    /// cluster, network, then registry.
    pub stacks: Vec<(String, Option<String>)>,
    pub delete_images: bool,
    /// Images in the repository (`None`: no repository).
    pub images: Option<usize>,
    /// The state bucket, if it exists.
    pub bucket: Option<String>,
}

/// Every resource `release destroy` would delete, in its order, then what it keeps.
pub fn destroy_steps(f: &DestroyFacts) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    if f.bucket.is_some() {
        steps.push(planned(
            "lock",
            "take the app's lock and open a ledger entry",
        ));
    }
    for c in &f.colours {
        steps.push(planned(
            format!("delete {c}"),
            "its Deployment, Service, PodDisruptionBudget and NetworkPolicy",
        ));
    }
    if f.cluster {
        steps.push(planned(
            "delete app objects",
            format!(
                "Secret {}-origin, and namespace {} if release made it",
                f.app, f.namespace
            ),
        ));
        steps.push(planned(
            "load balancers",
            "wait until the Services and their NLBs are gone, while the cluster's controller can still delete them",
        ));
    }
    let (registry, others) = f
        .stacks
        .split_last()
        .map_or((None, &f.stacks[..]), |(r, o)| (Some(r), o));
    let delete_stack = |name: &str, status: &Option<String>| match status {
        Some(s) => planned(format!("delete {name}"), format!("stack ({s})")),
        None => planned(format!("delete {name}"), "none: absent"),
    };
    for (name, status) in others {
        steps.push(delete_stack(name, status));
    }
    if let Some((name, status)) = registry {
        if f.delete_images {
            if let Some(n) = f.images {
                steps.push(planned(
                    "delete images",
                    format!("{n} images in repository {}", f.app),
                ));
            }
            steps.push(delete_stack(name, status));
            if let Some(b) = &f.bucket {
                steps.push(planned(
                    format!("delete {b}"),
                    "every version of the ledger and the lock, then the bucket",
                ));
            }
        } else if status.is_some() {
            steps.push(planned(
                format!("keep {name}"),
                "it holds the images and the state bucket (--delete-images removes them)",
            ));
        }
    }
    steps
}

/// What updating a stack would change, worked out from its current template and parameters
/// (GetTemplate, DescribeStacks) and the new ones alone, so that a dry run needs no change set
/// (creating one is a write, needs write rights and can be left behind). Per resource of the
/// templates' `Resources`: `Add`, `Remove` or `Modify` with its type and logical id; then each
/// parameter whose value changes, and each the stack has that is not sent (it goes back to its
/// default). A changed parameter changes the resources that use it, which the change set would
/// name and this does not: the parameter line says so. Empty: nothing changes.
pub fn stack_changes(
    old_template: &str,
    new_template: &str,
    old_parameters: &BTreeMap<String, String>,
    new_parameters: &[(String, String)],
) -> Result<Vec<String>, String> {
    fn resources(template: &str, which: &str) -> Result<serde_yaml::Mapping, String> {
        let doc: serde_yaml::Value = serde_yaml::from_str(template)
            .map_err(|e| format!("the {which} template is not YAML or JSON: {e}"))?;
        Ok(doc
            .get("Resources")
            .and_then(|r| r.as_mapping())
            .cloned()
            .unwrap_or_default())
    }
    let kind = |r: &serde_yaml::Value| {
        r.get("Type")
            .and_then(|t| t.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let name = |k: &serde_yaml::Value| k.as_str().unwrap_or("?").to_string();
    let old = resources(old_template, "stack's current")?;
    let new = resources(new_template, "new")?;
    let mut changes = Vec::new();
    for (k, r) in &new {
        match old.get(k) {
            None => changes.push(format!("Add {} {}", kind(r), name(k))),
            Some(o) if o != r => changes.push(format!("Modify {} {}", kind(r), name(k))),
            Some(_) => {}
        }
    }
    for (k, r) in &old {
        if !new.contains_key(k) {
            changes.push(format!("Remove {} {}", kind(r), name(k)));
        }
    }
    for (k, v) in new_parameters {
        match old_parameters.get(k) {
            Some(o) if o == v => {}
            Some(o) => changes.push(format!("parameter {k}: {o} -> {v} (and what uses it)")),
            None => changes.push(format!("parameter {k}: set to {v} (and what uses it)")),
        }
    }
    for k in old_parameters.keys() {
        if !new_parameters.iter().any(|(n, _)| n == k) {
            changes.push(format!(
                "parameter {k}: back to its default (and what uses it)"
            ));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promote_facts() -> FlipFacts {
        FlipFacts {
            action: "promote",
            from: "iris-blue".into(),
            to: "iris-green".into(),
            from_exists: true,
            from_addr: Some("blue.lb".into()),
            to_addr: Some("green.lb".into()),
            redeploy: None,
            model_version: "v2".into(),
            finishing: false,
            cases: 6,
            requests: 50,
            public_url: "https://d1.cloudfront.net".into(),
            invalidate: false,
            retire: false,
        }
    }

    fn names(steps: &[PlannedStep]) -> Vec<&str> {
        steps.iter().map(|s| s.step.as_str()).collect()
    }

    #[test]
    fn a_promote_plan_smoke_tests_flips_the_origin_verifies_and_keeps_the_previous_colour() {
        let steps = flip_steps(&promote_facts());
        assert_eq!(
            names(&steps),
            [
                "lock",
                "smoke iris-green",
                "flip",
                "verify public URL",
                "roles",
                "keep iris-blue"
            ]
        );
        assert!(
            steps[1]
                .what
                .contains("6 golden cases and 50 requests against green.lb")
        );
        assert!(
            steps[2]
                .what
                .contains("OriginDomain: blue.lb -> green.lb (iris-blue -> iris-green)"),
            "{}",
            steps[2].what
        );
        assert!(!steps[2].what.contains("invalidate"));
        assert!(steps[3].what.contains("on failure flip back to iris-blue"));
        assert_eq!(steps[4].what, "iris-green live, iris-blue previous");
        let retiring = flip_steps(&FlipFacts {
            retire: true,
            invalidate: true,
            ..promote_facts()
        });
        assert_eq!(retiring.last().unwrap().step, "retire iris-blue");
        assert!(retiring[2].what.ends_with("then invalidate /*"));
    }

    #[test]
    fn a_rollback_to_a_retired_colour_redeploys_it_from_the_ledger_first() {
        let steps = flip_steps(&FlipFacts {
            action: "rollback",
            from: "iris-green".into(),
            to: "iris-blue".into(),
            from_addr: Some("green.lb".into()),
            to_addr: None,
            redeploy: Some("repo@sha256:abc".into()),
            model_version: "v1".into(),
            retire: true,
            ..promote_facts()
        });
        assert_eq!(
            names(&steps),
            [
                "lock",
                "redeploy iris-blue",
                "smoke iris-blue",
                "flip",
                "verify public URL",
                "roles",
                "retire iris-green"
            ]
        );
        assert!(steps[1].what.contains("repo@sha256:abc (model v1)"));
        assert!(steps[3].what.contains("green.lb -> its new load balancer"));
        assert_eq!(steps[5].what, "iris-blue live, iris-green failed");
    }

    #[test]
    fn finishing_an_earlier_flip_neither_smoke_tests_nor_flips_again() {
        let steps = flip_steps(&FlipFacts {
            finishing: true,
            ..promote_facts()
        });
        assert_eq!(
            names(&steps),
            [
                "lock",
                "flip",
                "verify public URL",
                "roles",
                "keep iris-blue"
            ]
        );
        assert!(
            steps[1]
                .what
                .starts_with("none: the edge already serves iris-green")
        );
    }

    #[test]
    fn destroy_lists_every_resource_in_order_and_keeps_the_registry_without_delete_images() {
        let facts = DestroyFacts {
            colours: vec!["iris-blue".into(), "iris-green".into()],
            cluster: true,
            namespace: "ml".into(),
            app: "iris".into(),
            stacks: vec![
                ("iris-edge".into(), Some("CREATE_COMPLETE".into())),
                ("iris-cluster".into(), Some("UPDATE_COMPLETE".into())),
                ("iris-network".into(), None),
                ("iris-registry".into(), Some("CREATE_COMPLETE".into())),
            ],
            delete_images: false,
            images: None,
            bucket: Some("iris-release-state".into()),
        };
        let steps = destroy_steps(&facts);
        assert_eq!(
            names(&steps),
            [
                "lock",
                "delete iris-blue",
                "delete iris-green",
                "delete app objects",
                "load balancers",
                "delete iris-edge",
                "delete iris-cluster",
                "delete iris-network",
                "keep iris-registry"
            ]
        );
        assert_eq!(steps[7].what, "none: absent");
        let all = destroy_steps(&DestroyFacts {
            delete_images: true,
            images: Some(3),
            ..facts
        });
        assert_eq!(
            names(&all)[8..],
            [
                "delete images",
                "delete iris-registry",
                "delete iris-release-state"
            ]
        );
        assert_eq!(all[8].what, "3 images in repository iris");
    }

    fn config() -> Config {
        crate::config::parse(
            "app: iris\nimage: {binary: ms, tag: abc}\ndeploy: {namespace: ml}\n",
            "f",
        )
        .unwrap()
    }

    #[test]
    fn every_stack_in_the_waves_has_its_parameters_and_waits_for_its_inputs() {
        let mut c = config();
        c.resolve_state_bucket("123456789012", "eu-west-1").unwrap();
        let mut outputs = Outputs::new();
        assert!(
            stack_parameters("network", &c, &outputs)
                .unwrap()
                .contains(&("VpcCidr".into(), "10.40.0.0/16".into()))
        );
        assert!(
            stack_parameters("registry", &c, &outputs)
                .unwrap()
                .contains(&(
                    "StateBucketName".into(),
                    "iris-release-123456789012-eu-west-1".into()
                ))
        );
        let missing = stack_parameters("cluster", &c, &outputs).unwrap_err();
        assert!(
            missing.contains("iris-network") && missing.contains("PrivateSubnetIds"),
            "{missing}"
        );
        outputs
            .entry("network".into())
            .or_default()
            .insert("PrivateSubnetIds".into(), "subnet-1,subnet-2".into());
        let cluster = stack_parameters("cluster", &c, &outputs).unwrap();
        assert!(cluster.contains(&("SubnetIds".into(), "subnet-1,subnet-2".into())));
        assert!(cluster.contains(&("Namespace".into(), "ml".into())));
        // Each wave only needs what earlier waves produce.
        let flat: Vec<&str> = UP_WAVES.iter().flat_map(|w| w.iter().copied()).collect();
        assert_eq!(flat, ["network", "registry", "cluster"]);
    }

    #[test]
    fn the_actor_is_the_ci_build_when_there_is_one() {
        let ci = |k: &str| match k {
            "CIRCLE_BUILD_URL" => Some("https://circleci.com/gh/o/r/42".to_string()),
            "CIRCLE_USERNAME" => Some("dev".to_string()),
            _ => None,
        };
        assert_eq!(
            actor(ci),
            (
                "dev@unknown-host".into(),
                Some("https://circleci.com/gh/o/r/42".into())
            )
        );
        let local = |k: &str| match k {
            "USER" => Some("ana".to_string()),
            "HOSTNAME" => Some("laptop".to_string()),
            _ => None,
        };
        assert_eq!(actor(local), ("ana@laptop".into(), None));
    }

    #[test]
    fn stack_changes_names_each_resource_and_parameter_that_differs() {
        let old = "Resources:\n  Vpc:\n    Type: AWS::EC2::VPC\n    Properties: {CidrBlock: !Ref VpcCidr}\n  Gone:\n    Type: AWS::S3::Bucket\n  Same:\n    Type: AWS::SNS::Topic\n";
        let new = "Resources:\n  Vpc:\n    Type: AWS::EC2::VPC\n    Properties: {CidrBlock: !Sub '${VpcCidr}'}\n  Same:\n    Type: AWS::SNS::Topic\n  Added:\n    Type: AWS::EC2::Subnet\n";
        let was: BTreeMap<String, String> = [
            ("AppName", "iris"),
            ("VpcCidr", "10.0.0.0/16"),
            ("Old", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sent = vec![
            ("AppName".to_string(), "iris".to_string()),
            ("VpcCidr".to_string(), "10.1.0.0/16".to_string()),
        ];
        assert_eq!(
            stack_changes(old, new, &was, &sent).unwrap(),
            [
                "Modify AWS::EC2::VPC Vpc",
                "Add AWS::EC2::Subnet Added",
                "Remove AWS::S3::Bucket Gone",
                "parameter VpcCidr: 10.0.0.0/16 -> 10.1.0.0/16 (and what uses it)",
                "parameter Old: back to its default (and what uses it)",
            ]
        );
        // The same template (as JSON, as GetTemplate may return it) and parameters: nothing.
        let json = r#"{"Resources": {"Same": {"Type": "AWS::SNS::Topic"}}}"#;
        let same = "Resources:\n  Same:\n    Type: AWS::SNS::Topic\n";
        assert!(
            stack_changes(json, same, &BTreeMap::new(), &[])
                .unwrap()
                .is_empty()
        );
        assert!(stack_changes("{not: [yaml", same, &BTreeMap::new(), &[]).is_err());
    }
}
