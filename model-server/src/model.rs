//! The classifier: an ONNX graph optimised by tract once at start, then run per request.
//!
//! Any ONNX classifier shaped like the bundled one works: one `float32[N, F]` input, an `int64[N]`
//! label output and a `float32[N, C]` probabilities output. The bundled model is four standard ops
//! (MatMul, Add, Softmax, ArgMax; see `train/train.py`); a skl2onnx export with `zipmap=False` has
//! the same outputs and is served too, only slower (more ops).

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
    /// The graph loads but its inputs/outputs are not those of a classifier.
    #[error("the model is not a classifier this server can serve: {0}")]
    Shape(String),
    /// tract failed while running a validated batch (should not happen; reported as a 500).
    #[error("inference failed: {0:#}")]
    Run(#[source] anyhow_free::TractError),
}

/// tract's error type is an `anyhow::Error`; named here so the enum above documents it.
mod anyhow_free {
    pub type TractError = tract_onnx::prelude::TractError;
}

/// One row's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub class: i64,
    pub probabilities: Vec<f32>,
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

/// A loaded, optimised classifier, shared by all requests (tract plans are `Send + Sync`).
///
/// Two plans of the same graph: one with the batch fixed at 1, which tract optimises further (most
/// requests are one row), and one with a symbolic batch for `instances`.
pub struct Model {
    single_row: Runner,
    batch: Runner,
    n_features: usize,
    n_classes: usize,
    label_output: usize,
    probabilities_output: usize,
    sha256: String,
    size_bytes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("n_features", &self.n_features)
            .field("n_classes", &self.n_classes)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Load and optimise an ONNX classifier from its bytes.
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let mut inference = tract_onnx::onnx()
            .model_for_read(&mut &*bytes)
            .map_err(ModelError::Load)?;
        if inference.input_outlets().map_err(ModelError::Load)?.len() != 1 {
            return Err(ModelError::Shape("expected exactly one input".into()));
        }
        let declared = inference.input_fact(0).map_err(ModelError::Load)?.clone();
        let n_features = declared
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_usize().ok())
            .ok_or_else(|| {
                ModelError::Shape(format!(
                    "input must be float32[N, features] with a fixed feature count, found {declared:?}"
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

        let outputs: Vec<TypedFact> = typed
            .output_outlets()
            .map_err(ModelError::Load)?
            .iter()
            .map(|o| typed.outlet_fact(*o).cloned())
            .collect::<TractResult<_>>()
            .map_err(ModelError::Load)?;
        let label_output = outputs
            .iter()
            .position(|f| f.datum_type == i64::datum_type() && f.rank() == 1)
            .ok_or_else(|| ModelError::Shape("no int64[N] label output".into()))?;
        let probabilities_output = outputs
            .iter()
            .position(|f| f.datum_type == f32::datum_type() && f.rank() == 2)
            .ok_or_else(|| {
                ModelError::Shape("no float32[N, classes] probabilities output".into())
            })?;
        let n_classes = outputs[probabilities_output].shape[1]
            .to_usize()
            .map_err(|_| {
                ModelError::Shape("the class count of the probabilities output is not fixed".into())
            })?;

        Ok(Model {
            single_row: Runner::new(single_row).map_err(ModelError::Load)?,
            batch: Runner::new(typed).map_err(ModelError::Load)?,
            n_features,
            n_classes,
            label_output,
            probabilities_output,
            sha256,
            size_bytes: bytes.len(),
        })
    }

    /// Number of features each row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of classes (length of each probabilities vector).
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Hex sha256 of the ONNX bytes the model was loaded from.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the ONNX bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Classify `rows.len() / n_features` rows laid out row after row. The caller validates the
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
        let labels = outputs[self.label_output]
            .try_as_plain_ram()
            .map_err(ModelError::Run)?;
        let labels = labels.as_slice::<i64>().map_err(ModelError::Run)?;
        let probabilities = outputs[self.probabilities_output]
            .try_as_plain_ram()
            .map_err(ModelError::Run)?;
        let probabilities = probabilities.as_slice::<f32>().map_err(ModelError::Run)?;
        Ok(labels
            .iter()
            .zip(probabilities.chunks_exact(self.n_classes))
            .map(|(class, probs)| Prediction {
                class: *class,
                probabilities: probs.to_vec(),
            })
            .collect())
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
            got.iter().map(|p| p.class).collect::<Vec<_>>(),
            vec![0, 2, 1]
        );
        for p in got {
            let sum: f32 = p.probabilities.iter().sum();
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
                assert_eq!(p.class, first[0].class);
                for (a, b) in p.probabilities.iter().zip(&first[0].probabilities) {
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
