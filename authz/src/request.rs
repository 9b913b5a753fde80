//! What a caller asks: who, what, to what, in which context.
//!
//! [`Request`] is the typed form the proxy and gateways build from a connection and an HTTP
//! request ([`HttpRequest`] does that mapping, normalizing the path first).
//! [`RequestSpec`] is the written form used by policy tests, `ward policy explain` and the
//! JSONL files `ward policy diff` replays.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use ward_identity::SpiffeId;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A workload, by the SPIFFE id of its verified SVID (`Ward::Workload`).
    Workload(SpiffeId),
    /// An end user, from verified OIDC claims (`Ward::User`).
    User(UserClaims),
    /// Any entity the repository's `entities/` declares, e.g. `User::"https://idp#42"`.
    Entity(EntityRef),
}

/// An end user as the ingress gateway verified them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserClaims {
    /// The token issuer (`iss`).
    pub issuer: String,
    /// The subject (`sub`); the user's entity id is `<issuer>#<subject>`.
    pub subject: String,
    /// The `email` claim, empty when absent.
    #[serde(default)]
    pub email: String,
    /// The tenant the user belongs to.
    #[serde(default)]
    pub tenant: String,
    /// Group names; each becomes a parent `Ward::Group`.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// An entity by type and id, e.g. `Ward::Service` and `orders-api`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityRef {
    /// The type name; `Ward::` is implied when it has no namespace.
    pub type_name: String,
    /// The entity id.
    pub id: String,
}

/// What is being called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A mesh service by name (`Ward::Service`).
    Service(String),
    /// An external DNS name, for egress (`Ward::ExternalHost`).
    ExternalHost(String),
    /// Any other entity.
    Entity(EntityRef),
}

/// The end user behind an east-west call, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndUser {
    /// Claims carried in the signed end-user header.
    Claims(UserClaims),
    /// A `Ward::User` entity id the repository declares.
    Id(String),
}

/// The Cedar `context` of a request.
///
/// `time` is Unix seconds (a Cedar `Long`), so policies compare it with plain integers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestContext {
    /// HTTP method, upper case; empty for L4 and egress checks.
    pub method: String,
    /// The normalized path, without the query.
    pub path: String,
    /// The `Host` / `:authority`, without a port.
    pub host: String,
    /// The peer address, when known.
    pub source_ip: Option<IpAddr>,
    /// Whether the call arrived over mutual TLS with a verified SVID.
    pub mtls: bool,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Unix seconds.
    pub time: i64,
    /// Request headers by lower-case name; only those the schema declares reach policies.
    pub headers: BTreeMap<String, String>,
    /// The end user behind the call.
    pub user: Option<EndUser>,
}

/// A complete authorization request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Who is asking.
    pub principal: Principal,
    /// The action name without its type, e.g. `GET` or `orders:refund`.
    pub action: String,
    /// What is being called.
    pub resource: Resource,
    /// The context.
    pub context: RequestContext,
    /// Extra Cedar entity JSON for this request only (policy tests use it).
    pub entities: Vec<serde_json::Value>,
}

/// An HTTP request as the inbound proxy sees it, before mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The verified caller.
    pub principal: Principal,
    /// The destination service.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The raw request target (path and query) exactly as received.
    pub target: String,
    /// The context; `method` and `path` are filled in by the mapping.
    pub context: RequestContext,
}

/// A request as written in test files, on the command line and in replay files.
///
/// Unknown fields are ignored so that audit exports, which carry more, replay as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// `spiffe://…` for a workload, else an entity reference like `User::"https://idp#42"`.
    pub principal: String,
    /// The action name (`GET`, `orders:refund`) or `Action::"…"`. When absent, it is found from
    /// `context.method` and `context.path` through the resource service's routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A service name, or an entity reference like `ExternalHost::"api.stripe.com"`.
    pub resource: String,
    /// The context; omitted attributes get defaults.
    #[serde(default)]
    pub context: ContextSpec,
    /// Extra Cedar entity JSON for this request only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<serde_json::Value>,
}

/// The written form of [`RequestContext`]; every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// HTTP method; defaults to the action when that is an HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request path (normalized before use); default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host; defaults to the resource's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Peer IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Mutual TLS; defaults to `true` for workloads and `false` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<bool>,
    /// Request id; default empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Unix seconds; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
    /// Headers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The end user: a `Ward::User` id, or `User::"…"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

// === impl Principal ===

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workload(id) => write!(f, "{id}"),
            Self::User(c) => write!(f, "{}", c.entity_id()),
            Self::Entity(e) => write!(f, "{e}"),
        }
    }
}

// === impl UserClaims ===

impl UserClaims {
    /// The `Ward::User` entity id: `<issuer>#<subject>`.
    pub fn entity_id(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

// === impl EntityRef ===

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{:?}", self.type_name, self.id)
    }
}

// === impl Resource ===

impl Resource {
    /// The service name when this is a service.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Service(s) => Some(s),
            Self::ExternalHost(_) | Self::Entity(_) => None,
        }
    }

    /// The entity id, whatever the type.
    pub fn id(&self) -> &str {
        match self {
            Self::Service(s) | Self::ExternalHost(s) => s,
            Self::Entity(e) => &e.id,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(s) => f.write_str(s),
            Self::ExternalHost(h) => write!(f, "ExternalHost::{h:?}"),
            Self::Entity(e) => write!(f, "{e}"),
        }
    }
}
