//! `release up` (first half) end to end: the real binary, configured only through the standard AWS
//! environment, against a sandbox started for each test.

mod common;

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use common::{
    STATE_BUCKET, aws, executed_steps, exits_with, object, planned_steps, release, s3, succeeded,
    summary,
};
use sandbox::harness::{Sandbox, model_server_binary, workspace};

/// This machine's name, as `release` reads it.
fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string()
    })
}

/// A release.yaml in its own directory, pointing at the repository's templates and cases.
fn config(dir: &Path, extra: &str) -> PathBuf {
    config_with(dir, "", extra)
}

/// `stacks` adds lines to the `stacks:` section, `extra` whole sections.
fn config_with(dir: &Path, stacks: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let root = workspace();
    let text = format!(
        "app: iris\nimage:\n  binary: {}\n  tag: ${{GIT_SHA}}\nstacks:\n  templates: {}\n{stacks}deploy:\n  templates: {}\nedge:\n  public_url: ${{SANDBOX_EDGE_URL}}\nsmoke:\n  cases: {}\n{extra}",
        model_server_binary().display(),
        root.join("cloudformation").display(),
        root.join("kube-templates").display(),
        root.join("model-server/smoke/cases.yaml").display()
    );
    let path = dir.join("release.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn up_creates_the_stacks_and_pushes_the_image_then_a_second_run_changes_nothing() {
    let sb = Sandbox::start(&[]);
    let role = "arn:aws:iam::123456789012:role/iris-cloudformation";
    let cfg = config_with(&sb.dir.join("cfg"), &format!("  role_arn: {role}\n"), "");

    let dry = release(&sb, &cfg, &["up", "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let plan = summary(&dry);
    assert!(
        plan["iris-network"].as_str().unwrap().starts_with("create"),
        "{plan}"
    );
    assert_eq!(plan["dry run"], "nothing was changed");
    assert!(
        plan["load balancer controller"]
            .as_str()
            .unwrap()
            .starts_with("install the AWS Load Balancer Controller v3.5.0 once the cluster exists"),
        "{plan}"
    );
    let s3 = s3(&sb).await;
    assert!(
        s3.list_buckets().send().await.unwrap().buckets().is_empty(),
        "a dry run creates nothing"
    );

    let first = release(&sb, &cfg, &["up"]);
    succeeded(&first, "first up");
    let s1 = summary(&first);
    for stack in ["iris-network", "iris-registry", "iris-cluster"] {
        assert!(
            s1[stack].as_str().unwrap().starts_with("create"),
            "{stack}: {s1}"
        );
    }
    assert!(
        s1["image push"]
            .as_str()
            .unwrap()
            .contains("bytes uploaded"),
        "{s1}"
    );
    // stacks.role_arn: CloudFormation acts with the service role, not the caller's rights.
    let cfn = aws_sdk_cloudformation::Client::new(&aws(&sb).await);
    let network = cfn
        .describe_stacks()
        .stack_name("iris-network")
        .send()
        .await
        .unwrap();
    assert_eq!(network.stacks()[0].role_arn(), Some(role));

    let dry = summary(&release(&sb, &cfg, &["up", "--dry-run"]));
    assert_eq!(dry["load balancer controller"], "v3.5.0 in place", "{dry}");

    let second = release(&sb, &cfg, &["up"]);
    succeeded(&second, "second up");
    let s2 = summary(&second);
    for stack in ["iris-network", "iris-registry", "iris-cluster"] {
        assert_eq!(s2[stack], "no changes", "{s2}");
    }
    assert!(
        s2["image push"].as_str().unwrap().starts_with("already in"),
        "no layer bytes the second time: {s2}"
    );
    assert_eq!(
        s1["image"], s2["image"],
        "the same binary and tag make the same digest"
    );

    // The ledger has both runs, with their steps; the lock is gone.
    let releases = common::releases(&s3).await;
    assert_eq!(releases.len(), 2);
    assert_eq!(
        (
            releases[0]["outcome"].as_str(),
            releases[1]["outcome"].as_str()
        ),
        (Some("succeeded"), Some("nothing_to_do"))
    );
    assert!(
        releases[0]["image_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(releases[0]["steps"].as_array().unwrap().len() >= 4);
    let ran = |r: &serde_json::Value, step: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == step)
    };
    assert!(
        ran(&releases[0], "load balancer controller"),
        "the first run installs the controller: {}",
        releases[0]
    );
    assert!(
        !ran(&releases[1], "load balancer controller"),
        "the second finds it in place: {}",
        releases[1]
    );
    assert!(
        object(&s3, "apps/iris/lock.json").await.is_none(),
        "the lock is released"
    );
}

#[tokio::test]
async fn a_held_lock_stops_a_second_run_and_only_an_expired_one_is_broken() {
    let sb = Sandbox::start(&[]);
    let cfg = config(&sb.dir.join("cfg"), "");
    assert!(release(&sb, &cfg, &["up"]).status.success());
    let s3 = s3(&sb).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let put_lock = |expires: u64| {
        let body = serde_json::json!({"owner": "ci@runner", "host": "runner-7", "command": "up", "ci_build_url": "https://ci.example/42", "started": now - 60, "lease_expires": expires});
        s3.put_object()
            .bucket(STATE_BUCKET)
            .key("apps/iris/lock.json")
            .body(ByteStream::from(body.to_string().into_bytes()))
            .send()
    };
    put_lock(now + 600).await.unwrap();
    let held = release(&sb, &cfg, &["up"]);
    assert_eq!(held.status.code(), Some(4));
    let s = summary(&held);
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("ci@runner on runner-7")
            && s["error"]
                .as_str()
                .unwrap()
                .contains("https://ci.example/42"),
        "{s}"
    );
    let refused = release(&sb, &cfg, &["up", "--force-unlock"]);
    assert_eq!(
        refused.status.code(),
        Some(4),
        "a live lock is not broken without --break-live-lock"
    );
    // Not with --yes either (what a scripted destroy exports as RELEASE_YES).
    let yes = release(&sb, &cfg, &["--yes", "up", "--force-unlock"]);
    assert_eq!(yes.status.code(), Some(4), "--yes broke a live lock");
    assert!(
        summary(&yes)["what_to_do"]
            .as_str()
            .unwrap()
            .contains("--break-live-lock"),
        "{}",
        summary(&yes)
    );
    // The lease runs on S3's clock: a holder whose clock was two hours behind wrote a lease that
    // looks long over, but S3 wrote the lock just now, so it is live.
    let put = |lock: serde_json::Value| {
        s3.put_object()
            .bucket(STATE_BUCKET)
            .key("apps/iris/lock.json")
            .body(ByteStream::from(lock.to_string().into_bytes()))
            .send()
    };
    let lock = |lease_expires: u64, process: serde_json::Value| {
        serde_json::json!({"owner": "ci@runner", "host": hostname(), "command": "up",
            "started": now - 7200, "lease_expires": lease_expires, "lease_seconds": 600,
            "process": process})
    };
    put(lock(now - 7080, serde_json::Value::Null))
        .await
        .unwrap();
    let skewed = release(&sb, &cfg, &["up", "--force-unlock"]);
    assert_eq!(
        skewed.status.code(),
        Some(4),
        "a lease judged on the holder's clock"
    );
    // A holder on another machine that shares this one's hostname, whose pid runs nowhere here:
    // not known to be dead, so not broken without --break-live-lock.
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let process = |boot_id: &str| {
        serde_json::json!({"pid": 4_000_000, "boot_id": boot_id.trim(),
            "pid_ns": pid_ns.to_string_lossy(), "start_ticks": 1})
    };
    put(lock(now + 600, process("another machine's boot")))
        .await
        .unwrap();
    let elsewhere = release(&sb, &cfg, &["up", "--force-unlock"]);
    assert_eq!(
        elsewhere.status.code(),
        Some(4),
        "a lock from another host of the same name was broken"
    );
    // The same holder on this very machine and boot: its process is gone, so it is broken.
    put(lock(now + 600, process(&boot_id))).await.unwrap();
    succeeded(
        &release(&sb, &cfg, &["up", "--force-unlock"]),
        "a dead holder's lock on this machine is broken",
    );
    put_lock(now - 1).await.unwrap();
    assert_eq!(
        release(&sb, &cfg, &["up"]).status.code(),
        Some(4),
        "an expired lock still needs --force-unlock"
    );
    let broken = release(&sb, &cfg, &["up", "--force-unlock"]);
    succeeded(&broken, "up with --force-unlock");
    assert!(object(&s3, "apps/iris/lock.json").await.is_none());

    // ECR tags are immutable: another build under the same tag is refused, clearly.
    let other = sb.dir.join("other-build");
    let mut bytes = std::fs::read(model_server_binary()).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&other, bytes).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &model_server_binary().display().to_string(),
        &other.display().to_string(),
    );
    let retagged = sb.dir.join("cfg/retagged.yaml");
    std::fs::write(&retagged, text).unwrap();
    let out = release(&sb, &retagged, &["up"]);
    exits_with(&out, 5);
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("already names")
            && s["what_to_do"].as_str().unwrap().contains("immutable"),
        "{s}"
    );
}

