//! The pure core of `release up`: which stacks, in which order, with which parameters. No I/O:
//! the observed world comes in, decisions come out.

use std::collections::BTreeMap;

use crate::config::Config;

pub mod bake;
pub mod colour;
pub mod contract;
pub mod destroy;
pub mod flip;
pub mod images;
pub mod notify;
pub mod retire;
pub mod rotate;
pub mod scan;
pub mod shadow;
pub mod stack;
pub mod up;

/// The step that installs the AWS Load Balancer Controller (`addons`).
pub const CONTROLLER_STEP: &str = "load balancer controller";

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
            p(
                "OperatorRoleArn",
                config.stacks.operator_role_arn.clone().unwrap_or_default(),
            ),
            p(
                "PermissionsBoundaryArn",
                config
                    .stacks
                    .permissions_boundary_arn
                    .clone()
                    .unwrap_or_default(),
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
    /// What undoes it if a later step fails, when something does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
}

pub fn planned(step: impl Into<String>, what: impl Into<String>) -> PlannedStep {
    PlannedStep {
        step: step.into(),
        what: what.into(),
        undo: None,
    }
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
        // The boundary and the operator's access are the config's (empty: none).
        assert!(cluster.contains(&("PermissionsBoundaryArn".into(), String::new())));
        c.stacks.permissions_boundary_arn = Some("arn:aws:iam::1:policy/b".into());
        let cluster = stack_parameters("cluster", &c, &outputs).unwrap();
        assert!(cluster.contains(&(
            "PermissionsBoundaryArn".into(),
            "arn:aws:iam::1:policy/b".into()
        )));
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
