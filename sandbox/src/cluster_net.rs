//! The cluster's network as a pod sees it: `http://<service>.<namespace>.svc[.cluster.local]:<port>`
//! reaches one ready endpoint of that Service, as cluster DNS and kube-proxy make it on EKS. The
//! sandbox's pods are processes on loopback, where no resolver knows those names, so the kubelet
//! gives each pod `HTTP_PROXY` pointing here (with `NO_PROXY` for loopback), and this forward
//! proxy resolves the Service from the store. HTTP only; a Service without a ready endpoint is a
//! 503 (on EKS the connection would be refused or time out). docs/sandbox.md lists the difference.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::json;

use crate::resources;
use crate::store::Store;

/// Serve the proxy on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, store: Arc<Store>) {
    let router = Router::new().fallback(proxy).with_state(store);
    let _ = axum::serve(listener, router).await;
}

fn refuse(status: u16, message: String) -> Response {
    let mut r = Response::new(Body::from(message));
    *r.status_mut() = axum::http::StatusCode::from_u16(status).expect("a status");
    r
}

async fn proxy(State(store): State<Arc<Store>>, request: Request) -> Response {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let (parts, body) = request.into_parts();
    let uri = parts.uri.clone();
    let Some(host) = uri.host() else {
        return refuse(400, "a forward proxy needs an absolute URI".into());
    };
    let name = host.strip_suffix(".cluster.local").unwrap_or(host);
    let Some((service, ns)) = name.strip_suffix(".svc").and_then(|n| n.split_once('.')) else {
        return refuse(
            502,
            format!(
                "the sandbox's cluster network reaches <service>.<namespace>.svc only, not {host}"
            ),
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    let services = resources::by_kind("Service").expect("served");
    let Ok(svc) = store.get(services, ns, service) else {
        return refuse(
            502,
            format!("no such host: {host} (no Service {ns}/{service})"),
        );
    };
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let Some(chosen) = ports.iter().find(|p| p["port"] == json!(port)) else {
        return refuse(502, format!("Service {ns}/{service} has no port {port}"));
    };
    let backends =
        crate::lb::ready_backends(&store, ns, &svc["spec"]["selector"], &chosen["targetPort"]);
    if backends.is_empty() {
        return refuse(503, format!("no ready endpoint for Service {ns}/{service}"));
    }
    let pick = &backends[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % backends.len()];
    let body: Bytes = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(b) => b,
        Err(e) => return refuse(400, e.to_string()),
    };
    crate::api::forward(
        parts.method,
        pick,
        uri.path().trim_start_matches('/'),
        uri.query(),
        &parts.headers,
        body,
        "the Service's endpoint",
    )
    .await
}
