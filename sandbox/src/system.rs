//! What EKS and the AWS Load Balancer Controller do in kube-system, as far as `release` depends on
//! it (docs/sandbox.md):
//!
//! - A new cluster runs CoreDNS as EKS installs it: annotated `eks.amazonaws.com/compute-type:
//!   ec2`, so on a Fargate-only cluster its pods stay Pending (no node), until the `coredns`
//!   add-on is configured with `computeType: Fargate` (the AWS side's add-ons, read here).
//! - A pod of EKS's CoreDNS image or of the controller's image is not pulled from the AWS stand-in
//!   (they live in AWS's own registries): the kubelet runs it as simulated here. CoreDNS is ready
//!   at once; the controller starts only as the real one does on Fargate: `--cluster-name`,
//!   `--aws-region` and `--aws-vpc-id` given (no instance metadata), its CRDs installed, DNS
//!   served by a ready CoreDNS, and its service account's IAM role assumable through the
//!   cluster's OIDC provider (the AWS side checks the role's trust policy).
//! - While its webhook configurations are installed, a Service is admitted only if the webhook
//!   answers: a ready controller pod behind the webhook Service, serving a certificate that the
//!   configuration's `caBundle` verifies for the Service's DNS name (failurePolicy Fail, as the
//!   controller's chart installs `mservice.elbv2.k8s.aws`).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

use crate::deployments::pod_ready;
use crate::merge::labels_match;
use crate::resources;
use crate::store::{Part, Store, meta};

pub const COMPUTE_TYPE: &str = "eks.amazonaws.com/compute-type";
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
const COREDNS_IMAGE: &str =
    "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/coredns:v1.11.4-eksbuild.2";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SystemImage {
    CoreDns,
    LoadBalancerController,
}

/// Whether an image is one the sandbox simulates instead of pulling.
pub fn system_image(image: &str) -> Option<SystemImage> {
    if image.contains("/eks/coredns:") {
        Some(SystemImage::CoreDns)
    } else if image.contains("/eks/aws-load-balancer-controller:") {
        Some(SystemImage::LoadBalancerController)
    } else {
        None
    }
}

fn by_kind(kind: &str) -> &'static resources::Resource {
    resources::by_kind(kind).expect("served")
}

/// CoreDNS as EKS installs it in a new cluster.
pub fn seed(store: &Store) {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"},
                             "annotations": {COMPUTE_TYPE: "ec2"}},
                "spec": {"containers": [{"name": "coredns", "image": COREDNS_IMAGE,
                                          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}
            }
        }
    });
    let _ = store.create(by_kind("Deployment"), "kube-system", deployment);
}

/// Whether CoreDNS serves: a ready pod of it.
pub fn dns_ready(store: &Store) -> bool {
    let (pods, _) = store.list(by_kind("Pod"), Some("kube-system"));
    pods.iter().any(|p| {
        p["metadata"]["labels"]["k8s-app"] == "kube-dns"
            && p["metadata"].get("deletionTimestamp").is_none()
            && pod_ready(p)
    })
}

