//! End-to-end tests of the sandbox. `api` runs the cluster API in-process (no sockets); the
//! others start the real `sandbox serve` (cluster, moto launcher, edge) on loopback and stop it.

mod api;
mod aws;
mod cluster;
mod controllers;
mod kubectl;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use base64::Engine;

/// A running `sandbox serve`, stopped (SIGTERM) and its state removed on drop.
pub struct Sandbox {
    child: Child,
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Sandbox {
    pub fn start(extra: &[&str]) -> Sandbox {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandbox-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
            .arg("serve")
            .arg("--state")
            .arg(&dir)
            .args(["--edge-delay", "0.5", "--lb-delay-ms", "100"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sandbox binary starts");
        let mut sandbox = Sandbox {
            child,
            dir: dir.clone(),
            env: HashMap::new(),
        };
        let env_file = dir.join("env");
        while !env_file.exists() {
            if let Ok(Some(status)) = sandbox.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("aws.log")).unwrap_or_default();
                panic!(
                    "sandbox serve exited ({status}) before it was ready; is the venv there (scripts/sandbox up makes it)? aws.log:\n{log}"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the sandbox did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for line in std::fs::read_to_string(&env_file).unwrap().lines() {
            let (k, v) = line.trim_start_matches("export ").split_once('=').unwrap();
            sandbox.env.insert(k.to_string(), v.to_string());
        }
        sandbox
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} is not in the sandbox env"))
    }

    pub async fn aws(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(self.var("AWS_ENDPOINT_URL"))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecr::config::Credentials::new(
                "sandbox",
                "sandbox",
                None,
                None,
                "sandbox-e2e",
            ))
            .load()
            .await
    }

    pub fn ca_der(&self) -> Vec<u8> {
        pem_to_der(&std::fs::read_to_string(self.dir.join("ca.pem")).unwrap())
    }

    pub fn kube(&self) -> kube::Client {
        // Both ring (ours) and aws-lc-rs (the AWS SDK's) are linked in: pick one for kube's TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = kube::Config::new(self.var("SANDBOX_CLUSTER_URL").parse().unwrap());
        config.root_cert = Some(vec![self.ca_der()]);
        config.auth_info.token = Some(sandbox::sandbox_token("e2e", SystemTime::now()).into());
        kube::Client::try_from(config).expect("a kube client")
    }

    pub fn control(&self, path: &str) -> String {
        format!("{}/{path}", self.var("SANDBOX_CONTROL_URL"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Poll `f` until it gives `Some`, or panic after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The model-server binary without its debug info (a tenth of the size, so pushes are quick),
/// built if this test run has not built it yet.
pub fn model_server_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin = root.join("target/debug/model-server");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--locked", "-p", "model-server"])
            .current_dir(root)
            .status()
            .unwrap();
        assert!(status.success(), "building model-server failed");
    }
    static STRIP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = STRIP.lock().unwrap_or_else(|p| p.into_inner());
    let stripped = root.join("target/debug/model-server.stripped");
    let fresh = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if fresh(&stripped) < fresh(&bin) {
        let tmp = stripped.with_extension("tmp");
        let status = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&tmp)
            .arg(&bin)
            .status()
            .expect("strip (binutils) is installed");
        assert!(status.success(), "strip failed");
        std::fs::rename(&tmp, &stripped).unwrap();
    }
    stripped
}
