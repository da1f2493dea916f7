//! ECR's scan of a pushed image (`DescribeImageScanFindings`), for the image scan gate
//! (`plan::scan`).

use std::collections::BTreeMap;

use aws_sdk_ecr::error::ProvideErrorMetadata;
use aws_sdk_ecr::types::ImageIdentifier;

use crate::plan::scan::ScanSeen;

/// The scan of `digest` in `repository`: its status and severity counts, or that there is none.
pub async fn findings(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    digest: &str,
) -> Result<ScanSeen, String> {
    let out = ecr
        .describe_image_scan_findings()
        .repository_name(repository)
        .image_id(ImageIdentifier::builder().image_digest(digest).build())
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) if e.code() == Some("ScanNotFoundException") => return Ok(ScanSeen::NotFound),
        Err(e) => {
            return Err(format!(
                "ECR DescribeImageScanFindings: {}",
                crate::error::sdk(e)
            ));
        }
    };
    let status = out.image_scan_status();
    let counts: BTreeMap<String, u64> = out
        .image_scan_findings()
        .and_then(|f| f.finding_severity_counts())
        .map(|c| {
            c.iter()
                .map(|(k, n)| (k.as_str().to_string(), (*n).max(0) as u64))
                .collect()
        })
        .unwrap_or_default();
    Ok(ScanSeen::Status {
        status: status
            .and_then(|s| s.status())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        description: status
            .and_then(|s| s.description())
            .unwrap_or_default()
            .to_string(),
        counts,
    })
}
