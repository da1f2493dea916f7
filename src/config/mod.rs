//! `release.yaml`: parsed with serde (unknown keys refused), `${ENV}` interpolated first (so CI can
//! pass the git SHA), then validated before anything touches AWS. Every error names the file, the
//! field, the line when known, and what is expected. Reference: docs/configuration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod checks;
mod interpolate;

pub use interpolate::interpolate;
use interpolate::interpolate_with;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The application: a DNS label of at most 32 characters; it prefixes every stack, the
    /// Kubernetes objects (`<app>-blue`, `<app>-green`) and the default state bucket.
    pub app: String,
    /// AWS region; otherwise `--region`, then the standard AWS configuration chain.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub stacks: StacksConfig,
    pub image: ImageConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub deploy: DeployConfig,
    #[serde(default)]
    pub smoke: SmokeConfig,
    #[serde(default)]
    pub edge: EdgeConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub promote: PromoteConfig,
    #[serde(default)]
    pub analysis: AnalysisConfig,
}

/// How `promote` goes live.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteConfig {
    /// After the flip is verified, watch the new live colour this long (`analysis`) before it
    /// counts as released; a breach flips back. 0: no bake (`promote --bake` overrides).
    #[serde(default)]
    pub bake_seconds: u64,
    /// After a promote, keep the previous colour at one replica this long (`1h`, `30m`): an
    /// instant rollback stays possible (it scales the colour back up first); then the next
    /// `release up` retires it (`release retire`: at any time). Absent: kept as it is.
    #[serde(default, with = "duration_text")]
    pub retire_previous_after: Option<u64>,
}

/// A duration written as humantime text (`1h`, `90s`), kept in seconds.
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| {
                humantime::parse_duration(&t)
                    .map(|d| d.as_secs())
                    .map_err(|e| serde::de::Error::custom(format!("{t:?}: {e} (e.g. 1h, 30m)")))
            })
            .transpose()
    }

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secs) => s.serialize_str(&format!("{secs}s")),
            None => s.serialize_none(),
        }
    }
}

/// What a bake judges the live colour's `/predict` by, from its pods' own `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Requests the bake must see before it judges (fewer: reported as not judged).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The largest share of `/predict` requests answered 5xx (0.01: 1 %).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// The largest p99 latency of `/predict`, in milliseconds (absent: not judged).
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// The largest rise of the bake's colour's `/predict` 5xx share over the other colour's, the
    /// baseline (0.005: half a percentage point): during a canary both colours in the same
    /// window, after the flip the previous colour's pods over their lifetime. Absent: not
    /// compared.
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// The largest share of the requests CloudFront answered 5xx while the bake ran, by
    /// CloudFront's own `5xxErrorRate` (us-east-1): the staging distribution's during a canary,
    /// the distribution's after the flip. Absent: not read.
    #[serde(default)]
    pub max_edge_error_rate: Option<f64>,
    /// CloudWatch alarms a bake watches: one in `ALARM`, or missing, is a breach.
    #[serde(default)]
    pub alarms: Vec<AlarmRef>,
}

/// A CloudWatch alarm a bake watches: its name, in the app's region, or its name and region
/// (alarms on CloudFront's metrics live in us-east-1, where CloudFront publishes them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "an alarm name, or {name: ..., region: ...} (no other keys)"
)]
pub enum AlarmRef {
    Name(String),
    In(AlarmInRegion),
}

/// `{name: ..., region: ...}`: an alarm in another region than the app's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmInRegion {
    pub name: String,
    pub region: String,
}

impl AlarmRef {
    pub fn name(&self) -> &str {
        match self {
            AlarmRef::Name(name) | AlarmRef::In(AlarmInRegion { name, .. }) => name,
        }
    }

    /// Its own region, when it names one.
    pub fn region(&self) -> Option<&str> {
        match self {
            AlarmRef::Name(_) => None,
            AlarmRef::In(a) => Some(&a.region),
        }
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            min_requests: default_min_requests(),
            max_error_rate: default_max_error_rate(),
            max_p99_ms: None,
            max_error_rate_increase: None,
            max_edge_error_rate: None,
            alarms: Vec::new(),
        }
    }
}

