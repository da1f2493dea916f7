//! A colour on the cluster: `kube-templates/` rendered for it (minijinja), applied with
//! server-side apply (field manager `release`), its rollout watched until ready or failed (the pod
//! and reason named, with its recent events), its load-balancer address, and its teardown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Exit, Failure, Result};
use crate::wait::{self, Check, Deadline};

pub use crate::plan::colour::{
    Colour, GENERATION, Observed, Pending, Role, Roles, fenced_out, live_colour, roles,
};

mod rollout;

pub use rollout::{hopeless, wait_address, wait_load_balancers_gone, wait_rollout};
pub const MANAGER: &str = "release";
const TEMPLATES: [&str; 4] = [
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "networkpolicy.yaml",
];

pub fn name(config: &Config, colour: Colour) -> String {
    format!("{}-{colour}", config.app)
}

/// The rendered manifests of a colour in a `role` (`candidate`, or `previous` for a rollback's
/// redeploy), and a hash of them that ignores the release id and the role (so the same image with
/// the same settings hashes the same in every release).
pub fn render(
    dir: &Path,
    config: &Config,
    colour: Colour,
    image: &str,
    digest: &str,
    release_id: &str,
    role: &str,
) -> std::result::Result<(Vec<Value>, String), String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Every string goes into a double-quoted YAML scalar (or is a checked name): escaped for it,
    // so no value (a model version, a digest read back from the ledger) can add YAML of its own.
    env.set_formatter(|out, _, value| match value.as_str() {
        Some(s) => out.write_str(&yaml_escaped(s)).map_err(Into::into),
        None => write!(out, "{value}").map_err(Into::into),
    });
    let mut sources = Vec::new();
    for t in TEMPLATES {
        let path = dir.join(t);
        sources.push((
            t,
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        ));
    }
    for (t, src) in &sources {
        env.add_template(t, src).map_err(|e| format!("{t}: {e}"))?;
    }
    let d = &config.deploy;
    let context = |release_id: &str, hash: &str, role: &str| {
        minijinja::context! {
            role => role,
            app => config.app, colour => colour, namespace => d.namespace, image => image, digest => digest,
            replicas => d.replicas, service_port => d.service_port, model_name => config.model.name,
            model_version => config.model.version,
            model_sha256 => config.model.sha256, release_id => release_id, manifest_hash => hash,
            progress_deadline_seconds => d.rollout_timeout_seconds.min(600), grace_seconds => 20,
            pre_stop_seconds => 2, drain_seconds => 3,
            lb_scheme => config.edge.origin_access.scheme(),
            other_colour => colour.other(),
            shadow_url => config.smoke.shadow.as_ref().map(|_| format!(
                "http://{}.{}.svc:{}", name(config, colour.other()), d.namespace, d.service_port
            )),
            shadow_sample => config.smoke.shadow.as_ref().map_or(String::new(), |s| s.sample.to_string()),
        }
    };
    let render_all =
        |release_id: &str, hash: &str, role: &str| -> std::result::Result<Vec<Value>, String> {
            TEMPLATES
                .iter()
                .map(|t| {
                    let text = env
                        .get_template(t)
                        .and_then(|tpl| tpl.render(context(release_id, hash, role)))
                        .map_err(|e| format!("kube-templates/{t}: {e}"))?;
                    serde_yaml::from_str::<Value>(&text)
                        .map_err(|e| format!("kube-templates/{t} renders to invalid YAML: {e}"))
                })
                .collect()
        };
    let neutral = render_all("", "", "candidate")?;
    let hash = format!(
        "{:x}",
        Sha256::digest(serde_json::to_vec(&neutral).expect("JSON"))
    )[..16]
        .to_string();
    Ok((render_all(release_id, &hash, role)?, hash))
}

/// `s` escaped for the inside of a double-quoted YAML scalar: backslash, quote and every control
/// character (YAML 1.2, "Double-Quoted Style": `\\`, `\"`, `\uXXXX`).
fn yaml_escaped(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            c if c.is_control() => escaped.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
}

fn failure(exit: Exit, step: &str, message: String, hint: &str) -> Failure {
    Failure::new(exit, step, message, hint)
}

