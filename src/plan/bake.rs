//! The watched bake after a promote's flip (`promote --bake`, `promote.bake_seconds`): what the
//! live colour's own `/metrics` say of `/predict` since the bake began, judged against the
//! `analysis` thresholds. Pure: the executor scrapes each pod and asks here.

use std::collections::BTreeMap;

use crate::config::AlarmRef;

/// What one pod's `/metrics` say of `/predict`: requests, those answered 5xx, and the latency
/// histogram's cumulative bucket counts by upper bound (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub buckets: Vec<(f64, u64)>,
}

/// A Prometheus text label value: `name="value"` inside `{...}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Read `/predict`'s figures from the model server's OpenMetrics text (`http_requests_total` by
/// route and status, `http_request_duration_seconds_bucket` by route and `le`).
pub fn parse(text: &str) -> Counts {
    let mut counts = Counts::default();
    let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if label(labels, "route") != Some("/predict") {
            continue;
        }
        match name {
            "http_requests_total" => {
                counts.requests += value as u64;
                if label(labels, "status").is_some_and(|s| s.starts_with('5')) {
                    counts.errors += value as u64;
                }
            }
            "http_request_duration_seconds_bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                buckets.insert(le.to_bits(), (le, value as u64));
            }
            _ => {}
        }
    }
    counts.buckets = ascending(buckets);
    counts
}

/// Buckets kept by their bound's bits, as a list by bound (bits of positive floats, `+Inf`
/// included, order as the floats do; the sort says so rather than rely on it).
fn ascending(buckets: BTreeMap<u64, (f64, u64)>) -> Vec<(f64, u64)> {
    let mut list: Vec<(f64, u64)> = buckets.into_values().collect();
    list.sort_by(|a, b| a.0.total_cmp(&b.0));
    list
}

/// What happened between `before` and `now` on one pod. A pod that restarted (its counters went
/// down) counts from zero.
pub fn since(before: &Counts, now: &Counts) -> Counts {
    if now.requests < before.requests {
        return now.clone();
    }
    Counts {
        requests: now.requests - before.requests,
        errors: now.errors.saturating_sub(before.errors),
        buckets: now
            .buckets
            .iter()
            .map(|(le, n)| {
                let was = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, n)| *n);
                (*le, n.saturating_sub(was))
            })
            .collect(),
    }
}

/// The sum over pods.
pub fn total(parts: &[Counts]) -> Counts {
    let mut sum = Counts::default();
    let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for p in parts {
        sum.requests += p.requests;
        sum.errors += p.errors;
        for (le, n) in &p.buckets {
            buckets.entry(le.to_bits()).or_insert((*le, 0)).1 += n;
        }
    }
    sum.buckets = ascending(buckets);
    sum
}

/// The 99th percentile's bucket bound in milliseconds: the smallest upper bound holding at
/// least 99 % of the requests (an upper estimate, as a histogram gives).
pub fn p99_ms(c: &Counts) -> Option<f64> {
    if c.requests == 0 {
        return None;
    }
    let want = (c.requests as f64 * 0.99).ceil() as u64;
    c.buckets
        .iter()
        .find(|(_, n)| *n >= want)
        .map(|(le, _)| le * 1000.0)
}

/// The thresholds (`analysis.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
}

/// The verdict on what the bake has seen so far: `Err` names the measurement, its value and the
/// threshold it broke; `Ok` says what it saw (or that too few requests came to judge).
pub fn judge(c: &Counts, t: &Thresholds) -> Result<String, String> {
    if c.requests < t.min_requests {
        return Ok(format!(
            "{} /predict requests, fewer than analysis.min_requests ({}): not judged",
            c.requests, t.min_requests
        ));
    }
    let rate = c.errors as f64 / c.requests as f64;
    if rate > t.max_error_rate {
        return Err(format!(
            "error rate {:.2} % ({} of {} /predict requests answered 5xx) is over analysis.max_error_rate {:.2} %",
            rate * 100.0,
            c.errors,
            c.requests,
            t.max_error_rate * 100.0
        ));
    }
    let p99 = p99_ms(c);
    if let (Some(max), Some(p99)) = (t.max_p99_ms, p99)
        && p99 > max
    {
        return Err(format!(
            "p99 latency {p99:.3} ms (histogram bound, {} /predict requests) is over analysis.max_p99_ms {max} ms",
            c.requests
        ));
    }
    Ok(format!(
        "{} /predict requests, error rate {:.2} %, p99 <= {} ms",
        c.requests,
        rate * 100.0,
        p99.map_or("?".into(), |p| format!("{p:.3}"))
    ))
}

