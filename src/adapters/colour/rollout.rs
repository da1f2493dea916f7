//! Waiting on a colour: its rollout (ready, or failed with the pod, its reason and its recent
//! events named), its load-balancer address, and its Services' deletion.

use super::*;

/// Wait until both colours' Services are gone (and the namespace, when `release` made it). The
/// AWS Load Balancer Controller holds each Service with a finalizer until it has deleted the NLB,
/// its target groups and security groups (its docs, "Service annotations": deletion; the
/// `service.k8s.aws/resources` finalizer); a cluster deleted before that leaves the NLB and its
/// network interfaces behind, and the network stack's deletion then fails with
/// DependencyViolation. Returns what it waited for.
pub async fn wait_load_balancers_gone(
    client: &kube::Client,
    config: &Config,
    timeout: Duration,
    mut progress: impl FnMut(String),
) -> Result<String> {
    let ns = &config.deploy.namespace;
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let namespaces = Api::<Namespace>::all(client.clone());
    let start = Instant::now();
    wait::until(
        Deadline::new(timeout, Duration::from_millis(500)),
        async || {
            let mut left: Vec<String> = Vec::new();
            for c in Colour::ALL {
                let n = name(config, c);
                if services
                    .get_opt(&n)
                    .await
                    .map_err(kube_err("load balancers"))?
                    .is_some()
                {
                    left.push(format!("Service {n}"));
                }
            }
            let namespace = namespaces
                .get_opt(ns)
                .await
                .map_err(kube_err("load balancers"))?;
            if namespace
                .as_ref()
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
            {
                left.push(format!("namespace {ns} (terminating)"));
            }
            if left.is_empty() {
                return Ok(Check::Done(format!(
                    "gone after {:.0} s",
                    start.elapsed().as_secs_f64()
                )));
            }
            progress(format!("waiting for {}", left.join(", ")));
            Ok(Check::Pending(left))
        },
        |left, _| {
            failure(
                Exit::Aws,
                "load balancers",
                format!(
                    "still there after {timeout:?}: {} (the AWS Load Balancer Controller removes each NLB before it lets its Service go)",
                    left.join(", ")
                ),
                "check the controller's logs (kubectl -n kube-system logs deploy/aws-load-balancer-controller) and the load balancers in the EC2 console, then re-run release destroy; it continues",
            )
        },
    )
    .await
}

const BAD_WAITING: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
    "CreateContainerError",
];

/// How long a pod may keep failing to pull its image before the rollout is given up: the kubelet
/// retries pulls with a backoff, and a throttled or briefly failing registry call must not fail a
/// release (a missing image or a pull permission problem persists well past this).
pub(super) const PULL_GRACE: Duration = Duration::from_secs(20);

/// Whether a pod in this waiting state means the rollout cannot succeed: a crash loop (after a
/// restart), a bad image name or container config at once, a failing pull once it has persisted
/// for `PULL_GRACE` (`failing_for`: since this run first saw the pod failing to pull).
pub fn hopeless(reason: &str, restarts: i32, failing_for: Duration) -> bool {
    match reason {
        "CrashLoopBackOff" => restarts >= 1,
        "ErrImagePull" | "ImagePullBackOff" => failing_for >= PULL_GRACE,
        other => BAD_WAITING.contains(&other),
    }
}