#[tokio::test]
async fn bad_configs_and_a_failing_stack_get_their_errors_and_exit_codes() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let unknown = config(&dir, "model:\n  colour: blue\n");
    let out = release(&sb, &unknown, &["up"]);
    assert_eq!(out.status.code(), Some(3));
    let s = summary(&out);
    assert!(
        s["error"].as_str().unwrap().contains("model.colour")
            && s["error"].as_str().unwrap().contains("line"),
        "{s}"
    );
    let no_templates = config(&dir, "").with_file_name("nope.yaml");
    std::fs::write(
        &no_templates,
        std::fs::read_to_string(dir.join("release.yaml"))
            .unwrap()
            .replace("/cloudformation", "/missing"),
    )
    .unwrap();
    let out = release(&sb, &no_templates, &["up"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        summary(&out)["error"]
            .as_str()
            .unwrap()
            .contains("stacks.templates")
    );

    // A value the network template cannot use: the stack fails, its failed resource is named,
    // and the next run (fixed) deletes the failed stack and creates it again.
    let bad = config_with(&dir, "  vpc_cidr: 10.400.0.0/16\n", "");
    let out = release(&sb, &bad, &["up"]);
    exits_with(&out, 5);
    let s = summary(&out);
    assert!(
        s["step"] == "stack iris-network"
            && s["error"].as_str().unwrap().contains("ROLLBACK_COMPLETE")
            && s["error"]
                .as_str()
                .unwrap()
                .contains("Vpc (AWS::EC2::VPC) CREATE_FAILED"),
        "{s}"
    );
    let good = config(&dir, "");
    let out = release(&sb, &good, &["up"]);
    succeeded(&out, "up after the stack failure");
    assert!(
        summary(&out)["iris-network"]
            .as_str()
            .unwrap()
            .starts_with("delete the stack left by a failed create")
    );
}

