//! Crash safety. `release` is killed with SIGKILL right after each step of `up` (a first release
//! and a candidate), `promote` and `rollback`, through the test-only hook
//! `RELEASE_TEST_CRASH_AFTER_STEP`. After every crash: `status` tells the truth (the colour it
//! calls live is the one answering through the edge, with every pod ready; the lock names the dead
//! run), the next command refuses the dead run's lock without `--force-unlock` and converges with
//! it, and no colour or stack is left over. Under the promote and rollback crashes a stream of edge
//! requests runs throughout: not one fails.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{
    cases, config, deployments, edge_traffic, release, release_command, succeeded, summary,
};
use sandbox::harness::{Sandbox, model_server_binary};
use serde_json::Value;

/// `release <args>` killed after its `n`th step (or finishing, when it has fewer).
fn crash_after(sb: &Sandbox, config: &Path, args: &[&str], n: usize) -> Output {
    release_command(sb, config, args)
        .env("RELEASE_TEST_CRASH_AFTER_STEP", n.to_string())
        .output()
        .unwrap()
}

fn killed(out: &Output) -> bool {
    out.status.signal() == Some(9)
}

/// A sandbox of its own and a release.yaml for it.
fn sandbox() -> (Sandbox, PathBuf) {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), &model_server_binary(), "v1", &cases());
    (sb, cfg)
}

/// The same, with a first release done: blue live behind the edge.
fn sandbox_with_blue_live() -> (Sandbox, PathBuf) {
    let (sb, cfg) = sandbox();
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    (sb, cfg)
}

/// What the edge's `/version` answers (null when nothing answers).
fn edge_answer(sb: &Sandbox) -> Value {
    reqwest::blocking::get(format!("{}/version", sb.var("SANDBOX_EDGE_URL")))
        .and_then(|r| r.json())
        .unwrap_or_default()
}

/// What `status` says right after a crash, checked against the world.
fn status_tells_the_truth(sb: &Sandbox, config: &Path, what: &str) -> Value {
    let status = summary(&release(sb, config, &["status"]));
    let answer = edge_answer(sb);
    // While CloudFront propagates a change, a request meets the old or the new origin (the
    // sandbox picks per request, as edge locations differ): only a deployed edge answers alike.
    if status["edge"] == "Deployed" {
        assert_eq!(
            status["public url answers from"], answer["colour"],
            "{what}: status says who answers through the edge: {status}"
        );
    }
    if let Some(live) = status["live"].as_str() {
        // While a new distribution deploys nothing answers yet; once deployed, the live colour.
        if status["edge"] == "Deployed" {
            assert_eq!(answer["colour"], live, "{what}: {status}");
        } else {
            assert_eq!(status["edge"], "InProgress", "{what}: {status}");
        }
        let c = &status["colours"][format!("iris-{live}")];
        let ready = c["pods_ready"].as_str().unwrap();
        let (r, n) = ready.split_once('/').unwrap();
        assert!(
            r == n && n != "0",
            "{what}: the edge points at a colour with {ready} pods ready"
        );
        assert_eq!(c["healthy"], true, "{what}: {status}");
    }
    let lock = status["lock"].as_str().unwrap();
    assert!(
        lock.contains("process is gone"),
        "{what}: the lock names the dead run: {lock}"
    );
    status
}

/// The next command, without `--force-unlock`: refused, naming the dead run (exit 4).
fn refused_without_force_unlock(sb: &Sandbox, config: &Path, args: &[&str], what: &str) {
    let out = release(sb, config, args);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{what}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("died")
            && s["what_to_do"].as_str().unwrap().contains("--force-unlock"),
        "{what}: {s}"
    );
}

fn sorted_deployments(sb: &Sandbox) -> Vec<String> {
    let mut d = deployments(sb);
    d.sort();
    d
}

fn stacks_complete(sb: &Sandbox, config: &Path, what: &str) {
    let status = summary(&release(sb, config, &["status"]));
    for (name, state) in status["stacks"].as_object().unwrap() {
        let state = state.as_str().unwrap();
        assert!(
            state == "CREATE_COMPLETE" || state == "UPDATE_COMPLETE",
            "{what}: {name} is {state}"
        );
    }
    assert_eq!(status["lock"], "free", "{what}");
    assert_eq!(status["unfinished"], Value::Null, "{what}");
}

