//! The Deployment controller, stepped by hand against an in-process store, with pod readiness set
//! by the test (no kubelet): rolling updates, Recreate, status and its conditions.

use std::sync::Arc;
use std::time::Duration;

use sandbox::deployments::Controller;
use sandbox::resources::by_kind;
use sandbox::store::{Part, Store, meta};
use serde_json::{Value, json};

fn deployment(replicas: i64, image: &str, strategy: Value, deadline: i64) -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "strategy": strategy, "progressDeadlineSeconds": deadline,
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "main", "image": image}]}}}
    })
}

fn pods(store: &Store) -> Vec<Value> {
    store.list(by_kind("Pod").unwrap(), Some("default")).0
}

fn live(store: &Store) -> Vec<Value> {
    pods(store)
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

fn image_of(p: &Value) -> &str {
    p["spec"]["containers"][0]["image"].as_str().unwrap()
}

fn set_ready(store: &Store, pod: &Value, ready: bool) {
    let status = if ready { "True" } else { "False" };
    store
        .modify(
            by_kind("Pod").unwrap(),
            "default",
            meta(pod, "name").unwrap(),
            Part::Status,
            |cur| {
                let mut next = cur.clone();
                next["status"]["conditions"] = json!([{"type": "Ready", "status": status}]);
                Ok(next)
            },
        )
        .unwrap();
}

/// What the kubelet does with deleted pods once their processes are gone, and scheduling.
fn kubelet_step(store: &Store) {
    for p in pods(store) {
        let name = meta(&p, "name").unwrap().to_string();
        if p["metadata"].get("deletionTimestamp").is_some() {
            store.remove(by_kind("Pod").unwrap(), "default", &name);
        } else if p["spec"].get("nodeName").is_none() {
            store
                .modify(
                    by_kind("Pod").unwrap(),
                    "default",
                    &name,
                    Part::Main,
                    |cur| {
                        let mut next = cur.clone();
                        next["spec"]["nodeName"] = json!("n");
                        Ok(next)
                    },
                )
                .unwrap();
        }
    }
}

/// A new template: the Deployment's image changed, as an update would change it.
fn set_image(store: &Store, image: &str) {
    store
        .modify(
            by_kind("Deployment").unwrap(),
            "default",
            "web",
            Part::Main,
            |cur| {
                let mut next = cur.clone();
                next["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
                Ok(next)
            },
        )
        .unwrap();
}

fn status(store: &Store) -> Value {
    store
        .get(by_kind("Deployment").unwrap(), "default", "web")
        .unwrap()["status"]
        .clone()
}

fn condition(store: &Store, t: &str) -> (String, String) {
    let s = status(store);
    let c = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap()
        .clone();
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_rolling_update_never_drops_below_the_available_minimum() {
    let store = Arc::new(Store::new());
    let mut c = Controller::new(store.clone());
    let rolling =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    store
        .create(
            by_kind("Deployment").unwrap(),
            "default",
            deployment(2, "img:1", rolling.clone(), 600),
        )
        .unwrap();
    c.sync();
    kubelet_step(&store);
    assert_eq!(live(&store).len(), 2);
    assert_eq!(
        condition(&store, "Available"),
        ("False".into(), "MinimumReplicasUnavailable".into())
    );
    for p in live(&store) {
        set_ready(&store, &p, true);
    }
    c.sync();
    assert_eq!(status(&store)["readyReplicas"], 2);
    assert_eq!(
        condition(&store, "Available"),
        ("True".into(), "MinimumReplicasAvailable".into())
    );
    assert_eq!(
        condition(&store, "Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );

    // New image: one surge pod, no old pod goes until a new one is ready.
    set_image(&store, "img:2");
    for _ in 0..3 {
        c.sync();
        kubelet_step(&store);
        let now = live(&store);
        assert_eq!(now.len(), 3, "maxSurge 1 over 2 replicas");
        assert_eq!(
            now.iter().filter(|p| image_of(p) == "img:1").count(),
            2,
            "maxUnavailable 0 keeps both old pods"
        );
    }
    assert_eq!(
        condition(&store, "Progressing"),
        ("True".into(), "ReplicaSetUpdated".into())
    );
    assert_eq!(status(&store)["updatedReplicas"], 1);
    // As new pods become ready, old ones are replaced one by one.
    for _ in 0..6 {
        for p in live(&store).iter().filter(|p| image_of(p) == "img:2") {
            set_ready(&store, p, true);
        }
        c.sync();
        kubelet_step(&store);
        let ready = live(&store)
            .iter()
            .filter(|p| sandbox::deployments::pod_ready(p))
            .count();
        assert!(ready >= 2, "never fewer than 2 ready pods");
    }
    let now = live(&store);
    assert_eq!(
        (now.len(), now.iter().all(|p| image_of(p) == "img:2")),
        (2, true)
    );
    c.sync();
    assert_eq!(
        condition(&store, "Progressing"),
        ("True".into(), "NewReplicaSetAvailable".into())
    );
    assert_eq!(status(&store)["observedGeneration"], 2);
}

#[test]
fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let store = Arc::new(Store::new());
    let mut c = Controller::new(store.clone());
    store
        .create(
            by_kind("Deployment").unwrap(),
            "default",
            deployment(2, "img:1", json!({"type": "Recreate"}), 600),
        )
        .unwrap();
    c.sync();
    kubelet_step(&store);
    set_image(&store, "img:2");
    c.sync();
    assert!(
        pods(&store).iter().all(|p| image_of(p) == "img:1"),
        "no new pod while old ones terminate"
    );
    assert!(
        pods(&store)
            .iter()
            .all(|p| p["metadata"].get("deletionTimestamp").is_some())
    );
    kubelet_step(&store);
    c.sync();
    assert_eq!(
        live(&store)
            .iter()
            .filter(|p| image_of(p) == "img:2")
            .count(),
        2
    );
}

#[test]
fn a_rollout_that_stalls_reports_progress_deadline_exceeded() {
    let store = Arc::new(Store::new());
    let mut c = Controller::new(store.clone());
    store
        .create(
            by_kind("Deployment").unwrap(),
            "default",
            deployment(1, "img:1", json!({"type": "RollingUpdate"}), 1),
        )
        .unwrap();
    c.sync();
    c.sync();
    assert_eq!(condition(&store, "Progressing").1, "ReplicaSetUpdated");
    // The pod never becomes ready: no progress for longer than progressDeadlineSeconds.
    std::thread::sleep(Duration::from_millis(1200));
    c.sync();
    assert_eq!(
        condition(&store, "Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into())
    );
}
