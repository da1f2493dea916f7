//! `--dry-run` changes nothing, on any command: every stack (status, parameters, last update),
//! every Kubernetes object release makes (labels, annotations, spec), every object version in the
//! state bucket (the ledger and the lock), every image in ECR and the colour answering through the
//! edge are the same before and after, while the printed plan names the steps the real command
//! would take, and the exit codes are the real command's decision. Also: `up --promote` with
//! nothing to release succeeds, and a panic closes the ledger and releases the lock.

mod common;

use std::path::Path;

use common::{
    Given, STATE_BUCKET, aws, executed_steps, given_blue_live_and_a_green_candidate, last_release,
    object, planned_steps, release, release_command, s3, summary, then_exit, then_ok, when,
};
use sandbox::harness::Sandbox;
use serde_json::{Value, json};

/// Everything a dry run could change, as observed from outside `release`.
async fn world(sb: &Sandbox) -> Value {
    let conf = aws(sb).await;
    let cfn = aws_sdk_cloudformation::Client::new(&conf);
    let mut stacks = json!({});
    for s in cfn.describe_stacks().send().await.unwrap().stacks() {
        let params: Vec<(String, String)> = s
            .parameters()
            .iter()
            .map(|p| {
                (
                    p.parameter_key().unwrap_or_default().to_string(),
                    p.parameter_value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        // A change set is a write too (and a dry run must not need the rights to make one).
        let change_sets: Vec<String> = cfn
            .list_change_sets()
            .stack_name(s.stack_name().unwrap())
            .send()
            .await
            .unwrap()
            .summaries()
            .iter()
            .map(|c| format!("{:?}", c.change_set_name()))
            .collect();
        stacks[s.stack_name().unwrap()] = json!({
            "status": s.stack_status().map(|x| x.as_str().to_string()),
            "updated": s.last_updated_time().map(|t| t.to_string()),
            "parameters": params,
            "change sets": change_sets,
        });
    }
    let cf = aws_sdk_cloudfront::Client::new(&conf);
    let mut invalidations = Vec::new();
    let dists = cf.list_distributions().send().await.unwrap();
    for d in dists
        .distribution_list()
        .map(|l| l.items())
        .unwrap_or_default()
    {
        let list = cf
            .list_invalidations()
            .distribution_id(d.id())
            .send()
            .await
            .unwrap();
        invalidations.push(json!({
            "distribution": d.id(),
            "origins": format!("{:?}", d.origins()),
            "invalidations": list.invalidation_list().map(|l| l.quantity()),
        }));
    }
    let kube: Value = serde_json::from_str(&common::kubectl(
        sb,
        &[
            "get",
            "deployments,services,secrets,namespaces,poddisruptionbudgets,networkpolicies",
            "-A",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let objects: Vec<Value> = kube["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            json!({
                "kind": o["kind"], "namespace": o["metadata"]["namespace"], "name": o["metadata"]["name"],
                "labels": o["metadata"]["labels"], "annotations": o["metadata"]["annotations"],
                "spec": o["spec"], "data": o["data"],
            })
        })
        .collect();
    let s3 = s3(sb).await;
    let versions = s3
        .list_object_versions()
        .bucket(STATE_BUCKET)
        .send()
        .await
        .unwrap();
    let versions: Vec<(String, String)> = versions
        .versions()
        .iter()
        .map(|v| {
            (
                v.key().unwrap_or_default().to_string(),
                v.version_id().unwrap_or_default().to_string(),
            )
        })
        .chain(versions.delete_markers().iter().map(|m| {
            (
                m.key().unwrap_or_default().to_string(),
                format!("deleted {}", m.version_id().unwrap_or_default()),
            )
        }))
        .collect();
    let images: Vec<String> = aws_sdk_ecr::Client::new(&conf)
        .list_images()
        .repository_name("iris")
        .send()
        .await
        .unwrap()
        .image_ids()
        .iter()
        .map(|i| format!("{:?}", i.image_digest()))
        .collect();
    let answer: Value = reqwest::get(format!("{}/version", sb.var("SANDBOX_EDGE_URL")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    json!({"stacks": stacks, "cloudfront": invalidations, "kubernetes": objects, "state bucket": versions, "images": images,
           "edge answers from": answer["colour"]})
}

/// `release --dry-run <args>`: the world is the same afterwards; returns the run.
async fn dry_run(sb: &Sandbox, cfg: &Path, args: &[&str]) -> std::process::Output {
    let before = world(sb).await;
    let mut all = vec!["--dry-run"];
    all.extend_from_slice(args);
    let out = release(sb, cfg, &all);
    let after = world(sb).await;
    assert_eq!(
        before, after,
        "release --dry-run {args:?} changed the world"
    );
    out
}

/// The step names of a dry run's plan, and the step named `name`'s description.
fn plan(out: &std::process::Output) -> Vec<(String, String)> {
    summary(out)["plan"]
        .as_array()
        .unwrap_or_else(|| panic!("a plan: {}", summary(out)))
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["what"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The steps the ledger's last release recorded.
async fn recorded(sb: &Sandbox) -> Vec<String> {
    last_release(&s3(sb).await).await["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn names(plan: &[(String, String)]) -> Vec<&str> {
    plan.iter().map(|(s, _)| s.as_str()).collect()
}

fn what<'a>(plan: &'a [(String, String)], step: &str) -> &'a str {
    &plan
        .iter()
        .find(|(s, _)| s == step)
        .unwrap_or_else(|| panic!("no step {step} in {plan:?}"))
        .1
}

/// Given blue live and a tested green candidate: a dry-run promote prints the plan (and refuses
/// as the real promote would), and the real promote executes exactly that plan.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_promote_prints_the_plan_the_real_promote_then_executes() {
    let Given { sb, cfg } = given_blue_live_and_a_green_candidate();

    // promote: from blue to the tested green, the origin change spelled out.
    let out = dry_run(&sb, &cfg, &["promote"]).await;
    then_ok(&out, "dry-run promote");
    let p = plan(&out);
    let promote_plan = p.clone();
    assert_eq!(
        names(&p),
        [
            "lock",
            "smoke iris-green",
            "contract iris-green",
            "flip",
            "verify public URL",
            "protect images",
            "roles",
            "keep iris-blue"
        ]
    );
    assert!(
        what(&p, "flip").contains("(iris-blue -> iris-green)"),
        "{p:?}"
    );
    assert!(
        what(&p, "smoke iris-green").contains("30 requests"),
        "{p:?}"
    );
    assert_eq!(summary(&out)["dry run"], "nothing was changed");
    let out = dry_run(&sb, &cfg, &["promote", "--retire-previous"]).await;
    assert_eq!(names(&plan(&out)).last(), Some(&"retire iris-blue"));
    // A digest the candidate does not run: refused as the real promote refuses it.
    then_exit(
        &dry_run(&sb, &cfg, &["promote", "--expect-digest", "sha256:0000"]).await,
        8,
    );

    // rollback: nothing was live before blue; exit 8 as the real rollback.
    let out = dry_run(&sb, &cfg, &["rollback"]).await;
    then_exit(&out, 8);
    assert!(
        summary(&out)["error"]
            .as_str()
            .unwrap()
            .contains("nothing to rollback")
    );

    // The real promote executes the plan the dry run printed: the same steps in the same order,
    // and the ledger records those that act, in that order.
    let promoted = when(&sb, &cfg, &["promote"]);
    then_ok(&promoted, "promote");
    assert_eq!(
        executed_steps(&promoted),
        names(&promote_plan),
        "the printed plan is not what ran"
    );
    assert_eq!(
        recorded(&sb).await,
        [
            "smoke iris-green",
            "contract iris-green",
            "flip",
            "verify public URL",
            "protect images"
        ]
    );

    // retire: blue, now previous, would go; the dry run removes nothing (the world compared).
    let out = dry_run(&sb, &cfg, &["retire"]).await;
    then_ok(&out, "dry-run retire");
    assert_eq!(names(&plan(&out)), ["lock", "retire iris-blue"]);
}

/// Given blue live and a tested green candidate: dry runs of destroy and up change nothing and
/// print every resource and step, and the real `up --force` takes the printed steps.
#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_of_destroy_and_up_change_nothing_and_print_what_the_real_run_does() {
    let Given { sb, cfg } = given_blue_live_and_a_green_candidate();

    // destroy without --yes and no TTY to ask on: the plan is printed, and the exit is the real
    // command's refusal.
    let out = dry_run(&sb, &cfg, &["destroy"]).await;
    then_exit(&out, 2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("plan: delete iris-edge") && stdout.contains("add --yes"),
        "{stdout}"
    );
    // With --yes: every resource in order.
    let out = dry_run(&sb, &cfg, &["--yes", "destroy"]).await;
    then_ok(&out, "dry-run destroy --yes");
    assert_eq!(
        names(&plan(&out)),
        [
            "lock",
            "delete iris-edge",
            "delete iris-blue",
            "delete iris-green",
            "delete app objects",
            "load balancers",
            "delete iris-cluster",
            "delete iris-network",
            "keep iris-registry"
        ]
    );
    let out = dry_run(&sb, &cfg, &["--yes", "destroy", "--delete-images"]).await;
    let p = plan(&out);
    assert_eq!(
        names(&p)[8..],
        [
            "delete images",
            "delete iris-registry",
            &format!("delete {STATE_BUCKET}")
        ]
    );
    assert_eq!(what(&p, "delete images"), "1 images in repository iris");

    // up: the same image is live on blue, so nothing to release; --force would replace green.
    let out = dry_run(&sb, &cfg, &["up"]).await;
    then_ok(&out, "dry-run up");
    for stack in ["iris-network", "iris-registry", "iris-cluster"] {
        assert_eq!(summary(&out)[stack], "no changes", "{}", summary(&out));
    }
    let colour = summary(&out)["colour"].as_str().unwrap().to_string();
    assert!(
        colour.starts_with("nothing to release: iris-blue"),
        "{colour}"
    );
    // A changed stack setting: read from the stack's template and parameters, no change set.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let wider = cfg.with_file_name("release-wider.yaml");
    std::fs::write(
        &wider,
        text.replace("stacks:\n", "stacks:\n  vpc_cidr: 10.9.0.0/16\n"),
    )
    .unwrap();
    let out = dry_run(&sb, &wider, &["up"]).await;
    then_ok(&out, "dry-run up with another VPC range");
    let network = summary(&out)["iris-network"].as_str().unwrap().to_string();
    assert!(
        network.starts_with("update: parameter VpcCidr: ") && network.contains("-> 10.9.0.0/16"),
        "{network}"
    );
    assert_eq!(summary(&out)["iris-registry"], "no changes");
    let out = dry_run(&sb, &cfg, &["up", "--force", "--promote"]).await;
    let colour = summary(&out)["colour"].as_str().unwrap().to_string();
    assert!(colour.starts_with("deploy iris-green"), "{colour}");
    // The real `up --force` takes the steps its dry run printed, in order.
    let forced_plan = planned_steps(&dry_run(&sb, &cfg, &["up", "--force"]).await);
    assert_eq!(
        forced_plan,
        [
            "lock",
            "stack iris-network",
            "stack iris-registry",
            "stack iris-cluster",
            "image push",
            "deploy iris-green",
            "smoke iris-green",
            "protect images"
        ]
    );
    let forced = when(&sb, &cfg, &["up", "--force"]);
    then_ok(&forced, "up --force");
    assert_eq!(executed_steps(&forced), forced_plan);
}

/// Given green promoted over blue: up with nothing to release, a dry-run and a real rollback, and
/// a lock held elsewhere, each decided as the real command decides.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_promote_rollback_and_a_held_lock_are_decided_as_the_real_run_decides() {
    let Given { sb, cfg } = given_blue_live_and_a_green_candidate();
    then_ok(&when(&sb, &cfg, &["promote"]), "promote");

    // Then `up --promote` on the same build has nothing to release: exit 0, after the steps its
    // dry run printed.
    let nothing_plan = planned_steps(&dry_run(&sb, &cfg, &["up"]).await);
    assert_eq!(
        nothing_plan[nothing_plan.len() - 2..],
        ["verify public URL", "protect images"]
    );
    let again = when(&sb, &cfg, &["up", "--promote"]);
    then_ok(&again, "up --promote with nothing to release");
    assert_eq!(executed_steps(&again), nothing_plan);
    let s = summary(&again);
    assert_eq!(s["candidate"], "none: nothing to release");
    assert_eq!(s["live"], "green");
    assert!(s.get("promote").is_none(), "no promote was attempted: {s}");

    // rollback to blue: retire green unless --keep-failed.
    let out = dry_run(&sb, &cfg, &["rollback"]).await;
    then_ok(&out, "dry-run rollback");
    let p = plan(&out);
    assert_eq!(
        names(&p),
        [
            "lock",
            "smoke iris-blue",
            "flip",
            "verify public URL",
            "protect images",
            "roles",
            "retire iris-green"
        ]
    );
    assert_eq!(what(&p, "roles"), "iris-blue live, iris-green failed");
    let out = dry_run(&sb, &cfg, &["rollback", "--keep-failed"]).await;
    let rollback_plan = plan(&out);
    assert_eq!(names(&rollback_plan).last(), Some(&"keep iris-green"));
    let rolled = when(&sb, &cfg, &["rollback", "--keep-failed"]);
    then_ok(&rolled, "rollback --keep-failed");
    assert_eq!(executed_steps(&rolled), names(&rollback_plan));
    assert_eq!(
        recorded(&sb).await,
        [
            "smoke iris-blue",
            "flip",
            "verify public URL",
            "protect images"
        ]
    );

    // A lock held by a live run elsewhere: every dry run says so with exit 4, as the real run.
    let s3 = s3(&sb).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lock = json!({"owner": "someone", "host": "elsewhere", "command": "promote",
                      "ci_build_url": null, "started": now, "lease_expires": now + 600, "pid": 1});
    s3.put_object()
        .bucket(STATE_BUCKET)
        .key("apps/iris/lock.json")
        .body(serde_json::to_vec(&lock).unwrap().into())
        .send()
        .await
        .unwrap();
    for args in [
        &["up"][..],
        &["rollback"][..],
        &["promote"][..],
        &["--yes", "destroy"][..],
    ] {
        let out = dry_run(&sb, &cfg, args).await;
        then_exit(&out, 4);
        assert!(
            summary(&out)["error"]
                .as_str()
                .unwrap()
                .contains("someone on elsewhere"),
            "{args:?}: {}",
            summary(&out)
        );
    }
    assert_eq!(object(&s3, "apps/iris/lock.json").await, Some(lock));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_closes_the_ledger_and_releases_the_lock() {
    let Given { sb, cfg } = given_blue_live_and_a_green_candidate();
    // Which step deploys the candidate: the same in the next `up --force`, which replaces it.
    let s3 = s3(&sb).await;
    let steps = last_release(&s3).await["steps"].clone();
    let deploy = steps
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["name"] == "deploy iris-green")
        .unwrap_or_else(|| panic!("a deploy step in {steps}"));
    // The test-only hook panics right after the candidate's deployment is recorded.
    let out = release_command(&sb, &cfg, &["up", "--force"])
        .env("RELEASE_TEST_PANIC_AFTER_STEP", (deploy + 1).to_string())
        .output()
        .unwrap();
    then_exit(&out, 1);
    let s = summary(&out);
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("internal error (a bug)"),
        "{s}"
    );
    assert_eq!(
        object(&s3, "apps/iris/lock.json").await,
        None,
        "the lock is released"
    );
    let last = last_release(&s3).await;
    assert_eq!(last["outcome"], "failed", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("internal error"),
        "{last}"
    );
    assert_eq!(
        common::deployments(&sb),
        ["iris-blue"],
        "the candidate being deployed is torn down"
    );
    // And the next run needs no --force-unlock.
    then_ok(
        &when(&sb, &cfg, &["up", "--force"]),
        "the run after the panic",
    );
}