/// A cluster stack from before CoreDNS ran on Fargate (no add-on): EKS's CoreDNS is never
/// scheduled, the load balancer controller cannot resolve AWS's endpoints, and `up` stops before
/// any colour with the reason, leaving nothing half-done; with the stack as it is now, the next
/// `up` adds the add-on and releases.
#[tokio::test]
async fn without_coredns_on_fargate_up_stops_before_the_first_colour_and_says_why() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let old = dir.join("cloudformation");
    std::fs::create_dir_all(&old).unwrap();
    for entry in std::fs::read_dir(workspace().join("cloudformation")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, old.join(path.file_name().unwrap())).unwrap();
    }
    let cluster = std::fs::read_to_string(old.join("cluster.yaml")).unwrap();
    let (head, rest) = cluster.split_once("  CoreDnsAddon:").unwrap();
    let (_, tail) = rest.split_once("\n\n").unwrap();
    std::fs::write(old.join("cluster.yaml"), format!("{head}{tail}")).unwrap();
    let good = config(&dir, "");
    let text = std::fs::read_to_string(&good).unwrap();
    let bad = dir.join("old.yaml");
    std::fs::write(
        &bad,
        text.replace(
            &format!(
                "templates: {}\n",
                workspace().join("cloudformation").display()
            ),
            &format!("templates: {}\n", old.display()),
        )
        .replace("deploy:\n", "deploy:\n  controller_timeout_seconds: 5\n"),
    )
    .unwrap();
    let out = release(&sb, &bad, &["up"]);
    exits_with(&out, 5);
    let s = summary(&out);
    let error = s["error"].as_str().unwrap();
    assert_eq!(s["step"], "load balancer controller", "{s}");
    assert!(
        error.contains("no CoreDNS pod is ready") && error.contains("is not scheduled"),
        "{s}"
    );
    assert_eq!(
        common::deployments(&sb),
        Vec::<String>::new(),
        "no colour was deployed"
    );
    let s3 = s3(&sb).await;
    assert!(object(&s3, "apps/iris/lock.json").await.is_none());

    let out = release(&sb, &good, &["up"]);
    succeeded(&out, "up with the add-on");
    assert!(
        summary(&out)["iris-cluster"]
            .as_str()
            .unwrap()
            .contains("add AWS::EKS::Addon CoreDnsAddon"),
        "{}",
        summary(&out)
    );
}

