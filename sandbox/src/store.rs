//! The cluster's object store: every object as JSON, one resourceVersion counter, a history of
//! changes for watches, and the semantics the API server gives them (uid, generation, status,
//! graceful pod deletion, garbage collection by owner, namespace termination).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::resources::{self, Resource};

/// An error the API answers as a Kubernetes `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn not_found(res: &Resource, name: &str) -> Self {
        let group = if res.group.is_empty() {
            String::new()
        } else {
            format!(".{}", res.group)
        };
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{}{group} \"{name}\" not found", res.plural),
            details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn invalid(res: &Resource, name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {message}", res.kind),
            details: Some(json!({"name": name, "group": res.group, "kind": res.kind})),
        }
    }
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: &'static str,
    pub event_type: &'static str,
    pub object: Value,
}

/// How a write treats the object's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `.status` (kept from the stored object).
    Main,
    /// Only `.status`.
    Status,
}

const HISTORY: usize = 4096;

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<WatchEvent>>,
    /// What each field manager last applied to each object (server-side apply).
    applied: HashMap<(Key, String), Value>,
    next_ip: u32,
    used_ips: std::collections::HashSet<String>,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    changed: watch::Sender<u64>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl Key {
    /// The key of `name` of kind `res`; cluster-scoped kinds ignore `namespace`.
    pub fn new(res: &Resource, namespace: &str, name: &str) -> Key {
        Key {
            kind: res.kind,
            namespace: if res.namespaced {
                namespace.into()
            } else {
                String::new()
            },
            name: name.into(),
        }
    }
}

pub fn key_of(res: &Resource, obj: &Value) -> Key {
    Key::new(
        res,
        meta(obj, "namespace").unwrap_or_default(),
        meta(obj, "name").unwrap_or_default(),
    )
}

