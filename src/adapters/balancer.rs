//! Elastic Load Balancing v2: the NLB the AWS Load Balancer Controller made for a colour, found
//! by the DNS name in its Service's status (the controller writes the NLB's `DNSName` to
//! `status.loadBalancer.ingress[0].hostname`), for its ARN (what a CloudFront VPC origin names)
//! and its state.

use crate::error::{Exit, Failure, Result, sdk};

/// One NLB as `DescribeLoadBalancers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    pub arn: String,
    pub state: String,
    pub scheme: String,
}

/// The load balancer whose DNS name is `dns`, over every page of `DescribeLoadBalancers`; `None`
/// when there is none (yet).
pub async fn by_dns_name(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    dns: &str,
) -> Result<Option<Balancer>> {
    let mut pages = elb.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            Failure::new(
                Exit::Aws,
                "load balancer",
                format!("DescribeLoadBalancers: {}", sdk(e)),
                "check that the credentials may call elasticloadbalancing:DescribeLoadBalancers",
            )
        })?;
        for lb in page.load_balancers() {
            if lb
                .dns_name()
                .is_some_and(|d| d.eq_ignore_ascii_case(dns.trim_end_matches('.')))
            {
                return Ok(Some(Balancer {
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
                }));
            }
        }
    }
    Ok(None)
}