/// Crash `args` after step 1, 2, ... until a run finishes; after each crash check the truth and
/// the lock, then converge with `converge` and check the world with `converged`. Returns the
/// number of steps and each convergence run's exit code.
#[allow(clippy::too_many_arguments)]
fn every_step(
    sb: &Sandbox,
    cfg: &Path,
    args: &[&str],
    converge: &[&str],
    mut setup: impl FnMut(),
    mut converged: impl FnMut(&str),
) -> (usize, Vec<Option<i32>>) {
    let mut codes = Vec::new();
    for n in 1.. {
        setup();
        let what = format!("`release {}` killed after step {n}", args.join(" "));
        let out = crash_after(sb, cfg, args, n);
        if !killed(&out) {
            succeeded(
                &out,
                &format!("`release {}` with fewer than {n} steps", args.join(" ")),
            );
            converged(&format!("`release {}` uninterrupted", args.join(" ")));
            return (n - 1, codes);
        }
        status_tells_the_truth(sb, cfg, &what);
        refused_without_force_unlock(sb, cfg, converge, &what);
        let mut with_unlock = converge.to_vec();
        with_unlock.push("--force-unlock");
        let next = release(sb, cfg, &with_unlock);
        codes.push(next.status.code());
        assert!(
            matches!(next.status.code(), Some(0) | Some(8)),
            "{what}: `release {}` converges: {}",
            with_unlock.join(" "),
            String::from_utf8_lossy(&next.stdout)
        );
        converged(&what);
        let history = summary(&release(sb, cfg, &["history"]));
        let crashed = history["releases"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .nth(1)
            .unwrap()
            .clone();
        assert_eq!(
            crashed["outcome"], "failed",
            "{what}: the ledger closes the dead run: {crashed}"
        );
        assert!(n < 20, "the hook never let a run finish");
    }
    unreachable!()
}

#[test]
fn a_first_release_killed_after_any_step_is_finished_by_the_next_run() {
    let (sb, cfg) = sandbox();
    let mut first = true;
    let (steps, codes) = every_step(
        &sb,
        &cfg,
        &["up"],
        &["up"],
        || {
            // Each attempt starts from nothing.
            if !std::mem::take(&mut first) {
                succeeded(
                    &release(&sb, &cfg, &["destroy", "--yes", "--delete-images"]),
                    "destroy",
                );
            }
        },
        |what| {
            assert_eq!(deployments(&sb), ["iris-blue"], "{what}");
            stacks_complete(&sb, &cfg, what);
            status_live(&sb, &cfg, "blue", what);
        },
    );
    assert!(
        steps >= 7,
        "stacks, push, deploy, smoke, edge, verify: {steps} steps"
    );
    assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
}

fn status_live(sb: &Sandbox, cfg: &Path, colour: &str, what: &str) {
    let answer = edge_answer(sb);
    assert_eq!(answer["colour"], colour, "{what}");
    assert_eq!(
        summary(&release(sb, cfg, &["status"]))["live"],
        colour,
        "{what}"
    );
}

/// Every edge request of a stream that ran while `f` did, checked for failures.
fn under_traffic<T>(sb: &Sandbox, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = edge_traffic(sb.var("SANDBOX_EDGE_URL").to_string(), stop.clone());
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().unwrap();
    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.colour.starts_with("error"))
        .collect();
    assert!(
        seen.len() > 50 && failed.is_empty(),
        "{} requests, failed: {failed:?}",
        seen.len()
    );
    r
}

#[test]
fn a_candidate_release_killed_after_any_step_is_finished_and_blue_never_stops_serving() {
    let (sb, cfg) = sandbox_with_blue_live();
    let (steps, codes) = under_traffic(&sb, || {
        every_step(
            &sb,
            &cfg,
            &["up", "--force"],
            &["up", "--force"],
            || {},
            |what| {
                assert_eq!(
                    sorted_deployments(&sb),
                    ["iris-blue", "iris-green"],
                    "{what}"
                );
                let status = summary(&release(&sb, &cfg, &["status"]));
                assert_eq!(
                    status["colours"]["iris-green"]["role"], "candidate",
                    "{what}"
                );
                stacks_complete(&sb, &cfg, what);
                status_live(&sb, &cfg, "blue", what);
            },
        )
    });
    assert!(steps >= 5, "stacks, push, deploy, smoke: {steps} steps");
    assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
}

#[test]
fn a_promote_killed_after_any_step_is_finished_by_the_next_promote() {
    let (sb, cfg) = sandbox_with_blue_live();
    let mut first = true;
    let (steps, codes) = under_traffic(&sb, || {
        every_step(
            &sb,
            &cfg,
            &["promote", "--retire-previous"],
            &["promote", "--retire-previous"],
            || {
                // blue live, green a tested candidate.
                if !std::mem::take(&mut first) {
                    succeeded(&release(&sb, &cfg, &["rollback"]), "back to blue");
                }
                succeeded(&release(&sb, &cfg, &["up", "--force"]), "candidate");
            },
            |what| {
                assert_eq!(deployments(&sb), ["iris-green"], "{what}");
                stacks_complete(&sb, &cfg, what);
                status_live(&sb, &cfg, "green", what);
            },
        )
    });
    assert_eq!(
        steps, 6,
        "smoke, contract, flip, verify, retire, protect images"
    );
    // Only a crash after the last step leaves nothing for the next promote to do.
    assert_eq!(codes[..steps - 1], vec![Some(0); steps - 1]);
}

#[test]
fn a_rollback_to_a_retired_colour_killed_after_any_step_is_finished_by_the_next_rollback() {
    let (sb, cfg) = sandbox_with_blue_live();
    let (steps, codes) = under_traffic(&sb, || {
        every_step(
            &sb,
            &cfg,
            &["rollback"],
            &["rollback"],
            || {
                // green live, blue retired: the rollback must redeploy blue from the ledger.
                succeeded(
                    &release(
                        &sb,
                        &cfg,
                        &["up", "--force", "--promote", "--retire-previous"],
                    ),
                    "green live",
                );
                assert_eq!(deployments(&sb), ["iris-green"]);
            },
            |what| {
                assert_eq!(deployments(&sb), ["iris-blue"], "{what}");
                stacks_complete(&sb, &cfg, what);
                status_live(&sb, &cfg, "blue", what);
            },
        )
    });
    assert_eq!(
        steps, 6,
        "redeploy, smoke, flip, verify, retire, protect images"
    );
    assert_eq!(codes[..steps - 1], vec![Some(0); steps - 1]);
}
