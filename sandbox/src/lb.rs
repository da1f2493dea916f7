//! The simulated load-balancer controller: a `type: LoadBalancer` Service gets, after a short
//! delay, its own loopback address in `status.loadBalancer.ingress`, listening on the Service's own
//! ports and forwarding each TCP connection (as an NLB does) to a ready, non-terminating pod the
//! Service selects.
//!
//! It is the AWS Load Balancer Controller's work, so nothing happens while no controller pod is
//! ready (src/system.rs says when one is): Services stay `<pending>` and deleted ones keep their
//! finalizer; a controller whose role may not make load balancers reports that on the Service.
//!
//! As the AWS Load Balancer Controller, it holds each Service it provisioned with its finalizer
//! (`service.k8s.aws/resources`) and the NLB's network interface in the cluster's VPC (the AWS
//! side's `/_sandbox/load-balancers/<uid>`), and lets go of both only a provisioning delay after the
//! Service is deleted: until then the namespace stays Terminating and the VPC cannot be deleted
//! (DependencyViolation), as on AWS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::deployments::{condition, gates_pass, pod_ready};
use crate::merge::labels_match;
use crate::resources;
use crate::store::{Part, Store, meta};
use crate::system;

/// The AWS Load Balancer Controller's finalizer on the Services it serves.
pub const FINALIZER: &str = "service.k8s.aws/resources";

/// The Service annotation that makes an NLB `internet-facing`; without it the controller makes an
/// `internal` one (AWS Load Balancer Controller, Service annotations: `aws-load-balancer-scheme`,
/// default `internal`).
pub const SCHEME: &str = "service.beta.kubernetes.io/aws-load-balancer-scheme";

/// The Service's load-balancer scheme, as the controller reads it.
pub fn scheme(svc: &Value) -> &str {
    svc["metadata"]["annotations"][SCHEME]
        .as_str()
        .unwrap_or("internal")
}

/// Whether a connection from `peer` comes from inside the cluster's VPC. The sandbox's AWS-side
/// components that sit in the VPC (a CloudFront VPC origin's network interfaces) connect from
/// 127.30.0.0/16; everything else on the machine (the CLI, the tests, the edge reaching a public
/// origin) is the internet, which an internal load balancer's address is not routable from.
pub fn from_vpc(peer: std::net::IpAddr) -> bool {
    matches!(peer, std::net::IpAddr::V4(v4) if v4.octets()[..2] == [127, 30])
}

/// The condition type of the AWS Load Balancer Controller's pod readiness gate for a binding.
pub const GATE_PREFIX: &str = "target-health.elbv2.k8s.aws/";

/// The name of a Service's target group (and its TargetGroupBinding): `k8s-<namespace, 8>-<name,
/// 8>-<10 hex>`, non-alphanumerics dropped first, as the controller names them (a target group
/// name is at most 32 characters, alphanumerics and single hyphens).
pub fn target_group_name(svc: &Value) -> String {
    let clean = |s: &str| -> String { s.chars().filter(char::is_ascii_alphanumeric).collect() };
    let ns = clean(meta(svc, "namespace").unwrap_or("default"));
    let name = clean(meta(svc, "name").unwrap_or_default());
    let uid: String = meta(svc, "uid")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    format!(
        "k8s-{}-{}-{uid}",
        &ns[..ns.len().min(8)],
        &name[..name.len().min(8)]
    )
}