fn kube_err(step: &str) -> impl Fn(kube::Error) -> Failure + '_ {
    move |e| {
        failure(
            Exit::Deploy,
            step,
            e.to_string(),
            "check the cluster's API and your access to it (aws-auth / access entries)",
        )
        .because(e)
    }
}

/// The namespace label that has the AWS Load Balancer Controller's webhook give each new pod
/// a readiness gate: the pod is Ready only once the NLB has it as a healthy target, so a rolling
/// restart (`rotate-origin-secret`) or a redeploy never takes an old pod out before its
/// replacement receives traffic (the controller's docs, "Pod readiness gate"). A pod made before
/// its Service's target group binding exists gets no gate; `wait_address` checks the targets'
/// health itself for that first deploy.
pub const READINESS_GATE: &str = "elbv2.k8s.aws/pod-readiness-gate-inject";

/// Label the app's namespace for the readiness gate when release made it (before the gate) and
/// it is not labelled yet: only this label is added. A namespace someone else made is left as
/// it is: the label makes every pod there need the controller's webhook and gives other
/// load-balanced pods gates too, its owner's choice (docs/aws.md); `wait_address` still checks
/// the targets' health.
async fn ensure_readiness_gate(client: &kube::Client, config: &Config, step: &str) -> Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = &config.deploy.namespace;
    let existing = namespaces.get_opt(ns).await.map_err(kube_err(step))?;
    let labels = existing.as_ref().and_then(|n| n.metadata.labels.as_ref());
    let ours = labels.is_some_and(|l| l.get("release/app") == Some(&config.app));
    let labelled = labels.is_some_and(|l| l.contains_key(READINESS_GATE));
    if ours && !labelled {
        namespaces
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {READINESS_GATE: "enabled"}}})),
            )
            .await
            .map_err(kube_err(step))?;
    }
    Ok(())
}

/// Ensure the namespace (labelled for the readiness gate) and the origin-verify Secret; the
/// secret value is kept if it exists.
/// Returns the value every pod accepts, to send to a colour's own address: during a rotation
/// (`release rotate-origin-secret`) the value being replaced, which pods started before it and
/// pods started during it both take; otherwise the one value.
pub async fn ensure_namespace_and_secret(client: &kube::Client, config: &Config) -> Result<String> {
    let step = "deploy";
    let pp = PatchParams::apply(MANAGER).force();
    let ns = &config.deploy.namespace;
    let namespaces = Api::<Namespace>::all(client.clone());
    let existing = namespaces.get_opt(ns).await.map_err(kube_err(step))?;
    // A namespace release makes is labelled as such, so that `destroy` removes it (and only it).
    if existing.is_none() {
        let labels = json!({"app.kubernetes.io/managed-by": MANAGER, "release/app": config.app, READINESS_GATE: "enabled"});
        namespaces
            .patch(
                ns,
                &pp,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
                ),
            )
            .await
            .map_err(kube_err(step))?;
    } else {
        ensure_readiness_gate(client, config, step).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = format!("{}-origin", config.app);
    if let Some(existing) = secrets.get_opt(&name).await.map_err(kube_err(step))?
        && let Some(data) = existing.data.as_ref()
        && let Some(v) = data.get("previous").or_else(|| data.get("secret"))
    {
        return Ok(String::from_utf8_lossy(&v.0).to_string());
    }
    let value = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": config.app}}, "type": "Opaque", "stringData": {"secret": value}});
    secrets
        .patch(&name, &pp, &Patch::Apply(secret))
        .await
        .map_err(kube_err(step))?;
    Ok(value)
}

