//! The sandbox: local stand-ins for AWS (moto, launched by `aws/launcher.py`), an EKS cluster (the
//! Kubernetes API, a kubelet, a Deployment controller, a load-balancer controller, all in this
//! crate) and the CloudFront edge (in the launcher), on loopback only. See ../shared/DESIGN.md and
//! docs/sandbox.md.

pub mod api;
pub mod cluster_net;
pub mod deployments;
pub mod harness;
pub mod kubelet;
pub mod lb;
pub mod merge;
pub mod resources;
pub mod store;
pub mod system;
pub mod tls;

use std::time::{Duration, SystemTime};

use base64::Engine;
use sha2::Digest;

/// An EKS-style bearer token of the right shape: `k8s-aws-v1.` + base64url of a presigned STS
/// GetCallerIdentity URL signing `x-k8s-aws-id`. The sandbox checks the shape and the age, not
/// the signature (it has no secret to check it with), so this one carries a digest in its place.
/// `release` makes real ones with the AWS SDK's SigV4 presigning.
pub fn sandbox_token(cluster: &str, at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(['-', ':'], "");
    let day = &stamp[..8];
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "GetCallerIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("X-Amz-Algorithm", "AWS4-HMAC-SHA256")
        .append_pair(
            "X-Amz-Credential",
            &format!("sandbox/{day}/us-east-1/sts/aws4_request"),
        )
        .append_pair("X-Amz-Date", &stamp)
        .append_pair("X-Amz-Expires", "60")
        .append_pair("X-Amz-SignedHeaders", "host;x-k8s-aws-id")
        .append_pair(
            "X-Amz-Signature",
            &format!("{:x}", sha2::Sha256::digest(format!("{cluster}/{stamp}"))),
        )
        .finish();
    let url = format!("https://sts.us-east-1.amazonaws.com/?{query}");
    format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    )
}

/// How long EKS accepts a token, from its X-Amz-Date (`SANDBOX_TOKEN_TTL_SECONDS` sets the
/// sandbox's own, for tests that outlive a short one).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
