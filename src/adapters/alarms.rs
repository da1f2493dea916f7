//! CloudWatch: the alarms a bake watches (`analysis.alarms`), as `DescribeAlarms` reports them,
//! and CloudFront's own figures of a distribution (`analysis.max_edge_error_rate`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{
    AlarmType, Dimension, Metric, MetricDataQuery, MetricStat, ScanBy,
};

use crate::config::AlarmRef;
use crate::error::{Exit, Failure, Result, sdk};
use crate::plan::bake::{Alarm, EdgeMinute};

/// Where CloudFront publishes its metrics, whatever the distribution's stack's region
/// (CloudFront Developer Guide, "Getting metrics using the CloudWatch API": "you must use the US
/// East (N. Virginia) Region").
pub const CLOUDFRONT_METRICS_REGION: &str = "us-east-1";

/// The alarms `wanted` names, each read in its own region (the app's when it names none):
/// DescribeAlarms sees only the region it is sent to.
pub async fn watched(
    aws: &aws_config::SdkConfig,
    wanted: &[AlarmRef],
    step: &str,
) -> Result<Vec<Alarm>> {
    let mut by_region: BTreeMap<Option<&str>, Vec<String>> = BTreeMap::new();
    for w in wanted {
        by_region
            .entry(w.region())
            .or_default()
            .push(w.name().to_string());
    }
    let mut found = Vec::new();
    for (region, names) in by_region {
        let cw = crate::adapters::endpoint::cloudwatch(aws, region);
        for mut a in states(&cw, &names, step).await? {
            a.region = region.map(str::to_string);
            found.push(a);
        }
    }
    Ok(found)
}

/// The metric and composite alarms among `names` (an alarm that does not exist is absent).
/// DescribeAlarms takes at most 100 names a call (CloudWatch API reference, `AlarmNames`).
async fn states(
    cw: &aws_sdk_cloudwatch::Client,
    names: &[String],
    step: &str,
) -> Result<Vec<Alarm>> {
    let mut found = Vec::new();
    for chunk in names.chunks(100) {
        let mut pages = cw
            .describe_alarms()
            .set_alarm_names(Some(chunk.to_vec()))
            .alarm_types(AlarmType::MetricAlarm)
            .alarm_types(AlarmType::CompositeAlarm)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Failure::new(
                    Exit::Aws,
                    step,
                    format!("DescribeAlarms: {}", sdk(e)),
                    "check that release may cloudwatch:DescribeAlarms (ci-role.yaml) in the alarm's region",
                )
            })?;
            let text = |s: Option<&str>| s.unwrap_or_default().to_string();
            for a in page.metric_alarms() {
                found.push(Alarm {
                    name: text(a.alarm_name()),
                    region: None,
                    state: text(a.state_value().map(|v| v.as_str())),
                    reason: text(a.state_reason()),
                });
            }
            for a in page.composite_alarms() {
                found.push(Alarm {
                    name: text(a.alarm_name()),
                    region: None,
                    state: text(a.state_value().map(|v| v.as_str())),
                    reason: text(a.state_reason()),
                });
            }
        }
    }
    Ok(found)
}

/// `distribution`'s whole minutes from `start` to `end` as CloudFront's metrics have them in
/// us-east-1 (namespace `AWS/CloudFront`, dimensions `DistributionId` and `Region=Global`):
/// `Requests` (Sum) and `5xxErrorRate` (Average), one datapoint a minute. A minute with requests
/// but no rate (or the reverse) is left out. One GetMetricData call: both queries, Period 60
/// (MetricStat: a multiple of 60 for standard-resolution metrics).
pub async fn edge_minutes(
    aws: &aws_config::SdkConfig,
    distribution: &str,
    start: SystemTime,
    end: SystemTime,
    step: &str,
) -> Result<Vec<EdgeMinute>> {
    let cw = crate::adapters::endpoint::cloudwatch(aws, Some(CLOUDFRONT_METRICS_REGION));
    let query = |id: &str, metric: &str, stat: &str| {
        let dims = [("DistributionId", distribution), ("Region", "Global")]
            .map(|(n, v)| Dimension::builder().name(n).value(v).build());
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace("AWS/CloudFront")
                            .metric_name(metric)
                            .set_dimensions(Some(dims.to_vec()))
                            .build(),
                    )
                    .period(60)
                    .stat(stat)
                    .build(),
            )
            .return_data(true)
            .build()
    };
    let mut by_minute: BTreeMap<i64, (Option<f64>, Option<f64>)> = BTreeMap::new();
    let mut pages = cw
        .get_metric_data()
        .metric_data_queries(query("requests", "Requests", "Sum"))
        .metric_data_queries(query("errors", "5xxErrorRate", "Average"))
        .start_time(start.into())
        .end_time(end.max(start + Duration::from_secs(1)).into())
        .scan_by(ScanBy::TimestampAscending)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            Failure::new(
                Exit::Aws,
                step,
                format!(
                    "GetMetricData (CloudFront's metrics, us-east-1): {}",
                    sdk(e)
                ),
                "check that release may cloudwatch:GetMetricData (ci-role.yaml)",
            )
        })?;
        for r in page.metric_data_results() {
            let requests = r.id() == Some("requests");
            for (t, v) in r.timestamps().iter().zip(r.values()) {
                let minute = by_minute.entry(t.secs()).or_default();
                if requests {
                    minute.0 = Some(*v);
                } else {
                    minute.1 = Some(*v);
                }
            }
        }
    }
    Ok(by_minute
        .into_values()
        .filter_map(|m| match m {
            (Some(requests), Some(error_rate_percent)) => Some(EdgeMinute {
                requests,
                error_rate_percent,
            }),
            _ => None,
        })
        .collect())
}
