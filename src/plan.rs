//! The pure core of `release up`: which stacks, in which order, with which parameters. No I/O:
//! the observed world comes in, decisions come out.

use std::collections::BTreeMap;

use crate::config::Config;

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
        let c = config();
        let mut outputs = Outputs::new();
        assert!(
            stack_parameters("network", &c, &outputs)
                .unwrap()
                .contains(&("VpcCidr".into(), "10.40.0.0/16".into()))
        );
        assert!(
            stack_parameters("registry", &c, &outputs)
                .unwrap()
                .contains(&("StateBucketName".into(), "iris-release-state".into()))
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
}
