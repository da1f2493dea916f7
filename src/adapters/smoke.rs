//! The smoke test of a colour, through the Kubernetes API server's service proxy (before
//! promotion) or the public URL (after): health and readiness, `/version` (colour and model
//! version), every golden case, a p95 latency budget with zero errors, and optionally agreement
//! with the live colour.
//!
//! Why the service proxy: a colour's load balancer is CloudFront's origin, not CI's. Reaching the
//! Service through `…/services/<name>:http/proxy/…` needs only what `release` already has (the
//! cluster endpoint and its EKS token, RBAC `services/proxy`), so no network path from CI to the
//! load balancer is needed, and a load balancer that only CloudFront may reach stays testable
//! (Kubernetes API reference, Service v1, "Proxy Operations"). The latency it measures includes
//! the API server's hop.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
pub struct Cases {
    pub model: String,
    /// How far a regressor's answer may be from `expect`, relative to max(|expect|, 1).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    pub cases: Vec<Case>,
}

fn default_tolerance() -> f64 {
    1e-6
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub features: Vec<f64>,
    /// The answer `/predict` must give: a class label (a number or a string, as the model's
    /// classes are), a regressor's value, or its values (a list) when it has several targets.
    pub expect: Value,
    #[serde(default)]
    pub row: Option<u64>,
}

/// Whether `got` is the answer `expect` asks for: the same label, or (when either is not an
/// integer) numbers within `tolerance` of max(|expect|, 1), item by item for lists.
pub fn answers(expect: &Value, got: &Value, tolerance: f64) -> bool {
    match (expect, got) {
        (Value::Number(e), Value::Number(g)) => match (e.as_i64(), g.as_i64()) {
            (Some(e), Some(g)) => e == g,
            _ => match (e.as_f64(), g.as_f64()) {
                (Some(e), Some(g)) => (e - g).abs() <= tolerance * e.abs().max(1.0),
                _ => false,
            },
        },
        (Value::Array(e), Value::Array(g)) => {
            e.len() == g.len() && e.iter().zip(g).all(|(e, g)| answers(e, g, tolerance))
        }
        (Value::String(e), Value::String(g)) => e == g,
        _ => false,
    }
}

pub fn load_cases(path: &Path) -> Result<Cases, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cases: Cases =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A smoke test with no golden case would check no answer at all: refuse it.
    if cases.cases.is_empty() {
        return Err(format!(
            "{}: no golden cases (a smoke test needs at least one)",
            path.display()
        ));
    }
    Ok(cases)
}

/// Where a smoke test's requests go.
#[derive(Clone)]
pub enum Base {
    /// A URL reached directly: the public URL, through the edge.
    Url(String),
    /// A colour's Service through the API server's service proxy: `prefix` is the path up to
    /// and including `/proxy`.
    Proxy {
        client: kube::Client,
        prefix: String,
    },
}

impl Base {
    /// `colour`'s Service (its port `http`, in the app's namespace), through the service proxy.
    pub fn proxy(
        client: &kube::Client,
        config: &crate::config::Config,
        colour: crate::plan::colour::Colour,
    ) -> Base {
        Base::Proxy {
            client: client.clone(),
            prefix: format!(
                "/api/v1/namespaces/{}/services/{}:http/proxy",
                config.deploy.namespace,
                crate::adapters::colour::name(config, colour)
            ),
        }
    }

    /// What the step reports as its target.
    pub fn describe(&self) -> String {
        match self {
            Base::Url(u) => u.clone(),
            Base::Proxy { prefix, .. } => format!("API server {prefix}"),
        }
    }
}

/// One answer: HTTP status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("HTTP {}: {e}", self.status))
    }
}