/// The verdict on `seen` (the bake's colour) against `baseline`, what the other colour (named
/// `other`) served (`analysis.max_error_rate_increase`): `Err` when the 5xx share rose more than
/// `max_increase` over the baseline's; `Ok` says both shares, or that either side had too few
/// requests to compare (a rise over a handful of requests is noise, not a finding).
pub fn judge_increase(
    seen: &Counts,
    baseline: &Counts,
    other: &str,
    max_increase: f64,
    min_requests: u64,
) -> Result<String, String> {
    let rate = |c: &Counts| c.errors as f64 / c.requests as f64;
    if seen.requests < min_requests || baseline.requests < min_requests {
        return Ok(format!(
            "against {other}: {} and {} /predict requests, fewer than analysis.min_requests ({min_requests}) on a side: not compared",
            seen.requests, baseline.requests
        ));
    }
    let (now, base) = (rate(seen), rate(baseline));
    let shares = format!(
        "error rate {:.2} % against {other}'s {:.2} % ({} of {} requests)",
        now * 100.0,
        base * 100.0,
        baseline.errors,
        baseline.requests
    );
    if now - base > max_increase {
        return Err(format!(
            "{shares}: a rise of {:.2} points is over analysis.max_error_rate_increase {:.2} points",
            (now - base) * 100.0,
            max_increase * 100.0
        ));
    }
    Ok(shares)
}

/// One CloudWatch alarm as `DescribeAlarms` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub name: String,
    /// The region it was read in, when the config names one (else the app's).
    pub region: Option<String>,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    pub reason: String,
}

/// An alarm as the config names it: `name`, or `name (region)`.
fn shown(a: &AlarmRef) -> String {
    match a.region() {
        None => a.name().to_string(),
        Some(r) => format!("{} ({r})", a.name()),
    }
}

/// The verdict on the alarms a bake watches (`analysis.alarms`): `Err` when one is in `ALARM`,
/// or is not there (a watch that cannot see is not a pass); `Ok` says what they are.
pub fn judge_alarms(wanted: &[AlarmRef], found: &[Alarm]) -> Result<String, String> {
    let mut states = Vec::new();
    for w in wanted {
        let Some(a) = found
            .iter()
            .find(|a| a.name == w.name() && a.region.as_deref() == w.region())
        else {
            return Err(format!(
                "the CloudWatch alarm {} (analysis.alarms) does not exist: the bake cannot watch it (alarms are per region)",
                shown(w)
            ));
        };
        if a.state == "ALARM" {
            return Err(format!(
                "the CloudWatch alarm {} is in ALARM: {}",
                shown(w),
                a.reason
            ));
        }
        states.push(format!("{} {}", shown(w), a.state));
    }
    Ok(format!("alarms: {}", states.join(", ")))
}

/// One minute of a CloudFront distribution's own metrics: `Requests` (Sum) and `5xxErrorRate`
/// (Average, percent of that minute's requests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeMinute {
    pub requests: f64,
    pub error_rate_percent: f64,
}

/// The first whole minute at or after `t` (Unix seconds): where the edge's figures of a bake
/// begin. CloudFront's datapoints are whole minutes and GetMetricData rounds a StartTime down to
/// the minute, so a bake that began mid-minute reads from the next one: the minute it began in
/// holds requests from before it (the other colour's, after a flip).
pub fn first_whole_minute(t: i64) -> i64 {
    (t + 59).div_euclid(60) * 60
}