/// Keeps CoreDNS's compute type as the AWS side's `coredns` add-on says: with `computeType:
/// Fargate` its pod template loses the annotation (and rolls out onto Fargate); with no add-on,
/// or another compute type, it has it.
pub async fn run_addons(store: Arc<Store>, aws_url: String) {
    let http = reqwest::Client::new();
    loop {
        if let Ok(resp) = http
            .get(format!("{aws_url}/_sandbox/eks/addons"))
            .send()
            .await
            && let Ok(addons) = resp.json::<Vec<Value>>().await
        {
            let fargate = addons.iter().any(|a| {
                a["name"] == "coredns"
                    && a["configurationValues"]
                        .as_str()
                        .and_then(|v| serde_json::from_str::<Value>(v).ok())
                        .is_some_and(|v| v["computeType"] == "Fargate")
            });
            let _ = store.modify(
                by_kind("Deployment"),
                "kube-system",
                "coredns",
                Part::Main,
                |cur| {
                    let mut next = cur.clone();
                    let annotations = &mut next["spec"]["template"]["metadata"]["annotations"];
                    if !annotations.is_object() {
                        *annotations = json!({});
                    }
                    let map = annotations.as_object_mut().expect("an object");
                    if fargate {
                        map.remove(COMPUTE_TYPE);
                    } else {
                        map.insert(COMPUTE_TYPE.into(), json!("ec2"));
                    }
                    Ok(next)
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The value of `--<flag>=` among a container's args.
fn flag<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&prefix))
        .filter(|v| !v.is_empty())
}

/// Why the controller in this pod cannot start, as it would log it; None when it starts.
/// `aws_check` is the AWS side's answer for its role, subject and VPC.
pub async fn controller_start(
    store: &Store,
    http: &reqwest::Client,
    aws_url: &str,
    pod: &Value,
) -> Option<String> {
    let container = &pod["spec"]["containers"][0];
    if flag(container, "cluster-name").is_none() {
        return Some("failed to load controller config: kubernetes cluster name must be specified (--cluster-name)".into());
    }
    let Some(region) = flag(container, "aws-region") else {
        return Some("unable to initialize AWS cloud: failed to introspect region from EC2Metadata, specify --aws-region instead if EC2Metadata is unavailable".into());
    };
    let Some(vpc) = flag(container, "aws-vpc-id") else {
        return Some("unable to initialize AWS cloud: failed to introspect vpcID from EC2Metadata, specify --aws-vpc-id instead if EC2Metadata is unavailable".into());
    };
    let crds = by_kind("CustomResourceDefinition");
    for crd in [
        "targetgroupbindings.elbv2.k8s.aws",
        "ingressclassparams.elbv2.k8s.aws",
    ] {
        if store.get(crds, "", crd).is_err() {
            return Some(format!(
                "unable to start manager: no matches for kind in group elbv2.k8s.aws: the CustomResourceDefinition {crd} is not installed"
            ));
        }
    }
    if !dns_ready(store) {
        return Some(format!(
            "unable to initialize AWS cloud: dial tcp: lookup sts.{region}.amazonaws.com: i/o timeout (no CoreDNS pod is ready)"
        ));
    }
    match identity(store, pod) {
        Err(why) => Some(why),
        Ok((role, sub)) => match aws_check(http, aws_url, &role, &sub, vpc, region).await {
            Ok(v) => v["start"].as_str().map(str::to_string),
            Err(why) => Some(why),
        },
    }
}

/// The IAM role the pod's service account names, and the subject its web identity token has.
fn identity(store: &Store, pod: &Value) -> Result<(String, String), String> {
    let ns = meta(pod, "namespace").unwrap_or("default");
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let account = store
        .get(by_kind("ServiceAccount"), ns, sa)
        .map_err(|_| format!("serviceaccount \"{sa}\" not found in {ns}"))?;
    let role = account["metadata"]["annotations"][ROLE_ANNOTATION]
        .as_str()
        .ok_or_else(|| {
            format!(
                "unable to initialize AWS cloud: NoCredentialProviders: no valid providers in chain (the service account {ns}/{sa} has no {ROLE_ANNOTATION} annotation, and Fargate has no instance role)"
            )
        })?;
    Ok((role.to_string(), format!("system:serviceaccount:{ns}:{sa}")))
}

async fn aws_check(
    http: &reqwest::Client,
    aws_url: &str,
    role: &str,
    sub: &str,
    vpc: &str,
    region: &str,
) -> Result<Value, String> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("role", role)
        .append_pair("sub", sub)
        .append_pair("vpc", vpc)
        .append_pair("region", region)
        .finish();
    http.get(format!("{aws_url}/_sandbox/lb-controller?{query}"))
        .send()
        .await
        .map_err(|e| format!("unable to initialize AWS cloud: {e}"))?
        .json()
        .await
        .map_err(|e| format!("unable to initialize AWS cloud: {e}"))
}

/// A ready, running controller pod, if there is one.
pub fn serving_controller(store: &Store) -> Option<Value> {
    let (pods, _) = store.list(by_kind("Pod"), None);
    pods.into_iter().find(|p| {
        p["spec"]["containers"][0]["image"]
            .as_str()
            .and_then(system_image)
            == Some(SystemImage::LoadBalancerController)
            && p["metadata"].get("deletionTimestamp").is_none()
            && pod_ready(p)
    })
}

/// Whether the serving controller may make load balancers (its role's policy), as the AWS side
/// judges it: None when it may, else the error its reconcile reports on the Service.
pub async fn controller_reconcile(
    store: &Store,
    http: &reqwest::Client,
    aws_url: &str,
    pod: &Value,
) -> Option<String> {
    let container = &pod["spec"]["containers"][0];
    let (role, sub) = match identity(store, pod) {
        Ok(id) => id,
        Err(why) => return Some(why),
    };
    let vpc = flag(container, "aws-vpc-id").unwrap_or_default();
    let region = flag(container, "aws-region").unwrap_or_default();
    match aws_check(http, aws_url, &role, &sub, vpc, region).await {
        Ok(v) => v["reconcile"].as_str().map(str::to_string),
        Err(why) => Some(why),
    }
}

/// Whether a webhook's rules take this write of a core/v1 `resource`.
fn rule_matches(webhook: &Value, resource: &str, operation: &str) -> bool {
    let has = |v: &Value, want: &str| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x == want || x == "*"))
    };
    webhook["rules"].as_array().into_iter().flatten().any(|r| {
        has(&r["apiGroups"], "")
            && has(&r["resources"], resource)
            && has(&r["operations"], operation)
    })
}

