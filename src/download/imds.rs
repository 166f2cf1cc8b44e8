//! The instance's region from the EC2 instance metadata service: IMDSv2 (a session token from
//! `PUT /latest/api/token`, then `GET /latest/meta-data/placement/region` with it), falling back
//! to IMDSv1 (the GET without a token) only when the token call is refused with 403, 404 or 405,
//! as the AWS SDKs do. Two hand-written requests instead of an SDK: that is all the launcher
//! needs from IMDS.
use hyper::Method;

use super::http::{with_retries, Client, HttpError, Kind, Retry};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const REGION_PATH: &str = "/latest/meta-data/placement/region";
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Six hours, the SDKs' default; the token is used once.
const TOKEN_TTL: &str = "21600";

/// Which protocol gave the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    V1,
}

/// `endpoint` + `path`, without a doubled slash.
pub fn url(endpoint: &str, path: &str) -> String {
    format!("{}{path}", endpoint.trim_end_matches('/'))
}

/// Ask IMDS for the region; `v1_allowed: false` (`AWS_EC2_METADATA_V1_DISABLED=true`) makes a
/// refused token an error instead of the IMDSv1 fallback.
pub async fn region(
    client: &Client,
    endpoint: &str,
    retry: Retry,
    v1_allowed: bool,
) -> Result<(String, Version), HttpError> {
    let token_url = &url(endpoint, TOKEN_PATH);
    let token = with_retries(retry, "IMDSv2 token request", move || async move {
        let resp = client
            .request(Method::PUT, token_url, &[(TOKEN_TTL_HEADER, TOKEN_TTL)])
            .await?;
        match resp.status {
            403..=405 if v1_allowed => Ok(None),
            s @ 403..=405 => Err(HttpError {
                method: "PUT",
                url: token_url.to_string(),
                kind: Kind::Status(s),
                detail: format!(
                    "HTTP {s}: the IMDSv2 token was refused and AWS_EC2_METADATA_V1_DISABLED=true forbids the IMDSv1 fallback"
                ),
                attempts: 1,
            }),
            _ => Ok(Some(resp.success()?.text(4096).await?)),
        }
    })
    .await?;
    let version = match &token {
        Some(_) => Version::V2,
        None => {
            tracing::info!(
                url = %token_url,
                "the metadata service refused an IMDSv2 token; falling back to IMDSv1"
            );
            Version::V1
        }
    };
    let region_url = &url(endpoint, REGION_PATH);
    let token = token.as_deref().map(str::trim);
    let region = with_retries(retry, "IMDS region request", move || async move {
        let headers: Vec<(&'static str, &str)> = match token {
            Some(t) => vec![(TOKEN_HEADER, t)],
            None => vec![],
        };
        client
            .request(Method::GET, region_url, &headers)
            .await?
            .success()?
            .text(256)
            .await
    })
    .await?;
    Ok((region.trim().to_string(), version))
}
