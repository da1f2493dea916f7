//! The estimator matrix: every model family users bring, trained and exported by scikit-learn and
//! skl2onnx in this test's own Python step (`train/matrix.sh`, a pinned venv), served by the real
//! model server (the router, in-process), and required to answer as scikit-learn does on rows the
//! model was not trained on.
//!
//! Tolerances: a label must be scikit-learn's, except on a row whose two likeliest classes are
//! within `TIE` of each other (scikit-learn computes in float64, the server in float32, so such a
//! row has no single right answer; they are counted and printed, and none occur with today's
//! seeds). Probabilities within `PROBABILITY_ATOL`; regression values within `VALUE_RTOL` of
//! max(|value|, 1). The figures each family reaches are printed (`--nocapture`).

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

use clap::Parser;
use model_server::AppState;
use model_server::config::Config;

use crate::{post_json, send};

const TIE: f64 = 1e-5;
const PROBABILITY_ATOL: f64 = 1e-5;
const VALUE_RTOL: f64 = 1e-5;

#[derive(Deserialize)]
struct Case {
    name: String,
    estimator: String,
    kind: String,
    #[serde(default)]
    labels: Vec<Value>,
    #[serde(default)]
    targets: usize,
    #[serde(default)]
    reason: String,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    features: Vec<f32>,
    prediction: Value,
    #[serde(default)]
    probabilities: Vec<f64>,
}

/// Train and export every case into a fresh directory; the Python step's own output is shown.
fn train_matrix() -> (tempdir::Dir, Vec<String>) {
    let dir = tempdir::Dir::new();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("train/matrix.sh");
    let out = Command::new(&script)
        .arg(dir.path())
        .output()
        .expect("run train/matrix.sh");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "train/matrix.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    (dir, names)
}

/// A directory removed when dropped (std has no temp-dir helper; not worth a crate).
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "model-server-matrix-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

/// The top two probabilities' gap: how far the row is from a tie.
fn margin(probabilities: &[f64]) -> f64 {
    let mut sorted = probabilities.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted.get(1).copied().unwrap_or(0.0)
}

/// Checks one case through the HTTP API, a batch and every row alone. Returns the failures.
async fn check(dir: &std::path::Path, name: &str) -> Vec<String> {
    let case: Case =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let model = dir.join(format!("{name}.onnx"));
    let config = Config::parse_from(["model-server", "--model-path", model.to_str().unwrap()]);
    let config = match (AppState::from_config(&config), case.kind.as_str()) {
        (Err(e), "refused") => {
            let e = e.to_string();
            eprintln!("{name:36} {:32} refused: {e}", case.estimator);
            return match e.to_lowercase().contains(&case.reason.to_lowercase()) {
                true => vec![],
                false => vec![format!(
                    "{name}: refused without naming {:?}: {e}",
                    case.reason
                )],
            };
        }
        (Ok(_), "refused") => return vec![format!("{name}: loaded, but must be refused")],
        (Ok(s), _) => {
            s.warm_up().expect("warm-up");
            std::sync::Arc::new(s)
        }
        (Err(e), _) => return vec![format!("{name} ({}): does not load: {e}", case.estimator)],
    };
    assert_eq!(case.name, name);
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{name} ({}): {what}", case.estimator));

    let version = send(&config, crate::get("/version")).await.json;
    match case.kind.as_str() {
        "classifier" => {
            if version["output"] != json!({"kind": "classifier", "classes": case.labels}) {
                fail(format!("/version output {}", version["output"]));
            }
        }
        _ => {
            if version["output"] != json!({"kind": "regressor", "targets": case.targets}) {
                fail(format!("/version output {}", version["output"]));
            }
        }
    }

    let instances: Vec<&Vec<f32>> = case.rows.iter().map(|r| &r.features).collect();
    let batch = send(
        &config,
        post_json("/predict", json!({"instances": instances}).to_string()),
    )
    .await;
    let mut answers: Vec<(Value, Option<Value>)> = match batch.json["predictions"].as_array() {
        Some(p) => p
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), batch.json["probabilities"].get(i).cloned()))
            .collect(),
        None => {
            fail(format!("batch answered {} {}", batch.status, batch.text));
            return failures;
        }
    };
    for row in &case.rows {
        let single = send(
            &config,
            post_json("/predict", json!({"features": row.features}).to_string()),
        )
        .await;
        answers.push((
            single.json["prediction"].clone(),
            single.json.get("probabilities").cloned(),
        ));
    }

    let (mut worst, mut ties) = (0.0f64, 0);
    for (i, (prediction, probabilities)) in answers.iter().enumerate() {
        let row = &case.rows[i % case.rows.len()];
        let how = if i < case.rows.len() {
            "batch"
        } else {
            "one row"
        };
        if case.kind == "classifier" {
            let got = numbers(probabilities.as_ref().unwrap_or(&Value::Null));
            for (p, q) in got.iter().zip(&row.probabilities) {
                worst = worst.max((p - q).abs());
            }
            if got.len() != row.probabilities.len() {
                fail(format!("{how} row {i}: probabilities {got:?}"));
            }
            if *prediction != row.prediction {
                if margin(&row.probabilities) < TIE {
                    ties += 1;
                } else {
                    fail(format!(
                        "{how} row {}: answered {prediction}, scikit-learn {} (its probabilities {:?}, ours {got:?})",
                        i % case.rows.len(),
                        row.prediction,
                        row.probabilities
                    ));
                }
            }
        } else {
            if probabilities.is_some() {
                fail(format!("{how}: a regressor answered probabilities"));
            }
            let (got, want) = (numbers(prediction), numbers(&row.prediction));
            if prediction.is_array() != row.prediction.is_array() || got.len() != want.len() {
                fail(format!(
                    "{how} row {i}: answered {prediction}, scikit-learn {}",
                    row.prediction
                ));
                continue;
            }
            for (p, q) in got.iter().zip(&want) {
                worst = worst.max((p - q).abs() / q.abs().max(1.0));
            }
        }
    }
    let (limit, what) = if case.kind == "classifier" {
        (PROBABILITY_ATOL, "probability difference")
    } else {
        (VALUE_RTOL, "relative value difference")
    };
    if worst > limit {
        fail(format!("largest {what} {worst:.3e}, beyond {limit:e}"));
    }
    eprintln!(
        "{name:36} {:32} {} rows: largest {what} {worst:.2e}, near-ties {ties}",
        case.estimator,
        case.rows.len()
    );
    failures
}

#[tokio::test]
async fn every_estimator_family_answers_as_scikit_learn_does() {
    let (dir, names) = train_matrix();
    assert!(names.len() >= 20, "matrix.py wrote only {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let mut found = check(dir.path(), name).await;
        if found.len() > 4 {
            let more = found.len() - 3;
            found.truncate(3);
            found.push(format!("{name}: and {more} more"));
        }
        failures.extend(found);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
