//! The model: an ONNX graph optimised by tract once at start, then run per request.
//!
//! Served: one `float32[N, F]` input, and either a classifier's outputs (a label, `int64[N]` or
//! `string[N]`, and `float32[N, C]` probabilities) or a regressor's (`float32[N, T]`, or
//! `float32[N]` for one target). That is what skl2onnx exports for linear and logistic models,
//! trees, forests, extra trees and (histogram) gradient boosting, with `zipmap=False` for
//! classifiers; the tree ensembles run on our own parsers (`ml.rs`), which fix what tract gets
//! wrong with them. The bundled model is four standard ops (MatMul, Add, Softmax, ArgMax; see
//! `train/train.py`). Anything else is refused at load with the output that is the reason.

use serde::Serialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

/// The iris model trained by `model-server/train/train.py`, embedded so the binary alone is the image.
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../model/iris.onnx");
/// Name and version of [`BUNDLED_MODEL`], as written in `model/MODEL_CARD.md`.
pub const BUNDLED_MODEL_NAME: &str = "iris";
pub const BUNDLED_MODEL_VERSION: &str = "1.0.0";

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not an ONNX graph tract can type and optimise.
    #[error("cannot load the ONNX model: {0:#}")]
    Load(#[source] anyhow_free::TractError),
    /// The graph loads but its inputs/outputs are not those of a classifier or a regressor.
    #[error("the model is not a classifier or regressor this server can serve: {0}")]
    Shape(String),
    /// tract failed while running a validated batch (should not happen; reported as a 500).
    #[error("inference failed: {0:#}")]
    Run(#[source] anyhow_free::TractError),
}

/// tract's error type is an `anyhow::Error`; named here so the enum above documents it.
mod anyhow_free {
    pub type TractError = tract_onnx::prelude::TractError;
}

/// A class label: scikit-learn's `classes_` are numbers or strings, and answers keep them so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Label {
    Int(i64),
    Text(String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Int(i) => write!(f, "{i}"),
            Label::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// What the model answers, read from its outputs at load.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Its classes, in the order of the probabilities; `None` when the graph does not name them
    /// (the label output is then whatever the graph computes).
    Classifier {
        labels: Option<Vec<Label>>,
    },
    Regressor {
        targets: usize,
    },
}

/// One row's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Class {
        label: Label,
        probabilities: Vec<f32>,
    },
    /// One value per target.
    Values(Vec<f32>),
}

impl Prediction {
    /// The label of a classifier's answer.
    pub fn label(&self) -> Option<&Label> {
        match self {
            Prediction::Class { label, .. } => Some(label),
            Prediction::Values(_) => None,
        }
    }

    /// A classifier's probabilities (empty for a regressor).
    pub fn probabilities(&self) -> &[f32] {
        match self {
            Prediction::Class { probabilities, .. } => probabilities,
            Prediction::Values(_) => &[],
        }
    }
}

/// Which outputs hold the answer.
#[derive(Debug, Clone, Copy)]
enum Outputs {
    Classifier {
        label: usize,
        probabilities: usize,
        n_classes: usize,
        text: bool,
    },
    Regressor {
        values: usize,
        targets: usize,
    },
}

/// One optimised plan and the run states kept for reuse with it: spawning a state per request costs
/// more than the inference itself. A run pops a state (or spawns one when all are busy) and puts it
/// back afterwards.
struct Runner {
    plan: std::sync::Arc<TypedSimplePlan>,
    idle_states: std::sync::Mutex<Vec<TypedSimpleState>>,
}

