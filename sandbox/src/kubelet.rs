//! The simulated kubelet: each pod's container is its image, pulled from the AWS stand-in's ECR
//! (BatchGetImage, then GetDownloadUrlForLayer for the config and every layer), unpacked, and its
//! entrypoint run as a local process bound to the pod's own loopback address. Probes are the pod's
//! own (httpGet, tcpSocket); a process that exits is restarted with back-off (`CrashLoopBackOff`),
//! an image that cannot be pulled is `ImagePullBackOff`; deletion runs the preStop sleep, then
//! SIGTERM, then SIGKILL after the grace period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::watch;

use crate::deployments::gates_pass;
use crate::resources::{self, Resource};
use crate::store::{Part, Store, meta, now_rfc3339};
use crate::system::{self, SystemImage};

/// Where a pod's container runs; what the kubelet needs to pull images.
pub struct Kubelet {
    pub store: Arc<Store>,
    pub state_dir: PathBuf,
    pub aws_url: String,
    /// The cluster network's forward proxy (`cluster_net`), every pod's `HTTP_PROXY`.
    pub cluster_proxy: String,
    pub http: reqwest::Client,
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// One pull at a time, so that two pods of one image unpack it once.
    pulls: tokio::sync::Mutex<()>,
}

fn pods() -> &'static Resource {
    resources::by_kind("Pod").expect("served")
}

impl Kubelet {
    pub fn new(
        store: Arc<Store>,
        state_dir: PathBuf,
        aws_url: String,
        cluster_proxy: String,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client");
        Arc::new(Kubelet {
            store,
            state_dir,
            aws_url,
            cluster_proxy,
            http,
            running: Mutex::new(HashMap::new()),
            pulls: tokio::sync::Mutex::new(()),
        })
    }

    pub fn logs_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("logs")
    }

    pub async fn run(self: Arc<Self>) {
        let mut changes = self.store.subscribe_changes();
        loop {
            self.sync();
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn sync(self: &Arc<Self>) {
        let (all, _) = self.store.list(pods(), None);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for pod in &all {
            let uid = meta(pod, "uid").unwrap_or_default().to_string();
            let deleting = pod["metadata"].get("deletionTimestamp").is_some();
            match running.get(&uid) {
                Some(tx) => {
                    if deleting {
                        tx.send_replace(true);
                    }
                }
                None if deleting => {
                    // Deleted before it ever started here.
                    self.store.remove(
                        pods(),
                        meta(pod, "namespace").unwrap_or(""),
                        meta(pod, "name").unwrap_or(""),
                    );
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    running.insert(uid.clone(), tx);
                    let me = self.clone();
                    let ns = meta(pod, "namespace").unwrap_or("default").to_string();
                    let name = meta(pod, "name").unwrap_or_default().to_string();
                    tokio::spawn(async move {
                        me.clone().run_pod(ns, name, rx).await;
                        me.running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&uid);
                    });
                }
            }
        }
        let live: Vec<String> = all
            .iter()
            .filter_map(|p| meta(p, "uid").map(str::to_string))
            .collect();
        for (uid, tx) in running.iter() {
            if !live.contains(uid) {
                tx.send_replace(true);
            }
        }
    }

    /// A pod address whose container ports nothing else holds (another sandbox may run beside us).
    fn free_ip(&self, container: &Value) -> String {
        let ports: Vec<u16> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .map(|p| p as u16)
            .collect();
        loop {
            let ip = self.store.allocate_ip(10);
            if ports
                .iter()
                .all(|p| std::net::TcpListener::bind((ip.as_str(), *p)).is_ok())
            {
                return ip;
            }
        }
    }

    async fn run_pod(
        self: Arc<Self>,
        ns: String,
        name: String,
        mut deleted: watch::Receiver<bool>,
    ) {
        let Ok(pod) = self.store.get(pods(), &ns, &name) else {
            return;
        };
        if pod["metadata"]["annotations"][system::COMPUTE_TYPE] == "ec2" {
            // Fargate does not take a pod annotated for EC2, and a Fargate-only cluster has no
            // node: it stays Pending (EKS's own CoreDNS, until its add-on says computeType Fargate).
            self.unschedulable(&ns, &name);
            while !*deleted.borrow() {
                if deleted.changed().await.is_err() {
                    break;
                }
            }
            self.store.remove(pods(), &ns, &name);
            return;
        }
        let ip = self.free_ip(&pod["spec"]["containers"][0]);
        let _ = self.store.modify(pods(), &ns, &name, Part::Main, |cur| {
            let mut next = cur.clone();
            next["spec"]["nodeName"] = json!("sandbox-node");
            Ok(next)
        });
        let container = pod["spec"]["containers"][0].clone();
        let mut pod_run = PodRun::new(self.clone(), ns.clone(), name.clone(), ip, container);
        pod_run.publish("Pending");
        pod_run.run(&mut deleted).await;
        self.store.remove(pods(), &ns, &name);
    }
}

