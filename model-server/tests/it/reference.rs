//! The served model must answer exactly as the framework that trained it.

use model_server::model::{BUNDLED_MODEL, Label, Model};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model_sha256: String,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    features: Vec<f32>,
    prediction: i64,
    probabilities: Vec<f64>,
}

fn reference() -> Reference {
    let text = include_str!("../../model/iris-reference.json");
    serde_json::from_str(text).unwrap()
}

/// Every row's features, one after the other, as the model takes a batch.
fn all_rows(reference: &Reference) -> Vec<f32> {
    reference
        .rows
        .iter()
        .flat_map(|r| r.features.clone())
        .collect()
}

/// Requires `model` to give scikit-learn's class on every row; returns the largest probability gap.
fn largest_difference_from_reference(model: &Model, reference: &Reference) -> f64 {
    let got = model.predict(all_rows(reference)).unwrap();
    assert_eq!(got.len(), reference.rows.len());
    let mut worst = 0.0f64;
    for (i, (row, answer)) in reference.rows.iter().zip(&got).enumerate() {
        assert_eq!(
            answer.label(),
            Some(&Label::Int(row.prediction)),
            "row {i}: {:?}",
            row.features
        );
        for (p, q) in answer.probabilities().iter().zip(&row.probabilities) {
            worst = worst.max((f64::from(*p) - q).abs());
        }
    }
    worst
}

#[test]
fn predictions_match_training_framework() {
    let reference = reference();
    assert_eq!(reference.rows.len(), 150, "all of iris");
    let model = Model::from_onnx_bytes(BUNDLED_MODEL).unwrap();
    assert_eq!(
        model.sha256(),
        reference.model_sha256,
        "the reference answers were made for another model; re-run model-server/train/train.sh"
    );
    let worst = largest_difference_from_reference(&model, &reference);
    eprintln!("largest probability difference from scikit-learn over 150 rows: {worst:e}");
    // float32 inference against scikit-learn's float64.
    assert!(worst < 1e-5, "largest probability difference {worst}");
}

#[test]
fn one_row_at_a_time_equals_the_batch() {
    let reference = reference();
    let model = Model::from_onnx_bytes(BUNDLED_MODEL).unwrap();
    let batch = model.predict(all_rows(&reference)).unwrap();
    for (row, from_batch) in reference.rows.iter().zip(batch) {
        let single = model.predict(row.features.clone()).unwrap().remove(0);
        // tract picks other kernels for other batch sizes: same class, last bits may differ.
        assert_eq!(single.label(), from_batch.label(), "{:?}", row.features);
        for (a, b) in single
            .probabilities()
            .iter()
            .zip(from_batch.probabilities())
        {
            assert!((a - b).abs() < 1e-6, "{:?}: {a} vs {b}", row.features);
        }
    }
}

/// A skl2onnx export (`LinearClassifier` + `Normalizer`, `zipmap=False`) of the same estimator, made
/// by an earlier version of train.py with skl2onnx 1.20.0: still served, with the same answers.
#[test]
fn a_skl2onnx_export_of_the_same_estimator_gives_the_same_classes() {
    let reference = reference();
    let model = Model::from_onnx_bytes(include_bytes!("../fixtures/iris-skl2onnx.onnx")).unwrap();
    let worst = largest_difference_from_reference(&model, &reference);
    assert!(worst < 1e-5, "largest probability difference {worst}");
}
