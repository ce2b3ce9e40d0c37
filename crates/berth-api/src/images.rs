//! The image store's routes: `GET /v1/images`, `POST /v1/images/pull`,
//! `DELETE /v1/images/{digest}`. Each parses its request and calls one command of the agent.
//!
//! A pull asked for with `Accept: application/x-ndjson` is answered 200 at once with a stream
//! of [`PullEvent`] lines: its progress while it runs, then the report or the error the plain
//! answer would have carried. Without that header the answer is the plain JSON one.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_agent::images::Progress;
use berth_api_types::{Image, PULL_STREAM_MEDIA_TYPE, PullEvent, PullImage, PullReport};

use crate::error::{ApiError, ApiResult};
use crate::extract::parse_body;
use crate::server::Lane;

/// How often a streamed pull says how far it has got (when that changed).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

pub(crate) async fn list(State(lane): State<Lane>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(lane.agent().images().await?))
}

/// Answers once the image is in the store (or the pull failed: 400 for the image, 502 for the
/// registry); or, asked for a stream, at once with its progress and its outcome as lines.
pub(crate) async fn pull(
    State(lane): State<Lane>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: PullImage = parse_body(body)?;
    let permit = lane.permit()?;
    if !wants_stream(&headers) {
        return Ok(Json(lane.agent().pull_image(req.image).await?).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let agent = lane.agent().clone();
    tokio::spawn(async move {
        let _permit = permit;
        let progress = Progress::new();
        let pull = agent.pull_image_with(req.image, progress.clone());
        let last = stream_progress(pull, &progress, &tx).await;
        let _ = tx.send(line(&last)).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, PULL_STREAM_MEDIA_TYPE)],
        Body::from_stream(body),
    )
        .into_response())
}

/// Sends a progress line every [`PROGRESS_EVERY`] while `pull` runs and its count changed;
/// returns the event that ends the stream.
async fn stream_progress(
    pull: impl Future<Output = berth_agent::CommandResult<PullReport>>,
    progress: &Progress,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> PullEvent {
    tokio::pin!(pull);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut sent = (0, 0);
    loop {
        tokio::select! {
            outcome = &mut pull => {
                return match outcome {
                    Ok(report) => PullEvent::Done(report),
                    Err(e) => {
                        let e = ApiError::from(e);
                        PullEvent::Error {
                            status: e.status.as_u16(),
                            error: e.message,
                            code: e.code.to_owned(),
                        }
                    }
                };
            }
            _ = tick.tick() => {
                let now = progress.snapshot();
                if now != sent && now.1 > 0 {
                    sent = now;
                    let event = PullEvent::Progress { downloaded_bytes: now.0, total_bytes: now.1 };
                    // A client gone away: the pull goes on (it is detached), unwatched.
                    let _ = tx.send(line(&event)).await;
                }
            }
        }
    }
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().map(str::trim) == Some(PULL_STREAM_MEDIA_TYPE))
}

fn line(event: &PullEvent) -> Bytes {
    let mut s = serde_json::to_string(event).unwrap_or_else(|_| {
        r#"{"type":"error","status":500,"error":"cannot encode the answer","code":"internal"}"#
            .to_owned()
    });
    s.push('\n');
    Bytes::from(s)
}

pub(crate) async fn remove(
    State(lane): State<Lane>,
    Path(digest): Path<String>,
) -> ApiResult<StatusCode> {
    let _permit = lane.permit()?;
    lane.agent().remove_image(digest).await?;
    Ok(StatusCode::NO_CONTENT)
}
