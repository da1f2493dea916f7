//! The whole lifecycle with the sandbox's AWS fault injection on: a few percent of the calls to
//! every AWS service `release` uses are throttled or answered with a 5xx. The SDK's retries and
//! our own waits absorb them: every command succeeds.

mod common;

use common::{cases, config, deployments, release, succeeded, summary};
use sandbox::harness::{Sandbox, model_server_binary};
use serde_json::Value;

#[test]
fn the_lifecycle_succeeds_with_throttling_and_server_errors_injected() {
    let rates = r#"{"throttle": 0.04, "error": 0.03}"#;
    let faults = format!(
        r#"{{"cloudformation": {rates}, "s3": {rates}, "ecr": {rates}, "eks": {rates}, "cloudfront": {rates}}}"#
    );
    let sb = Sandbox::start(&["--faults", &faults]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    let run = |args: &[&str]| {
        let out = release(&sb, &cfg, args);
        succeeded(&out, &format!("release {}", args.join(" ")));
        summary(&out)
    };
    assert_eq!(run(&["up"])["live"], "blue");
    assert_eq!(run(&["up", "--force"])["candidate"], "green");
    assert_eq!(run(&["promote"])["live"], "green");
    assert_eq!(run(&["status"])["public url answers from"], "green");
    assert_eq!(run(&["rollback"])["live"], "blue");
    assert_eq!(run(&["history"])["releases"].as_array().unwrap().len(), 4);
    run(&["destroy", "--yes", "--delete-images"]);
    assert!(deployments(&sb).is_empty());

    let report: Value = reqwest::blocking::get(sb.control("faults"))
        .unwrap()
        .json()
        .unwrap();
    let injected = report["injected"].as_object().unwrap();
    let total: i64 = injected.values().map(|v| v.as_i64().unwrap()).sum();
    assert!(
        total >= 10 && injected.len() >= 4,
        "faults were injected into most services: {report}"
    );
}
