//! What the end-to-end tests of `release` share: running the real binary against a sandbox
//! (configured only through the sandbox's standard AWS environment), reading its JSON summary,
//! and reading the state bucket.
// Each test file uses some of these helpers, not all.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sandbox::harness::{Sandbox, workspace};
use serde_json::{Value, json};

/// `release --config <config> --output json <args>` with nothing in its environment but PATH, a
/// HOME of its own, GIT_SHA and the sandbox's variables.
pub fn release_command(sb: &Sandbox, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_release"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_SHA", "build-1")
        .env("HOME", &sb.dir);
    for (k, v) in &sb.env {
        cmd.env(k, v);
    }
    cmd.arg("--config")
        .arg(config)
        .args(["--output", "json"])
        .args(args);
    cmd
}

pub fn release(sb: &Sandbox, config: &Path, args: &[&str]) -> Output {
    release_command(sb, config, args).output().unwrap()
}

/// The run succeeded; otherwise fail showing `what`, its status and its output.
pub fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The run exited with `code`; otherwise fail showing its output.
pub fn exits_with(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The final `summary` object of a run's JSON output.
pub fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["event"] == "summary");
    last.unwrap_or_else(|| {
        panic!(
            "no summary; stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })["summary"]
        .clone()
}

/// The AWS SDK configuration for the sandbox's endpoint, region and dummy credentials.
pub async fn aws(sb: &Sandbox) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(sb.var("AWS_ENDPOINT_URL"))
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "sandbox", "sandbox", None, None, "test",
        ))
        .load()
        .await
}

/// An S3 client on the sandbox (path-style, as for any custom endpoint).
pub async fn s3(sb: &Sandbox) -> aws_sdk_s3::Client {
    let conf = aws(sb).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

/// A JSON object of the app's state (`apps/iris/<key>`), if it is there.
pub async fn object(s3: &aws_sdk_s3::Client, key: &str) -> Option<Value> {
    let out = s3
        .get_object()
        .bucket(STATE_BUCKET)
        .key(key)
        .send()
        .await
        .ok()?;
    serde_json::from_slice(&out.body.collect().await.unwrap().into_bytes()).ok()
}

/// The state bucket `release` names by default in the sandbox: `<app>-release-<account>-<region>`,
/// with moto's account and the sandbox's region.
pub const STATE_BUCKET: &str = "iris-release-123456789012-us-east-1";

/// Every release in the ledger in `bucket`, oldest first: the head says how many were
/// numbered, each is an object of its own.
pub async fn releases_in(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<Value> {
    let get = |key: String| async move {
        let out = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
        serde_json::from_slice::<Value>(&out.body.collect().await.unwrap().into_bytes()).ok()
    };
    let head = get("apps/iris/ledger-head.json".into())
        .await
        .expect("a ledger head");
    let mut releases = Vec::new();
    for seq in 1..head["next"].as_u64().unwrap() {
        if let Some(r) = get(format!("apps/iris/releases/{seq:010}.json")).await {
            releases.push(r);
        }
    }
    releases
}

/// Every release in the app's ledger, oldest first.
pub async fn releases(s3: &aws_sdk_s3::Client) -> Vec<Value> {
    releases_in(s3, STATE_BUCKET).await
}

/// The newest entry of the ledger.
pub async fn last_release(s3: &aws_sdk_s3::Client) -> Value {
    releases(s3).await.pop().expect("a release in the ledger")
}

/// One request through the edge: when it was sent and answered, and which colour answered it
/// (`error: ...` for a failed request).
#[derive(Debug, Clone)]
pub struct Seen {
    pub sent: std::time::SystemTime,
    pub answered: std::time::SystemTime,
    pub colour: String,
}

/// A steady stream of `/version` requests through the edge until `stop` is set.
pub fn edge_traffic(
    edge: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Seen>> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = std::time::SystemTime::now();
            let colour = match http
                .get(format!("{edge}/version"))
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json::<Value>())
            {
                Ok(v) => v["colour"].as_str().unwrap_or("?").to_string(),
                Err(e) => format!("error: {e}"),
            };
            let answered = std::time::SystemTime::now();
            seen.push(Seen {
                sent,
                answered,
                colour,
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        seen
    })
}

/// When a step started and finished, from a run's JSON events (millisecond timestamps).
pub fn step_window(out: &Output, step: &str) -> (std::time::SystemTime, std::time::SystemTime) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let at = |event: &str| {
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == event && v["step"] == step)
            .and_then(|v| humantime::parse_rfc3339(v["time"].as_str()?).ok())
            .unwrap_or_else(|| panic!("no {event} of step {step:?} in:\n{stdout}"))
    };
    (at("step_started"), at("step_finished"))
}

/// Traffic moved from `from` to `to` exactly with the flip step of `out`: nothing failed, no
/// answer from `to` was sent before the flip started, none from `from` was sent after it finished
/// (allowing `slack` for a request in flight), and `to` answered before it finished. Within the
/// step both may answer: CloudFront's locations take the new origin at different times (the
/// sandbox's edge picks per request while the change propagates).
pub fn assert_switch_with_flip(
    seen: &[Seen],
    out: &Output,
    flip_step: &str,
    from: &str,
    to: &str,
    slack: std::time::Duration,
) {
    let (start, end) = step_window(out, flip_step);
    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.colour.starts_with("error"))
        .collect();
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    let first_to = seen
        .iter()
        .position(|s| s.colour == to)
        .unwrap_or_else(|| panic!("{to} never answered: {seen:?}"));
    assert!(
        seen[first_to].answered >= start,
        "{to} answered before the flip started"
    );
    assert!(
        seen[first_to].sent <= end + slack,
        "{to} first answered {:?} after the flip finished",
        seen[first_to].sent.duration_since(end).unwrap_or_default()
    );
    let late_from: Vec<_> = seen
        .iter()
        .filter(|s| s.colour == from && s.sent > end + slack)
        .collect();
    assert!(
        late_from.is_empty(),
        "{from} answered after the flip finished: {late_from:?}"
    );
    assert!(
        seen.iter().all(|s| s.colour == from || s.colour == to),
        "only {from} and {to} answered"
    );
}

