//! HTTP endpoints and the one error type every failure turns into.
//!
//! Bad input is always a 4xx with `{"error": <code>, "detail": <what was wrong>}`; no request body,
//! however malformed, can reach a panic or a 500.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, http::HeaderValue};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::lifecycle::Phase;
use crate::model::{Kind, Label, Prediction};

/// Header CloudFront adds to origin requests; its value is the shared origin-verify secret.
pub const ORIGIN_VERIFY_HEADER: &str = "x-origin-verify";

/// Every non-2xx answer: a status, a stable machine-readable code and a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Answer with `Retry-After: 1` (an overloaded server).
    pub retry_after: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: false,
        }
    }

    fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = self.code, detail = %self.detail, "request failed");
        } else {
            tracing::warn!(status = self.status.as_u16(), error = self.code, detail = %self.detail, "request rejected");
        }
        let body = ErrorBody {
            error: self.code,
            detail: &self.detail,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// `{"features": [...]}` for one row, or `{"instances": [[...], ...]}` for a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    features: Option<Vec<f32>>,
    instances: Option<Vec<Vec<f32>>>,
}

/// One row's `prediction`: a classifier's label (a number or a string, as the model's classes
/// are), a regressor's value, or its values when it has several targets.
#[derive(Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Label(&'a Label),
    Value(f32),
    Values(&'a [f32]),
}

impl<'a> From<&'a Prediction> for Answer<'a> {
    fn from(p: &'a Prediction) -> Self {
        match p {
            Prediction::Class { label, .. } => Answer::Label(label),
            Prediction::Values(v) if v.len() == 1 => Answer::Value(v[0]),
            Prediction::Values(v) => Answer::Values(v),
        }
    }
}

#[derive(Serialize)]
struct SingleAnswer<'a> {
    prediction: Answer<'a>,
    /// A classifier's class probabilities, in the order of its classes; absent for a regressor.
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f32]>,
    model_version: &'a str,
    colour: &'a str,
}

#[derive(Serialize)]
struct BatchAnswer<'a> {
    predictions: Vec<Answer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<Vec<&'a [f32]>>,
    model_version: &'a str,
    colour: &'a str,
}

#[derive(Debug)]
enum Shape {
    Single,
    Batch,
}

/// Checks a parsed request against the model and flattens it into rows for tract.
fn validate(
    request: PredictRequest,
    n_features: usize,
    max_batch: usize,
) -> Result<(Shape, Vec<f32>), ApiError> {
    let (shape, rows) = match (request.features, request.instances) {
        (Some(features), None) => (Shape::Single, vec![features]),
        (None, Some(instances)) => (Shape::Batch, instances),
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "give either `features` (one row) or `instances` (a batch), not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "the body must have `features` (one row) or `instances` (a batch of rows)",
            ));
        }
    };
    if rows.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_batch",
            "`instances` is empty: send at least one row",
        ));
    }
    if rows.len() > max_batch {
        return Err(ApiError::unprocessable(
            "batch_too_large",
            format!(
                "`instances` has {} rows; at most {max_batch} are accepted per request",
                rows.len()
            ),
        ));
    }
    // Only an error message needs the row's name; valid rows must not pay for formatting it.
    let place = |i: usize| match shape {
        Shape::Single => "`features`".to_owned(),
        Shape::Batch => format!("`instances[{i}]`"),
    };
    let mut flat = Vec::with_capacity(rows.len() * n_features);
    for (i, row) in rows.iter().enumerate() {
        if row.len() != n_features {
            return Err(ApiError::unprocessable(
                "wrong_feature_count",
                format!(
                    "{} has {} values; the model takes exactly {n_features}",
                    place(i),
                    row.len()
                ),
            ));
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(ApiError::unprocessable(
                "non_finite_feature",
                format!(
                    "{}[{j}] is not a finite number (out of the float32 range)",
                    place(i)
                ),
            ));
        }
        flat.extend_from_slice(row);
    }
    Ok((shape, flat))
}

/// `application/json` or any `application/*+json`, with or without parameters, in any case.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > "+json".len()
                && subtype
                    .get(subtype.len() - "+json".len()..)
                    .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

