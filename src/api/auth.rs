//! Caller authentication: `authorization: Bearer <JWT>` verified once per RPC by a tower layer, the
//! resulting [`Caller`] put in the request's extensions, and the helpers handlers use to check it.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tower::{Layer, Service};

use crate::{config::AuthConfig, domain::UserId};

/// RPC paths callable without a token: probes and schema discovery carry no seller data.
const PUBLIC_PATH_PREFIXES: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Who is calling, as proven by their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Another internal service; may act for every seller.
    Service {
        /// The token's `sub`, for logs.
        subject: String,
    },
    /// A seller; may act only for themselves.
    Seller(UserId),
    /// Authentication is switched off by configuration; treated as the service role.
    Unauthenticated,
}

impl Caller {
    /// Whether this caller may read or change `user`'s data.
    pub fn may_act_for(&self, user: UserId) -> bool {
        match self {
            Caller::Service { .. } | Caller::Unauthenticated => true,
            Caller::Seller(seller) => *seller == user,
        }
    }

    /// Whether this caller holds the service role.
    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service { .. } | Caller::Unauthenticated)
    }
}

/// Why a caller was refused; `api::status` makes it `UNAUTHENTICATED` or `PERMISSION_DENIED`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The auth layer did not run for this request (a wiring bug).
    #[error("missing caller identity")]
    NoIdentity,
    /// Neither an HS256 secret nor an RS256 key is configured.
    #[error("no token can be verified: the server has no JWT key configured")]
    NoKeyConfigured,
    /// No `authorization: Bearer …` header.
    #[error("missing bearer token: send `authorization: Bearer <JWT>`")]
    MissingBearer,
    /// The token did not verify; the cause is logged, never told to the caller.
    #[error("invalid token: malformed, expired, or not signed by a trusted key")]
    InvalidToken(#[source] jsonwebtoken::errors::Error),
    /// A seller token whose subject is not a user id.
    #[error("token subject is not a user id")]
    SubjectNotAUser,
    /// A seller acting for another seller.
    #[error("the caller may not act for this user")]
    NotThisUser,
    /// A seller calling a service-only RPC.
    #[error("this RPC needs the service role")]
    NeedsServiceRole,
}

/// The caller of `request`, or [`AuthError::NoIdentity`] when the auth layer did not run.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, AuthError> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or(AuthError::NoIdentity)
}

/// Checks that the caller may act for `user`.
pub fn require_user<T>(request: &tonic::Request<T>, user: UserId) -> Result<Caller, AuthError> {
    let caller = caller(request)?;
    if caller.may_act_for(user) {
        Ok(caller.clone())
    } else {
        Err(AuthError::NotThisUser)
    }
}

/// Checks that the caller holds the service role.
pub fn require_service<T>(request: &tonic::Request<T>) -> Result<Caller, AuthError> {
    let caller = caller(request)?;
    if caller.is_service() {
        Ok(caller.clone())
    } else {
        Err(AuthError::NeedsServiceRole)
    }
}

/// The claims brx-sync reads from a caller token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// A seller's user UUID, or the calling service's name with the service role.
    pub sub: String,
    /// Expiry, seconds since the epoch; required.
    pub exp: u64,
    /// `service` (configurable) for the service role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Issuer; checked when BRX_JWT_ISSUER is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience; checked when BRX_JWT_AUDIENCE is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Not before, seconds since the epoch; honoured when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Verifies caller tokens; built once from configuration.
#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
    service_role: String,
}

#[derive(Clone)]
enum Mode {
    Disabled,
    /// Auth is on but no key is configured: every token is refused (fail closed).
    NoKey,
    Verify(Box<(DecodingKey, Validation)>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Disabled => "disabled",
            Mode::NoKey => "no key",
            Mode::Verify(_) => "verify",
        };
        f.debug_struct("Authenticator")
            .field("mode", &mode)
            .finish()
    }
}