fn is_dns_label_ish(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(HISTORY);
        let (changed, _) = watch::channel(0);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                applied: HashMap::new(),
                next_ip: 0,
                used_ips: Default::default(),
            }),
            events,
            changed,
        };
        let ns = resources::by_kind("Namespace").expect("namespaces are served");
        for name in ["default", "kube-system", "kube-public"] {
            store
                .create(ns, "", json!({"metadata": {"name": name}}))
                .expect("a fresh store takes the built-in namespaces");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// A live event stream plus the recorded events newer than `since` (taken under one lock, so
    /// nothing falls between them). `None` when `since` is older than the history kept.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        since: u64,
    ) -> (
        broadcast::Receiver<Arc<WatchEvent>>,
        Option<Vec<Arc<WatchEvent>>>,
    ) {
        let inner = self.lock();
        let rx = self.events.subscribe();
        let oldest = inner.history.front().map(|e| e.rv).unwrap_or(inner.rv + 1);
        if since + 1 < oldest && since < inner.rv && inner.history.len() >= HISTORY {
            return (rx, None);
        }
        let replay = inner
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        (rx, Some(replay))
    }

    fn record(
        &self,
        inner: &mut Inner,
        res: &'static Resource,
        event_type: &'static str,
        object: Value,
    ) {
        let event = Arc::new(WatchEvent {
            rv: inner.rv,
            kind: res.kind,
            event_type,
            object,
        });
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        let _ = self.events.send(event);
        self.changed.send_replace(inner.rv);
    }

    pub fn get(&self, res: &'static Resource, namespace: &str, name: &str) -> ApiResult<Value> {
        let key = Key::new(res, namespace, name);
        self.lock()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of a kind, in one namespace or all (`None`), with the list's resourceVersion.
    pub fn list(&self, res: &'static Resource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| {
                k.kind == res.kind
                    && namespace.is_none_or(|ns| !res.namespaced || k.namespace == ns)
            })
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    pub fn create(
        &self,
        res: &'static Resource,
        namespace: &str,
        mut obj: Value,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        self.create_locked(&mut inner, res, namespace, &mut obj)?;
        Ok(obj)
    }

    fn create_locked(
        &self,
        inner: &mut Inner,
        res: &'static Resource,
        namespace: &str,
        obj: &mut Value,
    ) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        let md = obj
            .as_object_mut()
            .expect("checked")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !md.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let mut name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty()
            && let Some(prefix) = md.get("generateName").and_then(Value::as_str)
        {
            name = format!(
                "{prefix}{}",
                &uuid::Uuid::new_v4().simple().to_string()[..5]
            );
        }
        if !is_dns_label_ish(&name) {
            return Err(ApiError::invalid(
                res,
                &name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        if res.namespaced {
            let given = md
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            if !namespace.is_empty() && given != namespace {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({given}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            let ns_key = Key {
                kind: "Namespace",
                namespace: String::new(),
                name: given.to_string(),
            };
            match inner.objects.get(&ns_key) {
                None => {
                    return Err(ApiError::not_found(
                        resources::by_kind("Namespace").expect("served"),
                        given,
                    ));
                }
                Some(ns) if ns["metadata"].get("deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {given} because it is being terminated",
                            res.plural
                        ),
                    ));
                }
                Some(_) => {}
            }
            md["namespace"] = json!(given);
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        md["name"] = json!(name);
        let key = key_of(res, obj);
        if inner.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", res.plural),
                details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
            });
        }
        inner.rv += 1;
        let md = &mut obj["metadata"];
        md["uid"] = json!(uuid::Uuid::new_v4().to_string());
        md["creationTimestamp"] = json!(now_rfc3339());
        md["resourceVersion"] = json!(inner.rv.to_string());
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("generateName");
        }
        if res.has_spec() {
            md["generation"] = json!(1);
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        defaults(inner, res, obj);
        inner.objects.insert(key, obj.clone());
        self.record(inner, res, "ADDED", obj.clone());
        Ok(())
    }

    /// Atomically read, change and write one object. `change` gets the stored object and returns
    /// the new one; `part` says which part the write may change. A no-op write changes nothing.
    pub fn modify(
        &self,
        res: &'static Resource,
        namespace: &str,
        name: &str,
        part: Part,
        change: impl FnOnce(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        let key = Key::new(res, namespace, name);
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let new = change(&old)?;
        self.write_locked(&mut inner, res, key, &old, new, part)
    }

    /// PUT: replace the object, refusing a stale resourceVersion.
    pub fn replace(
        &self,
        res: &'static Resource,
        namespace: &str,
        name: &str,
        part: Part,
        new: Value,
    ) -> ApiResult<Value> {
        self.modify(res, namespace, name, part, |old| {
            if let Some(rv) = meta(&new, "resourceVersion")
                && Some(rv) != meta(old, "resourceVersion") {
                    return Err(ApiError {
                        code: 409,
                        reason: "Conflict",
                        message: format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", res.plural),
                        details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
                    });
                }
            Ok(new)
        })
    }

    fn write_locked(
        &self,
        inner: &mut Inner,
        res: &'static Resource,
        key: Key,
        old: &Value,
        mut new: Value,
        part: Part,
    ) -> ApiResult<Value> {
        if !new.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        if let Some(n) = meta(&new, "name")
            && n != key.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                key.name
            )));
        }
        match part {
            Part::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            Part::Main => {
                // Identity and server-owned metadata come from the stored object.
                let mut md = new.get("metadata").cloned().unwrap_or_else(|| json!({}));
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    match old["metadata"].get(f) {
                        Some(v) => md[f] = v.clone(),
                        None => {
                            if let Some(m) = md.as_object_mut() {
                                m.remove(f);
                            }
                        }
                    }
                }
                new["metadata"] = md;
                if res.has_status {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                new["apiVersion"] = json!(res.api_version());
                new["kind"] = json!(res.kind);
                defaults(inner, res, &mut new);
                if res.has_spec() && new.get("spec") != old.get("spec") {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    new["metadata"]["generation"] = json!(generation);
                }
            }
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if &new == old {
            return Ok(new);
        }
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner.objects.insert(key.clone(), new.clone());
        self.record(inner, res, "MODIFIED", new.clone());
        // The last finalizer of an object being deleted is gone: so is the object.
        if new["metadata"].get("deletionTimestamp").is_some()
            && res.kind != "Pod"
            && res.kind != "Namespace"
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
        {
            self.remove_locked(inner, res, &key);
        }
        Ok(new)
    }

    /// Server-side apply: create when missing; otherwise drop what this manager applied before and
    /// no longer applies, then merge the applied configuration in.
    pub fn apply(
        &self,
        res: &'static Resource,
        namespace: &str,
        name: &str,
        manager: &str,
        part: Part,
        applied: Value,
    ) -> ApiResult<Value> {
        if !applied.is_object() {
            return Err(ApiError::bad_request("the apply body is not an object"));
        }
        if let Some(n) = meta(&applied, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let mut inner = self.lock();
        let key = Key::new(res, namespace, name);
        let manager_key = (key.clone(), manager.to_string());
        let result = match inner.objects.get(&key).cloned() {
            None => {
                let mut obj = applied.clone();
                obj["metadata"]["name"] = json!(name);
                set_manager(&mut obj, manager, res);
                self.create_locked(&mut inner, res, namespace, &mut obj)?;
                obj
            }
            Some(old) => {
                let mut new = old.clone();
                if let Some(before) = inner.applied.get(&manager_key) {
                    crate::merge::prune(&mut new, before, &applied);
                }
                crate::merge::strategic_merge(&mut new, &applied);
                set_manager(&mut new, manager, res);
                self.write_locked(&mut inner, res, key, &old, new, part)?
            }
        };
        inner.applied.insert(manager_key, applied);
        Ok(result)
    }

    /// DELETE. Pods that a kubelet runs are deleted gracefully (the kubelet removes them once their
    /// processes are gone); everything else at once, then its dependents by owner reference.
    pub fn delete(
        &self,
        res: &'static Resource,
        namespace: &str,
        name: &str,
        propagation: &str,
        grace: Option<i64>,
    ) -> ApiResult<Value> {
        let mut inner = self.lock();
        let key = Key::new(res, namespace, name);
        if !inner.objects.contains_key(&key) {
            return Err(ApiError::not_found(res, name));
        }
        Ok(self.delete_locked(&mut inner, res, key, propagation, grace))
    }

    fn delete_locked(
        &self,
        inner: &mut Inner,
        res: &'static Resource,
        key: Key,
        propagation: &str,
        grace: Option<i64>,
    ) -> Value {
        let Some(obj) = inner.objects.get(&key).cloned() else {
            return Value::Null;
        };
        if res.kind == "Namespace" {
            let ns = if obj["metadata"].get("deletionTimestamp").is_none() {
                self.mark_deleting(inner, res, key.clone(), obj, |ns| {
                    ns["status"]["phase"] = json!("Terminating");
                })
            } else {
                obj
            };
            let inside: Vec<Key> = inner
                .objects
                .keys()
                .filter(|k| k.namespace == key.name && k.kind != "Namespace")
                .cloned()
                .collect();
            for k in inside {
                let r = resources::by_kind(k.kind).expect("stored kinds are served");
                self.delete_locked(inner, r, k, "Background", None);
            }
            self.finalize_namespace(inner, &key.name);
            return inner.objects.get(&key).cloned().unwrap_or(ns);
        }
        if res.kind == "Pod"
            && obj["spec"]
                .get("nodeName")
                .and_then(Value::as_str)
                .is_some()
        {
            if obj["metadata"].get("deletionTimestamp").is_some() {
                return obj;
            }
            let spec_grace = obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            return self.mark_deleting(inner, res, key, obj, |pod| {
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(spec_grace));
            });
        }
        // Finalizers: the object stays, marked for deletion, until its controllers have removed
        // theirs (the AWS Load Balancer Controller holds a Service until its NLB is gone).
        if obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            if obj["metadata"].get("deletionTimestamp").is_some() {
                return obj;
            }
            return self.mark_deleting(inner, res, key, obj, |_| {});
        }
        self.remove_locked(inner, res, &key);
        let uid = meta(&obj, "uid").unwrap_or_default().to_string();
        let dependents: Vec<Key> = inner
            .objects
            .iter()
            .filter(|(_, v)| owned_by(v, &uid))
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            let r = resources::by_kind(k.kind).expect("stored kinds are served");
            if propagation == "Orphan" {
                if let Some(mut v) = inner.objects.get(&k).cloned() {
                    if let Some(refs) = v["metadata"]
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r["uid"] != json!(uid));
                    }
                    inner.rv += 1;
                    v["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                    inner.objects.insert(k, v.clone());
                    self.record(inner, r, "MODIFIED", v);
                }
            } else {
                self.delete_locked(inner, r, k, propagation, None);
            }
        }
        obj
    }

    /// Mark `obj` as being deleted (`deletionTimestamp`, and what `also` sets), store and announce it.
    fn mark_deleting(
        &self,
        inner: &mut Inner,
        res: &'static Resource,
        key: Key,
        mut obj: Value,
        also: impl FnOnce(&mut Value),
    ) -> Value {
        inner.rv += 1;
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        also(&mut obj);
        inner.objects.insert(key, obj.clone());
        self.record(inner, res, "MODIFIED", obj.clone());
        obj
    }

    fn remove_locked(&self, inner: &mut Inner, res: &'static Resource, key: &Key) {
        if let Some(mut obj) = inner.objects.remove(key) {
            inner.applied.retain(|(k, _), _| k != key);
            inner.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            self.record(inner, res, "DELETED", obj);
            if res.namespaced {
                self.finalize_namespace(inner, &key.namespace);
            }
        }
    }

    fn finalize_namespace(&self, inner: &mut Inner, ns: &str) {
        let key = Key {
            kind: "Namespace",
            namespace: String::new(),
            name: ns.to_string(),
        };
        let terminating = inner
            .objects
            .get(&key)
            .is_some_and(|n| n["metadata"].get("deletionTimestamp").is_some());
        if terminating
            && !inner
                .objects
                .keys()
                .any(|k| k.namespace == ns && k.kind != "Namespace")
        {
            let res = resources::by_kind("Namespace").expect("served");
            self.remove_locked(inner, res, &key);
        }
    }

    /// The kubelet's last word on a deleted pod: its processes are gone, the object goes.
    pub fn remove(&self, res: &'static Resource, namespace: &str, name: &str) {
        let mut inner = self.lock();
        let key = Key::new(res, namespace, name);
        self.remove_locked(&mut inner, res, &key);
    }

    /// A random loopback address from 127.`block`.x.y, never handed out twice by this store.
    /// Random, so that sandboxes running side by side (parallel tests) rarely pick the same one;
    /// the kubelet and the load balancers still check that it is free.
    pub fn allocate_ip(&self, block: u8) -> String {
        let mut inner = self.lock();
        loop {
            let r = uuid::Uuid::new_v4().as_u128() as u32;
            let ip = format!(
                "127.{block}.{}.{}",
                (r >> 8) & 0xff,
                (r & 0xff).clamp(1, 254)
            );
            if inner.used_ips.insert(ip.clone()) {
                return ip;
            }
        }
    }

    /// Record a Kubernetes Event about `involved`; a repeat of the same reason and message counts up.
    pub fn event(
        &self,
        involved: &Value,
        kind: &str,
        event_type: &str,
        reason: &str,
        message: &str,
    ) {
        let res = resources::by_kind("Event").expect("events are served");
        let ns = meta(involved, "namespace").unwrap_or("default").to_string();
        let obj_name = meta(involved, "name").unwrap_or_default().to_string();
        let uid = meta(involved, "uid").unwrap_or_default().to_string();
        let digest = {
            use sha2::Digest;
            let h = sha2::Sha256::digest(format!("{uid}/{reason}/{message}"));
            h[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let name = format!("{obj_name}.{digest}");
        let now = now_rfc3339();
        let updated = self.modify(res, &ns, &name, Part::Main, |old| {
            let mut e = old.clone();
            e["count"] = json!(old["count"].as_i64().unwrap_or(1) + 1);
            e["lastTimestamp"] = json!(now);
            Ok(e)
        });
        if updated.is_err() {
            let _ = self.create(
                res,
                &ns,
                json!({
                    "metadata": {"name": name, "namespace": ns},
                    "involvedObject": {"kind": kind, "name": obj_name, "namespace": ns, "uid": uid,
                        "apiVersion": involved["apiVersion"], "resourceVersion": meta(involved, "resourceVersion")},
                    "reason": reason, "message": message, "type": event_type, "count": 1,
                    "firstTimestamp": now, "lastTimestamp": now,
                    "source": {"component": "sandbox"}, "reportingComponent": "sandbox",
                }),
            );
        }
    }
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
}

fn set_manager(obj: &mut Value, manager: &str, res: &Resource) {
    let mut fields: Vec<Value> = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    fields.retain(|f| f["manager"].as_str() != Some(manager));
    fields.push(json!({"manager": manager, "operation": "Apply", "apiVersion": res.api_version(), "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {}}));
    obj["metadata"]["managedFields"] = Value::Array(fields);
}

/// The defaults the API server fills in, for the fields our controllers and clients read.
fn defaults(inner: &mut Inner, res: &Resource, obj: &mut Value) {
    fn set(obj: &mut Map<String, Value>, field: &str, value: Value) {
        obj.entry(field).or_insert(value);
    }
    match res.kind {
        "Namespace" if obj["metadata"].get("deletionTimestamp").is_none() => {
            obj["status"] = json!({"phase": "Active"});
        }
        // stringData is write-only: the API server merges it into data (base64) and drops it.
        "Secret" => {
            use base64::Engine;
            let Some(map) = obj.as_object_mut() else {
                return;
            };
            if let Some(Value::Object(strings)) = map.remove("stringData") {
                let data = map.entry("data").or_insert_with(|| json!({}));
                for (k, v) in strings {
                    let text = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    data[k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        "Deployment" => {
            let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            set(spec, "replicas", json!(1));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(spec, "revisionHistoryLimit", json!(10));
            set(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        "Service" => {
            let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            set(spec, "type", json!("ClusterIP"));
            if !spec.contains_key("clusterIP") {
                inner.next_ip += 1;
                let n = inner.next_ip;
                spec.insert(
                    "clusterIP".into(),
                    json!(format!("10.100.{}.{}", (n >> 8) & 0xff, n & 0xff)),
                );
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set(p, "protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    set(p, "targetPort", port);
                }
            }
            set(spec, "sessionAffinity", json!("None"));
        }
        _ => {}
    }
}
