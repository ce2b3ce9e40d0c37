//! `oci:/abs/path[:tag]`: which layout directory and which tag in it.

use std::path::PathBuf;

use berth_types::image_ref::{ImageRef, parse_image_ref};

use crate::ImageError;

/// A reference to an image in a local OCI image layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout's directory.
    pub path: PathBuf,
    /// The tag, matched against index.json's `org.opencontainers.image.ref.name` annotations.
    pub tag: String,
    /// Whether the tag was left out (and so is the default, `latest`).
    pub tag_defaulted: bool,
}

impl LayoutRef {
    /// Parses `oci:/abs/path[:tag]` (the syntax `berth_types::image_ref` checks).
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad = |reason: String| ImageError::BadReference {
            reference: reference.chars().take(256).collect(),
            reason,
        };
        match parse_image_ref(reference).map_err(bad)? {
            ImageRef::Layout { path, tag } => Ok(Self {
                path: PathBuf::from(path),
                tag: tag.to_owned(),
                tag_defaulted: !reference[4..].ends_with(&format!(":{tag}")),
            }),
            ImageRef::Registry { .. } => Err(bad(
                "registry references are not pulled yet; use an OCI image layout, oci:/path[:tag]"
                    .to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_path_and_tag() {
        let r = LayoutRef::parse("oci:/srv/app:v1").unwrap();
        assert_eq!((r.path.to_str(), r.tag.as_str()), (Some("/srv/app"), "v1"));
        assert!(!r.tag_defaulted);
        let r = LayoutRef::parse("oci:/srv/app").unwrap();
        assert_eq!(r.tag, "latest");
        assert!(r.tag_defaulted);
        assert!(
            !LayoutRef::parse("oci:/srv/app:latest")
                .unwrap()
                .tag_defaulted
        );
        let e = LayoutRef::parse("reg.example/app:v1").unwrap_err();
        assert!(e.to_string().contains("not pulled yet"), "{e}");
        let e = LayoutRef::parse("oci:app").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }
}
