//! kubectl against the cluster stand-in, through the kubeconfig `sandbox serve` writes (its
//! credential is `sandbox token`, an exec plugin, as with `aws eks get-token`).

use std::process::{Command, Output};

use serde_json::Value;

use crate::Sandbox;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: kt}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: kt, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "123456789012.dkr.ecr.us-east-1.amazonaws.com/none:v1", ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: kt}
spec:
  selector: {app: web}
  ports: [{port: 8080}]
"#;

fn kubectl_path() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// kubectl's minor version; before 1.27 it validates with OpenAPI v2, which the sandbox does not serve.
fn minor() -> u32 {
    let out = Command::new(kubectl_path())
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap_or_else(|e| panic!("kubectl not found ({e}); scripts/test installs it"));
    let v: Value = serde_json::from_slice(&out.stdout).expect("kubectl version -o json");
    v["clientVersion"]["minor"]
        .as_str()
        .unwrap()
        .trim_end_matches('+')
        .parse()
        .unwrap()
}

fn run(sb: &Sandbox, args: &[&str]) -> Output {
    Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(sb.dir.join("kubeconfig"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = run(sb, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubectl_applies_gets_and_deletes() {
    let sb = Sandbox::start(&[]);
    let file = sb.dir.join("manifests.yaml");
    std::fs::write(&file, MANIFESTS).unwrap();
    let file = file.to_str().unwrap();
    let validate = if minor() >= 27 {
        "--validate=true"
    } else {
        "--validate=false"
    };
    let applied = ok(&sb, &["apply", "--server-side", validate, "-f", file]);
    assert_eq!(
        applied.matches("serverside-applied").count(),
        3,
        "{applied}"
    );
    ok(&sb, &["apply", validate, "-f", file]);

    let deployment: Value = serde_json::from_str(&ok(
        &sb,
        &["get", "deployment", "web", "-n", "kt", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["metadata"]["generation"], 1,
        "re-applying the same manifest changes no spec"
    );
    assert!(
        deployment["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert!(ok(&sb, &["get", "namespaces"]).contains("kt"));
    let pods: Value = serde_json::from_str(&ok(
        &sb,
        &["get", "pods", "-n", "kt", "-l", "app=web", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        pods["items"].as_array().unwrap().len(),
        2,
        "the Deployment controller made two pods"
    );

    ok(&sb, &["delete", "deployment", "web", "-n", "kt"]);
    let gone = run(&sb, &["get", "deployment", "web", "-n", "kt"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    ok(&sb, &["delete", "namespace", "kt"]);
    assert!(!ok(&sb, &["get", "namespaces"]).contains("kt"));
}
