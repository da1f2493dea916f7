//! The Deployment controller: pods from the template (owned by the Deployment, labelled with the
//! template's hash), rolling updates within maxSurge/maxUnavailable, Recreate, and a status that
//! follows what the pods really do, including `ProgressDeadlineExceeded`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

use crate::merge::labels_match;
use crate::resources;
use crate::store::{Part, Store, meta, now_rfc3339};

pub fn template_hash(template: &Value) -> String {
    let digest = sha2::Sha256::digest(template.to_string());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// `25%` of `total`, rounded up (surge) or down (unavailable), or a plain number.
fn int_or_percent(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
            Some(p) => {
                let x = p * total as f64 / 100.0;
                if round_up {
                    x.ceil() as i64
                } else {
                    x.floor() as i64
                }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

pub fn pod_ready(pod: &Value) -> bool {
    condition(pod, "Ready")
}

/// Whether the pod's condition `kind` is True.
pub fn condition(pod: &Value, kind: &str) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// Whether every readiness gate in the pod's spec has its condition True in `conditions`: a pod
/// is Ready only when its containers are and each gate is (Kubernetes, Pod readiness gates;
/// the AWS Load Balancer Controller's gate turns True when the pod's target is healthy).
pub fn gates_pass(pod: &Value, conditions: &Value) -> bool {
    pod["spec"]["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|g| {
            conditions.as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
        })
}

fn terminating(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
}

/// replicas, updated, ready among the updated, available: a change in any is progress.
type Counts = (i64, i64, i64, i64);

pub struct Controller {
    store: Arc<Store>,
    /// Per Deployment uid: the last time its rollout made progress, and the counts then.
    progress: HashMap<String, (Instant, Counts)>,
}

impl Controller {
    pub fn new(store: Arc<Store>) -> Self {
        Controller {
            store,
            progress: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut changes = self.store.subscribe_changes();
        loop {
            self.sync();
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    pub fn sync(&mut self) {
        let deployments = resources::by_kind("Deployment").expect("served");
        let pods_res = resources::by_kind("Pod").expect("served");
        let (all, _) = self.store.list(deployments, None);
        let (pods, _) = self.store.list(pods_res, None);
        let live: Vec<String> = all
            .iter()
            .filter_map(|d| meta(d, "uid").map(str::to_string))
            .collect();
        self.progress.retain(|uid, _| live.contains(uid));
        for d in all.iter().filter(|d| !terminating(d)) {
            let uid = meta(d, "uid").unwrap_or_default();
            let owned: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    p["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|o| o["uid"] == json!(uid)))
                })
                .collect();
            self.reconcile(d, &owned);
        }
    }

    fn reconcile(&mut self, d: &Value, owned: &[&Value]) {
        let pods_res = resources::by_kind("Pod").expect("served");
        let deployments = resources::by_kind("Deployment").expect("served");
        let ns = meta(d, "namespace").unwrap_or("default");
        let name = meta(d, "name").unwrap_or_default();
        let uid = meta(d, "uid").unwrap_or_default().to_string();
        let spec = &d["spec"];
        let want = spec["replicas"].as_i64().unwrap_or(1).max(0);
        let template = &spec["template"];
        let hash = template_hash(template);
        let selector = &spec["selector"]["matchLabels"];
        if !labels_match(
            selector,
            &json!({"metadata": {"labels": template["metadata"]["labels"]}}),
        ) {
            self.store.event(
                d,
                "Deployment",
                "Warning",
                "SelectorMismatch",
                "spec.selector does not match the template's labels",
            );
            return;
        }
        let active: Vec<&Value> = owned.iter().copied().filter(|p| !terminating(p)).collect();
        let (new, old): (Vec<&Value>, Vec<&Value>) = active.iter().copied().partition(|p| {
            p["metadata"]["labels"]["pod-template-hash"].as_str() == Some(hash.as_str())
        });
        let ready_new = new.iter().filter(|p| pod_ready(p)).count() as i64;
        let ready_all = active.iter().filter(|p| pod_ready(p)).count() as i64;
        let recreate = spec["strategy"]["type"] == "Recreate";
        let surge = if recreate {
            0
        } else {
            int_or_percent(&spec["strategy"]["rollingUpdate"]["maxSurge"], want, true)
        };
        let mut unavailable = if recreate {
            want
        } else {
            int_or_percent(
                &spec["strategy"]["rollingUpdate"]["maxUnavailable"],
                want,
                false,
            )
        };
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }

        // Scale down: extra new pods, then old pods as far as availability allows.
        let mut deletions: Vec<&Value> = Vec::new();
        if new.len() as i64 > want {
            let mut extra: Vec<&Value> = new.clone();
            extra.sort_by_key(|p| pod_ready(p));
            deletions.extend(extra.into_iter().take(new.len() - want as usize));
        }
        if recreate {
            deletions.extend(old.iter().copied());
        } else {
            let mut old_sorted = old.clone();
            old_sorted.sort_by_key(|p| pod_ready(p));
            let mut budget = ready_all - (want - unavailable);
            for p in old_sorted {
                if !pod_ready(p) {
                    deletions.push(p);
                } else if budget > 0 {
                    budget -= 1;
                    deletions.push(p);
                }
            }
        }
        for p in &deletions {
            let pname = meta(p, "name").unwrap_or_default();
            let _ = self.store.delete(pods_res, ns, pname, "Background", None);
        }

        // Scale up the new template within the surge.
        let total_after = active.len() as i64 - deletions.len() as i64;
        let new_after = new.len() as i64
            - deletions
                .iter()
                .filter(|p| new.iter().any(|n| std::ptr::eq(*n, **p)))
                .count() as i64;
        let old_terminating = owned.iter().any(|p| {
            terminating(p)
                && p["metadata"]["labels"]["pod-template-hash"].as_str() != Some(hash.as_str())
        });
        let can_create = if recreate {
            if old.is_empty() && !old_terminating {
                want - new_after
            } else {
                0
            }
        } else {
            (want - new_after).min(want + surge - total_after)
        };
        for _ in 0..can_create.max(0) {
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = json!(hash);
            let mut pod = json!({
                "metadata": {
                    "generateName": format!("{name}-{hash}-"), "namespace": ns, "labels": labels,
                    "annotations": template["metadata"]["annotations"].clone(),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": template["spec"].clone(),
            });
            if let Err(why) = crate::system::admit_pod(&self.store, &mut pod) {
                self.store.event(
                    d,
                    "Deployment",
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {why}"),
                );
                break;
            }
            match self.store.create(pods_res, ns, pod) {
                Ok(p) => self.store.event(
                    d,
                    "Deployment",
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta(&p, "name").unwrap_or_default()),
                ),
                Err(e) => self.store.event(
                    d,
                    "Deployment",
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {}", e.message),
                ),
            }
        }

        // Status, from the pods as they are now.
        let replicas = active.len() as i64;
        let updated = new.len() as i64;
        let available = ready_all;
        let counts = (replicas, updated, ready_new, available);
        let complete =
            updated == want && ready_new == want && replicas == want && owned.len() as i64 == want;
        let now = Instant::now();
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let observed = d["status"]["observedGeneration"].as_i64();
        let entry = self.progress.entry(uid).or_insert((now, counts));
        if entry.1 != counts || observed != Some(generation) {
            *entry = (now, counts);
        }
        let deadline = Duration::from_secs(spec["progressDeadlineSeconds"].as_u64().unwrap_or(600));
        let rs_name = format!("{name}-{hash}");
        let old_conditions = d["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let previous = |t: &str| old_conditions.iter().find(|c| c["type"] == t).cloned();
        let condition = |t: &str, status: &str, reason: &str, message: String| {
            let stamp = now_rfc3339();
            let prev = previous(t);
            let unchanged = prev
                .as_ref()
                .is_some_and(|p| p["status"] == status && p["reason"] == reason);
            let transition = if unchanged {
                prev.as_ref()
                    .map(|p| p["lastTransitionTime"].clone())
                    .unwrap_or(json!(stamp))
            } else {
                json!(stamp)
            };
            let update = if unchanged {
                prev.as_ref()
                    .map(|p| p["lastUpdateTime"].clone())
                    .unwrap_or(json!(stamp))
            } else {
                json!(stamp)
            };
            json!({"type": t, "status": status, "reason": reason, "message": message, "lastTransitionTime": transition, "lastUpdateTime": update})
        };
        let available_cond = if available >= want - unavailable {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        let was_exceeded =
            previous("Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded");
        let progressing = if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else if (was_exceeded && observed == Some(generation))
            || now.duration_since(entry.0) > deadline
        {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        };
        let status = json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": updated,
            "readyReplicas": ready_all, "availableReplicas": available,
            "unavailableReplicas": (want - available).max(0),
            "conditions": [available_cond, progressing],
        });
        let status = strip_zero_counts(status);
        if d.get("status") != Some(&status) {
            let _ = self
                .store
                .modify(deployments, ns, name, Part::Status, |cur| {
                    let mut next = cur.clone();
                    next["status"] = status.clone();
                    Ok(next)
                });
        }
    }
}

/// The API server omits zero counts (`omitempty`); clients treat missing as zero.
fn strip_zero_counts(mut status: Value) -> Value {
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| k == "conditions" || k == "observedGeneration" || v.as_i64() != Some(0));
    }
    status
}
