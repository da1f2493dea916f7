//! The Kubernetes API stand-in: discovery, CRUD, patches, server-side apply, watch, pod logs, and
//! EKS-style bearer-token authentication. One axum `Router`, served over TLS by `tls.rs` or handed
//! straight to a kube-rs `Client` in tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::merge::{Selector, merge_patch, strategic_merge};
use crate::resources::{self, Resource};
use crate::store::{ApiError, ApiResult, Part, Store, meta};
use crate::system;

pub struct ApiState {
    pub store: Arc<Store>,
    /// Where the kubelet writes each container's output (`kubectl logs`).
    pub logs_dir: PathBuf,
    /// How long a token is accepted from its X-Amz-Date (EKS: 15 minutes).
    pub token_lifetime: Duration,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

// ---------------------------------------------------------------------------------------------
// Authentication: only EKS tokens (`k8s-aws-v1.` + base64url of a presigned STS
// GetCallerIdentity URL that signs the x-k8s-aws-id header), as `aws eks get-token` makes them.

/// Whether `token` is an EKS token of the right shape no older than `lifetime`.
pub fn validate_token(token: &str, lifetime: Duration) -> Result<(), String> {
    let encoded = token
        .strip_prefix("k8s-aws-v1.")
        .ok_or("the token does not start with k8s-aws-v1.")?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|e| format!("the token is not base64url: {e}"))?;
    let url = String::from_utf8(decoded).map_err(|_| "the token is not a URL")?;
    let (base, query) = url.split_once('?').ok_or("the token's URL has no query")?;
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err("the token's URL is not http(s)".into());
    }
    let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| {
        q.get(k)
            .map(String::as_str)
            .ok_or(format!("the presigned URL lacks {k}"))
    };
    if get("Action")? != "GetCallerIdentity" {
        return Err("the presigned URL is not for GetCallerIdentity".into());
    }
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err("the presigned URL is not SigV4".into());
    }
    get("X-Amz-Credential")?;
    let signature = get("X-Amz-Signature")?;
    if signature.len() != 64 || !signature.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("X-Amz-Signature is not a SigV4 signature".into());
    }
    if !get("X-Amz-SignedHeaders")?
        .split(';')
        .any(|h| h == "x-k8s-aws-id")
    {
        return Err("the presigned URL does not sign the x-k8s-aws-id header".into());
    }
    let date = get("X-Amz-Date")?;
    if date.len() != 16 {
        return Err(format!("X-Amz-Date {date:?} is not yyyymmddThhmmssZ"));
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let signed_at =
        humantime::parse_rfc3339(&rfc).map_err(|e| format!("X-Amz-Date {date:?}: {e}"))?;
    let now = SystemTime::now();
    if now
        .duration_since(signed_at)
        .is_ok_and(|age| age > lifetime)
    {
        return Err("the token has expired".into());
    }
    if signed_at
        .duration_since(now)
        .is_ok_and(|ahead| ahead > Duration::from_secs(300))
    {
        return Err("the token is dated in the future".into());
    }
    Ok(())
}