/// Stop unless this run (`generation`, `None`: a run with no ledger entry) may write the colour
/// objects named `name`: a run that took the lock after this one wrote them (their
/// `release/generation` is newer) owns them now. Checked before every write to a colour, after
/// the lock's own fencing check (`session::step`), so a run that lost its lock in between still
/// leaves a colour another run has written alone.
pub async fn fence(
    client: &kube::Client,
    config: &Config,
    name: &str,
    generation: Option<u64>,
) -> Result<()> {
    let Some(mine) = generation else {
        return Ok(());
    };
    let found = Api::<Deployment>::namespaced(client.clone(), &config.deploy.namespace)
        .get_opt(name)
        .await
        .map_err(kube_err("fence"))?;
    let stamp = found
        .as_ref()
        .and_then(|d| d.metadata.annotations.as_ref())
        .and_then(|a| a.get(GENERATION));
    match fenced_out(stamp.map(String::as_str), mine) {
        Some(newer) => Err(failure(
            Exit::Locked,
            "fence",
            format!(
                "{name} was written by a later run (release number {newer}; this run is {mine}): the app's lock is no longer this run's"
            ),
            "look at release status and release history: the later run decides what is there now",
        )),
        None => Ok(()),
    }
}

/// Apply the manifests of a colour, stamped with this run's `generation` (`fence` first).
pub async fn apply(
    client: &kube::Client,
    config: &Config,
    manifests: &[Value],
    generation: Option<u64>,
) -> Result<()> {
    let step = "deploy";
    if let Some(d) = manifests.iter().find(|m| m["kind"] == "Deployment") {
        fence(
            client,
            config,
            d["metadata"]["name"].as_str().unwrap_or_default(),
            generation,
        )
        .await?;
    }
    let stamped: Vec<Value> = manifests
        .iter()
        .cloned()
        .map(|mut m| {
            if let Some(g) = generation {
                m["metadata"]["annotations"][GENERATION] = json!(g.to_string());
            }
            m
        })
        .collect();
    let manifests = &stamped;
    let pp = PatchParams::apply(MANAGER).force();
    let ns = &config.deploy.namespace;
    // A Service of this name still being deleted (its NLB held by the controller's finalizer,
    // after a teardown or a retire) would take the apply and then vanish with it: wait for it.
    for m in manifests.iter().filter(|m| m["kind"] == "Service") {
        let name = m["metadata"]["name"].as_str().unwrap_or_default();
        let services = Api::<Service>::namespaced(client.clone(), ns);
        let timeout = Duration::from_secs(config.deploy.address_timeout_seconds);
        wait::until(
            Deadline::new(timeout, Duration::from_millis(500)),
            async || {
                let deleting = services
                    .get_opt(name)
                    .await
                    .map_err(kube_err(step))?
                    .is_some_and(|s| s.metadata.deletion_timestamp.is_some());
                Ok(if deleting {
                    Check::Pending(())
                } else {
                    Check::Done(())
                })
            },
            |(), _| {
                failure(
                    Exit::Deploy,
                    step,
                    format!(
                        "Service {name} is still being deleted after {timeout:?} (its load balancer is not gone)"
                    ),
                    "check the AWS Load Balancer Controller's logs, then re-run",
                )
            },
        )
        .await?;
    }
    for m in manifests {
        let name = m["metadata"]["name"].as_str().unwrap_or_default();
        let result = match m["kind"].as_str() {
            Some("Deployment") => Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(m))
                .await
                .map(|_| ()),
            Some("Service") => Api::<Service>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(m))
                .await
                .map(|_| ()),
            Some("PodDisruptionBudget") => {
                Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
                    .patch(name, &pp, &Patch::Apply(m))
                    .await
                    .map(|_| ())
            }
            Some("NetworkPolicy") => Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(m))
                .await
                .map(|_| ()),
            other => {
                return Err(failure(
                    Exit::Internal,
                    step,
                    format!("kube-templates renders an unexpected kind {other:?}"),
                    "only Deployment, Service, PodDisruptionBudget and NetworkPolicy are applied",
                ));
            }
        };
        result.map_err(kube_err(step))?;
    }
    Ok(())
}

/// The origin-verify Secret's values: `current`, what the edge sends (key `secret`), and during
/// a rotation `previous`, the value it replaces (key `previous`), which the pods accept too.
#[derive(Clone, PartialEq, Eq)]
pub struct OriginSecret {
    pub current: String,
    pub previous: Option<String>,
}