fn default_min_requests() -> u64 {
    50
}

fn default_max_error_rate() -> f64 {
    0.01
}

/// Where to tell people what a release did.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// An incoming-webhook URL: one message per outcome of `up`, `promote`, `rollback`,
    /// `destroy` and `rotate-origin-secret`. A failed notification never fails the command.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// `slack`: a Slack-compatible `{"text": ...}` body; `json`: the fields as a JSON object.
    #[serde(default)]
    pub format: NotifyFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Slack,
    #[default]
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Bucket for the ledger and the lock; default `<app>-release-<account>-<region>` (S3 bucket
    /// names are global: `<app>-release-state` is likely someone else's). The registry stack
    /// makes it.
    #[serde(default)]
    pub bucket: Option<String>,
    /// The AWS account that must own the bucket: every S3 call names it (`ExpectedBucketOwner`),
    /// so a bucket of that name in another account is refused instead of trusted. Default: the
    /// caller's account.
    #[serde(default)]
    pub bucket_owner: Option<String>,
    /// Seconds a lock stays valid without renewal.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            bucket: None,
            bucket_owner: None,
            lease_seconds: default_lease(),
        }
    }
}

fn default_lease() -> u64 {
    120
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StacksConfig {
    /// Directory of the CloudFormation templates (network, cluster, registry, edge).
    #[serde(default = "default_templates")]
    pub templates: PathBuf,
    #[serde(default = "default_vpc_cidr")]
    pub vpc_cidr: String,
    #[serde(default = "default_k8s_version")]
    pub kubernetes_version: String,
    /// Minutes to wait for one stack operation.
    #[serde(default = "default_stack_timeout")]
    pub timeout_minutes: u64,
    /// A CloudFormation service role the stacks are created and updated with, so that the role
    /// running `release` needs no rights on the resources themselves (least privilege; CI).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The role CI runs `release` with, given access to the cluster's Kubernetes API by the
    /// cluster stack (an EKS access entry).
    #[serde(default)]
    pub deployer_role_arn: Option<String>,
    /// The role people run `release destroy` with (ci-role.yaml's operator role), given the same
    /// access.
    #[serde(default)]
    pub operator_role_arn: Option<String>,
    /// The permissions boundary of the roles the cluster stack makes (ci-role.yaml's
    /// BoundaryArn): its stacks role makes roles only with it.
    #[serde(default)]
    pub permissions_boundary_arn: Option<String>,
}

impl Default for StacksConfig {
    fn default() -> Self {
        StacksConfig {
            templates: default_templates(),
            vpc_cidr: default_vpc_cidr(),
            kubernetes_version: default_k8s_version(),
            timeout_minutes: default_stack_timeout(),
            role_arn: None,
            deployer_role_arn: None,
            operator_role_arn: None,
            permissions_boundary_arn: None,
        }
    }
}

fn default_templates() -> PathBuf {
    PathBuf::from("cloudformation")
}
fn default_vpc_cidr() -> String {
    "10.40.0.0/16".into()
}
fn default_k8s_version() -> String {
    "1.33".into()
}
fn default_stack_timeout() -> u64 {
    45
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Build the image from this static model-server binary (`release image build` does the same).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Or push this image: an OCI image layout directory, an OCI archive or a `docker save` tar.
    #[serde(default)]
    pub archive: Option<PathBuf>,
    /// The image tag, immutable in ECR: the git SHA, typically `${CIRCLE_SHA1}`.
    pub tag: String,
    /// Refuse to deploy an image whose ECR scan has a finding of this severity or worse
    /// (`critical`, `high`, `medium`, `low`); absent, no gate.
    #[serde(default)]
    pub scan_gate: Option<Severity>,
    /// Longest wait for ECR's scan of the pushed image to finish.
    #[serde(default = "default_scan_timeout")]
    pub scan_timeout_seconds: u64,
}

fn default_scan_timeout() -> u64 {
    600
}

/// A finding's severity, as ECR counts them (`findingSeverityCounts`), worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    /// ECR's name for it.
    pub fn ecr_name(self) -> &'static str {
        match self {
            Severity::Critical => "CRITICAL",
            Severity::High => "HIGH",
            Severity::Medium => "MEDIUM",
            Severity::Low => "LOW",
        }
    }

    /// This severity and every worse one.
    pub fn and_worse(self) -> impl Iterator<Item = Severity> {
        [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
        ]
        .into_iter()
        .filter(move |s| *s <= self)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The ONNX model to ship in its own image layer (the server loads it); without it the
    /// model compiled into the server is served.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_model_name")]
    pub name: String,
    #[serde(default = "default_model_version")]
    pub version: String,
    /// The sha256 of the model the image ships: of `path`'s bytes, or of the model compiled into
    /// the server. Not a setting: computed when the file is loaded ([`load`]).
    #[serde(skip)]
    pub sha256: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            name: default_model_name(),
            version: default_model_version(),
            sha256: String::new(),
        }
    }
}