/// Wait until every replica of the colour's Deployment is updated, ready and available. Fails
/// fast on a crash loop, an image that cannot be pulled (for `PULL_GRACE`), or an exceeded
/// progress deadline, naming the pod, the reason and its recent events.
pub async fn wait_rollout(
    client: &kube::Client,
    config: &Config,
    colour: Colour,
    timeout: Duration,
    mut progress: impl FnMut(String),
) -> Result<()> {
    let step = "rollout";
    let ns = &config.deploy.namespace;
    let n = name(config, colour);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/name={},release/colour={colour}",
        config.app
    );
    let mut last = String::new();
    let mut pulling_since: BTreeMap<String, Instant> = BTreeMap::new();
    wait::until(
        Deadline::new(timeout, Duration::from_millis(500)),
        async || {
            let d = deployments.get(&n).await.map_err(kube_err(step))?;
            let (done, line) = rolled_out(&d);
            if line != last {
                progress(line.clone());
                last = line;
            }
            if done {
                return Ok(Check::Done(()));
            }
            no_stuck_pod(client, ns, &selector, &mut pulling_since).await?;
            let st = d.status.clone().unwrap_or_default();
            if let Some(c) = st.conditions.unwrap_or_default().into_iter().find(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }) {
                return Err(failure(
                    Exit::Deploy,
                    step,
                    format!(
                        "{n}: ProgressDeadlineExceeded: {}",
                        c.message.unwrap_or_default()
                    ),
                    "the pods never became ready; see their events; the candidate was torn down",
                ));
            }
            Ok(Check::Pending(last.clone()))
        },
        |last, _| {
            failure(
                Exit::Deploy,
                step,
                format!("{n}: not ready after {timeout:?} ({last})"),
                "see the pods' events; raise deploy.rollout_timeout_seconds if the image is slow to start",
            )
        },
    )
    .await
}

/// Whether every replica of `d` is updated, ready and available, and the progress line to show.
fn rolled_out(d: &Deployment) -> (bool, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    let st = d.status.clone().unwrap_or_default();
    let (updated, ready, available) = (
        st.updated_replicas.unwrap_or(0),
        st.ready_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
    );
    let done = st.observed_generation.unwrap_or(0) >= generation
        && updated == want
        && ready == want
        && available == want
        && st.replicas.unwrap_or(0) == want;
    (done, format!("pods ready {ready}/{want}"))
}

/// Fails when one of the colour's pods cannot come up by waiting (a crash loop, an image that
/// cannot be pulled for `PULL_GRACE`), naming the pod, the reason, its events and last log lines.
/// `pulling_since` remembers, across looks, since when each container has been failing to pull.
async fn no_stuck_pod(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    pulling_since: &mut BTreeMap<String, Instant>,
) -> Result<()> {
    let step = "rollout";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for p in pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(kube_err(step))?
        .items
    {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        for cs in p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()
        {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.clone());
            let key = format!("{pod_name}/{}", cs.name);
            let Some(w) = waiting else {
                pulling_since.remove(&key);
                continue;
            };
            let reason = w.reason.clone().unwrap_or_default();
            let failing_for = if reason.contains("Pull") {
                pulling_since
                    .entry(key)
                    .or_insert_with(Instant::now)
                    .elapsed()
            } else {
                pulling_since.remove(&key);
                Duration::ZERO
            };
            if hopeless(&reason, cs.restart_count, failing_for) {
                let mut events = recent_events(client, ns, &pod_name).await;
                if reason == "CrashLoopBackOff" {
                    let lp = kube::api::LogParams {
                        tail_lines: Some(8),
                        ..Default::default()
                    };
                    if let Ok(log) = pods.logs(&pod_name, &lp).await
                        && !log.trim().is_empty()
                    {
                        events.push_str(&format!(
                            "\n    last log lines:\n      {}",
                            log.trim_end().replace('\n', "\n      ")
                        ));
                    }
                }
                return Err(failure(
                    Exit::Deploy,
                    step,
                    format!(
                        "pod {pod_name}: {reason}: {}{}",
                        w.message.unwrap_or_default(),
                        events
                    ),
                    if reason.contains("Pull") || reason == "InvalidImageName" {
                        "check that the image exists in ECR and that the pods may pull it; the candidate was torn down"
                    } else {
                        "read the pod's log (kubectl logs) and events above; the candidate was torn down"
                    },
                ));
            }
        }
    }
    Ok(())
}