impl OriginSecret {
    /// What a pod started now accepts, as a stamp for its template (a digest: the values never
    /// reach an annotation). A colour whose pods carry another stamp must restart to take it.
    pub fn stamp(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.current.as_bytes());
        h.update(b"\n");
        h.update(self.previous.as_deref().unwrap_or_default().as_bytes());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The annotation on a colour's pod template naming the secret values its pods accept.
pub const SECRET_STAMP: &str = "release/origin-secret";

fn secret_name(config: &Config) -> String {
    format!("{}-origin", config.app)
}

/// The origin-verify Secret's values, if it exists.
pub async fn origin_secret(client: &kube::Client, config: &Config) -> Result<Option<OriginSecret>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.deploy.namespace);
    let Some(found) = secrets
        .get_opt(&secret_name(config))
        .await
        .map_err(kube_err("origin secret"))?
    else {
        return Ok(None);
    };
    let data = found.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).to_string())
    };
    Ok(text("secret").map(|current| OriginSecret {
        current,
        previous: text("previous"),
    }))
}

/// Write the origin-verify Secret's values (a merge patch: `previous: None` removes the key).
pub async fn set_origin_secret(
    client: &kube::Client,
    config: &Config,
    value: &OriginSecret,
) -> Result<()> {
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let patch = json!({"data": {
        "secret": b64(&value.current),
        "previous": value.previous.as_deref().map(b64),
    }});
    Api::<Secret>::namespaced(client.clone(), &config.deploy.namespace)
        .patch(
            &secret_name(config),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(kube_err("origin secret"))?;
    Ok(())
}

/// The origin-secret stamp on `colour`'s pod template (`SECRET_STAMP`), if it has one: what
/// values its pods were last restarted to accept.
pub async fn secret_stamp(
    client: &kube::Client,
    config: &Config,
    colour: Colour,
) -> Result<Option<String>> {
    let d = Api::<Deployment>::namespaced(client.clone(), &config.deploy.namespace)
        .get_opt(&name(config, colour))
        .await
        .map_err(kube_err("observe"))?;
    Ok(d.and_then(|d| d.spec?.template.metadata?.annotations?.remove(SECRET_STAMP)))
}

/// Wait until `colour` has no pods but the ones its Deployment wants: none terminating (a pod
/// draining after a restart still serves what it accepted when it started).
pub async fn wait_old_pods_gone(
    client: &kube::Client,
    config: &Config,
    colour: Colour,
    timeout: Duration,
) -> Result<()> {
    let ns = &config.deploy.namespace;
    let n = name(config, colour);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/name={},release/colour={colour}",
        config.app
    );
    wait::until(
        Deadline::new(timeout, Duration::from_millis(500)),
        async || {
            let want = deployments
                .get(&n)
                .await
                .map_err(kube_err("restart"))?
                .spec
                .and_then(|s| s.replicas)
                .unwrap_or(1);
            let all = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(kube_err("restart"))?
                .items;
            let leaving = all
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
                .count();
            Ok(if leaving == 0 && all.len() as i32 <= want {
                Check::Done(())
            } else {
                Check::Pending(format!("{leaving} old pods still draining"))
            })
        },
        |last, _| {
            failure(
                Exit::Deploy,
                "restart",
                format!("{n}'s old pods did not go within {timeout:?} ({last})"),
                "check the pods' drain (MODEL_SERVER_DRAIN_SECONDS) and re-run",
            )
        },
    )
    .await
}

/// Restart `colour`'s pods (a rolling update, as `kubectl rollout restart` makes one) unless they
/// already accept what `stamp` names: environment variables from a Secret are read when a pod
/// starts. Written by a field manager of its own, so the next apply of the colour keeps it.
/// Returns whether a restart was started; refuses a colour a later run wrote (`fence`).
pub async fn restart_for_secret(
    client: &kube::Client,
    config: &Config,
    colour: Colour,
    stamp: &str,
    generation: Option<u64>,
) -> Result<bool> {
    let n = name(config, colour);
    fence(client, config, &n, generation).await?;
    // The new pods wait for their targets to be healthy before an old one goes.
    ensure_readiness_gate(client, config, "restart").await?;
    let api = Api::<Deployment>::namespaced(client.clone(), &config.deploy.namespace);
    let d = api.get(&n).await.map_err(kube_err("restart"))?;
    let current = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(SECRET_STAMP));
    if current.map(String::as_str) == Some(stamp) {
        return Ok(false);
    }
    let mut patch =
        json!({"spec": {"template": {"metadata": {"annotations": {SECRET_STAMP: stamp}}}}});
    if let Some(g) = generation {
        patch["metadata"] = json!({"annotations": {GENERATION: g.to_string()}});
    }
    api.patch(
        &n,
        &PatchParams {
            field_manager: Some(format!("{MANAGER}-origin-secret")),
            ..PatchParams::default()
        },
        &Patch::Merge(patch),
    )
    .await
    .map_err(kube_err("restart"))?;
    Ok(true)
}