impl Kubelet {
    fn unschedulable(&self, ns: &str, name: &str) {
        let message = "0/0 nodes are available: no nodes available to schedule pods (Fargate does not schedule a pod annotated eks.amazonaws.com/compute-type: ec2)";
        let _ = self.store.modify(pods(), ns, name, Part::Status, |cur| {
            let mut next = cur.clone();
            next["status"] = json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now_rfc3339()}]});
            Ok(next)
        });
        if let Ok(pod) = self.store.get(pods(), ns, name) {
            self.store
                .event(&pod, "Pod", "Warning", "FailedScheduling", message);
        }
    }
}

/// What a container is doing, as its containerStatus reports it.
struct PodRun {
    kubelet: Arc<Kubelet>,
    ns: String,
    name: String,
    ip: String,
    container: Value,
    state: Value,
    last_state: Value,
    ready: bool,
    started: bool,
    restarts: i64,
    image_id: String,
    start_time: String,
}

enum Outcome {
    Exited(String),
    Deleted,
}

impl PodRun {
    fn new(kubelet: Arc<Kubelet>, ns: String, name: String, ip: String, container: Value) -> Self {
        PodRun {
            kubelet,
            ns,
            name,
            ip,
            container,
            state: json!({"waiting": {"reason": "ContainerCreating"}}),
            last_state: json!({}),
            ready: false,
            started: false,
            restarts: 0,
            image_id: String::new(),
            start_time: now_rfc3339(),
        }
    }

    fn store(&self) -> &Store {
        &self.kubelet.store
    }

    fn pod(&self) -> Value {
        self.store()
            .get(pods(), &self.ns, &self.name)
            .unwrap_or(Value::Null)
    }

    fn event(&self, event_type: &str, reason: &str, message: &str) {
        let pod = self.pod();
        if !pod.is_null() {
            self.store().event(&pod, "Pod", event_type, reason, message);
        }
    }

