//! `model-server`: the payload `release` ships. An ONNX classifier behind a small axum service whose
//! probes, version report and drain behaviour are what a blue/green release relies on.
//!
//! [`app`] builds the whole HTTP service from an [`AppState`] with no socket, so tests drive it with
//! `tower::ServiceExt::oneshot`; `main` only adds the listener, logging and signal handling.

pub mod api;
pub mod config;
pub mod lifecycle;
pub mod metrics;
mod ml;
pub mod model;
pub mod shadow;

use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::{get, post};

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::model::{BUNDLED_MODEL, BUNDLED_MODEL_NAME, BUNDLED_MODEL_VERSION, Model, ModelError};

/// Reported by `/version`: set `MODEL_SERVER_BUILD` at build time (e.g. `0.1.0+<git sha>`), else
/// the crate version marked `+dev`.
pub const BUILD: &str = match option_env!("MODEL_SERVER_BUILD") {
    Some(build) => build,
    None => concat!(env!("CARGO_PKG_VERSION"), "+dev"),
};

/// What every handler shares.
pub struct AppState {
    pub model: Model,
    pub model_name: String,
    pub model_version: String,
    pub colour: String,
    pub origin_verify_secret: Option<String>,
    /// The value a rotation replaces, accepted too while it lasts.
    pub origin_verify_previous: Option<String>,
    pub body_limit: usize,
    pub max_batch: usize,
    /// `--max-inflight`: the /predict requests in progress, against the limit.
    pub inflight: Option<Inflight>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Metrics,
    /// The shadow tee, when `--shadow-url` is set.
    pub shadow: Option<shadow::Shadow>,
}

/// How many /predict requests are in progress, and how many may be (`--max-inflight`).
pub struct Inflight {
    pub limit: usize,
    /// How long a body may take to arrive while its request holds a place.
    pub body_timeout: std::time::Duration,
    now: AtomicUsize,
}

/// A request's place among those in progress, given back when it is dropped.
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inflight {
    /// A place, or `None` when `limit` requests are in progress already.
    pub fn enter(&self) -> Option<Slot<'_>> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(&self.now))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the model file {path}: {source}")]
    ReadModel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the warm-up inference failed: {0}")]
    WarmUp(#[source] ModelError),
    #[error("--shadow-url: {0}")]
    Shadow(String),
}

impl AppState {
    /// Load the configured model (or the bundled one). The state starts not ready: call
    /// [`AppState::warm_up`] before expecting `/readyz` to answer 200.
    pub fn from_config(config: &Config) -> Result<Self, StartError> {
        let (bytes, default_name, default_version) = match &config.model_path {
            None => (
                BUNDLED_MODEL.to_vec(),
                BUNDLED_MODEL_NAME.to_owned(),
                BUNDLED_MODEL_VERSION.to_owned(),
            ),
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| StartError::ReadModel {
                    path: path.display().to_string(),
                    source,
                })?;
                let stem = path
                    .file_stem()
                    .map_or("model".into(), |s| s.to_string_lossy().into_owned());
                (bytes, stem, "unknown".to_owned())
            }
        };
        let model = Model::from_onnx_bytes(&bytes)?;
        let model_name = config.model_name.clone().unwrap_or(default_name);
        let model_version = config.model_version.clone().unwrap_or(default_version);
        let classes = match model.kind() {
            crate::model::Kind::Classifier { labels: Some(l) } => l.clone(),
            _ => Vec::new(),
        };
        let metrics = Metrics::new(
            &model_name,
            &model_version,
            model.sha256(),
            &config.colour,
            &classes,
        );
        // The copies carry this server's origin-verify value: both colours read the same Secret.
        let shadow = match config.shadow_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) if config.shadow_sample > 0.0 => Some(
                shadow::Shadow::new(
                    url,
                    config.shadow_sample,
                    config.shadow_queue as usize,
                    config
                        .origin_verify_secret
                        .clone()
                        .filter(|s| !s.is_empty()),
                )
                .map_err(StartError::Shadow)?,
            ),
            _ => None,
        };
        Ok(AppState {
            shadow,
            model,
            model_name,
            model_version,
            colour: config.colour.clone(),
            origin_verify_secret: config
                .origin_verify_secret
                .clone()
                .filter(|s| !s.is_empty()),
            origin_verify_previous: config
                .origin_verify_previous
                .clone()
                .filter(|s| !s.is_empty()),
            body_limit: config.body_limit,
            max_batch: config.max_batch as usize,
            inflight: config.max_inflight.map(|limit| Inflight {
                limit: limit.get(),
                body_timeout: std::time::Duration::from_secs_f64(config.body_timeout_seconds),
                now: AtomicUsize::new(0),
            }),
            lifecycle: Arc::new(Lifecycle::default()),
            metrics,
        })
    }

    /// Run one inference on a zero row so the first real request pays no first-run cost, then
    /// declare the server ready.
    pub fn warm_up(&self) -> Result<(), StartError> {
        self.model
            .predict(vec![0.0; self.model.n_features()])
            .map_err(StartError::WarmUp)?;
        self.lifecycle.mark_warmed_up();
        Ok(())
    }
}

/// The whole HTTP service.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/predict", post(api::predict))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/version", get(api::version))
        .route("/metrics", get(api::metrics))
        .route("/shadow", get(api::shadow))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
