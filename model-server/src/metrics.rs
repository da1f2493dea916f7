//! Prometheus metrics and the per-request middleware that records them and logs the request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::model::{Label, Prediction};

/// A class as its metric label says it: `2`, `setosa`. prometheus-client 0.24 writes label values
/// as they are, so a class name's backslash, quote or newline is escaped here as the exposition
/// format requires (OpenMetrics, "Escaping"): one odd class name must not break `/metrics`.
fn plain(l: &Label) -> String {
    match l {
        Label::Int(i) => i.to_string(),
        Label::Text(s) => s
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    name: String,
    version: String,
    sha256: String,
    colour: String,
}

/// Everything `/metrics` exposes.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    rows_predicted: Counter,
    /// A classifier's answers by class (the class mix a bake can watch). The label set is the
    /// model's classes, whatever clients send: named classes are created at start (each shown
    /// from 0); a graph that does not name them answers an index below its probability count.
    predictions: Family<ClassLabels, Counter>,
    classes: Vec<(Label, Counter)>,
}

fn latency_histogram() -> Histogram {
    // 25 µs .. ~0.8 s: inference is microseconds; the tail is what a release's smoke test watches.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl Metrics {
    /// `classes`: a classifier's named classes (empty for a regressor or unnamed classes).
    pub fn new(
        model_name: &str,
        model_version: &str,
        sha256: &str,
        colour: &str,
        classes: &[Label],
    ) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        let rows_predicted = Counter::default();
        let info = Family::<ModelLabels, Gauge>::default();
        info.get_or_create(&ModelLabels {
            name: model_name.into(),
            version: model_version.into(),
            sha256: sha256.into(),
            colour: colour.into(),
        })
        .set(1);
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            latency.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        registry.register(
            "model_rows_predicted",
            "Rows classified by the model",
            rows_predicted.clone(),
        );
        let predictions = Family::<ClassLabels, Counter>::default();
        let classes = classes
            .iter()
            .map(|l| {
                let counter = predictions
                    .get_or_create(&ClassLabels { class: plain(l) })
                    .clone();
                (l.clone(), counter)
            })
            .collect();
        registry.register(
            "model_predictions",
            "Rows a classifier answered, by the class it answered",
            predictions.clone(),
        );
        registry.register("model_info", "The model this process serves", info);
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            rows_predicted,
            predictions,
            classes,
        }
    }

    /// Count the rows answered, and a classifier's answers by class.
    pub fn add_predictions(&self, predictions: &[Prediction]) {
        self.rows_predicted.inc_by(predictions.len() as u64);
        for p in predictions {
            let Prediction::Class {
                label,
                probabilities,
            } = p
            else {
                continue;
            };
            match self.classes.iter().find(|(l, _)| l == label) {
                Some((_, counter)) => {
                    counter.inc();
                }
                // Unnamed classes: the graph's index, bounded by its probability count.
                None => {
                    if let Label::Int(i) = label
                        && (0..probabilities.len() as i64).contains(i)
                    {
                        self.predictions
                            .get_or_create(&ClassLabels {
                                class: i.to_string(),
                            })
                            .inc();
                    }
                }
            }
        }
    }

    /// The OpenMetrics text exposition (Prometheus reads it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts and times every request, logs one line per request at debug, and, while draining, asks
/// clients to close their connection after the answer so they reconnect to a pod still in rotation.
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Static label values: no allocation per request, and a bounded label set whatever clients send.
    let route = match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/predict") => "/predict",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/version") => "/version",
        Some("/metrics") => "/metrics",
        Some("/shadow") => "/shadow",
        _ => "unmatched",
    };
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let mut response = next.run(request).await;
    metrics.in_flight.dec();
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    if state.lifecycle.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::debug!(
        method,
        route,
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_name_with_quotes_or_newlines_keeps_the_exposition_valid() {
        let odd = Label::Text("a \"quoted\\ name\nnext".into());
        let m = Metrics::new("m", "1", "h", "blue", std::slice::from_ref(&odd));
        m.add_predictions(&[Prediction::Class {
            label: odd,
            probabilities: vec![1.0],
        }]);
        let text = m.render();
        assert!(
            text.contains(r#"model_predictions_total{class="a \"quoted\\ name\nnext"} 1"#),
            "{text}"
        );
    }
}