    fn publish(&self, phase: &str) {
        let ready = if self.ready { "True" } else { "False" };
        let stamp = now_rfc3339();
        let status = json!({
            "phase": phase, "podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1",
            "startTime": self.start_time, "qosClass": "Burstable",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": [{
                "name": self.container["name"], "image": self.container["image"], "imageID": self.image_id,
                "ready": self.ready, "started": self.started, "restartCount": self.restarts,
                "state": self.state, "lastState": self.last_state,
            }],
        });
        let _ = self
            .store()
            .modify(pods(), &self.ns, &self.name, Part::Status, |cur| {
                let mut next = cur.clone();
                // Keep transition times stable unless the condition changed.
                let mut status = status.clone();
                // The readiness gates' conditions are another controller's to set: kept, and
                // the pod is Ready only when its containers are and every gate is.
                let gated = cur["spec"]["readinessGates"]
                    .as_array()
                    .is_some_and(|g| !g.is_empty());
                if gated && let Some(conditions) = status["conditions"].as_array_mut() {
                    let gates: Vec<Value> = cur["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| {
                            cur["spec"]["readinessGates"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|g| g["conditionType"] == c["type"])
                        })
                        .cloned()
                        .collect();
                    conditions.extend(gates);
                    let ready = self.ready && gates_pass(cur, &status["conditions"]);
                    for c in status["conditions"].as_array_mut().into_iter().flatten() {
                        if c["type"] == "Ready" {
                            c["status"] = json!(if ready { "True" } else { "False" });
                        }
                    }
                }
                if let (Some(new), Some(old)) = (
                    status["conditions"].as_array_mut(),
                    cur["status"]["conditions"].as_array(),
                ) {
                    for c in new.iter_mut() {
                        let prev = old.iter().find(|o| o["type"] == c["type"]);
                        c["lastTransitionTime"] = match prev {
                            Some(p) if p["status"] == c["status"] => {
                                p["lastTransitionTime"].clone()
                            }
                            _ => json!(stamp),
                        };
                    }
                }
                next["status"] = status;
                Ok(next)
            });
    }

    async fn run(&mut self, deleted: &mut watch::Receiver<bool>) {
        let image_ref = self.container["image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Its secret volumes are mounted first: a missing Secret keeps it ContainerCreating.
        while let Some(missing) = self.missing_secret_volume() {
            self.event(
                "Warning",
                "FailedMount",
                &format!("MountVolume.SetUp failed for volume: secret \"{missing}\" not found"),
            );
            if wait_or_deleted(deleted, Duration::from_secs(1)).await {
                return;
            }
        }
        if let Some(kind) = system::system_image(&image_ref) {
            return self.run_system(kind, &image_ref, deleted).await;
        }
        // Pull, with back-off.
        let mut backoff = Duration::from_secs(1);
        let image = loop {
            if *deleted.borrow() {
                return;
            }
            self.event(
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image_ref}\""),
            );
            let started = Instant::now();
            match pull(&self.kubelet, &image_ref).await {
                Ok(img) => {
                    self.event(
                        "Normal",
                        "Pulled",
                        &format!(
                            "Successfully pulled image \"{image_ref}\" in {:?}",
                            started.elapsed()
                        ),
                    );
                    break img;
                }
                Err(why) => {
                    self.event(
                        "Warning",
                        "Failed",
                        &format!("Failed to pull image \"{image_ref}\": {why}"),
                    );
                    self.state = json!({"waiting": {"reason": "ErrImagePull", "message": why}});
                    self.publish("Pending");
                    if wait_or_deleted(deleted, Duration::from_millis(300)).await {
                        return;
                    }
                    self.state = json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image_ref}\": {why}")}});
                    self.publish("Pending");
                    self.event(
                        "Normal",
                        "BackOff",
                        &format!("Back-off pulling image \"{image_ref}\""),
                    );
                    if wait_or_deleted(deleted, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(20));
                }
            }
        };
        self.image_id = format!(
            "{}@{}",
            image_ref
                .split('@')
                .next()
                .unwrap_or_default()
                .rsplit_once(':')
                .map_or(image_ref.as_str(), |(r, _)| r),
            image.digest
        );

        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = self.run_once(&image, deleted).await;
            match outcome {
                Outcome::Deleted => return,
                Outcome::Exited(reason) => {
                    self.restarts += 1;
                    self.ready = false;
                    self.started = false;
                    self.last_state =
                        json!({"terminated": {"reason": reason, "finishedAt": now_rfc3339()}});
                    let message = format!(
                        "back-off {}s restarting failed container={} pod={}",
                        backoff.as_secs(),
                        self.container["name"].as_str().unwrap_or(""),
                        self.name
                    );
                    self.state =
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
                    self.publish("Running");
                    self.event("Warning", "BackOff", "Back-off restarting failed container");
                    if wait_or_deleted(deleted, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The first Secret a (non-optional) secret volume of the pod names that does not exist.
    fn missing_secret_volume(&self) -> Option<String> {
        let pod = self.pod();
        let secrets = resources::by_kind("Secret").expect("served");
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["secret"]["optional"] != true)
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .find(|s| self.store().get(secrets, &self.ns, s).is_err())
            .map(str::to_string)
    }

    /// A system image (EKS's CoreDNS, the AWS Load Balancer Controller) runs simulated: ready
    /// when it can start (src/system.rs), else it exits with the reason in its log and is
    /// restarted with back-off, as the real container would be.
    async fn run_system(
        &mut self,
        kind: SystemImage,
        image_ref: &str,
        deleted: &mut watch::Receiver<bool>,
    ) {
        self.image_id = image_ref.to_string();
        let mut backoff = Duration::from_secs(1);
        loop {
            if *deleted.borrow() {
                return;
            }
            let why = match kind {
                SystemImage::CoreDns => None,
                SystemImage::LoadBalancerController => {
                    let k = &self.kubelet;
                    system::controller_start(&k.store, &k.http, &k.aws_url, &self.pod()).await
                }
            };
            self.event("Normal", "Started", "Started container");
            let Some(why) = why else {
                self.state = json!({"running": {"startedAt": now_rfc3339()}});
                self.started = true;
                self.ready = true;
                self.publish("Running");
                while !wait_or_deleted(deleted, Duration::from_secs(3600)).await {}
                return;
            };
            let container_name = self.container["name"].as_str().unwrap_or("main");
            let log_dir = Kubelet::logs_dir(&self.kubelet.state_dir);
            let _ = std::fs::create_dir_all(&log_dir);
            let line = json!({"level": "error", "ts": now_rfc3339(), "msg": why});
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_dir.join(format!("{}_{}_{container_name}.log", self.ns, self.name)))
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
                });
            self.restarts += 1;
            self.ready = false;
            self.last_state = json!({"terminated": {"exitCode": 1, "reason": "Error", "message": why, "finishedAt": now_rfc3339()}});
            self.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {}s restarting failed container={container_name} pod={}", backoff.as_secs(), self.name)}});
            self.publish("Running");
            self.event("Warning", "BackOff", "Back-off restarting failed container");
            if wait_or_deleted(deleted, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn env(&self, image: &Image) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = image.env.clone();
        // Service names resolve through the sandbox's cluster network (cluster_net), as cluster
        // DNS resolves them on EKS; loopback (the sandbox's own endpoints) goes direct. A pod
        // spec's own values win.
        env.retain(|(k, _)| k != "HTTP_PROXY" && k != "NO_PROXY");
        env.push(("HTTP_PROXY".into(), self.kubelet.cluster_proxy.clone()));
        env.push(("NO_PROXY".into(), "127.0.0.1,localhost".into()));
        let mut set = |k: String, v: String| {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        };
        let pod = self.pod();
        for e in self.container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            if let Some(v) = e.get("value") {
                set(
                    name,
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                );
                continue;
            }
            let from = &e["valueFrom"];
            if let Some(r) = from
                .get("secretKeyRef")
                .or_else(|| from.get("configMapKeyRef"))
            {
                let secret = from.get("secretKeyRef").is_some();
                let kind = if secret { "Secret" } else { "ConfigMap" };
                let obj_name = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                let optional = r["optional"].as_bool().unwrap_or(false);
                let res = resources::by_kind(kind).expect("served");
                let value = match self.store().get(res, &self.ns, obj_name) {
                    Ok(obj) if secret => obj["data"][key]
                        .as_str()
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .and_then(|b| String::from_utf8(b).ok())
                        .or_else(|| obj["stringData"][key].as_str().map(str::to_string)),
                    Ok(obj) => obj["data"][key].as_str().map(str::to_string),
                    Err(_) => None,
                };
                match value {
                    Some(v) => set(name, v),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "couldn't find key {key} in {kind} {}/{obj_name}",
                            self.ns
                        ));
                    }
                }
            } else if let Some(f) = from.get("fieldRef") {
                let path = f["fieldPath"].as_str().unwrap_or_default();
                let v = match path {
                    "status.podIP" => Some(self.ip.clone()),
                    "status.hostIP" => Some("127.0.0.1".into()),
                    "spec.nodeName" => Some("sandbox-node".into()),
                    "metadata.name" => Some(self.name.clone()),
                    "metadata.namespace" => Some(self.ns.clone()),
                    "metadata.uid" => meta(&pod, "uid").map(str::to_string),
                    p => p
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                        .and_then(|l| pod["metadata"]["labels"][l].as_str().map(str::to_string)),
                };
                set(name, v.unwrap_or_default());
            }
        }
        Ok(env)
    }

    async fn run_once(&mut self, image: &Image, deleted: &mut watch::Receiver<bool>) -> Outcome {
        let env = match self.env(image) {
            Ok(env) => env,
            Err(why) => {
                self.state =
                    json!({"waiting": {"reason": "CreateContainerConfigError", "message": why}});
                self.publish("Pending");
                self.event("Warning", "Failed", &format!("Error: {why}"));
                if wait_or_deleted(deleted, Duration::from_secs(2)).await {
                    return Outcome::Deleted;
                }
                return Outcome::Exited("CreateContainerConfigError".into());
            }
        };
        let expand = |s: &str| {
            let mut out = s.to_string();
            for (k, v) in &env {
                out = out.replace(&format!("$({k})"), v);
            }
            out
        };
        let strings = |v: &Value| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(expand)
                    .collect::<Vec<_>>()
            })
        };
        let (entry, args) = match strings(&self.container["command"]) {
            Some(cmd) => (cmd, strings(&self.container["args"]).unwrap_or_default()),
            None => (
                image.entrypoint.clone(),
                strings(&self.container["args"]).unwrap_or_else(|| image.cmd.clone()),
            ),
        };
        let argv: Vec<String> = entry.into_iter().chain(args).collect();
        let Some(program) = argv.first() else {
            self.event("Warning", "Failed", "Error: no command specified");
            return Outcome::Exited("StartError".into());
        };
        let exe = image.rootfs.join(program.trim_start_matches('/'));
        let workdir = image.rootfs.join(image.workdir.trim_start_matches('/'));
        let container_name = self.container["name"]
            .as_str()
            .unwrap_or("main")
            .to_string();
        let log_dir = Kubelet::logs_dir(&self.kubelet.state_dir);
        let _ = std::fs::create_dir_all(&log_dir);
        let log_path = log_dir.join(format!("{}_{}_{}.log", self.ns, self.name, container_name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(if workdir.is_dir() {
                workdir
            } else {
                image.rootfs.clone()
            });
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe work (one prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.event(
                    "Warning",
                    "Failed",
                    &format!(
                        "Error: failed to start container \"{container_name}\": exec {}: {e}",
                        program
                    ),
                );
                return Outcome::Exited("StartError".into());
            }
        };
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        self.event(
            "Normal",
            "Created",
            &format!("Created container {container_name}"),
        );
        self.event(
            "Normal",
            "Started",
            &format!("Started container {container_name}"),
        );
        self.state = json!({"running": {"startedAt": now_rfc3339()}});
        self.ready = false;
        self.started = self.container.get("startupProbe").is_none();
        self.publish("Running");

        let mut readiness = Probe::new(
            self.container.get("readinessProbe"),
            &self.container,
            &self.ip,
        );
        let mut liveness = Probe::new(
            self.container.get("livenessProbe"),
            &self.container,
            &self.ip,
        );
        let mut startup = Probe::new(
            self.container.get("startupProbe"),
            &self.container,
            &self.ip,
        );
        if readiness.is_none() {
            self.ready = self.started;
            self.publish("Running");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let code = status.ok().and_then(|s| s.code());
                    let reason = if code == Some(0) { "Completed" } else { "Error" };
                    self.state = json!({"terminated": {"exitCode": code.unwrap_or(137), "reason": reason, "finishedAt": now_rfc3339()}});
                    return Outcome::Exited(reason.into());
                }
                _ = deleted.changed() => {
                    self.terminate(&mut child, pid).await;
                    return Outcome::Deleted;
                }
                _ = tick.tick() => {
                    let http = self.kubelet.http.clone();
                    if !self.started {
                        if let Some(p) = startup.as_mut() {
                            match p.due_check(&http).await {
                                Some(ProbeResult::Passed) => { self.started = true; if readiness.is_none() { self.ready = true; } self.publish("Running"); }
                                Some(ProbeResult::Failed(why)) => {
                                    self.event("Warning", "Unhealthy", &format!("Startup probe failed: {why}"));
                                    if p.tripped() {
                                        self.event("Normal", "Killing", &format!("Container {container_name} failed startup probe, will be restarted"));
                                        self.kill(&mut child, pid).await;
                                        return Outcome::Exited("Error".into());
                                    }
                                }
                                None => {}
                            }
                        }
                        continue;
                    }
                    if let Some(p) = liveness.as_mut()
                        && let Some(ProbeResult::Failed(why)) = p.due_check(&http).await {
                            self.event("Warning", "Unhealthy", &format!("Liveness probe failed: {why}"));
                            if p.tripped() {
                                self.event("Normal", "Killing", &format!("Container {container_name} failed liveness probe, will be restarted"));
                                self.kill(&mut child, pid).await;
                                return Outcome::Exited("Error".into());
                            }
                        }
                    if let Some(p) = readiness.as_mut()
                        && let Some(result) = p.due_check(&http).await {
                            if let ProbeResult::Failed(why) = &result {
                                self.event("Warning", "Unhealthy", &format!("Readiness probe failed: {why}"));
                            }
                            let ready = p.is_ready();
                            if ready != self.ready {
                                self.ready = ready;
                                self.publish("Running");
                            }
                        }
                }
            }
        }
    }

    /// Pod deletion: preStop (sleep), SIGTERM, then SIGKILL once the grace period is over.
    async fn terminate(&mut self, child: &mut tokio::process::Child, pid: Option<Pid>) {
        let pod = self.pod();
        let grace = Duration::from_secs(
            pod["metadata"]["deletionGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        );
        let deadline = Instant::now() + grace;
        self.ready = false;
        self.publish("Running");
        let name = self.container["name"]
            .as_str()
            .unwrap_or("main")
            .to_string();
        self.event("Normal", "Killing", &format!("Stopping container {name}"));
        let pre_stop = &self.container["lifecycle"]["preStop"];
        let sleep = pre_stop["sleep"]["seconds"].as_u64().or_else(|| {
            // An exec of `sleep N` (or `sh -c "sleep N"`) is honoured as a sleep.
            let cmd: Vec<&str> = pre_stop["exec"]["command"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let text = cmd.join(" ");
            text.split_whitespace()
                .skip_while(|w| !w.ends_with("sleep"))
                .nth(1)?
                .parse()
                .ok()
        });
        if let Some(secs) = sleep {
            let until = (Instant::now() + Duration::from_secs(secs)).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = child.wait() => return,
            }
        }
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGTERM);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => self.kill(child, pid).await,
            _ = child.wait() => {}
        }
    }

    async fn kill(&self, child: &mut tokio::process::Child, pid: Option<Pid>) {
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
}

