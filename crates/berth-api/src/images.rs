//! The image store's routes: `GET /v1/images`, `POST /v1/images/pull`,
//! `DELETE /v1/images/{digest}`. Each parses its request and calls one command of the agent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use berth_api_types::{Image, PullImage, PullReport};

use crate::error::ApiResult;
use crate::extract::parse_body;
use crate::server::Lane;

pub(crate) async fn list(State(lane): State<Lane>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(lane.agent().images().await?))
}

/// Answers once the image is in the store (or the pull failed: 400 for the image, 502 for the
/// registry).
pub(crate) async fn pull(
    State(lane): State<Lane>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PullReport>> {
    let req: PullImage = parse_body(body)?;
    let _permit = lane.permit()?;
    Ok(Json(lane.agent().pull_image(req.image).await?))
}

pub(crate) async fn remove(
    State(lane): State<Lane>,
    Path(digest): Path<String>,
) -> ApiResult<StatusCode> {
    let _permit = lane.permit()?;
    lane.agent().remove_image(digest).await?;
    Ok(StatusCode::NO_CONTENT)
}