impl Authenticator {
    /// From the `BRX_AUTH_*`/`BRX_JWT_*` settings; the RS256 key file was checked by `Config::validate`.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        let mode = if config.auth_disabled {
            tracing::warn!(
                "caller authentication is DISABLED (BRX_AUTH_DISABLED): every caller acts as the service role"
            );
            Mode::Disabled
        } else if let Some(secret) = &config.jwt_hs256_secret {
            let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
            Mode::Verify(Box::new((key, validation(Algorithm::HS256, config))))
        } else if let Some(path) = &config.jwt_rs256_public_key_path {
            let key = DecodingKey::from_rsa_pem(&std::fs::read(path)?)?;
            Mode::Verify(Box::new((key, validation(Algorithm::RS256, config))))
        } else {
            tracing::warn!(
                "no JWT key configured (BRX_JWT_HS256_SECRET or BRX_JWT_RS256_PUBLIC_KEY_PATH): every authenticated RPC will be refused"
            );
            Mode::NoKey
        };
        Ok(Self {
            mode,
            service_role: config.jwt_service_role.clone(),
        })
    }

    /// The caller proven by the request's `authorization` header.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, AuthError> {
        let (key, validation) = match &self.mode {
            Mode::Disabled => return Ok(Caller::Unauthenticated),
            Mode::NoKey => return Err(AuthError::NoKeyConfigured),
            Mode::Verify(pair) => (&pair.0, &pair.1),
        };
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(AuthError::MissingBearer)?;
        let claims = jsonwebtoken::decode::<Claims>(token.trim(), key, validation)
            .map_err(AuthError::InvalidToken)?
            .claims;
        if claims.role.as_deref() == Some(self.service_role.as_str()) {
            return Ok(Caller::Service {
                subject: claims.sub,
            });
        }
        UserId::parse(&claims.sub)
            .map(Caller::Seller)
            .map_err(|_| AuthError::SubjectNotAUser)
    }
}

fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    // A configured issuer or audience must be present, not only match when present.
    let mut required = vec!["exp", "sub"];
    required.extend(config.jwt_issuer.as_ref().map(|_| "iss"));
    required.extend(config.jwt_audience.as_ref().map(|_| "aud"));
    validation.set_required_spec_claims(&required);
    validation.leeway = 30;
    // A token that is not valid yet is refused like an expired one (jsonwebtoken skips `nbf` unless
    // asked); the same leeway covers clocks that disagree a little.
    validation.validate_nbf = true;
    match &config.jwt_audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &config.jwt_issuer {
        validation.set_issuer(&[issuer]);
    }
    validation
}

/// Signs an HS256 caller token: for `brx-sync token`, the demo and tests.
pub fn mint_token(
    secret: &str,
    subject: Option<UserId>,
    service_role: &str,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    sign(secret, &claims_for(subject, service_role, ttl))
}

/// The claims of a token for `subject` (a seller) or, without one, for the service role.
pub fn claims_for(subject: Option<UserId>, service_role: &str, ttl: Duration) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Claims {
        sub: subject.map_or_else(|| "brx-sync-cli".to_owned(), |user| user.to_string()),
        exp: (now + ttl).as_secs(),
        role: subject.is_none().then(|| service_role.to_owned()),
        iss: None,
        aud: None,
        nbf: None,
    }
}

