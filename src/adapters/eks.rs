//! Connect to the EKS cluster as `aws eks get-token` does, with no kubeconfig: endpoint and CA from
//! `DescribeCluster`, and a bearer token that is `k8s-aws-v1.` + base64url of a SigV4-presigned STS
//! `GetCallerIdentity` URL signing the `x-k8s-aws-id` header.
//!
//! EKS accepts a token for 15 minutes (EKS User Guide, "Grant IAM users access to Kubernetes":
//! "the token is valid for 15 minutes"; aws-iam-authenticator checks X-Amz-Date), while one
//! client serves a whole command (a promote waits minutes for CloudFront between two Kubernetes
//! calls). So the token is not part of the client: [`Authorize`], a layer in front of kube's
//! service stack, puts a token on every request, makes a new one when it is ten minutes old, and
//! on a 401 makes a new one and sends the request once more (a token the server no longer takes,
//! whatever the clocks say).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use tokio::sync::Mutex;

use crate::error::{Exit, Failure, Result, sdk};

const TOKEN_REFRESH: Duration = Duration::from_secs(10 * 60);

pub struct Cluster {
    pub name: String,
    endpoint: String,
    ca_der: Vec<u8>,
    tokens: Arc<Tokens>,
    client: Mutex<Option<kube::Client>>,
    proxy: Mutex<Option<kube::Client>>,
}

/// The cluster's bearer token, made on demand and shared by every clone of its client.
struct Tokens {
    cluster: String,
    aws: aws_config::SdkConfig,
    current: Mutex<Option<(http::HeaderValue, Instant)>>,
}

fn failure(message: String) -> Failure {
    Failure::new(
        Exit::Aws,
        "cluster",
        message,
        "check that the cluster stack deployed and that your credentials may call eks:DescribeCluster",
    )
}

/// The presigned URL inside the token; `sts_endpoint` is STS's (or the configured endpoint).
pub fn presign_get_caller_identity(
    identity: &aws_credential_types::Credentials,
    region: &str,
    sts_endpoint: &str,
    cluster: &str,
    now: SystemTime,
) -> std::result::Result<String, String> {
    let identity = identity.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let url = format!(
        "{}/?Action=GetCallerIdentity&Version=2011-06-15",
        sts_endpoint.trim_end_matches('/')
    );
    let signable = SignableRequest::new(
        "GET",
        &url,
        std::iter::once(("x-k8s-aws-id", cluster)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut request = http::Request::get(&url)
        .body(())
        .map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

pub fn token_from_url(url: &str) -> String {
    format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    )
}

impl Cluster {
    pub async fn connect(aws: &aws_config::SdkConfig, name: &str) -> Result<Cluster> {
        let eks = crate::adapters::endpoint::eks(aws);
        let described = eks
            .describe_cluster()
            .name(name)
            .send()
            .await
            .map_err(|e| failure(sdk(e)))?;
        let c = described
            .cluster
            .ok_or_else(|| failure(format!("no cluster {name}")))?;
        let endpoint = c
            .endpoint()
            .ok_or_else(|| failure(format!("cluster {name} has no endpoint yet")))?
            .to_string();
        let ca_b64 = c
            .certificate_authority()
            .and_then(|ca| ca.data())
            .ok_or_else(|| failure(format!("cluster {name} has no CA")))?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .map_err(|e| failure(format!("the cluster CA is not base64: {e}")))?;
        let pem =
            String::from_utf8(pem).map_err(|_| failure("the cluster CA is not PEM".into()))?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let ca_der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| failure(format!("the cluster CA is not PEM: {e}")))?;
        Ok(Cluster {
            name: name.into(),
            endpoint,
            ca_der,
            tokens: Arc::new(Tokens {
                cluster: name.into(),
                aws: aws.clone(),
                current: Mutex::new(None),
            }),
            client: Mutex::new(None),
            proxy: Mutex::new(None),
        })
    }

    /// The cluster's kube client; its requests carry a token kept fresh by [`Authorize`].
    pub async fn client(&self) -> Result<kube::Client> {
        self.build(&self.client, true).await
    }

    /// A client for the API server's service proxy: the same, except that an answer of 429, 503
    /// or 504 is returned as it is instead of retried (kube-client's default retry policy retries
    /// them up to 15 times). Through the proxy those are the pod's own answers (or the API
    /// server's "no endpoints available"), which a smoke test must see, not wait out.
    pub async fn proxy_client(&self) -> Result<kube::Client> {
        self.build(&self.proxy, false).await
    }

    async fn build(&self, slot: &Mutex<Option<kube::Client>>, retry: bool) -> Result<kube::Client> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Credentials that cannot sign fail here, as a cluster step, not inside a request.
        self.tokens.header(false).await?;
        let uri = self.endpoint.parse().map_err(|e| {
            failure(format!("the cluster endpoint {}: {e}", self.endpoint)).because(e)
        })?;
        let mut config = kube::Config::new(uri);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.read_timeout = Some(Duration::from_secs(60));
        config.default_retry = retry;
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|e| {
                failure(format!("a Kubernetes client for {}: {e}", self.endpoint)).because(e)
            })?
            // A cloneable stack under the layer, which sends a request a second time after a 401.
            .with_layer(&tower::buffer::BufferLayer::<
                http::Request<kube::client::Body>,
            >::new(64))
            .with_layer(&AuthorizeLayer(self.tokens.clone()))
            .build();
        *slot = Some(client.clone());
        Ok(client)
    }
}