async fn wait_or_deleted(deleted: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *deleted.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *deleted.borrow(),
        _ = deleted.changed() => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Probes

enum ProbeResult {
    Passed,
    Failed(String),
}

struct Probe {
    url: Option<String>,
    tcp: Option<String>,
    next: Instant,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    ready: bool,
}

fn resolve_port(port: &Value, container: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == json!(name))?["containerPort"]
            .as_u64(),
        _ => None,
    }
}

impl Probe {
    fn new(spec: Option<&Value>, container: &Value, ip: &str) -> Option<Probe> {
        let spec = spec?;
        let secs = |k: &str, d: u64| spec[k].as_u64().unwrap_or(d);
        let (url, tcp) = if let Some(h) = spec.get("httpGet") {
            let port = resolve_port(&h["port"], container)?;
            let host = h["host"].as_str().unwrap_or(ip);
            let path = h["path"].as_str().unwrap_or("/");
            (Some(format!("http://{host}:{port}{path}")), None)
        } else if let Some(t) = spec.get("tcpSocket") {
            (
                None,
                Some(format!(
                    "{}:{}",
                    t["host"].as_str().unwrap_or(ip),
                    resolve_port(&t["port"], container)?
                )),
            )
        } else {
            return None;
        };
        Some(Probe {
            url,
            tcp,
            next: Instant::now() + Duration::from_secs(secs("initialDelaySeconds", 0)),
            period: Duration::from_secs(secs("periodSeconds", 10).max(1)),
            timeout: Duration::from_secs(secs("timeoutSeconds", 1).max(1)),
            success_threshold: secs("successThreshold", 1).max(1) as u32,
            failure_threshold: secs("failureThreshold", 3).max(1) as u32,
            successes: 0,
            failures: 0,
            ready: false,
        })
    }

