//! The golden cases `release` smoke-tests a colour with must pass on the bundled model.

use serde::Deserialize;

use crate::{post_json, send, state};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    model: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[allow(dead_code)]
    row: Option<usize>,
    features: Vec<f32>,
    expect: i64,
}

#[tokio::test]
async fn smoke_cases_all_pass() {
    let cases: Cases =
        serde_yaml::from_str(include_str!("../../smoke/cases.yaml")).expect("cases.yaml parses");
    assert_eq!(cases.model, "iris");
    assert!(cases.cases.len() >= 9, "at least three cases per class");
    for class in 0..3 {
        assert!(
            cases.cases.iter().any(|c| c.expect == class),
            "class {class} covered"
        );
    }
    let state = state(&[]);
    for case in &cases.cases {
        let body = serde_json::json!({ "features": case.features }).to_string();
        let answer = send(&state, post_json("/predict", body)).await;
        assert_eq!(answer.status, 200, "{}: {}", case.name, answer.text);
        assert_eq!(answer.json["prediction"], case.expect, "{}", case.name);
    }
}
