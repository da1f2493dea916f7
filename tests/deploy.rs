//! `release up` (second half) end to end on the sandbox: the first release goes live through the
//! edge; a second deploys the other colour as a tested candidate while the live one keeps serving;
//! a candidate that answers wrong, crashes, or cannot be pulled is torn down with its reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{aws, object, release, release_command, s3, summary};
use sandbox::harness::{Sandbox, model_server_binary, workspace};
use serde_json::{Value, json};

fn config(dir: &Path, binary: &Path, tag: &str, cases: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let root = workspace();
    let text = format!(
        "app: iris\nimage:\n  binary: {}\n  tag: {tag}\nmodel:\n  path: {}\nstacks:\n  templates: {}\ndeploy:\n  templates: {}\n  rollout_timeout_seconds: 60\nedge:\n  public_url: ${{SANDBOX_EDGE_URL}}\nsmoke:\n  cases: {}\n  requests: 30\n",
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

fn cases() -> PathBuf {
    workspace().join("model-server/smoke/cases.yaml")
}

fn kubectl(sb: &Sandbox, args: &[&str]) -> String {
    let out = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(sb.dir.join("kubeconfig"))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn deployments(sb: &Sandbox) -> Vec<String> {
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

/// From the colours that answered: how many were blue, and every other answer (a failure while
/// blue is the only live colour).
fn blue_and_failures(seen: &[String]) -> (usize, Vec<String>) {
    let blue = seen.iter().filter(|c| *c == "blue").count();
    (
        blue,
        seen.iter()
            .filter(|c| *c != "blue")
            .map(|c| format!("answered by {c}"))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_release_goes_live_and_the_next_is_a_tested_candidate_while_blue_serves() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let first = config(&dir, &model_server_binary(), "v1", &cases());
    let out = release(&sb, &first, &["up"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = summary(&out);
    assert_eq!(
        (s["live"].as_str(), s["candidate"].as_str()),
        (Some("blue"), Some("blue")),
        "{s}"
    );

    // The public URL answers, from blue, with the secret added by the edge.
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let version: Value = http
        .get(format!("{edge}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["colour"], "blue");
    let answer: Value = http
        .post(format!("{edge}/predict"))
        .json(&json!({"features": [6.9, 3.1, 5.4, 2.1]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["prediction"], 2, "{answer}");

    // Same image, same manifests: nothing to release.
    let again = release(&sb, &first, &["up"]);
    assert!(again.status.success());
    assert_eq!(summary(&again)["candidate"], "none: nothing to release");
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // --force: green deployed and smoke-tested as the candidate; every edge request still blue.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = colour_traffic(edge.clone(), stop.clone());
    let forced = release(&sb, &first, &["up", "--force"]);
    stop.store(true, Ordering::Relaxed);
    let (blue, failures) = blue_and_failures(&traffic.join().unwrap());
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stdout)
    );
    let s = summary(&forced);
    assert_eq!(
        (s["live"].as_str(), s["candidate"].as_str()),
        (Some("blue"), Some("green")),
        "{s}"
    );
    assert!(
        blue > 20 && failures.is_empty(),
        "{blue} requests answered by blue; failures: {failures:?}"
    );
    let mut names = deployments(&sb);
    names.sort();
    assert_eq!(names, ["iris-blue", "iris-green"]);

    // promote, under traffic: every request answered, by blue until the flip, then by green.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = colour_traffic(edge.clone(), stop.clone());
    let promoted = release(&sb, &first, &["promote"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().unwrap();
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stdout)
    );
    let s = summary(&promoted);
    assert_eq!(
        (s["live"].as_str(), s["previous"].as_str()),
        (Some("green"), Some("blue")),
        "{s}"
    );
    assert!(
        !seen.iter().any(|c| c.starts_with("error")),
        "no request failed: {seen:?}"
    );
    let first_green = seen
        .iter()
        .position(|c| c == "green")
        .expect("green answered after the flip");
    assert!(
        seen[first_green..].iter().all(|c| c == "green"),
        "once green answers, only green does: {seen:?}"
    );
    let version: Value = http
        .get(format!("{edge}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["colour"], "green");

    // status tells the truth; history has every run; nothing left to promote.
    let status = summary(&release(&sb, &first, &["status"]));
    assert_eq!(status["live"], "green");
    assert_eq!(status["colours"]["iris-blue"]["role"], "previous");
    assert_eq!(status["public url answers from"], "green");
    assert_eq!(status["lock"], "free");
    let history = summary(&release(&sb, &first, &["history"]));
    let actions: Vec<&str> = history["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["up", "up", "up", "promote"]);
    let again = release(&sb, &first, &["promote"]);
    assert_eq!(again.status.code(), Some(8), "nothing to promote");

    // rollback: blue back behind the edge, green retired; then nothing left to roll back to.
    let rolled = release(&sb, &first, &["rollback"]);
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stdout)
    );
    let s = summary(&rolled);
    assert_eq!(
        (s["live"].as_str(), s["rolled back from"].as_str()),
        (Some("blue"), Some("retired")),
        "{s}"
    );
    let version: Value = http
        .get(format!("{edge}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["colour"], "blue");
    assert_eq!(deployments(&sb), ["iris-blue"]);
    assert_eq!(release(&sb, &first, &["rollback"]).status.code(), Some(8));

    // destroy: refused without --yes when there is no TTY to ask on; then everything goes, and
    // a second run has nothing left to do.
    assert_eq!(release(&sb, &first, &["destroy"]).status.code(), Some(2));
    let destroyed = release(&sb, &first, &["destroy", "--yes", "--delete-images"]);
    assert!(
        destroyed.status.success(),
        "{}",
        String::from_utf8_lossy(&destroyed.stdout)
    );
    assert!(deployments(&sb).is_empty());
    let status = summary(&release(&sb, &first, &["status"]));
    for stack in ["iris-network", "iris-registry", "iris-cluster", "iris-edge"] {
        assert_eq!(status["stacks"][stack], "absent", "{status}");
    }
    let again = release(&sb, &first, &["destroy", "--yes", "--delete-images"]);
    assert!(
        again.status.success(),
        "a re-run finishes quietly: {}",
        String::from_utf8_lossy(&again.stdout)
    );
}

/// The colour that answers each request through the edge, in order ("error: ..." for a failure).
fn colour_traffic(edge: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match http
                .get(format!("{edge}/version"))
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json::<Value>())
            {
                Ok(v) => seen.push(v["colour"].as_str().unwrap_or("?").to_string()),
                Err(e) => seen.push(format!("error: {e}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

static N: AtomicUsize = AtomicUsize::new(0);

fn wrong_cases(dir: &Path) -> PathBuf {
    // Golden cases the model does not meet: every expected class shifted by one.
    let text = std::fs::read_to_string(cases()).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    for c in doc["cases"].as_array_mut().unwrap() {
        c["expect"] = json!((c["expect"].as_i64().unwrap() + 1) % 3);
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("wrong-{}.yaml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_candidates_are_torn_down_and_blue_keeps_serving() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let good = config(&dir, &model_server_binary(), "v1", &cases());
    let first = release(&sb, &good, &["up"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = colour_traffic(edge, stop.clone());

    // A model that answers wrong: the golden cases fail; exit 7, green gone.
    let wrong = config(
        &dir.join("wrong"),
        &model_server_binary(),
        "v1",
        &wrong_cases(&dir),
    );
    let out = release(&sb, &wrong, &["up", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("predicted"),
        "each failed case is named: {s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // A server that crashes at start: CrashLoopBackOff; exit 6, green gone.
    let crash_bin = dir.join("crash");
    std::fs::write(
        &crash_bin,
        "#!/bin/sh\necho 'model file unreadable' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &crash_bin,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let crash = config(&dir.join("crash-cfg"), &crash_bin, "crash1", &cases());
    let out = release(&sb, &crash, &["up"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("CrashLoopBackOff")
            && s["error"].as_str().unwrap().contains("iris-green-"),
        "the pod and reason are named: {s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // An image the cluster cannot pull: pushed ahead (the same bytes `release` builds), then its
    // layers lost from the registry's storage. `release` finds the image already in ECR, deploys
    // it, and the pods cannot pull it: ImagePullBackOff; exit 6, green gone.
    let lost_bin = dir.join("lost");
    let mut bytes = std::fs::read(model_server_binary()).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&lost_bin, bytes).unwrap();
    std::fs::set_permissions(
        &lost_bin,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let image = release::up::image_from(
        &lost_bin,
        Some(&workspace().join("model-server/model/iris.onnx")),
        "lost1",
        "iris",
        "1.0.0",
    )
    .unwrap();
    let aws = aws(&sb).await;
    release::image::push(
        &aws_sdk_ecr::Client::new(&aws),
        "iris",
        "lost1",
        &image,
        |_| {},
    )
    .await
    .unwrap();
    for layer in &image.layers {
        std::fs::remove_file(
            sb.dir
                .join("aws/layers")
                .join(layer.digest.replace(':', "-")),
        )
        .unwrap();
    }
    let lost = config(&dir.join("lost-cfg"), &lost_bin, "lost1", &cases());
    let out = release(&sb, &lost, &["up"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("ImagePullBackOff")
            || s["error"].as_str().unwrap().contains("ErrImagePull"),
        "{s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);
    stop.store(true, Ordering::Relaxed);
    let (blue, failures) = blue_and_failures(&traffic.join().unwrap());
    assert!(
        blue > 20 && failures.is_empty(),
        "blue served throughout: {blue} answers; failures: {failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_the_deployment_tears_the_candidate_down_and_releases_the_lock() {
    use std::io::BufRead;
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let cfg = config(&dir, &model_server_binary(), "v1", &cases());
    let mut child = release_command(&sb, &cfg, &["up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Interrupt as soon as the colour's deployment has started.
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap_or(json!({}));
        if v["event"] == "step_started" && v["step"] == "deploy iris-blue" {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        deployments(&sb).is_empty(),
        "the candidate is gone: {:?}",
        deployments(&sb)
    );
    let s3 = s3(&sb).await;
    assert!(
        object(&s3, "apps/iris/lock.json").await.is_none(),
        "the lock is released"
    );
    let ledger = object(&s3, "apps/iris/ledger.json")
        .await
        .expect("a ledger");
    let last = ledger["releases"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["outcome"], "failed");
    assert!(
        last["error"].as_str().unwrap().contains("interrupted"),
        "{last}"
    );
    // The next run finishes the job.
    let again = release(&sb, &cfg, &["up"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(summary(&again)["live"], "blue");
}