impl Tokens {
    async fn token(&self) -> Result<String> {
        let provider = self
            .aws
            .credentials_provider()
            .ok_or_else(|| failure("no AWS credentials configured".into()))?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| failure(format!("AWS credentials: {e}")))?;
        let region = self
            .aws
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let sts = self
            .aws
            .endpoint_url()
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let url =
            presign_get_caller_identity(&creds, &region, &sts, &self.cluster, SystemTime::now())
                .map_err(|e| failure(format!("presigning the EKS token: {e}")))?;
        Ok(token_from_url(&url))
    }

    /// `Bearer <token>`: the current one while it is younger than [`TOKEN_REFRESH`], else (or
    /// when `renew`, after a 401) a new one.
    async fn header(&self, renew: bool) -> Result<http::HeaderValue> {
        let mut current = self.current.lock().await;
        if !renew
            && let Some((h, made)) = current.as_ref()
            && made.elapsed() < TOKEN_REFRESH
        {
            return Ok(h.clone());
        }
        let mut h = http::HeaderValue::from_str(&format!("Bearer {}", self.token().await?))
            .map_err(|e| failure(format!("the EKS token is not a header value: {e}")))?;
        h.set_sensitive(true);
        *current = Some((h.clone(), Instant::now()));
        Ok(h)
    }
}

struct AuthorizeLayer(Arc<Tokens>);

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            tokens: self.0.clone(),
        }
    }
}

/// Puts the cluster's token on each request; on a 401, a new token and one more try.
#[derive(Clone)]
struct Authorize<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

type Request = http::Request<kube::client::Body>;

impl<S, B> tower::Service<Request> for Authorize<S>
where
    S: tower::Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = tower::BoxError;
    type Future = futures_util::future::BoxFuture<
        'static,
        std::result::Result<http::Response<B>, tower::BoxError>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        use tower::ServiceExt;
        // The service that was made ready is the one to call (tower's clone-and-swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let again = request.body().try_clone().map(|body| {
                let mut r = http::Request::new(body);
                *r.method_mut() = request.method().clone();
                *r.uri_mut() = request.uri().clone();
                *r.version_mut() = request.version();
                *r.headers_mut() = request.headers().clone();
                r
            });
            let header = tokens.header(false).await.map_err(Box::new)?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, header);
            let response = inner.call(request).await.map_err(Into::into)?;
            match again {
                Some(mut retry) if response.status() == http::StatusCode::UNAUTHORIZED => {
                    // Let its connection go back to the pool before the second try.
                    drop(response);
                    tracing::debug!("the cluster refused its token (401): a new one, once more");
                    let header = tokens.header(true).await.map_err(Box::new)?;
                    retry
                        .headers_mut()
                        .insert(http::header::AUTHORIZATION, header);
                    inner
                        .ready()
                        .await
                        .map_err(Into::into)?
                        .call(retry)
                        .await
                        .map_err(Into::into)
                }
                _ => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_a_presigned_get_caller_identity_signing_the_cluster_header() {
        let creds =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let url = presign_get_caller_identity(
            &creds,
            "eu-west-1",
            "https://sts.eu-west-1.amazonaws.com",
            "iris",
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        let token = token_from_url(&url);
        assert!(token.starts_with("k8s-aws-v1.") && !token.contains('='));
    }

    /// The service-proxy client hands back a 503 (the pod's, or "no endpoints available") at
    /// once, as a smoke test must see it; the API client, with kube-client's default retry,
    /// asks again. Against a loopback HTTPS API server that answers every request 503.
    #[tokio::test]
    async fn the_proxy_client_returns_a_503_as_it_is_while_the_api_client_retries_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // As main does: both rustls providers are in the build.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let router = axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoints available",
                )
            }
        });
        let tls = sandbox::tls::make().unwrap();
        let listener = tokio::net::TcpListener::bind(sandbox::tls::loopback(0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(sandbox::tls::serve(listener, tls.acceptor, router));
        let body: String = tls
            .ca_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        "AKIDEXAMPLE",
                        "secret",
                        None,
                        None,
                        "test",
                    ),
                ),
            )
            .build();
        let cluster = Cluster {
            name: "iris".into(),
            endpoint: format!("https://127.0.0.1:{port}"),
            ca_der: base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
            tokens: Arc::new(Tokens {
                cluster: "iris".into(),
                aws,
                current: Mutex::new(None),
            }),
            client: Mutex::new(None),
            proxy: Mutex::new(None),
        };
        let prefix = "/api/v1/namespaces/ml/services/iris-blue:http/proxy".to_string();
        let base = crate::adapters::smoke::Base::Proxy {
            client: cluster.proxy_client().await.unwrap(),
            prefix: prefix.clone(),
        };
        let http = crate::adapters::smoke::http_client(Duration::from_secs(5));
        let answer =
            crate::adapters::smoke::call(&http, &base, http::Method::GET, "/healthz", "", None)
                .await
                .unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(hits.load(Ordering::SeqCst), 1, "asked once");

        let api = cluster.client().await.unwrap();
        let request = http::Request::get(format!("{prefix}/healthz"))
            .body(Vec::new())
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), api.request_text(request)).await;
        assert!(
            hits.load(Ordering::SeqCst) >= 2,
            "the API client retried the 503 ({} requests in all)",
            hits.load(Ordering::SeqCst)
        );
        server.abort();
    }
}