async fn authenticate(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let public = matches!(
        req.uri().path(),
        "/version" | "/healthz" | "/livez" | "/readyz"
    );
    if !public {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let verdict = token
            .ok_or_else(|| "no bearer token".to_string())
            .and_then(|t| validate_token(t, state.token_lifetime));
        if let Err(why) = verdict {
            tracing::info!(path = %req.uri().path(), %why, "unauthorized");
            return error_response(&ApiError::new(
                401,
                "Unauthorized",
                format!("Unauthorized: {why}"),
            ));
        }
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Routing

struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::find(group, version, rest[2]).is_some();
    let (namespace, rest) = if namespaced {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let res = resources::find(group, version, rest.first()?)?;
    if res.namespaced != namespace.is_some() && rest.len() > 1 {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

type Query = HashMap<String, String>;

async fn handle(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query: Query = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let discovery = match segments.as_slice() {
        ["version"] => Some(resources::version()),
        ["healthz"] | ["livez"] | ["readyz"] => return (StatusCode::OK, "ok").into_response(),
        ["api"] => Some(resources::api_versions()),
        ["apis"] => Some(resources::api_group_list()),
        ["api", v] => resources::resource_list("", v),
        ["apis", g, v] => resources::resource_list(g, v),
        ["openapi", "v3"] => Some(resources::openapi_index()),
        ["openapi", "v3", "api", v] => resources::openapi_document("", v),
        ["openapi", "v3", "apis", g, v] => resources::openapi_document(g, v),
        _ => None,
    };
    if let Some(doc) = discovery {
        return json_response(200, &doc);
    }
    if let [
        "api",
        "v1",
        "namespaces",
        namespace,
        "services",
        service,
        "proxy",
        rest @ ..,
    ] = segments.as_slice()
    {
        return service_proxy(
            &state,
            method,
            namespace,
            service,
            &rest.join("/"),
            uri.query(),
            &headers,
            body,
        )
        .await;
    }
    if let [
        "api",
        "v1",
        "namespaces",
        namespace,
        "pods",
        pod,
        "proxy",
        rest @ ..,
    ] = segments.as_slice()
    {
        return pod_proxy(
            &state,
            method,
            namespace,
            pod,
            &rest.join("/"),
            uri.query(),
            &headers,
            body,
        )
        .await;
    }
    let Some(target) = parse_target(&segments) else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    // JSON only: a protobuf or CBOR body is refused with 415, and clients fall back to JSON.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !body.is_empty() && (content_type.contains("protobuf") || content_type.contains("cbor")) {
        return error_response(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
            ),
        ));
    }
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return error_response(&ApiError::bad_request(
            "dryRun is not supported by the sandbox cluster",
        ));
    }
    if target.res.kind == "Service"
        && target.sub.is_none()
        && matches!(method, Method::POST | Method::PUT | Method::PATCH)
    {
        let existing = target
            .name
            .as_deref()
            .and_then(|n| state.store.get(target.res, ns(&target), n).ok());
        let operation = if existing.is_some() {
            "UPDATE"
        } else {
            "CREATE"
        };
        let obj = parse_body(&body)
            .ok()
            .filter(|b| b.get("metadata").is_some())
            .or(existing)
            .unwrap_or(Value::Null);
        if let Err(why) = system::admit_service(&state.store, &obj, operation) {
            return error_response(&ApiError::new(500, "InternalError", why));
        }
    }
    let result = match (&method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, _) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch(&state, &target, &query);
        }
        (&Method::GET, None, _) => list(&state, &target, &query),
        (&Method::GET, Some(name), Some("log")) if target.res.kind == "Pod" => {
            return pod_log(&state, &target, name, &query);
        }
        (&Method::GET, Some(name), _) => state
            .store
            .get(target.res, ns(&target), name)
            .map(|o| (200, o)),
        (&Method::POST, None, _) => parse_body(&body)
            .and_then(|b| state.store.create(target.res, ns(&target), b))
            .map(|o| (201, o)),
        (&Method::PUT, Some(name), sub) => part(sub)
            .and_then(|p| {
                parse_body(&body)
                    .and_then(|b| state.store.replace(target.res, ns(&target), name, p, b))
            })
            .map(|o| (200, o)),
        (&Method::PATCH, Some(name), sub) => {
            part(sub).and_then(|p| patch(&state, &target, name, p, &headers, &query, &body))
        }
        (&Method::DELETE, Some(name), None) => delete(&state, &target, name, &body),
        (&Method::DELETE, None, _) => delete_collection(&state, &target, &query),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on this path"),
        )),
    };
    match result {
        Ok((code, obj)) => json_response(code, &obj),
        Err(e) => error_response(&e),
    }
}

fn ns(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or("")
}

fn part(sub: Option<&str>) -> ApiResult<Part> {
    match sub {
        None => Ok(Part::Main),
        Some("status") => Ok(Part::Status),
        Some(other) => Err(ApiError::new(
            404,
            "NotFound",
            format!("no subresource {other:?}"),
        )),
    }
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice::<Value>(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is neither JSON nor YAML: {e}"))
        })
}

