//! What the cluster needs before a colour's Service can get its NLB: the AWS Load Balancer
//! Controller (kube-templates/addons/, pinned to [`LB_CONTROLLER_VERSION`]) with the IAM role the
//! cluster stack makes for it, and CoreDNS running (the cluster stack's add-on puts it on
//! Fargate; without DNS the controller cannot reach AWS). Installed with server-side apply, its
//! webhook certificate made here once and kept, and waited for: the controller's Service webhook
//! has failurePolicy Fail, so a colour applied before it answers would be refused.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::adapters::colour::MANAGER;
use crate::error::{Exit, Failure, Result};

/// The controller's release (its Helm chart's appVersion), pinned: the policy in
/// cloudformation/cluster.yaml is the one published for it.
pub const LB_CONTROLLER_VERSION: &str = "v3.5.0";
pub const NAMESPACE: &str = "kube-system";
pub const CONTROLLER: &str = "aws-load-balancer-controller";
const COREDNS: &str = "coredns";
const WEBHOOK_SECRET: &str = "aws-load-balancer-tls";
const WEBHOOK_SERVICE: &str = "aws-load-balancer-webhook-service";
/// The name of both webhook configurations, mutating and validating.
const WEBHOOKS: &str = "aws-load-balancer-webhook";
const WEBHOOK_HOST: &str = "aws-load-balancer-webhook-service.kube-system.svc";
const MANIFEST: &str =
    include_str!("../../kube-templates/addons/aws-load-balancer-controller.yaml");
pub const STEP: &str = crate::plan::CONTROLLER_STEP;

/// What the controller is installed for.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub cluster: String,
    pub region: String,
    pub vpc_id: String,
    pub role_arn: String,
}

/// The webhook's CA and serving certificate and key, PEM.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn failure(message: impl Into<String>, hint: &str) -> Failure {
    Failure::new(Exit::Aws, STEP, message, hint)
}

fn kube_err(e: kube::Error) -> Failure {
    failure(
        e.to_string(),
        "check the cluster's API and your access to it (access entries)",
    )
    .because(e)
}