/// The model the model-server compiles in (`model-server/src/model.rs`'s `BUNDLED_MODEL`), served
/// when `model.path` is not set: its sha256 is what such an image ships.
pub const BUNDLED_MODEL: &[u8] = include_bytes!("../../model-server/model/iris.onnx");

/// Sets `model.sha256` from the file the image will ship (or the bundled model).
fn identify_model(config: &mut Config, file: &str, base: &Path) -> Result<(), ConfigError> {
    config.model.sha256 = match &config.model.path {
        Some(p) => model_sha256(
            &std::fs::read(base.join(p))
                .map_err(|e| err(file, "model.path", format!("cannot read it: {e}")))?,
        ),
        None => model_sha256(BUNDLED_MODEL),
    };
    Ok(())
}

/// A model file's identity as the image label, the ledger and the server's `/version` give it:
/// the sha256 of its bytes, in lowercase hex.
pub fn model_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

fn default_model_name() -> String {
    "iris".into()
}
fn default_model_version() -> String {
    "1.0.0".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Directory of the Kubernetes manifests rendered for each colour.
    #[serde(default = "default_kube_templates")]
    pub templates: PathBuf,
    /// Kubernetes namespace of the colours (the Fargate profile selects it).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The port each colour's load balancer listens on (the CloudFront origin's HTTP port).
    #[serde(default = "default_service_port")]
    pub service_port: u16,
    /// Seconds to wait for a rollout before giving up.
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout_seconds: u64,
    /// Seconds to wait, after the rollout, for the colour's load balancer to have an address that
    /// answers: an NLB takes minutes to provision and its ip targets minutes more to register
    /// and pass health checks (AWS Load Balancer Controller docs, "NLB"; ELB docs, "Target
    /// groups for your Network Load Balancers": registration takes "a few minutes").
    #[serde(default = "default_address_timeout")]
    pub address_timeout_seconds: u64,
    /// Seconds to wait for the AWS Load Balancer Controller and CoreDNS to be ready, when `up`
    /// installs or updates the controller (Fargate pods take about a minute to start).
    #[serde(default = "default_controller_timeout")]
    pub controller_timeout_seconds: u64,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            templates: default_kube_templates(),
            namespace: default_namespace(),
            replicas: default_replicas(),
            service_port: default_service_port(),
            rollout_timeout_seconds: default_rollout_timeout(),
            address_timeout_seconds: default_address_timeout(),
            controller_timeout_seconds: default_controller_timeout(),
        }
    }
}