    async fn due_check(&mut self, http: &reqwest::Client) -> Option<ProbeResult> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + self.period;
        let result = if let Some(url) = &self.url {
            match http.get(url).timeout(self.timeout).send().await {
                Ok(r) if r.status().as_u16() >= 200 && r.status().as_u16() < 400 => {
                    ProbeResult::Passed
                }
                Ok(r) => ProbeResult::Failed(format!(
                    "HTTP probe failed with statuscode: {}",
                    r.status().as_u16()
                )),
                Err(e) => ProbeResult::Failed(format!("Get \"{url}\": {e}")),
            }
        } else {
            let addr = self.tcp.clone().unwrap_or_default();
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => ProbeResult::Passed,
                _ => ProbeResult::Failed(format!("dial tcp {addr}: connect: connection refused")),
            }
        };
        match result {
            ProbeResult::Passed => {
                self.successes += 1;
                self.failures = 0;
                if self.successes >= self.success_threshold {
                    self.ready = true;
                }
            }
            ProbeResult::Failed(_) => {
                self.failures += 1;
                self.successes = 0;
                if self.failures >= self.failure_threshold {
                    self.ready = false;
                }
            }
        }
        Some(result)
    }

    fn is_ready(&self) -> bool {
        self.ready
    }

    fn tripped(&self) -> bool {
        self.failures >= self.failure_threshold
    }
}

