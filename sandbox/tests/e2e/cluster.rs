//! The cluster stand-in over HTTPS with kube-rs: an image pushed to the AWS stand-in's ECR runs
//! as pods (real model-server processes) behind a LoadBalancer Service; failures look as they do
//! in Kubernetes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::{Clients, Sandbox, eventually, model_server_binary};

/// Push the model-server binary as an image; its `repo@digest` reference.
async fn push_model_server(sb: &Sandbox) -> String {
    let ecr = aws_sdk_ecr::Client::new(&sb.aws().await);
    let repo = ecr
        .create_repository()
        .repository_name("model")
        .send()
        .await
        .unwrap();
    let uri = repo
        .repository()
        .unwrap()
        .repository_uri()
        .unwrap()
        .to_string();
    let spec = release::adapters::image::ImageSpec {
        path_in_image: "/model-server",
        env: &[
            ("MODEL_SERVER_DRAIN_SECONDS".into(), "0.5".into()),
            ("MODEL_SERVER_WORKERS".into(), "1".into()),
        ],
        user: "65532:65532",
        exposed_port: 8080,
        labels: &[],
        model: None,
    };
    let image = release::adapters::image::from_binary(
        &model_server_binary(),
        &spec,
        &release::adapters::image::LayerCache::at(None),
    )
    .unwrap();
    let pushed = release::adapters::image::push(&ecr, "model", "e2e", &image, |_| {})
        .await
        .unwrap();
    format!("{uri}@{}", pushed.digest)
}

fn manifests(image: &str, name: &str, args: Option<Value>) -> (Value, Value) {
    let mut container = json!({
        "name": "model-server", "image": image,
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "MODEL_SERVER_BIND", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MODEL_SERVER_COLOUR", "value": "blue"},
            {"name": "MODEL_SERVER_ORIGIN_VERIFY_SECRET", "valueFrom": {"secretKeyRef": {"name": "origin", "key": "secret"}}},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
        "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
    });
    if let Some(args) = args {
        container["args"] = args;
    }
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "app"},
        "spec": {"replicas": 2, "progressDeadlineSeconds": 30, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}}}
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "app", "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    (deployment, service)
}

async fn setup(client: &kube::Client) {
    let pp = PatchParams::apply("e2e").force();
    Api::<Namespace>::all(client.clone())
        .patch(
            "app",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
            ),
        )
        .await
        .unwrap();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "origin"}, "stringData": {"secret": "s3cret"}});
    Api::<Secret>::namespaced(client.clone(), "app")
        .patch("origin", &pp, &Patch::Apply(secret))
        .await
        .unwrap();
}

async fn apply(client: &kube::Client, deployment: &Value, service: &Value) {
    let pp = PatchParams::apply("e2e").force();
    let name = deployment["metadata"]["name"].as_str().unwrap();
    Api::<Deployment>::namespaced(client.clone(), "app")
        .patch(name, &pp, &Patch::Apply(deployment))
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), "app")
        .patch(name, &pp, &Patch::Apply(service))
        .await
        .unwrap();
}

/// Create (or update) stack `name` of app `e2e` from `body`, waiting for it; its outputs.
async fn stack(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
    body: &str,
    params: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    use aws_sdk_cloudformation::types::Parameter;
    let params: Vec<Parameter> = params
        .iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(*k)
                .parameter_value(*v)
                .build()
        })
        .collect();
    let exists = cfn.describe_stacks().stack_name(name).send().await.is_ok();
    if exists {
        cfn.update_stack()
            .stack_name(name)
            .template_body(body)
            .set_parameters(Some(params))
            .send()
            .await
            .unwrap();
    } else {
        cfn.create_stack()
            .stack_name(name)
            .template_body(body)
            .set_parameters(Some(params))
            .send()
            .await
            .unwrap();
    }
    eventually("the stack", Duration::from_secs(30), || async {
        let d = cfn.describe_stacks().stack_name(name).send().await.ok()?;
        let s = d.stacks()[0].clone();
        let status = s.stack_status()?.as_str().to_string();
        assert!(
            !status.contains("FAILED") && !status.contains("ROLLBACK"),
            "{name}: {status}"
        );
        status.ends_with("_COMPLETE").then(|| {
            s.outputs()
                .iter()
                .map(|o| {
                    (
                        o.output_key().unwrap().to_string(),
                        o.output_value().unwrap().to_string(),
                    )
                })
                .collect()
        })
    })
    .await
}

