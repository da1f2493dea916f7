//! Elastic Load Balancing v2: the NLB the AWS Load Balancer Controller made for a colour, found
//! by the DNS name in its Service's status (the controller writes the NLB's `DNSName` to
//! `status.loadBalancer.ingress[0].hostname`), for its ARN (what a CloudFront VPC origin names),
//! its state and the health of its targets.

use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;

use crate::error::{Exit, Failure, Result, sdk};

/// One NLB as `DescribeLoadBalancers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    pub arn: String,
    pub state: String,
    pub scheme: String,
}

/// One registered target as `DescribeTargetHealth` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub state: String,
    pub reason: String,
}

/// What one look found, or why it found nothing this time (throttled, or for `targets` any
/// error but a refusal of rights): a wait looks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look<T> {
    Got(T),
    Throttled(String),
}

/// ELBv2's throttling codes (Elastic Load Balancing API reference, common errors: Throttling).
fn throttled<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded")
    )
}

/// A refusal of the caller's rights (IAM), which no second look changes.
fn denied_code<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code()
        .is_some_and(|c| c.starts_with("AccessDenied") || c == "UnauthorizedOperation")
}

fn denied(call: &str, detail: String) -> Failure {
    Failure::new(
        Exit::Aws,
        "load balancer",
        format!("{call}: {detail}"),
        format!("check that the credentials may call elasticloadbalancing:{call}"),
    )
}

fn seen(lb: &aws_sdk_elasticloadbalancingv2::types::LoadBalancer) -> Balancer {
    Balancer {
        arn: lb.load_balancer_arn().unwrap_or_default().to_string(),
        state: lb
            .state()
            .and_then(|s| s.code())
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        scheme: lb
            .scheme()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
    }
}

fn named(lb: &aws_sdk_elasticloadbalancingv2::types::LoadBalancer, dns: &str) -> bool {
    lb.dns_name()
        .is_some_and(|d| d.eq_ignore_ascii_case(dns.trim_end_matches('.')))
}

/// The load balancer whose DNS name is `dns`, over every page of `DescribeLoadBalancers`; `None`
/// when there is none (yet). `known` is an ARN an earlier look found: asked for alone first, so
/// a wait does not page through every load balancer of the account on each look.
pub async fn by_dns_name(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    dns: &str,
    known: Option<&str>,
) -> Result<Look<Option<Balancer>>> {
    if let Some(arn) = known {
        match elb
            .describe_load_balancers()
            .load_balancer_arns(arn)
            .send()
            .await
        {
            Ok(out) => {
                if let Some(lb) = out.load_balancers().iter().find(|lb| named(lb, dns)) {
                    return Ok(Look::Got(Some(seen(lb))));
                }
            }
            Err(e) if throttled(&e) => return Ok(Look::Throttled(sdk(e))),
            // Gone (LoadBalancerNotFound) or replaced: look through them all.
            Err(_) => {}
        }
    }
    let mut pages = elb.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) if throttled(&e) => return Ok(Look::Throttled(sdk(e))),
            Err(e) => return Err(denied("DescribeLoadBalancers", sdk(e))),
        };
        if let Some(lb) = page.load_balancers().iter().find(|lb| named(lb, dns)) {
            return Ok(Look::Got(Some(seen(lb))));
        }
    }
    Ok(Look::Got(None))
}

/// The targets registered in the load balancer's target groups and their health; none while
/// the controller has not made its target group yet. Only a refusal of the caller's rights ends
/// a wait: anything else (the NLB replaced between two looks, a passing server error) is
/// reported as a look to take again.
pub async fn targets(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    lb_arn: &str,
) -> Result<Look<Vec<Target>>> {
    let groups = match elb
        .describe_target_groups()
        .load_balancer_arn(lb_arn)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.code() == Some("TargetGroupNotFound") => return Ok(Look::Got(Vec::new())),
        Err(e) if denied_code(&e) => return Err(denied("DescribeTargetGroups", sdk(e))),
        Err(e) => return Ok(Look::Throttled(sdk(e))),
    };
    let mut found = Vec::new();
    for group in groups.target_groups() {
        let arn = group.target_group_arn().unwrap_or_default();
        let health = match elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if denied_code(&e) => return Err(denied("DescribeTargetHealth", sdk(e))),
            Err(e) => return Ok(Look::Throttled(sdk(e))),
        };
        for d in health.target_health_descriptions() {
            let h = d.target_health();
            found.push(Target {
                id: d
                    .target()
                    .and_then(|t| t.id())
                    .unwrap_or_default()
                    .to_string(),
                state: h
                    .and_then(|h| h.state())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: h
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(Look::Got(found))
}

/// Whether `want` targets are healthy, or what stands in the way: the NLB sends a new target
/// nothing until it is registered and has passed its first health checks, 90 to 180 s after
/// the pod is ready (ELB user guide, "Target group health checks": `initial`,
/// Elb.RegistrationInProgress; aws-load-balancer-controller#1834). Draining targets (pods
/// going away) do not count.
pub fn serving(targets: &[Target], want: usize) -> std::result::Result<(), String> {
    let healthy = targets.iter().filter(|t| t.state == "healthy").count();
    if healthy >= want {
        return Ok(());
    }
    let waiting: Vec<String> = targets
        .iter()
        .filter(|t| t.state != "healthy")
        .map(|t| {
            if t.reason.is_empty() {
                format!("{} {}", t.id, t.state)
            } else {
                format!("{} {} ({})", t.id, t.state, t.reason)
            }
        })
        .collect();
    Err(format!(
        "{healthy} of {want} targets healthy{}",
        if waiting.is_empty() {
            String::new()
        } else {
            format!("; {}", waiting.join(", "))
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, state: &str, reason: &str) -> Target {
        Target {
            id: id.into(),
            state: state.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_colour_serves_once_as_many_targets_as_replicas_are_healthy() {
        let registering = [
            t("10.0.1.5", "healthy", ""),
            t("10.0.2.9", "initial", "Elb.RegistrationInProgress"),
        ];
        assert_eq!(
            serving(&registering, 2),
            Err("1 of 2 targets healthy; 10.0.2.9 initial (Elb.RegistrationInProgress)".into())
        );
        assert_eq!(serving(&registering, 1), Ok(()));
        let draining_old = [
            t("10.0.1.5", "healthy", ""),
            t("10.0.2.9", "healthy", ""),
            t("10.0.3.3", "draining", "Target.DeregistrationInProgress"),
        ];
        assert_eq!(serving(&draining_old, 2), Ok(()));
        assert_eq!(
            serving(&[], 2),
            Err("0 of 2 targets healthy".into()),
            "no target group yet is not serving"
        );
    }
}