/// A first create of the registry stack that fails (here: a repository of that name is already
/// there) rolls back; once the cause is gone, the next `up` creates the stack again. With the
/// state bucket on `DeletionPolicy: Retain` the rollback kept the bucket, and every later create
/// failed on "already exists" (the sandbox keeps Retain resources across a rollback, as AWS does).
#[tokio::test]
async fn a_failed_first_create_of_the_registry_can_be_retried() {
    let sb = Sandbox::start(&[]);
    let ecr = aws_sdk_ecr::Client::new(&aws(&sb).await);
    ecr.create_repository()
        .repository_name("iris")
        .send()
        .await
        .unwrap();
    let cfg = config(&sb.dir.join("cfg"), "");
    let out = release(&sb, &cfg, &["up"]);
    exits_with(&out, 5);
    let s = summary(&out);
    assert!(
        s["step"] == "stack iris-registry"
            && s["error"].as_str().unwrap().contains("ROLLBACK_COMPLETE"),
        "{s}"
    );
    let kept = s3(&sb)
        .await
        .head_bucket()
        .bucket(STATE_BUCKET)
        .send()
        .await;
    assert!(kept.is_err(), "the rollback deleted the state bucket");
    ecr.delete_repository()
        .repository_name("iris")
        .force(true)
        .send()
        .await
        .unwrap();
    let out = release(&sb, &cfg, &["up"]);
    succeeded(&out, "up once the repository is gone");
    assert!(
        summary(&out)["iris-registry"]
            .as_str()
            .unwrap()
            .starts_with("delete the stack left by a failed create"),
        "{}",
        summary(&out)
    );
}