fn default_kube_templates() -> PathBuf {
    PathBuf::from("kube-templates")
}
fn default_namespace() -> String {
    "models".into()
}
fn default_replicas() -> u32 {
    2
}
fn default_service_port() -> u16 {
    80
}
/// A gated pod (the load balancer controller's readiness gate) is Ready only once its NLB target
/// is healthy, 90 to 180 s after it starts on AWS; with one surge pod at a time, two replicas
/// take their Fargate start and their registration twice.
fn default_rollout_timeout() -> u64 {
    900
}
fn default_address_timeout() -> u64 {
    600
}
fn default_controller_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeConfig {
    /// Golden cases: `model-server/smoke/cases.yaml` by default.
    #[serde(default = "default_cases")]
    pub cases: PathBuf,
    /// Requests in the latency check.
    #[serde(default = "default_requests")]
    pub requests: u32,
    /// p95 budget for those requests, in milliseconds.
    #[serde(default = "default_p95")]
    pub p95_ms: u64,
    /// When set, the candidate and the live colour must agree on at least this fraction of inputs.
    #[serde(default)]
    pub compare_live: Option<f64>,
    /// Shadow agreement on real traffic: while a candidate exists, the live colour copies this
    /// share of its `/predict` requests to it and compares the answers; a promote refuses a
    /// candidate that agrees too little. Absent: no copies, no gate.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The share of the live colour's `/predict` requests copied to the candidate.
    #[serde(default = "default_shadow_sample")]
    pub sample: f64,
    /// A promote refuses a candidate whose answers agree with live's on less than this share of
    /// the rows compared...
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// ...once at least this many were compared (fewer: not judged, said so).
    #[serde(default = "default_shadow_min_requests")]
    pub min_requests: u64,
    /// Refuse a promote whose candidate could not be judged (fewer than `min_requests` rows).
    #[serde(default)]
    pub required: bool,
}

fn default_shadow_sample() -> f64 {
    0.05
}
fn default_min_agreement() -> f64 {
    0.95
}
fn default_shadow_min_requests() -> u64 {
    100
}

impl Default for SmokeConfig {
    fn default() -> Self {
        SmokeConfig {
            cases: default_cases(),
            requests: default_requests(),
            p95_ms: default_p95(),
            compare_live: None,
            shadow: None,
        }
    }
}

fn default_cases() -> PathBuf {
    PathBuf::from("model-server/smoke/cases.yaml")
}
fn default_requests() -> u32 {
    100
}
fn default_p95() -> u64 {
    250
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The public URL; default `https://<distribution domain name>`. The sandbox sets its edge URL.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Invalidate `/*` after each flip.
    #[serde(default)]
    pub invalidate: bool,
    /// How long, after CloudFront reports `Deployed`, the public URL may take to answer from the
    /// new colour before the flip is undone.
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout_seconds: u64,
    /// How CloudFront reaches a colour's load balancer.
    #[serde(default)]
    pub origin_access: OriginAccess,
    /// CloudFront continuous deployment: while a tested candidate waits, requests to the public
    /// URL carrying `aws-cf-cd-release: candidate` reach it through a staging distribution, and
    /// `promote --canary` can send it a share of viewers. The distribution then serves no HTTP/3.
    #[serde(default)]
    pub preview: bool,
}

/// How CloudFront reaches the live colour's load balancer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginAccess {
    /// An internet-facing NLB, a custom origin over HTTP: the origin-verify header is the only
    /// guard, and it crosses the internet in clear.
    #[default]
    Public,
    /// An internal NLB reached through a CloudFront VPC origin (one per colour), so nothing
    /// outside the VPC can reach a colour (CloudFront Developer Guide, "Restrict access with VPC
    /// origins").
    Vpc,
}

impl OriginAccess {
    /// The NLB scheme the colour's Service asks the AWS Load Balancer Controller for.
    pub fn scheme(self) -> &'static str {
        match self {
            OriginAccess::Public => "internet-facing",
            OriginAccess::Vpc => "internal",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OriginAccess::Public => "public",
            OriginAccess::Vpc => "vpc",
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            public_url: None,
            invalidate: false,
            verify_timeout_seconds: default_verify_timeout(),
            origin_access: OriginAccess::default(),
            preview: false,
        }
    }
}

fn default_verify_timeout() -> u64 {
    120
}

/// A configuration error: where, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {field}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Parse interpolated YAML into a `Config`, naming the field path of any error.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        // serde_yaml appends " at line N column M"; the line is reported on its own.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        ConfigError {
            file: file.into(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            line,
            message,
        }
    })
}

fn err(file: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.into(),
        field: field.into(),
        line: None,
        message: message.into(),
    }
}

/// A DNS label: lowercase letters, digits, '-'; starts with a letter, ends alphanumeric.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub const TEMPLATES: [&str; 4] = ["network", "cluster", "registry", "edge"];

