//! The AWS stand-in through the AWS SDK for Rust: CloudFormation with the EKS and CloudFront types
//! moto lacks, CloudFront's If-Match, failed stacks, ECR digests and downloads, fault injection,
//! and the edge following the deployed origin.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Parameter, StackStatus};
use base64::Engine;
use serde_json::json;

use crate::{Clients, Sandbox, eventually, parameters, stack_status};

fn template() -> String {
    json!({
        "Parameters": {"OriginDomain": {"Type": "String"}, "OriginPort": {"Type": "Number", "Default": 80}, "Secret": {"Type": "String"}},
        "Resources": {
            "Cluster": {"Type": "AWS::EKS::Cluster", "Properties": {"Name": "demo", "Version": "1.33", "RoleArn": "arn:aws:iam::123456789012:role/cluster",
                "ResourcesVpcConfig": {"SubnetIds": ["subnet-a", "subnet-b"], "EndpointPublicAccess": true}}},
            "Profile": {"Type": "AWS::EKS::FargateProfile", "Properties": {"ClusterName": {"Ref": "Cluster"}, "FargateProfileName": "app",
                "PodExecutionRoleArn": "arn:aws:iam::123456789012:role/pods", "Subnets": ["subnet-a"], "Selectors": [{"Namespace": "app"}]}},
            "Edge": {"Type": "AWS::CloudFront::Distribution", "Properties": {"DistributionConfig": {
                "Enabled": true, "Comment": "e2e", "HttpVersion": "http2", "IPV6Enabled": true,
                "Origins": [{"Id": "live", "DomainName": {"Ref": "OriginDomain"},
                    "CustomOriginConfig": {"HTTPPort": {"Ref": "OriginPort"}, "OriginProtocolPolicy": "http-only"},
                    "OriginCustomHeaders": [{"HeaderName": "X-Origin-Verify", "HeaderValue": {"Ref": "Secret"}}]}],
                "DefaultCacheBehavior": {"TargetOriginId": "live", "ViewerProtocolPolicy": "redirect-to-https",
                    "AllowedMethods": ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"], "CachedMethods": ["GET", "HEAD"],
                    "CachePolicyId": "4135ea2d-6df8-44a3-9df3-4b5a84be39ad", "Compress": true}}}}
        },
        "Outputs": {
            "ClusterArn": {"Value": {"Fn::GetAtt": ["Cluster", "Arn"]}},
            "Endpoint": {"Value": {"Fn::GetAtt": ["Cluster", "Endpoint"]}},
            "Ca": {"Value": {"Fn::GetAtt": ["Cluster", "CertificateAuthorityData"]}},
            "Oidc": {"Value": {"Fn::GetAtt": ["Cluster", "OpenIdConnectIssuerUrl"]}},
            "DistributionId": {"Value": {"Ref": "Edge"}},
            "DomainName": {"Value": {"Fn::GetAtt": ["Edge", "DomainName"]}}
        }
    })
    .to_string()
}

fn params(origin: &str, port: u16) -> Vec<Parameter> {
    parameters(&[
        ("OriginDomain", origin),
        ("OriginPort", &port.to_string()),
        ("Secret", "s3cret"),
    ])
}