/// The load balancer's address has its own wait (NLB provisioning and target registration take
/// minutes on AWS): here it comes 15 s after the Service, longer than the 10 s rollout timeout
/// that used to bound both waits.
#[tokio::test]
async fn a_slow_load_balancer_gets_its_own_wait() {
    let sb = Sandbox::start(&["--lb-delay-ms", "15000"]);
    let dir = sb.dir.join("cfg");
    let cfg = config(&dir, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("deploy:\n", "deploy:\n  rollout_timeout_seconds: 10\n");
    std::fs::write(&cfg, text).unwrap();
    let out = release(&sb, &cfg, &["up"]);
    succeeded(
        &out,
        "up with a load balancer slower than the rollout timeout",
    );
}

/// The load balancers go before the cluster: each Service is held by the controller's finalizer
/// until its NLB is deleted (3 s here), and a cluster deleted sooner leaves the NLB's network
/// interfaces in the VPC, so the network stack's deletion fails (DependencyViolation).
#[tokio::test]
async fn destroy_waits_for_the_load_balancers_and_leaves_no_log_group() {
    // Longer than the edge's and the cluster's deletions take here, so that a destroy that did
    // not wait would reach the network stack while the NLB's interface is still in its subnet.
    let sb = Sandbox::start(&["--lb-delay-ms", "20000"]);
    let cfg = config(&sb.dir.join("cfg"), "");
    succeeded(&release(&sb, &cfg, &["up"]), "first release");
    // The control-plane log group is the cluster stack's, with a retention.
    let groups = eks_log_groups(&sb).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["logGroupName"], "/aws/eks/iris/cluster");
    assert_eq!(groups[0]["retentionInDays"], 30, "{groups:?}");
    let planned = release(&sb, &cfg, &["--dry-run", "--yes", "destroy"]);
    succeeded(&planned, "dry-run destroy");
    let out = release(&sb, &cfg, &["--yes", "destroy"]);
    succeeded(&out, "destroy");
    assert_eq!(executed_steps(&out), planned_steps(&planned));
    assert!(
        eks_log_groups(&sb).await.is_empty(),
        "the log group went with the cluster stack (EKS would have made one that outlives it)"
    );
    let s = summary(&out);
    assert!(
        s["load balancers"]
            .as_str()
            .is_some_and(|d| d.starts_with("gone after")),
        "{s}"
    );
    assert_eq!(s["iris-network"], "deleted", "{s}");
}

/// CloudWatch Logs' groups under /aws/eks/iris/, read with the service's JSON protocol (the tests
/// have no Logs SDK; the sandbox, as moto, reads the service from the credential scope).
async fn eks_log_groups(sb: &Sandbox) -> Vec<serde_json::Value> {
    let out: serde_json::Value = reqwest::Client::new()
        .post(sb.var("AWS_ENDPOINT_URL"))
        .header("X-Amz-Target", "Logs_20140328.DescribeLogGroups")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=sandbox/20260101/us-east-1/logs/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(r#"{"logGroupNamePrefix": "/aws/eks/iris/"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    out["logGroups"].as_array().cloned().unwrap_or_default()
}

/// S3 bucket names are global: the default state bucket is named after the account and region,
/// and a name another account owns is told apart from a missing one, with what to do.
#[tokio::test]
async fn a_state_bucket_name_another_account_owns_is_named_as_such() {
    let sb = Sandbox::start(&[]);
    reqwest::Client::new()
        .put(sb.control("taken-buckets"))
        .body(serde_json::json!([STATE_BUCKET]).to_string())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let dir = sb.dir.join("cfg");
    let out = release(&sb, &config(&dir, ""), &["up"]);
    exits_with(&out, 5);
    let s = summary(&out);
    assert_eq!(s["step"], "state bucket", "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("an AWS account other than 123456789012 owns that name"),
        "{s}"
    );
    // A name of one's own works.
    let own = config(
        &dir.join("own"),
        "state:\n  bucket: iris-state-of-our-own\n",
    );
    succeeded(
        &release(&sb, &own, &["up"]),
        "up with a state bucket of our own",
    );
    let head = s3(&sb)
        .await
        .head_bucket()
        .bucket("iris-state-of-our-own")
        .send()
        .await;
    assert!(head.is_ok(), "the registry stack made it");
}

/// An install from before the default state bucket changed keeps its bucket: with `state.bucket`
/// left out, `release` takes the one the registry stack made (its ledger and its lock).
#[tokio::test]
async fn without_state_bucket_the_registry_stacks_own_bucket_is_kept() {
    let sb = Sandbox::start(&[]);
    let dir = sb.dir.join("cfg");
    let old = config(&dir.join("old"), "state:\n  bucket: iris-release-state\n");
    succeeded(
        &release(&sb, &old, &["up"]),
        "up with the old default's name",
    );
    let out = release(&sb, &config(&dir, ""), &["up"]);
    succeeded(&out, "up with state.bucket left out");
    let releases = common::releases_in(&s3(&sb).await, "iris-release-state").await;
    assert_eq!(
        releases.len(),
        2,
        "both runs in the bucket the registry stack made: {releases:?}"
    );
    // Every call names the account that must own the bucket: one that another account owns is
    // refused, not read (the sandbox answers as S3 does to a wrong ExpectedBucketOwner).
    let elsewhere = config(
        &dir.join("owner"),
        "state:\n  bucket_owner: \"111111111111\"\n",
    );
    let out = release(&sb, &elsewhere, &["history"]);
    exits_with(&out, 5);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("iris-release-state exists but this identity may not read it: an AWS account other than 111111111111 owns that name"),
        "{error}"
    );
    assert!(
        summary(&out)["what_to_do"]
            .as_str()
            .is_some_and(|h| h.contains("state.bucket_owner")),
        "{}",
        summary(&out)
    );
}

