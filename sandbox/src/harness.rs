//! For tests (the sandbox's own and `release`'s end-to-end tests): start a real `sandbox serve` on
//! loopback with its own state directory, read its environment, and stop it (SIGTERM, then its
//! state removed) when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;

pub struct Sandbox {
    child: Child,
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sandbox/ is in the workspace")
        .to_path_buf()
}

/// The newest modification time under `dir` (sources of a package).
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut best = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        best = best.max(t);
    }
    best
}

/// A binary of this workspace, rebuilt (debug) when it is missing or older than its package's
/// sources, so a test of one package never runs another package's stale binary. `cargo test
/// --workspace` (CI) has just built it, and no rebuild happens.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let path = workspace().join("target/debug").join(name);
    let dir = if package == "release" {
        workspace().join("src")
    } else {
        workspace().join(package).join("src")
    };
    let built = path.metadata().and_then(|m| m.modified()).ok();
    if built.is_none() || built < newest(&dir) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--locked", "-p", package, "--bin", name])
            .current_dir(workspace())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building {name} failed");
    }
    path
}

/// The model-server binary without symbols or debug info (a quarter of the size, so image
/// builds and pushes in tests are quick).
pub fn model_server_binary() -> PathBuf {
    let bin = binary("model-server", "model-server");
    static STRIP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = STRIP.lock().unwrap_or_else(|p| p.into_inner());
    let stripped = workspace().join("target/debug/model-server.stripped");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if modified(&stripped) < modified(&bin) {
        let tmp = stripped.with_extension("tmp");
        let status = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&tmp)
            .arg(&bin)
            .status()
            .expect("strip (binutils; scripts/deps installs it)");
        assert!(status.success(), "strip failed");
        std::fs::rename(&tmp, &stripped).expect("rename the stripped binary");
    }
    stripped
}

impl Sandbox {
    /// Start a sandbox; `extra` are more `sandbox serve` flags (e.g. `--faults`).
    pub fn start(extra: &[&str]) -> Sandbox {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandbox-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let exe = binary("sandbox", "sandbox");
        let started = Instant::now();
        let child = Command::new(exe)
            .arg("serve")
            .arg("--state")
            .arg(&dir)
            .args([
                "--edge-delay",
                "0.5",
                "--lb-delay-ms",
                "100",
                "--target-delay-ms",
                "500",
            ])
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
                    "sandbox serve exited ({status}) before it was ready; is the venv there (scripts/deps makes it)? aws.log:\n{log}"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the sandbox did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for line in std::fs::read_to_string(&env_file)
            .expect("the env file")
            .lines()
        {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                sandbox.env.insert(k.to_string(), v.to_string());
            }
        }
        sandbox
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} is not in the sandbox env"))
    }

    /// The cluster CA, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        let pem = std::fs::read_to_string(self.dir.join("ca.pem")).expect("ca.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("a PEM body")
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