/// Signs `claims` with an HS256 secret.
pub fn sign(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Tower layer running [`Authenticator`] in front of every non-public RPC.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer sharing one authenticator across connections.
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !PUBLIC_PATH_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            match self.authenticator.authenticate(request.headers()) {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(refused) => {
                    let status = Status::from(refused);
                    return Box::pin(async move { Err(status.into()) });
                }
            }
        }
        let future = self.inner.call(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    fn authenticator(secret: &str) -> Authenticator {
        authenticator_with(secret, |_| {})
    }

    fn authenticator_with(secret: &str, adjust: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let mut config = Config::defaults();
        config.auth.jwt_hs256_secret = Some(secrecy::SecretString::from(secret.to_owned()));
        adjust(&mut config.auth);
        Authenticator::from_config(&config.auth).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn headers_with(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn request_from(caller: Caller) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(caller);
        request
    }

    fn user() -> UserId {
        UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
    }

    #[test]
    fn a_seller_token_proves_that_seller() {
        let seller = user();
        let token = mint_token("s", Some(seller), "service", Duration::from_secs(60)).unwrap();

        let caller = authenticator("s")
            .authenticate(&headers_with(&token))
            .unwrap();

        assert_eq!(caller, Caller::Seller(seller));
    }

    #[test]
    fn a_seller_may_act_for_themselves_but_not_for_another_seller() {
        let (seller, other) = (user(), user());
        let request = request_from(Caller::Seller(seller));

        assert!(require_user(&request, seller).is_ok());
        let denied = require_user(&request, other).unwrap_err();
        assert_eq!(Status::from(denied).code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn the_service_role_may_act_for_every_seller() {
        let token = mint_token("s", None, "service", Duration::from_secs(60)).unwrap();
        let caller = authenticator("s")
            .authenticate(&headers_with(&token))
            .unwrap();

        let request = request_from(caller);

        assert!(require_user(&request, user()).is_ok());
        assert!(require_service(&request).is_ok());
    }

    #[test]
    fn a_token_whose_subject_is_not_a_user_id_and_not_a_service_is_refused() {
        let mut config = Config::defaults();
        config.auth.jwt_hs256_secret = Some(secrecy::SecretString::from("s".to_owned()));
        let token = mint_token("s", None, "some-other-role", Duration::from_secs(60)).unwrap();

        let refused = Authenticator::from_config(&config.auth)
            .unwrap()
            .authenticate(&headers_with(&token));

        assert_eq!(
            Status::from(refused.unwrap_err()).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_request_the_auth_layer_never_saw_has_no_caller() {
        let request = tonic::Request::new(());

        assert_eq!(
            Status::from(require_user(&request, user()).unwrap_err()).code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_malformed_authorization_header_is_refused() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "Basic dXNlcjpwYXNz".parse().unwrap(),
        );

        let refused = authenticator("s").authenticate(&headers).unwrap_err();

        assert_eq!(Status::from(refused).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_token_that_does_not_verify_is_refused_without_saying_why() {
        // The decoder's reason (here a base64 error) is for the log, not for the caller.
        let refused = authenticator("s")
            .authenticate(&headers_with("not.a.jwt"))
            .unwrap_err();

        assert!(matches!(refused, AuthError::InvalidToken(_)), "{refused:?}");
        let status = Status::from(refused);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "invalid token: malformed, expired, or not signed by a trusted key"
        );
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_until_its_nbf() {
        let auth = authenticator(SECRET);
        let mut claims = claims_for(Some(user()), "service", Duration::from_secs(3_600));
        claims.nbf = Some(now() + 600);
        let early = sign(SECRET, &claims).unwrap();
        assert!(matches!(
            auth.authenticate(&headers_with(&early)),
            Err(AuthError::InvalidToken(_))
        ));

        claims.nbf = Some(now() - 1);
        let due = sign(SECRET, &claims).unwrap();
        assert!(auth.authenticate(&headers_with(&due)).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = authenticator_with(SECRET, |config| {
            config.jwt_issuer = Some("https://auth.shop.example".into());
            config.jwt_audience = Some("brx-sync".into());
        });
        let seller = user();
        let mut claims = claims_for(Some(seller), "service", Duration::from_secs(3_600));
        let bare = sign(SECRET, &claims).unwrap();
        assert!(
            auth.authenticate(&headers_with(&bare)).is_err(),
            "iss and aud are required"
        );

        claims.iss = Some("https://auth.shop.example".into());
        claims.aud = Some("another-service".into());
        let wrong_audience = sign(SECRET, &claims).unwrap();
        assert!(auth.authenticate(&headers_with(&wrong_audience)).is_err());

        claims.aud = Some("brx-sync".into());
        claims.iss = Some("https://evil.example".into());
        let wrong_issuer = sign(SECRET, &claims).unwrap();
        assert!(auth.authenticate(&headers_with(&wrong_issuer)).is_err());

        claims.iss = Some("https://auth.shop.example".into());
        let good = sign(SECRET, &claims).unwrap();
        assert_eq!(
            auth.authenticate(&headers_with(&good)).unwrap(),
            Caller::Seller(seller)
        );

        // Unconfigured, neither claim matters.
        assert!(
            authenticator(SECRET)
                .authenticate(&headers_with(&wrong_issuer))
                .is_ok()
        );
    }
}
