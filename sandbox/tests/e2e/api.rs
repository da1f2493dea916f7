//! The Kubernetes API stand-in driven by kube-rs in-process: the router is the client's service.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use sandbox::api::{ApiState, router};
use sandbox::store::Store;
use serde_json::json;
use tower::ServiceExt;

pub fn in_process(store: Arc<Store>) -> kube::Client {
    let app = router(Arc::new(ApiState {
        store,
        logs_dir: std::env::temp_dir(),
        token_lifetime: sandbox::TOKEN_LIFETIME,
    }));
    let token = format!(
        "Bearer {}",
        sandbox::sandbox_token("test", SystemTime::now())
    );
    let service = tower::ServiceBuilder::new()
        .map_request(move |req: http::Request<kube::client::Body>| {
            let mut req = req.map(axum::body::Body::new);
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, token.parse().unwrap());
            req
        })
        .service(app);
    kube::Client::new(service, "default")
}

fn status_of(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

fn deployment(name: &str, image: &str, env: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": image, "env": env}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_keeps_kubernetes_semantics() {
    let client = in_process(Arc::new(Store::new()));
    namespace(&client, "t1").await;
    let ns: Api<Namespace> = Api::all(client.clone());
    let again = ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "t1"}})).unwrap(),
        )
        .await;
    let e = status_of(again.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "t1");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "a", "labels": {"colour": "blue"}}, "data": {"k": "1"}}),
    )
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "b", "labels": {"colour": "green"}}}))
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        cms.get_opt("missing").await.unwrap().is_none(),
        "404 NotFound reads as None"
    );
    let blue = cms
        .list(&ListParams::default().labels("colour=blue"))
        .await
        .unwrap();
    assert_eq!(blue.items.len(), 1);
    assert!(
        blue.metadata
            .resource_version
            .is_some_and(|rv| !rv.is_empty())
    );
    let not_blue = cms
        .list(&ListParams::default().labels("colour notin (blue)"))
        .await
        .unwrap();
    assert_eq!(not_blue.items[0].metadata.name.as_deref(), Some("b"));
    let by_field = cms
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);

    // A stale resourceVersion on replace is a conflict.
    let mut stale = created.clone();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    let e = status_of(
        cms.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    // A no-op patch changes nothing, not even the resourceVersion.
    let before = cms.get("a").await.unwrap().metadata.resource_version;
    let after = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(after.metadata.resource_version, before);

    // generation follows spec; the status subresource changes only status.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "t1");
    let d = deps
        .create(
            &PostParams::default(),
            &deployment("web", "img:1", json!([])),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        d.metadata.generation,
        Some(1),
        "a label change is not a spec change"
    );
    let d = deps.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"observedGeneration": 1, "replicas": 7}, "spec": {"replicas": 9}}))).await.unwrap();
    assert_eq!(d.status.unwrap().replicas, Some(7));
    assert_eq!(
        d.spec.unwrap().replicas,
        Some(2),
        "a status write leaves spec alone"
    );
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    assert_eq!(
        d.status.unwrap().replicas,
        Some(7),
        "a main write leaves status alone"
    );
    let strategic = deps
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:2"}]}}}})))
        .await
        .unwrap();
    let containers = strategic.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(
        (containers.len(), containers[0].image.as_deref()),
        (1, Some("img:2"))
    );
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 1}]))
            .unwrap();
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch),
        )
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));

    // Creating in a namespace that does not exist names it.
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let e = status_of(
        nowhere
            .create(&PostParams::default(), &cm)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert!(e.message.contains("nope"), "{}", e.message);
}