/// What `destroy` removes after both colours: the origin-verify Secret, and the namespace when
/// release created it for this app.
pub async fn remove_app(client: &kube::Client, config: &Config) -> Result<()> {
    let ns = &config.deploy.namespace;
    delete_if_present(
        Api::<Secret>::namespaced(client.clone(), ns),
        &format!("{}-origin", config.app),
    )
    .await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let ours = namespaces
        .get_opt(ns)
        .await
        .map_err(kube_err("destroy"))?
        .and_then(|n| n.metadata.labels)
        .is_some_and(|l| l.get("release/app") == Some(&config.app));
    if ours {
        delete_if_present(namespaces, ns).await?;
    }
    Ok(())
}

/// Remove a colour, unless a later run wrote it (`fence`).
pub async fn teardown(
    client: &kube::Client,
    config: &Config,
    colour: Colour,
    generation: Option<u64>,
) -> Result<()> {
    let ns = &config.deploy.namespace;
    let n = name(config, colour);
    fence(client, config, &n, generation).await?;
    delete_if_present(Api::<Deployment>::namespaced(client.clone(), ns), &n).await?;
    delete_if_present(Api::<Service>::namespaced(client.clone(), ns), &n).await?;
    delete_if_present(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &n,
    )
    .await?;
    delete_if_present(Api::<NetworkPolicy>::namespaced(client.clone(), ns), &n).await
}

/// Delete an object; one already gone is fine.
async fn delete_if_present<K>(api: Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err("teardown")(e)),
    }
}

/// The annotation that says until when a previous colour is kept warm (Unix seconds).
pub const RETIRE_AFTER: &str = "release/retire-after";

pub async fn observe(client: &kube::Client, config: &Config, colour: Colour) -> Result<Observed> {
    let ns = &config.deploy.namespace;
    let n = name(config, colour);
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&n)
        .await
        .map_err(kube_err("observe"))?;
    let s = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&n)
        .await
        .map_err(kube_err("observe"))?;
    let Some(d) = d else {
        return Ok(Observed {
            address: s.as_ref().and_then(address_of),
            ..Observed::default()
        });
    };
    let ann = d.metadata.annotations.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    Ok(Observed {
        exists: true,
        digest: ann.get("release/image-digest").cloned(),
        manifest_hash: ann.get("release/manifest-hash").cloned(),
        role: ann.get("release/role").map(|r| Role::parse(r)),
        ready: status.ready_replicas.unwrap_or(0),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        address: s.as_ref().and_then(address_of),
        model_version: ann.get("release/model-version").cloned(),
        model_sha256: ann.get("release/model-sha256").cloned(),
        created: d
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        pending: ann.get("release/pending").and_then(|p| Pending::parse(p)),
        retire_after: ann.get(RETIRE_AFTER).and_then(|t| t.parse().ok()),
    })
}

fn address_of(s: &Service) -> Option<String> {
    let ingress = s
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .clone();
    ingress.hostname.or(ingress.ip)
}

/// Each running pod of `colour` and its `/metrics` text, through the API server's pod proxy
/// (`proxy`: the client that does not retry); a pod that does not answer is left out of this
/// look. The model server's `/metrics` needs no origin header.
pub async fn pod_metrics(
    client: &kube::Client,
    proxy: &kube::Client,
    config: &Config,
    colour: Colour,
) -> Result<BTreeMap<String, String>> {
    pod_get(client, proxy, config, colour, "/metrics", "bake").await
}

