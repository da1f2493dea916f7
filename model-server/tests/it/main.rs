//! model-server integration tests: one binary, helpers here, one module per concern.
//! `api`, `reference` and `smoke` drive the router in-process (no socket); `shutdown` runs the real
//! binary on loopback and signals it.

mod api;
mod matrix;
mod reference;
mod shadow;
mod shutdown;
mod smoke;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use model_server::config::Config;
use model_server::{AppState, app};
use tower::ServiceExt;

/// A warmed-up state built from command-line style arguments, as `main` builds it.
pub fn state(args: &[&str]) -> Arc<AppState> {
    let config = Config::parse_from(std::iter::once("model-server").chain(args.iter().copied()));
    let state = AppState::from_config(&config).expect("bundled model loads");
    state.warm_up().expect("warm-up");
    Arc::new(state)
}

/// An answer: status, headers and the body parsed as JSON (or a JSON string for non-JSON bodies).
pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

pub async fn send(state: &Arc<AppState>, request: Request<Body>) -> Answer {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(text.clone()));
    Answer {
        status,
        headers,
        json,
        text,
    }
}

pub fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}
