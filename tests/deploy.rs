//! `release up` (second half) end to end on the sandbox: the first release goes live through the
//! edge; a second deploys the other colour as a tested candidate while the live one keeps serving;
//! a candidate that answers wrong, crashes, or cannot be pulled is torn down with its reason.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{
    Seen, assert_switch_with_flip, aws, cases, config, config_versioned, deployments, edge_traffic,
    executed_steps, exits_with, kubectl, last_release, object, planned_steps, release,
    release_command, s3, succeeded, summary,
};
use sandbox::harness::{Sandbox, model_server_binary, workspace};
use serde_json::{Value, json};

/// The sandbox's edge cannot reach these origins (as a security group between CloudFront and a
/// load balancer would make it); `&[]` lifts that.
async fn edge_cannot_reach(http: &reqwest::Client, sb: &Sandbox, origins: &[&str]) {
    http.put(sb.control("edge"))
        .body(json!({ "unreachable": origins }).to_string())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// Add `settings` (lines of `edge:` fields, each `  key: value\n`) to the config's `edge:`.
fn with_edge(cfg: &Path, settings: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, text.replace("edge:\n", &format!("edge:\n{settings}"))).unwrap();
}

/// The JSON events a run printed, as collected by the thread reading its output.
fn json_events(lines: std::thread::JoinHandle<Vec<String>>) -> Vec<Value> {
    lines
        .join()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The step named `name` of a ledger entry.
fn ledger_step<'a>(release: &'a Value, name: &str) -> Option<&'a Value> {
    release["steps"]
        .as_array()?
        .iter()
        .find(|st| st["name"] == name)
}