// ---------------------------------------------------------------------------------------------
// Image pulls from the AWS stand-in's ECR

pub struct Image {
    pub digest: String,
    pub rootfs: PathBuf,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
}

#[derive(Debug)]
struct ImageRef {
    registry_id: String,
    region: String,
    repository: String,
    reference: Value,
}

fn parse_image_ref(image: &str) -> Result<ImageRef, String> {
    let (registry, rest) = image.split_once('/').ok_or_else(|| {
        format!("{image:?} names no registry; the sandbox pulls only from its ECR")
    })?;
    let parts: Vec<&str> = registry.split('.').collect();
    if parts.len() < 6 || parts[1] != "dkr" || parts[2] != "ecr" {
        return Err(format!(
            "{registry} is not an ECR registry (<account>.dkr.ecr.<region>.amazonaws.com); the sandbox pulls only from its ECR"
        ));
    }
    let (repository, reference) = if let Some((repo, digest)) = rest.split_once('@') {
        (repo, json!({"imageDigest": digest}))
    } else if let Some((repo, tag)) = rest.rsplit_once(':') {
        (repo, json!({"imageTag": tag}))
    } else {
        (rest, json!({"imageTag": "latest"}))
    };
    Ok(ImageRef {
        registry_id: parts[0].into(),
        region: parts[3].into(),
        repository: repository.into(),
        reference,
    })
}

