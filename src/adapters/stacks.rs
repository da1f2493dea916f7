//! CloudFormation: stacks created or updated through change sets ("no changes" is success), a
//! stack left in ROLLBACK_COMPLETE by an earlier failed create deleted and made again, waits with
//! progress, and on failure the failed events (resource, status, reason).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, ChangeSetStatus, ChangeSetType, Parameter, Stack};

use crate::error::{Exit, Failure, Result, sdk};
use crate::plan::stack::StackPhase;
use crate::wait::{self, Check, Deadline};

/// The parameters the code sends and the outputs it reads, per template: checked against the
/// templates by a test, so neither side can drift.
pub const PARAMETERS: &[(&str, &[&str])] = &[
    ("network", &["AppName", "VpcCidr"]),
    ("registry", &["AppName", "StateBucketName"]),
    (
        "cluster",
        &[
            "AppName",
            "KubernetesVersion",
            "SubnetIds",
            "Namespace",
            "DeployerRoleArn",
            "OperatorRoleArn",
            "PermissionsBoundaryArn",
        ],
    ),
    (
        "edge",
        &[
            "AppName",
            "OriginDomain",
            "OriginHttpPort",
            "OriginSecret",
            "OriginAccess",
            "LiveColour",
            "BlueOriginArn",
            "GreenOriginArn",
        ],
    ),
];
pub const OUTPUTS: &[(&str, &[&str])] = &[
    ("network", &["VpcId", "PrivateSubnetIds", "PublicSubnetIds"]),
    (
        "registry",
        &["RepositoryName", "RepositoryUri", "StateBucketName"],
    ),
    (
        "cluster",
        &[
            "ClusterName",
            "ClusterEndpoint",
            "ClusterCertificateAuthority",
        ],
    ),
    ("edge", &["DistributionId", "DistributionDomainName"]),
];

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
}

impl Observed {
    fn from(stack: &Stack) -> Self {
        Observed {
            status: stack.stack_status().map(|s| s.as_str().to_string()),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
                .collect(),
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_string(),
                        p.parameter_value()?.to_string(),
                    ))
                })
                .collect(),
        }
    }

    pub fn exists(&self) -> bool {
        self.phase() != StackPhase::Absent
    }

    pub fn phase(&self) -> StackPhase {
        StackPhase::of(self.status.as_deref())
    }

    /// The status as CloudFormation names it; a stack that does not exist is `DELETE_COMPLETE`.
    pub fn status_text(&self) -> String {
        self.status
            .clone()
            .unwrap_or_else(|| "DELETE_COMPLETE".into())
    }

    pub fn output(&self, stack: &str, key: &str) -> Result<String> {
        self.outputs.get(key).cloned().ok_or_else(|| {
            Failure::new(
                Exit::Aws,
                format!("stack {stack}"),
                format!("the stack has no output {key}"),
                "the template in use is not the one release expects; run release up to update it",
            )
        })
    }
}

/// What a stack deployment will do (dry run) or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create { resources: Vec<String> },
    Update { changes: Vec<String> },
    Recreate { resources: Vec<String> },
    Nothing,
}

impl Change {
    pub fn describe(&self) -> String {
        match self {
            Change::Create { resources } => format!("create ({})", resources.join(", ")),
            Change::Recreate { resources } => format!(
                "delete the stack left by a failed create, then create ({})",
                resources.join(", ")
            ),
            Change::Update { changes } => format!("update: {}", changes.join(", ")),
            Change::Nothing => "no changes".into(),
        }
    }
}

#[derive(Clone)]
pub struct Stacks {
    cfn: aws_sdk_cloudformation::Client,
    timeout: Duration,
    poll: Duration,
    role_arn: Option<String>,
}