/// A CA of the webhook's own and a certificate for its Service's DNS names, valid 10 years.
pub fn webhook_tls() -> std::result::Result<WebhookTls, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| format!("making the webhook certificate: {e}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let year = 1970 + (now / 31_556_952) as i32;
    let validity = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "aws-load-balancer-controller-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(e)?).map_err(e)?;
    let mut leaf = CertificateParams::new(vec![
        WEBHOOK_HOST.to_string(),
        format!("{WEBHOOK_HOST}.cluster.local"),
    ])
    .map_err(e)?;
    leaf.distinguished_name
        .push(DnType::CommonName, WEBHOOK_HOST);
    validity(&mut leaf);
    let key = KeyPair::generate().map_err(e)?;
    let cert = leaf.signed_by(&key, &ca).map_err(e)?;
    Ok(WebhookTls {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A hash of what is installed, apart from the certificate: the same inputs and version hash the
/// same, so an `up` with nothing to change applies nothing.
fn fingerprint(inputs: &Inputs) -> String {
    let text = format!(
        "{LB_CONTROLLER_VERSION}\n{}\n{}\n{}\n{}\n{:x}",
        inputs.cluster,
        inputs.region,
        inputs.vpc_id,
        inputs.role_arn,
        Sha256::digest(MANIFEST)
    );
    format!("{:x}", Sha256::digest(text))[..16].to_string()
}

/// The controller's manifests, in the order they are applied (CRDs and identity first, the
/// webhooks last, once what serves them exists).
pub fn render(inputs: &Inputs, tls: &WebhookTls) -> std::result::Result<Vec<Value>, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("controller", MANIFEST)
        .map_err(|e| format!("kube-templates/addons: {e}"))?;
    let ca_hash = format!("{:x}", Sha256::digest(&tls.ca))[..16].to_string();
    let text = env
        .get_template("controller")
        .and_then(|t| {
            t.render(minijinja::context! {
                version => LB_CONTROLLER_VERSION, cluster => inputs.cluster,
                region => inputs.region, vpc_id => inputs.vpc_id, role_arn => inputs.role_arn,
                ca_bundle => b64(&tls.ca), tls_crt => b64(&tls.cert), tls_key => b64(&tls.key),
                hash => fingerprint(inputs), ca_hash => ca_hash,
            })
        })
        .map_err(|e| format!("kube-templates/addons: {e}"))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .map_err(|e| format!("kube-templates/addons renders to invalid YAML: {e}"))
        })
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

/// What is installed now.
#[derive(Debug, Clone, PartialEq)]
pub enum Installed {
    /// No controller Deployment.
    Missing,
    /// Installed by `release` for these inputs (the hash), or not (another version, by hand);
    /// `drift` names what of the rest is missing or no longer matches (the Secret, the webhook
    /// Service, the webhook configurations and their caBundle), which only a re-apply repairs.
    Present {
        hash: Option<String>,
        ready: bool,
        drift: Option<String>,
    },
}

/// What to do about the controller (pure): None when it is installed for these inputs and ready.
pub fn decide(installed: &Installed, inputs: &Inputs) -> Option<String> {
    match installed {
        Installed::Missing => Some(format!(
            "install the AWS Load Balancer Controller {LB_CONTROLLER_VERSION} in {NAMESPACE} (IRSA role {}, VPC {})",
            inputs.role_arn, inputs.vpc_id
        )),
        Installed::Present {
            hash,
            drift: Some(drift),
            ..
        } if hash.as_deref() == Some(&fingerprint(inputs)) => Some(format!(
            "repair the AWS Load Balancer Controller {LB_CONTROLLER_VERSION}: {drift}"
        )),
        Installed::Present { hash, ready, .. } if hash.as_deref() == Some(&fingerprint(inputs)) => {
            (!ready).then(|| {
                format!(
                    "wait for the AWS Load Balancer Controller {LB_CONTROLLER_VERSION} to be ready"
                )
            })
        }
        Installed::Present { .. } => Some(format!(
            "update the AWS Load Balancer Controller in {NAMESPACE} to {LB_CONTROLLER_VERSION} for these settings (IRSA role {}, VPC {})",
            inputs.role_arn, inputs.vpc_id
        )),
    }
}

fn available(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas.unwrap_or(0) >= want
        && s.available_replicas.unwrap_or(0) >= want
        && s.replicas.unwrap_or(0) <= want
}

pub async fn observe(client: &kube::Client) -> Result<Installed> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    Ok(
        match deployments.get_opt(CONTROLLER).await.map_err(kube_err)? {
            None => Installed::Missing,
            Some(d) => Installed::Present {
                hash: d
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("release/addon-hash"))
                    .cloned(),
                ready: available(&d),
                drift: drift(client).await?,
            },
        },
    )
}

/// What of the controller's other objects is missing or stale: a run that stopped between its
/// applies, a Secret deleted by hand (restarted pods cannot mount it), a webhook whose caBundle is
/// not the kept certificate's CA (every Service is then refused, "unknown authority").
async fn drift(client: &kube::Client) -> Result<Option<String>> {
    let Some(tls) = kept_tls(client).await? else {
        return Ok(Some(format!(
            "the webhook certificate's Secret {WEBHOOK_SECRET} is missing or incomplete"
        )));
    };
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    if services
        .get_opt(WEBHOOK_SERVICE)
        .await
        .map_err(kube_err)?
        .is_none()
    {
        return Ok(Some(format!(
            "the webhook Service {WEBHOOK_SERVICE} is missing"
        )));
    }
    let ca = tls.ca.into_bytes();
    let stale = |bundles: Vec<Option<&ByteString>>| {
        bundles.is_empty() || bundles.iter().any(|b| b.is_none_or(|b| b.0 != ca))
    };
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(WEBHOOKS)
        .await
        .map_err(kube_err)?;
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(WEBHOOKS)
        .await
        .map_err(kube_err)?;
    Ok(match (mutating, validating) {
        (None, _) => Some(format!(
            "the MutatingWebhookConfiguration {WEBHOOKS} is missing"
        )),
        (_, None) => Some(format!(
            "the ValidatingWebhookConfiguration {WEBHOOKS} is missing"
        )),
        (Some(m), Some(v)) => {
            let m: Vec<_> = m
                .webhooks
                .iter()
                .flatten()
                .map(|w| w.client_config.ca_bundle.as_ref())
                .collect();
            let v: Vec<_> = v
                .webhooks
                .iter()
                .flatten()
                .map(|w| w.client_config.ca_bundle.as_ref())
                .collect();
            (stale(m) || stale(v)).then(|| {
                format!(
                    "the webhooks' caBundle is not the CA of the certificate in {WEBHOOK_SECRET}"
                )
            })
        }
    })
}