async fn ecr_call(k: &Kubelet, region: &str, action: &str, body: Value) -> Result<Value, String> {
    let date = "20260101";
    let resp = k
        .http
        .post(&k.aws_url)
        .header("X-Amz-Target", format!("AmazonEC2ContainerRegistry_V20150921.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("Authorization", format!("AWS4-HMAC-SHA256 Credential=sandbox/{date}/{region}/ecr/aws4_request, SignedHeaders=host, Signature=0"))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("ECR {action}: {e}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("ECR {action}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "ECR {action}: {} {}",
            v["__type"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or("")
        ));
    }
    Ok(v)
}

async fn blob(k: &Kubelet, r: &ImageRef, digest: &str) -> Result<Vec<u8>, String> {
    let v = ecr_call(
        k,
        &r.region,
        "GetDownloadUrlForLayer",
        json!({"registryId": r.registry_id, "repositoryName": r.repository, "layerDigest": digest}),
    )
    .await?;
    let url = v["downloadUrl"]
        .as_str()
        .ok_or("GetDownloadUrlForLayer gave no downloadUrl")?;
    let bytes = k
        .http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("downloading {digest}: {e}"))?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let actual = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
    if actual != digest {
        return Err(format!("layer {digest} downloaded as {actual}"));
    }
    Ok(bytes.to_vec())
}