fn selectors(query: &Query) -> ApiResult<(Selector, Selector)> {
    let parse = |k: &str| {
        Selector::parse(query.get(k).map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

fn list(state: &ApiState, target: &Target, query: &Query) -> ApiResult<(u16, Value)> {
    let (labels, fields) = selectors(query)?;
    let (items, rv) = state.store.list(target.res, target.namespace.as_deref());
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
        .collect();
    Ok((
        200,
        json!({
            "kind": format!("{}List", target.res.kind), "apiVersion": target.res.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items,
        }),
    ))
}

fn patch(
    state: &ApiState,
    target: &Target,
    name: &str,
    part: Part,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> ApiResult<(u16, Value)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let store = &state.store;
    let res = target.res;
    let namespace = ns(target);
    match content_type.as_str() {
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            let manager = query.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
            })?;
            let applied = parse_body(body)?;
            let existed = store.get(res, namespace, name).is_ok();
            let obj = store.apply(res, namespace, name, manager, part, applied)?;
            Ok((if existed { 200 } else { 201 }, obj))
        }
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => {
            let patch = parse_body(body)?;
            let obj = store.modify(res, namespace, name, part, |old| {
                let mut new = old.clone();
                match content_type.as_str() {
                    "application/merge-patch+json" => merge_patch(&mut new, &patch),
                    "application/strategic-merge-patch+json" => strategic_merge(&mut new, &patch),
                    _ => {
                        let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| ApiError::bad_request(format!("not a JSON patch: {e}")))?;
                        json_patch::patch(&mut new, &ops).map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch does not apply: {e}")))?;
                    }
                }
                // A patch carrying a resourceVersion is a precondition, as in the API server.
                if let Some(rv) = meta(&patch, "resourceVersion")
                    && Some(rv) != meta(old, "resourceVersion") {
                        return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified", res.plural)));
                    }
                Ok(new)
            })?;
            Ok((200, obj))
        }
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ),
        )),
    }
}

fn delete(state: &ApiState, target: &Target, name: &str, body: &[u8]) -> ApiResult<(u16, Value)> {
    let opts = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let propagation = opts["propagationPolicy"].as_str().unwrap_or("Background");
    if !matches!(propagation, "Background" | "Foreground" | "Orphan") {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {propagation:?} is not one of Background, Foreground, Orphan"
        )));
    }
    let obj = state.store.delete(
        target.res,
        ns(target),
        name,
        propagation,
        opts["gracePeriodSeconds"].as_i64(),
    )?;
    Ok((200, obj))
}

fn delete_collection(state: &ApiState, target: &Target, query: &Query) -> ApiResult<(u16, Value)> {
    let (_, list) = list(state, target, query)?;
    for item in list["items"].as_array().into_iter().flatten() {
        let _ = state.store.delete(
            target.res,
            meta(item, "namespace").unwrap_or(""),
            meta(item, "name").unwrap_or(""),
            "Background",
            None,
        );
    }
    Ok((200, list))
}

