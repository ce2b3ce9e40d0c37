//! Named volumes (`GET/POST /v1/volumes`, `DELETE /v1/volumes/{name}`) and
//! `POST /v1/machines/{id}/exec`.

use berth_api_types::{CreateVolume, ExecRequest, ExecResult, Volume};

use crate::{Client, ClientError, Method, api_error, enc};

impl Client {
    /// `GET /v1/volumes`.
    pub async fn volumes(&self) -> Result<Vec<Volume>, ClientError> {
        self.call(Method::GET, "/v1/volumes", None, &[]).await
    }

    /// `POST /v1/volumes`.
    pub async fn create_volume(&self, name: &str) -> Result<Volume, ClientError> {
        let req = CreateVolume {
            name: name.to_owned(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::POST, "/v1/volumes", Some(body), &[])
            .await
    }

    /// `DELETE /v1/volumes/{name}`.
    pub async fn remove_volume(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/volumes/{}", enc(name));
        let r = self.raw(Method::DELETE, &path, None, &[]).await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(api_error(r.status, &r.body))
        }
    }

    /// `POST /v1/machines/{id}/exec`: answers once the command exited or its timeout killed it.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/v1/machines/{}/exec", enc(id)),
            Some(body),
            &[],
        )
        .await
    }
}
