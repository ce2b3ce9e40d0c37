//! Named volumes: `GET /v1/volumes`, `POST /v1/volumes`, `DELETE /v1/volumes/{name}`. Each
//! parses its request and calls one command of the agent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use berth_api_types::{CreateVolume, Volume};

use crate::error::ApiResult;
use crate::extract::parse_body;
use crate::server::Lane;

pub(crate) async fn list(State(lane): State<Lane>) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(lane.agent().volumes().await?))
}

pub(crate) async fn create(
    State(lane): State<Lane>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    let req: CreateVolume = parse_body(body)?;
    let _permit = lane.permit()?;
    Ok((
        StatusCode::CREATED,
        Json(lane.agent().create_volume(req.name).await?),
    ))
}

pub(crate) async fn remove(
    State(lane): State<Lane>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let _permit = lane.permit()?;
    lane.agent().remove_volume(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
