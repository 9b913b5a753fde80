//! Building the Cedar request and the entities it is evaluated against.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request as CedarRequest,
    RestrictedExpression,
};
use serde_json::{Map, Value, json};
use ward_identity::SpiffeId;

use super::Snapshot;
use crate::model::{Model, NAMESPACE};
use crate::request::{EndUser, EntityRef, Principal, Request, Resource, UserClaims};

/// A request ready for Cedar.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) principal: EntityUid,
    pub(crate) action: EntityUid,
    pub(crate) resource: EntityUid,
    pub(crate) request: CedarRequest,
    /// The snapshot's entities, plus any this request brought (synthesized or extra).
    pub(crate) entities: Cow<'a, Entities>,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the Cedar request; the error is why the request is malformed (it is denied).
    pub(crate) fn prepare(&self, req: &Request) -> Result<Prepared<'_>, String> {
        let mut extra = Vec::new();
        let principal = match &req.principal {
            Principal::Workload(id) => {
                let uid = Model::uid(&self.model.workload, id.as_str());
                if self.entities.get(&uid).is_none() {
                    extra.push(workload_entity(uid.clone(), id)?);
                }
                uid
            }
            Principal::User(claims) => {
                let (uid, entity) = self.user_entity(claims)?;
                extra.push(entity);
                uid
            }
            Principal::Entity(r) => entity_uid(r)?,
        };
        let action = self.model.action(&req.action);
        let resource = match &req.resource {
            Resource::Service(s) => Model::uid(&self.model.service, s),
            Resource::ExternalHost(h) => Model::uid(&self.model.external_host, h),
            Resource::Entity(r) => entity_uid(r)?,
        };
        let user = match &req.context.user {
            None => None,
            Some(EndUser::Id(id)) => Some(Model::uid(&self.model.user, id)),
            Some(EndUser::Claims(claims)) => {
                let (uid, entity) = self.user_entity(claims)?;
                extra.push(entity);
                Some(uid)
            }
        };
        for value in &req.entities {
            let entity = Entity::from_json_value(value.clone(), Some(&self.schema))
                .map_err(|e| format!("extra entity: {e}"))?;
            extra.push(entity);
        }
        let context = self.context_json(req, &action, user.as_ref());
        let context = Context::from_json_value(context, Some((&self.schema, &action)))
            .map_err(|e| format!("context: {e}"))?;
        let request = CedarRequest::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let entities = if extra.is_empty() {
            Cow::Borrowed(&self.entities)
        } else {
            // Cloning shares every entity (`Arc`); only the map is copied.
            let merged = self
                .entities
                .clone()
                .upsert_entities(extra, Some(&self.schema))
                .map_err(|e| format!("entities: {e}"))?;
            Cow::Owned(merged)
        };
        Ok(Prepared {
            principal,
            action,
            resource,
            request,
            entities,
        })
    }

    /// `Ward::User::"<iss>#<sub>"` with `email`, `tenant` and parent groups from the claims.
    fn user_entity(&self, claims: &UserClaims) -> Result<(EntityUid, Entity), String> {
        let uid = Model::uid(&self.model.user, &claims.entity_id());
        let attrs = HashMap::from([
            (
                "email".to_owned(),
                RestrictedExpression::new_string(claims.email.clone()),
            ),
            (
                "tenant".to_owned(),
                RestrictedExpression::new_string(claims.tenant.clone()),
            ),
        ]);
        let parents: HashSet<EntityUid> = claims
            .groups
            .iter()
            .map(|g| Model::uid(&self.model.group, g))
            .collect();
        let entity = Entity::new(uid.clone(), attrs, parents).map_err(|e| e.to_string())?;
        Ok((uid, entity))
    }

    /// The context record Ward's schema contract describes.
    fn context_json(&self, req: &Request, action: &EntityUid, user: Option<&EntityUid>) -> Value {
        let c = &req.context;
        let declared = self.context.headers(action);
        let headers: Map<String, Value> = c
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .filter(|(k, _)| declared.contains(k))
            .map(|(k, v)| (k, Value::String(v.clone())))
            .collect();
        let mut ctx = json!({
            "method": c.method,
            "path": c.path,
            "host": c.host,
            "mtls": c.mtls,
            "request_id": c.request_id,
            "time": c.time,
            "headers": headers,
        });
        if let Some(obj) = ctx.as_object_mut() {
            if let Some(ip) = c.source_ip {
                obj.insert(
                    "source_ip".to_owned(),
                    json!({ "__extn": { "fn": "ip", "arg": ip.to_string() } }),
                );
            }
            if let Some(uid) = user {
                obj.insert(
                    "user".to_owned(),
                    json!({ "__entity": { "type": uid.type_name().to_string(), "id": uid.id().unescaped() } }),
                );
            }
        }
        ctx
    }
}

/// `Ward::Workload` for an id with no declared entity: the attributes come from the id.
///
/// `service` follows the convention that a workload's service account is named after its
/// service; declare the workload in `entities/` when that does not hold.
fn workload_entity(uid: EntityUid, id: &SpiffeId) -> Result<Entity, String> {
    let (ns, sa) = id.namespace_and_service_account().unwrap_or(("", ""));
    let attrs = HashMap::from([
        (
            "trust_domain".to_owned(),
            RestrictedExpression::new_string(id.trust_domain_name().to_owned()),
        ),
        (
            "namespace".to_owned(),
            RestrictedExpression::new_string(ns.to_owned()),
        ),
        (
            "service_account".to_owned(),
            RestrictedExpression::new_string(sa.to_owned()),
        ),
        (
            "service".to_owned(),
            RestrictedExpression::new_string(sa.to_owned()),
        ),
    ]);
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| e.to_string())
}

fn entity_uid(r: &EntityRef) -> Result<EntityUid, String> {
    let ty = if r.type_name.contains("::") {
        r.type_name.clone()
    } else {
        format!("{NAMESPACE}::{}", r.type_name)
    };
    let ty = EntityTypeName::from_str(&ty).map_err(|e| format!("entity type `{ty}`: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(&r.id)))
}