/// The webhook certificate kept in its Secret, when it is whole.
async fn kept_tls(client: &kube::Client) -> Result<Option<WebhookTls>> {
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let Some(s) = secrets.get_opt(WEBHOOK_SECRET).await.map_err(kube_err)? else {
        return Ok(None);
    };
    let data = s.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).to_string())
    };
    Ok(match (get("ca.crt"), get("tls.crt"), get("tls.key")) {
        (Some(ca), Some(cert), Some(key)) => Some(WebhookTls { ca, cert, key }),
        _ => None,
    })
}

async fn apply_one(client: &kube::Client, obj: &Value) -> Result<()> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(kube_err)?;
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE),
            &resource,
        ),
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| {
        failure(
            format!("applying {kind} {name}: {e}"),
            "check the cluster's API and your access to it; then re-run release up",
        )
    })?;
    Ok(())
}

/// Why the controller or CoreDNS is not ready yet, from their pods: a waiting reason, the last
/// log line of a crashing container, or why a pod is not scheduled.
async fn why_not_ready(client: &kube::Client) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let mut out = Vec::new();
    for (what, labels) in [
        (
            CONTROLLER,
            "app.kubernetes.io/name=aws-load-balancer-controller",
        ),
        (COREDNS, "k8s-app=kube-dns"),
    ] {
        let Ok(list) = pods.list(&ListParams::default().labels(labels)).await else {
            continue;
        };
        if list.items.is_empty() {
            out.push(format!("{what}: no pods"));
        }
        for p in list.items.iter().take(1) {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.clone().unwrap_or_default();
            if let Some(c) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            {
                out.push(format!(
                    "{what}: pod {name} is not scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ));
                continue;
            }
            let Some(cs) = status.container_statuses.iter().flatten().next() else {
                out.push(format!(
                    "{what}: pod {name} is {}",
                    status.phase.unwrap_or_default()
                ));
                continue;
            };
            if cs.ready {
                continue;
            }
            let waiting = cs
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .unwrap_or_else(|| "not ready".into());
            let log = pods
                .logs(
                    &name,
                    &LogParams {
                        tail_lines: Some(1),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_default();
            let log = log.trim();
            out.push(if log.is_empty() {
                format!("{what}: pod {name} is {waiting}")
            } else {
                format!("{what}: pod {name} is {waiting}, its log: {log}")
            });
        }
    }
    if out.is_empty() {
        "its pods are starting".into()
    } else {
        out.join("; ")
    }
}

/// Install or update the controller when [`decide`] says so, and wait until it and CoreDNS are
/// ready; what was done, or None when it was already in place.
pub async fn ensure(
    client: &kube::Client,
    inputs: &Inputs,
    timeout: Duration,
) -> Result<Option<String>> {
    let installed = observe(client).await?;
    let Some(what) = decide(&installed, inputs) else {
        return Ok(None);
    };
    if !matches!(installed, Installed::Present { ref hash, drift: None, .. } if hash.as_deref() == Some(&fingerprint(inputs)))
    {
        let tls = match kept_tls(client).await? {
            Some(t) => t,
            None => webhook_tls().map_err(|e| failure(e, "report this as a bug"))?,
        };
        let manifests =
            render(inputs, &tls).map_err(|e| failure(e, "fix kube-templates/addons/"))?;
        for m in &manifests {
            apply_one(client, m).await?;
        }
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    // A check's error is `Some`; the deadline passing is `None`, answered below with another look
    // at the pods (their reasons and last log line), which the timeout callback cannot await.
    let ready = crate::wait::until(
        crate::wait::Deadline::new(timeout, Duration::from_millis(500)),
        async || {
            for name in [COREDNS, CONTROLLER] {
                let d = deployments
                    .get_opt(name)
                    .await
                    .map_err(|e| Some(kube_err(e)))?;
                if !d.as_ref().is_some_and(available) {
                    return Ok(crate::wait::Check::Pending(()));
                }
            }
            Ok(crate::wait::Check::Done(()))
        },
        |(), _| None,
    )
    .await;
    match ready {
        Ok(()) => Ok(Some(what)),
        Err(Some(e)) => Err(e),
        Err(None) => Err(failure(
            format!(
                "the AWS Load Balancer Controller is not ready after {} s: {}",
                timeout.as_secs(),
                why_not_ready(client).await
            ),
            "see docs/runbook.md (load balancer controller): the CoreDNS add-on must run on Fargate, the controller's role must trust the cluster's OIDC provider; then re-run release up",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            cluster: "iris".into(),
            region: "us-east-1".into(),
            vpc_id: "vpc-1234".into(),
            role_arn: "arn:aws:iam::123456789012:role/iris-cluster-LoadBalancerControllerRole-X"
                .into(),
        }
    }

    #[test]
    fn the_controller_is_rendered_for_fargate_with_its_role_and_certificate() {
        let tls = webhook_tls().unwrap();
        let docs = render(&inputs(), &tls).unwrap();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"CustomResourceDefinition"));
        assert_eq!(
            kinds.last(),
            Some(&"ValidatingWebhookConfiguration"),
            "the webhooks come last"
        );
        let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"],
            format!("public.ecr.aws/eks/aws-load-balancer-controller:{LB_CONTROLLER_VERSION}")
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for a in [
            "--cluster-name=iris",
            "--aws-region=us-east-1",
            "--aws-vpc-id=vpc-1234",
        ] {
            assert!(args.contains(&a), "{a} in {args:?}");
        }
        let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
        assert_eq!(
            sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
            inputs().role_arn
        );
        let hooks = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        for h in hooks["webhooks"].as_array().unwrap() {
            assert_eq!(h["clientConfig"]["caBundle"], b64(&tls.ca));
        }
        let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
        assert_eq!(secret["data"]["tls.crt"], b64(&tls.cert));
    }

    #[test]
    fn a_controller_installed_for_these_inputs_and_ready_needs_nothing() {
        let i = inputs();
        let hash = Some(fingerprint(&i));
        assert!(
            decide(&Installed::Missing, &i)
                .unwrap()
                .starts_with("install")
        );
        assert_eq!(
            decide(
                &Installed::Present {
                    hash: hash.clone(),
                    ready: true,
                    drift: None
                },
                &i
            ),
            None
        );
        assert!(
            decide(
                &Installed::Present {
                    hash: hash.clone(),
                    ready: true,
                    drift: Some("the webhooks' caBundle is not the CA".into())
                },
                &i
            )
            .unwrap()
            .starts_with("repair"),
            "a ready controller whose webhooks cannot be verified is repaired"
        );
        assert!(
            decide(
                &Installed::Present {
                    hash: hash.clone(),
                    ready: false,
                    drift: None
                },
                &i
            )
            .unwrap()
            .starts_with("wait")
        );
        let other_vpc = Inputs {
            vpc_id: "vpc-other".into(),
            ..inputs()
        };
        assert!(
            decide(
                &Installed::Present {
                    hash,
                    ready: true,
                    drift: None
                },
                &other_vpc
            )
            .unwrap()
            .starts_with("update")
        );
        assert!(
            decide(
                &Installed::Present {
                    hash: None,
                    ready: true,
                    drift: Some("anything".into())
                },
                &i
            )
            .unwrap()
            .starts_with("update"),
            "one installed by hand is brought to the pinned version"
        );
    }
}
