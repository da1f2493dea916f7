//! The shadow tee: a sample of the real `POST /predict` requests this colour answers is sent again
//! to another colour (the candidate), off the response path, and only aggregates of how the two
//! answers compare are kept: rows compared, label agreement, the live-to-candidate class matrix,
//! the largest and mean probability (or value) shift. Request bodies are never logged or stored
//! beyond the bounded queue that carries them to the sender.
//!
//! The live answer never waits for the tee: a sampled request is offered to a bounded queue
//! (`try_send`; dropped and counted when it is full) and one task sends the queue's requests, one
//! at a time, each with a timeout. A request carrying [`SHADOW_HEADER`] is itself a copy and is
//! never sent on, so two colours teeing to each other cannot loop.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::model::{Label, Prediction};

/// Marks a request as a shadow copy.
pub const SHADOW_HEADER: &str = "x-release-shadow";

/// How long one copy may take at the candidate.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A regressor's answers agree when each value is within this share of live's (relative to
/// max(|live|, 1)).
pub const VALUE_AGREEMENT: f64 = 0.01;

struct Job {
    body: Bytes,
    live: Vec<Prediction>,
}

/// Where copies go and how: the target's address, and the proxy to reach it through when the
/// environment names one (`HTTP_PROXY`, as every HTTP client honours it).
#[derive(Clone, Debug)]
struct Route {
    /// `host:port` to connect to.
    connect: String,
    /// The request target: `/predict`, or the absolute URI through a proxy.
    target: String,
    host: String,
}

impl Route {
    fn new(url: &str, proxy: Option<&str>) -> Result<Route, String> {
        let authority = |u: &str| -> Result<String, String> {
            let uri: Uri = u.parse().map_err(|e| format!("`{u}` is not a URL: {e}"))?;
            if uri.scheme_str() != Some("http") {
                return Err(format!("`{u}`: only http:// is supported"));
            }
            let host = uri.host().ok_or_else(|| format!("`{u}` has no host"))?;
            Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
        };
        let host = authority(url)?;
        let base = format!("http://{host}");
        Ok(match proxy.filter(|p| !p.is_empty()) {
            Some(p) => Route {
                connect: authority(p)?,
                target: format!("{base}/predict"),
                host,
            },
            None => Route {
                connect: host.clone(),
                target: "/predict".into(),
                host,
            },
        })
    }
}

/// What has been seen of the current candidate (reset when another one answers).
#[derive(Default)]
struct Stats {
    /// The candidate's colour and model version, from its answers.
    candidate: Option<(String, String)>,
    compared: u64,
    agreed: u64,
    /// (live's class, candidate's class) -> rows.
    classes: BTreeMap<(String, String), u64>,
    max_shift: f64,
    sum_shift: f64,
    shifted_rows: u64,
    /// Copies that got no comparable answer (unreachable, an error, a timeout), and the last reason.
    failed: u64,
    last_failure: Option<String>,
}

/// What the sender task takes: the queue, where copies go, the origin-verify value.
type Sender = (mpsc::Receiver<Job>, Route, Option<String>);

/// The tee of one server.
pub struct Shadow {
    url: String,
    sample: f64,
    offered: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    tx: mpsc::Sender<Job>,
    /// Taken (and the sender task spawned) by the first copy, inside the server's runtime.
    rx: Mutex<Option<Sender>>,
    stats: std::sync::Arc<Mutex<Stats>>,
}

impl Shadow {
    /// A tee of `sample` (0..=1) of the requests to `url` (`http://host:port`), at most `queue`
    /// waiting; `secret`: the origin-verify value the target requires.
    pub fn new(
        url: &str,
        sample: f64,
        queue: usize,
        secret: Option<String>,
    ) -> Result<Shadow, String> {
        let proxy = std::env::var("HTTP_PROXY")
            .or_else(|_| std::env::var("http_proxy"))
            .ok();
        let route = Route::new(url, proxy.as_deref())?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        Ok(Shadow {
            url: url.to_string(),
            sample: sample.clamp(0.0, 1.0),
            offered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx,
            rx: Mutex::new(Some((rx, route, secret))),
            stats: Default::default(),
        })
    }