#[tokio::test]
async fn server_side_apply_is_idempotent_and_prunes_only_its_own_fields() {
    let client = in_process(Arc::new(Store::new()));
    namespace(&client, "app").await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let pp = PatchParams::apply("release").force();
    let first = deployment(
        "web",
        "img:1",
        json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]),
    );
    let created = deps.patch("web", &pp, &Patch::Apply(&first)).await.unwrap();
    assert!(
        created
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.manager.as_deref() == Some("release"))
    );
    let again = deps.patch("web", &pp, &Patch::Apply(&first)).await.unwrap();
    assert_eq!(
        again.metadata.resource_version, created.metadata.resource_version,
        "re-applying the same manifest is a no-op"
    );

    // Someone else adds a label; our next apply drops Y but keeps their label.
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "ml"}}})),
    )
    .await
    .unwrap();
    let second = deployment("web", "img:2", json!([{"name": "X", "value": "1"}]));
    let applied = deps
        .patch("web", &pp, &Patch::Apply(&second))
        .await
        .unwrap();
    let labels = applied.metadata.labels.unwrap();
    assert_eq!(labels.get("team").map(String::as_str), Some("ml"));
    let container = &applied.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("img:2"));
    let names: Vec<String> = container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["X"]);

    // Apply needs a field manager.
    let e = status_of(
        deps.patch("web", &PatchParams::default(), &Patch::Apply(&second))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_expires_old_ones() {
    let store = Arc::new(Store::new());
    let client = in_process(store.clone());
    namespace(&client, "w").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "w");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c", "labels": {"l": "1"}}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "b"}})),
    )
    .await
    .unwrap();
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    // Events between the list and the watch are replayed, in order.
    let stream = cms
        .watch(&WatchParams::default().labels("l=1").timeout(2), &rv)
        .await
        .unwrap();
    let kinds: Vec<String> = stream
        .take(3)
        .map(|e| match e.unwrap() {
            WatchEvent::Added(_) => "ADDED".to_string(),
            WatchEvent::Modified(_) => "MODIFIED".to_string(),
            WatchEvent::Deleted(_) => "DELETED".to_string(),
            other => format!("{other:?}"),
        })
        .collect()
        .await;
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);

    // Live events arrive too, and the watch ends at its timeout.
    let now = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut live = cms
        .watch(&WatchParams::default().timeout(1), &now)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(matches!(
        live.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    assert!(
        live.try_next().await.unwrap().is_none(),
        "the stream closes at timeoutSeconds"
    );

    // A version older than the history kept is 410 Expired.
    for i in 0..4200 {
        cms.patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"i": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let mut old = cms
        .watch(&WatchParams::default(), "2")
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn deleting_a_namespace_or_an_owner_deletes_what_depends_on_it() {
    let client = in_process(Arc::new(Store::new()));
    namespace(&client, "gone").await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "gone");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gone");
    let d = deps
        .create(
            &PostParams::default(),
            &deployment("web", "img:1", json!([])),
        )
        .await
        .unwrap();
    let owned: Pod = serde_json::from_value(json!({"metadata": {"name": "web-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d.metadata.uid, "controller": true}]},
        "spec": {"containers": [{"name": "main", "image": "img:1"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &owned).await.unwrap();
    deps.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get_opt("web-1").await.unwrap().is_none(),
        "the owner's pods go with it"
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gone");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap(),
    )
    .await
    .unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.delete("gone", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("c").await.unwrap().is_none());
    assert!(
        ns.get_opt("gone").await.unwrap().is_none(),
        "an empty terminating namespace is removed"
    );
}

#[tokio::test]
async fn discovery_serves_what_kube_rs_needs() {
    let client = in_process(Arc::new(Store::new()));
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let gvk = kube::core::GroupVersionKind::gvk("apps", "v1", "Deployment");
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .expect("apps/v1 Deployment is discoverable");
    assert_eq!(resource.plural, "deployments");
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    assert!(
        discovery
            .resolve_gvk(&kube::core::GroupVersionKind::gvk(
                "policy",
                "v1",
                "PodDisruptionBudget"
            ))
            .is_some()
    );
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.minor, "33");
}

#[tokio::test]
async fn only_eks_tokens_are_accepted() {
    let app = router(Arc::new(ApiState {
        store: Arc::new(Store::new()),
        logs_dir: std::env::temp_dir(),
        token_lifetime: sandbox::TOKEN_LIFETIME,
    }));
    let call = |auth: Option<String>, path: &str| {
        let mut req = http::Request::get(path);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        app.clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
    };
    let good = format!("Bearer {}", sandbox::sandbox_token("c", SystemTime::now()));
    let expired = format!(
        "Bearer {}",
        sandbox::sandbox_token(
            "c",
            SystemTime::now() - std::time::Duration::from_secs(16 * 60)
        )
    );
    assert_eq!(
        call(Some(good), "/api/v1/namespaces")
            .await
            .unwrap()
            .status(),
        200
    );
    for bad in [
        None,
        Some("Bearer abc".to_string()),
        Some(expired),
        Some("Bearer k8s-aws-v1.bm90IGEgdXJs".to_string()),
    ] {
        let resp = call(bad.clone(), "/api/v1/namespaces").await.unwrap();
        assert_eq!(resp.status(), 401, "{bad:?}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], "Unauthorized");
    }
    assert_eq!(
        call(None, "/version").await.unwrap().status(),
        200,
        "/version is public, as in EKS"
    );
}

#[tokio::test]
async fn secret_string_data_is_stored_as_data() {
    let client = in_process(Arc::new(Store::new()));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("t").force();
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v1"}});
    let stored = secrets.patch("s", &pp, &Patch::Apply(&s)).await.unwrap();
    assert!(stored.string_data.is_none(), "stringData is write-only");
    assert_eq!(stored.data.unwrap()["k"].0, b"v1");
    let again = secrets.patch("s", &pp, &Patch::Apply(&s)).await.unwrap();
    assert_eq!(
        again.metadata.resource_version, stored.metadata.resource_version,
        "re-applying the same stringData is a no-op"
    );
}