/// What the edge's `/version` says (which colour, which model).
async fn edge_version(http: &reqwest::Client, edge: &str) -> Value {
    http.get(format!("{edge}/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// From the colours that answered: how many were blue, and every other answer (a failure while
/// blue is the only live colour).
fn blue_and_failures(seen: &[Seen]) -> (usize, Vec<String>) {
    let blue = seen.iter().filter(|s| s.colour == "blue").count();
    (
        blue,
        seen.iter()
            .filter(|s| s.colour != "blue")
            .map(|s| format!("answered by {}", s.colour))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_release_goes_live_and_the_next_is_a_tested_candidate_while_blue_serves() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let first = config(&dir, &model_server_binary(), "v1", &cases());
    let out = release(&sb, &first, &["up"]);
    succeeded(&out, "first release");
    let s = summary(&out);
    assert_eq!(
        (s["live"].as_str(), s["candidate"].as_str()),
        (Some("blue"), Some("blue")),
        "{s}"
    );

    // The public URL answers, from blue, with the secret added by the edge.
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let version = edge_version(&http, &edge).await;
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
    let traffic = edge_traffic(edge.clone(), stop.clone());
    let forced = release(&sb, &first, &["up", "--force"]);
    stop.store(true, Ordering::Relaxed);
    let (blue, failures) = blue_and_failures(&traffic.join().unwrap());
    succeeded(&forced, "up --force");
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
    let forced_digest = s["image"]
        .as_str()
        .unwrap()
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();

    // Zero downtime: under one steady stream of edge requests, promote, roll back, promote again
    // (as `up --promote` of a new model version, retiring blue), then roll back to the retired
    // blue, which is redeployed from the ledger. Not one request fails, and each time the colour
    // changes exactly with the flip.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = edge_traffic(edge.clone(), stop.clone());
    let timed = |args: &[&str], config: &Path| {
        let t0 = SystemTime::now();
        let out = release(&sb, config, args);
        std::thread::sleep(Duration::from_millis(300));
        (out, t0, SystemTime::now())
    };
    // --expect-digest: CI promotes only the candidate its own `up` tested.
    let candidate_digest = forced_digest.clone();
    let other = format!("sha256:{}", "0".repeat(64));
    let refused = release(&sb, &first, &["promote", "--expect-digest", &other]);
    exits_with(&refused, 8);
    let (promoted, p0, p1) = timed(&["promote", "--expect-digest", &candidate_digest], &first);
    succeeded(&promoted, "promote");
    let s = summary(&promoted);
    assert_eq!(
        (s["live"].as_str(), s["previous"].as_str()),
        (Some("green"), Some("blue")),
        "{s}"
    );

    // status tells the truth; history has every run; nothing left to promote.
    let status = summary(&release(&sb, &first, &["status"]));
    assert_eq!(status["live"], "green");
    assert_eq!(status["colours"]["iris-blue"]["role"], "previous");
    assert_eq!(status["colours"]["iris-green"]["model_version"], "1.0.0");
    // Both colours were deployed with the model's sha256 and serve that model.
    for colour in ["iris-blue", "iris-green"] {
        let c = &status["colours"][colour];
        assert_eq!(c["model_sha256"].as_str().map(str::len), Some(64), "{c}");
        assert_eq!(
            c["model_identity"], "serves the model its image ships",
            "{c}"
        );
    }
    assert_eq!(status["public url answers from"], "green");
    assert_eq!(status["lock"], "free");
    assert_eq!(status["unfinished"], Value::Null);
    let history = summary(&release(&sb, &first, &["history"]));
    let runs: Vec<(&str, &str)> = history["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("up", "succeeded"),
            ("up", "nothing_to_do"),
            ("up", "succeeded"),
            ("promote", "nothing_to_do"),
            ("promote", "succeeded")
        ],
        "the refused --expect-digest promote is recorded as nothing to do, not a failure"
    );
    let again = release(&sb, &first, &["promote"]);
    assert_eq!(again.status.code(), Some(8), "nothing to promote");

    // rollback: blue back behind the edge, green retired.
    let (rolled, r0, r1) = timed(&["rollback"], &first);
    succeeded(&rolled, "rollback");
    let s = summary(&rolled);
    assert_eq!(
        (s["live"].as_str(), s["rolled back from"].as_str()),
        (Some("blue"), Some("retired")),
        "{s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);
    // Rolling back again would bring back what was just rolled back from: refused.
    assert_eq!(release(&sb, &first, &["rollback"]).status.code(), Some(8));

    // up --promote with model 2.0.0 and --retire-previous: green deployed, tested, put live; blue
    // removed.
    let second = config_versioned(&dir, &model_server_binary(), "v2", &cases(), "2.0.0");
    let (upped, u0, u1) = timed(&["up", "--promote", "--retire-previous"], &second);
    succeeded(&upped, "up --promote");
    let s = summary(&upped);
    assert_eq!(
        (s["candidate"].as_str(), s["promote"]["previous"].as_str()),
        (Some("green"), Some("retired")),
        "{s}"
    );
    assert_eq!(deployments(&sb), ["iris-green"]);

    // rollback to the retired blue: redeployed from the digest and model version in the ledger.
    // CI's rollback job passes the digest it promoted: another live image is left alone.
    let not_live = release(&sb, &second, &["rollback", "--expect-digest", &other]);
    exits_with(&not_live, 8);
    let (back, b0, b1) = timed(&["rollback", "--keep-failed"], &second);
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().unwrap();
    succeeded(&back, "rollback to the retired blue");
    let s = summary(&back);
    assert_eq!(s["live"], "blue", "{s}");
    assert_eq!(s["model_version"], "1.0.0", "{s}");
    assert_eq!(s["rolled back from"], "green (failed, kept)", "{s}");
    let version = edge_version(&http, &edge).await;
    assert_eq!(
        (
            version["colour"].as_str(),
            version["model_version"].as_str()
        ),
        (Some("blue"), Some("1.0.0")),
        "{version}"
    );
    let status = summary(&release(&sb, &first, &["status"]));
    assert_eq!(
        status["colours"]["iris-green"]["role"], "failed",
        "{status}"
    );
    assert_eq!(status["colours"]["iris-green"]["model_version"], "2.0.0");

    let slack = Duration::from_millis(500);
    let during = |t0: SystemTime, t1: SystemTime| -> Vec<Seen> {
        seen.iter()
            .filter(|s| s.sent >= t0 && s.sent <= t1)
            .cloned()
            .collect()
    };
    assert!(seen.len() > 100, "{} requests", seen.len());
    assert!(
        !seen.iter().any(|s| s.colour.starts_with("error")),
        "no request failed"
    );
    assert_switch_with_flip(&during(p0, p1), &promoted, "flip", "blue", "green", slack);
    assert_switch_with_flip(&during(r0, r1), &rolled, "flip", "green", "blue", slack);
    assert_switch_with_flip(&during(u0, u1), &upped, "flip", "blue", "green", slack);
    assert_switch_with_flip(&during(b0, b1), &back, "flip", "green", "blue", slack);

    // destroy: refused without --yes when there is no TTY to ask on; then everything goes, and
    // a second run has nothing left to do.
    assert_eq!(release(&sb, &first, &["destroy"]).status.code(), Some(2));
    let destroyed = release(&sb, &first, &["destroy", "--yes", "--delete-images"]);
    succeeded(&destroyed, "destroy");
    assert!(deployments(&sb).is_empty());
    // The origin Secret and the namespace release made go too (a namespace terminates
    // asynchronously, as in Kubernetes).
    let gone = || {
        kubectl(&sb, &["get", "secrets,namespaces", "-A", "-o", "name"])
            .lines()
            .all(|l| !l.contains("iris-origin") && l != "namespace/models")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        gone(),
        "the origin Secret and the models namespace are gone"
    );
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

static N: AtomicUsize = AtomicUsize::new(0);

/// The golden cases with each expected class `k` made `class(k)`, written to `dir/name`.
fn cases_mapped(dir: &Path, name: &str, class: impl Fn(i64) -> i64) -> PathBuf {
    let text = std::fs::read_to_string(cases()).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    for c in doc["cases"].as_array_mut().unwrap() {
        c["expect"] = json!(class(c["expect"].as_i64().unwrap()));
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

fn wrong_cases(dir: &Path) -> PathBuf {
    // Golden cases the model does not meet: every expected class shifted by one.
    let name = format!("wrong-{}.yaml", N.fetch_add(1, Ordering::Relaxed));
    cases_mapped(dir, &name, |k| (k + 1) % 3)
}

/// An executable file at `path` holding `bytes` (a script or a binary).
fn executable(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// `config` with its model (the bundled iris) replaced by `model`, written to `out`.
fn with_model(config: PathBuf, model: &Path, out: PathBuf) -> PathBuf {
    let bundled = workspace().join("model-server/model/iris.onnx");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(&bundled.display().to_string(), &model.display().to_string());
    std::fs::write(&out, text).unwrap();
    out
}

/// The skl2onnx iris export with `change` applied to each node attribute (it says whether it
/// changed one), written to `dir/name`; at least `changes` attributes must change.
fn changed_iris_export(
    dir: &Path,
    name: &str,
    changes: usize,
    mut change: impl FnMut(&mut tract_onnx::pb::AttributeProto) -> bool,
) -> PathBuf {
    use prost::Message;
    let fixture = workspace().join("model-server/tests/fixtures/iris-skl2onnx.onnx");
    let mut model =
        tract_onnx::pb::ModelProto::decode(std::fs::read(fixture).unwrap().as_slice()).unwrap();
    let changed = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .flat_map(|n| n.attribute.iter_mut())
        .map(&mut change)
        .filter(|changed| *changed)
        .count();
    assert_eq!(changed, changes, "the export's attributes changed");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_candidates_are_torn_down_and_blue_keeps_serving() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let good = config(&dir, &model_server_binary(), "v1", &cases());
    let first = release(&sb, &good, &["up"]);
    succeeded(&first, "first release");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = edge_traffic(edge, stop.clone());

    // A model that answers wrong: the golden cases fail; exit 7, green gone.
    let wrong = config(
        &dir.join("wrong"),
        &model_server_binary(),
        "v1",
        &wrong_cases(&dir),
    );
    let out = release(&sb, &wrong, &["up", "--force"]);
    exits_with(&out, 7);
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("predicted"),
        "each failed case is named: {s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // A server that crashes at start: CrashLoopBackOff; exit 6, green gone.
    let crash_bin = dir.join("crash");
    executable(
        &crash_bin,
        "#!/bin/sh\necho 'model file unreadable' >&2\nexit 1\n",
    );
    let crash = config(&dir.join("crash-cfg"), &crash_bin, "crash1", &cases());
    let out = release(&sb, &crash, &["up"]);
    exits_with(&out, 6);
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("CrashLoopBackOff")
            && s["error"].as_str().unwrap().contains("iris-green-"),
        "the pod and reason are named: {s}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // A server that loaded another model than its image ships: the same iris classes on every
    // golden case (another export of the same training), but not the file the image's label and
    // the colour's annotation name. The sandbox runs the image without a chroot, so the wrapper
    // can point the server at a file outside it. Exit 7, green gone.
    let other = workspace().join("model-server/tests/fixtures/iris-skl2onnx.onnx");
    let swap_bin = dir.join("swap");
    executable(
        &swap_bin,
        format!(
            "#!/bin/sh\nMODEL_SERVER_MODEL_PATH={} exec {} \"$@\"\n",
            other.display(),
            model_server_binary().display()
        ),
    );
    let swap = config(&dir.join("swap-cfg"), &swap_bin, "swap1", &cases());
    let out = release(&sb, &swap, &["up"]);
    exits_with(&out, 7);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    let shipped = release::config::model_sha256(
        &std::fs::read(workspace().join("model-server/model/iris.onnx")).unwrap(),
    );
    let loaded = release::config::model_sha256(&std::fs::read(&other).unwrap());
    assert!(
        error.contains("model identity")
            && error.contains(&shipped)
            && error.contains(&loaded)
            && !error.contains("predicted"),
        "refused for the model it loaded, not for its answers: {error}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);

    // An image the cluster cannot pull: pushed ahead (the same bytes `release` builds), then its
    // layers lost from the registry's storage. `release` finds the image already in ECR, deploys
    // it, and the pods cannot pull it: ImagePullBackOff; exit 6, green gone.
    let lost_bin = dir.join("lost");
    let mut bytes = std::fs::read(model_server_binary()).unwrap();
    bytes.extend_from_slice(b"another build");
    executable(&lost_bin, bytes);
    let iris = workspace().join("model-server/model/iris.onnx");
    let model = release::config::ModelConfig {
        sha256: release::config::model_sha256(&std::fs::read(&iris).unwrap()),
        ..Default::default()
    };
    let image =
        release::commands::image::image_from(&lost_bin, Some(&iris), "lost1", &model).unwrap();
    let aws = aws(&sb).await;
    release::adapters::image::push(
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
    exits_with(&out, 6);
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

    // A flip whose verification through the public URL fails (CloudFront cannot reach green):
    // flipped back by itself, exit 9, green kept as the candidate. With edge.invalidate, each
    // flip invalidates the cache.
    let text = std::fs::read_to_string(&good).unwrap().replace(
        "edge:\n",
        "edge:\n  verify_timeout_seconds: 3\n  invalidate: true\n",
    );
    let strict = dir.join("release-verify.yaml");
    std::fs::write(&strict, text).unwrap();
    let candidate = release(&sb, &strict, &["up", "--force"]);
    assert!(candidate.status.success());
    let status = summary(&release(&sb, &strict, &["status"]));
    let green = status["colours"]["iris-green"]["address"].as_str().unwrap();
    let http = reqwest::Client::new();
    edge_cannot_reach(&http, &sb, &[green]).await;
    let out = release(&sb, &strict, &["promote"]);
    exits_with(&out, 9);
    let s = summary(&out);
    assert!(
        s["what_to_do"].as_str().unwrap().contains("flipped back"),
        "{s}"
    );
    let edge = sb.var("SANDBOX_EDGE_URL");
    let version = edge_version(&http, edge).await;
    assert_eq!(version["colour"], "blue", "blue serves again");
    let status = summary(&release(&sb, &strict, &["status"]));
    assert_eq!(status["live"], "blue");
    assert_eq!(
        status["colours"]["iris-green"]["role"], "candidate",
        "{status}"
    );
    assert_eq!(status["unfinished"], Value::Null);
    let cf = aws_sdk_cloudfront::Client::new(&aws);
    let dist = cf.list_distributions().send().await.unwrap();
    let id = dist.distribution_list().unwrap().items()[0]
        .id()
        .to_string();
    let invalidations = cf
        .list_invalidations()
        .distribution_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        invalidations.invalidation_list().unwrap().quantity(),
        2,
        "the flip and the flip back"
    );
    // Once CloudFront can reach green, the same candidate promotes.
    edge_cannot_reach(&http, &sb, &[]).await;
    let promoted = release(&sb, &strict, &["promote"]);
    succeeded(&promoted, "promote once green is reachable");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_sigterm_or_sighup_during_the_deployment_tear_the_candidate_down_and_release_the_lock()
 {
    use nix::sys::signal::Signal;
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let cfg = config(&dir, &model_server_binary(), "v1", &cases());
    let s3 = s3(&sb).await;
    // A closed terminal, a cancelled CI job and Ctrl-C: each with its own exit code.
    for (signal, code, word) in [
        (Signal::SIGTERM, 143, "interrupted (SIGTERM)"),
        (Signal::SIGHUP, 129, "interrupted (SIGHUP)"),
        (Signal::SIGINT, 130, "interrupted (Ctrl-C)"),
    ] {
        let (mut child, lines) = signal_at(
            &sb,
            &cfg,
            &["up"],
            None,
            |v| v["event"] == "step_started" && v["step"] == "deploy iris-blue",
            signal,
        );
        let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {rest:?}");
        assert!(
            deployments(&sb).is_empty(),
            "{signal}: the candidate is gone: {:?}",
            deployments(&sb)
        );
        assert!(
            object(&s3, "apps/iris/lock.json").await.is_none(),
            "{signal}: the lock is released"
        );
        let last = last_release(&s3).await;
        assert_eq!(last["outcome"], "failed", "{signal}");
        assert!(
            last["error"].as_str().unwrap().contains(word),
            "{signal}: {last}"
        );
    }
    // The next run finishes the job.
    let again = release(&sb, &cfg, &["up"]);
    succeeded(&again, "the run after the interrupt");
    assert_eq!(summary(&again)["live"], "blue");

    // A failed candidate terminated while it is being torn down: the run finishes closing first
    // (the teardown, the ledger, the lock) and ends with its own outcome: the smoke test's exit 7.
    // Started as `nohup` starts it (SIGHUP ignored): a SIGHUP is left ignored; the SIGTERM is the
    // one that waits for the closing.
    let wrong = config(
        &dir.join("wrong"),
        &model_server_binary(),
        "v2",
        &wrong_cases(&dir),
    );
    let mut nohup = release_command(&sb, &wrong, &["up", "--force"]);
    // SAFETY: between fork and exec, signal(2) only sets this child's disposition.
    unsafe {
        use std::os::unix::process::CommandExt;
        nohup.pre_exec(|| {
            nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn)
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let (mut child, lines) = started_until(nohup, Some("teardown iris-green"), |v| {
        v["event"] == "note"
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("tearing down"))
    });
    nix::sys::signal::kill(pid(&child), Signal::SIGHUP).unwrap();
    // Time for a run that handled the SIGHUP to show it (it would end, or say it waits).
    std::thread::sleep(Duration::from_secs(2));
    let _ = nix::sys::signal::kill(pid(&child), Signal::SIGTERM);
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(7), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("interrupted (SIGTERM): the run is closing")),
        "the SIGTERM waited for the closing: {rest:?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("SIGHUP")),
        "the SIGHUP stayed ignored: {rest:?}"
    );
    assert_eq!(deployments(&sb), ["iris-blue"], "green is torn down");
    assert!(
        object(&s3, "apps/iris/lock.json").await.is_none(),
        "the lock is released"
    );
    let last = last_release(&s3).await;
    assert_eq!(last["outcome"], "failed", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("predicted") && !error.contains("interrupted"),
        "the ledger has the run's own reason: {last}"
    );

    // destroy, terminated while it deletes the edge stack: the lock is released, and the re-run
    // finishes the job.
    let (mut child, lines) = signal_at(
        &sb,
        &cfg,
        &["--yes", "destroy"],
        Some("delete iris-edge"),
        |v| v["event"] == "step_started" && v["step"] == "delete iris-edge",
        Signal::SIGTERM,
    );
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(143), "{rest:?}");
    assert!(
        object(&s3, "apps/iris/lock.json").await.is_none(),
        "destroy released the lock"
    );
    let last = last_release(&s3).await;
    assert_eq!(last["action"], "destroy", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("interrupted (SIGTERM)"),
        "{last}"
    );
    succeeded(
        &release(&sb, &cfg, &["--yes", "destroy"]),
        "destroy after the interrupt",
    );
    assert!(deployments(&sb).is_empty());
}

/// Start `release <args>`, holding at `hold` if given (`RELEASE_TEST_HOLD_AT`), and send it
/// `signal` once it prints an event for which `there` holds; returns the child and the rest of
/// its output.
fn signal_at(
    sb: &Sandbox,
    cfg: &Path,
    args: &[&str],
    hold: Option<&str>,
    there: impl Fn(&Value) -> bool,
    signal: nix::sys::signal::Signal,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let (child, lines) = started_until(release_command(sb, cfg, args), hold, there);
    nix::sys::signal::kill(pid(&child), signal).unwrap();
    (child, lines)
}

fn pid(child: &std::process::Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(child.id() as i32)
}

/// Spawn `cmd` (holding at `hold` if given) and read its events until `there` holds for one.
fn started_until(
    mut cmd: std::process::Command,
    hold: Option<&str>,
    there: impl Fn(&Value) -> bool,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .envs(hold.map(|h| ("RELEASE_TEST_HOLD_AT", h)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap_or(json!({}));
        if there(&v) {
            break;
        }
    }
    (child, lines)
}

/// EKS accepts a token for 15 minutes, and a promote waits for CloudFront between Kubernetes
/// calls; here the token lives 3 s and a distribution change takes 6: every Kubernetes call after
/// the wait carries a token the cluster no longer takes, and the client makes a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_promote_whose_cloudfront_deployment_outlasts_the_eks_token_succeeds() {
    let sb = Sandbox::start(&["--edge-delay", "6", "--token-ttl-seconds", "3"]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    let promoted = release(&sb, &cfg, &["promote"]);
    succeeded(&promoted, "promote across a 6 s CloudFront deployment");
    assert_eq!(
        summary(&promoted)["live"],
        "green",
        "{}",
        summary(&promoted)
    );
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert_eq!(status["live"], "green", "{status}");
}

/// A colour deployed again right after its teardown: its Service is still being deleted (the
/// load-balancer controller holds it until the NLB is gone; 15 s here), and an apply that did not
/// wait for it would be lost with it (no address, exit 6 after the address wait).
#[tokio::test(flavor = "multi_thread")]
async fn a_colour_deployed_right_after_its_teardown_waits_for_its_old_service() {
    let sb = Sandbox::start(&["--lb-delay-ms", "15000"]);
    let dir = sb.dir.join("cfg");
    let bounded = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "rollout_timeout_seconds: 60\n",
            "rollout_timeout_seconds: 60\n  address_timeout_seconds: 30\n",
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = bounded(config(&dir, &model_server_binary(), "v1", &cases()));
    succeeded(&release(&sb, &good, &["up"]), "first release");
    let wrong = bounded(config(
        &dir.join("wrong"),
        &model_server_binary(),
        "v1",
        &wrong_cases(&dir),
    ));
    exits_with(&release(&sb, &wrong, &["up", "--force"]), 7);
    // green's Service is being deleted now; deploy green again at once.
    let again = release(&sb, &good, &["up", "--force"]);
    succeeded(&again, "up right after the failed candidate's teardown");
    assert_eq!(summary(&again)["candidate"], "green", "{}", summary(&again));
}

/// The versions of the ledger (its head and its releases) written so far.
async fn ledger_versions(sb: &Sandbox) -> usize {
    s3(sb)
        .await
        .list_object_versions()
        .bucket(common::STATE_BUCKET)
        .prefix("apps/iris/")
        .send()
        .await
        .unwrap()
        .versions()
        .iter()
        .filter(|v| v.key() != Some("apps/iris/lock.json"))
        .count()
}

/// Fencing: a run stopped past its lease (a laptop asleep, a frozen CI runner) while another run
/// takes the lock, deploys and finishes, changes nothing once it resumes. It stops at its next
/// step with exit 4, tears nothing down (the colour it was deploying is the other run's now), and
/// writes neither the ledger nor the lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_resumed_after_another_took_its_lock_changes_nothing() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    // The shortest lease the configuration takes.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("state:\n  lease_seconds: 30\n");
    std::fs::write(&cfg, text).unwrap();
    succeeded(&release(&sb, &cfg, &["up"]), "first release");

    // A: a candidate, stopped (SIGSTOP) just before its smoke test.
    let mut a = release_command(&sb, &cfg, &["up", "--force"])
        .env("RELEASE_TEST_PAUSE_AT", "smoke iris-green")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{}/stat", a.id())).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "A never reached its smoke test"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its lease runs out (no renewal while it is stopped); B breaks the expired lock (what
    // --force-unlock may do once a lease has expired), deploys green again and releases the lock.
    std::thread::sleep(Duration::from_secs(35));
    let b = release(&sb, &cfg, &["up", "--force", "--force-unlock"]);
    succeeded(&b, "B, after A's lease ran out");
    let b_release = summary(&b)["release"].as_str().unwrap().to_string();
    let before = ledger_versions(&sb).await;

    // A resumes: it stops at once, with exit 4.
    nix::sys::signal::kill(pid(&a), nix::sys::signal::Signal::SIGCONT).unwrap();
    let status = a.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(4),
        "A goes on as if it still held the lock"
    );
    assert_eq!(
        ledger_versions(&sb).await,
        before,
        "A wrote the ledger after it had lost the lock"
    );
    let s3 = s3(&sb).await;
    assert_eq!(
        object(&s3, "apps/iris/lock.json").await,
        None,
        "A wrote a lock"
    );
    // Green is B's candidate, untouched.
    let green: Value = serde_json::from_str(&kubectl(
        &sb,
        &[
            "get",
            "deployment",
            "iris-green",
            "-n",
            "models",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        green["metadata"]["annotations"]["release/release-id"], b_release,
        "green is not B's"
    );
    // The next run closes A's entry as abandoned and goes on.
    succeeded(&release(&sb, &cfg, &["status"]), "status");
}

/// Issue 15 "Images": the registry's lifecycle rule expires CI's images 30 days after their
/// push, but never one a colour runs or a rollback would deploy again, however many rollbacks in
/// a row. Blue goes live (v1), two builds follow (v2, then v3 replacing it as the candidate), v3
/// is promoted, then v4 on blue is promoted too: 31 days of the sandbox's ECR lifecycle
/// evaluation (the registry stack's policy, applied by ECR's rules) then expire v2 alone. v1 is
/// kept by the second rollback slot only (blue runs v4 by then), and two rollbacks in a row then
/// redeploy it; without the keep tags every image is past 30 days and all four go.
#[tokio::test]
async fn the_registrys_lifecycle_rule_expires_old_builds_but_not_what_the_colours_run() {
    let g = common::given_blue_live();
    let bin = model_server_binary();
    let dir = g.sb.dir.join("cfg");
    let build =
        |tag: &str, version: &str| config_versioned(&dir.join(tag), &bin, tag, &cases(), version);
    for (tag, version, args) in [
        ("v2", "2.0.0", &["up"][..]),
        ("v3", "3.0.0", &["up"][..]),
        ("v3", "3.0.0", &["promote"][..]),
        ("v4", "4.0.0", &["up"][..]),
        ("v4", "4.0.0", &["promote"][..]),
    ] {
        let out = release(&g.sb, &build(tag, version), args);
        succeeded(&out, &format!("{tag} {args:?}"));
        assert!(
            common::executed_steps(&out).contains(&"protect images".to_string()),
            "{}",
            summary(&out)
        );
    }
    let ecr = aws_sdk_ecr::Client::new(&aws(&g.sb).await);
    // What release itself reads of the registry (every page of ListImages, by digest).
    let images = release::adapters::image::keep::tags_by_digest(&ecr, "iris")
        .await
        .unwrap();
    let tags_of = |tag: &str| -> (String, Vec<String>) {
        let (digest, tags) = images
            .iter()
            .find(|(_, tags)| tags.iter().any(|t| t == tag))
            .unwrap_or_else(|| panic!("no image tagged {tag}"));
        let mut tags = tags.clone();
        tags.sort();
        (digest.clone(), tags)
    };
    let [(d1, t1), (d2, t2), (d3, t3), (d4, t4)] = ["v1", "v2", "v3", "v4"].map(tags_of);
    assert_eq!(
        t1,
        ["release-keep-rollback-2", "v1"],
        "v1: what the second rollback in a row redeploys"
    );
    assert_eq!(
        t2,
        ["v2"],
        "v2: replaced as the candidate, its keep tag moved on"
    );
    assert_eq!(
        t3,
        ["release-keep-green", "release-keep-rollback", "v3"],
        "v3: on green, what a rollback puts back"
    );
    assert_eq!(t4, ["release-keep-blue", "v4"], "v4: live on blue");
    let expired: Value = reqwest::Client::new()
        .post(format!(
            "{}/_sandbox/ecr/lifecycle",
            g.sb.var("AWS_ENDPOINT_URL")
        ))
        .json(&json!({"region": "us-east-1", "repository": "iris", "days_later": 31}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        expired["expired"],
        json!([d2]),
        "only the replaced build goes"
    );
    let left = release::adapters::image::keep::tags_by_digest(&ecr, "iris")
        .await
        .unwrap();
    for d in [&d1, &d3, &d4] {
        assert!(left.contains_key(d), "{d} kept: {left:?}");
    }
    // Two rollbacks in a row: green (v3) back, then blue redeployed with v1 from the registry.
    succeeded(&release(&g.sb, &g.cfg, &["rollback"]), "rollback to v3");
    let out = release(&g.sb, &g.cfg, &["rollback"]);
    succeeded(&out, "rollback to v1, pulled again");
    assert_eq!(summary(&out)["live"], "blue");
    let version = edge_version(&reqwest::Client::new(), g.sb.var("SANDBOX_EDGE_URL")).await;
    assert_eq!(version["model_version"], "1.0.0", "{version}");
}

/// Issue 15 "The lock": two promotes (each retiring the previous colour) started at the same
/// instant end with one live colour: one promotes, the other is stopped by the lock (exit 4) or,
/// started after the first ended, finds nothing to promote (exit 8); the colour retired is never
/// the one the edge serves, and the edge answers from green throughout the end state. Then the
/// generation fence: with green stamped by a later run than the one a rollback opens, the
/// rollback stops before its first change (exit 4): blue is not redeployed, the edge unchanged.
#[tokio::test]
async fn two_promotes_racing_end_with_one_live_colour_and_a_later_runs_colour_is_fenced() {
    let g = common::given_blue_live_and_a_green_candidate();
    let racing: Vec<std::process::Child> = (0..2)
        .map(|_| {
            release_command(&g.sb, &g.cfg, &["promote", "--retire-previous"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<std::process::Output> = racing
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    codes.sort();
    assert!(
        codes == [0, 4] || codes == [0, 8],
        "one promote, the other locked out or with nothing left: {codes:?}\n{}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        deployments(&g.sb),
        ["iris-green"],
        "blue retired, green kept"
    );
    let edge = g.sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(edge_version(&http, &edge).await["colour"], "green");
    }

    // A later generation on green (as a run that took the lock after this one would leave it):
    // the rollback, whose own release number is lower, must not write or retire green.
    let later = last_release(&s3(&g.sb).await).await["seq"]
        .as_u64()
        .unwrap()
        + 100;
    kubectl(
        &g.sb,
        &[
            "annotate",
            "--overwrite",
            "deployment/iris-green",
            "-n",
            "models",
            &format!("release/generation={later}"),
        ],
    );
    let out = release(&g.sb, &g.cfg, &["rollback"]);
    exits_with(&out, 4);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(error.contains("written by a later run"), "{error}");
    assert_eq!(edge_version(&http, &edge).await["colour"], "green");
    assert_eq!(
        deployments(&g.sb),
        ["iris-green"],
        "stopped before anything: blue not redeployed, green not retired"
    );
}

/// The origin-verify value the colours require (`<app>-origin`'s keys, decoded).
fn origin_secret(sb: &Sandbox) -> Value {
    use base64::Engine;
    let secret: Value = serde_json::from_str(&common::kubectl(
        sb,
        &["get", "secret", "iris-origin", "-n", "models", "-o", "json"],
    ))
    .unwrap();
    let decoded: serde_json::Map<String, Value> = secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (k.clone(), String::from_utf8(bytes).unwrap().into())
        })
        .collect();
    Value::Object(decoded)
}

/// Issue 15 "The origin": the origin secret rotates with no request refused. Under a steady
/// stream of `/predict` requests through the edge (whose locations send either value while
/// CloudFront propagates the change, as the sandbox's edge does), both colours first accept both
/// values, the edge then sends the new one, and the old one is dropped: no request fails, and
/// afterwards the colours refuse the old value and take the new. A Secret left staged by an
/// unfinished rotation is finished, not staged again; a dry run changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_origin_secret_rotates_with_no_request_refused_then_the_old_value_is() {
    // NLB targets that register slowly: the restarts hold each old pod until its replacement is a
    // healthy target (the readiness gate the namespace's label turns on), or requests fail.
    let common::Given { sb, cfg } =
        common::given_blue_live_and_a_green_candidate_on(common::SLOW_TARGETS);
    let old = origin_secret(&sb)["secret"].as_str().unwrap().to_string();

    let dry = release(&sb, &cfg, &["--dry-run", "rotate-origin-secret"]);
    succeeded(&dry, "dry run");
    let planned = common::planned_steps(&dry);
    assert_eq!(
        planned.first().map(String::as_str),
        Some("stage origin secret")
    );
    assert!(
        planned.contains(&"edge origin secret".to_string()),
        "{planned:?}"
    );
    assert_eq!(
        origin_secret(&sb)["secret"],
        old.as_str(),
        "a dry run changed it"
    );

    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (edge, stop) = (edge.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let status = http
                    .post(format!("{edge}/predict"))
                    .json(&json!({"features": [6.9, 3.1, 5.4, 2.1]}))
                    .send()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
                std::thread::sleep(Duration::from_millis(10));
            }
            statuses
        })
    };
    let out = release(&sb, &cfg, &["rotate-origin-secret"]);
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.join().unwrap();
    succeeded(&out, "rotate-origin-secret");
    let refused: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        statuses.len() > 50 && refused.is_empty(),
        "{} requests, not answered 200: {refused:?}",
        statuses.len()
    );
    let steps = common::executed_steps(&out);
    for s in [
        "restart iris-blue",
        "restart iris-green",
        "edge origin secret",
    ] {
        assert!(steps.contains(&s.to_string()), "{s}: {steps:?}");
    }

    let after = origin_secret(&sb);
    let new = after["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(
        after.get("previous").is_none(),
        "the old value stays: {after}"
    );
    // Each colour, at its own address: the old value refused, the new one taken.
    let status = summary(&release(&sb, &cfg, &["status"]));
    let http = reqwest::Client::new();
    for colour in ["iris-blue", "iris-green"] {
        let address = status["colours"][colour]["address"].as_str().unwrap();
        for (value, expected) in [(&old, 403), (&new, 200)] {
            let answer = http
                .post(format!("http://{address}:80/predict"))
                .header("x-origin-verify", value.as_str())
                .json(&json!({"features": [6.9, 3.1, 5.4, 2.1]}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status().as_u16(), expected, "{colour}");
        }
    }
    let s3 = s3(&sb).await;
    let entry = common::last_release(&s3).await;
    assert_eq!(
        (&entry["action"], &entry["outcome"]),
        (&"rotate-origin-secret".into(), &"succeeded".into())
    );

    // A rotation left staged (as a crash after the first step leaves it) is finished with the
    // value staged then: no new value is made over it.
    common::kubectl(
        &sb,
        &[
            "patch",
            "secret",
            "iris-origin",
            "-n",
            "models",
            "--type=merge",
            "-p",
            &json!({"stringData": {"secret": "staged-value-0123456789abcdef", "previous": new}})
                .to_string(),
        ],
    );
    let finish = release(&sb, &cfg, &["rotate-origin-secret"]);
    succeeded(&finish, "finishing a staged rotation");
    assert!(
        !common::executed_steps(&finish).contains(&"stage origin secret".to_string()),
        "{:?}",
        common::executed_steps(&finish)
    );
    let finished = origin_secret(&sb);
    assert_eq!(finished["secret"], "staged-value-0123456789abcdef");
    assert!(finished.get("previous").is_none(), "{finished}");
    let version = edge_version(&http, &edge).await;
    assert!(version["colour"].is_string(), "{version}");
    let answer = http
        .post(format!("{edge}/predict"))
        .json(&json!({"features": [6.9, 3.1, 5.4, 2.1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "the edge sends the staged value"
    );
}

/// The edge stack's parameters, as DescribeStacks shows them.
async fn edge_parameters(sb: &Sandbox) -> std::collections::BTreeMap<String, String> {
    let cfn = aws_sdk_cloudformation::Client::new(&aws(sb).await);
    let stack = cfn
        .describe_stacks()
        .stack_name("iris-edge")
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .clone();
    stack
        .parameters()
        .iter()
        .map(|p| {
            (
                p.parameter_key().unwrap().to_string(),
                p.parameter_value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Issue 15 "The origin": with `edge.origin_access: vpc` each colour is an internal NLB that
/// nothing outside the VPC reaches (`release` itself tests it through the API server's service
/// proxy), and CloudFront reaches the live one through that colour's own VPC origin: the first
/// release, a promote (the distribution switches VPC origins; the one in use is never changed,
/// which CloudFront refuses) and a rollback all serve through the edge.
#[tokio::test(flavor = "multi_thread")]
async fn with_vpc_origins_the_colours_are_private_and_the_edge_still_flips() {
    // Slow target registration: a colour goes live only once its targets are healthy (release
    // cannot reach an internal NLB to try it, so it asks ELBv2).
    let sb = Sandbox::start(common::SLOW_TARGETS);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    with_edge(&cfg, "  origin_access: vpc\n");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();

    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    let status = summary(&release(&sb, &cfg, &["status"]));
    let blue = status["colours"]["iris-blue"].clone();
    assert_eq!(
        blue["healthy"], true,
        "ready through the service proxy: {status}"
    );
    let address = blue["address"].as_str().unwrap().to_string();
    assert!(
        http.get(format!("http://{address}/healthz"))
            .send()
            .await
            .is_err(),
        "an internal load balancer answers nobody outside the VPC"
    );
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (p["OriginAccess"].as_str(), p["LiveColour"].as_str()),
        ("vpc", "blue")
    );
    assert!(
        p["BlueOriginArn"].contains(":loadbalancer/net/k8s-models-iris-blu"),
        "{p:?}"
    );
    assert_eq!(p["GreenOriginArn"], "");

    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    assert_eq!(edge_version(&http, &edge).await["colour"], "green");
    let p = edge_parameters(&sb).await;
    assert_eq!(p["LiveColour"], "green");
    assert!(
        p["GreenOriginArn"].contains(":loadbalancer/net/k8s-models-iris-gre"),
        "{p:?}"
    );
    assert!(p["BlueOriginArn"].contains(":loadbalancer/net/"), "{p:?}");

    succeeded(&release(&sb, &cfg, &["rollback"]), "rollback");
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    assert_eq!(edge_parameters(&sb).await["LiveColour"], "blue");

    // A promote whose public URL fails flips back to blue's VPC origin, keeping green's.
    with_edge(&cfg, "  verify_timeout_seconds: 3\n");
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "green again");
    let status = summary(&release(&sb, &cfg, &["status"]));
    let green = status["colours"]["iris-green"]["address"].as_str().unwrap();
    edge_cannot_reach(&http, &sb, &[green]).await;
    exits_with(&release(&sb, &cfg, &["promote"]), 9);
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (p["OriginAccess"].as_str(), p["LiveColour"].as_str()),
        ("vpc", "blue")
    );
    assert!(p["GreenOriginArn"].contains(":loadbalancer/net/"), "{p:?}");

    // destroy removes the edge with its VPC origins, and everything else.
    succeeded(
        &release(&sb, &cfg, &["destroy", "--yes", "--delete-images"]),
        "destroy",
    );
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert_eq!(status["stacks"]["iris-edge"], "absent", "{status}");
}

/// The colours that answered `n` requests for `/version` through the edge, with or without the
/// preview header.
async fn colours_seen(http: &reqwest::Client, edge: &str, n: usize, header: bool) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let mut ask = http.get(format!("{edge}/version"));
        if header {
            ask = ask.header("aws-cf-cd-release", "candidate");
        }
        let answer = ask.send().await.unwrap();
        let status = answer.status();
        let v: Value = answer.json().await.unwrap_or(Value::Null);
        seen.push(match v["colour"].as_str() {
            Some(c) if status.is_success() => c.to_string(),
            _ => format!("HTTP {status}: {v}"),
        });
    }
    seen.sort();
    seen.dedup();
    seen
}

/// The edge stack's resources by logical id.
async fn edge_resources(sb: &Sandbox) -> Vec<String> {
    let cfn = aws_sdk_cloudformation::Client::new(&aws(sb).await);
    let mut ids: Vec<String> = cfn
        .describe_stack_resources()
        .stack_name("iris-edge")
        .send()
        .await
        .unwrap()
        .stack_resources()
        .iter()
        .filter_map(|r| r.logical_resource_id().map(str::to_string))
        // moto also lists the resources whose condition is false, with no logical id.
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort();
    ids
}

/// Issue 16 "Preview through the real edge": with `edge.preview`, the `up` that tests a candidate
/// puts it behind a staging distribution (CloudFront continuous deployment, a header policy on the
/// primary): through the public URL, every request carrying `aws-cf-cd-release: candidate`
/// answers from green and every other from blue. `status` prints the curl line. A promote whose
/// verification fails flips back with the preview as it was; a promote that succeeds takes the
/// staging distribution and the policy away.
#[tokio::test(flavor = "multi_thread")]
async fn with_preview_the_header_reaches_the_candidate_through_the_public_url_until_the_flip() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    with_edge(&cfg, "  preview: true\n  verify_timeout_seconds: 3\n");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();

    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (p["Preview"].as_str(), p["CandidateOriginDomain"].as_str()),
        ("on", "")
    );
    assert_eq!(edge_resources(&sb).await, ["Distribution"]);

    let out = release(&sb, &cfg, &["up", "--force"]);
    succeeded(&out, "a candidate");
    assert!(
        executed_steps(&out).contains(&"preview iris-green".to_string()),
        "{:?}",
        executed_steps(&out)
    );
    assert_eq!(
        edge_resources(&sb).await,
        [
            "ContinuousDeploymentPolicy",
            "Distribution",
            "StagingDistribution"
        ]
    );
    assert_eq!(colours_seen(&http, &edge, 40, true).await, ["green"]);
    assert_eq!(colours_seen(&http, &edge, 40, false).await, ["blue"]);
    // The header's value must match: anything else is the primary's.
    let other: Value = http
        .get(format!("{edge}/version"))
        .header("aws-cf-cd-release", "yes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["colour"], "blue");
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert_eq!(status["preview"]["serves"], "iris-green", "{status}");
    assert_eq!(
        status["preview"]["curl"],
        format!("curl -H 'aws-cf-cd-release: candidate' {edge}/version")
    );

    // A promote whose public URL fails flips back to blue, and green is previewed again.
    let green = status["colours"]["iris-green"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    edge_cannot_reach(&http, &sb, &[&green]).await;
    exits_with(&release(&sb, &cfg, &["promote"]), 9);
    edge_cannot_reach(&http, &sb, &[]).await;
    assert_eq!(edge_parameters(&sb).await["CandidateOriginDomain"], green);
    assert_eq!(colours_seen(&http, &edge, 20, true).await, ["green"]);
    assert_eq!(colours_seen(&http, &edge, 20, false).await, ["blue"]);

    // The promote: green for everyone, the staging distribution and the policy gone.
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    assert_eq!(edge_parameters(&sb).await["CandidateOriginDomain"], "");
    assert_eq!(edge_resources(&sb).await, ["Distribution"]);
    assert_eq!(colours_seen(&http, &edge, 20, true).await, ["green"]);
    assert_eq!(colours_seen(&http, &edge, 20, false).await, ["green"]);
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert!(status.get("preview").is_none(), "{status}");

    // A previewed candidate that goes away (here deleted by hand, as a failed run's teardown
    // would) leaves the staging distribution serving nothing: the next `up` removes it first.
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "blue as the candidate",
    );
    assert_eq!(colours_seen(&http, &edge, 10, true).await, ["blue"]);
    kubectl(
        &sb,
        &["delete", "deployment,service", "iris-blue", "-n", "models"],
    );
    let out = release(&sb, &cfg, &["up", "--force"]);
    succeeded(&out, "blue again");
    let steps = executed_steps(&out);
    assert_eq!(
        steps
            .iter()
            .position(|s| s == "preview off")
            .map(|i| steps[i + 1].as_str()),
        Some("deploy iris-blue"),
        "{steps:?}"
    );
    assert_eq!(colours_seen(&http, &edge, 10, true).await, ["blue"]);
    assert_eq!(colours_seen(&http, &edge, 10, false).await, ["green"]);
}

/// Issue 16 with `edge.origin_access: vpc`: the staging distribution reaches the candidate through
/// that colour's own VPC origin. After a promote that retires blue, the next candidate is blue on
/// a new NLB: the same stack update changes blue's VPC origin and adds the staging distribution
/// that uses it, which works only in dependency order (the VPC origin first, while unused).
#[tokio::test(flavor = "multi_thread")]
async fn with_vpc_origins_the_preview_reaches_the_candidate_through_its_vpc_origin() {
    let sb = Sandbox::start(common::SLOW_TARGETS);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    with_edge(&cfg, "  origin_access: vpc\n  preview: true\n");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "green as the candidate",
    );
    let p = edge_parameters(&sb).await;
    assert_eq!(p["CandidateColour"], "green", "{p:?}");
    assert!(p["GreenOriginArn"].contains(":loadbalancer/net/"), "{p:?}");
    assert_eq!(colours_seen(&http, &edge, 10, true).await, ["green"]);
    assert_eq!(colours_seen(&http, &edge, 10, false).await, ["blue"]);
    let blue_arn = p["BlueOriginArn"].clone();
    succeeded(
        &release(&sb, &cfg, &["promote", "--retire-previous"]),
        "promote",
    );
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "blue again, on a new NLB",
    );
    let p = edge_parameters(&sb).await;
    assert_eq!(p["CandidateColour"], "blue", "{p:?}");
    assert_ne!(p["BlueOriginArn"], blue_arn, "a new NLB: {p:?}");
    assert_eq!(colours_seen(&http, &edge, 10, true).await, ["blue"]);
    assert_eq!(colours_seen(&http, &edge, 10, false).await, ["green"]);
}

/// One `/predict` through the edge as a viewer with `cookie` (none: a new viewer): the colour
/// that answered (or the failure) and the session cookie the edge set.
async fn viewer(
    http: &reqwest::Client,
    edge: &str,
    cookie: Option<&str>,
) -> (String, Option<String>) {
    let mut ask = http
        .post(format!("{edge}/predict"))
        .json(&json!({"features": [5.9, 3.0, 5.1, 1.8]}));
    if let Some(c) = cookie {
        ask = ask.header("Cookie", c);
    }
    let answer = ask.send().await.unwrap();
    let status = answer.status();
    let set = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let v: Value = answer.json().await.unwrap_or(Value::Null);
    let colour = match v["colour"].as_str() {
        Some(c) if status.is_success() => c.to_string(),
        _ => format!("HTTP {status}: {v}"),
    };
    (colour, set)
}

/// Issue 16 "Weighted canary" and "Abort": `promote --canary 10` sends a tenth of viewers to green
/// through the staging distribution, each kept on its side by the session cookie, bakes, then
/// flips: over 300 new viewers the share answered by green lies within five standard deviations
/// of 10 %, a viewer keeps its colour, afterwards only green answers, and no request fails. A
/// canary whose bake sees a breach takes the share back: nothing is flipped, green keeps serving
/// everyone, blue stays the candidate behind the preview header, exit 9, the ledger names the
/// breach and records `canary off`.
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_sends_a_sticky_share_to_the_candidate_then_flips_and_a_breach_takes_it_back() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let base = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("edge:\n", "edge:\n  preview: true\n");
    std::fs::write(
        &cfg,
        format!("{base}analysis:\n  min_requests: 10\n  max_error_rate_increase: 0.05\n  max_edge_error_rate: 0.5\n"),
    )
    .unwrap();
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    let cfn = aws_sdk_cloudformation::Client::new(&aws(&sb).await);
    let stack = cfn
        .describe_stacks()
        .stack_name("iris-edge")
        .send()
        .await
        .unwrap();
    let staging = stack.stacks()[0]
        .outputs()
        .iter()
        .find(|o| o.output_key() == Some("StagingDistributionId"))
        .and_then(|o| o.output_value())
        .expect("the preview's staging distribution")
        .to_string();

    // Refused before anything is read: out of CloudFront's range, or with nothing to judge it.
    exits_with(&release(&sb, &cfg, &["promote", "--canary", "16"]), 2);
    exits_with(&release(&sb, &cfg, &["promote", "--canary", "10"]), 3);
    let dry = release(
        &sb,
        &cfg,
        &["--dry-run", "promote", "--canary", "10", "--bake", "15s"],
    );
    succeeded(&dry, "dry run");
    let planned = common::planned_steps(&dry);
    let at = |s: &str| planned.iter().position(|p| p == s).unwrap();
    assert!(
        at("canary iris-green") + 1 == at("canary bake iris-green")
            && at("canary bake iris-green") + 1 == at("flip"),
        "{planned:?}"
    );

    let (child, lines) = started_until(
        release_command(&sb, &cfg, &["promote", "--canary", "10", "--bake", "30s"]),
        None,
        |v| v["event"] == "step_started" && v["step"] == "canary bake iris-green",
    );
    // Its events keep coming: read them, so that it never blocks on a full pipe.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let began = std::time::Instant::now();
    let mut seen = Vec::new();
    let (mut green_cookie, mut blue_cookie) = (None, None);
    // Ten viewers at a time: the count is done well within the canary's bake.
    let mut answers = Vec::new();
    for _ in 0..30 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let (http, edge) = (http.clone(), edge.clone());
                tokio::spawn(async move { viewer(&http, &edge, None).await })
            })
            .collect();
        for b in batch {
            answers.push(b.await.unwrap());
        }
    }
    for (colour, cookie) in answers {
        match colour.as_str() {
            "green" => green_cookie = green_cookie.or(cookie),
            "blue" => blue_cookie = blue_cookie.or(cookie),
            _ => {}
        }
        seen.push(colour);
    }
    eprintln!("300 viewers in {:?}", began.elapsed());
    let green = seen.iter().filter(|c| *c == "green").count() as f64;
    let failed: Vec<_> = seen
        .iter()
        .filter(|c| *c != "green" && *c != "blue")
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let (n, p): (f64, f64) = (300.0, 0.10);
    let sd = (n * p * (1.0 - p)).sqrt();
    eprintln!("canary at 10 %: {green} of {n} new viewers answered by green");
    assert!(
        (green - n * p).abs() <= 5.0 * sd,
        "{green} of {n} viewers reached green, outside 10 % +- 5 sd ({sd:.1})"
    );
    // A viewer keeps its side for its session.
    for (cookie, colour) in [(green_cookie, "green"), (blue_cookie, "blue")] {
        let cookie = cookie.expect("the edge sets a session cookie");
        for _ in 0..20 {
            assert_eq!(viewer(&http, &edge, Some(&cookie)).await.0, colour);
        }
    }
    // `status`, from another process, shows the running bake's latest look.
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert!(
        status["baking"].as_str().is_some_and(
            |b| b.starts_with("canary bake iris-green, ") && b.contains("/predict requests")
        ),
        "{status}"
    );
    // All of the above met the canary: the policy still gives green a tenth of viewers.
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (
            p["CanaryWeight"].as_str(),
            p["CandidateOriginDomain"].is_empty()
        ),
        ("0.10", false),
        "the canary's bake ended before the test was done with it: {p:?}"
    );
    let done = child.wait_with_output().unwrap();
    let events = rest.join().unwrap();
    assert!(done.status.success(), "the canary's promote: {events:?}");
    for _ in 0..40 {
        assert_eq!(viewer(&http, &edge, None).await.0, "green");
    }
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (
            p["CanaryWeight"].as_str(),
            p["CandidateOriginDomain"].as_str()
        ),
        ("0", "")
    );
    // The canary's bake compared green's error rate with blue's over the same time.
    let last = last_release(&s3(&sb).await).await;
    let detail = ledger_step(&last, "canary bake iris-green").map(|st| &st["detail"]);
    assert!(
        detail
            .and_then(Value::as_str)
            .is_some_and(|d| d.contains("error rate 0.00 % against iris-blue's 0.00 %")),
        "{last}"
    );
    // And it read CloudFront's figures of the staging distribution, which served green's share:
    // the bake named it, and the sandbox's CloudWatch (us-east-1) counted green's requests there.
    // (A 30 s bake may end before its first whole minute: its figures may be "not judged".)
    assert!(
        detail
            .and_then(Value::as_str)
            .is_some_and(|d| d.contains("edge: ") && d.contains(&staging)),
        "{staging}: {last}"
    );
    let counted = cloudfront_requests(&sb, &staging).await;
    assert!(counted >= 20.0, "{counted} requests counted for {staging}");

    // A candidate that passes its golden cases but sheds real traffic: its one pod takes one
    // /predict at a time (model-server --max-inflight 1), and real viewers come together. Its
    // canary's bake sees its 503s against green's none and takes the share back.
    let shed_bin = sb.dir.join("shed");
    executable(
        &shed_bin,
        format!(
            "#!/bin/sh\nMODEL_SERVER_MAX_INFLIGHT=1 exec {} \"$@\"\n",
            model_server_binary().display()
        ),
    );
    std::fs::write(
        &cfg,
        format!(
            "{}analysis:\n  min_requests: 10\n  max_error_rate: 1.0\n  max_error_rate_increase: 0.05\n",
            base.replace(
                &model_server_binary().display().to_string(),
                &shed_bin.display().to_string()
            )
            .replace("tag: v1", "tag: shed1")
            .replace("deploy:\n", "deploy:\n  replicas: 1\n")
        ),
    )
    .unwrap();
    succeeded(
        &release(&sb, &cfg, &["up"]),
        "blue as the candidate: its golden cases and sequential burst pass",
    );
    // The preview comes back with the next candidate.
    assert_eq!(colours_seen(&http, &edge, 10, true).await, ["blue"]);
    assert_eq!(colours_seen(&http, &edge, 10, false).await, ["green"]);
    let blue = summary(&release(&sb, &cfg, &["status"]))["colours"]["iris-blue"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let (child, lines) = started_until(
        release_command(&sb, &cfg, &["promote", "--canary", "15", "--bake", "20s"]),
        None,
        |v| v["event"] == "step_started" && v["step"] == "canary bake iris-blue",
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // A viewer whose request is still arriving holds blue's one place (deterministic, where
    // requests that merely overlap would depend on this machine's speed): what else reaches blue
    // meanwhile is shed with 503. A request straight to blue confirms it (were the held request
    // itself refused, another is opened).
    use std::io::Write;
    assert!(
        blue.starts_with("127."),
        "the sandbox's NLB is on loopback: {blue}"
    );
    let secret = origin_secret(&sb)["secret"].as_str().unwrap().to_string();
    let mut held = None;
    for _ in 0..20 {
        let mut slow = std::net::TcpStream::connect((blue.as_str(), 80)).unwrap();
        write!(
            slow,
            "POST /predict HTTP/1.1\r\nHost: {blue}\r\nContent-Type: application/json\r\nX-Origin-Verify: {secret}\r\nContent-Length: 40\r\n\r\n{{\"features\": ["
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let probe = http
            .post(format!("http://{blue}/predict"))
            .header("X-Origin-Verify", &secret)
            .json(&json!({"features": [5.9, 3.0, 5.1, 1.8]}))
            .send()
            .await
            .unwrap();
        if probe.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            held = Some(slow);
            break;
        }
    }
    let held = held.expect("a slow request holds blue's one place");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = predict_traffic(edge.clone(), stop.clone());
    let done = child.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    drop(held);
    let events = json_events(rest);
    assert_eq!(done.status.code(), Some(9), "{events:?}");
    let s = events
        .iter()
        .find_map(|e| e.get("summary"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(s["step"], "canary bake iris-blue", "{s}");
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("against iris-green's 0.00 %")
            && error.contains("over analysis.max_error_rate_increase 5.00 points"),
        "{s}"
    );
    assert!(
        s["what_to_do"]
            .as_str()
            .unwrap()
            .contains("nothing was flipped"),
        "{s}"
    );
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (
            p["CanaryWeight"].as_str(),
            p["CandidateOriginDomain"].as_str()
        ),
        ("0", blue.as_str())
    );
    assert_eq!(colours_seen(&http, &edge, 40, false).await, ["green"]);
    assert_eq!(colours_seen(&http, &edge, 20, true).await, ["blue"]);
    let last = last_release(&s3(&sb).await).await;
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("max_error_rate_increase"),
        "{last}"
    );
    assert!(ledger_step(&last, "canary off").is_some(), "{last}");
}

/// Issue 15 "The origin", switching an app's `edge.origin_access` either way: the way in follows
/// each colour's own NLB, so a rollback across a switch serves (an internal colour through its VPC
/// origin even after the config went back to public; an internet-facing one as the custom
/// origin), and a colour redeployed with a new NLB gets its VPC origin changed while unused (the
/// sandbox, as CloudFormation, updates the VPC origin before the distribution that switches to it).
#[tokio::test(flavor = "multi_thread")]
async fn switching_origin_access_either_way_keeps_the_edge_serving() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let public = std::fs::read_to_string(&cfg).unwrap();
    let vpc = public.replace("edge:\n", "edge:\n  origin_access: vpc\n");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let serves = |colour: &'static str| {
        let (http, edge) = (http.clone(), edge.clone());
        async move {
            let v = edge_version(&http, &edge).await;
            assert_eq!(v["colour"], colour, "{v}");
        }
    };

    std::fs::write(&cfg, &vpc).unwrap();
    succeeded(&release(&sb, &cfg, &["up"]), "blue, internal");
    serves("blue").await;

    std::fs::write(&cfg, &public).unwrap();
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "green, internet-facing",
    );
    succeeded(&release(&sb, &cfg, &["promote"]), "promote to public green");
    serves("green").await;
    assert_eq!(edge_parameters(&sb).await["OriginAccess"], "public");
    succeeded(
        &release(&sb, &cfg, &["rollback"]),
        "rollback to internal blue",
    );
    serves("blue").await;
    let p = edge_parameters(&sb).await;
    assert_eq!(
        (p["OriginAccess"].as_str(), p["LiveColour"].as_str()),
        ("vpc", "blue"),
        "blue is internal: through its VPC origin although the config says public"
    );

    std::fs::write(&cfg, &vpc).unwrap();
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "green, internal");
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    serves("green").await;
    let first_green = edge_parameters(&sb).await["GreenOriginArn"].clone();
    succeeded(
        &release(&sb, &cfg, &["rollback"]),
        "rollback: green retired",
    );
    serves("blue").await;
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "green anew: another NLB",
    );
    succeeded(
        &release(&sb, &cfg, &["promote"]),
        "promote to the new green",
    );
    serves("green").await;
    let p = edge_parameters(&sb).await;
    assert_ne!(
        p["GreenOriginArn"], first_green,
        "green's VPC origin names its new NLB"
    );
    assert_eq!(p["LiveColour"], "green");
}

