//! Patches (JSON merge, strategic merge, server-side apply's pruning) and selectors.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object");
    for (k, v) in patch_map {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The key lists of named items merge by (containers, env, ports, volumes, ...), if any.
fn merge_key(items: &[Value]) -> Option<&'static str> {
    ["name", "containerPort", "port", "mountPath", "ip", "type"]
        .into_iter()
        .find(|k| {
            !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.get(*k).is_some_and(|v| !v.is_null()))
        })
}

/// A strategic merge patch, as the API server applies one for the built-in types: maps merge,
/// lists of named items merge by name, other lists are replaced, `null` deletes, and `$` directives
/// are dropped.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object");
    for (k, v) in patch_map {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            map.remove(k);
            continue;
        }
        match (map.get_mut(k), v) {
            (Some(Value::Array(old)), Value::Array(new)) => {
                let new: Vec<Value> = new
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                match merge_key(&new).filter(|key| old.iter().all(|i| i.get(*key).is_some())) {
                    Some(key) => {
                        let mut merged = Vec::with_capacity(new.len());
                        for item in &new {
                            let mut base = old
                                .iter()
                                .find(|o| o.get(key) == item.get(key))
                                .cloned()
                                .unwrap_or(Value::Null);
                            strategic_merge(&mut base, item);
                            merged.push(base);
                        }
                        // Items the patch does not name stay, after those it names.
                        for o in old.iter() {
                            if !new.iter().any(|i| i.get(key) == o.get(key)) {
                                merged.push(o.clone());
                            }
                        }
                        *old = merged;
                    }
                    None => *old = new,
                }
            }
            (Some(existing @ Value::Object(_)), Value::Object(_)) => strategic_merge(existing, v),
            _ => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, v);
                map.insert(k.clone(), fresh);
            }
        }
    }
}

/// Server-side apply: remove from `target` what `before` (the manager's last applied
/// configuration) set and `now` (its new one) no longer sets.
pub fn prune(target: &mut Value, before: &Value, now: &Value) {
    let (Some(before), Some(t)) = (before.as_object(), target.as_object_mut()) else {
        return;
    };
    for (k, b) in before {
        match now.get(k) {
            None => {
                t.remove(k);
            }
            Some(n) => match (t.get_mut(k), b, n) {
                (Some(tv @ Value::Object(_)), Value::Object(_), Value::Object(_)) => {
                    prune(tv, b, n)
                }
                (Some(Value::Array(items)), Value::Array(bi), Value::Array(ni)) => {
                    if let Some(key) = merge_key(bi) {
                        items.retain(|i| {
                            let was_ours = bi.iter().any(|b| b.get(key) == i.get(key));
                            let still_ours = ni.iter().any(|n| n.get(key) == i.get(key));
                            !was_ours || still_ours
                        });
                        for item in items.iter_mut() {
                            let b = bi.iter().find(|b| b.get(key) == item.get(key));
                            let n = ni.iter().find(|n| n.get(key) == item.get(key));
                            if let (Some(b), Some(n)) = (b, n) {
                                prune(item, b, n);
                            }
                        }
                    }
                }
                _ => {}
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector (`a=b,c!=d,e in (x,y),!f,g`) or a field selector (`metadata.name=x`).
#[derive(Debug, Clone, Default)]
pub struct Selector(Vec<Req>);

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            // Split at the next comma that is not inside parentheses.
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let term = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("").trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(Self::term(term)?);
        }
        Ok(Selector(reqs))
    }

    fn term(term: &str) -> Result<Req, String> {
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or(format!("bad set in selector term {term:?}"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect())
        };
        if let Some((k, v)) = term.split_once("!=") {
            return Ok(Req::NotEq(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return Ok(Req::Eq(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = term.split_once(" notin ") {
            return Ok(Req::NotIn(k.trim().into(), set(v)?));
        }
        if let Some((k, v)) = term.split_once(" in ") {
            return Ok(Req::In(k.trim().into(), set(v)?));
        }
        if let Some(k) = term.strip_prefix('!') {
            return Ok(Req::NotExists(k.trim().into()));
        }
        if term.contains(char::is_whitespace) {
            return Err(format!("unable to parse requirement: {term:?}"));
        }
        Ok(Req::Exists(term.into()))
    }

    /// Whether `lookup(key)` satisfies every requirement.
    pub fn matches_with(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => lookup(k).as_deref() == Some(v),
            Req::NotEq(k, v) => lookup(k).as_deref() != Some(v),
            Req::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Req::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
            Req::Exists(k) => lookup(k).is_some(),
            Req::NotExists(k) => lookup(k).is_none(),
        })
    }

    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.matches_with(|k| labels.get(k).and_then(Value::as_str).map(str::to_string))
    }

    /// Field selectors address a dotted path in the object (`metadata.name`, `involvedObject.uid`).
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches_with(|path| {
            let mut v = obj;
            for part in path.split('.') {
                v = v.get(part)?;
            }
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        })
    }
}

/// Whether a `matchLabels` map (a Service's selector, a Deployment's `selector.matchLabels`)
/// selects `obj`.
pub fn labels_match(selector: &Value, obj: &Value) -> bool {
    let Some(sel) = selector.as_object() else {
        return false;
    };
    !sel.is_empty()
        && sel
            .iter()
            .all(|(k, v)| obj["metadata"]["labels"].get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_named_lists_and_replaces_plain_ones() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "y"}], "tags": [1, 2]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "a", "image": "z"}], "tags": [3], "$setElementOrder/containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            t["spec"]["containers"][0],
            json!({"name": "a", "image": "z", "args": ["1"]})
        );
        assert_eq!(t["spec"]["containers"][1]["name"], "b");
        assert_eq!(t["spec"]["tags"], json!([3]));
        assert!(t["spec"].get("$setElementOrder/containers").is_none());
        strategic_merge(&mut t, &json!({"spec": {"tags": null}}));
        assert!(t["spec"].get("tags").is_none());
    }

    #[test]
    fn prune_removes_only_what_the_manager_stopped_applying() {
        let before = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}});
        let now = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"env": [{"name": "X", "value": "1"}]}});
        let mut target = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "kept"}}, "spec": {"env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}, {"name": "Z", "value": "3"}]}, "status": {"s": 1}});
        prune(&mut target, &before, &now);
        assert_eq!(
            target["metadata"]["labels"],
            json!({"a": "1", "other": "kept"})
        );
        let names: Vec<&str> = target["spec"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["X", "Z"]);
        assert_eq!(target["status"]["s"], 1);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn selectors_parse_every_operator() {
        let obj = json!({"metadata": {"name": "n", "labels": {"app": "web", "colour": "blue", "tier": "x"}}});
        let yes = [
            "app=web",
            "app==web,colour!=green",
            "colour in (blue, green)",
            "colour notin (green)",
            "tier",
            "!missing",
            "",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches_labels(&obj), "{s}");
        }
        let no = [
            "app=api",
            "colour in (green)",
            "missing",
            "!tier",
            "app=web,colour=green",
        ];
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches_labels(&obj), "{s}");
        }
        assert!(
            Selector::parse("metadata.name=n")
                .unwrap()
                .matches_fields(&obj)
        );
        assert!(
            !Selector::parse("metadata.name!=n")
                .unwrap()
                .matches_fields(&obj)
        );
        assert!(Selector::parse("a b").is_err());
    }
}