/// An IAM query call on the sandbox (IAM's query protocol); returns the XML answer.
async fn iam(sb: &Sandbox, params: &[(&str, &str)]) -> String {
    let mut form = vec![("Version", "2010-05-08")];
    form.extend_from_slice(params);
    reqwest::Client::new()
        .post(sb.var("AWS_ENDPOINT_URL"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=sandbox/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The roles the cluster stack makes carry the permissions boundary release.yaml names (what
/// ci-role.yaml's stacks role requires to make them), and a boundary that names no policy stops
/// the cluster stack, as IAM's CreateRole refuses it.
#[tokio::test]
async fn the_cluster_stacks_roles_get_the_configured_permissions_boundary() {
    let sb = Sandbox::start(&[]);
    let boundary = "arn:aws:iam::123456789012:policy/iris-release-boundary";
    let cfg = config_with(
        &sb.dir.join("cfg"),
        &format!("  permissions_boundary_arn: {boundary}\n"),
        "",
    );
    let out = release(&sb, &cfg, &["up"]);
    exits_with(&out, 5);
    let error = summary(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("iris-release-boundary does not exist"),
        "{error}"
    );

    let document = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;
    let made = iam(
        &sb,
        &[
            ("Action", "CreatePolicy"),
            ("PolicyName", "iris-release-boundary"),
            ("PolicyDocument", document),
        ],
    )
    .await;
    assert!(made.contains(boundary), "{made}");
    succeeded(&release(&sb, &cfg, &["up"]), "up with the boundary there");
    let roles = iam(&sb, &[("Action", "ListRoles")]).await;
    let names: Vec<&str> = roles
        .split("<RoleName>")
        .skip(1)
        .filter_map(|r| r.split("</RoleName>").next())
        .filter(|n| n.starts_with("iris-cluster-"))
        .collect();
    assert_eq!(
        names.len(),
        3,
        "the cluster, pod execution and controller roles: {roles}"
    );
    for name in names {
        let role = iam(&sb, &[("Action", "GetRole"), ("RoleName", name)]).await;
        assert!(
            role.contains(&format!(
                "<PermissionsBoundaryArn>{boundary}</PermissionsBoundaryArn>"
            )),
            "{name} has no boundary: {role}"
        );
    }
}

/// The release that last deployed blue.
fn blue_release(sb: &Sandbox) -> serde_json::Value {
    let d: serde_json::Value = serde_json::from_str(&common::kubectl(
        sb,
        &[
            "get",
            "deployment",
            "iris-blue",
            "-n",
            "models",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    d["metadata"]["annotations"]["release/release-id"].clone()
}

/// An edge that serves an origin neither colour has (here: blue's Service, and with it its load
/// balancer, deleted by hand) is not a first release: `up` refuses to change any colour, dry run
/// or not, instead of deploying over what the edge points at.
#[tokio::test]
async fn an_edge_serving_no_colours_address_is_refused_not_taken_for_a_first_release() {
    let common::Given { sb, cfg } = common::given_blue_live();
    let blue_before = blue_release(&sb);
    common::kubectl(
        &sb,
        &[
            "delete",
            "service",
            "iris-blue",
            "-n",
            "models",
            "--wait=true",
        ],
    );
    for args in [&["--dry-run", "up"][..], &["up"][..]] {
        let out = release(&sb, &cfg, args);
        exits_with(&out, 8);
        let error = summary(&out)["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("which is neither colour's load balancer"),
            "{args:?}: {error}"
        );
    }
    // A promote is refused the same way, and its ledger entry says it failed and why: a
    // refusal for the edge is not "nothing to do".
    let out = release(&sb, &cfg, &["promote"]);
    exits_with(&out, 8);
    let s3 = s3(&sb).await;
    let promote = common::last_release(&s3).await;
    assert_eq!(
        (&promote["action"], &promote["outcome"]),
        (&"promote".into(), &"failed".into()),
        "{promote}"
    );
    assert!(
        promote["error"]
            .as_str()
            .is_some_and(|e| e.contains("which is neither colour's load balancer")),
        "{promote}"
    );
    assert_eq!(common::deployments(&sb), ["iris-blue"]);
    let blue_after = blue_release(&sb);
    assert!(blue_before.is_string(), "{blue_before}");
    assert_eq!(blue_after, blue_before, "blue was deployed over");
}

/// An app released by an older `release` keeps its ledger as one document, `ledger.json`. The
/// first run under the lock moves it into one object per release: the history keeps every entry
/// with its id, new ids cannot collide with them, and a rollback still finds the retired colour's
/// image in it.
#[tokio::test]
async fn a_ledger_kept_as_one_document_is_moved_to_one_object_per_release() {
    let common::Given { sb, cfg } = common::given_blue_live_and_a_green_candidate();
    succeeded(
        &release(&sb, &cfg, &["promote", "--retire-previous"]),
        "promote, blue retired",
    );
    // The ledger as the older release wrote it: the same entries, ids by day and count, one
    // document; no head and no per-release objects.
    let s3 = s3(&sb).await;
    let mut legacy = common::releases(&s3).await;
    for (n, r) in legacy.iter_mut().enumerate() {
        let obj = r.as_object_mut().unwrap();
        obj.remove("seq");
        obj.remove("live_below");
        obj.insert("id".into(), format!("20260101-{:03}", n + 1).into());
    }
    let listed = s3
        .list_objects_v2()
        .bucket(STATE_BUCKET)
        .prefix("apps/iris/")
        .send()
        .await
        .unwrap();
    for o in listed.contents() {
        s3.delete_object()
            .bucket(STATE_BUCKET)
            .key(o.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    s3.put_object()
        .bucket(STATE_BUCKET)
        .key("apps/iris/ledger.json")
        .body(ByteStream::from(
            serde_json::to_vec(&serde_json::json!({ "releases": legacy })).unwrap(),
        ))
        .send()
        .await
        .unwrap();
    // History reads it as it is, before any run moved it.
    let before = summary(&release(&sb, &cfg, &["history"]));
    assert_eq!(before["releases"].as_array().unwrap().len(), legacy.len());

    let out = release(&sb, &cfg, &["rollback"]);
    succeeded(&out, "rollback to the retired blue, from the moved ledger");
    let rolled = summary(&out);
    assert_eq!(
        (rolled["live"].as_str(), rolled["steps"][1].as_str()),
        (Some("blue"), Some("redeploy iris-blue")),
        "blue redeployed from its digest in the old ledger: {rolled}"
    );
    let moved = common::releases(&s3).await;
    assert_eq!(moved.len(), legacy.len() + 1);
    for (old, new) in legacy.iter().zip(&moved) {
        assert_eq!(old["id"], new["id"], "the old entries keep their ids");
    }
    let newest = moved.last().unwrap();
    assert_eq!(newest["action"], "rollback");
    assert_eq!(
        newest["seq"].as_u64(),
        Some(legacy.len() as u64 + 1),
        "numbered after the old entries: {newest}"
    );
    // What is left in ledger.json: a document an older release refuses (its `releases` is not
    // a list) instead of reading it as an empty ledger and starting over.
    let left = object(&s3, "apps/iris/ledger.json").await.unwrap();
    assert!(left["releases"].is_string(), "{left}");
    assert_eq!(left["moved_to"], "ledger-head.json");
    let history = summary(&release(&sb, &cfg, &["history", "--limit", "2"]));
    let ids: Vec<&str> = history["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            legacy.last().unwrap()["id"].as_str().unwrap(),
            newest["id"].as_str().unwrap()
        ]
    );
}

/// A ledger head restored from an older version (the bucket is versioned), or deleted, must not
/// make a run take a number a kept release already has: its object would be written over, and
/// two releases would share an id and a fencing generation. The run finds the number taken and
/// rebuilds the head from the releases kept: the counter past them all and the rollback stack's
/// top, so that a rollback to a retired colour (which needs the ledger's record of it) still
/// works; a missing head is rebuilt the same way.
#[tokio::test]
async fn a_rewound_or_deleted_ledger_head_never_gives_a_release_number_twice() {
    let common::Given { sb, cfg } = common::given_blue_live_and_a_green_candidate();
    let s3 = s3(&sb).await;
    let put_head = |head: serde_json::Value| {
        s3.put_object()
            .bucket(STATE_BUCKET)
            .key("apps/iris/ledger-head.json")
            .body(ByteStream::from(serde_json::to_vec(&head).unwrap()))
            .send()
    };
    let rolled_back_to_blue = |out: &std::process::Output, what: &str| {
        succeeded(out, what);
        let s = summary(out);
        assert_eq!(
            (s["live"].as_str(), s["steps"][1].as_str()),
            (Some("blue"), Some("redeploy iris-blue")),
            "{what}: blue redeployed from the ledger's record: {s}"
        );
    };

    // Rewound: the head as it was before the promote.
    let old_head = object(&s3, "apps/iris/ledger-head.json").await.unwrap();
    succeeded(
        &release(&sb, &cfg, &["promote", "--retire-previous"]),
        "promote, blue retired",
    );
    let promoted = common::last_release(&s3).await;
    let promote_seq = promoted["seq"].as_u64().unwrap();
    put_head(old_head).await.unwrap();
    rolled_back_to_blue(
        &release(&sb, &cfg, &["rollback"]),
        "rollback after the head was rewound",
    );
    let releases = common::releases(&s3).await;
    let ids: std::collections::BTreeSet<&str> =
        releases.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), releases.len(), "an id given twice");
    let kept = releases
        .iter()
        .find(|r| r["seq"].as_u64() == Some(promote_seq))
        .unwrap();
    assert_eq!(kept, &promoted, "the promote's entry was written over");
    let rollback = releases.last().unwrap();
    assert_eq!(rollback["seq"].as_u64(), Some(promote_seq + 1));
    assert_eq!(rollback["action"], "rollback");

    // Deleted: green a candidate again, promoted (blue retired), then the head goes.
    succeeded(&release(&sb, &cfg, &["up", "--force"]), "a candidate");
    succeeded(
        &release(&sb, &cfg, &["promote", "--retire-previous"]),
        "promote, blue retired again",
    );
    let before = common::last_release(&s3).await["seq"].as_u64().unwrap();
    s3.delete_object()
        .bucket(STATE_BUCKET)
        .key("apps/iris/ledger-head.json")
        .send()
        .await
        .unwrap();
    rolled_back_to_blue(
        &release(&sb, &cfg, &["rollback"]),
        "rollback after the head was deleted",
    );
    let newest = common::last_release(&s3).await;
    assert_eq!(newest["seq"].as_u64(), Some(before + 1));
}