/// Issue 15 "Images": `image.scan_gate` refuses, before anything is deployed (exit 8), an image
/// ECR's scan cannot judge (basic scanning answers a one-binary image UNSUPPORTED_IMAGE: no OS
/// package database) and one with a finding at the gate's severity or worse; it lets through one
/// whose findings are all milder. The dry run lists the gate as a step.
#[tokio::test(flavor = "multi_thread")]
async fn the_image_scan_gate_refuses_what_it_cannot_judge_and_what_is_too_severe() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("  tag: v1\n", "  tag: v1\n  scan_gate: critical\n");
    std::fs::write(&cfg, text).unwrap();

    let dry = release(&sb, &cfg, &["--dry-run", "up"]);
    succeeded(&dry, "dry run");
    let planned = common::planned_steps(&dry);
    let push = planned.iter().position(|s| s == "image push").unwrap();
    assert_eq!(
        planned.get(push + 1).map(String::as_str),
        Some("image scan gate"),
        "{planned:?}"
    );

    let basic = release(&sb, &cfg, &["up"]);
    exits_with(&basic, 8);
    let error = summary(&basic)["error"].as_str().unwrap().to_string();
    assert!(error.contains("UNSUPPORTED_IMAGE"), "{error}");
    assert!(
        summary(&basic)["what_to_do"]
            .as_str()
            .unwrap()
            .contains("enhanced scanning"),
        "{}",
        summary(&basic)
    );
    assert!(deployments(&sb).is_empty(), "nothing was deployed");

    // Enhanced scanning (Inspector reads the binary's own dependencies), and a database that
    // knows of one critical and three high findings in the repository's images.
    let ecr = aws_sdk_ecr::Client::new(&common::aws(&sb).await);
    ecr.put_registry_scanning_configuration()
        .scan_type(aws_sdk_ecr::types::ScanType::Enhanced)
        .rules(
            aws_sdk_ecr::types::RegistryScanningRule::builder()
                .scan_frequency(aws_sdk_ecr::types::ScanFrequency::ContinuousScan)
                .repository_filters(
                    aws_sdk_ecr::types::ScanningRepositoryFilter::builder()
                        .filter("*")
                        .filter_type(aws_sdk_ecr::types::ScanningRepositoryFilterType::Wildcard)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let findings = |counts: Value| {
        let url = format!("{}/_sandbox/ecr/findings", sb.var("AWS_ENDPOINT_URL"));
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"region": "us-east-1", "repository": "iris", "counts": counts}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    findings(json!({"CRITICAL": 1, "HIGH": 3})).await;
    let severe = release(&sb, &cfg, &["up"]);
    exits_with(&severe, 8);
    let error = summary(&severe)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("1 CRITICAL, 3 HIGH") && error.contains("ACTIVE"),
        "{error}"
    );
    assert!(deployments(&sb).is_empty(), "nothing was deployed");

    findings(json!({"HIGH": 3})).await;
    let milder = release(&sb, &cfg, &["up"]);
    succeeded(
        &milder,
        "an image with only HIGH findings under a critical gate",
    );
    assert_eq!(deployments(&sb), ["iris-blue"]);
    assert!(
        common::executed_steps(&milder).contains(&"image scan gate".to_string()),
        "{}",
        summary(&milder)
    );
}