/// The mutating webhooks a Service write must pass (failurePolicy Fail, rules taking it, the
/// object selected): each must answer, or the write is refused as the API server refuses it.
pub fn admit_service(store: &Store, svc: &Value, operation: &str) -> Result<(), String> {
    let (configs, _) = store.list(by_kind("MutatingWebhookConfiguration"), None);
    for config in &configs {
        for webhook in config["webhooks"].as_array().into_iter().flatten() {
            if webhook["failurePolicy"] == "Ignore"
                || !rule_matches(webhook, "services", operation)
                || !object_selected(&webhook["objectSelector"], svc)
            {
                continue;
            }
            let name = webhook["name"].as_str().unwrap_or("?");
            call_webhook(store, webhook).map_err(|why| {
                format!("Internal error occurred: failed calling webhook \"{name}\": {why}")
            })?;
        }
    }
    Ok(())
}

/// The mutating webhooks a new pod must pass (failurePolicy Fail, rules taking pod CREATE, its
/// namespace and the pod selected): each must answer, or the pod is not created (the ReplicaSet
/// reports FailedCreate). The controller's `mpod.elbv2.k8s.aws` adds a readiness gate for each
/// target group binding whose Service selects the pod, as it does only at the pod's creation
/// (AWS Load Balancer Controller, docs/deploy/pod_readiness_gate.md: the namespace carries
/// `elbv2.k8s.aws/pod-readiness-gate-inject: enabled`; a pod made before its Service's binding
/// gets no gate).
pub fn admit_pod(store: &Store, pod: &mut Value) -> Result<(), String> {
    let ns = meta(pod, "namespace").unwrap_or("default").to_string();
    let namespace = store
        .get(by_kind("Namespace"), "", &ns)
        .unwrap_or(Value::Null);
    let (configs, _) = store.list(by_kind("MutatingWebhookConfiguration"), None);
    for config in &configs {
        for webhook in config["webhooks"].as_array().into_iter().flatten() {
            if webhook["failurePolicy"] == "Ignore"
                || !rule_matches(webhook, "pods", "CREATE")
                || !object_selected(&webhook["namespaceSelector"], &namespace)
                || !object_selected(&webhook["objectSelector"], pod)
            {
                continue;
            }
            let name = webhook["name"].as_str().unwrap_or("?");
            call_webhook(store, webhook).map_err(|why| {
                format!("Internal error occurred: failed calling webhook \"{name}\": {why}")
            })?;
            if name == "mpod.elbv2.k8s.aws" {
                let gates = crate::lb::readiness_gates(store, &ns, pod);
                if !gates.is_empty() {
                    pod["spec"]["readinessGates"] = json!(gates);
                }
            }
        }
    }
    Ok(())
}

/// `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist) against an object.
fn object_selected(selector: &Value, obj: &Value) -> bool {
    if selector.is_null() {
        return true;
    }
    let labels = &obj["metadata"]["labels"];
    if let Some(m) = selector["matchLabels"].as_object()
        && m.iter().any(|(k, v)| &labels[k] != v)
    {
        return false;
    }
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let value = &labels[key];
            let listed = e["values"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| v == value));
            match e["operator"].as_str() {
                Some("In") => listed,
                Some("NotIn") => !listed,
                Some("Exists") => !value.is_null(),
                Some("DoesNotExist") => value.is_null(),
                _ => false,
            }
        })
}

