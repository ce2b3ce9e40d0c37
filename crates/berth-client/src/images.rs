//! The image store's routes: `GET /v1/images`, `POST /v1/images/pull`,
//! `DELETE /v1/images/{digest}`.

use berth_api_types::{ErrorBody, Image, PULL_STREAM_MEDIA_TYPE, PullEvent, PullImage, PullReport};
use http_body_util::BodyExt as _;

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

    /// `POST /v1/images/pull` streamed (`Accept: application/x-ndjson`): calls `progress` with
    /// (bytes on the host, total bytes) as the agent reports them; answers with the report, or
    /// the error, that ends the stream.
    pub async fn pull_image_progress(
        &self,
        image: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<PullReport, ClientError> {
        let req = PullImage {
            image: image.to_owned(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Decode(e.to_string()))?;
        let headers = [("accept", PULL_STREAM_MEDIA_TYPE)];
        let mut body = self
            .send_streaming(Method::POST, "/v1/images/pull", Some(body), &headers)
            .await?;
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Decode(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match decode_event(&line)? {
                    PullEvent::Progress {
                        downloaded_bytes,
                        total_bytes,
                    } => progress(downloaded_bytes, total_bytes),
                    PullEvent::Done(report) => return Ok(report),
                    PullEvent::Error {
                        status,
                        error,
                        code,
                    } => {
                        return Err(ClientError::Api {
                            status,
                            body: ErrorBody { error, code },
                        });
                    }
                }
            }
        }
        Err(ClientError::Decode(
            "the pull's stream ended without its outcome (berthd stopped?)".to_owned(),
        ))
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

fn decode_event(line: &[u8]) -> Result<PullEvent, ClientError> {
    serde_json::from_slice(line).map_err(|e| {
        ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(line).trim_end()))
    })
}