/// Every request the proxy path makes gives up after this, as the direct client does.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` at `base`, with the origin-verify header when `secret` is set and a JSON body
/// when given.
pub async fn call(
    http: &reqwest::Client,
    base: &Base,
    method: http::Method,
    path: &str,
    secret: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    match base {
        Base::Url(url) => {
            let mut req = http.request(method, format!("{url}{path}"));
            if !secret.is_empty() {
                req = req.header("X-Origin-Verify", secret);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
            Ok(Answer { status, body })
        }
        Base::Proxy { client, prefix } => {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("{prefix}{path}"));
            if !secret.is_empty() {
                req = req.header("X-Origin-Verify", secret);
            }
            let bytes = match body {
                Some(b) => {
                    req = req.header(http::header::CONTENT_TYPE, "application/json");
                    b.to_string().into_bytes()
                }
                None => Vec::new(),
            };
            let req = req
                .body(kube::client::Body::from(bytes))
                .map_err(|e| e.to_string())?;
            let answer = async {
                let resp = client.send(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect_bytes()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_vec();
                Ok(Answer { status, body })
            };
            tokio::time::timeout(PROXY_TIMEOUT, answer)
                .await
                .map_err(|_| format!("no answer within {PROXY_TIMEOUT:?}"))?
        }
    }
}

pub struct Target<'a> {
    pub base: Base,
    pub colour: crate::plan::colour::Colour,
    /// Checked against `/version`; empty: not checked (a rollback's colour may serve an older model).
    pub model_version: &'a str,
    /// The sha256 of the model the colour's image ships (its `release.model.sha256` label, the
    /// colour's `release/model-sha256` annotation), checked against `/version`'s `model_sha256`:
    /// a server that loaded another model fails. Empty: not recorded (a colour deployed before
    /// release recorded it).
    pub model_sha256: &'a str,
    /// The origin-verify header's value, sent to a colour's own address. Empty through the public
    /// URL: there the edge must add it, which the smoke test then proves.
    pub secret: &'a str,
}

#[derive(Debug, Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub cases_passed: usize,
    pub cases: usize,
    pub p95_ms: f64,
    pub agreement: Option<f64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}/{} golden cases, p95 {:.1} ms",
            self.cases_passed, self.cases, self.p95_ms
        );
        if let Some(a) = self.agreement {
            s.push_str(&format!(", {:.0}% agreement with live", a * 100.0));
        }
        s
    }
}

/// `GET /version` at `base`, as JSON; an answer other than 2xx is an error.
pub async fn version(http: &reqwest::Client, base: &Base, secret: &str) -> Result<Value, String> {
    let answer = call(http, base, http::Method::GET, "/version", secret, None).await?;
    if !answer.ok() {
        return Err(format!("HTTP {}", answer.status));
    }
    answer.json()
}

