//! Every endpoint, and every kind of bad input answered with a 4xx JSON error (never a 500).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use model_server::AppState;
use model_server::config::Config;

use crate::{get, post_json, send, state};

const SETOSA: &str = r#"{"features":[5.1,3.5,1.4,0.2]}"#;

#[tokio::test]
async fn predict_one_row_reports_class_probabilities_version_and_colour() {
    let state = state(&["--colour", "green"]);
    let answer = send(&state, post_json("/predict", SETOSA)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["prediction"], 0);
    assert_eq!(answer.json["model_version"], "1.0.0");
    assert_eq!(answer.json["colour"], "green");
    let probs = answer.json["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 3);
    assert!(probs[0].as_f64().unwrap() > 0.9);
}

#[tokio::test]
async fn predict_batch_answers_each_row_in_order() {
    let state = state(&[]);
    let body = r#"{"instances":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3],[5.9,3.0,4.2,1.5]]}"#;
    let answer = send(&state, post_json("/predict", body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.json["predictions"], serde_json::json!([0, 2, 1]));
    assert_eq!(answer.json["probabilities"].as_array().unwrap().len(), 3);
}

/// Each bad input with the status and error code it must get.
#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_naming_the_problem() {
    let state = state(&["--body-limit", "512", "--max-batch", "4"]);
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        // (what, body, status, error code, words the detail must contain)
        (
            "malformed JSON",
            r#"{"features":[5.1,"#,
            400,
            "malformed_json",
            "EOF",
        ),
        (
            "not JSON at all",
            "features=1,2,3,4",
            400,
            "malformed_json",
            "line 1",
        ),
        (
            "wrong feature count",
            r#"{"features":[1,2,3]}"#,
            422,
            "wrong_feature_count",
            "exactly 4",
        ),
        (
            "too many features",
            r#"{"features":[1,2,3,4,5]}"#,
            422,
            "wrong_feature_count",
            "has 5 values",
        ),
        (
            "a string feature",
            r#"{"features":[1,"two",3,4]}"#,
            422,
            "invalid_request",
            "expected f32",
        ),
        (
            "a null feature",
            r#"{"features":[1,null,3,4]}"#,
            422,
            "invalid_request",
            "expected f32",
        ),
        (
            "a number beyond float32 (inf)",
            r#"{"features":[1e39,1,1,1]}"#,
            422,
            "non_finite_feature",
            "`features`[0]",
        ),
        (
            "a number beyond float64",
            r#"{"features":[1e999,1,1,1]}"#,
            400,
            "malformed_json",
            "out of range",
        ),
        (
            "NaN literal",
            r#"{"features":[NaN,1,1,1]}"#,
            400,
            "malformed_json",
            "line 1",
        ),
        (
            "empty batch",
            r#"{"instances":[]}"#,
            422,
            "empty_batch",
            "at least one row",
        ),
        (
            "batch over the limit",
            r#"{"instances":[[1,1,1,1],[1,1,1,1],[1,1,1,1],[1,1,1,1],[1,1,1,1]]}"#,
            422,
            "batch_too_large",
            "at most 4",
        ),
        (
            "bad row in a batch",
            r#"{"instances":[[1,1,1,1],[1,1]]}"#,
            422,
            "wrong_feature_count",
            "`instances[1]`",
        ),
        (
            "both forms",
            r#"{"features":[1,1,1,1],"instances":[[1,1,1,1]]}"#,
            422,
            "invalid_request",
            "not both",
        ),
        ("neither form", r#"{}"#, 422, "invalid_request", "must have"),
        (
            "unknown field",
            r#"{"feature":[1,1,1,1]}"#,
            422,
            "invalid_request",
            "unknown field `feature`",
        ),
        (
            "a bare array",
            r#"[5.1,3.5,1.4,0.2]"#,
            422,
            "invalid_request",
            "must be a JSON object",
        ),
        (
            "a bare string",
            r#""5.1,3.5,1.4,0.2""#,
            422,
            "invalid_request",
            "must be a JSON object",
        ),
        ("an empty body", "", 400, "malformed_json", "EOF"),
    ];
    for (what, body, status, code, detail) in cases {
        let answer = send(&state, post_json("/predict", *body)).await;
        assert_eq!(answer.status.as_u16(), *status, "{what}: {}", answer.text);
        assert_eq!(answer.json["error"], *code, "{what}: {}", answer.text);
        let got = answer.json["detail"].as_str().unwrap_or_default();
        assert!(
            got.contains(detail),
            "{what}: detail {got:?} lacks {detail:?}"
        );
    }
}

#[tokio::test]
async fn oversized_body_is_413_not_a_500() {
    let state = state(&["--body-limit", "512"]);
    let rows = vec!["[5.1,3.5,1.4,0.2]"; 100].join(",");
    let body = format!(r#"{{"instances":[{rows}]}}"#);
    assert!(body.len() > 512);
    assert_too_large(send(&state, post_json("/predict", body)).await);
}

fn assert_too_large(answer: crate::Answer) {
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );
    assert_eq!(answer.json["error"], "body_too_large");
}

#[tokio::test]
async fn oversized_body_without_content_length_is_413_too() {
    let state = state(&["--body-limit", "512"]);
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"instances":["#.to_owned()),
        Ok("[1,1,1,1],".repeat(200)),
        Ok("[1,1,1,1]]}".to_owned()),
    ];
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    assert_too_large(send(&state, post_json("/predict", body)).await);
}

#[tokio::test]
async fn a_body_that_breaks_mid_stream_is_400_unreadable_body() {
    let state = state(&[]);
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"features":[5.1,"#.to_owned()),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "peer went away",
        )),
    ];
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let answer = send(&state, post_json("/predict", body)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    assert_eq!(answer.json["error"], "unreadable_body");
    assert!(
        answer.json["detail"]
            .as_str()
            .unwrap()
            .contains("peer went away"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn over_max_inflight_a_predict_is_503_overloaded_at_once_and_served_again_after() {
    let state = state(&["--max-inflight", "1"]);
    // One request holds the only place while its body is still on its way.
    let (more, chunks) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    let body = Body::from_stream(futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let held = tokio::spawn({
        let state = state.clone();
        async move { send(&state, post_json("/predict", body)).await }
    });
    more.send(Ok(r#"{"features":[5.1,"#.to_owned()))
        .await
        .unwrap();
    let mut shed = None;
    for _ in 0..100 {
        let answer = send(&state, post_json("/predict", SETOSA)).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(answer);
            break;
        }
        // The held request has not taken its place yet.
        tokio::task::yield_now().await;
    }
    let shed = shed.expect("a second request while the first is in progress is refused");
    assert_eq!(shed.json["error"], "overloaded", "{}", shed.text);
    assert_eq!(shed.headers["retry-after"], "1");
    // The probes are not limited.
    assert_eq!(send(&state, get("/readyz")).await.status, StatusCode::OK);
    more.send(Ok("3.5,1.4,0.2]}".to_owned())).await.unwrap();
    drop(more);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        send(&state, post_json("/predict", SETOSA)).await.status,
        StatusCode::OK
    );
    // The refusal is counted as /predict's 503: a bake watching /metrics sees it.
    let metrics = send(&state, get("/metrics")).await.text;
    assert!(
        metrics.contains(r#"http_requests_total{route="/predict",method="POST",status="503"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn over_max_inflight_a_stalled_body_gives_its_place_back_after_the_body_timeout() {
    let state = state(&["--max-inflight", "1", "--body-timeout-seconds", "0.2"]);
    let (more, chunks) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    let body = Body::from_stream(futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    more.send(Ok(r#"{"features":[5.1,"#.to_owned()))
        .await
        .unwrap();
    // The client stalls (keeps its end open, sends no more).
    let stalled = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        send(&state, post_json("/predict", body)),
    )
    .await
    .expect("a stalled body is answered, not waited for");
    assert_eq!(
        stalled.status,
        StatusCode::REQUEST_TIMEOUT,
        "{}",
        stalled.text
    );
    assert_eq!(stalled.json["error"], "body_timeout");
    assert_eq!(
        send(&state, post_json("/predict", SETOSA)).await.status,
        StatusCode::OK
    );
    drop(more);
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let state = state(&[]);
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = Request::post("/predict");
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let answer = send(&state, request.body(Body::from(SETOSA)).unwrap()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(answer.json["error"], "unsupported_media_type");
    }
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_json_errors() {
    let state = state(&[]);
    let answer = send(&state, get("/predictions")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json["error"], "not_found");
    let answer = send(&state, get("/predict")).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.json["error"], "method_not_allowed");
}

#[tokio::test]
async fn origin_secret_guards_predict_but_not_the_probes() {
    let state = state(&["--origin-verify-secret", "s3cret"]);
    let answer = send(&state, post_json("/predict", SETOSA)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.json["error"], "origin_verification_failed");

    let with_origin = |name: &str, value: &str| {
        Request::post("/predict")
            .header("content-type", "application/json")
            .header(name, value)
            .body(Body::from(SETOSA))
            .unwrap()
    };
    let wrong = with_origin("x-origin-verify", "s3cre");
    assert_eq!(send(&state, wrong).await.status, StatusCode::FORBIDDEN);
    let right = with_origin("X-Origin-Verify", "s3cret");
    assert_eq!(send(&state, right).await.status, StatusCode::OK);

    for probe in ["/healthz", "/readyz", "/version", "/metrics"] {
        assert_eq!(
            send(&state, get(probe)).await.status,
            StatusCode::OK,
            "{probe}"
        );
    }
}

/// During a rotation both values pass, and nothing else does.
#[tokio::test]
async fn during_a_rotation_the_previous_origin_secret_is_accepted_too() {
    let state = state(&[
        "--origin-verify-secret",
        "new-value",
        "--origin-verify-previous",
        "old-value",
    ]);
    for (value, status) in [
        ("new-value", StatusCode::OK),
        ("old-value", StatusCode::OK),
        ("other", StatusCode::FORBIDDEN),
    ] {
        let request = Request::post("/predict")
            .header("content-type", "application/json")
            .header("x-origin-verify", value)
            .body(Body::from(SETOSA))
            .unwrap();
        assert_eq!(send(&state, request).await.status, status, "{value}");
    }
}

#[tokio::test]
async fn no_secret_configured_means_no_header_needed() {
    let state = state(&[]);
    assert_eq!(
        send(&state, post_json("/predict", SETOSA)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn readyz_is_503_until_warm_up_then_200_then_503_while_draining() {
    let config = Config::parse_from(["model-server", "--colour", "blue"]);
    let state = Arc::new(AppState::from_config(&config).unwrap());
    let answer = send(&state, get("/readyz")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json["status"], "starting");
    assert_eq!(
        send(&state, get("/healthz")).await.status,
        StatusCode::OK,
        "alive while starting"
    );

    state.warm_up().unwrap();
    let answer = send(&state, get("/readyz")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["colour"], "blue");

    state.lifecycle.start_draining();
    let answer = send(&state, get("/readyz")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json["status"], "draining");
    // Still serving predictions, but telling the client to reconnect elsewhere.
    let answer = send(&state, post_json("/predict", SETOSA)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["connection"], "close");
}

#[tokio::test]
async fn version_reports_model_identity_colour_and_build() {
    let state = state(&["--colour", "blue", "--model-version", "2024-06-01"]);
    let answer = send(&state, get("/version")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["model_name"], "iris");
    assert_eq!(answer.json["model_version"], "2024-06-01");
    assert_eq!(answer.json["colour"], "blue");
    assert_eq!(answer.json["model_sha256"], state.model.sha256());
    assert!(
        answer.json["build"]
            .as_str()
            .unwrap()
            .starts_with(env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let state = state(&["--colour", "blue"]);
    send(&state, post_json("/predict", SETOSA)).await;
    send(&state, post_json("/predict", SETOSA)).await;
    send(&state, post_json("/predict", "{")).await;
    send(&state, get("/nowhere")).await;
    let answer = send(&state, get("/metrics")).await;
    let text = answer.text;
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text"),
        "{:?}",
        answer.headers
    );
    assert!(
        text.contains(r#"http_requests_total{route="/predict",method="POST",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{route="/predict",method="POST",status="400"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_request_duration_seconds_count{route="/predict"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("http_requests_in_flight 1"),
        "the /metrics request itself: {text}"
    );
    assert!(text.contains("model_rows_predicted_total 2"), "{text}");
    assert!(text.contains(r#"colour="blue""#), "{text}");
    // The class mix, each of the model's classes shown from 0.
    for (class, n) in [("0", 2), ("1", 0), ("2", 0)] {
        assert!(
            text.contains(&format!("model_predictions_total{{class=\"{class}\"}} {n}")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_custom_model_path_is_served_and_a_missing_one_is_a_clear_start_error() {
    let dir = std::env::temp_dir().join(format!("model-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flowers.onnx");
    std::fs::write(&path, model_server::model::BUNDLED_MODEL).unwrap();
    let state = state(&["--model-path", path.to_str().unwrap()]);
    let answer = send(&state, get("/version")).await;
    assert_eq!(answer.json["model_name"], "flowers");
    assert_eq!(answer.json["model_version"], "unknown");

    let missing = Config::parse_from(["model-server", "--model-path", "/nonexistent/m.onnx"]);
    let err = AppState::from_config(&missing)
        .err()
        .expect("missing model is an error");
    assert!(err.to_string().contains("/nonexistent/m.onnx"), "{err}");

    std::fs::write(&path, b"definitely not onnx").unwrap();
    let garbage = Config::parse_from(["model-server", "--model-path", path.to_str().unwrap()]);
    let err = AppState::from_config(&garbage)
        .err()
        .expect("garbage model is an error");
    assert!(
        err.to_string().contains("cannot load the ONNX model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