    /// Offer an answered request: a copy goes to the queue when it is sampled (exactly `sample`
    /// of the requests, spread evenly: no random draw) and is not a copy itself. Never blocks.
    pub fn offer(&self, headers: &HeaderMap, body: &Bytes, live: &[Prediction]) {
        if headers.contains_key(SHADOW_HEADER) {
            return;
        }
        let n = self.offered.fetch_add(1, Ordering::Relaxed) as f64;
        if ((n + 1.0) * self.sample).floor() <= (n * self.sample).floor() {
            return;
        }
        self.start();
        let job = Job {
            body: body.clone(),
            live: live.to_vec(),
        };
        match self.tx.try_send(job) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn start(&self) {
        let Some((rx, route, secret)) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        tokio::spawn(send_copies(rx, route, secret, self.stats.clone()));
    }

    /// `GET /shadow`: the figures, no request content.
    pub fn report(&self) -> Value {
        let s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let classes: Vec<Value> = s
            .classes
            .iter()
            .map(|((live, cand), rows)| json!({"live": live, "candidate": cand, "rows": rows}))
            .collect();
        json!({
            "target": self.url,
            "sample": self.sample,
            "candidate": s.candidate.as_ref().map(|(c, v)| json!({"colour": c, "model_version": v})),
            "offered": self.offered.load(Ordering::Relaxed),
            "queued": self.sent.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "failed": s.failed,
            "last_failure": s.last_failure,
            "compared": s.compared,
            "agreed": s.agreed,
            "agreement": (s.compared > 0).then(|| s.agreed as f64 / s.compared as f64),
            "classes": classes,
            "max_shift": s.max_shift,
            "mean_shift": (s.shifted_rows > 0).then(|| s.sum_shift / s.shifted_rows as f64),
        })
    }
}

/// The sender task: one copy at a time over one kept-alive connection (made again after an error).
async fn send_copies(
    mut rx: mpsc::Receiver<Job>,
    route: Route,
    secret: Option<String>,
    stats: std::sync::Arc<Mutex<Stats>>,
) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while let Some(job) = rx.recv().await {
        let answer =
            tokio::time::timeout(TIMEOUT, send(&mut conn, &route, &secret, job.body)).await;
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(Ok(v)) => compare(&mut s, &job.live, &v),
            Ok(Err(e)) => {
                conn = None;
                s.failed += 1;
                s.last_failure = Some(e);
            }
            Err(_) => {
                conn = None;
                s.failed += 1;
                s.last_failure = Some(format!("no answer within {TIMEOUT:?}"));
            }
        }
    }
}

async fn send(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    route: &Route,
    secret: &Option<String>,
    body: Bytes,
) -> Result<Value, String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&route.connect)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", route.connect))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", route.connect))?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().expect("connected above");
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut request = Request::post(&route.target)
        .header(header::HOST, &route.host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SHADOW_HEADER, "1");
    if let Some(s) = secret {
        request = request.header(crate::api::ORIGIN_VERIFY_HEADER, s);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("the candidate answered HTTP {}", status.as_u16()));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the candidate's answer is not JSON: {e}"))
}

/// A label as the class matrix names it.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A number of the candidate's JSON as the f32 it was before it was written out, so that the
/// same answer shifts by 0.
fn as_f32(v: f64) -> f64 {
    f64::from(v as f32)
}

fn label_json(l: &Label) -> Value {
    match l {
        Label::Int(i) => json!(i),
        Label::Text(s) => json!(s),
    }
}