/// The readiness gates the controller's pod webhook gives a new pod in `ns`: one for each
/// Service this controller has provisioned (its binding exists: the finalizer is on) that
/// selects the pod.
pub fn readiness_gates(store: &Store, ns: &str, pod: &Value) -> Vec<Value> {
    let services = resources::by_kind("Service").expect("served");
    let (all, _) = store.list(services, Some(ns));
    all.iter()
        .filter(|s| {
            s["spec"]["type"] == "LoadBalancer"
                && s["metadata"].get("deletionTimestamp").is_none()
                && s["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
                && labels_match(&s["spec"]["selector"], pod)
        })
        .map(|s| json!({"conditionType": format!("{GATE_PREFIX}{}", target_group_name(s))}))
        .collect()
}

struct Balancer {
    ip: String,
    created: Instant,
    /// Each registered target (pod IP) and when it was registered: `initial` until the target
    /// delay has passed, then `healthy`.
    targets: HashMap<String, Instant>,
    /// The healthy targets' pod IPs: the only ones the listeners forward to.
    healthy: Arc<Mutex<HashSet<String>>>,
    /// The target health last reported to the AWS side.
    reported: Value,
    /// Its finalizer is on the Service and its network interface is in the VPC.
    held: bool,
    /// The ports the listeners were bound for; a change rebinds them.
    bound: Option<Value>,
    listeners: Vec<JoinHandle<()>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

pub struct Controller {
    store: Arc<Store>,
    delay: Duration,
    /// How long a new target stays `initial` (registration and the first health checks) before
    /// the NLB sends it connections; on AWS 90 to 180 s and more
    /// (aws-load-balancer-controller#1834), and what the pod readiness gate waits for.
    target_delay: Duration,
    balancers: HashMap<String, Balancer>,
    /// Services being deleted that still carry the finalizer, and since when.
    releasing: HashMap<String, Instant>,
    aws_url: String,
    http: reqwest::Client,
    /// The controller's last reconcile verdict (None: it may make load balancers), and when.
    verdict: Option<(Instant, Option<String>)>,
    /// Services told why they get no load balancer, by uid.
    reported: Vec<String>,
}

impl Controller {
    pub fn new(
        store: Arc<Store>,
        delay: Duration,
        target_delay: Duration,
        aws_url: String,
    ) -> Self {
        Controller {
            store,
            delay,
            target_delay,
            balancers: HashMap::new(),
            releasing: HashMap::new(),
            aws_url,
            http: reqwest::Client::new(),
            verdict: None,
            reported: Vec::new(),
        }
    }

    /// The NLB's network interface in the VPC and its ELBv2 record (name, scheme, DNS name:
    /// what `DescribeLoadBalancers` shows): made or brought up to date (`Some(svc, address)`), or
    /// deleted (`None`). The AWS side may have no cluster to put it in (tests of the cluster
    /// alone): nothing to hold, then.
    /// Whether the AWS side took it.
    async fn network_interface(&self, uid: &str, present: Option<(&Value, &str, &Value)>) -> bool {
        let url = format!("{}/_sandbox/load-balancers/{uid}", self.aws_url);
        let call = match present {
            Some((svc, address, targets)) => self.http.put(&url).json(&json!({
                "namespace": meta(svc, "namespace").unwrap_or("default"),
                "service": meta(svc, "name").unwrap_or_default(),
                "scheme": scheme(svc),
                "address": address,
                "target_group": target_group_name(svc),
                "targets": targets,
            })),
            None => self.http.delete(&url),
        };
        match call.send().await {
            Ok(r) => r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND,
            Err(e) => {
                tracing::warn!(%uid, error = %e, "the load balancer's network interface");
                false
            }
        }
    }

    /// Add (`hold`) or remove this controller's finalizer on a Service.
    fn finalizer(&self, svc: &Value, hold: bool) {
        let services = resources::by_kind("Service").expect("served");
        let _ = self.store.modify(
            services,
            meta(svc, "namespace").unwrap_or(""),
            meta(svc, "name").unwrap_or(""),
            Part::Main,
            |cur| {
                let mut next = cur.clone();
                let mut list: Vec<Value> = cur["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                list.retain(|f| f != FINALIZER);
                if hold {
                    list.push(json!(FINALIZER));
                }
                next["metadata"]["finalizers"] = json!(list);
                Ok(next)
            },
        );
    }

    /// Deleted Services this controller still holds: their NLB goes (traffic stops at once), and
    /// after the provisioning delay its network interface and the finalizer go too.
    async fn release_deleted(&mut self, all: &[Value]) {
        let deleting: Vec<&Value> = all
            .iter()
            .filter(|s| {
                s["metadata"].get("deletionTimestamp").is_some()
                    && s["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
            })
            .collect();
        let uids: Vec<String> = deleting
            .iter()
            .filter_map(|s| meta(s, "uid").map(str::to_string))
            .collect();
        self.releasing.retain(|uid, _| uids.contains(uid));
        for svc in deleting {
            let uid = meta(svc, "uid").unwrap_or_default().to_string();
            let since = *self
                .releasing
                .entry(uid.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= self.delay {
                self.network_interface(&uid, None).await;
                self.finalizer(svc, false);
                self.releasing.remove(&uid);
            }
        }
    }

    pub async fn run(mut self) {
        let mut changes = self.store.subscribe_changes();
        loop {
            self.sync().await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn sync(&mut self) {
        let services = resources::by_kind("Service").expect("served");
        let (all, _) = self.store.list(services, None);
        let Some(controller) = system::serving_controller(&self.store) else {
            // No controller: nothing provisions or lets go (the NLBs made keep forwarding).
            return;
        };
        self.release_deleted(&all).await;
        if self
            .verdict
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(2))
        {
            let verdict =
                system::controller_reconcile(&self.store, &self.http, &self.aws_url, &controller)
                    .await;
            self.verdict = Some((Instant::now(), verdict));
        }
        let refused = self.verdict.as_ref().and_then(|(_, v)| v.clone());
        let wanted: Vec<&Value> = all
            .iter()
            .filter(|s| {
                s["spec"]["type"] == "LoadBalancer"
                    && s["metadata"].get("deletionTimestamp").is_none()
            })
            .collect();
        let keep: Vec<String> = wanted
            .iter()
            .filter_map(|s| meta(s, "uid").map(str::to_string))
            .collect();
        self.balancers.retain(|uid, _| keep.contains(uid));
        let mut to_hold = Vec::new();
        let mut to_record = Vec::new();
        for svc in wanted {
            let uid = meta(svc, "uid").unwrap_or_default().to_string();
            if let Some(why) = &refused
                && !self.balancers.contains_key(&uid)
            {
                if !self.reported.contains(&uid) {
                    self.reported.push(uid.clone());
                    self.store.event(
                        svc,
                        "Service",
                        "Warning",
                        "FailedDeployModel",
                        &format!("Failed deploy model due to {why}"),
                    );
                }
                continue;
            }
            // A change of ports or of scheme binds the listeners anew (the controller replaces
            // an NLB whose scheme changes: a scheme cannot be modified).
            let ports = json!([svc["spec"]["ports"], scheme(svc)]);
            let store = &self.store;
            let balancer = self
                .balancers
                .entry(uid.clone())
                .or_insert_with(|| Balancer {
                    ip: store.allocate_ip(20),
                    created: Instant::now(),
                    targets: HashMap::new(),
                    healthy: Arc::new(Mutex::new(HashSet::new())),
                    reported: Value::Null,
                    held: false,
                    bound: None,
                    listeners: Vec::new(),
                });
            if balancer.bound.as_ref() != Some(&ports) {
                // A real load balancer takes a while to provision.
                if balancer.created.elapsed() < self.delay {
                    continue;
                }
                if balancer.bound.as_ref().is_some_and(|b| b[1] != ports[1]) {
                    // A scheme cannot change: the controller makes another NLB, at another
                    // address (and ELBv2 shows another load balancer), whose targets register
                    // anew.
                    balancer.ip = store.allocate_ip(20);
                    balancer.targets.clear();
                }
                for l in balancer.listeners.drain(..) {
                    l.abort();
                }
                let mut bound = bind_all(store, svc, &balancer.ip, &balancer.healthy).await;
                // Another sandbox beside us may hold the address: take the next one.
                for _ in 0..16 {
                    if !matches!(&bound, Err(e) if e.contains("in use")) {
                        break;
                    }
                    balancer.ip = store.allocate_ip(20);
                    bound = bind_all(store, svc, &balancer.ip, &balancer.healthy).await;
                }
                match bound {
                    Ok(listeners) => {
                        balancer.listeners = listeners;
                        balancer.bound = Some(ports);
                        if balancer.held {
                            to_record.push((uid.clone(), svc.clone(), balancer.ip.clone()));
                        }
                        store.event(
                            svc,
                            "Service",
                            "Normal",
                            "EnsuredLoadBalancer",
                            &format!("Ensured load balancer at {}", balancer.ip),
                        );
                    }
                    Err(why) => {
                        store.event(
                            svc,
                            "Service",
                            "Warning",
                            "SyncLoadBalancerFailed",
                            &format!("Error syncing load balancer: {why}"),
                        );
                        continue;
                    }
                }
            }
            let ingress = json!({"ingress": [{"ip": balancer.ip, "ipMode": "VIP"}]});
            if svc["status"]["loadBalancer"] != ingress {
                let _ = store.modify(
                    services,
                    meta(svc, "namespace").unwrap_or(""),
                    meta(svc, "name").unwrap_or(""),
                    Part::Status,
                    |cur| {
                        let mut next = cur.clone();
                        next["status"]["loadBalancer"] = ingress.clone();
                        Ok(next)
                    },
                );
            }
            let health = track_targets(store, self.target_delay, svc, balancer);
            if !balancer.held {
                balancer.held = true;
                balancer.reported = health.clone();
                to_hold.push((uid, svc.clone(), balancer.ip.clone(), health));
            } else if balancer.reported != health {
                balancer.reported = health.clone();
                to_record.push((uid, svc.clone(), balancer.ip.clone()));
            }
        }
        for (uid, svc, ip, health) in to_hold {
            self.finalizer(&svc, true);
            if !self
                .network_interface(&uid, Some((&svc, &ip, &health)))
                .await
                && let Some(b) = self.balancers.get_mut(&uid)
            {
                // Not taken: sent again at the next sync.
                b.reported = Value::Null;
            }
        }
        // A load balancer bound anew (ports or scheme changed), or whose targets' health
        // changed: its record follows.
        for (uid, svc, ip) in to_record {
            let health = self
                .balancers
                .get(&uid)
                .map(|b| b.reported.clone())
                .unwrap_or_default();
            if !self
                .network_interface(&uid, Some((&svc, &ip, &health)))
                .await
                && let Some(b) = self.balancers.get_mut(&uid)
            {
                b.reported = Value::Null;
            }
        }
    }
}

/// The NLB's targets as the controller registers them (each pod the Service selects whose
/// containers are ready and that is not terminating; a terminating one is deregistered, it
/// drains), each `initial` for the target delay and then `healthy`. Only healthy ones get
/// connections; a pod with this binding's readiness gate gets its condition (and so Ready) once
/// its target is healthy. Returns the targets' health, as DescribeTargetHealth shows it.
fn track_targets(store: &Store, delay: Duration, svc: &Value, balancer: &mut Balancer) -> Value {
    let ns = meta(svc, "namespace").unwrap_or("default");
    let pods_res = resources::by_kind("Pod").expect("served");
    let (pods, _) = store.list(pods_res, Some(ns));
    let registered: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            labels_match(&svc["spec"]["selector"], p)
                && p["metadata"].get("deletionTimestamp").is_none()
                && condition(p, "ContainersReady")
                && p["status"]["podIP"].is_string()
        })
        .collect();
    let ips: Vec<String> = registered
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect();
    balancer.targets.retain(|ip, _| ips.contains(ip));
    for ip in &ips {
        balancer
            .targets
            .entry(ip.clone())
            .or_insert_with(Instant::now);
    }
    let healthy: HashSet<String> = balancer
        .targets
        .iter()
        .filter(|(_, since)| since.elapsed() >= delay)
        .map(|(ip, _)| ip.clone())
        .collect();
    let gate = format!("{GATE_PREFIX}{}", target_group_name(svc));
    for p in &registered {
        let ip = p["status"]["podIP"].as_str().unwrap_or_default();
        if healthy.contains(ip) {
            set_gate(store, p, &gate);
        }
    }
    let target = &svc["spec"]["ports"][0]["targetPort"];
    let ports: HashMap<&str, u64> = registered
        .iter()
        .filter_map(|p| Some((p["status"]["podIP"].as_str()?, target_port(p, target)?)))
        .collect();
    let mut health: Vec<Value> = balancer
        .targets
        .keys()
        .map(|ip| {
            let state = if healthy.contains(ip) {
                "healthy"
            } else {
                "initial"
            };
            json!({"id": ip, "port": ports.get(ip.as_str()), "state": state})
        })
        .collect();
    health.sort_by_key(|t| t["id"].as_str().unwrap_or_default().to_string());
    *balancer.healthy.lock().expect("not poisoned") = healthy;
    json!(health)
}

/// The readiness gate `gate` of this pod (if it has one) turned True, and the pod Ready when its
/// containers are and every other gate is too.
fn set_gate(store: &Store, pod: &Value, gate: &str) {
    let gated = pod["spec"]["readinessGates"]
        .as_array()
        .is_some_and(|g| g.iter().any(|x| x["conditionType"] == gate));
    if !gated || condition(pod, gate) {
        return;
    }
    let pods_res = resources::by_kind("Pod").expect("served");
    let _ = store.modify(
        pods_res,
        meta(pod, "namespace").unwrap_or(""),
        meta(pod, "name").unwrap_or(""),
        Part::Status,
        |cur| {
            let mut next = cur.clone();
            if cur["metadata"].get("deletionTimestamp").is_some() {
                // Terminating since the look: its target is deregistering, not healthy.
                return Ok(next);
            }
            let stamp = crate::store::now_rfc3339();
            let mut conditions: Vec<Value> = cur["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != gate);
            conditions.push(json!({"type": gate, "status": "True", "lastTransitionTime": stamp}));
            let ready =
                condition(cur, "ContainersReady") && gates_pass(cur, &json!(conditions.clone()));
            for c in conditions.iter_mut() {
                if c["type"] == "Ready" && (c["status"] == "True") != ready {
                    c["status"] = json!(if ready { "True" } else { "False" });
                    c["lastTransitionTime"] = json!(stamp);
                }
            }
            next["status"]["conditions"] = json!(conditions);
            Ok(next)
        },
    );
}

async fn bind_all(
    store: &Arc<Store>,
    svc: &Value,
    ip: &str,
    healthy: &Arc<Mutex<HashSet<String>>>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut listeners = Vec::new();
    let internal = scheme(svc) != "internet-facing";
    for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let number = port["port"].as_u64().ok_or("a port without a number")?;
        let listener = TcpListener::bind((ip, number as u16))
            .await
            .map_err(|e| format!("binding {ip}:{number}: {e}"))?;
        let store = store.clone();
        let ns = meta(svc, "namespace").unwrap_or("default").to_string();
        let selector = svc["spec"]["selector"].clone();
        let target = port["targetPort"].clone();
        let next = Arc::new(AtomicUsize::new(0));
        let healthy = healthy.clone();
        listeners.push(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                if internal && !from_vpc(peer.ip()) {
                    // Not routable from outside the VPC: nothing answers.
                    drop(inbound);
                    continue;
                }
                let backends: Vec<String> = {
                    let healthy = healthy.lock().expect("not poisoned");
                    serving_backends(&store, &ns, &selector, &target)
                        .into_iter()
                        .filter(|(ip, _)| healthy.contains(ip))
                        .map(|(_, at)| at)
                        .collect()
                };
                if backends.is_empty() {
                    // No healthy target (still registering counts as none, as a target is
                    // `initial` until it is registered and has passed its first checks): the
                    // connection is refused, as an NLB resets it.
                    drop(inbound);
                    continue;
                }
                let pick = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()].clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&pick).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
    Ok(listeners)
}

/// `ip:port` of every ready, non-terminating pod the selector picks (a Service's endpoints).
pub fn ready_backends(store: &Store, ns: &str, selector: &Value, target: &Value) -> Vec<String> {
    backends(store, ns, selector, target, pod_ready)
        .into_iter()
        .map(|(_, at)| at)
        .collect()
}

/// Pod IP and `ip:port` of every non-terminating pod the selector picks whose containers are
/// ready: an NLB's registered targets (with a readiness gate the pod is Ready only after its
/// target is healthy, so the NLB cannot wait for Ready).
fn serving_backends(
    store: &Store,
    ns: &str,
    selector: &Value,
    target: &Value,
) -> Vec<(String, String)> {
    backends(store, ns, selector, target, |p| {
        condition(p, "ContainersReady")
    })
}

fn backends(
    store: &Store,
    ns: &str,
    selector: &Value,
    target: &Value,
    ready: impl Fn(&Value) -> bool,
) -> Vec<(String, String)> {
    let pods = resources::by_kind("Pod").expect("served");
    let (all, _) = store.list(pods, Some(ns));
    all.iter()
        .filter(|p| {
            labels_match(selector, p)
                && p["metadata"].get("deletionTimestamp").is_none()
                && ready(p)
        })
        .filter_map(|p| {
            let ip = p["status"]["podIP"].as_str()?;
            let port = target_port(p, target)?;
            Some((ip.to_string(), format!("{ip}:{port}")))
        })
        .collect()
}

/// The pod's port a Service port's `targetPort` names: a number, or a container port's name.
fn target_port(pod: &Value, target: &Value) -> Option<u64> {
    match target {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|cp| cp["name"] == json!(name))?["containerPort"]
            .as_u64(),
        _ => None,
    }
}
