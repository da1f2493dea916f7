//! The notification webhook (`notify.webhook_url`): one POST of the message `plan::notify`
//! made. The URL is a secret (an incoming webhook's URL is its credential): it is never printed,
//! not even in an error.

use std::time::Duration;

use serde_json::Value;

/// POST `body` to `url` within 5 s; `Err`: why it did not arrive, without the URL.
pub async fn send(url: &str, body: &Value) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.without_url().to_string())?;
    let answer = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {}", answer.status()))
    }
}