/// Issue 16 "Tell people": `notify.webhook_url` gets one message per outcome (released, promoted,
/// rolled back, failed, destroyed), none for an `up` with nothing to release or a dry run, and a
/// webhook that fails is a warning that changes no exit code. The webhook is a loopback HTTP
/// server this test starts.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_hears_once_of_each_outcome_and_its_failure_fails_nothing() {
    let heard = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let kept = heard.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body);
                    "ok"
                }
            }),
        )
        .route(
            "/broken",
            axum::routing::post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let base = std::fs::read_to_string(&cfg).unwrap();
    let hooked = |path: &str| {
        std::fs::write(
            &cfg,
            format!("{base}notify:\n  webhook_url: http://127.0.0.1:{port}{path}\n"),
        )
        .unwrap();
    };
    hooked("/hook");
    let outcomes = || -> Vec<(String, String)> {
        heard
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["action"].as_str().unwrap().to_string(),
                    m["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    succeeded(&release(&sb, &cfg, &["up"]), "nothing to release");
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    succeeded(&release(&sb, &cfg, &["--dry-run", "promote"]), "dry run");
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    succeeded(&release(&sb, &cfg, &["rollback"]), "rollback");
    exits_with(&release(&sb, &cfg, &["promote"]), 8);
    assert_eq!(
        outcomes(),
        [
            ("up", "released"),
            ("up", "released"),
            ("promote", "promoted"),
            ("rollback", "rolled back"),
            ("promote", "failed"),
        ]
        .map(|(a, o)| (a.to_string(), o.to_string())),
        "{:?}",
        heard.lock().unwrap()
    );
    let promoted = heard.lock().unwrap()[2].clone();
    assert_eq!(promoted["app"], "iris");
    assert!(
        promoted["detail"]
            .as_str()
            .unwrap()
            .starts_with("green is live"),
        "{promoted}"
    );
    assert!(
        promoted["image"].as_str().unwrap().starts_with("sha256:"),
        "{promoted}"
    );
    assert!(
        promoted["actor"].as_str().unwrap().contains('@'),
        "{promoted}"
    );

    // A webhook that answers 500: a warning, the command's own exit code.
    hooked("/broken");
    let up = release(&sb, &cfg, &["up", "--force"]);
    succeeded(&up, "a candidate, the webhook broken");
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("the notification was not sent")
            || String::from_utf8_lossy(&up.stderr).contains("the notification was not sent"),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let url = format!("127.0.0.1:{port}");
    assert!(
        !String::from_utf8_lossy(&up.stdout).contains(&url)
            && !String::from_utf8_lossy(&up.stderr).contains(&url),
        "the webhook URL is never printed"
    );

    hooked("/hook");
    succeeded(&release(&sb, &cfg, &["--yes", "destroy"]), "destroy");
    assert_eq!(
        outcomes().last(),
        Some(&("destroy".to_string(), "destroyed".to_string()))
    );
    assert_eq!(heard.lock().unwrap().len(), 6);
    server.abort();
}

/// `/predict` requests through the edge until `stop`, each the iris features of one row: the
/// traffic a bake watches. Returns how many were answered 200.
fn predict_traffic(edge: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            let answer = http
                .post(format!("{edge}/predict"))
                .json(&json!({"features": [5.9, 3.0, 5.1, 1.8]}))
                .send();
            if answer.is_ok_and(|r| r.status() == 200) {
                ok += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ok
    })
}

/// Issue 16 "A watched bake": `promote --bake` watches the new live colour's own `/metrics`
/// after the verified flip. A breach (here a p99 bound no real request can meet) flips the edge
/// back (exit 9), blue answers again, green stays for inspection, and the ledger's error names
/// the measurement and the threshold; the release never counted as live. Under thresholds it
/// meets, the same promote passes the bake with its figures, and only then is green live.
#[tokio::test(flavor = "multi_thread")]
async fn a_bake_that_sees_a_breach_flips_back_and_one_that_does_not_completes() {
    let common::Given { sb, cfg } = common::given_blue_live_and_a_green_candidate();
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{base}analysis:\n  min_requests: 20\n  max_p99_ms: 0.001\n"),
    )
    .unwrap();

    let dry = release(&sb, &cfg, &["--dry-run", "promote", "--bake", "20s"]);
    succeeded(&dry, "dry run");
    assert!(
        common::planned_steps(&dry).contains(&"bake iris-green".to_string()),
        "{:?}",
        common::planned_steps(&dry)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = predict_traffic(edge.clone(), stop.clone());
    let breached = release(&sb, &cfg, &["promote", "--bake", "20s"]);
    exits_with(&breached, 9);
    let s = summary(&breached);
    let error = s["error"].as_str().unwrap();
    assert_eq!(s["step"], "bake iris-green", "{s}");
    assert!(
        error.contains("p99 latency") && error.contains("analysis.max_p99_ms 0.001 ms"),
        "{error}"
    );
    assert!(
        s["what_to_do"].as_str().unwrap().contains("flipped back"),
        "{s}"
    );
    assert_eq!(
        edge_version(&reqwest::Client::new(), &edge).await["colour"],
        "blue"
    );
    assert!(
        deployments(&sb).contains(&"iris-green".to_string()),
        "kept for inspection"
    );
    let s3 = s3(&sb).await;
    let last = last_release(&s3).await;
    assert!(
        last["error"].as_str().unwrap().contains("p99 latency"),
        "{last}"
    );
    assert_ne!(
        last["went_live"], true,
        "a release that failed its bake never counted as live: {last}"
    );

    // Thresholds it meets: the bake passes with what it saw, and green is live.
    std::fs::write(&cfg, format!("{base}analysis:\n  min_requests: 20\n")).unwrap();
    let passed = release(&sb, &cfg, &["promote", "--bake", "3s"]);
    stop.store(true, Ordering::Relaxed);
    let answered = traffic.join().unwrap();
    succeeded(&passed, "a promote whose bake passes");
    assert!(answered > 50, "{answered} /predict requests answered");
    let steps = common::executed_steps(&passed);
    assert!(steps.contains(&"bake iris-green".to_string()), "{steps:?}");
    assert_eq!(
        edge_version(&reqwest::Client::new(), &edge).await["colour"],
        "green"
    );
    let last = last_release(&s3).await;
    assert_eq!(last["went_live"], true, "{last}");
    let detail = ledger_step(&last, "bake iris-green")
        .map(|st| st["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(detail.contains("/predict requests, error rate"), "{last}");
}

/// A CloudWatch metric alarm `name` on `namespace`'s `metric` (with `dims`) above 5, made in the
/// client's region, its state left to `set_alarm`.
async fn put_alarm(
    cw: &aws_sdk_cloudwatch::Client,
    name: &str,
    (namespace, metric): (&str, &str),
    dims: &[(&str, &str)],
) {
    use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic};
    cw.put_metric_alarm()
        .alarm_name(name)
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(
            dims.iter()
                .map(|(n, v)| Dimension::builder().name(*n).value(*v).build())
                .collect(),
        ))
        .statistic(Statistic::Average)
        .period(60)
        .evaluation_periods(1)
        .threshold(5.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
}

/// Set the alarm `name`'s state, as CloudWatch would on its metric (moto evaluates none).
async fn set_alarm(
    cw: &aws_sdk_cloudwatch::Client,
    name: &str,
    state: aws_sdk_cloudwatch::types::StateValue,
    reason: &str,
) {
    cw.set_alarm_state()
        .alarm_name(name)
        .state_value(state)
        .state_reason(reason)
        .send()
        .await
        .unwrap();
}

/// CloudFront's `Requests` of `distribution` over the last 10 minutes, as the sandbox's
/// CloudWatch has them in us-east-1.
async fn cloudfront_requests(sb: &Sandbox, distribution: &str) -> f64 {
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let cw = aws_sdk_cloudwatch::Client::new(&aws(sb).await);
    let now = std::time::SystemTime::now();
    let dims = [("DistributionId", distribution), ("Region", "Global")]
        .map(|(n, v)| Dimension::builder().name(n).value(v).build());
    let query = MetricDataQuery::builder()
        .id("requests")
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace("AWS/CloudFront")
                        .metric_name("Requests")
                        .set_dimensions(Some(dims.to_vec()))
                        .build(),
                )
                .period(600)
                .stat("Sum")
                .build(),
        )
        .build();
    let answer = cw
        .get_metric_data()
        .metric_data_queries(query)
        .start_time((now - Duration::from_secs(600)).into())
        .end_time((now + Duration::from_secs(60)).into())
        .send()
        .await
        .unwrap();
    answer.metric_data_results()[0].values().iter().sum()
}