/// `POST /predict`. Origin check, content type and body limit are done here rather than in
/// middleware and extractors: this is the hot path, and a cloned `HeaderMap` or an extra boxed layer
/// per request is measurable (see docs/performance.md).
pub async fn predict(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    verify_origin(&state, &parts.headers)?;
    if !is_json(&parts.headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    // Held until the answer is made: the body's upload and the inference count.
    let _slot = match &state.inflight {
        Some(inflight) => Some(inflight.enter().ok_or_else(|| ApiError {
            retry_after: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "{} /predict requests are in progress, the most this server takes (--max-inflight); retry",
                    inflight.limit
                ),
            )
        })?),
        None => None,
    };
    let read = axum::body::to_bytes(body, state.body_limit);
    let body = match &state.inflight {
        // A place is held while the body arrives: a client that stalls gives it back after
        // --body-timeout-seconds, or a few stalled clients would shed every other request for good.
        Some(inflight) => tokio::time::timeout(inflight.body_timeout, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the body did not arrive within {:?} (--body-timeout-seconds)",
                        inflight.body_timeout
                    ),
                )
            })?,
        None => read.await,
    }
    .map_err(|e| body_error(&e, state.body_limit))?;
    let request: PredictRequest = serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
            }
            Category::Data if !body.trim_ascii_start().starts_with(b"{") => ApiError::unprocessable(
                "invalid_request",
                r#"the body must be a JSON object: {"features": [...]} or {"instances": [[...], ...]}"#,
            ),
            Category::Data => ApiError::unprocessable("invalid_request", e.to_string()),
        }
    })?;
    let (shape, rows) = validate(request, state.model.n_features(), state.max_batch)?;
    let predictions = state.model.predict(rows).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference_failed",
            e.to_string(),
        )
    })?;
    state.metrics.add_predictions(&predictions);
    if let Some(shadow) = &state.shadow {
        shadow.offer(&parts.headers, &body, &predictions);
    }
    let classifier = matches!(state.model.kind(), Kind::Classifier { .. });
    let response = match shape {
        Shape::Single => Json(SingleAnswer {
            prediction: Answer::from(&predictions[0]),
            probabilities: classifier.then(|| predictions[0].probabilities()),
            model_version: &state.model_version,
            colour: &state.colour,
        })
        .into_response(),
        Shape::Batch => Json(BatchAnswer {
            predictions: predictions.iter().map(Answer::from).collect(),
            probabilities: classifier
                .then(|| predictions.iter().map(|p| p.probabilities()).collect()),
            model_version: &state.model_version,
            colour: &state.colour,
        })
        .into_response(),
    };
    // A shadow copy's answer says which model gave it (the tee keeps figures per model).
    let mut response = response;
    if parts.headers.contains_key(crate::shadow::SHADOW_HEADER)
        && let Ok(sha) = HeaderValue::from_str(state.model.sha256())
    {
        response
            .headers_mut()
            .insert(crate::shadow::MODEL_SHA256_HEADER, sha);
    }
    Ok(response)
}

/// A body that could not be read: over the limit (413, with or without Content-Length) or broken.
fn body_error(error: &axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than the {limit} byte limit; split the batch"),
            );
        }
        source = e.source();
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unreadable_body",
        format!("the request body could not be read: {error}"),
    )
}

/// When an origin-verify secret is configured, `/predict` requires it (or, during a rotation,
/// the previous value) in `X-Origin-Verify`.
fn verify_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = &state.origin_verify_secret else {
        return Ok(());
    };
    let presented = headers.get(ORIGIN_VERIFY_HEADER).map(HeaderValue::as_bytes);
    let accepted = |p: &[u8]| {
        std::iter::once(secret)
            .chain(&state.origin_verify_previous)
            .any(|s| bool::from(p.ct_eq(s.as_bytes())))
    };
    if presented.is_some_and(accepted) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_verification_failed",
            "requests must come through the CloudFront distribution (missing or wrong X-Origin-Verify header)",
        ))
    }
}

/// `GET /healthz`: the process is alive and answering.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 once warmed up, 503 while starting or draining.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let phase = state.lifecycle.phase();
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"status": phase.as_str(), "colour": state.colour})),
    )
        .into_response()
}

/// `GET /version`: which model, which colour, which build.
pub async fn version(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "model_name": state.model_name,
        "model_version": state.model_version,
        "model_sha256": state.model.sha256(),
        "input": {"name": state.model.input_name(), "features": state.model.n_features()},
        "output": output_contract(state.model.kind()),
        "colour": state.colour,
        "build": crate::BUILD,
    }))
}

/// What a client relies on in the answers: a classifier's classes (in the order of the
/// probabilities; `null` when the graph does not name them) or a regressor's target count.
fn output_contract(kind: &Kind) -> serde_json::Value {
    match kind {
        Kind::Classifier { labels } => serde_json::json!({"kind": "classifier", "classes": labels}),
        Kind::Regressor { targets } => serde_json::json!({"kind": "regressor", "targets": targets}),
    }
}

/// `GET /shadow`: how a sample of this colour's answers compares with the candidate's (figures
/// only); `{"enabled": false}` without `--shadow-url`.
pub async fn shadow(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(match &state.shadow {
        Some(s) => {
            let mut r = s.report();
            r["enabled"] = true.into();
            r
        }
        None => serde_json::json!({"enabled": false}),
    })
}

/// `GET /metrics`
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see POST /predict, GET /healthz, /readyz, /version, /metrics",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (POST /predict; GET for the others)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(features: Option<Vec<f32>>, instances: Option<Vec<Vec<f32>>>) -> PredictRequest {
        PredictRequest {
            features,
            instances,
        }
    }

    #[test]
    fn content_type_accepts_json_with_parameters_and_suffix_types_only() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (value, want) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.api+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/+json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), want, "{value}");
        }
    }

    #[test]
    fn validate_flattens_a_batch_in_row_order() {
        let (shape, flat) = validate(
            request(None, Some(vec![vec![1.0, 2.0], vec![3.0, 4.0]])),
            2,
            10,
        )
        .unwrap();
        assert!(matches!(shape, Shape::Batch));
        assert_eq!(flat, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn validate_names_the_offending_row_and_column() {
        let err = validate(
            request(None, Some(vec![vec![1.0, 2.0], vec![3.0, f32::INFINITY]])),
            2,
            10,
        )
        .unwrap_err();
        assert_eq!(err.code, "non_finite_feature");
        assert!(err.detail.contains("`instances[1]`[1]"), "{}", err.detail);
    }

    #[test]
    fn validate_enforces_the_batch_limit() {
        let err = validate(request(None, Some(vec![vec![1.0]; 3])), 1, 2).unwrap_err();
        assert_eq!(err.code, "batch_too_large");
    }
}