async fn recent_events(client: &kube::Client, ns: &str, pod: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let Ok(list) = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
    else {
        return String::new();
    };
    let mut lines: Vec<String> = list
        .items
        .iter()
        .rev()
        .take(5)
        .map(|e| {
            format!(
                "{} {}: {}",
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .collect();
    lines.reverse();
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n    recent events:\n      {}", lines.join("\n      "))
    }
}

/// Wait until the colour's load balancer serves: its address in the Service, the NLB in ELBv2,
/// answering `/healthz` (an internet-facing one) or `active` and internal (with
/// `edge.origin_access: vpc` it answers nobody outside the VPC, `release` included), and as many
/// healthy targets as replicas. Pods ready are not targets healthy: an NLB registers a new
/// target and health-checks it for 90 to 180 s before sending it anything, so a flip to a
/// colour whose targets are still `initial` would send viewers nowhere. The public URL's
/// verification after a flip still proves CloudFront reaches it, and undoes the flip when not.
pub async fn wait_address(
    client: &kube::Client,
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    config: &Config,
    colour: Colour,
    deadline: Deadline,
) -> Result<String> {
    use crate::adapters::balancer::{self, Look};
    let step = "load balancer";
    let services: Api<Service> = Api::namespaced(client.clone(), &config.deploy.namespace);
    let n = name(config, colour);
    let http = crate::adapters::smoke::http_client(Duration::from_secs(5));
    let vpc = config.edge.origin_access == crate::config::OriginAccess::Vpc;
    let mut known: Option<String> = None;
    wait::until(
        deadline,
        async || {
            let s = services.get(&n).await.map_err(kube_err(step))?;
            let Some(addr) = address_of(&s) else {
                return Ok(Check::Pending("the Service has no load-balancer address yet".into()));
            };
            let lb = match balancer::by_dns_name(elb, &addr, known.as_deref()).await? {
                Look::Got(Some(lb)) => lb,
                Look::Got(None) => {
                    return Ok(Check::Pending(format!(
                        "ELBv2 shows no load balancer at {addr} yet"
                    )));
                }
                Look::Throttled(why) => return Ok(Check::Pending(why)),
            };
            known = Some(lb.arn.clone());
            if vpc {
                // Internal and active: an internet-facing one is the NLB from before a switch
                // to vpc that the controller has not replaced yet (a scheme cannot change).
                if lb.state != "active" || lb.scheme != "internal" {
                    return Ok(Check::Pending(format!(
                        "the load balancer at {addr} is {} and {}, not active and internal",
                        lb.state, lb.scheme
                    )));
                }
            } else {
                let url = format!("http://{addr}:{}/healthz", config.deploy.service_port);
                if !http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Ok(Check::Pending(format!("{url} does not answer 200 yet")));
                }
            }
            // Every replica a healthy target: until then the NLB sends the new pods nothing
            // (and, all of them new, the colour nothing at all).
            let targets = match balancer::targets(elb, &lb.arn).await? {
                Look::Got(targets) => targets,
                Look::Throttled(why) => {
                    // Perhaps replaced since: find it by its DNS name again.
                    known = None;
                    return Ok(Check::Pending(why));
                }
            };
            Ok(
                match balancer::serving(&targets, config.deploy.replicas as usize) {
                    Ok(()) => Check::Done(addr),
                    Err(why) => Check::Pending(format!("the load balancer at {addr}: {why}")),
                },
            )
        },
        |last: String, _| {
            failure(
                Exit::Deploy,
                step,
                format!(
                    "{n}'s load balancer does not serve after {:?}: {last}",
                    deadline.timeout
                ),
                if vpc {
                    "check the AWS Load Balancer Controller's events on the Service, the private subnets' kubernetes.io/role/internal-elb tags, the targets' health (aws elbv2 describe-target-health) and the pods' security group, or raise deploy.address_timeout_seconds; the candidate was torn down"
                } else {
                    "check the AWS Load Balancer Controller, the public subnets' tags and the targets' health (aws elbv2 describe-target-health), or raise deploy.address_timeout_seconds; the candidate was torn down"
                },
            )
        },
    )
    .await
}