/// Issue 16 "A watched bake", at the edge: with `analysis.max_edge_error_rate` each look of the
/// bake after the flip reads CloudFront's own `Requests` and `5xxErrorRate` of the distribution
/// with GetMetricData in us-east-1, where CloudFront publishes them (and the sandbox too), though
/// the app is in eu-west-1 (read there, the bake sees nothing and passes: checked). An edge that
/// cannot reach green's origin answers 502: no pod sees those requests (green's `/metrics` are
/// "not judged"), CloudFront's figures do, and the bake flips back (exit 9); blue answers. An
/// alarm named with another region than the app's is read there.
#[tokio::test(flavor = "multi_thread")]
async fn a_bake_reads_cloudfronts_own_error_rate_and_flips_back_on_what_no_pod_sees() {
    use aws_sdk_cloudwatch::types::StateValue;
    // The app in eu-west-1: CloudFront's metrics are in us-east-1 all the same.
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let base = format!(
        "{}region: eu-west-1\n",
        std::fs::read_to_string(&cfg).unwrap()
    );
    std::fs::write(&cfg, &base).unwrap();
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    let (edge, http) = (
        sb.var("SANDBOX_EDGE_URL").to_string(),
        reqwest::Client::new(),
    );
    // An alarm in us-east-1, not the app's region, OK: only a read in its own region finds it.
    let cw = aws_sdk_cloudwatch::Client::new(&aws(&sb).await);
    put_alarm(
        &cw,
        "iris-latency",
        ("AWS/NetworkELB", "UnHealthyHostCount"),
        &[],
    )
    .await;
    set_alarm(&cw, "iris-latency", StateValue::Ok, "quiet").await;
    std::fs::write(
        &cfg,
        format!("{base}analysis:\n  min_requests: 10\n  max_edge_error_rate: 0.05\n  alarms:\n    - {{name: iris-latency, region: us-east-1}}\n"),
    )
    .unwrap();
    let green = summary(&release(&sb, &cfg, &["status"]))["colours"]["iris-green"]["address"]
        .as_str()
        .unwrap()
        .to_string();

    let (mut child, lines) = started_until(
        release_command(&sb, &cfg, &["promote", "--bake", "150s"]),
        None,
        |v| v["event"] == "step_started" && v["step"] == "bake iris-green",
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    edge_cannot_reach(&http, &sb, &[&green]).await;
    // Viewers until the promote ends: the edge answers them 502 while green is out of its reach.
    let began = std::time::Instant::now();
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    while child.try_wait().unwrap().is_none() {
        assert!(began.elapsed().as_secs() < 170, "the bake never ended");
        *answers
            .entry(viewer(&http, &edge, None).await.0)
            .or_default() += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let done = child.wait_with_output().unwrap();
    let events = json_events(rest);
    eprintln!(
        "answers during the bake: {answers:?}, ended after {:?}",
        began.elapsed()
    );
    assert_eq!(done.status.code(), Some(9), "{events:?}");
    edge_cannot_reach(&http, &sb, &[]).await;
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    let error = events
        .iter()
        .find_map(|e| e["summary"]["error"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("CloudFront answered")
            && error.contains("over analysis.max_edge_error_rate 5.00 %"),
        "{events:?}"
    );
    // The looks before the breach read the alarm in its own region.
    assert!(
        events.iter().any(|e| e["event"] == "step_progress"
            && e["detail"]
                .as_str()
                .is_some_and(|m| m.contains("iris-latency (us-east-1) OK"))),
        "{events:?}"
    );
}

/// Issue 16 "A watched bake", CloudWatch: `analysis.alarms` are watched at every look of the bake
/// after a full flip (through the SDK's CloudWatch calls; the sandbox answers them from moto). A
/// named alarm that does not exist is a breach at once. A user's alarm set to ALARM during the
/// bake flips the edge back: exit 9, blue answers, the ledger names the alarm and its reason.
/// With the alarm OK the same promote passes, and its bake says what the alarm was.
#[tokio::test(flavor = "multi_thread")]
async fn a_bake_watches_the_users_cloudwatch_alarms_and_flips_back_when_one_fires() {
    use aws_sdk_cloudwatch::types::StateValue;
    let common::Given { sb, cfg } = common::given_blue_live_and_a_green_candidate();
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let base = std::fs::read_to_string(&cfg).unwrap();
    // No /predict traffic: the pods' own figures are "not judged"; the alarm decides.
    std::fs::write(
        &cfg,
        format!("{base}analysis:\n  alarms: [iris-edge-5xx]\n"),
    )
    .unwrap();

    let missing = release(&sb, &cfg, &["promote", "--bake", "5s"]);
    exits_with(&missing, 9);
    let s = summary(&missing);
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("iris-edge-5xx (analysis.alarms) does not exist"),
        "{s}"
    );
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");

    let cw = aws_sdk_cloudwatch::Client::new(&aws(&sb).await);
    put_alarm(
        &cw,
        "iris-edge-5xx",
        ("AWS/CloudFront", "5xxErrorRate"),
        &[("DistributionId", "E123"), ("Region", "Global")],
    )
    .await;
    let set =
        |state: StateValue, reason: &'static str| set_alarm(&cw, "iris-edge-5xx", state, reason);
    set(StateValue::Ok, "5xxErrorRate 0.1 % <= 5 %").await;

    let (child, lines) = started_until(
        release_command(&sb, &cfg, &["promote", "--bake", "30s"]),
        None,
        |v| v["event"] == "step_progress" && v["step"] == "bake iris-green",
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    set(StateValue::Alarm, "5xxErrorRate 12.5 % > 5 %").await;
    let done = child.wait_with_output().unwrap();
    let events = rest.join().unwrap();
    assert_eq!(done.status.code(), Some(9), "{events:?}");
    let last_event: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    let s = &last_event["summary"];
    assert_eq!(s["step"], "bake iris-green", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("iris-edge-5xx is in ALARM: 5xxErrorRate 12.5 % > 5 %"),
        "{s}"
    );
    assert!(
        s["what_to_do"].as_str().unwrap().contains("flipped back"),
        "{s}"
    );
    assert_eq!(colours_seen(&http, &edge, 20, false).await, ["blue"]);
    let last = last_release(&s3(&sb).await).await;
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("iris-edge-5xx is in ALARM"),
        "{last}"
    );

    set(StateValue::Ok, "back to normal").await;
    let passed = release(&sb, &cfg, &["promote", "--bake", "3s"]);
    succeeded(&passed, "a promote whose alarm stays OK");
    assert_eq!(edge_version(&http, &edge).await["colour"], "green");
    let last = last_release(&s3(&sb).await).await;
    let detail = ledger_step(&last, "bake iris-green")
        .map(|st| st["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(detail.contains("alarms: iris-edge-5xx OK"), "{last}");
}

/// Issue 16 "Keep the previous colour warm, then let it go": with
/// `promote.retire_previous_after`, a promote leaves the previous colour at one replica with a
/// deadline `status` shows; a rollback to it scales it back (and ready) before its smoke test; once
/// the deadline is past, the next `release up` (nothing to release) retires it.
#[tokio::test(flavor = "multi_thread")]
async fn a_previous_colour_kept_warm_scales_back_for_a_rollback_and_goes_when_its_time_is_up() {
    let common::Given { sb, cfg } = common::given_blue_live_and_a_green_candidate();
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let http = reqwest::Client::new();
    let base = std::fs::read_to_string(&cfg).unwrap();
    let keep_warm_for = |t: &str| {
        let text = format!("{base}promote:\n  retire_previous_after: {t}\n");
        std::fs::write(&cfg, text).unwrap()
    };
    keep_warm_for("1h");

    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    // Its second pod drains (preStop, then SIGTERM) before it is gone.
    let mut status = Value::Null;
    for _ in 0..60 {
        status = summary(&release(&sb, &cfg, &["status"]));
        if status["colours"]["iris-blue"]["pods_ready"] == "1/1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let blue = &status["colours"]["iris-blue"];
    assert_eq!(blue["pods_ready"], "1/1", "{status}");
    assert!(
        blue["kept_warm_until"]
            .as_str()
            .is_some_and(|u| u.contains("instant rollback until then")),
        "{status}"
    );

    let back = release(&sb, &cfg, &["rollback"]);
    succeeded(&back, "rollback to the warm colour");
    let steps = executed_steps(&back);
    let at = |s: &str| steps.iter().position(|p| p == s);
    assert!(
        at("scale iris-blue").is_some() && at("scale iris-blue") < at("smoke iris-blue"),
        "{steps:?}"
    );
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    let status = summary(&release(&sb, &cfg, &["status"]));
    assert_eq!(
        status["colours"]["iris-blue"]["pods_ready"], "2/2",
        "{status}"
    );
    assert!(
        status["colours"]["iris-blue"]
            .get("kept_warm_until")
            .is_none(),
        "{status}"
    );

    // Green again, promoted with a keep that is over at once: the next up retires blue.
    keep_warm_for("1s");
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "green as the candidate",
    );
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    assert!(deployments(&sb).contains(&"iris-blue".to_string()));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let up = release(&sb, &cfg, &["up"]);
    succeeded(&up, "nothing to release");
    assert!(
        executed_steps(&up).contains(&"retire iris-blue".to_string()),
        "{:?}",
        executed_steps(&up)
    );
    assert!(
        !deployments(&sb).contains(&"iris-blue".to_string()),
        "{:?}",
        deployments(&sb)
    );
    assert_eq!(edge_version(&http, &edge).await["colour"], "green");

    // `release retire` removes the colour kept warm now, and nothing else: not a candidate.
    keep_warm_for("1h");
    succeeded(
        &release(&sb, &cfg, &["up", "--force"]),
        "blue as the candidate",
    );
    let refused = release(&sb, &cfg, &["retire"]);
    exits_with(&refused, 8);
    assert!(
        summary(&refused)["error"]
            .as_str()
            .unwrap()
            .contains("iris-blue is the tested candidate"),
        "{}",
        summary(&refused)
    );
    succeeded(&release(&sb, &cfg, &["promote"]), "promote");
    let dry = release(&sb, &cfg, &["--dry-run", "retire"]);
    succeeded(&dry, "dry run");
    assert_eq!(common::planned_steps(&dry), ["lock", "retire iris-green"]);
    assert!(
        summary(&dry)["plan"][1]["what"]
            .as_str()
            .unwrap()
            .contains("kept warm for"),
        "{}",
        summary(&dry)
    );
    assert!(deployments(&sb).contains(&"iris-green".to_string()));
    let retired = release(&sb, &cfg, &["retire"]);
    succeeded(&retired, "retire");
    assert_eq!(executed_steps(&retired), ["retire iris-green"]);
    assert_eq!(deployments(&sb), ["iris-blue"]);
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
    exits_with(&release(&sb, &cfg, &["retire"]), 8);
}

/// The iris export with its class labels moved by `shift` (0, 1, 2 become 0+shift, …): the same
/// answers under other names, a model contract clients would break on. Returns its path.
fn relabelled_iris(dir: &Path, shift: i64) -> PathBuf {
    changed_iris_export(dir, &format!("iris-plus-{shift}.onnx"), 1, |a| {
        if a.name != "classlabels_ints" {
            return false;
        }
        for l in &mut a.ints {
            *l += shift;
        }
        true
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promote_refuses_a_changed_model_contract_unless_allowed() {
    let common::Given { sb, .. } = common::given_blue_live();
    let dir = sb.dir.join("contract");
    // Green: a model that passes its own golden cases, but names its classes 1, 2, 3 where live
    // answers 0, 1, 2: every client mapping classes to names would break.
    let model = relabelled_iris(&dir, 1);
    let shifted = cases_mapped(&dir, "cases-plus-1.yaml", |k| k + 1);
    let changed = with_model(
        config(&dir, &model_server_binary(), "relabel1", &shifted),
        &model,
        dir.join("release-changed.yaml"),
    );
    succeeded(
        &release(&sb, &changed, &["up"]),
        "the candidate passes its cases",
    );

    // Refused with the difference printed; nothing moved, the candidate stays.
    let out = release(&sb, &changed, &["promote"]);
    exits_with(&out, 7);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("contract") && error.contains("live [0, 1, 2], candidate [1, 2, 3]"),
        "{error}"
    );
    let http = reqwest::Client::new();
    let edge = sb.var("SANDBOX_EDGE_URL");
    assert_eq!(edge_version(&http, edge).await["colour"], "blue");
    let status = summary(&release(&sb, &changed, &["status"]));
    assert_eq!(status["colours"]["iris-green"]["role"], "candidate");
    let ledger = last_release(&s3(&sb).await).await;
    assert_eq!(ledger["outcome"], "failed", "{ledger}");

    // The dry run says what it would check; allowed, the promote goes through and says what
    // changed.
    let plan = release(
        &sb,
        &changed,
        &["promote", "--allow-contract-change", "--dry-run"],
    );
    assert!(
        planned_steps(&plan).contains(&"contract iris-green".to_string()),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let out = release(&sb, &changed, &["promote", "--allow-contract-change"]);
    succeeded(&out, "promote with --allow-contract-change");
    assert!(executed_steps(&out).contains(&"contract iris-green".to_string()));
    let version = edge_version(&http, edge).await;
    assert_eq!(version["colour"], "green");
    assert_eq!(version["output"]["classes"], json!([1, 2, 3]));

    // The same contract again: a promote without the flag passes its contract step.
    succeeded(
        &release(&sb, &changed, &["up", "--force"]),
        "a candidate with green's contract",
    );
    succeeded(
        &release(&sb, &changed, &["promote"]),
        "an unchanged contract promotes",
    );
}

/// The iris export with classes 1 and 2's coefficients and intercepts swapped: the same classes
/// (the contract holds), but it answers virginica where live answers versicolor and back.
fn swapped_iris(dir: &Path) -> PathBuf {
    changed_iris_export(dir, "iris-swapped.onnx", 2, |a| {
        let per_class = match a.name.as_str() {
            "coefficients" => a.floats.len() / 3,
            "intercepts" => 1,
            _ => return false,
        };
        for i in 0..per_class {
            a.floats.swap(per_class + i, 2 * per_class + i);
        }
        true
    })
}

/// `n` requests through the edge, `share_versicolor` of them versicolor rows, the rest setosa
/// rows (from the golden cases); every answer must succeed. Returns the answers' p99 (ms).
async fn real_traffic(edge: &str, n: usize, share_versicolor: f64) -> f64 {
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(cases()).unwrap()).unwrap();
    let rows = |class: i64| -> Vec<Value> {
        doc["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["expect"] == class)
            .map(|c| c["features"].clone())
            .collect()
    };
    let (setosa, versicolor) = (rows(0), rows(1));
    let http = reqwest::Client::new();
    let mut took = Vec::new();
    let versicolor_rows = (n as f64 * share_versicolor).round() as usize;
    for i in 0..n {
        let features = if i < versicolor_rows {
            &versicolor[i % versicolor.len()]
        } else {
            &setosa[i % setosa.len()]
        };
        let started = std::time::Instant::now();
        let answer = http
            .post(format!("{edge}/predict"))
            .json(&json!({ "features": features }))
            .send()
            .await
            .unwrap();
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(
            answer.status().is_success(),
            "a live answer failed: {answer:?}"
        );
    }
    took.sort_by(f64::total_cmp);
    took[(took.len() * 99).div_ceil(100) - 1]
}

/// Poll `status` until the shadow figures count `rows` compared (the copies trail the answers).
fn shadow_figures(sb: &Sandbox, cfg: &Path, rows: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = summary(&release(sb, cfg, &["status"]));
        let shadow = status["shadow"].clone();
        if shadow["compared"].as_u64() >= Some(rows) || std::time::Instant::now() > deadline {
            return shadow;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shadow_gate_refuses_a_candidate_that_disagrees_with_live_on_real_traffic() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("shadow");
    let with_shadow = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "smoke:\n",
            "smoke:\n  shadow: {sample: 1, min_agreement: 0.95, min_requests: 50}\n",
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    // Blue without a tee: the live p99 to compare with.
    let plain = config(&dir.join("plain"), &model_server_binary(), "v1", &cases());
    succeeded(&release(&sb, &plain, &["up"]), "blue live, no tee");
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let p99_without = real_traffic(&edge, 100, 0.2).await;
    // Green with a tee (to blue, once blue is the candidate). Blue copies nothing: the gate
    // cannot judge and says so.
    let good = with_shadow(config(&dir, &model_server_binary(), "v1", &cases()));
    succeeded(&release(&sb, &good, &["up", "--force"]), "green, copying");
    // With smoke.shadow.required, not judged is a refusal.
    let required = dir.join("release-required.yaml");
    std::fs::write(
        &required,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("min_requests: 50}", "min_requests: 50, required: true}"),
    )
    .unwrap();
    let out = release(&sb, &required, &["promote"]);
    exits_with(&out, 7);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("no live pod reported a shadow tee") && error.contains("required"),
        "{error}"
    );
    let out = release(&sb, &good, &["promote"]);
    succeeded(&out, "no figures: not judged");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("no live pod reported a shadow tee"), "{said}");

    // Green: classes 1 and 2 swapped. Its own golden cases pass and its contract is live's; on
    // real traffic (a fifth versicolor) it disagrees with live on a fifth of the rows.
    let model = swapped_iris(&dir);
    let swapped_cases = cases_mapped(&dir, "cases-swapped.yaml", |k| [0, 2, 1][k as usize]);
    let swapped = with_model(
        with_shadow(config_versioned(
            &dir.join("swapped"),
            &model_server_binary(),
            "swapped1",
            &swapped_cases,
            // The same version string as live's: the figures are told apart by the model's sha256.
            "1.0.0",
        )),
        &model,
        dir.join("release-swapped.yaml"),
    );
    succeeded(
        &release(&sb, &swapped, &["up"]),
        "the candidate passes its own cases",
    );

    let p99 = real_traffic(&edge, 100, 0.2).await;
    eprintln!(
        "live p99 through the edge: {p99_without:.1} ms without a tee, {p99:.1} ms with every request copied"
    );
    let shadow = shadow_figures(&sb, &swapped, 100);
    assert_eq!(shadow["compared"], 100, "{shadow}");
    assert_eq!(shadow["agreement"], 0.8, "{shadow}");
    assert_eq!(
        shadow["class_changes"],
        json!(["live 1 -> candidate 2: 20"])
    );
    assert!(
        shadow["promote would"]
            .as_str()
            .unwrap()
            .starts_with("refuse"),
        "{shadow}"
    );

    let out = release(&sb, &swapped, &["promote"]);
    exits_with(&out, 7);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("80.0 % of 100 real rows") && error.contains("live 1 -> candidate 2: 20"),
        "{error}"
    );
    let http = reqwest::Client::new();
    assert_eq!(edge_version(&http, &edge).await["colour"], "green");
    let ledger = last_release(&s3(&sb).await).await;
    assert_eq!(ledger["shadow"]["agreement"], 0.8, "{ledger}");

    // A candidate that agrees (the same model): judged on new copies, promoted.
    succeeded(
        &release(&sb, &good, &["up", "--force"]),
        "an agreeing candidate",
    );
    real_traffic(&edge, 60, 0.2).await;
    let shadow = shadow_figures(&sb, &good, 60);
    assert_eq!(shadow["agreement"], 1.0, "{shadow}");
    let out = release(&sb, &good, &["promote"]);
    succeeded(&out, "an agreeing candidate promotes");
    assert!(executed_steps(&out).contains(&"shadow iris-blue".to_string()));
    assert_eq!(edge_version(&http, &edge).await["colour"], "blue");
}