pub async fn pull(k: &Kubelet, image: &str) -> Result<Image, String> {
    let r = parse_image_ref(image)?;
    let _one_at_a_time = k.pulls.lock().await;
    let v = ecr_call(
        k,
        &r.region,
        "BatchGetImage",
        json!({"registryId": r.registry_id, "repositoryName": r.repository, "imageIds": [r.reference],
               "acceptedMediaTypes": ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]}),
    )
    .await?;
    let Some(found) = v["images"].as_array().and_then(|a| a.first()) else {
        let why = v["failures"][0]["failureReason"]
            .as_str()
            .unwrap_or("not found");
        return Err(format!("{image}: manifest unknown ({why})"));
    };
    let manifest_text = found["imageManifest"]
        .as_str()
        .ok_or("BatchGetImage gave no manifest")?;
    let digest = format!(
        "sha256:{:x}",
        sha2::Sha256::digest(manifest_text.as_bytes())
    );
    if let Some(wanted) = r.reference["imageDigest"].as_str()
        && wanted != digest
    {
        return Err(format!("the manifest's digest is {digest}, not {wanted}"));
    }
    let manifest: Value = serde_json::from_str(manifest_text)
        .map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let dir = k.state_dir.join("images").join(digest.replace(':', "-"));
    let rootfs = dir.join("rootfs");
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or("the manifest has no config")?;
        let config = blob(k, &r, config_digest).await?;
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("rootfs")).map_err(|e| e.to_string())?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let ld = layer["digest"].as_str().ok_or("a layer has no digest")?;
            let bytes = blob(k, &r, ld).await?;
            let gz = layer["mediaType"].as_str().unwrap_or("").contains("gzip")
                || bytes.starts_with(&[0x1f, 0x8b]);
            let target = tmp.join("rootfs");
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let reader: Box<dyn std::io::Read> = if gz {
                    Box::new(flate2::read::GzDecoder::new(&bytes[..]))
                } else {
                    Box::new(&bytes[..])
                };
                let mut archive = tar::Archive::new(reader);
                archive.set_preserve_permissions(true);
                archive
                    .unpack(&target)
                    .map_err(|e| format!("unpacking a layer: {e}"))
            })
            .await
            .map_err(|e| e.to_string())??;
        }
        std::fs::write(tmp.join("config.json"), &config).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())?;
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(&config_path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("the image config is not JSON: {e}"))?;
    let c = &config["config"];
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    Ok(Image {
        digest,
        rootfs,
        entrypoint: list(&c["Entrypoint"]),
        cmd: list(&c["Cmd"]),
        env: list(&c["Env"])
            .into_iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect(),
        workdir: c["WorkingDir"].as_str().unwrap_or("/").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_name_ecr_repositories() {
        let r = parse_image_ref("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@sha256:abc")
            .unwrap();
        assert_eq!(
            (
                r.registry_id.as_str(),
                r.region.as_str(),
                r.repository.as_str()
            ),
            ("123456789012", "eu-west-1", "team/app")
        );
        assert_eq!(r.reference, json!({"imageDigest": "sha256:abc"}));
        let r = parse_image_ref("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1").unwrap();
        assert_eq!(r.reference, json!({"imageTag": "v1"}));
        assert!(
            parse_image_ref("nginx:latest")
                .unwrap_err()
                .contains("only from its ECR")
        );
        assert!(parse_image_ref("docker.io/library/nginx").is_err());
    }
}