impl Runner {
    fn new(model: TypedModel) -> TractResult<Self> {
        Ok(Runner {
            plan: model.into_runnable()?,
            idle_states: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn run(&self, input: Tensor) -> TractResult<TVec<TValue>> {
        let pooled = self.idle_states.lock().ok().and_then(|mut idle| idle.pop());
        let mut state = match pooled {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(tvec!(input.into()))?;
        if let Ok(mut idle) = self.idle_states.lock() {
            idle.push(state);
        }
        Ok(outputs)
    }
}

/// A loaded, optimised model, shared by all requests (tract plans are `Send + Sync`).
///
/// Two plans of the same graph: one with the batch fixed at 1, which tract optimises further (most
/// requests are one row), and one with a symbolic batch for `instances`.
pub struct Model {
    single_row: Runner,
    batch: Runner,
    n_features: usize,
    input_name: String,
    outputs: Outputs,
    kind: Kind,
    sha256: String,
    size_bytes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("n_features", &self.n_features)
            .field("kind", &self.kind)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// The class labels the graph's classifier node names (`classlabels_*` of the ONNX-ML classifier
/// ops), or none when no such node exists; two nodes naming different classes are refused.
fn declared_labels(proto: &tract_onnx::pb::ModelProto) -> Result<Option<Vec<Label>>, ModelError> {
    let mut found: Option<Vec<Label>> = None;
    let Some(graph) = proto.graph.as_ref() else {
        return Ok(None);
    };
    for node in &graph.node {
        for attr in &node.attribute {
            let labels: Vec<Label> = match attr.name.as_str() {
                "classlabels_int64s" | "classlabels_ints" => {
                    attr.ints.iter().copied().map(Label::Int).collect()
                }
                "classlabels_strings" => attr
                    .strings
                    .iter()
                    .map(|s| Label::Text(String::from_utf8_lossy(s).into_owned()))
                    .collect(),
                _ => continue,
            };
            match &found {
                Some(earlier) if *earlier != labels => {
                    return Err(ModelError::Shape(format!(
                        "two classifier nodes name different classes ({} and {})",
                        list(earlier),
                        list(&labels)
                    )));
                }
                _ => found = Some(labels),
            }
        }
    }
    Ok(found)
}

fn list(labels: &[Label]) -> String {
    labels
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of the optimised graph's outputs are the answer, or why there is none.
fn find_outputs(facts: &[TypedFact], declared: &Option<Vec<Label>>) -> Result<Outputs, ModelError> {
    let fixed = |d: &TDim| d.to_usize().ok();
    let label = facts.iter().position(|f| {
        f.rank() == 1 && (f.datum_type == i64::datum_type() || f.datum_type == String::datum_type())
    });
    let scores = facts
        .iter()
        .position(|f| f.datum_type == f32::datum_type() && f.rank() == 2);
    if let Some(label) = label {
        let probabilities = scores.ok_or_else(|| {
            ModelError::Shape(
                "a label output but no float32[N, classes] probabilities output (export classifiers \
                 with skl2onnx's options={\"zipmap\": False})"
                    .into(),
            )
        })?;
        let n_classes = fixed(&facts[probabilities].shape[1]).ok_or_else(|| {
            ModelError::Shape("the class count of the probabilities output is not fixed".into())
        })?;
        let text = facts[label].datum_type == String::datum_type();
        if let Some(labels) = declared {
            if labels.len() != n_classes {
                return Err(ModelError::Shape(format!(
                    "the classifier names {} classes but its probabilities have {n_classes}",
                    labels.len()
                )));
            }
            if text != matches!(labels.first(), Some(Label::Text(_))) {
                return Err(ModelError::Shape(
                    "the label output's type is not that of the classes the classifier names"
                        .into(),
                ));
            }
        } else if text {
            return Err(ModelError::Shape(
                "string labels, but no classifier node names the classes".into(),
            ));
        }
        return Ok(Outputs::Classifier {
            label,
            probabilities,
            n_classes,
            text,
        });
    }
    let values = facts
        .iter()
        .position(|f| f.datum_type == f32::datum_type() && (f.rank() == 1 || f.rank() == 2))
        .ok_or_else(|| {
            ModelError::Shape(format!(
                "no classifier outputs (an int64[N] or string[N] label and float32[N, classes] \
                 probabilities) and no regressor output (float32[N, targets]); found {}",
                facts
                    .iter()
                    .map(|f| format!("{:?}{:?}", f.datum_type, f.shape))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let targets = if facts[values].rank() == 1 {
        1
    } else {
        fixed(&facts[values].shape[1]).ok_or_else(|| {
            ModelError::Shape("the target count of the regressor output is not fixed".into())
        })?
    };
    if facts.len() > 1 {
        return Err(ModelError::Shape(format!(
            "a regressor output and {} other output(s): cannot tell which is the answer",
            facts.len() - 1
        )));
    }
    Ok(Outputs::Regressor { values, targets })
}

impl Model {
    /// Load and optimise an ONNX classifier or regressor from its bytes.
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let onnx = crate::ml::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &*bytes)
            .map_err(ModelError::Load)?;
        let declared = declared_labels(&proto)?;
        let ops = || {
            proto
                .graph
                .iter()
                .flat_map(|g| &g.node)
                .map(|n| n.op_type.as_str())
        };
        if ops().any(|op| op == "ZipMap") {
            return Err(ModelError::Shape(
                "its probabilities are a ZipMap (a list of maps, skl2onnx's default for \
                 classifiers): export with to_onnx(..., options={\"zipmap\": False})"
                    .into(),
            ));
        }
        let mut inference = onnx
            .model_for_proto_model(&proto)
            .map_err(ModelError::Load)?;
        if inference.input_outlets().map_err(ModelError::Load)?.len() != 1 {
            return Err(ModelError::Shape("expected exactly one input".into()));
        }
        let input_name = inference
            .node(inference.input_outlets().map_err(ModelError::Load)?[0].node)
            .name
            .clone();
        let declared_input = inference.input_fact(0).map_err(ModelError::Load)?.clone();
        let n_features = declared_input
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_usize().ok())
            .ok_or_else(|| {
                ModelError::Shape(format!(
                    "input must be float32[N, features] with a fixed feature count, found {declared_input:?}"
                ))
            })?;
        let mut single_row = inference.clone();
        single_row
            .set_input_fact(0, f32::fact([1, n_features]).into())
            .map_err(ModelError::Load)?;
        let single_row = single_row.into_optimized().map_err(ModelError::Load)?;
        let batch = inference.symbols.sym("N");
        inference
            .set_input_fact(0, f32::fact([batch.to_dim(), n_features.to_dim()]).into())
            .map_err(ModelError::Load)?;
        let typed = inference.into_optimized().map_err(ModelError::Load)?;

        let facts: Vec<TypedFact> = typed
            .output_outlets()
            .map_err(ModelError::Load)?
            .iter()
            .map(|o| typed.outlet_fact(*o).cloned())
            .collect::<TractResult<_>>()
            .map_err(ModelError::Load)?;
        let outputs = find_outputs(&facts, &declared)?;
        let kind = match outputs {
            Outputs::Classifier {
                n_classes, text, ..
            } => Kind::Classifier {
                // A graph that names no classes and answers an int64 label (the bundled model's
                // ArgMax) answers the index of the likeliest class.
                labels: declared
                    .or_else(|| (!text).then(|| (0..n_classes as i64).map(Label::Int).collect())),
            },
            Outputs::Regressor { targets, .. } => Kind::Regressor { targets },
        };

        Ok(Model {
            single_row: Runner::new(single_row).map_err(ModelError::Load)?,
            batch: Runner::new(typed).map_err(ModelError::Load)?,
            n_features,
            input_name,
            outputs,
            kind,
            sha256,
            size_bytes: bytes.len(),
        })
    }

    /// Number of features each row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The name of the graph's input.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Classifier (with its classes) or regressor (with its target count).
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// Number of classes (length of each probabilities vector); 0 for a regressor.
    pub fn n_classes(&self) -> usize {
        match self.outputs {
            Outputs::Classifier { n_classes, .. } => n_classes,
            Outputs::Regressor { .. } => 0,
        }
    }

    /// Hex sha256 of the ONNX bytes the model was loaded from.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the ONNX bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Answer `rows.len() / n_features` rows laid out row after row. The caller validates the
    /// length and that every value is finite.
    pub fn predict(&self, rows: Vec<f32>) -> Result<Vec<Prediction>, ModelError> {
        debug_assert!(!rows.is_empty() && rows.len().is_multiple_of(self.n_features));
        let n = rows.len() / self.n_features;
        let input = Tensor::from_shape(&[n, self.n_features], &rows).map_err(ModelError::Run)?;
        let runner = if n == 1 {
            &self.single_row
        } else {
            &self.batch
        };
        let outputs = runner.run(input).map_err(ModelError::Run)?;
        let floats = |i: usize| -> Result<Vec<f32>, ModelError> {
            let plain = outputs[i].try_as_plain_ram().map_err(ModelError::Run)?;
            Ok(plain.as_slice::<f32>().map_err(ModelError::Run)?.to_vec())
        };
        match self.outputs {
            Outputs::Classifier {
                label,
                probabilities,
                n_classes,
                text,
            } => {
                let probabilities = floats(probabilities)?;
                let labels = outputs[label].try_as_plain_ram().map_err(ModelError::Run)?;
                let labels: Vec<Label> = if text {
                    labels
                        .as_slice::<String>()
                        .map_err(ModelError::Run)?
                        .iter()
                        .map(|s| Label::Text(s.clone()))
                        .collect()
                } else {
                    labels
                        .as_slice::<i64>()
                        .map_err(ModelError::Run)?
                        .iter()
                        .map(|i| Label::Int(*i))
                        .collect()
                };
                Ok(labels
                    .into_iter()
                    .zip(probabilities.chunks_exact(n_classes))
                    .map(|(label, probs)| Prediction::Class {
                        label,
                        probabilities: probs.to_vec(),
                    })
                    .collect())
            }
            Outputs::Regressor { values, targets } => Ok(floats(values)?
                .chunks_exact(targets)
                .map(|v| Prediction::Values(v.to_vec()))
                .collect()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_model_is_a_four_feature_three_class_classifier() {
        let model = Model::from_onnx_bytes(BUNDLED_MODEL).unwrap();
        assert_eq!(model.n_features(), 4);
        assert_eq!(model.n_classes(), 3);
        assert_eq!(model.sha256().len(), 64);
    }

    #[test]
    fn a_batch_gives_one_prediction_per_row_with_probabilities_summing_to_one() {
        let model = Model::from_onnx_bytes(BUNDLED_MODEL).unwrap();
        let rows = vec![5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3, 5.9, 3.0, 4.2, 1.5];
        let got = model.predict(rows).unwrap();
        assert_eq!(
            got.iter().map(|p| p.label().cloned()).collect::<Vec<_>>(),
            [0, 2, 1].map(|c| Some(Label::Int(c)))
        );
        for p in got {
            let sum: f32 = p.probabilities().iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
    }

    #[test]
    fn reused_run_states_give_the_same_answers_for_any_batch_size() {
        let model = Model::from_onnx_bytes(BUNDLED_MODEL).unwrap();
        let row = [6.7, 3.0, 5.2, 2.3];
        let first = model.predict(row.to_vec()).unwrap();
        for n in [7, 1, 64, 1, 3] {
            let got = model.predict(row.repeat(n)).unwrap();
            assert_eq!(got.len(), n);
            for p in &got {
                assert_eq!(p.label(), first[0].label());
                for (a, b) in p.probabilities().iter().zip(first[0].probabilities()) {
                    assert!((a - b).abs() < 1e-6);
                }
            }
        }
        // One state per plan, reused across calls and batch sizes.
        assert_eq!(model.single_row.idle_states.lock().unwrap().len(), 1);
        assert_eq!(model.batch.idle_states.lock().unwrap().len(), 1);
    }

    #[test]
    fn garbage_bytes_are_a_load_error_not_a_panic() {
        let err = Model::from_onnx_bytes(b"not an onnx file").unwrap_err();
        assert!(matches!(err, ModelError::Load(_)), "{err}");
    }
}