/// A one-line HTTP server on 127.0.0.1 answering `name` and echoing the origin-verify header.
fn origin(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let secret = req
                .lines()
                .find_map(|l| l.strip_prefix("x-origin-verify: "))
                .unwrap_or("none")
                .trim()
                .to_string();
            let body = format!("{name} {secret}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn outputs(
    stack: &aws_sdk_cloudformation::types::Stack,
) -> std::collections::HashMap<String, String> {
    stack
        .outputs()
        .iter()
        .map(|o| {
            (
                o.output_key().unwrap().to_string(),
                o.output_value().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_stack_creates_an_eks_cluster_and_a_distribution_and_the_edge_follows_its_origin() {
    let sb = Sandbox::start(&[]);
    let config = sb.aws().await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let (a, b) = (origin("blue"), origin("green"));
    cfn.create_stack()
        .stack_name("e2e")
        .template_body(template())
        .set_parameters(Some(params("127.0.0.1", a)))
        .send()
        .await
        .unwrap();
    let stack = cfn
        .describe_stacks()
        .stack_name("e2e")
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .clone();
    assert_eq!(stack.stack_status(), Some(&StackStatus::CreateComplete));
    let out = outputs(&stack);
    assert_eq!(
        out["Endpoint"],
        sb.var("SANDBOX_CLUSTER_URL"),
        "the EKS endpoint is the sandbox cluster"
    );
    let ca = base64::engine::general_purpose::STANDARD
        .decode(&out["Ca"])
        .unwrap();
    assert_eq!(
        String::from_utf8(ca).unwrap(),
        std::fs::read_to_string(sb.dir.join("ca.pem")).unwrap()
    );
    assert!(out["ClusterArn"].ends_with(":cluster/demo") && out["Oidc"].starts_with("https://"));

    let eks = aws_sdk_eks::Client::new(&config);
    let cluster = eks
        .describe_cluster()
        .name("demo")
        .send()
        .await
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(cluster.endpoint(), Some(sb.var("SANDBOX_CLUSTER_URL")));
    let profile = eks
        .describe_fargate_profile()
        .cluster_name("demo")
        .fargate_profile_name("app")
        .send()
        .await
        .unwrap();
    assert_eq!(
        profile.fargate_profile.unwrap().selectors()[0].namespace(),
        Some("app")
    );

    let cf = aws_sdk_cloudfront::Client::new(&config);
    let id = out["DistributionId"].clone();
    let dist = cf.get_distribution().id(&id).send().await.unwrap();
    assert_eq!(
        dist.distribution().unwrap().domain_name(),
        out["DomainName"]
    );
    let origin0 = &dist
        .distribution()
        .unwrap()
        .distribution_config()
        .unwrap()
        .origins()
        .unwrap()
        .items()[0];
    assert_eq!(
        origin0.custom_headers().unwrap().items()[0].header_value(),
        "s3cret"
    );

    let http = reqwest::Client::new();
    let edge = sb.var("SANDBOX_EDGE_URL").to_string();
    let get = |http: reqwest::Client, edge: String| async move {
        http.get(format!("{edge}/version"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually("the edge to serve blue", Duration::from_secs(5), || {
        let (http, edge) = (http.clone(), edge.clone());
        async move { (get(http, edge).await == "blue s3cret").then_some(()) }
    })
    .await;

    // Flip the origin through the stack: InProgress (either configuration), then Deployed (the new one).
    let etag_before = dist.e_tag().unwrap().to_string();
    cfn.update_stack()
        .stack_name("e2e")
        .template_body(template())
        .set_parameters(Some(params("127.0.0.1", b)))
        .send()
        .await
        .unwrap();
    let after = cf.get_distribution().id(&id).send().await.unwrap();
    assert_ne!(
        after.e_tag().unwrap(),
        etag_before,
        "every change gets a new ETag"
    );
    assert_eq!(after.distribution().unwrap().status(), "InProgress");
    // While the change propagates, a request meets the old or the new configuration (CloudFront
    // Developer Guide, "Update a distribution"), never a mix of the two and never an error.
    for _ in 0..20 {
        let answer = get(http.clone(), edge.clone()).await;
        assert!(
            answer == "blue s3cret" || answer == "green s3cret",
            "while InProgress: {answer}"
        );
    }
    eventually("the distribution to deploy", Duration::from_secs(5), || {
        let cf = cf.clone();
        let id = id.clone();
        async move {
            (cf.get_distribution()
                .id(id)
                .send()
                .await
                .unwrap()
                .distribution()
                .unwrap()
                .status()
                == "Deployed")
                .then_some(())
        }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(http.clone(), edge.clone()).await, "green s3cret");
    }

    // If-Match: a stale ETag is refused.
    let config_now = cf.get_distribution_config().id(&id).send().await.unwrap();
    let stale = cf
        .update_distribution()
        .id(&id)
        .if_match(&etag_before)
        .distribution_config(config_now.distribution_config().unwrap().clone())
        .send()
        .await;
    let err = stale.unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_precondition_failed()),
        "{err:?}"
    );
    cf.update_distribution()
        .id(&id)
        .if_match(config_now.e_tag().unwrap())
        .distribution_config(config_now.distribution_config().unwrap().clone())
        .send()
        .await
        .unwrap();

    // Deleting the stack deletes what it made.
    cfn.delete_stack().stack_name("e2e").send().await.unwrap();
    assert!(
        eks.list_clusters()
            .send()
            .await
            .unwrap()
            .clusters()
            .is_empty()
    );
    assert_eq!(
        cf.list_distributions()
            .send()
            .await
            .unwrap()
            .distribution_list()
            .unwrap()
            .quantity(),
        0
    );
}

#[tokio::test]
async fn a_resource_that_fails_leaves_the_stack_in_rollback_complete() {
    let sb = Sandbox::start(&[]);
    let cfn = aws_sdk_cloudformation::Client::new(&sb.aws().await);
    let bad = json!({"Resources": {"Profile": {"Type": "AWS::EKS::FargateProfile", "Properties": {"ClusterName": "missing", "FargateProfileName": "p",
        "PodExecutionRoleArn": "arn:aws:iam::123456789012:role/pods", "Selectors": [{"Namespace": "app"}]}}}});
    cfn.create_stack()
        .stack_name("bad")
        .template_body(bad.to_string())
        .send()
        .await
        .unwrap();
    let stack = cfn
        .describe_stacks()
        .stack_name("bad")
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .clone();
    assert_eq!(stack.stack_status(), Some(&StackStatus::RollbackComplete));
    let events = cfn
        .describe_stack_events()
        .stack_name("bad")
        .send()
        .await
        .unwrap();
    let failed = events
        .stack_events()
        .iter()
        .find(|e| e.resource_status().map(|s| s.as_str()) == Some("CREATE_FAILED"))
        .expect("a CREATE_FAILED event");
    assert_eq!(failed.logical_resource_id(), Some("Profile"));
    assert!(
        failed.resource_status_reason().unwrap().contains("missing"),
        "{:?}",
        failed.resource_status_reason()
    );
}

#[tokio::test]
async fn ecr_digests_are_manifest_hashes_and_layers_can_be_downloaded() {
    let sb = Sandbox::start(&[]);
    let ecr = aws_sdk_ecr::Client::new(&sb.aws().await);
    ecr.create_repository()
        .repository_name("app")
        .send()
        .await
        .unwrap();
    let dir = sb.dir.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bin"), vec![7u8; 3 << 20]).unwrap();
    let spec = release::adapters::image::ImageSpec {
        path_in_image: "/bin",
        env: &[],
        user: "65532:65532",
        exposed_port: 8080,
        labels: &[],
        model: None,
    };
    let image = release::adapters::image::from_binary(
        &dir.join("bin"),
        &spec,
        &release::adapters::image::LayerCache::at(None),
    )
    .unwrap();
    let pushed = release::adapters::image::push(&ecr, "app", "v1", &image, |_| {})
        .await
        .unwrap();
    assert_eq!(
        pushed.digest,
        image.digest(),
        "ECR's digest is the manifest's sha256"
    );
    assert_eq!(pushed.skipped_blobs, 0);
    let again = release::adapters::image::push(&ecr, "app", "v1", &image, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (
            again.digest.as_str(),
            again.uploaded_bytes,
            again.skipped_blobs
        ),
        (pushed.digest.as_str(), 0, 2),
        "a re-push uploads nothing"
    );
    let layer = &image.layers[0];
    let url = ecr
        .get_download_url_for_layer()
        .repository_name("app")
        .layer_digest(&layer.digest)
        .send()
        .await
        .unwrap()
        .download_url
        .unwrap();
    let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), &layer.bytes().unwrap()[..]);
    let missing = ecr
        .get_download_url_for_layer()
        .repository_name("app")
        .layer_digest(format!("sha256:{}", "0".repeat(64)))
        .send()
        .await;
    let err = missing.unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_layers_not_found_exception()),
        "{err:?}"
    );
}

#[tokio::test]
async fn faults_are_injected_per_service_and_retries_absorb_a_few() {
    let sb = Sandbox::start(&["--faults", r#"{"cloudformation": {"throttle": 1.0}}"#]);
    let config = sb.aws().await;
    let no_retry = aws_sdk_cloudformation::config::Builder::from(&config)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let err = aws_sdk_cloudformation::Client::from_conf(no_retry)
        .list_stacks()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_cloudformation::error::ProvideErrorMetadata::code(&err),
        Some("Throttling"),
        "{err:?}"
    );
    // Other services are untouched.
    aws_sdk_ecr::Client::new(&config)
        .describe_repositories()
        .send()
        .await
        .unwrap();

    // A few percent of throttling and 5xx: the SDK's standard retries get every call through.
    let http = reqwest::Client::new();
    http.put(sb.control("faults"))
        .body(r#"{"*": {"throttle": 0.15, "error": 0.15}}"#)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let retrying = aws_sdk_cloudformation::config::Builder::from(&config)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(10))
        .build();
    let cfn = aws_sdk_cloudformation::Client::from_conf(retrying);
    for _ in 0..30 {
        cfn.list_stacks().send().await.unwrap();
    }
    let report: serde_json::Value = http
        .get(sb.control("faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let injected: i64 = report["injected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert!(injected > 1, "faults were injected: {report}");
    let bad = http
        .put(sb.control("faults"))
        .body(r#"{"s3": {"explode": 0.5}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn deleting_the_network_stack_removes_its_nat_gateway_routes_and_vpc() {
    let sb = Sandbox::start(&[]);
    let cfn = aws_sdk_cloudformation::Client::new(&sb.aws().await);
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloudformation/network.yaml"),
    )
    .unwrap();
    cfn.create_stack()
        .stack_name("net")
        .template_body(body)
        .parameters(
            Parameter::builder()
                .parameter_key("AppName")
                .parameter_value("net")
                .build(),
        )
        .send()
        .await
        .unwrap();
    // moto alone fails here with DependencyViolation: the VPC still has its NAT gateway, gateway
    // attachment and route tables.
    cfn.delete_stack().stack_name("net").send().await.unwrap();
    let left = cfn.describe_stacks().stack_name("net").send().await;
    assert!(left.is_err(), "the stack is gone: {left:?}");
}

/// As AWS does: DescribeStacks masks a NoEcho parameter as `****` and shows a list parameter as
/// its comma-delimited string, a change set whose parameter
/// breaks its constraint (MinLength here) is refused, and `UsePreviousValue` keeps the real value.
#[tokio::test]
async fn no_echo_parameters_are_masked_constraints_checked_and_previous_values_kept() {
    let sb = Sandbox::start(&[]);
    let cfn = aws_sdk_cloudformation::Client::new(&sb.aws().await);
    let template = json!({
        "Parameters": {
            "Secret": {"Type": "String", "NoEcho": true, "MinLength": 16},
            "Name": {"Type": "String", "AllowedPattern": "[a-z]+"},
            "Zones": {"Type": "CommaDelimitedList", "Default": "x"}
        },
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        // Outputs are not masked (AWS warns about exactly this): how the test sees the real value.
        "Outputs": {"Name": {"Value": {"Ref": "Name"}}, "Secret": {"Value": {"Ref": "Secret"}}}
    })
    .to_string();
    let value = |k: &str, v: &str| {
        Parameter::builder()
            .parameter_key(k)
            .parameter_value(v)
            .build()
    };
    let previous = |k: &str| {
        Parameter::builder()
            .parameter_key(k)
            .use_previous_value(true)
            .build()
    };
    let change = |name: &'static str, kind: &'static str, parameters: Vec<Parameter>| {
        cfn.create_change_set()
            .stack_name("secrets")
            .change_set_name(name)
            .change_set_type(kind.into())
            .template_body(&template)
            .set_parameters(Some(parameters))
            .send()
    };
    let refused = change(
        "short",
        "CREATE",
        vec![value("Secret", "short"), value("Name", "a")],
    )
    .await
    .expect_err("a secret under MinLength is refused");
    assert!(
        aws_sdk_cloudformation::error::DisplayErrorContext(&refused)
            .to_string()
            .contains("at least 16 characters"),
        "{refused:?}"
    );
    let pattern = change(
        "upper",
        "CREATE",
        vec![value("Secret", "0123456789abcdef"), value("Name", "A1")],
    )
    .await
    .expect_err("a name outside its AllowedPattern is refused");
    assert!(
        format!("{pattern:?}").contains("must match pattern"),
        "{pattern:?}"
    );
    let created = change(
        "create",
        "CREATE",
        vec![
            value("Secret", "0123456789abcdef"),
            value("Name", "a"),
            value("Zones", "a,b"),
        ],
    )
    .await
    .unwrap();
    cfn.execute_change_set()
        .change_set_name(created.id().unwrap())
        .send()
        .await
        .unwrap();
    let described = |cfn: aws_sdk_cloudformation::Client| async move {
        let out = cfn
            .describe_stacks()
            .stack_name("secrets")
            .send()
            .await
            .unwrap();
        let stack = out.stacks()[0].clone();
        stack
            .parameters()
            .iter()
            .map(|p| {
                (
                    p.parameter_key().unwrap().to_string(),
                    p.parameter_value().unwrap().to_string(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let seen = described(cfn.clone()).await;
    assert_eq!(seen["Secret"], "****", "the NoEcho value is masked");
    assert_eq!(seen["Name"], "a");
    assert_eq!(seen["Zones"], "a,b", "a list parameter as it was given");
    // Copying the described values back sends the mask: refused.
    let copied = change(
        "copy",
        "UPDATE",
        vec![value("Secret", &seen["Secret"]), value("Name", "b")],
    )
    .await
    .expect_err("the masked value fails MinLength");
    assert!(
        format!("{copied:?}").contains("at least 16 characters"),
        "{copied:?}"
    );
    // UsePreviousValue keeps the real secret and passes its constraint.
    let kept = change(
        "keep",
        "UPDATE",
        vec![previous("Secret"), value("Name", "b")],
    )
    .await
    .unwrap();
    cfn.execute_change_set()
        .change_set_name(kept.id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(described(cfn.clone()).await["Name"], "b");
    let out = cfn
        .describe_stacks()
        .stack_name("secrets")
        .send()
        .await
        .unwrap();
    assert_eq!(
        outputs(&out.stacks()[0])["Secret"],
        "0123456789abcdef",
        "the real secret was kept"
    );
}

/// As EKS does: two Fargate profiles of one cluster that CloudFormation would create at once fail
/// (ResourceInUseException); ordered by DependsOn, they are created one after the other.
#[tokio::test]
async fn fargate_profiles_of_one_cluster_must_be_created_one_at_a_time() {
    let sb = Sandbox::start(&[]);
    let cfn = aws_sdk_cloudformation::Client::new(&sb.aws().await);
    let template = |ordered: bool| {
        let profile = |name: &str| {
            json!({"Type": "AWS::EKS::FargateProfile", "Properties": {"ClusterName": {"Ref": "Cluster"}, "FargateProfileName": name,
                "PodExecutionRoleArn": "arn:aws:iam::123456789012:role/pods", "Subnets": ["subnet-a"], "Selectors": [{"Namespace": name}]}})
        };
        let mut system = profile("system");
        if ordered {
            system["DependsOn"] = json!("App");
        }
        json!({"Resources": {
            "Cluster": {"Type": "AWS::EKS::Cluster", "Properties": {"Name": if ordered { "ordered" } else { "unordered" }, "Version": "1.33",
                "RoleArn": "arn:aws:iam::123456789012:role/cluster", "ResourcesVpcConfig": {"SubnetIds": ["subnet-a", "subnet-b"]}}},
            "App": profile("app"),
            "System": system
        }})
        .to_string()
    };
    for (stack, ordered, want) in [
        ("unordered", false, StackStatus::RollbackComplete),
        ("ordered", true, StackStatus::CreateComplete),
    ] {
        cfn.create_stack()
            .stack_name(stack)
            .template_body(template(ordered))
            .send()
            .await
            .unwrap();
        let out = cfn
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await
            .unwrap();
        assert_eq!(out.stacks()[0].stack_status(), Some(&want), "{stack}");
    }
    let events = cfn
        .describe_stack_events()
        .stack_name("unordered")
        .send()
        .await
        .unwrap();
    let failed = events
        .stack_events()
        .iter()
        .find(|e| e.resource_status().map(|s| s.as_str()) == Some("CREATE_FAILED"))
        .expect("a CREATE_FAILED event");
    assert!(
        failed
            .resource_status_reason()
            .unwrap()
            .contains("ResourceInUseException"),
        "{failed:?}"
    );
}

/// As CloudFormation applies DeletionPolicy: a failed create's rollback keeps a `Retain` bucket
/// and deletes a `RetainExceptOnCreate` one; deleting the stack keeps both. Resources that do not
/// depend on the failed one are created first, as AWS's parallel creation would have.
#[tokio::test]
async fn deletion_policies_hold_across_a_rollback_and_a_stack_deletion() {
    let sb = Sandbox::start(&[]);
    let conf = sb.aws().await;
    let cfn = aws_sdk_cloudformation::Client::new(&conf);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let exists = |name: &'static str| {
        let s3 = s3.clone();
        async move { s3.head_bucket().bucket(name).send().await.is_ok() }
    };
    let bucket = |name: &str, policy: &str| json!({"Type": "AWS::S3::Bucket", "DeletionPolicy": policy, "Properties": {"BucketName": name}});
    // The failing resource comes first: moto alone would stop there, before either bucket.
    let failing = json!({"Resources": {
        "Profile": {"Type": "AWS::EKS::FargateProfile", "Properties": {"ClusterName": "missing",
            "FargateProfileName": "p", "PodExecutionRoleArn": "arn:aws:iam::123456789012:role/pods",
            "Selectors": [{"Namespace": "app"}]}},
        "Kept": bucket("kept-on-rollback", "Retain"),
        "Gone": bucket("gone-on-rollback", "RetainExceptOnCreate"),
    }});
    cfn.create_stack()
        .stack_name("policies")
        .template_body(failing.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        stack_status(&cfn, "policies").await,
        StackStatus::RollbackComplete
    );
    assert!(
        exists("kept-on-rollback").await,
        "Retain survives the rollback"
    );
    assert!(
        !exists("gone-on-rollback").await,
        "RetainExceptOnCreate is rolled back"
    );
    // A stack that was created: deleting it keeps a RetainExceptOnCreate bucket.
    let good = json!({"Resources": {"Kept": bucket("kept-on-delete", "RetainExceptOnCreate")}});
    cfn.create_stack()
        .stack_name("kept")
        .template_body(good.to_string())
        .send()
        .await
        .unwrap();
    assert!(exists("kept-on-delete").await);
    cfn.delete_stack().stack_name("kept").send().await.unwrap();
    eventually("the stack is deleted", Duration::from_secs(20), || async {
        let out = cfn.describe_stacks().stack_name("kept").send().await;
        out.ok()
            .filter(|o| {
                o.stacks()
                    .first()
                    .is_some_and(|s| s.stack_status() != Some(&StackStatus::DeleteComplete))
            })
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        exists("kept-on-delete").await,
        "kept when the stack is deleted"
    );
}

const CONDITIONAL: &str = r#"
Parameters:
  Mode: {Type: String, Default: disabled}
  Name: {Type: String, Default: ""}
Conditions:
  IsEnabled: !Equals [!Ref Mode, enabled]
  Named: !Not [!Equals [!Ref Name, ""]]
  Both: !And [!Condition IsEnabled, !Condition Named]
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Condition: Both
    Properties:
      BucketName: !Ref Name
  Always:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: e2e-always
"#;

/// An update follows the resources' conditions under its new parameters, as CloudFormation does:
/// a condition that turns true creates its resource, one that turns false deletes it, one that
/// stays false touches nothing; `!Condition` inside `Fn::And` is the condition it names.
#[tokio::test]
async fn conditions_decide_what_an_update_creates_and_deletes() {
    let sb = Sandbox::start(&[]);
    let config = sb.aws().await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let s3 = aws_sdk_s3::Client::new(&config);
    let set = |mode: &str, name: &str| Some(parameters(&[("Mode", mode), ("Name", name)]));
    let buckets = |s3: aws_sdk_s3::Client| async move {
        let mut names: Vec<String> = s3
            .list_buckets()
            .send()
            .await
            .unwrap()
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    cfn.create_stack()
        .stack_name("cond")
        .template_body(CONDITIONAL)
        .set_parameters(set("disabled", "e2e-conditional"))
        .send()
        .await
        .unwrap();
    assert_eq!(buckets(s3.clone()).await, ["e2e-always"]);
    cfn.update_stack()
        .stack_name("cond")
        .template_body(CONDITIONAL)
        .set_parameters(set("enabled", "e2e-conditional"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stack_status(&cfn, "cond").await,
        StackStatus::UpdateComplete
    );
    assert_eq!(
        buckets(s3.clone()).await,
        ["e2e-always", "e2e-conditional"],
        "both conditions true: made"
    );
    cfn.update_stack()
        .stack_name("cond")
        .template_body(CONDITIONAL)
        .set_parameters(set("disabled", "e2e-conditional"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stack_status(&cfn, "cond").await,
        StackStatus::UpdateComplete
    );
    assert_eq!(
        buckets(s3.clone()).await,
        ["e2e-always"],
        "the condition turned false: deleted"
    );
}