/// Each running pod of `colour`'s shadow-tee figures (model-server's `GET /shadow`, JSON), through
/// the API server's pod proxy; a pod that does not answer, or not in JSON, is left out.
pub async fn shadow_reports(
    client: &kube::Client,
    proxy: &kube::Client,
    config: &Config,
    colour: Colour,
    step: &'static str,
) -> Result<Vec<Value>> {
    let answers = pod_get(client, proxy, config, colour, "/shadow", step).await?;
    Ok(answers
        .values()
        .filter_map(|body| serde_json::from_str(body).ok())
        .collect())
}

/// `GET path` of each running pod of `colour`, through the API server's pod proxy: the pods that
/// answered 200, by name, with their answer's body. `step` names the step in an error.
pub async fn pod_get(
    client: &kube::Client,
    proxy: &kube::Client,
    config: &Config,
    colour: Colour,
    path: &str,
    step: &'static str,
) -> Result<BTreeMap<String, String>> {
    let ns = &config.deploy.namespace;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/name={},release/colour={colour}",
        config.app
    );
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(step))?;
    let http = crate::adapters::smoke::http_client(Duration::from_secs(10));
    let mut out = BTreeMap::new();
    for p in list.items {
        let running = p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
        let Some(name) = p.metadata.name.clone().filter(|_| running) else {
            continue;
        };
        let port = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.ports.as_ref())
            .and_then(|ports| ports.first())
            .map_or(8080, |cp| cp.container_port);
        let base = crate::adapters::smoke::Base::Proxy {
            client: proxy.clone(),
            prefix: format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy"),
        };
        if let Ok(answer) =
            crate::adapters::smoke::call(&http, &base, http::Method::GET, path, "", None).await
            && answer.status == 200
        {
            out.insert(name, String::from_utf8_lossy(&answer.body).to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::rollout::PULL_GRACE;
    use super::*;

    fn config() -> Config {
        crate::config::parse(
            "app: iris\nimage: {binary: ms, tag: abc}\ndeploy: {namespace: ml, replicas: 3}\n",
            "f",
        )
        .unwrap()
    }

    fn templates() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kube-templates")
    }

    #[test]
    fn a_failing_pull_is_given_time_a_crash_loop_or_bad_config_is_not() {
        let now = Duration::ZERO;
        assert!(
            !hopeless("ErrImagePull", 0, now),
            "a throttled pull is retried"
        );
        assert!(!hopeless("ImagePullBackOff", 0, Duration::from_secs(5)));
        assert!(hopeless("ImagePullBackOff", 0, PULL_GRACE));
        assert!(
            !hopeless("CrashLoopBackOff", 0, now),
            "not before a restart"
        );
        assert!(hopeless("CrashLoopBackOff", 1, now));
        assert!(hopeless("InvalidImageName", 0, now));
        assert!(hopeless("CreateContainerConfigError", 0, now));
        assert!(!hopeless("ContainerCreating", 0, Duration::from_secs(600)));
    }

    #[test]
    fn a_value_cannot_add_yaml_to_the_manifests() {
        let mut c = config();
        let sly = "1\"\n  annotations: {evil: \"yes\"}\n  x: \\\"";
        c.model.version = sly.into();
        let (m, _) = render(
            &templates(),
            &c,
            Colour::Blue,
            "repo@sha256:abc",
            "sha256:abc",
            "r1",
            "candidate",
        )
        .unwrap();
        let deployment = &m[0];
        assert_eq!(
            deployment["metadata"]["annotations"]["release/model-version"].as_str(),
            Some(sly),
            "the value arrives whole, as one string"
        );
        assert!(!serde_json::to_string(&m).unwrap().contains("\"evil\":"));
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["value"].as_str() == Some(sly))
        );
    }

    #[test]
    fn rendering_pins_the_digest_labels_the_colour_and_hashes_without_the_release_id() {
        let c = config();
        let image = "1.dkr.ecr.us-east-1.amazonaws.com/iris@sha256:abc";
        let (m1, h1) = render(
            &templates(),
            &c,
            Colour::Green,
            image,
            "sha256:abc",
            "r1",
            "candidate",
        )
        .unwrap();
        let (_, h2) = render(
            &templates(),
            &c,
            Colour::Green,
            image,
            "sha256:abc",
            "r2",
            "candidate",
        )
        .unwrap();
        let (_, h3) = render(
            &templates(),
            &c,
            Colour::Green,
            image,
            "sha256:def",
            "r1",
            "candidate",
        )
        .unwrap();
        assert_eq!(h1, h2, "the release id does not change the hash");
        assert_ne!(h1, h3, "the image does");
        let kinds: Vec<&str> = m1.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy"
            ]
        );
        let d = &m1[0];
        assert_eq!(d["metadata"]["name"], "iris-green");
        assert_eq!(d["metadata"]["namespace"], "ml");
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["metadata"]["labels"]["release/colour"], "green");
        assert_eq!(
            d["metadata"]["annotations"]["release/image-digest"],
            "sha256:abc"
        );
        assert_eq!(d["metadata"]["annotations"]["release/release-id"], "r1");
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], image);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        let env: Vec<&str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"MODEL_SERVER_ORIGIN_VERIFY_SECRET")
                && env.contains(&"MODEL_SERVER_COLOUR")
        );
        assert_eq!(m1[1]["spec"]["type"], "LoadBalancer");
        assert_eq!(
            m1[1]["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"],
            "ip"
        );
        // Both colours select only their own pods.
        let (blue, _) = render(
            &templates(),
            &c,
            Colour::Blue,
            image,
            "sha256:abc",
            "r1",
            "candidate",
        )
        .unwrap();
        assert_eq!(blue[1]["spec"]["selector"]["release/colour"], "blue");
        assert_eq!(
            blue[2]["spec"]["selector"]["matchLabels"]["release/colour"],
            "blue"
        );
    }

    #[test]
    fn rendered_manifests_are_valid_kubernetes_objects() {
        // The schema check: each manifest goes through Kubernetes' own types (k8s-openapi) and
        // back; a field the types do not know is lost on the way, which `unknown` reports. So a
        // misspelt or misplaced key fails here, not in the cluster.
        for colour in Colour::ALL {
            let (m, _) = render(
                &templates(),
                &config(),
                colour,
                "i@sha256:abc",
                "sha256:abc",
                "r",
                "candidate",
            )
            .unwrap();
            for manifest in &m {
                let typed = through_types(manifest);
                let lost = unknown(manifest, &typed, "");
                assert!(lost.is_empty(), "{colour}: unknown fields {lost:?}");
            }
        }
        // And the check catches one.
        let mut bad = render(
            &templates(),
            &config(),
            Colour::Blue,
            "i@sha256:abc",
            "sha256:abc",
            "r",
            "candidate",
        )
        .unwrap()
        .0
        .remove(0);
        bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = json!({});
        assert_eq!(
            unknown(&bad, &through_types(&bad), ""),
            ["spec.template.spec.containers.0.readinesProbe"]
        );
    }

    /// A manifest deserialised into its k8s-openapi type and serialised back.
    fn through_types(m: &Value) -> Value {
        fn round<T: serde::de::DeserializeOwned + serde::Serialize>(m: &Value) -> Value {
            serde_json::to_value(serde_json::from_value::<T>(m.clone()).expect("a valid object"))
                .unwrap()
        }
        match m["kind"].as_str() {
            Some("Deployment") => round::<Deployment>(m),
            Some("Service") => round::<Service>(m),
            Some("PodDisruptionBudget") => round::<PodDisruptionBudget>(m),
            Some("NetworkPolicy") => round::<NetworkPolicy>(m),
            other => panic!("a kind with no type here: {other:?}"),
        }
    }

    /// Paths present in `original` but not in `typed`.
    fn unknown(original: &Value, typed: &Value, path: &str) -> Vec<String> {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match (original, typed) {
            (Value::Object(o), Value::Object(t)) => o
                .iter()
                .flat_map(|(k, v)| match t.get(k) {
                    Some(tv) => unknown(v, tv, &join(k)),
                    None => vec![join(k)],
                })
                .collect(),
            (Value::Array(o), Value::Array(t)) => o
                .iter()
                .zip(t)
                .enumerate()
                .flat_map(|(i, (a, b))| unknown(a, b, &join(&i.to_string())))
                .collect(),
            _ => vec![],
        }
    }
}