/// `<app>-release-<account>-<region>`: unique to the account and region, as S3 bucket names must be
/// across all of AWS (S3 User Guide, "Bucket naming rules").
pub fn default_state_bucket(app: &str, account: &str, region: &str) -> String {
    format!("{app}-release-{account}-{region}")
}

impl Config {
    /// Set `state.bucket` to [`default_state_bucket`] for `account` and `region` when the file
    /// leaves it out; a default longer than S3 allows is an error that says to set it.
    pub fn resolve_state_bucket(&mut self, account: &str, region: &str) -> Result<(), String> {
        if self.state.bucket.is_some() {
            return Ok(());
        }
        let name = default_state_bucket(&self.app, account, region);
        if name.len() > 63 {
            return Err(format!(
                "the default state bucket name {name} is longer than S3's 63 characters; set state.bucket"
            ));
        }
        self.state.bucket = Some(name);
        Ok(())
    }

    /// The state bucket: `state.bucket`, which `main` sets to [`default_state_bucket`] for the
    /// caller's account and region when the file leaves it out. Unresolved, it is a name S3
    /// refuses (never somebody else's bucket).
    pub fn state_bucket(&self) -> String {
        self.state
            .bucket
            .clone()
            .unwrap_or_else(|| default_state_bucket(&self.app, "<account>", "<region>"))
    }

    pub fn stack_name(&self, template: &str) -> String {
        format!("{}-{template}", self.app)
    }
}

/// Read, interpolate, parse and validate a config file.
pub fn load(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Config, PathBuf), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            &file,
            "(file)",
            format!("cannot read it: {e} (give the file with --config or RELEASE_CONFIG)"),
        )
    })?;
    let text = interpolate(&text, &file, env)?;
    let mut config = parse(&text, &file)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    config.validate(&file, &base)?;
    identify_model(&mut config, &file, &base)?;
    Ok((config, base))
}

