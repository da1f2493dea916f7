//! Flags, each with a `MODEL_SERVER_*` environment equivalent: Kubernetes sets env, people type flags.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Parser)]
#[command(
    name = "model-server",
    version,
    about = "Serve an ONNX classifier over HTTP, made to be released blue/green",
    long_about = "Serve an ONNX classifier over HTTP: POST /predict, GET /healthz, /readyz, /version, /metrics.\n\
                  Without --model-path the bundled iris classifier is served.\n\
                  On SIGTERM /readyz turns 503 at once, requests keep being served for the drain period, \
                  in-flight requests finish, then the process exits 0."
)]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "MODEL_SERVER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind (0.0.0.0 in a container; 127.0.0.1 for local use).
    #[arg(long, env = "MODEL_SERVER_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// ONNX classifier to serve instead of the bundled iris model.
    #[arg(long, env = "MODEL_SERVER_MODEL_PATH")]
    pub model_path: Option<PathBuf>,

    /// Model name reported by /version [default: iris for the bundled model, else the file stem].
    #[arg(long, env = "MODEL_SERVER_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Model version reported by /version and /predict [default: the bundled model's, else "unknown"].
    #[arg(long, env = "MODEL_SERVER_MODEL_VERSION")]
    pub model_version: Option<String>,

    /// Deployment colour this instance belongs to (blue or green under `release`), reported in answers.
    #[arg(long, env = "MODEL_SERVER_COLOUR", default_value = "none")]
    pub colour: String,

    /// When set, POST /predict requires the X-Origin-Verify header to equal it (CloudFront adds it;
    /// direct hits on the load balancer get 403). Probes and /metrics are exempt. Never logged.
    #[arg(
        long,
        env = "MODEL_SERVER_ORIGIN_VERIFY_SECRET",
        hide_env_values = true
    )]
    pub origin_verify_secret: Option<String>,

    /// During an origin-secret rotation, the value being replaced: accepted as well as the
    /// secret until the edge sends only the new one (`release rotate-origin-secret`). Never logged.
    #[arg(
        long,
        env = "MODEL_SERVER_ORIGIN_VERIFY_PREVIOUS",
        hide_env_values = true
    )]
    pub origin_verify_previous: Option<String>,

    /// Seconds to keep serving after SIGTERM (with /readyz at 503) before closing the listener.
    #[arg(long, env = "MODEL_SERVER_DRAIN_SECONDS", default_value_t = 15.0, value_parser = parse_seconds)]
    pub drain_seconds: f64,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "MODEL_SERVER_BODY_LIMIT", default_value_t = 256 * 1024)]
    pub body_limit: usize,

    /// Largest number of rows in one batch request; more gets 422.
    #[arg(long, env = "MODEL_SERVER_MAX_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// At most this many /predict requests in progress at once (counted from after the origin
    /// check, the body's upload included); more are answered 503 `overloaded` with
    /// `Retry-After: 1` at once rather than queued; a body that takes longer than
    /// --body-timeout-seconds to arrive is then answered 408 `body_timeout`, its place given back
    /// [default: no limit].
    #[arg(long, env = "MODEL_SERVER_MAX_INFLIGHT")]
    pub max_inflight: Option<std::num::NonZeroUsize>,

    /// With --max-inflight: how long a /predict body may take to arrive while it holds a place.
    #[arg(long, env = "MODEL_SERVER_BODY_TIMEOUT_SECONDS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub body_timeout_seconds: f64,

    /// Threads serving requests [default: the CPUs available]. One is best when a single core is
    /// given to the server (the benchmark's load generator takes the other).
    #[arg(long, env = "MODEL_SERVER_WORKERS")]
    pub workers: Option<std::num::NonZeroUsize>,

    /// Send a sample of the answered /predict requests to this server as well (`http://host:port`,
    /// the candidate colour's Service), off the response path, and keep only how its answers
    /// compare (GET /shadow). Through `HTTP_PROXY` when it is set.
    #[arg(long, env = "MODEL_SERVER_SHADOW_URL")]
    pub shadow_url: Option<String>,

    /// The share of /predict requests copied to --shadow-url (0 to 1).
    #[arg(long, env = "MODEL_SERVER_SHADOW_SAMPLE", default_value_t = 0.05, value_parser = parse_share)]
    pub shadow_sample: f64,

    /// Copies waiting to be sent at most; more are dropped (and counted), never waited for.
    #[arg(long, env = "MODEL_SERVER_SHADOW_QUEUE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shadow_queue: u32,

    /// Log line format.
    #[arg(long, env = "MODEL_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax); `debug` logs one line per request.
    #[arg(long, env = "MODEL_SERVER_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain_seconds)
    }

    pub fn worker_threads(&self) -> usize {
        self.workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, std::num::NonZeroUsize::get)
    }
}

/// Hand-written so the secret can never reach a log line through `{:?}`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("model_path", &self.model_path)
            .field("model_name", &self.model_name)
            .field("model_version", &self.model_version)
            .field("colour", &self.colour)
            .field(
                "origin_verify_secret",
                &self.origin_verify_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "origin_verify_previous",
                &self.origin_verify_previous.as_ref().map(|_| "<redacted>"),
            )
            .field("drain_seconds", &self.drain_seconds)
            .field("body_limit", &self.body_limit)
            .field("max_batch", &self.max_batch)
            .field("max_inflight", &self.max_inflight)
            .field("body_timeout_seconds", &self.body_timeout_seconds)
            .field("workers", &self.workers)
            .field("shadow_url", &self.shadow_url)
            .field("shadow_sample", &self.shadow_sample)
            .field("shadow_queue", &self.shadow_queue)
            .field("log_format", &self.log_format)
            .field("log", &self.log)
            .finish()
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be between 0 and 3600 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let config = Config::parse_from(["model-server", "--origin-verify-secret", "hunter2"]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn drain_seconds_rejects_negative_and_non_numbers() {
        for (value, reason) in [
            ("--drain-seconds=-1", "between 0 and 3600"),
            ("--drain-seconds=3601", "between 0 and 3600"),
            ("--drain-seconds=inf", "between 0 and 3600"),
            ("--drain-seconds=soon", "not a number of seconds"),
        ] {
            let err = Config::try_parse_from(["model-server", value])
                .err()
                .unwrap();
            assert!(err.to_string().contains(reason), "{value}: {err}");
        }
        let ok = Config::try_parse_from(["model-server", "--drain-seconds", "0.5"]).unwrap();
        assert_eq!(ok.drain(), Duration::from_millis(500));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