/// The 95th percentile of `samples` (nearest rank).
pub fn p95(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((samples.len() as f64) * 0.95).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

async fn predict(
    http: &reqwest::Client,
    t: &Target<'_>,
    features: &[f64],
) -> Result<Value, String> {
    let body = json!({"features": features});
    let answer = call(
        http,
        &t.base,
        http::Method::POST,
        "/predict",
        t.secret,
        Some(&body),
    )
    .await?;
    let value = answer.json()?;
    if !answer.ok() {
        return Err(format!("HTTP {}: {value}", answer.status));
    }
    match value.get("prediction") {
        Some(p) if !p.is_null() => Ok(p.clone()),
        _ => Err(format!("no prediction in {value}")),
    }
}

/// A plain HTTP client whose every request gives up after `timeout` (smoke tests, address and
/// public-URL checks).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

/// What `compare_live` sends to both colours for one golden case: the case itself and four
/// deterministic neighbours (each feature scaled by ±5 % and ±10 %, alternating by position).
pub fn comparison_inputs(features: &[f64]) -> Vec<Vec<f64>> {
    let mut out = vec![features.to_vec()];
    for d in [0.05, -0.05, 0.10, -0.10] {
        out.push(
            features
                .iter()
                .enumerate()
                .map(|(i, f)| f * (1.0 + if i % 2 == 0 { d } else { -d }))
                .collect(),
        );
    }
    out
}

/// Run the smoke test. `progress` gets "cases x/y" as it goes.
pub async fn run(
    t: &Target<'_>,
    cases: &Cases,
    requests: u32,
    p95_budget_ms: u64,
    live: Option<(&Target<'_>, f64)>,
    mut progress: impl FnMut(String),
) -> Report {
    let http = http_client(Duration::from_secs(10));
    let mut r = Report {
        cases: cases.cases.len(),
        ..Report::default()
    };
    probe(&http, t, &mut r).await;
    golden(&http, t, cases, &mut r, &mut progress).await;
    latency(&http, t, cases, requests, p95_budget_ms, &mut r).await;
    if let Some((live, min)) = live {
        compare(&http, t, live, min, cases, &mut r).await;
    }
    r
}

/// `/healthz`, `/readyz`, and the colour and model version `/version` reports.
async fn probe(http: &reqwest::Client, t: &Target<'_>, r: &mut Report) {
    for path in ["/healthz", "/readyz"] {
        match call(http, &t.base, http::Method::GET, path, "", None).await {
            Ok(a) if a.ok() => {}
            Ok(a) => r.failures.push(format!("{path}: HTTP {}", a.status)),
            Err(e) => r.failures.push(format!("{path}: {e}")),
        }
    }
    match version(http, &t.base, "").await {
        Ok(v) => {
            if v["colour"] != t.colour.as_str() {
                r.failures.push(format!(
                    "/version reports colour {} (expected {})",
                    v["colour"], t.colour
                ));
            }
            if !t.model_version.is_empty() && v["model_version"] != t.model_version {
                r.failures.push(format!(
                    "/version reports model version {} (expected {})",
                    v["model_version"], t.model_version
                ));
            }
            if !t.model_sha256.is_empty() && v["model_sha256"] != t.model_sha256 {
                r.failures.push(format!(
                    "model identity: the server loaded the model with sha256 {}, but its image ships {}",
                    v["model_sha256"], t.model_sha256
                ));
            }
        }
        Err(e) => r.failures.push(format!("/version: {e}")),
    }
}

/// Each golden case's answer.
async fn golden(
    http: &reqwest::Client,
    t: &Target<'_>,
    cases: &Cases,
    r: &mut Report,
    progress: &mut impl FnMut(String),
) {
    for (i, case) in cases.cases.iter().enumerate() {
        match predict(http, t, &case.features).await {
            Ok(p) if answers(&case.expect, &p, cases.tolerance) => r.cases_passed += 1,
            Ok(p) => r.failures.push(format!(
                "case {:?}: predicted {p}, expected {}",
                case.name, case.expect
            )),
            Err(e) => r.failures.push(format!("case {:?}: {e}", case.name)),
        }
        progress(format!("cases {}/{}", i + 1, cases.cases.len()));
    }
}

/// `requests` predictions: none may fail, and their p95 latency must be within the budget.
async fn latency(
    http: &reqwest::Client,
    t: &Target<'_>,
    cases: &Cases,
    requests: u32,
    p95_budget_ms: u64,
    r: &mut Report,
) {
    let mut samples = Vec::with_capacity(requests as usize);
    let mut errors = 0;
    for i in 0..requests as usize {
        let case = &cases.cases[i % cases.cases.len().max(1)];
        let start = Instant::now();
        if predict(http, t, &case.features).await.is_err() {
            errors += 1;
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    r.p95_ms = p95(&mut samples);
    if errors > 0 {
        r.failures
            .push(format!("{errors} of {requests} latency requests failed"));
    }
    if r.p95_ms > p95_budget_ms as f64 {
        r.failures.push(format!(
            "p95 latency {:.1} ms is over the {p95_budget_ms} ms budget",
            r.p95_ms
        ));
    }
}

/// The candidate agrees with the live colour on at least `min` of the inputs.
async fn compare(
    http: &reqwest::Client,
    t: &Target<'_>,
    live: &Target<'_>,
    min: f64,
    cases: &Cases,
    r: &mut Report,
) {
    // The golden inputs and nearby ones: on golden inputs a passing candidate agrees with a
    // correct live colour by construction, so the comparison looks around them too.
    let inputs: Vec<Vec<f64>> = cases
        .cases
        .iter()
        .flat_map(|c| comparison_inputs(&c.features))
        .collect();
    let mut agree = 0;
    for features in &inputs {
        if let (Ok(a), Ok(b)) = (
            predict(http, t, features).await,
            predict(http, live, features).await,
        ) {
            agree += usize::from(answers(&b, &a, cases.tolerance));
        }
    }
    let fraction = agree as f64 / inputs.len().max(1) as f64;
    r.agreement = Some(fraction);
    if fraction < min {
        r.failures.push(format!(
            "agrees with the live colour on {:.0}% of {} inputs, below {:.0}%",
            fraction * 100.0,
            inputs.len(),
            min * 100.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-thread HTTP stand-in for a colour on 127.0.0.1: `/healthz`, `/readyz`, `/version`,
    /// and `/predict` answered by `classify`.
    fn stub(colour: &'static str, classify: fn(&[f64]) -> i64) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let answer = if first.starts_with("POST /predict") {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let features: Vec<f64> = v["features"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default();
                    json!({"prediction": classify(&features)})
                } else if first.starts_with("GET /version") {
                    json!({"colour": colour, "model_version": "1"})
                } else {
                    json!({"ok": true})
                };
                let text = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn compare_live_fails_a_candidate_that_disagrees_near_the_golden_cases() {
        // Both colours answer every golden case right; the candidate's boundary sits elsewhere.
        let live = stub("blue", |f| i64::from(f[0] > 5.0));
        let candidate = stub("green", |f| i64::from(f[0] > 5.3));
        let cases = Cases {
            model: "m".into(),
            tolerance: default_tolerance(),
            cases: [(4.0, 0), (6.0, 1), (5.5, 1), (4.8, 0)]
                .iter()
                .map(|(x, k)| Case {
                    name: format!("x={x}"),
                    features: vec![*x, 1.0],
                    expect: json!(k),
                    row: None,
                })
                .collect(),
        };
        let target = |url: String, colour| Target {
            base: Base::Url(url),
            colour,
            model_version: "1",
            model_sha256: "",
            secret: "",
        };
        use crate::plan::colour::Colour;
        let (t, l) = (target(candidate, Colour::Green), target(live, Colour::Blue));
        let report = run(&t, &cases, 5, 5_000, Some((&l, 1.0)), |_| {}).await;
        assert_eq!(report.cases_passed, 4, "{:?}", report.failures);
        let agreement = report.agreement.unwrap();
        assert!(
            agreement < 1.0,
            "the neighbours of 5.5 and 4.8 disagree: {agreement}"
        );
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.contains("agrees with the live colour")),
            "{:?}",
            report.failures
        );
        // A lower bar passes the same pair; no comparison, no agreement figure.
        let lenient = run(&t, &cases, 5, 5_000, Some((&l, agreement)), |_| {}).await;
        assert!(lenient.ok(), "{:?}", lenient.failures);
        assert!(
            run(&t, &cases, 5, 5_000, None, |_| {})
                .await
                .agreement
                .is_none()
        );
    }

    #[test]
    fn an_answer_is_the_same_label_or_a_value_within_the_tolerance() {
        assert!(answers(&json!(2), &json!(2), 1e-6));
        assert!(!answers(&json!(2), &json!(1), 1e-6));
        // A regressor's value written as an integer still takes the tolerance; a string never
        // matches a number.
        assert!(answers(&json!(2), &json!(2.0000001), 1e-6));
        assert!(!answers(&json!("setosa"), &json!(0), 1e-6));
        assert!(!answers(&json!("0"), &json!(0), 1e-6));
        assert!(answers(&json!("setosa"), &json!("setosa"), 1e-6));
        // Values: relative to max(|expect|, 1).
        assert!(answers(&json!(250.0), &json!(250.0002), 1e-6));
        assert!(!answers(&json!(250.0), &json!(250.01), 1e-6));
        assert!(answers(&json!(0.0), &json!(0.0000009), 1e-6));
        assert!(answers(&json!([1.5, -3.0]), &json!([1.5, -3.0]), 1e-6));
        assert!(!answers(&json!([1.5, -3.0]), &json!([1.5]), 1e-6));
        assert!(!answers(&json!([1.5, -3.0]), &json!(1.5), 1e-6));
    }

    #[test]
    fn comparison_inputs_are_the_case_and_four_neighbours() {
        let n = comparison_inputs(&[10.0, 2.0]);
        assert_eq!(n.len(), 5);
        assert_eq!(n[0], [10.0, 2.0]);
        assert!((n[1][0] - 10.5).abs() < 1e-9 && (n[1][1] - 1.9).abs() < 1e-9);
        assert!((n[4][0] - 9.0).abs() < 1e-9 && (n[4][1] - 2.2).abs() < 1e-9);
    }

    #[test]
    fn p95_is_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p95(&mut v), 95.0);
        assert_eq!(p95(&mut [3.0, 1.0, 2.0]), 3.0);
        assert_eq!(p95(&mut []), 0.0);
    }

    #[test]
    fn the_bundled_cases_load() {
        let c = load_cases(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("model-server/smoke/cases.yaml"),
        )
        .unwrap();
        assert_eq!(c.model, "iris");
        assert!(c.cases.len() >= 12 && c.cases.iter().all(|k| k.features.len() == 4));
    }
}