/// The configuration for `release image build`, which reads only the `image` and `model`
/// sections: a variable that only other sections use may be unset (CI's build job has no deploy
/// settings such as the stacks role). The file is interpolated with two different stand-ins for
/// unset variables; if `image` and `model` come out the same, they depend on none of them, and the
/// rest is never read. Otherwise the strict error names the variable that is missing.
pub fn load_for_image(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Config, PathBuf), ConfigError> {
    let strict = match load(path, &env) {
        Err(e) if e.message.contains("is not set") => e,
        other => return other,
    };
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| err(&file, "(file)", e.to_string()))?;
    let section = |stand_in: &str| -> Result<(String, serde_yaml::Value), ConfigError> {
        let t = interpolate_with(&text, &file, &env, Some(stand_in))?;
        let v: serde_yaml::Value =
            serde_yaml::from_str(&t).map_err(|e| err(&file, "(file)", e.to_string()))?;
        Ok((
            t,
            serde_yaml::Value::Sequence(vec![v["image"].clone(), v["model"].clone()]),
        ))
    };
    let (text_a, a) = section("")?;
    let (_, b) = section("release-unset-variable")?;
    if a != b {
        return Err(strict);
    }
    let mut config = parse(&text_a, &file)?;
    let base = match path.parent().map(Path::to_path_buf) {
        Some(b) if !b.as_os_str().is_empty() => b,
        _ => PathBuf::from("."),
    };
    config.validate(&file, &base)?;
    identify_model(&mut config, &file, &base)?;
    Ok((config, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "GIT_SHA" => Some("abc123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_fills_defaults_escapes_and_names_missing_variables() {
        assert_eq!(
            interpolate("tag: ${GIT_SHA}\n", "f", env).unwrap(),
            "tag: abc123\n"
        );
        assert_eq!(
            interpolate("a: ${NOPE:-x} ${EMPTY:-y} $$HOME $5\n", "f", env).unwrap(),
            "a: x y $HOME $5\n"
        );
        let e = interpolate("app: a\ntag: ${MISSING}\n", "release.yaml", env).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(2), "${MISSING}"));
        assert!(e.to_string().contains("MISSING is not set"), "{e}");
        assert!(interpolate("x: ${bad-name}", "f", env).is_err());
        assert!(interpolate("x: ${OPEN", "f", env).is_err());
        assert_eq!(
            interpolate("  # from ${CI_VAR}\ntag: ${GIT_SHA}\n", "f", env).unwrap(),
            "  # from ${CI_VAR}\ntag: abc123\n",
            "comment lines are left alone"
        );
    }

    #[test]
    fn an_alarm_is_a_name_or_a_name_and_region_and_nothing_else() {
        let c = parse(
            "app: a\nimage: {tag: t}\nanalysis:\n  alarms:\n    - plain\n    - {name: edge, region: us-east-1}\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            c.analysis
                .alarms
                .iter()
                .map(|a| (a.name(), a.region()))
                .collect::<Vec<_>>(),
            [("plain", None), ("edge", Some("us-east-1"))]
        );
        for typo in ["{name: edge, regoin: us-east-1}", "{name: edge}", "[edge]"] {
            let text = format!("app: a\nimage: {{tag: t}}\nanalysis:\n  alarms:\n    - {typo}\n");
            let e = parse(&text, "f").unwrap_err();
            assert!(
                e.field.starts_with("analysis.alarms")
                    && e.message
                        .contains("an alarm name, or {name: ..., region: ...}"),
                "{typo}: {e}"
            );
        }
    }

    #[test]
    fn parse_errors_name_the_field_and_line() {
        let e = parse("app: a\nimage:\n  tag: t\n  colour: blue\n", "release.yaml").unwrap_err();
        assert_eq!(e.field, "image.colour");
        assert_eq!(e.line, Some(4));
        assert!(
            e.message.contains("unknown field `colour`"),
            "{}",
            e.message
        );
        let e = parse(
            "app: a\nimage: {tag: t}\ndeploy: {replicas: many}\n",
            "release.yaml",
        )
        .unwrap_err();
        assert_eq!(e.field, "deploy.replicas");
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = parse("app: a\n", "release.yaml").unwrap_err();
        assert!(e.message.contains("missing field `image`"), "{}", e.message);
    }

    #[test]
    fn validation_checks_names_values_and_files() {
        let dir = std::env::temp_dir().join(format!("release-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cloudformation")).unwrap();
        std::fs::create_dir_all(dir.join("model-server/smoke")).unwrap();
        std::fs::create_dir_all(dir.join("kube-templates")).unwrap();
        for t in ["deployment.yaml", "service.yaml", "pdb.yaml"] {
            std::fs::write(dir.join("kube-templates").join(t), "").unwrap();
        }
        for t in TEMPLATES {
            std::fs::write(dir.join(format!("cloudformation/{t}.yaml")), "").unwrap();
        }
        let one_case = "model: iris\ncases: [{name: a, features: [1, 2, 3, 4], expect: 0}]\n";
        std::fs::write(dir.join("model-server/smoke/cases.yaml"), one_case).unwrap();
        std::fs::write(dir.join("ms"), "").unwrap();
        let good = parse("app: iris\nimage: {binary: ms, tag: abc}\n", "f").unwrap();
        good.validate("f", &dir).unwrap();
        let roles = "app: iris\nimage: {binary: ms, tag: abc}\nstacks: {role_arn: 'arn:aws:iam::1:role/s', permissions_boundary_arn: 'arn:aws:iam::1:policy/b', operator_role_arn: 'arn:aws:iam::1:role/o'}\n";
        parse(roles, "f").unwrap().validate("f", &dir).unwrap();
        assert_eq!(
            good.state.lease_seconds, 120,
            "an absent section takes every field's default"
        );
        let cases = [
            ("app: Iris\nimage: {binary: ms, tag: abc}\n", "app"),
            ("app: iris\nimage: {tag: abc}\n", "image"),
            ("app: iris\nimage: {binary: ms, tag: 'a b'}\n", "image.tag"),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nstacks: {templates: elsewhere}\n",
                "stacks.templates",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\ndeploy: {replicas: 0}\n",
                "deploy.replicas",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nsmoke: {compare_live: 2}\n",
                "smoke.compare_live",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nstate: {bucket: B}\n",
                "state.bucket",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nstate: {lease_seconds: 86400}\n",
                "state.lease_seconds",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nstacks: {permissions_boundary_arn: 'arn:aws:iam::1:role/r'}\n",
                "stacks.permissions_boundary_arn",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nstacks: {operator_role_arn: iris-release-operator}\n",
                "stacks.operator_role_arn",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {max_error_rate: 5}\n",
                "analysis.max_error_rate",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {max_error_rate_increase: -0.1}\n",
                "analysis.max_error_rate_increase",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {max_edge_error_rate: 5}\n",
                "analysis.max_edge_error_rate",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {min_requests: 0}\n",
                "analysis.min_requests",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {alarms: [{name: x, region: us-east1}]}\n",
                "analysis.alarms",
            ),
            (
                "app: iris\nimage: {binary: ms, tag: a}\nanalysis: {alarms: [{name: x, region: '+1'}]}\n",
                "analysis.alarms",
            ),
        ];
        for (text, field) in cases {
            let e = parse(text, "f").unwrap().validate("f", &dir).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
        // A case file with no case (or none at all) is refused: the smoke test would check nothing.
        // Only the commands that smoke-test check it: the others run to look or clean up.
        for text in ["model: iris\ncases: []\n", ""] {
            std::fs::write(dir.join("model-server/smoke/cases.yaml"), text).unwrap();
            let e = good.check_cases("f", &dir).unwrap_err();
            assert_eq!(e.field, "smoke.cases", "{text:?}: {e}");
            good.validate("f", &dir).unwrap();
        }
        std::fs::write(dir.join("model-server/smoke/cases.yaml"), one_case).unwrap();
        // The image's binary is checked by the commands that build it, not by every command.
        let missing = parse("app: iris\nimage: {binary: nope, tag: abc}\n", "f").unwrap();
        missing.validate("f", &dir).unwrap();
        assert_eq!(
            missing.check_image("f", &dir).unwrap_err().field,
            "image.binary"
        );
        good.check_image("f", &dir).unwrap();
        // Unresolved, the default is a name S3 refuses; resolved, it is the account's and region's.
        assert_eq!(good.state_bucket(), "iris-release-<account>-<region>");
        let mut resolved = good.clone();
        resolved
            .resolve_state_bucket("123456789012", "eu-west-1")
            .unwrap();
        assert_eq!(
            resolved.state_bucket(),
            "iris-release-123456789012-eu-west-1"
        );
        let mut named = parse(
            "app: iris\nimage: {binary: ms, tag: a}\nstate: {bucket: mine}\n",
            "f",
        )
        .unwrap();
        named
            .resolve_state_bucket("123456789012", "eu-west-1")
            .unwrap();
        assert_eq!(
            named.state_bucket(),
            "mine",
            "a name of the file's own is kept"
        );
        let mut long = parse(
            "app: an-app-name-long-enough-to-overflow\nimage: {binary: ms, tag: a}\n",
            "f",
        )
        .unwrap();
        let e = long
            .resolve_state_bucket("123456789012", "ap-southeast-2")
            .unwrap_err();
        assert!(e.contains("set state.bucket"), "{e}");
        assert_eq!(good.stack_name("edge"), "iris-edge");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    fn paths(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
        if let Some(m) = v.as_mapping() {
            for (k, child) in m {
                let key = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                if child.is_mapping() {
                    paths(&path, child, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn docs_configuration_md_describes_every_field() {
        let full = parse("app: a\nimage: {binary: b, archive: c, tag: t}\nmodel: {path: m}\nregion: r\nstate: {bucket: b}\nsmoke: {compare_live: 0.5}\nedge: {public_url: 'http://x'}\n", "f").unwrap();
        let mut fields = Vec::new();
        paths("", &serde_yaml::to_value(&full).unwrap(), &mut fields);
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
        )
        .unwrap();
        assert!(fields.len() > 20, "{fields:?}");
        for f in fields {
            assert!(
                doc.contains(&format!("| `{f}` |")),
                "docs/configuration.md has no row for `{f}`"
            );
        }
    }
}