fn pod_log(state: &ApiState, target: &Target, name: &str, query: &Query) -> Response {
    let pod = match state.store.get(target.res, ns(target), name) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let container = query
        .get("container")
        .cloned()
        .or_else(|| {
            pod["spec"]["containers"][0]["name"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = state
        .logs_dir
        .join(format!("{}_{name}_{container}.log", ns(target)));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let text = match query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
        }
        None => text,
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

// ---------------------------------------------------------------------------------------------
// Watch: one JSON event per line; events after the given resourceVersion are replayed, so nothing
// is lost between a list and its watch; 410 Expired when that version is no longer kept.

fn watch(state: &ApiState, target: &Target, query: &Query) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let res = target.res;
    let namespace = target.namespace.clone();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let requested: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let store = state.store.clone();

    let selected = move |kind: &str, obj: &Value| {
        kind == res.kind
            && namespace
                .as_deref()
                .is_none_or(|n| meta(obj, "namespace") == Some(n))
            && labels.matches_labels(obj)
            && fields.matches_fields(obj)
    };
    let line =
        |t: &str, obj: &Value| Bytes::from(format!("{}\n", json!({"type": t, "object": obj})));

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let since = match requested {
        Some(rv) => rv,
        None => {
            let (items, rv) = store.list(res, target.namespace.as_deref());
            initial.extend(
                items
                    .iter()
                    .filter(|o| selected(res.kind, o))
                    .map(|o| line("ADDED", o)),
            );
            rv
        }
    };
    let (mut live, replay) = store.watch_from(since);
    tokio::spawn(async move {
        let expired = |rv: u64| {
            let status =
                ApiError::new(410, "Expired", format!("too old resource version: {rv}")).status();
            line("ERROR", &status)
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let Some(replay) = replay else {
            let _ = tx.send(expired(since)).await;
            return;
        };
        for e in replay {
            if selected(e.kind, &e.object) && tx.send(line(e.event_type, &e.object)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": store.resource_version().to_string()}});
                    if tx.send(line("BOOKMARK", &obj)).await.is_err() { return; }
                }
                event = live.recv() => match event {
                    Ok(e) => {
                        if selected(e.kind, &e.object) && tx.send(line(e.event_type, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(expired(since)).await;
                        return;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

// ---------------------------------------------------------------------------------------------
// The service proxy (`/api/v1/namespaces/<ns>/services/[<scheme>:]<name>[:<port>]/proxy/<path>`),
// as kube-apiserver serves it: the request goes to one ready endpoint of the Service (a pod, not
// its load balancer) on the port named or numbered, with its method, query, body and headers;
// the caller's bearer token is not passed on (the authentication filter removes Authorization
// once it has authenticated the request). No ready endpoint: 503 "no endpoints available for
// service". The caller needs `services/proxy` in RBAC (Kubernetes API reference, Service v1,
// "Proxy Operations").

/// Headers that describe one hop or the caller's credentials, not the request.
const NOT_PROXIED: [&str; 7] = [
    "authorization",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
];

#[allow(clippy::too_many_arguments)]
async fn service_proxy(
    state: &ApiState,
    method: Method,
    namespace: &str,
    service: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let parts: Vec<&str> = service.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("http", *name, ""),
        [name, port] => ("http", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => {
            return error_response(&ApiError::bad_request(format!(
                "invalid service request {service:?}"
            )));
        }
    };
    if scheme != "http" && !scheme.is_empty() {
        return error_response(&ApiError::bad_request(format!(
            "the sandbox proxies http only, not {scheme}"
        )));
    }
    let services = resources::by_kind("Service").expect("served");
    let svc = match state.store.get(services, namespace, name) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let unavailable = || {
        error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{name}\""),
        ))
    };
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let chosen = ports.iter().find(|p| {
        (port.is_empty() && ports.len() == 1)
            || p["name"] == json!(port)
            || p["port"].as_u64().is_some_and(|n| n.to_string() == port)
    });
    let Some(chosen) = chosen else {
        return unavailable();
    };
    let backends = crate::lb::ready_backends(
        &state.store,
        namespace,
        &svc["spec"]["selector"],
        &chosen["targetPort"],
    );
    if backends.is_empty() {
        return unavailable();
    }
    let pick = &backends[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % backends.len()];
    forward(method, pick, path, query, headers, body, "service").await
}

/// The pod proxy (`/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy/<path>`): the request goes
/// to that pod's IP on the port numbered (or its first container port), ready or not, as
/// kube-apiserver forwards it (Kubernetes API reference, Pod v1, "Proxy Operations"). The
/// caller needs `pods/proxy` in RBAC (not enforced here).
#[allow(clippy::too_many_arguments)]
async fn pod_proxy(
    state: &ApiState,
    method: Method,
    namespace: &str,
    pod: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let (name, port) = pod.split_once(':').unwrap_or((pod, ""));
    let pods = resources::by_kind("Pod").expect("served");
    let p = match state.store.get(pods, namespace, name) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let port = match port.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => p["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64(),
    };
    let (Some(ip), Some(port)) = (p["status"]["podIP"].as_str(), port) else {
        return error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            format!("pod \"{name}\" has no address to reach"),
        ));
    };
    forward(
        method,
        &format!("{ip}:{port}"),
        path,
        query,
        headers,
        body,
        "pod",
    )
    .await
}

/// Send the proxied request to `at` (`ip:port`) and hand back its answer.
pub(crate) async fn forward(
    method: Method,
    at: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    what: &str,
) -> Response {
    let mut url = format!("http://{at}/{path}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let mut req = http.request(method, &url).body(body.to_vec());
    for (k, v) in headers {
        if !NOT_PROXIED.contains(&k.as_str()) {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(resp) => {
            // The answer's own headers pass through, as kube-apiserver's proxy and kube-proxy
            // pass them; only those of one hop are left out.
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (k, v) in &headers {
                if !NOT_PROXIED.contains(&k.as_str()) {
                    out.headers_mut().append(k, v.clone());
                }
            }
            out
        }
        Err(e) => error_response(&ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error trying to reach {what}: {e}"),
        )),
    }
}