/// Fold one answer pair into the figures: `live` as this server answered, `answer` the
/// candidate's JSON (`prediction`/`probabilities` for one row, `predictions` for a batch).
fn compare(s: &mut Stats, live: &[Prediction], answer: &Value) {
    let candidate = (plain(&answer["colour"]), plain(&answer["model_version"]));
    if s.candidate.as_ref() != Some(&candidate) {
        // Another candidate: what was seen of the one before says nothing of it.
        *s = Stats {
            candidate: Some(candidate),
            ..Stats::default()
        };
    }
    let rows: Vec<(Value, Option<Value>)> = match answer.get("predictions") {
        Some(Value::Array(p)) => p
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), answer["probabilities"].get(i).cloned()))
            .collect(),
        _ => vec![(
            answer["prediction"].clone(),
            answer.get("probabilities").cloned(),
        )],
    };
    if rows.len() != live.len() {
        s.failed += 1;
        s.last_failure = Some(format!(
            "the candidate answered {} rows for {}",
            rows.len(),
            live.len()
        ));
        return;
    }
    for (mine, (theirs, probs)) in live.iter().zip(rows) {
        s.compared += 1;
        match mine {
            Prediction::Class {
                label,
                probabilities,
            } => {
                let l = label_json(label);
                s.agreed += u64::from(l == theirs);
                *s.classes.entry((plain(&l), plain(&theirs))).or_default() += 1;
                let theirs: Vec<f64> = probs
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(|p| p.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                if theirs.len() == probabilities.len() {
                    let shift = probabilities
                        .iter()
                        .zip(&theirs)
                        .map(|(a, b)| (f64::from(*a) - as_f32(*b)).abs())
                        .fold(0.0, f64::max);
                    s.max_shift = s.max_shift.max(shift);
                    s.sum_shift += shift;
                    s.shifted_rows += 1;
                }
            }
            Prediction::Values(values) => {
                let theirs: Vec<f64> = match &theirs {
                    Value::Array(v) => v.iter().filter_map(Value::as_f64).collect(),
                    v => v.as_f64().into_iter().collect(),
                };
                if theirs.len() != values.len() {
                    continue;
                }
                let mut agree = true;
                let mut shift = 0.0f64;
                for (a, b) in values.iter().zip(&theirs) {
                    let a = f64::from(*a);
                    let d = (a - as_f32(*b)).abs();
                    agree &= d <= VALUE_AGREEMENT * a.abs().max(1.0);
                    shift = shift.max(d);
                }
                s.agreed += u64::from(agree);
                s.max_shift = s.max_shift.max(shift);
                s.sum_shift += shift;
                s.shifted_rows += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(l: i64, p: &[f32]) -> Prediction {
        Prediction::Class {
            label: Label::Int(l),
            probabilities: p.to_vec(),
        }
    }

    #[test]
    fn answers_fold_into_agreement_a_class_matrix_and_shifts() {
        let mut s = Stats::default();
        let answer = |p: i64, probs: [f64; 2]| json!({"prediction": p, "probabilities": probs, "colour": "green", "model_version": "2"});
        compare(&mut s, &[class(0, &[0.9, 0.1])], &answer(0, [0.8, 0.2]));
        compare(&mut s, &[class(1, &[0.4, 0.6])], &answer(0, [0.6, 0.4]));
        assert_eq!((s.compared, s.agreed), (2, 1));
        assert_eq!(s.classes[&("0".into(), "0".into())], 1);
        assert_eq!(s.classes[&("1".into(), "0".into())], 1);
        assert!((s.max_shift - 0.2).abs() < 1e-6, "{}", s.max_shift);
        // Another candidate starts the figures again.
        let other = json!({"prediction": 1, "colour": "green", "model_version": "3"});
        compare(&mut s, &[class(1, &[0.4, 0.6])], &other);
        assert_eq!((s.compared, s.agreed), (1, 1));
        // A batch: row by row.
        let batch = json!({"predictions": [1, 0], "colour": "green", "model_version": "3"});
        compare(&mut s, &[class(1, &[]), class(1, &[])], &batch);
        assert_eq!((s.compared, s.agreed), (3, 2));
    }

    #[test]
    fn a_regressor_agrees_within_one_percent() {
        let mut s = Stats::default();
        let live = [Prediction::Values(vec![100.0])];
        compare(
            &mut s,
            &live,
            &json!({"prediction": 100.5, "colour": "g", "model_version": "1"}),
        );
        compare(
            &mut s,
            &live,
            &json!({"prediction": 102.0, "colour": "g", "model_version": "1"}),
        );
        assert_eq!((s.compared, s.agreed), (2, 1));
        assert!((s.max_shift - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_proxy_gets_the_absolute_uri() {
        let direct = Route::new("http://iris-green.models.svc:80", None).unwrap();
        assert_eq!(
            (direct.connect.as_str(), direct.target.as_str()),
            ("iris-green.models.svc:80", "/predict")
        );
        let proxied = Route::new(
            "http://iris-green.models.svc",
            Some("http://127.0.0.1:3128"),
        )
        .unwrap();
        assert_eq!(
            (proxied.connect.as_str(), proxied.target.as_str()),
            ("127.0.0.1:3128", "http://iris-green.models.svc:80/predict")
        );
        assert!(Route::new("https://x", None).is_err());
    }

    #[test]
    fn exactly_the_sample_is_offered_and_copies_are_not_copied_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Nothing listens there: copies fail, which never touches the caller.
            let shadow = Shadow::new("http://127.0.0.1:9", 0.05, 1000, None).unwrap();
            let body = Bytes::from_static(b"{}");
            for _ in 0..200 {
                shadow.offer(&HeaderMap::new(), &body, &[class(0, &[1.0])]);
            }
            let mut copy = HeaderMap::new();
            copy.insert(SHADOW_HEADER, "1".parse().unwrap());
            shadow.offer(&copy, &body, &[class(0, &[1.0])]);
            let r = shadow.report();
            assert_eq!(
                (r["offered"].clone(), r["queued"].clone()),
                (json!(200), json!(10))
            );
        });
    }
}