/// The verdict on what CloudFront answered `which` (a distribution) while the bake ran
/// (`analysis.max_edge_error_rate`): its 5xx share over the minutes read, each minute weighed by
/// its requests; judged only after `min_requests` requests.
pub fn judge_edge(
    minutes: &[EdgeMinute],
    which: &str,
    max: f64,
    min_requests: u64,
) -> Result<String, String> {
    // Summed from 0.0: an empty f64 sum is -0.0, which prints as "-0 requests".
    let requests = minutes.iter().fold(0.0, |n, m| n + m.requests);
    if requests < min_requests as f64 {
        return Ok(format!(
            "edge: {requests:.0} requests in {which}'s whole minutes so far, fewer than analysis.min_requests ({min_requests}): not judged"
        ));
    }
    let errors: f64 = minutes
        .iter()
        .map(|m| m.requests * m.error_rate_percent / 100.0)
        .sum();
    let share = errors / requests;
    if share > max {
        return Err(format!(
            "CloudFront answered {:.2} % of {requests:.0} requests to {which} with 5xx (5xxErrorRate, {} minute(s)), over analysis.max_edge_error_rate {:.2} %",
            share * 100.0,
            minutes.len(),
            max * 100.0
        ));
    }
    Ok(format!(
        "edge: {which} 5xx {:.2} % of {requests:.0} requests",
        share * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP http_requests HTTP requests answered, by route, method and status.
# TYPE http_requests counter
http_requests_total{route="/predict",method="POST",status="200"} 90
http_requests_total{route="/predict",method="POST",status="503"} 10
http_requests_total{route="/healthz",method="GET",status="500"} 7
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.0001",route="/predict"} 50
http_request_duration_seconds_bucket{le="0.001",route="/predict"} 98
http_request_duration_seconds_bucket{le="0.01",route="/predict"} 100
http_request_duration_seconds_bucket{le="+Inf",route="/predict"} 100
http_request_duration_seconds_bucket{le="+Inf",route="/healthz"} 7
# EOF
"#;

    #[test]
    fn an_alarm_in_alarm_or_missing_is_a_breach_and_the_others_are_reported() {
        let alarm = |name: &str, state: &str| Alarm {
            name: name.into(),
            region: None,
            state: state.into(),
            reason: format!("{name} went {state}"),
        };
        let wanted = [
            AlarmRef::Name("p99".into()),
            AlarmRef::Name("errors".into()),
        ];
        let calm = [alarm("p99", "OK"), alarm("errors", "INSUFFICIENT_DATA")];
        assert_eq!(
            judge_alarms(&wanted, &calm).unwrap(),
            "alarms: p99 OK, errors INSUFFICIENT_DATA"
        );
        let firing = [alarm("p99", "OK"), alarm("errors", "ALARM")];
        assert_eq!(
            judge_alarms(&wanted, &firing).unwrap_err(),
            "the CloudWatch alarm errors is in ALARM: errors went ALARM"
        );
        let missing = judge_alarms(&wanted, &calm[..1]).unwrap_err();
        assert!(
            missing.contains("errors (analysis.alarms) does not exist"),
            "{missing}"
        );
        assert_eq!(judge_alarms(&[], &[]).unwrap(), "alarms: ");
        // An alarm in another region is that region's: the same name in the app's is not it.
        let edge = [AlarmRef::In(crate::config::AlarmInRegion {
            name: "p99".into(),
            region: "us-east-1".into(),
        })];
        let not_there = judge_alarms(&edge, &calm).unwrap_err();
        assert!(
            not_there.contains("p99 (us-east-1) (analysis.alarms) does not exist"),
            "{not_there}"
        );
        let there = [Alarm {
            region: Some("us-east-1".into()),
            ..alarm("p99", "ALARM")
        }];
        assert_eq!(
            judge_alarms(&edge, &there).unwrap_err(),
            "the CloudWatch alarm p99 (us-east-1) is in ALARM: p99 went ALARM"
        );
    }

    #[test]
    fn the_edge_is_judged_on_whole_minutes_weighed_by_their_requests() {
        assert_eq!(first_whole_minute(120), 120);
        assert_eq!(first_whole_minute(121), 180);
        assert_eq!(first_whole_minute(179), 180);
        let minute = |requests, error_rate_percent| EdgeMinute {
            requests,
            error_rate_percent,
        };
        // 100 requests at 0 %, 20 at 50 %: 10 of 120, 8.33 % (an unweighted mean would say 25 %).
        let minutes = [minute(100.0, 0.0), minute(20.0, 50.0)];
        assert_eq!(
            judge_edge(&minutes, "E1", 0.05, 50).unwrap_err(),
            "CloudFront answered 8.33 % of 120 requests to E1 with 5xx (5xxErrorRate, 2 minute(s)), over analysis.max_edge_error_rate 5.00 %"
        );
        assert_eq!(
            judge_edge(&minutes, "E1", 0.10, 50).unwrap(),
            "edge: E1 5xx 8.33 % of 120 requests"
        );
        let few = judge_edge(&[minute(20.0, 100.0)], "E1", 0.0, 50).unwrap();
        assert!(few.ends_with("not judged"), "{few}");
        assert_eq!(
            judge_edge(&[], "E1", 0.0, 50).unwrap(),
            "edge: 0 requests in E1's whole minutes so far, fewer than analysis.min_requests (50): not judged"
        );
    }

    #[test]
    fn a_rise_over_the_baseline_is_a_breach_once_both_sides_have_enough_requests() {
        let counts = |requests, errors| Counts {
            requests,
            errors,
            buckets: vec![],
        };
        // 3 % against 1 %: a rise of 2 points.
        let (seen, live) = (counts(200, 6), counts(1000, 10));
        let broke = judge_increase(&seen, &live, "iris-blue", 0.01, 50).unwrap_err();
        assert_eq!(
            broke,
            "error rate 3.00 % against iris-blue's 1.00 % (10 of 1000 requests): a rise of 2.00 points is over analysis.max_error_rate_increase 1.00 points"
        );
        assert!(judge_increase(&seen, &live, "iris-blue", 0.025, 50).is_ok());
        // A better candidate is no rise; a worse baseline forgives the same share.
        assert!(judge_increase(&live, &seen, "iris-blue", 0.0, 50).is_ok());
        // Too few on either side: not compared, whatever the shares.
        for (a, b) in [
            (counts(20, 20), live.clone()),
            (seen.clone(), counts(10, 0)),
        ] {
            let said = judge_increase(&a, &b, "iris-blue", 0.0, 50).unwrap();
            assert!(said.ends_with("not compared"), "{said}");
        }
    }

    #[test]
    fn predicts_figures_are_read_and_others_ignored() {
        let c = parse(METRICS);
        assert_eq!((c.requests, c.errors), (100, 10));
        assert_eq!(c.buckets.len(), 4);
        assert_eq!(p99_ms(&c), Some(10.0));
    }

    #[test]
    fn the_bake_judges_what_happened_since_it_began() {
        let before = parse(METRICS);
        let mut now = before.clone();
        now.requests += 200;
        now.errors += 1;
        for b in now.buckets.iter_mut() {
            b.1 += 200;
        }
        let d = since(&before, &now);
        assert_eq!((d.requests, d.errors), (200, 1));
        let t = Thresholds {
            min_requests: 50,
            max_error_rate: 0.01,
            max_p99_ms: Some(0.05),
        };
        let broke = judge(&d, &t).unwrap_err();
        assert!(broke.starts_with("p99 latency 0.100 ms"), "{broke}");
        let relaxed = Thresholds {
            max_p99_ms: None,
            ..t
        };
        assert!(
            judge(&d, &relaxed)
                .unwrap()
                .starts_with("200 /predict requests, error rate 0.50 %")
        );
        let erroring = Counts {
            errors: 5,
            ..d.clone()
        };
        assert!(
            judge(&erroring, &relaxed)
                .unwrap_err()
                .starts_with("error rate 2.50 %")
        );
        let few = Counts {
            requests: 10,
            errors: 10,
            ..d
        };
        assert!(judge(&few, &t).unwrap().contains("not judged"));
        // A pod that restarted counts from zero; pods add up.
        assert_eq!(since(&now, &before).requests, 100);
        assert_eq!(total(&[before.clone(), before]).requests, 200);
    }
}