/// A release.yaml for app `iris` on the sandbox: this binary and the bundled model as the image,
/// the repository's templates, the edge's public URL from the sandbox.
pub fn config(dir: &Path, binary: &Path, tag: &str, cases: &Path) -> PathBuf {
    config_versioned(dir, binary, tag, cases, "1.0.0")
}

pub fn config_versioned(
    dir: &Path,
    binary: &Path,
    tag: &str,
    cases: &Path,
    model_version: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let root = workspace();
    let text = format!(
        "app: iris\nimage:\n  binary: {}\n  tag: {tag}\nmodel:\n  version: {model_version}\n  path: {}\nstacks:\n  templates: {}\ndeploy:\n  templates: {}\n  rollout_timeout_seconds: 60\nedge:\n  public_url: ${{SANDBOX_EDGE_URL}}\nsmoke:\n  cases: {}\n  requests: 30\n  p95_ms: 2000\n",
        binary.display(),
        root.join("model-server/model/iris.onnx").display(),
        root.join("cloudformation").display(),
        root.join("kube-templates").display(),
        cases.display()
    );
    let path = dir.join(format!("release-{tag}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn cases() -> PathBuf {
    workspace().join("model-server/smoke/cases.yaml")
}

pub fn kubectl(sb: &Sandbox, args: &[&str]) -> String {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(sb.dir.join("kubeconfig"))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn deployments(sb: &Sandbox) -> Vec<String> {
    let v: Value = serde_json::from_str(&kubectl(
        sb,
        &["get", "deployments", "-n", "models", "-o", "json"],
    ))
    .unwrap_or(json!({"items": []}));
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The names of the steps a dry run printed as its plan.
pub fn planned_steps(out: &Output) -> Vec<String> {
    names_in(&summary(out)["plan"], |s| &s["step"])
}

/// The names of the steps a real run executed, from its summary: the same as its dry run's plan.
pub fn executed_steps(out: &Output) -> Vec<String> {
    names_in(&summary(out)["steps"], |s| s)
}

fn names_in(list: &Value, name: impl Fn(&Value) -> &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list of steps: {list}"))
        .iter()
        .map(|s| name(s).as_str().unwrap().to_string())
        .collect()
}

/// Given / When / Then: a scenario's sandbox and the config its commands run with.
pub struct Given {
    pub sb: Sandbox,
    pub cfg: PathBuf,
}

/// The sandbox's NLBs keep a new target `initial` (sent nothing) for 3 s after its pod is ready,
/// longer than a pod takes to start there: as on AWS (90 to 180 s against a pod's tens of
/// seconds), a rolling restart that does not wait for the targets' health leaves no target to
/// send anything to. The harness's default (0.5 s) hides that; tests of what must not drop a
/// request use this.
pub const SLOW_TARGETS: &[&str] = &["--target-delay-ms", "3000"];

/// Given nothing released yet: a fresh sandbox and the iris model's config (tag v1).
pub fn given_nothing_released() -> Given {
    given_nothing_released_on(&[])
}

/// The same, on a sandbox started with the extra `sandbox serve` flags `extra`.
pub fn given_nothing_released_on(extra: &[&str]) -> Given {
    let sb = Sandbox::start(extra);
    let cfg = config(
        &sb.dir.join("cfg"),
        &sandbox::harness::model_server_binary(),
        "v1",
        &cases(),
    );
    Given { sb, cfg }
}

/// Given blue live (the first `release up`).
pub fn given_blue_live() -> Given {
    let g = given_nothing_released();
    then_ok(&when(&g.sb, &g.cfg, &["up"]), "first release");
    g
}

/// Given blue live and green deployed and tested as the candidate (`release up --force`).
pub fn given_blue_live_and_a_green_candidate() -> Given {
    given_blue_live_and_a_green_candidate_on(&[])
}

/// The same, on a sandbox started with the extra `sandbox serve` flags `extra`.
pub fn given_blue_live_and_a_green_candidate_on(extra: &[&str]) -> Given {
    let g = given_nothing_released_on(extra);
    then_ok(&when(&g.sb, &g.cfg, &["up"]), "first release");
    then_ok(&when(&g.sb, &g.cfg, &["up", "--force"]), "a candidate");
    g
}

/// When `release <args>` runs (JSON output).
pub fn when(sb: &Sandbox, cfg: &Path, args: &[&str]) -> Output {
    release(sb, cfg, args)
}

/// Then it succeeded; otherwise fail showing `what`, its status and its output.
pub fn then_ok(out: &Output, what: &str) {
    succeeded(out, what)
}

/// Then it exited with `code` (docs/ the README's exit codes).
pub fn then_exit(out: &Output, code: i32) {
    exits_with(out, code)
}
