//! `POST /v1/machines/{id}` (update), `GET /v1/machines/{id}/versions`,
//! `POST /v1/machines/{id}/rollback`: each parses its request and calls one command.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use berth_api_types::{ConfigVersion, RollbackRequest, UpdateMachine};
use berth_types::MachineRecord;

use crate::error::ApiResult;
use crate::extract::{lease_nonce, parse_body, parse_id, parse_optional};
use crate::server::Lane;

pub(crate) async fn update(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let _permit = lane.permit()?;
    let id = parse_id(&id)?;
    let req: UpdateMachine = parse_body(body)?;
    let nonce = lease_nonce(&headers).map(str::to_owned);
    Ok(Json(lane.agent().update_machine(&id, req, nonce).await?))
}

pub(crate) async fn versions(
    State(lane): State<Lane>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ConfigVersion>>> {
    Ok(Json(lane.agent().machine_versions(&parse_id(&id)?)?))
}

pub(crate) async fn rollback(
    State(lane): State<Lane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<MachineRecord>> {
    let _permit = lane.permit()?;
    let id = parse_id(&id)?;
    let req: RollbackRequest = parse_optional(body)?;
    let nonce = lease_nonce(&headers).map(str::to_owned);
    Ok(Json(lane.agent().rollback_machine(&id, req, nonce).await?))
}
