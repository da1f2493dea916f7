//! The command line and the pipeline that drives it: `--help` is complete for every command,
//! completions and man pages are generated from the same definition, and `.circleci/config.yml`
//! cannot drift from the CLI (every `release ...` line in it parses with the CLI's own clap
//! definition), from the repository (every file it names exists), or from itself (every job is
//! reachable from a workflow, every requirement and command is defined).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::{CommandFactory, Parser};
use common::{exits_with, succeeded};
use release::cli::Cli;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_release"))
}

#[test]
fn every_command_and_every_flag_has_its_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_about().is_none() {
            missing.push(format!("{path}: no about"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() && !arg.is_positional() {
                missing.push(format!("{path} --{id}: no help"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                walk(sub, &path, missing);
            }
        }
    }
    let cmd = Cli::command();
    cmd.clone().debug_assert();
    let mut missing = Vec::new();
    walk(&cmd, "", &mut missing);
    assert!(missing.is_empty(), "{missing:#?}");
    let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
    for wanted in [
        "up",
        "promote",
        "rollback",
        "retire",
        "destroy",
        "status",
        "history",
        "render",
        "image",
        "completions",
        "man",
    ] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "promote",
        "rollback",
        "retire",
        "destroy",
        "--retire-previous",
        "--expect-digest",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let zsh = bin().args(["completions", "zsh"]).output().unwrap();
    assert!(
        zsh.status.success() && String::from_utf8_lossy(&zsh.stdout).contains("#compdef release")
    );

    let dir = tempdir("man");
    let out = bin().args(["man", "--out"]).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "release.1",
        "release-up.1",
        "release-promote.1",
        "release-rollback.1",
        "release-destroy.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is a man page"
        );
    }
    let promote = std::fs::read_to_string(dir.join("release-promote.1")).unwrap();
    assert!(
        promote.contains("flips back by itself"),
        "the long help is in the page"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("release-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn render_writes_both_colours_as_up_would_apply_them() {
    let dir = tempdir("render");
    for colour in ["blue", "green"] {
        let out = bin()
            .arg("--config")
            .arg(root().join("examples/sandbox/release.yaml"))
            .args(["render", "--colour", colour, "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.join(format!("{colour}.yaml"))).unwrap();
        let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| {
                Value::deserialize(d).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy"
            ]
        );
        assert!(text.contains(&format!("name: iris-{colour}")));
    }
    let bad = bin()
        .arg("--config")
        .arg(root().join("examples/sandbox/release.yaml"))
        .args(["render", "--colour", "red"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown colour is a usage error"
    );
}

use serde::Deserialize;

/// `<< parameters.x >>` / `<< pipeline.x >>` replaced by a word, as CircleCI would before the shell.
fn pipeline_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("<<") {
        let Some(j) = rest[i..].find(">>") else { break };
        out.push_str(&rest[..i]);
        out.push_str("VALUE");
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

/// The shell words of every `run` command in the config (jobs and reusable commands), one
/// `Vec` per shell command: lines joined at `\`, split at `|`, `&&`, `||`, `;`, redirections
/// dropped with their targets.
fn shell_commands(config: &Value) -> Vec<Vec<String>> {
    let mut scripts = Vec::new();
    let mut visit_steps = |steps: &Value| {
        for step in steps.as_sequence().into_iter().flatten() {
            let Some(run) = step.get("run") else { continue };
            let text = run
                .as_str()
                .or_else(|| run.get("command").and_then(Value::as_str))
                .unwrap_or_default();
            scripts.push(pipeline_values(&text.replace("\\\n", " ")));
        }
    };
    for section in ["jobs", "commands"] {
        for (_, def) in config[section].as_mapping().into_iter().flatten() {
            visit_steps(&def["steps"]);
        }
    }
    let mut commands = Vec::new();
    for script in scripts {
        for line in script.lines() {
            let Ok(words) = shell_words::split(line) else {
                panic!("not a shell line: {line}");
            };
            let mut current = Vec::new();
            let mut skip_next = false;
            for w in words {
                if skip_next {
                    skip_next = false;
                    continue;
                }
                match w.as_str() {
                    "|" | "&&" | "||" | ";" => commands.push(std::mem::take(&mut current)),
                    ">" | ">>" | "2>" | "<" => skip_next = true,
                    _ => current.push(w),
                }
            }
            commands.push(current);
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

fn circleci() -> Value {
    let text = std::fs::read_to_string(root().join(".circleci/config.yml")).unwrap();
    serde_yaml::from_str(&text).expect(".circleci/config.yml parses")
}

#[test]
fn every_release_line_in_the_pipeline_parses_with_the_cli() {
    let config = circleci();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for words in shell_commands(&config) {
        // Skip leading VAR=value assignments; then is the program release (on PATH or a path)?
        let start = words
            .iter()
            .position(|w| !w.contains('=') || w.starts_with('-'));
        let Some(start) = start else { continue };
        if Path::new(&words[start])
            .file_name()
            .and_then(|n| n.to_str())
            != Some("release")
        {
            continue;
        }
        let argv = &words[start..];
        match Cli::try_parse_from(argv) {
            Ok(_) => {
                let name = Cli::command()
                    .try_get_matches_from(argv)
                    .unwrap()
                    .subcommand_name()
                    .unwrap()
                    .to_string();
                seen.insert(name);
            }
            Err(e) => failures.push(format!("{}: {e}", argv.join(" "))),
        }
    }
    assert!(
        failures.is_empty(),
        "lines the CLI refuses:\n{}",
        failures.join("\n")
    );
    for wanted in ["up", "promote", "rollback", "status", "image", "render"] {
        assert!(
            seen.contains(wanted),
            "the pipeline runs `release {wanted}`: {seen:?}"
        );
    }
}

/// A job that signs in with the OIDC token also keeps it fresh: the token lives an hour and a
/// first release can take longer. The refresher writes the file the SDK reads again on renewal.
#[test]
fn the_oidc_sign_in_keeps_its_token_fresh_for_long_jobs() {
    let config = circleci();
    let steps = config["commands"]["aws-oidc"]["steps"]
        .as_sequence()
        .expect("the aws-oidc command's steps");
    let run = |s: &Value| s["run"].clone();
    let sign_in = steps
        .iter()
        .map(run)
        .find(|r| {
            r["command"]
                .as_str()
                .is_some_and(|c| c.contains("AWS_WEB_IDENTITY_TOKEN_FILE"))
        })
        .expect("a step that sets AWS_WEB_IDENTITY_TOKEN_FILE");
    let file = sign_in["command"]
        .as_str()
        .unwrap()
        .split("AWS_WEB_IDENTITY_TOKEN_FILE=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let refresher = steps
        .iter()
        .map(run)
        .find(|r| r["background"] == Value::Bool(true))
        .expect("a background step that refreshes the token");
    let command = refresher["command"].as_str().unwrap();
    assert!(
        command.contains("circleci run oidc get")
            && command.contains(&format!("mv {file}.new {file}")),
        "the refresher mints a token into {file}: {command}"
    );
}

#[test]
fn a_line_the_cli_would_refuse_is_caught() {
    // The check above is only as good as its parsing: a misspelt flag must fail it.
    let config: Value = serde_yaml::from_str(
        "jobs:\n  x:\n    steps:\n      - run: release --output json promote --retire-prev | tee out\n",
    )
    .unwrap();
    let commands = shell_commands(&config);
    assert_eq!(commands.len(), 2);
    assert!(Cli::try_parse_from(&commands[0]).is_err());
    assert!(Cli::try_parse_from(["release", "promote", "--retire-previous"]).is_ok());
}

/// Every Python requirement the project installs is pinned with its hashes (scripts/pin-hashes),
/// so that `scripts/venv`'s `pip install --require-hashes` takes no file PyPI did not publish
/// for that pin; an entry without them would make that install fail.
#[test]
fn every_python_requirement_is_pinned_with_its_hashes() {
    // Every requirements file in the repository (not a list kept by hand, which a new file would
    // miss), outside hidden directories (venvs) and build output.
    fn find(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    find(&path, root, out);
                }
            } else if name.ends_with(".txt") && name.contains("requirements") {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .to_string(),
                );
            }
        }
    }
    let mut files = Vec::new();
    find(root(), root(), &mut files);
    for known in [
        "sandbox/aws/requirements.txt",
        "scripts/checks-requirements.txt",
        "model-server/train/requirements.txt",
        "bench/requirements.txt",
    ] {
        assert!(
            files.iter().any(|f| f == known),
            "{known} not found: {files:?}"
        );
    }
    for file in files {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let joined = text.replace("\\\n", " ");
        let mut pins = 0;
        for line in joined.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with("-r ") {
                continue;
            }
            let (pin, hashes) = line.split_once(' ').unwrap_or((line, ""));
            assert!(pin.contains("=="), "{file}: {pin} is not pinned");
            assert!(
                hashes.contains("--hash=sha256:"),
                "{file}: {pin} has no hash (run scripts/pin-hashes {file})"
            );
            pins += 1;
        }
        assert!(pins > 0, "{file}: no requirement");
    }
}

#[test]
fn every_job_is_reachable_and_every_requirement_and_command_is_defined() {
    let config = circleci();
    assert_eq!(config["version"], Value::from(2.1));
    let jobs: BTreeSet<String> = config["jobs"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let commands: BTreeSet<String> = config["commands"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str().unwrap().to_string())
        .collect();
    let mut reached = BTreeSet::new();
    for (_, workflow) in config["workflows"].as_mapping().unwrap() {
        let mut names = BTreeSet::new();
        let entries = workflow["jobs"].as_sequence().unwrap();
        for entry in entries {
            let (name, params) = match entry {
                Value::String(s) => (s.clone(), Value::Null),
                Value::Mapping(m) => {
                    let (k, v) = m.iter().next().unwrap();
                    (k.as_str().unwrap().to_string(), v.clone())
                }
                other => panic!("a workflow job entry {other:?}"),
            };
            let approval = params["type"] == "approval";
            assert!(
                approval || jobs.contains(&name),
                "workflow job {name} is not defined"
            );
            names.insert(name.clone());
            reached.insert(name);
        }
        for entry in entries {
            let Value::Mapping(m) = entry else { continue };
            let (_, params) = m.iter().next().unwrap();
            for r in params["requires"].as_sequence().into_iter().flatten() {
                let required = match r {
                    Value::String(s) => s.clone(),
                    Value::Mapping(m) => m.keys().next().unwrap().as_str().unwrap().to_string(),
                    other => panic!("requires {other:?}"),
                };
                assert!(
                    names.contains(&required),
                    "requires {required}, not in the workflow"
                );
            }
        }
    }
    let unreached: Vec<_> = jobs.difference(&reached).collect();
    assert!(unreached.is_empty(), "jobs no workflow runs: {unreached:?}");
    // The production binaries are built from the checkout alone: no cache, which any branch's
    // job can write, is restored into the build job.
    let cached = |step: &serde_yaml::Value| {
        let name = step
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                step.as_mapping()
                    .and_then(|m| m.keys().next()?.as_str().map(str::to_string))
            })
            .unwrap_or_default();
        name.contains("cache")
    };
    let build = config["jobs"]["build"]["steps"].as_sequence().unwrap();
    assert!(
        !build.iter().any(cached),
        "the build job restores a cache: {build:?}"
    );

    const BUILT_IN: [&str; 8] = [
        "checkout",
        "run",
        "restore_cache",
        "save_cache",
        "store_artifacts",
        "persist_to_workspace",
        "attach_workspace",
        "setup_remote_docker",
    ];
    for section in ["jobs", "commands"] {
        for (name, def) in config[section].as_mapping().into_iter().flatten() {
            for step in def["steps"].as_sequence().unwrap() {
                let used = match step {
                    Value::String(s) => s.clone(),
                    Value::Mapping(m) => m.keys().next().unwrap().as_str().unwrap().to_string(),
                    other => panic!("a step {other:?}"),
                };
                assert!(
                    BUILT_IN.contains(&used.as_str()) || commands.contains(&used),
                    "{name:?} uses an undefined step {used}"
                );
            }
        }
    }
}

#[test]
fn every_file_the_pipeline_names_exists_and_its_release_config_loads() {
    let config = circleci();
    let prefixes = [
        "scripts/",
        "cloudformation/",
        "kube-templates/",
        "model-server/",
        "examples/",
        ".ci/",
        "docs/",
    ];
    let mut named = BTreeSet::new();
    for words in shell_commands(&config) {
        for w in words {
            for part in w.split(['=', ' ']) {
                if prefixes.iter().any(|p| part.starts_with(p)) {
                    named.insert(part.trim_end_matches([',', ';', ')']).to_string());
                }
            }
        }
    }
    assert!(
        named.contains("scripts/test") && named.contains("examples/aws/release.yaml"),
        "{named:?}"
    );
    for path in &named {
        assert!(
            root().join(path).exists(),
            ".circleci/config.yml names {path}, which does not exist"
        );
    }
    // The configuration the release jobs use loads with what the CircleCI context provides.
    let env = |k: &str| match k {
        "GIT_SHA" => Some("0123abc".to_string()),
        "RELEASE_ROLE_ARN" => Some("arn:aws:iam::123456789012:role/iris-release-ci".to_string()),
        "RELEASE_STACKS_ROLE_ARN" => {
            Some("arn:aws:iam::123456789012:role/iris-release-stacks".to_string())
        }
        "RELEASE_BOUNDARY_ARN" => {
            Some("arn:aws:iam::123456789012:policy/iris-release-boundary".to_string())
        }
        "RELEASE_OPERATOR_ROLE_ARN" => {
            Some("arn:aws:iam::123456789012:role/iris-release-operator".to_string())
        }
        _ => None,
    };
    let file = root().join("examples/aws/release.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = release::config::interpolate(&text, "examples/aws/release.yaml", env).unwrap();
    let loaded = release::config::parse(&text, "examples/aws/release.yaml").unwrap();
    assert_eq!(
        loaded.stacks.role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/iris-release-stacks")
    );
    // The roles the cluster stack makes carry the boundary ci-role.yaml's stacks role requires.
    assert_eq!(
        loaded.stacks.permissions_boundary_arn.as_deref(),
        Some("arn:aws:iam::123456789012:policy/iris-release-boundary")
    );

    // Its paths exist, but for the binary the `build` job makes.
    let base = file.parent().unwrap();
    for p in [
        loaded.stacks.templates.clone(),
        loaded.deploy.templates.clone(),
        loaded.smoke.cases.clone(),
        loaded.model.path.clone().unwrap(),
    ] {
        assert!(
            base.join(&p).exists(),
            "examples/aws/release.yaml: {}",
            p.display()
        );
    }
}

#[test]
fn image_build_writes_an_oci_layout_that_reads_back_to_the_same_digest() {
    let dir = tempdir("image");
    let binary = dir.join("model-server");
    std::fs::write(&binary, b"#!/bin/sh\necho a stand-in server\n").unwrap();
    let layout = dir.join("layout");
    let out = bin()
        .args(["--output", "json", "image", "build", "--binary"])
        .arg(&binary)
        .args(["--tag", "build-7", "--out"])
        .arg(&layout)
        .current_dir(&dir)
        .output()
        .unwrap();
    succeeded(&out, "image build");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap()["summary"]
        .clone();
    let digest = summary["digest"].as_str().unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "build-7"
    );
    let image = release::adapters::image::read_archive(&layout).unwrap();
    assert_eq!(
        image.digest(),
        digest,
        "the layout reads back to the same image"
    );
    // Without a binary and without a release.yaml to name one: a usage error.
    let none = bin()
        .args(["image", "build", "--tag", "t"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
}

#[test]
fn only_the_commands_that_build_the_image_need_its_binary() {
    let dir = tempdir("nobinary");
    let text = std::fs::read_to_string(root().join("examples/sandbox/release.yaml"))
        .unwrap()
        .replace(
            "../../target/debug/model-server.stripped",
            "../../target/debug/no-such-binary",
        );
    let cfg = root().join("examples/sandbox/release-nobinary.yaml");
    let _cleanup = Remove(cfg.clone());
    std::fs::write(&cfg, text).unwrap();
    // render needs no binary ...
    let render = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["render", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    // ... up does, and says so before touching AWS (exit 3).
    let up = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["--output", "json", "up"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    exits_with(&up, 3);
    assert!(String::from_utf8_lossy(&up.stdout).contains("image.binary"));
}

/// Removes a file when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `release --output json <args>` with the sandbox example's config and an endpoint of `endpoint`,
/// in an environment of its own (no AWS profile, proxy or region of this machine's).
fn against(endpoint: &str, cfg: &Path, args: &[&str]) -> std::process::Output {
    let home = tempdir("against-home");
    bin()
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json"])
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

#[test]
fn an_endpoint_that_refuses_connections_is_named_with_what_to_check() {
    // A loopback port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let cfg = root().join("examples/sandbox/release.yaml");
    // Without a state bucket, the registry stack is read first (its bucket, if it is there);
    // with one but not its owner, STS first (the owner is the caller's account); with both,
    // status reads the stacks first and a dry-run promote the state bucket.
    let named = root().join("examples/sandbox/release-named-bucket.yaml");
    let _cleanup = Remove(named.clone());
    std::fs::write(
        &named,
        std::fs::read_to_string(&cfg).unwrap() + "state:\n  bucket: iris-state-of-our-own\n",
    )
    .unwrap();
    let owned = root().join("examples/sandbox/release-owned-bucket.yaml");
    let _cleanup_owned = Remove(owned.clone());
    std::fs::write(
        &owned,
        std::fs::read_to_string(&named).unwrap() + "  bucket_owner: \"123456789012\"\n",
    )
    .unwrap();
    for (cfg, args, service) in [
        (&cfg, &["status"][..], "CloudFormation"),
        (&named, &["status"][..], "STS"),
        (&owned, &["status"][..], "CloudFormation"),
        (&owned, &["--dry-run", "promote"][..], "S3"),
    ] {
        let out = against(&endpoint, cfg, args);
        exits_with(&out, 5);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("cannot reach {service} at {endpoint}")),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains("AWS_ENDPOINT_URL"), "{args:?}: {stdout}");
        assert!(
            !stdout.contains("DispatchFailure"),
            "{args:?}: no raw SDK error: {stdout}"
        );
    }
}

/// An S3 (or STS) endpoint that accepts connections and never answers does not hold a run (and
/// the lock it may hold) for ever: each call has a timeout, and the run ends with exit 5 naming it.
#[test]
fn an_s3_endpoint_that_never_answers_ends_the_run_with_a_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accept and keep every connection open, answering nothing.
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming().flatten() {
            open.push(conn);
        }
    });
    // With the bucket's owner given, S3 is the first call; without it, STS (the caller's account).
    let owned = root().join("examples/sandbox/release-silent-s3.yaml");
    let _cleanup = Remove(owned.clone());
    let named = root().join("examples/sandbox/release-silent-sts.yaml");
    let _cleanup_named = Remove(named.clone());
    let base = std::fs::read_to_string(root().join("examples/sandbox/release.yaml")).unwrap()
        + "state:\n  bucket: iris-state-of-our-own\n";
    std::fs::write(&named, &base).unwrap();
    std::fs::write(&owned, base + "  bucket_owner: \"123456789012\"\n").unwrap();
    let home = tempdir("silent-home");
    for (cfg, service) in [(&owned, "S3"), (&named, "STS")] {
        let mut child = bin()
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .arg("--config")
            .arg(cfg)
            .args(["--output", "json", "--dry-run", "promote"])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "us-east-1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A bound for the test itself, far above the call's timeout: without one the run never
        // ends.
        let bound = std::time::Instant::now() + std::time::Duration::from_secs(180);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > bound {
                child.kill().unwrap();
                panic!("the run still waits for {service} after 180 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let out = child.wait_with_output().unwrap();
        exits_with(&out, 5);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("state bucket") && stdout.contains("timed out"),
            "{service}: {stdout}"
        );
    }
}

#[test]
fn a_smoke_case_file_without_cases_is_a_configuration_error_before_anything_runs() {
    let dir = tempdir("nocases");
    let empty = dir.join("cases.yaml");
    std::fs::write(&empty, "model: iris\ncases: []\n").unwrap();
    let text = std::fs::read_to_string(root().join("examples/sandbox/release.yaml"))
        .unwrap()
        .replace(
            "../../model-server/smoke/cases.yaml",
            &empty.display().to_string(),
        );
    let cfg = root().join("examples/sandbox/release-nocases.yaml");
    let _cleanup = Remove(cfg.clone());
    std::fs::write(&cfg, text).unwrap();
    for args in [&["up"][..], &["promote"][..], &["rollback"][..]] {
        let out = against("http://127.0.0.1:9", &cfg, args);
        exits_with(&out, 3);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("smoke.cases") && stdout.contains("no golden cases"),
            "{args:?}: {stdout}"
        );
    }
    // A command that runs no smoke test goes on to AWS (unreachable here: exit 5, not 3).
    for args in [&["status"][..], &["history"][..]] {
        let out = against("http://127.0.0.1:9", &cfg, args);
        exits_with(&out, 5);
    }
}

#[test]
fn the_build_jobs_image_build_line_runs_without_the_deploy_context() {
    // The exact `release ... image build` line of the build job, run as that job runs it: in the
    // repository, with CircleCI's own variables and none of the deploy context's.
    let line = shell_commands(&circleci())
        .into_iter()
        .find(|w| w.iter().any(|x| x == "image") && w.iter().any(|x| x == "build"))
        .expect("the build job builds the image");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut cmd = bin();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CIRCLE_SHA1", sha)
        .env("CIRCLECI", "true")
        .current_dir(root());
    let mut words = line.iter();
    for w in words.by_ref() {
        // Leading assignments (`GIT_SHA="$CIRCLE_SHA1"`), then the program.
        match w.split_once('=') {
            Some((k, v)) => {
                cmd.env(k, v.replace("$CIRCLE_SHA1", sha));
            }
            None => break,
        }
    }
    let dir = tempdir("buildjob");
    let mut args: Vec<String> = words.cloned().collect();
    if let Some(i) = args.iter().position(|a| a == "--out") {
        args[i + 1] = dir.display().to_string();
    }
    // The musl binary the job builds first; a stand-in when this machine has not built it.
    let binary = root().join("target/x86_64-unknown-linux-musl/server/model-server");
    let _stand_in = (!binary.exists()).then(|| {
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        std::fs::write(&binary, b"a stand-in for the musl build").unwrap();
        Remove(binary.clone())
    });
    let out = cmd.args(&args).args(["--output", "json"]).output().unwrap();
    succeeded(&out, &format!("the build job's line {line:?}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("\"tag\":\"{sha}\"")), "{stdout}");
    // And a variable the image does need is still required.
    let no_sha = bin()
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(root())
        .args(&args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    exits_with(&no_sha, 3);
    assert!(
        String::from_utf8_lossy(&no_sha.stdout).contains("GIT_SHA"),
        "{}",
        String::from_utf8_lossy(&no_sha.stdout)
    );
}
