//! The image store's routes: `GET /v1/images`, `POST /v1/images/pull`,
//! `DELETE /v1/images/{digest}`.

use berth_api_types::{Image, PullImage, PullReport};

use crate::{Client, ClientError, Method, api_error};

impl Client {
    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.call(Method::GET, "/v1/images", None, &[]).await
    }

    /// `POST /v1/images/pull`: answers once the image is in the store.
    pub async fn pull_image(&self, image: &str) -> Result<PullReport, ClientError> {
        let req = PullImage {
            image: image.to_owned(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::POST, "/v1/images/pull", Some(body), &[])
            .await
    }

    /// `DELETE /v1/images/{digest}`.
    pub async fn remove_image(&self, digest: &str) -> Result<(), ClientError> {
        let path = format!("/v1/images/{}", percent(digest));
        let r = self.raw(Method::DELETE, &path, None, &[]).await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(api_error(r.status, &r.body))
        }
    }
}

/// Escapes what a path segment cannot carry as is (a digest is `sha256:` and hex; anything else
/// a user typed is sent escaped, so the server names it in its refusal).
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
