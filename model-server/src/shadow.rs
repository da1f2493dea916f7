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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::model::{Label, Prediction};

/// Marks a request as a shadow copy.
pub const SHADOW_HEADER: &str = "x-release-shadow";

/// On the answer to a copy: the sha256 of the model that answered, so that the figures are kept
/// per model, not per version string (which users often leave unchanged).
pub const MODEL_SHA256_HEADER: &str = "x-model-sha256";

/// Bytes the queued copies (bodies and live answers) may hold at most; more are dropped. The
/// pod's memory is the live answer's, not the tee's.
const MAX_QUEUED_BYTES: usize = 4 << 20;

/// The largest candidate answer read.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Distinct (live class, candidate class) pairs kept; more are counted under `(other)`: a
/// candidate whose answers are not class labels cannot grow the figures without bound.
const MAX_CLASS_PAIRS: usize = 64;

/// After a failed connection, copies are skipped (counted) for this long, doubling up to
/// `MAX_PAUSE`: no candidate deployed must not mean a lookup and a connect per sampled request.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How long one copy may take at the candidate.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A regressor's answers agree when each value is within this share of live's (relative to
/// max(|live|, 1)).
pub const VALUE_AGREEMENT: f64 = 0.01;

struct Job {
    body: Bytes,
    live: Vec<Prediction>,
    /// What it holds, against `MAX_QUEUED_BYTES`.
    weight: usize,
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

/// Whether `NO_PROXY` (comma-separated hosts or domain suffixes, `*` for all) exempts `host`.
fn no_proxy(host: &str, list: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    list.split(',').map(str::trim).any(|e| {
        let e = e.trim_start_matches('.');
        !e.is_empty() && (e == "*" || host == e || host.ends_with(&format!(".{e}")))
    })
}

impl Route {
    /// `proxy` and `no_proxy`: the environment's `HTTP_PROXY` and `NO_PROXY`.
    fn new(url: &str, proxy: Option<&str>, no_proxy_list: &str) -> Result<Route, String> {
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
        let proxy = proxy.filter(|p| !p.is_empty() && !no_proxy(&host, no_proxy_list));
        Ok(match proxy {
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
    /// The candidate's colour, model version and model sha256, from its answers.
    candidate: Option<(String, String, String)>,
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

/// What the sender thread takes: the queue, where copies go, the origin-verify value.
type Sender = (mpsc::Receiver<Job>, Route, Option<String>);

/// What the request path and the sender share.
#[derive(Default)]
struct Shared {
    stats: Mutex<Stats>,
    /// Bytes the queued copies hold.
    queued_bytes: AtomicUsize,
    /// Copies skipped while the candidate could not be reached (the pause after a failure).
    skipped: AtomicU64,
}

/// The tee of one server.
pub struct Shadow {
    sample: f64,
    /// Where the spread of sampled requests starts (from the clock): periodic client traffic
    /// does not line up with one fixed phase.
    phase: u64,
    offered: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    tx: mpsc::Sender<Job>,
    started: AtomicBool,
    /// Taken by the first copy, which starts the sender thread.
    rx: Mutex<Option<Sender>>,
    shared: Arc<Shared>,
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
        let env = |k: &str| {
            std::env::var(k)
                .or_else(|_| std::env::var(k.to_lowercase()))
                .ok()
        };
        let route = Route::new(
            url,
            env("HTTP_PROXY").as_deref(),
            &env("NO_PROXY").unwrap_or_default(),
        )?;
        let (tx, rx) = mpsc::channel(queue.clamp(1, 4096));
        let phase = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) % 997);
        Ok(Shadow {
            sample: sample.clamp(0.0, 1.0),
            phase,
            offered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx,
            started: AtomicBool::new(false),
            rx: Mutex::new(Some((rx, route, secret))),
            shared: Default::default(),
        })
    }

    /// Offer an answered request: a copy goes to the queue when it is sampled (exactly `sample`
    /// of the requests, spread evenly from a phase the clock picks) and is not a copy itself.
    /// Never blocks: a full queue, or one holding `MAX_QUEUED_BYTES`, drops the copy (counted)
    /// before anything is cloned.
    pub fn offer(&self, headers: &HeaderMap, body: &Bytes, live: &[Prediction]) {
        if headers.contains_key(SHADOW_HEADER) {
            return;
        }
        let n = (self.offered.fetch_add(1, Ordering::Relaxed) + self.phase) as f64;
        if ((n + 1.0) * self.sample).floor() <= (n * self.sample).floor() {
            return;
        }
        self.start();
        let weight = body.len()
            + live
                .iter()
                .map(|p| match p {
                    Prediction::Class { probabilities, .. } => 48 + 4 * probabilities.len(),
                    Prediction::Values(v) => 32 + 4 * v.len(),
                })
                .sum::<usize>();
        let queued = &self.shared.queued_bytes;
        if queued.fetch_add(weight, Ordering::Relaxed) + weight > MAX_QUEUED_BYTES {
            queued.fetch_sub(weight, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(permit) = self.tx.try_reserve() else {
            queued.fetch_sub(weight, Ordering::Relaxed);
            if self.tx.is_closed() {
                let mut s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
                s.failed += 1;
                s.last_failure = Some("the tee's sender stopped".into());
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        permit.send(Job {
            body: body.clone(),
            live: live.to_vec(),
            weight,
        });
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The sender runs on a thread of its own with its own runtime: sending copies and reading
    /// the candidate's answers never takes a turn from the threads answering requests (a colour
    /// runs one).
    fn start(&self) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let Some((rx, route, secret)) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        self.started.store(true, Ordering::Relaxed);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("shadow-tee".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(send_copies(rx, route, secret, shared)),
                    Err(e) => tracing::warn!(error = %e, "the shadow tee could not start"),
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "the shadow tee could not start");
        }
    }

    /// `GET /shadow`: the figures, no request content.
    pub fn report(&self) -> Value {
        let s = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        let classes: Vec<Value> = s
            .classes
            .iter()
            .map(|((live, cand), rows)| json!({"live": live, "candidate": cand, "rows": rows}))
            .collect();
        json!({
            "sample": self.sample,
            "candidate": s.candidate.as_ref().map(|(c, v, h)| json!({"colour": c, "model_version": v, "model_sha256": h})),
            "offered": self.offered.load(Ordering::Relaxed),
            "queued": self.sent.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "skipped": self.shared.skipped.load(Ordering::Relaxed),
            "failed": s.failed,
            "last_failure": s.last_failure,
            "compared": s.compared,
            "agreed": s.agreed,
            "agreement": (s.compared > 0).then(|| s.agreed as f64 / s.compared as f64),
            "classes": classes,
            "max_shift": s.max_shift,
            "mean_shift": (s.shifted_rows > 0).then(|| s.sum_shift / s.shifted_rows as f64),
            "shifted_rows": s.shifted_rows,
        })
    }
}

/// Why a copy got no comparable answer; `transport`: the connection is not to be used again.
struct Failed {
    transport: bool,
    why: String,
}

fn transport(why: String) -> Failed {
    Failed {
        transport: true,
        why,
    }
}

/// The sender: one copy at a time over one kept-alive connection (made again after a transport
/// error). After a connection fails, copies are skipped (counted) for a pause that doubles up to
/// `MAX_PAUSE`, and the first answer ends it.
async fn send_copies(
    mut rx: mpsc::Receiver<Job>,
    route: Route,
    secret: Option<String>,
    shared: Arc<Shared>,
) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut pause = FIRST_PAUSE;
    let mut paused_until: Option<Instant> = None;
    while let Some(job) = rx.recv().await {
        shared.queued_bytes.fetch_sub(job.weight, Ordering::Relaxed);
        if paused_until.is_some_and(|t| Instant::now() < t) {
            shared.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let answer = tokio::time::timeout(TIMEOUT, send(&mut conn, &route, &secret, job.body))
            .await
            .unwrap_or_else(|_| Err(transport(format!("no answer within {TIMEOUT:?}"))));
        let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok((v, sha)) => {
                paused_until = None;
                pause = FIRST_PAUSE;
                compare(&mut s, &job.live, &v, &sha);
            }
            Err(f) => {
                if f.transport {
                    conn = None;
                    paused_until = Some(Instant::now() + pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                s.failed += 1;
                s.last_failure = Some(f.why);
            }
        }
    }
}

/// Send one copy; its answer as JSON, and the `MODEL_SHA256_HEADER` the candidate sent.
async fn send(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    route: &Route,
    secret: &Option<String>,
    body: Bytes,
) -> Result<(Value, String), Failed> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&route.connect)
            .await
            .map_err(|e| transport(format!("cannot connect to {}: {e}", route.connect)))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| transport(format!("HTTP handshake with {}: {e}", route.connect)))?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().expect("connected above");
    sender.ready().await.map_err(|e| transport(e.to_string()))?;
    let mut request = Request::post(&route.target)
        .header(header::HOST, &route.host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SHADOW_HEADER, "1");
    if let Some(s) = secret {
        request = request.header(crate::api::ORIGIN_VERIFY_HEADER, s);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| transport(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = response.status();
    let sha = response
        .headers()
        .get(MODEL_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| transport(format!("reading the candidate's answer: {e}")))?
        .to_bytes();
    let answered = |why: String| Failed {
        transport: false,
        why,
    };
    if !status.is_success() {
        return Err(answered(format!(
            "the candidate answered HTTP {}",
            status.as_u16()
        )));
    }
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| answered(format!("the candidate's answer is not JSON: {e}")))?;
    Ok((v, sha))
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
fn compare(s: &mut Stats, live: &[Prediction], answer: &Value, sha256: &str) {
    let candidate = (
        plain(&answer["colour"]),
        plain(&answer["model_version"]),
        sha256.to_string(),
    );
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
                let mut key = (plain(&l), plain(&theirs));
                if s.classes.len() >= MAX_CLASS_PAIRS && !s.classes.contains_key(&key) {
                    key = ("(other)".into(), "(other)".into());
                }
                *s.classes.entry(key).or_default() += 1;
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
        compare(
            &mut s,
            &[class(0, &[0.9, 0.1])],
            &answer(0, [0.8, 0.2]),
            "h1",
        );
        compare(
            &mut s,
            &[class(1, &[0.4, 0.6])],
            &answer(0, [0.6, 0.4]),
            "h1",
        );
        assert_eq!((s.compared, s.agreed), (2, 1));
        assert_eq!(s.classes[&("0".into(), "0".into())], 1);
        assert_eq!(s.classes[&("1".into(), "0".into())], 1);
        assert!((s.max_shift - 0.2).abs() < 1e-6, "{}", s.max_shift);
        // Another model under the same version string starts the figures again.
        let other = json!({"prediction": 1, "colour": "green", "model_version": "2"});
        compare(&mut s, &[class(1, &[0.4, 0.6])], &other, "h2");
        assert_eq!((s.compared, s.agreed), (1, 1));
        // A batch: row by row.
        let batch = json!({"predictions": [1, 0], "colour": "green", "model_version": "2"});
        compare(&mut s, &[class(1, &[]), class(1, &[])], &batch, "h2");
        assert_eq!((s.compared, s.agreed), (3, 2));
        // Answers that are not classes cannot grow the figures without bound.
        for i in 0..1000 {
            let odd = json!({"prediction": i, "colour": "green", "model_version": "2"});
            compare(&mut s, &[class(1, &[])], &odd, "h2");
        }
        assert_eq!(
            s.classes.len(),
            MAX_CLASS_PAIRS + 1,
            "{:?}",
            s.classes.keys()
        );
    }

    #[test]
    fn a_regressor_agrees_within_one_percent() {
        let mut s = Stats::default();
        let live = [Prediction::Values(vec![100.0])];
        compare(
            &mut s,
            &live,
            &json!({"prediction": 100.5, "colour": "g", "model_version": "1"}),
            "h",
        );
        compare(
            &mut s,
            &live,
            &json!({"prediction": 102.0, "colour": "g", "model_version": "1"}),
            "h",
        );
        assert_eq!((s.compared, s.agreed), (2, 1));
        assert!((s.max_shift - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_proxy_gets_the_absolute_uri() {
        let direct = Route::new("http://iris-green.models.svc:80", None, "").unwrap();
        assert_eq!(
            (direct.connect.as_str(), direct.target.as_str()),
            ("iris-green.models.svc:80", "/predict")
        );
        let proxied = Route::new(
            "http://iris-green.models.svc",
            Some("http://127.0.0.1:3128"),
            "",
        )
        .unwrap();
        assert_eq!(
            (proxied.connect.as_str(), proxied.target.as_str()),
            ("127.0.0.1:3128", "http://iris-green.models.svc:80/predict")
        );
        assert!(Route::new("https://x", None, "").is_err());
        // NO_PROXY: a host or a domain suffix goes direct.
        for list in [
            "svc",
            ".models.svc",
            "localhost, iris-green.models.svc",
            "*",
        ] {
            let r = Route::new("http://iris-green.models.svc", Some("http://p:1"), list).unwrap();
            assert_eq!(r.connect, "iris-green.models.svc:80", "{list}");
        }
        let r = Route::new(
            "http://iris-green.models.svc",
            Some("http://p:1"),
            "example.com",
        )
        .unwrap();
        assert_eq!(r.connect, "p:1");
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
