//! A token issuer for a registry with token auth (distribution's `auth: token`), run by the test
//! on a free loopback port: a real HTTP server (axum) speaking the Docker token protocol.
//! `GET /token?service=S&scope=repository:NAME:ACTIONS` with HTTP Basic credentials answers
//! `{"token", "access_token", "expires_in"}`, an ES256 JWT whose header's `x5c` carries the
//! signing key's self-signed certificate (made with the `openssl` CLI), which is the registry's
//! `rootcertbundle`. Only the one user with its password gets a token; every request is kept,
//! so a test can tell what the issuer saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use crate::registry::TokenAuth;

pub const SERVICE: &str = "berth-test-registry";
pub const ISSUER: &str = "berth-test-issuer";

/// Each token's `jti`, unique in the process.
static JTI: AtomicU64 = AtomicU64::new(0);

/// One token request, as the issuer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic user presented, if any.
    pub user: Option<String>,
    /// The `scope` parameters.
    pub scopes: Vec<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

/// A running issuer; it stops with the test process.
pub struct TokenIssuer {
    pub port: u16,
    pub root_cert: PathBuf,
    user: String,
    password: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenIssuer {
    /// Makes a signing key and its certificate under `dir`, and serves tokens to `user` with
    /// `password` (pull and push).
    pub fn start(dir: &Path, user: &str, password: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let (pkcs8, cert_der, root_cert) = make_key_and_cert(dir);
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Issuer {
            key,
            cert_der,
            user: user.to_owned(),
            password: password.to_owned(),
            requests: requests.clone(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/token", axum::routing::get(token))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self {
            port,
            root_cert,
            user: user.to_owned(),
            password: password.to_owned(),
            requests,
        }
    }

    /// The registry's `auth: token` settings for this issuer, with its user for pushes.
    pub fn registry_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: format!("http://127.0.0.1:{}/token", self.port),
            service: SERVICE.to_owned(),
            issuer: ISSUER.to_owned(),
            rootcertbundle: self.root_cert.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

/// An EC P-256 key (PKCS#8 DER) and its self-signed certificate (DER, and the PEM file the
/// registry trusts), made by the `openssl` CLI.
fn make_key_and_cert(dir: &Path) -> (Vec<u8>, Vec<u8>, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl installed");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth test token issuer",
    ]);
    openssl(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
    ]);
    openssl(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    (
        std::fs::read(dir.join("key.der")).unwrap(),
        std::fs::read(dir.join("cert.der")).unwrap(),
        dir.join("cert.pem"),
    )
}

/// `GET /token`: a token for the scopes asked, to the one user with the right password.
async fn token(
    State(issuer): State<Arc<Issuer>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let param = |k: &'static str| params.iter().filter(move |(n, _)| n == k).map(|(_, v)| v);
    let scopes: Vec<String> = param("scope").cloned().collect();
    let creds = basic_credentials(&headers);
    let user = creds.as_ref().map(|(u, _)| u.clone());
    let service_ok = param("service").any(|s| s == SERVICE);
    let granted = service_ok
        && creds
            .as_ref()
            .is_some_and(|(u, p)| *u == issuer.user && *p == issuer.password);
    issuer.requests.lock().unwrap().push(TokenRequest {
        user: user.clone(),
        scopes: scopes.clone(),
        granted,
    });
    if !granted {
        let message = match &user {
            _ if !service_ok => format!("the token issuer serves only {SERVICE}"),
            None => "the token issuer requires credentials".to_owned(),
            Some(u) => format!("the token issuer refused the password of {u}"),
        };
        let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]});
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"berth-test-issuer\"",
            )],
            axum::Json(body),
        )
            .into_response();
    }
    let jwt = issuer.sign(user.as_deref().unwrap_or_default(), &scopes);
    axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": 300})).into_response()
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

impl Issuer {
    /// An ES256 JWT for `sub`, granting each `repository:NAME:ACTIONS` scope its pull and push.
    fn sign(&self, sub: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                let actions: Vec<&str> = actions
                    .split(',')
                    .filter(|a| matches!(*a, "pull" | "push"))
                    .collect();
                Some(json!({"type": kind, "name": name, "actions": actions}))
            })
            .collect();
        let header =
            json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = json!({
            "iss": ISSUER, "sub": sub, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 1, "iat": now,
            "jti": format!("{now}-{}", JTI.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}
