//! What the end-to-end tests of `release` share: running the real binary against a sandbox
//! (configured only through the sandbox's standard AWS environment), reading its JSON summary,
//! and reading the state bucket.
// Each test file uses some of these helpers, not all.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use sandbox::harness::Sandbox;
use serde_json::Value;

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
        .bucket("iris-release-state")
        .key(key)
        .send()
        .await
        .ok()?;
    serde_json::from_slice(&out.body.collect().await.unwrap().into_bytes()).ok()
}