/// As the API server calls a webhook: its Service must have a ready endpoint, and the
/// certificate that pod serves (its secret volume's `tls.crt`) must verify against `caBundle`
/// for `<service>.<namespace>.svc`.
fn call_webhook(store: &Store, webhook: &Value) -> Result<(), String> {
    let service = &webhook["clientConfig"]["service"];
    let (Some(name), Some(ns)) = (service["name"].as_str(), service["namespace"].as_str()) else {
        return Err("the sandbox calls only Service webhooks".into());
    };
    let host = format!("{name}.{ns}.svc");
    let path = service["path"].as_str().unwrap_or("/");
    let url = format!("Post \"https://{host}:443{path}?timeout=10s\"");
    let svc = store
        .get(by_kind("Service"), ns, name)
        .map_err(|_| format!("failed to call webhook: {url}: service \"{name}\" not found"))?;
    let (pods, _) = store.list(by_kind("Pod"), Some(ns));
    let Some(pod) = pods.iter().find(|p| {
        labels_match(&svc["spec"]["selector"], p)
            && p["metadata"].get("deletionTimestamp").is_none()
            && pod_ready(p)
    }) else {
        return Err(format!(
            "failed to call webhook: {url}: no endpoints available for service \"{name}\""
        ));
    };
    let secret = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .and_then(|s| store.get(by_kind("Secret"), ns, s).ok());
    let served = secret
        .as_ref()
        .and_then(|s| secret_value(s, "tls.crt"))
        .ok_or_else(|| {
            format!("failed to call webhook: {url}: remote error: tls: no certificate")
        })?;
    let ca = webhook["clientConfig"]["caBundle"]
        .as_str()
        .and_then(base64_decode);
    verify(&served, ca.as_deref(), &host).map_err(|why| {
        format!("failed to call webhook: {url}: tls: failed to verify certificate: {why}")
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A Secret's value: `data` (base64) or `stringData`.
fn secret_value(secret: &Value, key: &str) -> Option<Vec<u8>> {
    if let Some(b) = secret["data"][key].as_str() {
        return base64_decode(b);
    }
    secret["stringData"][key]
        .as_str()
        .map(|s| s.as_bytes().to_vec())
}

/// Verify a PEM serving certificate (chain) against PEM roots for a DNS name, as a TLS client.
fn verify(served_pem: &[u8], ca_pem: Option<&[u8]>, host: &str) -> Result<(), String> {
    let Some(ca_pem) = ca_pem.filter(|c| !c.is_empty()) else {
        return Err("x509: certificate signed by unknown authority (no caBundle)".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| format!("x509: the caBundle is not PEM: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("x509: the caBundle's certificate: {e}"))?;
    }
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(served_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("x509: the served certificate is not PEM: {e}"))?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("x509: no certificate served".into());
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("x509: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("x509: {e}"))?;
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| match e {
            // Go's TLS says "unknown authority" for both: no CA, or one of that name whose
            // signature is not the certificate's.
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => "x509: certificate signed by unknown authority".to_string(),
            other => format!("x509: {other}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(host: &str) -> (String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &ca)
            .unwrap();
        (ca.pem(), leaf.pem())
    }

    #[test]
    fn a_webhook_certificate_verifies_only_against_its_own_ca_and_name() {
        let host = "aws-load-balancer-webhook-service.kube-system.svc";
        let (ca, leaf) = cert_for(host);
        let (other_ca, _) = cert_for(host);
        assert_eq!(verify(leaf.as_bytes(), Some(ca.as_bytes()), host), Ok(()));
        let err = verify(leaf.as_bytes(), Some(other_ca.as_bytes()), host).unwrap_err();
        assert!(err.contains("unknown authority"), "{err}");
        assert!(
            verify(
                leaf.as_bytes(),
                Some(ca.as_bytes()),
                "other.kube-system.svc"
            )
            .is_err()
        );
        assert!(verify(leaf.as_bytes(), None, host).is_err());
    }

    #[test]
    fn object_selectors_take_match_labels_and_expressions() {
        let svc = json!({"metadata": {"labels": {"app.kubernetes.io/name": "iris"}}});
        let not_controller = json!({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["aws-load-balancer-controller"]}]});
        assert!(object_selected(&not_controller, &svc));
        let controller = json!({"metadata": {"labels": {"app.kubernetes.io/name": "aws-load-balancer-controller"}}});
        assert!(!object_selected(&not_controller, &controller));
        assert!(object_selected(&Value::Null, &svc));
        assert!(!object_selected(
            &json!({"matchLabels": {"app.kubernetes.io/name": "other"}}),
            &svc
        ));
    }
}