/// `set`'s values, and every other parameter the stack has kept as it is (`UsePreviousValue`). A
/// stack's parameters cannot be copied back from DescribeStacks: it returns a `NoEcho` value (the
/// edge's `OriginSecret`) masked as `****` (CloudFormation User Guide, "Parameters", NoEcho; API
/// reference, `Parameter.UsePreviousValue`), and sending the mask back fails the parameter's
/// MinLength, or worse, makes the mask the new secret.
pub fn keeping(existing: &Observed, set: &[(String, String)]) -> Vec<Parameter> {
    let mut out = params(set);
    for key in existing.parameters.keys() {
        if !set.iter().any(|(k, _)| k == key) {
            out.push(
                Parameter::builder()
                    .parameter_key(key)
                    .use_previous_value(true)
                    .build(),
            );
        }
    }
    out
}

fn params(p: &[(String, String)]) -> Vec<Parameter> {
    p.iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect()
}

fn no_changes(reason: &str) -> bool {
    reason.contains("didn't contain changes") || reason.contains("No updates are to be performed")
}

fn resources_of(template: &str) -> Vec<String> {
    serde_yaml::from_str::<serde_yaml::Value>(template)
        .ok()
        .and_then(|v| {
            v.get("Resources").and_then(|r| r.as_mapping()).map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        Some(format!("{} {}", v.get("Type")?.as_str()?, k.as_str()?))
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Failed events after a status, one per line; nothing when there are none.
fn listed(events: &[String]) -> String {
    if events.is_empty() {
        String::new()
    } else {
        format!(":\n    {}", events.join("\n    "))
    }
}

/// A stack an earlier operation left in a `*_FAILED` state: `release` will not guess how to go on.
fn left_failed(name: &str, status: &str) -> Failure {
    Failure::new(
        Exit::Aws,
        format!("stack {name}"),
        format!("the stack is in {status} from an earlier operation"),
        "resolve it in the CloudFormation console (continue the rollback, or delete the stack), then re-run",
    )
}

impl Stacks {
    pub fn new(
        cfn: aws_sdk_cloudformation::Client,
        timeout: Duration,
        role_arn: Option<String>,
    ) -> Self {
        let poll = if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        Stacks {
            cfn,
            timeout,
            poll,
            role_arn,
        }
    }

    pub async fn observe(&self, name: &str) -> Result<Observed> {
        match self.cfn.describe_stacks().stack_name(name).send().await {
            Ok(out) => Ok(out.stacks().first().map(Observed::from).unwrap_or_default()),
            Err(e) => {
                let text = sdk(e);
                if text.contains("does not exist") {
                    Ok(Observed::default())
                } else {
                    Err(Failure::new(
                        Exit::Aws,
                        format!("stack {name}"),
                        text,
                        "check your AWS credentials and region",
                    ))
                }
            }
        }
    }

    /// The dry run: what `deploy` would do, changing nothing and writing nothing: read-only calls
    /// (DescribeStacks, GetTemplate with `TemplateStage=Original`, CloudFormation API reference)
    /// and [`crate::plan::stack_changes`], no change set.
    pub async fn plan(
        &self,
        name: &str,
        template: &str,
        parameters: &[(String, String)],
    ) -> Result<Change> {
        let observed = self.observe(name).await?;
        // As `deploy` decides: it recreates a stack with nothing in it, refuses a failed one, and
        // waits for one in progress (the plan is then of the stack as it is now).
        match observed.phase() {
            StackPhase::Absent => {
                return Ok(Change::Create {
                    resources: resources_of(template),
                });
            }
            p if p.recreate() => {
                return Ok(Change::Recreate {
                    resources: resources_of(template),
                });
            }
            StackPhase::Failed => return Err(left_failed(name, &observed.status_text())),
            _ => {}
        }
        let current = self
            .cfn
            .get_template()
            .stack_name(name)
            .template_stage(aws_sdk_cloudformation::types::TemplateStage::Original)
            .send()
            .await
            .map_err(|e| self.fail(name, sdk(e)))?;
        let changes = crate::plan::stack_changes(
            current.template_body().unwrap_or_default(),
            template,
            &observed.parameters,
            parameters,
        )
        .map_err(|e| self.fail(name, e))?;
        Ok(if changes.is_empty() {
            Change::Nothing
        } else {
            Change::Update { changes }
        })
    }

    fn fail(&self, name: &str, message: String) -> Failure {
        Failure::new(
            Exit::Aws,
            format!("stack {name}"),
            message,
            "see the stack's events in the CloudFormation console; fix the template or parameters and re-run",
        )
    }

    async fn change_set(
        &self,
        name: &str,
        template: &str,
        parameters: Vec<Parameter>,
        kind: ChangeSetType,
    ) -> Result<(String, ChangeSetStatus, String)> {
        let cs_name = format!("release-{}", crate::adapters::store::now());
        let created = self
            .cfn
            .create_change_set()
            .stack_name(name)
            .change_set_name(&cs_name)
            .change_set_type(kind)
            .template_body(template)
            .set_parameters(Some(parameters))
            .capabilities(Capability::CapabilityNamedIam)
            .set_role_arn(self.role_arn.clone())
            .send()
            .await;
        let id = match created {
            Ok(out) => out.id().unwrap_or(&cs_name).to_string(),
            Err(e) => {
                let text = sdk(e);
                if no_changes(&text) {
                    return Ok((String::new(), ChangeSetStatus::Failed, text));
                }
                return Err(self.fail(name, format!("creating a change set: {text}")));
            }
        };
        let (status, reason) = wait::until(
            self.deadline(),
            async || {
                let d = self
                    .cfn
                    .describe_change_set()
                    .change_set_name(&id)
                    .send()
                    .await
                    .map_err(|e| self.fail(name, sdk(e)))?;
                Ok(match d.status() {
                    Some(ChangeSetStatus::CreateComplete) => {
                        Check::Done((ChangeSetStatus::CreateComplete, String::new()))
                    }
                    Some(ChangeSetStatus::Failed) => Check::Done((
                        ChangeSetStatus::Failed,
                        d.status_reason().unwrap_or_default().to_string(),
                    )),
                    _ => Check::Pending(()),
                })
            },
            |(), _| self.fail(name, "the change set was not ready in time".into()),
        )
        .await?;
        Ok((id, status, reason))
    }

    fn deadline(&self) -> Deadline {
        Deadline::new(self.timeout, self.poll)
    }

    /// What a ready change set changes, each as "add AWS::EKS::Addon CoreDnsAddon" (DescribeChangeSet's
    /// ResourceChange: Action, ResourceType, LogicalResourceId); empty when it cannot be read.
    async fn change_set_changes(&self, id: &str) -> Vec<String> {
        let Ok(described) = self
            .cfn
            .describe_change_set()
            .change_set_name(id)
            .send()
            .await
        else {
            return Vec::new();
        };
        described
            .changes()
            .iter()
            .filter_map(|c| c.resource_change())
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.action()
                        .map(|a| a.as_str().to_lowercase())
                        .unwrap_or_default(),
                    r.resource_type().unwrap_or_default(),
                    r.logical_resource_id().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Create or update the stack to `template` with `parameters`; returns what changed and the
    /// stack's outputs afterwards.
    pub async fn deploy(
        &self,
        name: &str,
        template: &str,
        parameters: &[(String, String)],
        progress: impl FnMut(&str),
    ) -> Result<(Change, Observed)> {
        self.deploy_with(name, template, params(parameters), progress)
            .await
    }

    /// The stack as a deployment can start from: an operation in progress waited for first,
    /// then a stack left failed refused and one an earlier failed create left behind deleted
    /// (`true`: it will be made again).
    async fn settle(
        &self,
        name: &str,
        progress: &mut impl FnMut(&str),
    ) -> Result<(Observed, bool)> {
        let mut observed = self.observe(name).await?;
        // What an operation in progress ends in is decided as a stack found that way would be (a
        // create that failed meanwhile is made again).
        if observed.phase() == StackPhase::InProgress {
            let s = observed.status_text();
            progress(&format!("waiting for the operation in progress ({s})"));
            observed = self.wait(name, &mut *progress).await?;
        }
        match observed.phase() {
            StackPhase::Failed => Err(left_failed(name, &observed.status_text())),
            p if p.recreate() => {
                progress("deleting the stack an earlier failed create left behind");
                self.delete(name, &mut *progress).await?;
                Ok((Observed::default(), true))
            }
            _ => Ok((observed, false)),
        }
    }

    /// [`Stacks::deploy`] with parameters as CloudFormation takes them (see [`keeping`]).
    pub async fn deploy_with(
        &self,
        name: &str,
        template: &str,
        parameters: Vec<Parameter>,
        mut progress: impl FnMut(&str),
    ) -> Result<(Change, Observed)> {
        let (observed, recreated) = self.settle(name, &mut progress).await?;
        let kind = if observed.exists() {
            ChangeSetType::Update
        } else {
            ChangeSetType::Create
        };
        let (id, status, reason) = self
            .change_set(name, template, parameters, kind.clone())
            .await?;
        if status == ChangeSetStatus::Failed {
            if !id.is_empty() {
                let _ = self
                    .cfn
                    .delete_change_set()
                    .change_set_name(&id)
                    .send()
                    .await;
            }
            if no_changes(&reason) {
                return Ok((Change::Nothing, observed));
            }
            return Err(self.fail(name, format!("the change set failed: {reason}")));
        }
        let changes = if kind == ChangeSetType::Update {
            self.change_set_changes(&id).await
        } else {
            Vec::new()
        };
        let since = aws_sdk_cloudformation::primitives::DateTime::from(
            std::time::SystemTime::now() - Duration::from_secs(1),
        );
        progress(if kind == ChangeSetType::Create {
            "creating"
        } else {
            "updating"
        });
        self.cfn
            .execute_change_set()
            .change_set_name(&id)
            .send()
            .await
            .map_err(|e| self.fail(name, format!("executing the change set: {}", sdk(e))))?;
        let after = self.wait(name, &mut progress).await?;
        let status = after.status_text();
        if status == "CREATE_COMPLETE" || status == "UPDATE_COMPLETE" {
            let resources = resources_of(template);
            let change = match (kind, recreated) {
                (ChangeSetType::Create, true) => Change::Recreate { resources },
                (ChangeSetType::Create, false) => Change::Create { resources },
                _ => Change::Update { changes },
            };
            return Ok((change, after));
        }
        let events = self.failed_events(name, since).await;
        Err(Failure::new(
            Exit::Aws,
            format!("stack {name}"),
            format!("the stack ended in {status}{}", listed(&events)),
            if after.phase() == StackPhase::FailedCreate {
                "fix the cause above and re-run; release deletes the failed stack and creates it again".to_string()
            } else {
                "fix the cause above and re-run; the stack was rolled back to its previous state"
                    .to_string()
            },
        ))
    }

    async fn wait(&self, name: &str, progress: &mut impl FnMut(&str)) -> Result<Observed> {
        let mut last = String::new();
        wait::until(
            self.deadline(),
            async || {
                let o = self.observe(name).await?;
                let status = o.status_text();
                if status != last {
                    progress(&status);
                    last = status.clone();
                }
                Ok(if o.phase().settled() {
                    Check::Done(o)
                } else {
                    Check::Pending(status)
                })
            },
            |status, _| {
                Failure::new(
                    Exit::Aws,
                    format!("stack {name}"),
                    format!("still {status} after {:?}", self.timeout),
                    "wait for CloudFormation to finish, then re-run (stacks.timeout_minutes sets the wait)",
                )
            },
        )
        .await
    }

    pub async fn delete(&self, name: &str, progress: &mut impl FnMut(&str)) -> Result<()> {
        let since =
            aws_sdk_cloudformation::primitives::DateTime::from(std::time::SystemTime::now());
        self.cfn
            .delete_stack()
            .stack_name(name)
            .set_role_arn(self.role_arn.clone())
            .send()
            .await
            .map_err(|e| self.fail(name, format!("deleting: {}", sdk(e))))?;
        let o = self.wait(name, progress).await?;
        if o.phase() == StackPhase::Absent {
            return Ok(());
        }
        // The resources that could not be deleted, and why (often something made outside the
        // stack in its VPC: a load balancer's network interface).
        let events = self.failed_events(name, since).await;
        Err(self.fail(
            name,
            format!("delete ended in {}{}", o.status_text(), listed(&events)),
        ))
    }

    /// "resource (type) STATUS: reason" for every failed event since `since`.
    pub async fn failed_events(
        &self,
        name: &str,
        since: aws_sdk_cloudformation::primitives::DateTime,
    ) -> Vec<String> {
        let Ok(out) = self
            .cfn
            .describe_stack_events()
            .stack_name(name)
            .send()
            .await
        else {
            return vec![];
        };
        out.stack_events()
            .iter()
            .filter(|e| e.timestamp().is_none_or(|t| t.secs() >= since.secs()))
            .filter(|e| {
                e.resource_status()
                    .is_some_and(|s| s.as_str().ends_with("_FAILED"))
            })
            .map(|e| {
                format!(
                    "{} ({}) {}: {}",
                    e.logical_resource_id().unwrap_or("?"),
                    e.resource_type().unwrap_or("?"),
                    e.resource_status().map(|s| s.as_str()).unwrap_or("?"),
                    e.resource_status_reason().unwrap_or("")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_every_parameter_it_does_not_set_without_sending_its_masked_value() {
        let edge = Observed {
            status: Some("UPDATE_COMPLETE".into()),
            parameters: [
                ("AppName", "iris"),
                ("OriginDomain", "blue.lb"),
                ("OriginSecret", "****"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Observed::default()
        };
        let sent = keeping(&edge, &[("OriginDomain".into(), "green.lb".into())]);
        let by_key = |k: &str| sent.iter().find(|p| p.parameter_key() == Some(k)).unwrap();
        assert_eq!(sent.len(), 3);
        assert_eq!(by_key("OriginDomain").parameter_value(), Some("green.lb"));
        for k in ["AppName", "OriginSecret"] {
            assert_eq!(by_key(k).use_previous_value(), Some(true), "{k}");
            assert_eq!(
                by_key(k).parameter_value(),
                None,
                "{k}: no value, masked or not"
            );
        }
    }

    fn template(name: &str) -> serde_yaml::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("cloudformation")
            .join(format!("{name}.yaml"));
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn keys(v: &serde_yaml::Value, section: &str) -> Vec<String> {
        v.get(section)
            .and_then(|s| s.as_mapping())
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_parameter_sent_is_declared_and_every_output_read_is_produced() {
        for (name, sent) in PARAMETERS {
            let t = template(name);
            let declared = keys(&t, "Parameters");
            for p in *sent {
                assert!(
                    declared.contains(&p.to_string()),
                    "{name}.yaml does not declare the parameter {p} the code sends"
                );
            }
            // A declared parameter without a default must be one the code sends.
            for d in &declared {
                let has_default = t["Parameters"][d.as_str()].get("Default").is_some();
                assert!(
                    has_default || sent.contains(&d.as_str()),
                    "{name}.yaml requires {d}, which the code never sends"
                );
            }
        }
        for (name, read) in OUTPUTS {
            let produced = keys(&template(name), "Outputs");
            for o in *read {
                assert!(
                    produced.contains(&o.to_string()),
                    "{name}.yaml does not produce the output {o} the code reads"
                );
            }
        }
        // The planner's parameters are the ones listed here.
        let config =
            crate::config::parse("app: iris\nimage: {binary: ms, tag: abc}\n", "f").unwrap();
        let mut outputs = crate::plan::Outputs::new();
        outputs
            .entry("network".into())
            .or_default()
            .insert("PrivateSubnetIds".into(), "a,b".into());
        for wave in crate::plan::UP_WAVES {
            for t in wave.iter() {
                let sent: Vec<String> = crate::plan::stack_parameters(t, &config, &outputs)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let listed: Vec<String> = PARAMETERS
                    .iter()
                    .find(|(n, _)| n == t)
                    .unwrap()
                    .1
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                assert_eq!(sent, listed, "{t}");
            }
        }
    }

    #[test]
    fn no_change_messages_from_both_apis_are_recognised() {
        assert!(no_changes(
            "The submitted information didn't contain changes. Submit different information to create a change set."
        ));
        assert!(no_changes(
            "ValidationError: No updates are to be performed."
        ));
        assert!(!no_changes("Template format error"));
    }
}
