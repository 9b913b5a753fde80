//! From written requests and HTTP requests to typed [`Request`]s.

use ward_identity::SpiffeId;

use super::Snapshot;
use crate::error::Error;
use crate::model::{Model, NAMESPACE};
use crate::path::NormalizedPath;
use crate::request::{
    EndUser, EntityRef, HttpRequest, Principal, Request, RequestContext, RequestSpec, Resource,
};
use crate::route::HTTP_METHODS;

/// Resolves a written request; routes pick the action when none is given.
pub(crate) fn spec(snapshot: &Snapshot, spec: &RequestSpec) -> Result<Request, Error> {
    let principal = principal(&spec.principal)?;
    let resource = resource(&spec.resource)?;
    let c = &spec.context;
    let path = match &c.path {
        Some(p) => NormalizedPath::parse(p)?,
        None => NormalizedPath::parse("/")?,
    };
    let action = match &spec.action {
        Some(a) => action_name(a)?,
        None => {
            let method = c.method.as_deref().ok_or_else(|| {
                Error::Request(
                    "a request without `action` needs `context.method` (and `context.path`) to \
                     find its route"
                        .to_owned(),
                )
            })?;
            route_action(snapshot, &resource, method, &path)
        }
    };
    let method = match &c.method {
        Some(m) => m.clone(),
        None if HTTP_METHODS.contains(&action.as_str()) => action.clone(),
        None => String::new(),
    };
    let source_ip = c
        .source_ip
        .as_deref()
        .map(|ip| {
            ip.parse()
                .map_err(|e| Error::Request(format!("`context.source_ip` `{ip}`: {e}")))
        })
        .transpose()?;
    let user = c
        .user
        .as_deref()
        .map(|u| user_id(u).map(EndUser::Id))
        .transpose()?;
    let context = RequestContext {
        method,
        path: path.path().to_owned(),
        host: c.host.clone().unwrap_or_else(|| resource.id().to_owned()),
        source_ip,
        mtls: c
            .mtls
            .unwrap_or(matches!(principal, Principal::Workload(_))),
        request_id: c.request_id.clone().unwrap_or_default(),
        time: c.time.unwrap_or(0),
        headers: c
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        user,
    };
    Ok(Request {
        principal,
        action,
        resource,
        context,
        entities: spec.entities.clone(),
    })
}

/// Normalizes the path, then maps method + path to an action through the service's routes.
pub(crate) fn http(
    snapshot: &Snapshot,
    http: &HttpRequest,
) -> Result<(Request, NormalizedPath), Error> {
    let path = NormalizedPath::parse(&http.target)?;
    let resource = Resource::Service(http.service.clone());
    let action = route_action(snapshot, &resource, &http.method, &path);
    let context = RequestContext {
        method: http.method.clone(),
        path: path.path().to_owned(),
        ..http.context.clone()
    };
    let request = Request {
        principal: http.principal.clone(),
        action,
        resource,
        context,
        entities: Vec::new(),
    };
    Ok((request, path))
}

fn route_action(
    snapshot: &Snapshot,
    resource: &Resource,
    method: &str,
    path: &NormalizedPath,
) -> String {
    resource
        .service()
        .and_then(|s| snapshot.routes.find(s, method, path))
        .map_or_else(|| method.to_owned(), |(route, _)| route.action.clone())
}

/// `spiffe://…` is a workload; anything else must be an entity reference.
fn principal(text: &str) -> Result<Principal, Error> {
    if text.starts_with("spiffe://") {
        return SpiffeId::parse(text)
            .map(Principal::Workload)
            .map_err(|e| Error::Request(format!("principal `{text}`: {e}")));
    }
    let r = entity_ref(text)?;
    if r.type_name == format!("{NAMESPACE}::Workload") {
        return SpiffeId::parse(&r.id)
            .map(Principal::Workload)
            .map_err(|e| Error::Request(format!("principal `{text}`: {e}")));
    }
    Ok(Principal::Entity(r))
}

/// A bare name is a service; an entity reference may name any type.
fn resource(text: &str) -> Result<Resource, Error> {
    if !text.contains("::") {
        return Ok(Resource::Service(text.to_owned()));
    }
    let r = entity_ref(text)?;
    Ok(match r.type_name.strip_prefix(&format!("{NAMESPACE}::")) {
        Some("Service") => Resource::Service(r.id),
        Some("ExternalHost") => Resource::ExternalHost(r.id),
        _ => Resource::Entity(r),
    })
}

/// `GET`, `orders:refund`, or `Action::"orders:refund"`.
fn action_name(text: &str) -> Result<String, Error> {
    if !text.contains("::\"") {
        return Ok(text.to_owned());
    }
    let r = entity_ref(text)?;
    if r.type_name != format!("{NAMESPACE}::Action") {
        return Err(Error::Request(format!(
            "action `{text}` must be a `{NAMESPACE}::Action`"
        )));
    }
    Ok(r.id)
}

/// A user id, or `User::"…"`.
fn user_id(text: &str) -> Result<String, Error> {
    if !text.contains("::\"") {
        return Ok(text.to_owned());
    }
    let r = entity_ref(text)?;
    if r.type_name != format!("{NAMESPACE}::User") {
        return Err(Error::Request(format!(
            "`context.user` `{text}` must be a `{NAMESPACE}::User`"
        )));
    }
    Ok(r.id)
}

fn entity_ref(text: &str) -> Result<EntityRef, Error> {
    let uid = Model::parse_uid(text).map_err(Error::Request)?;
    Ok(EntityRef {
        type_name: uid.type_name().to_string(),
        id: uid.id().unescaped().to_owned(),
    })
}