fn template(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../cloudformation/{name}.yaml")),
    )
    .unwrap()
}

/// The network and cluster stacks of app `e2e`, as `release up` makes them (the cluster's
/// template as given); what the load balancer controller is installed for.
async fn cluster_stacks(sb: &Sandbox, cluster_template: &str) -> release::adapters::addons::Inputs {
    let cfn = aws_sdk_cloudformation::Client::new(&sb.aws().await);
    let net = stack(
        &cfn,
        "e2e-network",
        &template("network"),
        &[("AppName", "e2e")],
    )
    .await;
    let cluster = stack(
        &cfn,
        "e2e-cluster",
        cluster_template,
        &[("AppName", "e2e"), ("SubnetIds", &net["PrivateSubnetIds"])],
    )
    .await;
    release::adapters::addons::Inputs {
        cluster: "e2e".into(),
        region: "us-east-1".into(),
        vpc_id: net["VpcId"].clone(),
        role_arn: cluster["LoadBalancerControllerRoleArn"].clone(),
    }
}

/// The cluster as `release up` leaves it before the first colour: the stacks, and the AWS Load
/// Balancer Controller installed by `release`'s own code and ready.
async fn with_load_balancer_controller(sb: &Sandbox, client: &kube::Client) {
    let inputs = cluster_stacks(sb, &template("cluster")).await;
    release::adapters::addons::ensure(client, &inputs, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_image_pushed_to_ecr_runs_as_pods_behind_a_load_balancer() {
    let sb = Sandbox::start(&[]);
    let image = push_model_server(&sb).await;
    let client = sb.kube();
    setup(&client).await;
    with_load_balancer_controller(&sb, &client).await;
    let (deployment, service) = manifests(&image, "blue", None);
    apply(&client, &deployment, &service).await;

    let deps: Api<Deployment> = Api::namespaced(client.clone(), "app");
    eventually("both replicas ready", Duration::from_secs(30), || {
        let deps = deps.clone();
        async move {
            let s = deps.get("blue").await.unwrap().status?;
            (s.ready_replicas == Some(2)
                && s.available_replicas == Some(2)
                && s.observed_generation == Some(1))
            .then_some(())
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let list = pods
        .list(&ListParams::default().labels("app=blue"))
        .await
        .unwrap();
    let ips: Vec<String> = list
        .items
        .iter()
        .map(|p| p.status.clone().unwrap().pod_ip.unwrap())
        .collect();
    assert_eq!(ips.len(), 2);
    assert_ne!(ips[0], ips[1], "each pod has its own address");
    let name = list.items[0].metadata.name.clone().unwrap();
    let logs = pods.logs(&name, &LogParams::default()).await.unwrap();
    assert!(
        logs.contains("serving"),
        "the pod's log is the process's output: {logs}"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), "app");
    let lb = eventually("a load-balancer address", Duration::from_secs(10), || {
        let services = services.clone();
        async move { service_address(&services, "blue").await }
    })
    .await;
    let http = reqwest::Client::new();
    // Its targets register before it sends them anything.
    let version: Value = eventually("the NLB to serve", Duration::from_secs(10), || {
        let http = http.clone();
        let lb = lb.clone();
        async move {
            http.get(format!("http://{lb}:80/version"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(version["colour"], "blue");
    let answer: Value = http
        .post(format!("http://{lb}/predict"))
        .header("X-Origin-Verify", "s3cret")
        .json(&json!({"features": [4.6, 3.6, 1.0, 0.2]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["prediction"], 0, "{answer}");
    let refused = http
        .post(format!("http://{lb}/predict"))
        .json(&json!({"features": [4.6, 3.6, 1.0, 0.2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        403,
        "the secret came from the Secret, through secretKeyRef"
    );

    // Without the scheme annotation the controller makes an internal NLB: nothing answers from
    // outside the VPC, a connection from inside it (the sandbox's 127.30.0.0/16) is served.
    let mut private = service.clone();
    private["metadata"] = json!({"name": "blue-private", "namespace": "app"});
    services
        .create(
            &Default::default(),
            &serde_json::from_value(private).unwrap(),
        )
        .await
        .unwrap();
    let internal = eventually("an internal address", Duration::from_secs(10), || {
        let services = services.clone();
        async move { service_address(&services, "blue-private").await }
    })
    .await;
    eventually("its targets healthy", Duration::from_secs(10), || {
        let internal = internal.clone();
        async move {
            healthz_from(&internal, "127.30.0.1")
                .await
                .contains(" 200 ")
                .then_some(())
        }
    })
    .await;
    assert!(
        http.get(format!("http://{internal}/healthz"))
            .send()
            .await
            .is_err(),
        "an internal load balancer answers nobody outside the VPC"
    );
    assert!(
        healthz_from(&internal, "127.30.0.1")
            .await
            .contains(" 200 "),
        "from inside the VPC it forwards as any NLB"
    );
    assert!(
        healthz_from(&lb, "127.30.0.1").await.contains(" 200 "),
        "an internet-facing one answers from anywhere"
    );
    vpc_origin_reaches_an_internal_load_balancer(&sb, &internal, &lb).await;

    // The API server's service proxy reaches a pod of the Service by its port's name or number,
    // with the method, body and headers (the origin-verify header included) passed on.
    let raw = sb.kube_without_retries();
    let version = proxy(&raw, "GET", "blue:http", "/version", None, None).await;
    assert_eq!(version.0, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&version.1).unwrap()["colour"],
        "blue"
    );
    let features = json!({"features": [4.6, 3.6, 1.0, 0.2]});
    let (code, body) = proxy(
        &raw,
        "POST",
        "blue:80",
        "/predict",
        Some("s3cret"),
        Some(&features),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["prediction"],
        0
    );
    let (code, _) = proxy(&raw, "POST", "blue:http", "/predict", None, Some(&features)).await;
    assert_eq!(code, 403, "the pod's own answer comes back");
    let (code, _) = proxy(&raw, "GET", "nothere:http", "/version", None, None).await;
    assert_eq!(code, 404);

    // Deleting the Deployment stops the processes (preStop, SIGTERM) and removes the pods.
    deps.delete("blue", &DeleteParams::default()).await.unwrap();
    eventually("the pods to go", Duration::from_secs(15), || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("app=blue"))
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    for ip in ips {
        assert!(
            tokio::net::TcpStream::connect((ip.as_str(), 8080))
                .await
                .is_err(),
            "the process at {ip} has exited"
        );
    }
    assert!(
        http.get(format!("http://{lb}/version"))
            .send()
            .await
            .is_err(),
        "no backend: the load balancer refuses"
    );
    let (code, body) = proxy(&raw, "GET", "blue:http", "/version", None, None).await;
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no endpoints available for service"));
}

/// `method path` at the Service `service` (`name:port`) in `app` through the API server's
/// service proxy, as the client's own identity: the status and body.
async fn proxy(
    client: &kube::Client,
    method: &str,
    service: &str,
    path: &str,
    secret: Option<&str>,
    body: Option<&Value>,
) -> (u16, Vec<u8>) {
    let mut req = http::Request::builder().method(method).uri(format!(
        "/api/v1/namespaces/app/services/{service}/proxy{path}"
    ));
    if let Some(s) = secret {
        req = req.header("X-Origin-Verify", s);
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let resp = client
        .send(req.body(kube::client::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (
        code,
        resp.into_body().collect_bytes().await.unwrap().to_vec(),
    )
}

async fn waiting_reason(pods: &Api<Pod>, app: &str) -> Option<(String, i32)> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .ok()?;
    let status = list.items.first()?.status.clone()?;
    let c = status.container_statuses?.first()?.clone();
    Some((c.state?.waiting?.reason?, c.restart_count))
}

#[tokio::test]
async fn crashing_and_unpullable_images_are_reported_as_kubernetes_reports_them() {
    let sb = Sandbox::start(&[]);
    let image = push_model_server(&sb).await;
    let client = sb.kube();
    setup(&client).await;
    let missing = format!(
        "{}@sha256:{}",
        image.split('@').next().unwrap(),
        "0".repeat(64)
    );
    let (d1, s1) = manifests(&missing, "nopull", None);
    let (d2, s2) = manifests(&image, "crash", Some(json!(["--no-such-flag"])));
    apply(&client, &d1, &s1).await;
    apply(&client, &d2, &s2).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    eventually("ImagePullBackOff", Duration::from_secs(15), || {
        let pods = pods.clone();
        async move {
            waiting_reason(&pods, "nopull")
                .await
                .filter(|(r, _)| r == "ImagePullBackOff")
        }
    })
    .await;
    let (_, restarts) = eventually("CrashLoopBackOff", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            waiting_reason(&pods, "crash")
                .await
                .filter(|(r, n)| r == "CrashLoopBackOff" && *n >= 1)
        }
    })
    .await;
    assert!(restarts >= 1);
    let events: Api<Event> = Api::namespaced(client.clone(), "app");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for wanted in ["Failed", "BackOff", "Started"] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "an event {wanted} among {reasons:?}"
        );
    }
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let crash = deps.get("crash").await.unwrap().status.unwrap();
    assert_eq!(crash.ready_replicas.unwrap_or(0), 0);
    let available = crash
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
}

async fn service_address(services: &Api<Service>, name: &str) -> Option<String> {
    services
        .get(name)
        .await
        .ok()?
        .status?
        .load_balancer?
        .ingress?
        .first()?
        .ip
        .clone()
}

/// As on EKS with Fargate only: a LoadBalancer Service gets an address only from the AWS Load
/// Balancer Controller; the controller starts only with CoreDNS running (which needs its add-on's
/// computeType Fargate) and its role assumable; while its webhook is installed, a Service is
/// created only if the webhook answers with a certificate its caBundle verifies.
#[tokio::test]
async fn load_balancers_need_the_controller_its_dns_its_role_and_its_webhook() {
    let sb = Sandbox::start(&[]);
    let client = sb.kube();
    setup(&client).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "app");
    let (_, svc) = manifests("unused", "early", None);
    services
        .patch(
            "early",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&svc),
        )
        .await
        .unwrap();
    // CoreDNS as EKS installs it: annotated for EC2, so not scheduled on Fargate.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let unscheduled = eventually("CoreDNS pending", Duration::from_secs(10), || async {
        let pods = system
            .list(&ListParams::default().labels("k8s-app=kube-dns"))
            .await
            .unwrap();
        let p = pods.items.first()?.status.clone()?;
        p.conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(unscheduled.reason.as_deref(), Some("Unschedulable"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        service_address(&services, "early").await,
        None,
        "no controller, no load balancer (the LB delay is 100 ms)"
    );

    // The cluster stack without its CoreDNS add-on: the controller cannot resolve AWS's names.
    let full = template("cluster");
    let (head, rest) = full.split_once("  CoreDnsAddon:").unwrap();
    let (_, tail) = rest.split_once("\n\n").unwrap();
    let inputs = cluster_stacks(&sb, &format!("{head}{tail}")).await;
    let err = release::adapters::addons::ensure(&client, &inputs, Duration::from_secs(4))
        .await
        .unwrap_err();
    assert_eq!(err.step, release::adapters::addons::STEP);
    assert!(err.message.contains("no CoreDNS pod is ready"), "{err}");
    assert!(err.message.contains("coredns: pod"), "{err}");
    assert!(err.message.contains("is not scheduled"), "{err}");

    // With the add-on, CoreDNS moves to Fargate, the controller starts and serves the Service.
    let inputs = cluster_stacks(&sb, &full).await;
    release::adapters::addons::ensure(&client, &inputs, Duration::from_secs(40))
        .await
        .unwrap();
    eventually(
        "the early Service's address",
        Duration::from_secs(10),
        || service_address(&services, "early"),
    )
    .await;

    // A webhook with no controller behind it refuses every new Service (failurePolicy Fail).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let scale =
        |n: i32| json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": n}});
    let pp = PatchParams::apply("e2e-scale").force();
    deployments
        .patch("aws-load-balancer-controller", &pp, &Patch::Apply(scale(0)))
        .await
        .unwrap();
    eventually(
        "the controller's pods gone",
        Duration::from_secs(20),
        || async {
            system
                .list(
                    &ListParams::default()
                        .labels("app.kubernetes.io/name=aws-load-balancer-controller"),
                )
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let (_, late) = manifests("unused", "late", None);
    let refused = services
        .patch(
            "late",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&late),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("failed calling webhook \"mservice.elbv2.k8s.aws\"")
            && refused.contains("no endpoints available"),
        "{refused}"
    );

    // A caBundle that is not the serving certificate's CA: refused too.
    deployments
        .patch("aws-load-balancer-controller", &pp, &Patch::Apply(scale(1)))
        .await
        .unwrap();
    let other = release::adapters::addons::webhook_tls().unwrap();
    let hooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let mut config = hooks.get("aws-load-balancer-webhook").await.unwrap();
    for w in config.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(other.ca.clone().into_bytes()));
    }
    config.metadata.managed_fields = None;
    hooks
        .replace("aws-load-balancer-webhook", &Default::default(), &config)
        .await
        .unwrap();
    let refused = eventually(
        "refused for its certificate",
        Duration::from_secs(20),
        || async {
            let e = services
                .patch(
                    "late",
                    &PatchParams::apply("e2e").force(),
                    &Patch::Apply(&late),
                )
                .await;
            let e = match e {
                Ok(_) => panic!("the Service was admitted with a caBundle of another CA"),
                Err(e) => e.to_string(),
            };
            e.contains("unknown authority").then_some(e)
        },
    )
    .await;
    assert!(refused.contains("mservice.elbv2.k8s.aws"), "{refused}");
    // The next ensure finds the caBundle stale although the controller is ready, applies again,
    // and the Service is admitted.
    let repaired = release::adapters::addons::ensure(&client, &inputs, Duration::from_secs(40))
        .await
        .unwrap();
    assert!(
        repaired
            .as_deref()
            .is_some_and(|r| r.starts_with("repair") && r.contains("caBundle")),
        "{repaired:?}"
    );
    services
        .patch(
            "late",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&late),
        )
        .await
        .expect("admitted once the webhooks trust the kept certificate's CA again");

    // A role its service account cannot assume: the controller crashes, saying so.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "kube-system");
    let bogus = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/no-such-role"}}});
    accounts
        .patch("aws-load-balancer-controller", &pp, &Patch::Apply(bogus))
        .await
        .unwrap();
    system
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app.kubernetes.io/name=aws-load-balancer-controller"),
        )
        .await
        .unwrap();
    let log = eventually(
        "the controller's crash",
        Duration::from_secs(20),
        || async {
            let pods = system
                .list(
                    &ListParams::default()
                        .labels("app.kubernetes.io/name=aws-load-balancer-controller"),
                )
                .await
                .unwrap();
            let name = pods
                .items
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())?
                .metadata
                .name
                .clone()?;
            let log = system.logs(&name, &LogParams::default()).await.ok()?;
            log.contains("AssumeRoleWithWebIdentity").then_some(log)
        },
    )
    .await;
    assert!(log.contains("no-such-role"), "{log}");
}

/// The raw answer to `GET /healthz` at `addr`:80 from the local address `source`.
async fn healthz_from(addr: &str, source: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket
        .connect(format!("{addr}:80").parse().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out).await;
    out
}

const VPC_EDGE: &str = r#"
Parameters:
  OriginArn: {Type: String}
  OriginDomain: {Type: String}
Resources:
  Origin:
    Type: AWS::CloudFront::VpcOrigin
    Properties:
      VpcOriginEndpointConfig:
        Name: blue
        Arn: !Ref OriginArn
        HTTPPort: 80
        HTTPSPort: 443
        OriginProtocolPolicy: http-only
  Distribution:
    Type: AWS::CloudFront::Distribution
    Properties:
      DistributionConfig:
        Enabled: true
        Origins:
          - Id: live
            DomainName: !Ref OriginDomain
            VpcOriginConfig:
              VpcOriginId: !GetAtt Origin.Id
              OriginReadTimeout: 30
            OriginCustomHeaders:
              - {HeaderName: X-Origin-Verify, HeaderValue: s3cret}
        DefaultCacheBehavior:
          TargetOriginId: live
          ViewerProtocolPolicy: redirect-to-https
          CachePolicyId: 4135ea2d-6df8-44a3-9df3-4b5a84be39ad
"#;

/// The controller's internal NLB is in ELBv2 (by its DNS name, with the controller's name and
/// scheme); a CloudFront VPC origin naming its ARN serves it through the edge, from inside the
/// VPC; a VPC origin a distribution uses cannot be changed, so the stack update fails and rolls
/// back, and the edge keeps serving.
async fn vpc_origin_reaches_an_internal_load_balancer(sb: &Sandbox, internal: &str, public: &str) {
    let config = sb.aws().await;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let all = elb.describe_load_balancers().send().await.unwrap();
    let find = |dns: &str| {
        all.load_balancers()
            .iter()
            .find(|l| l.dns_name() == Some(dns))
            .cloned()
            .unwrap_or_else(|| panic!("no load balancer with DNS name {dns}: {all:?}"))
    };
    let (private, open) = (find(internal), find(public));
    assert_eq!(private.scheme().map(|s| s.as_str()), Some("internal"));
    assert_eq!(open.scheme().map(|s| s.as_str()), Some("internet-facing"));
    assert_eq!(private.r#type().map(|t| t.as_str()), Some("network"));
    assert!(
        private
            .load_balancer_name()
            .unwrap()
            .starts_with("k8s-app-blue-pri-"),
        "{private:?}"
    );
    let params = |arn: &str, domain: &str| {
        crate::parameters(&[("OriginArn", arn), ("OriginDomain", domain)])
    };
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    cfn.create_stack()
        .stack_name("vpc-edge")
        .template_body(VPC_EDGE)
        .set_parameters(Some(params(private.load_balancer_arn().unwrap(), internal)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        crate::stack_status(&cfn, "vpc-edge").await.as_str(),
        "CREATE_COMPLETE"
    );
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let version = eventually("the edge to serve blue", Duration::from_secs(10), || {
        let (http, edge) = (http.clone(), edge.clone());
        async move {
            let r = http.get(format!("{edge}/version")).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(version["colour"], "blue");
    let answer = http
        .post(format!("{edge}/predict"))
        .json(&json!({"features": [4.6, 3.6, 1.0, 0.2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the edge added the origin header");

    // Pointing the VPC origin in use at another load balancer is refused.
    cfn.update_stack()
        .stack_name("vpc-edge")
        .template_body(VPC_EDGE)
        .set_parameters(Some(params(open.load_balancer_arn().unwrap(), public)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        crate::stack_status(&cfn, "vpc-edge").await.as_str(),
        "UPDATE_ROLLBACK_COMPLETE"
    );
    let events = cfn
        .describe_stack_events()
        .stack_name("vpc-edge")
        .send()
        .await
        .unwrap();
    assert!(
        events.stack_events().iter().any(|e| e
            .resource_status_reason()
            .is_some_and(|r| r.contains("CannotUpdateEntityWhileInUse"))),
        "{events:?}"
    );
    let r = http.get(format!("{edge}/version")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["colour"], "blue");
    // Deleting the stack deletes the distribution first, then its VPC origin.
    cfn.delete_stack()
        .stack_name("vpc-edge")
        .send()
        .await
        .unwrap();
}

/// The health of the targets of the NLB at `address`, as ELBv2 shows them: (id, state, reason).
async fn target_health(sb: &Sandbox, address: &str) -> Vec<(String, String, String)> {
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sb.aws().await);
    let all = elb.describe_load_balancers().send().await.unwrap();
    let Some(lb) = all
        .load_balancers()
        .iter()
        .find(|l| l.dns_name() == Some(address))
    else {
        return Vec::new();
    };
    let groups = elb
        .describe_target_groups()
        .load_balancer_arn(lb.load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    let mut found = Vec::new();
    for g in groups.target_groups() {
        assert_eq!(g.target_type().map(|t| t.as_str()), Some("ip"));
        let health = elb
            .describe_target_health()
            .target_group_arn(g.target_group_arn().unwrap())
            .send()
            .await
            .unwrap();
        for d in health.target_health_descriptions() {
            let h = d.target_health().unwrap();
            found.push((
                d.target().unwrap().id().unwrap().to_string(),
                h.state().unwrap().as_str().to_string(),
                h.reason()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
            ));
        }
    }
    found.sort();
    found
}

/// As an NLB with IP targets (ELB user guide, "Target group health checks"; the controller's
/// "Pod readiness gate"): a pod whose containers are ready is registered as a target that stays
/// `initial` (Elb.RegistrationInProgress) and is sent nothing until its first checks pass. In a
/// namespace labelled `elbv2.k8s.aws/pod-readiness-gate-inject: enabled`, a pod created once the
/// Service's binding exists gets the controller's readiness gate: it is Ready only when its
/// target is healthy, so a rolling restart keeps the old pods until the new ones receive
/// traffic, and no request fails on the way.
#[tokio::test(flavor = "multi_thread")]
async fn nlb_targets_register_before_they_serve_and_the_readiness_gate_holds_a_rollout() {
    let sb = Sandbox::start(&["--target-delay-ms", "6000"]);
    let image = push_model_server(&sb).await;
    let client = sb.kube();
    setup(&client).await;
    with_load_balancer_controller(&sb, &client).await;
    let (deployment, service) = manifests(&image, "blue", None);
    apply(&client, &deployment, &service).await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let services: Api<Service> = Api::namespaced(client.clone(), "app");
    eventually("both replicas ready", Duration::from_secs(30), || {
        let deps = deps.clone();
        async move {
            let s = deps.get("blue").await.unwrap().status?;
            (s.ready_replicas == Some(2)).then_some(())
        }
    })
    .await;
    let lb = eventually("an address", Duration::from_secs(10), || {
        let services = services.clone();
        async move { service_address(&services, "blue").await }
    })
    .await;
    // The pods are ready; their targets are not yet.
    let registering = target_health(&sb, &lb).await;
    assert_eq!(registering.len(), 2, "{registering:?}");
    assert!(
        registering
            .iter()
            .all(|(_, state, reason)| state == "initial" && reason == "Elb.RegistrationInProgress"),
        "{registering:?}"
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        http.get(format!("http://{lb}/healthz"))
            .send()
            .await
            .is_err(),
        "no target is healthy yet: the NLB sends nothing"
    );
    eventually("both targets healthy", Duration::from_secs(20), || {
        let sb = &sb;
        let lb = lb.clone();
        async move {
            let h = target_health(sb, &lb).await;
            (h.len() == 2 && h.iter().all(|(_, s, _)| s == "healthy")).then_some(())
        }
    })
    .await;
    assert_eq!(
        http.get(format!("http://{lb}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let gated = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default()
    };
    let first = pods
        .list(&ListParams::default().labels("app=blue"))
        .await
        .unwrap();
    assert!(
        first.items.iter().all(|p| gated(p).is_empty()),
        "made before the namespace's label: no gate"
    );

    // Label the namespace, then restart the pods under a steady stream of requests.
    Api::<Namespace>::all(client.clone())
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}}})),
        )
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (http, lb, stop) = (http.clone(), lb.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(format!("http://{lb}/version")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    deps.patch(
        "blue",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"metadata": {"annotations": {"restarted": "1"}}}}}),
        ),
    )
    .await
    .unwrap();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    eventually("the restart to finish", Duration::from_secs(60), || {
        let (pods, deps, held) = (pods.clone(), deps.clone(), held.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=blue"))
                .await
                .unwrap();
            for p in &list.items {
                let conditions = p.status.as_ref()?.conditions.clone().unwrap_or_default();
                let is = |t: &str| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == t && c.status == "True")
                };
                if !gated(p).is_empty() && is("ContainersReady") && !is("Ready") {
                    held.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let d = deps.get("blue").await.unwrap();
            let s = d.status?;
            let done = s.updated_replicas == Some(2)
                && s.ready_replicas == Some(2)
                && s.replicas == Some(2)
                && list.items.len() == 2
                && list.items.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && gated(p).len() == 1
                        && gated(p)[0]
                            .condition_type
                            .starts_with("target-health.elbv2.k8s.aws/k8s-app-blue-")
                });
            done.then_some(())
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        held.load(std::sync::atomic::Ordering::Relaxed),
        "a new pod was seen with its containers ready but not Ready: its gate waited for its target"
    );
    assert!(ok > 50, "{ok} requests answered");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the restart",
        ok + failed
    );
}
