//! CloudWatch: the alarms a bake watches (`analysis.alarms`), as `DescribeAlarms` reports them.

use aws_sdk_cloudwatch::types::AlarmType;

use crate::error::{Exit, Failure, Result, sdk};
use crate::plan::bake::Alarm;

/// The metric and composite alarms among `names` (an alarm that does not exist is absent).
/// DescribeAlarms takes at most 100 names a call (CloudWatch API reference, `AlarmNames`).
pub async fn states(
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
                    "check that release may cloudwatch:DescribeAlarms (ci-role.yaml) in the app's region",
                )
            })?;
            let text = |s: Option<&str>| s.unwrap_or_default().to_string();
            for a in page.metric_alarms() {
                found.push(Alarm {
                    name: text(a.alarm_name()),
                    state: text(a.state_value().map(|v| v.as_str())),
                    reason: text(a.state_reason()),
                });
            }
            for a in page.composite_alarms() {
                found.push(Alarm {
                    name: text(a.alarm_name()),
                    state: text(a.state_value().map(|v| v.as_str())),
                    reason: text(a.state_reason()),
                });
            }
        }
    }
    Ok(found)
}
