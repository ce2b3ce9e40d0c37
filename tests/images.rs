//! Machines from images, through a real berthd: the image is made ready before anything is
//! recorded, and an image that cannot be used is a 400 `invalid` naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use berth_client::{Client, Method};
use serde_json::{Value, json};

mod common;
use common::*;

async fn create(c: &Client, body: Value) -> (u16, Value) {
    post_machine(c, &body).await
}

/// An empty image tagged `v1`, written by Debian's umoci (a real OCI image layout).
fn umoci_layout(dir: &Path) {
    let layout = dir.to_str().unwrap();
    for args in [
        vec!["init", "--layout", layout],
        vec!["new", "--image", &format!("{layout}:v1")],
    ] {
        let out = Command::new("umoci").args(&args).output().expect("umoci");
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    }
}

#[test]
fn an_image_that_cannot_be_used_is_refused_naming_the_field_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let layout = tempfile::tempdir().unwrap();
    let image = layout.path().join("app");
    umoci_layout(&image);
    let not_a_layout = tempfile::tempdir().unwrap();
    let c = agent.socket();
    rt().block_on(async {
        for (reference, says) in [
            (
                "oci:/nonexistent/berth-test-image".to_owned(),
                "nonexistent",
            ),
            (
                format!("oci:{}", not_a_layout.path().display()),
                "oci-layout",
            ),
            (format!("oci:{}:nope", image.display()), "v1"),
        ] {
            let (status, body) = create(
                &c,
                json!({"config": {"image": reference, "cmd": ["/bin/true"]}}),
            )
            .await;
            assert_eq!(status, 400, "{reference}: {body}");
            assert_eq!(body["code"], "invalid", "{body}");
            let msg = body["error"].as_str().unwrap();
            assert!(msg.starts_with("image: "), "names the field: {msg}");
            assert!(msg.contains(says), "{reference}: says what is wrong: {msg}");
        }
        let r = c.raw(Method::GET, "/v1/machines", None, &[]).await.unwrap();
        let list: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(list, json!([]), "nothing was recorded");
    });
}
