//! Building the Cedar request and the entities it is evaluated against.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request as CedarRequest,
    RestrictedExpression,
};
use ward_identity::SpiffeId;

use super::Snapshot;
use crate::model::{Model, NAMESPACE};
use crate::request::{
    EndUser, EntityRef, Principal, Request, RequestContext, Resource, UserClaims,
};

/// A request ready for Cedar.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) principal: EntityUid,
    pub(crate) action: EntityUid,
    pub(crate) resource: EntityUid,
    pub(crate) request: CedarRequest,
    /// What the request is evaluated against: a small store of the entities it can read, or
    /// the snapshot's entities plus any this request brought (synthesized or extra).
    pub(crate) entities: Store<'a>,
}

/// Which optional parts of the context a request has: with its principal, action, resource
/// and end user, this decides whether it conforms to the schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    headers: Vec<String>,
    source_ip: bool,
}

/// The key of [`Snapshot::request`]'s memory.
pub(crate) type ShapeKey = (EntityUid, EntityUid, EntityUid, Option<EntityUid>, Shape);

/// An entity store, borrowed, owned or shared with other requests.
#[derive(Debug)]
pub(crate) enum Store<'a> {
    Borrowed(&'a Entities),
    Owned(Entities),
    Shared(Arc<Entities>),
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the Cedar request; the error is why the request is malformed (it is denied).
    pub(crate) fn prepare(&self, req: &Request) -> Result<Prepared<'_>, String> {
        let mut extra = Vec::new();
        // A workload the repository does not declare; its entity is built only when needed.
        let mut synthesize = None;
        // Declared groups of synthesized users: their ancestors must reach the user.
        let mut groups = Vec::new();
        let principal = match &req.principal {
            Principal::Workload(id) => {
                let uid = Model::uid(&self.model.workload, id.as_str());
                if self.entities.get(&uid).is_none() {
                    synthesize = Some((uid.clone(), id));
                }
                uid
            }
            Principal::User(claims) => {
                let (uid, entity) = self.user_entity(claims)?;
                extra.push(entity);
                groups.extend(self.group_uids(claims));
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
                groups.extend(self.group_uids(claims));
                Some(uid)
            }
        };
        for value in &req.entities {
            let entity = Entity::from_json_value(value.clone(), Some(&self.schema))
                .map_err(|e| format!("extra entity: {e}"))?;
            extra.push(entity);
        }
        // Built directly rather than through JSON: parsing JSON against the schema used to be
        // most of a decision's cost. `CedarRequest::new` below checks it against the schema.
        let (context, shape) = self
            .context(req, &action, user.as_ref())
            .map_err(|e| format!("context: {e}"))?;
        let request = self.request(
            &principal,
            &action,
            &resource,
            user.as_ref(),
            context,
            shape,
        )?;
        let entities = match &self.scope {
            Some(scope) if req.entities.is_empty() => {
                // Without synthesized users the store depends only on these four entities.
                let key = extra.is_empty().then(|| {
                    (
                        principal.clone(),
                        action.clone(),
                        resource.clone(),
                        user.clone(),
                    )
                });
                if let Some(store) = key.as_ref().and_then(|k| scope.cached(k)) {
                    Store::Shared(store)
                } else {
                    if let Some((uid, id)) = synthesize {
                        extra.push(workload_entity(uid, id)?);
                    }
                    let needed = [&principal, &action, &resource]
                        .into_iter()
                        .chain(user.as_ref())
                        .cloned()
                        .chain(groups);
                    let store = scope.store(extra, needed)?;
                    match key {
                        Some(key) => Store::Shared(scope.remember(key, store)),
                        None => Store::Owned(store),
                    }
                }
            }
            _ => {
                if let Some((uid, id)) = synthesize {
                    extra.push(workload_entity(uid, id)?);
                }
                if extra.is_empty() {
                    Store::Borrowed(&self.entities)
                } else {
                    // Cloning shares every entity (`Arc`); only the map is copied.
                    let merged = self
                        .entities
                        .clone()
                        .upsert_entities(extra, Some(&self.schema))
                        .map_err(|e| format!("entities: {e}"))?;
                    Store::Owned(merged)
                }
            }
        };
        Ok(Prepared {
            principal,
            action,
            resource,
            request,
            entities,
        })
    }

    /// The Cedar request, checked against the schema once per shape.
    ///
    /// Whether a request conforms to the schema depends only on its principal, action,
    /// resource, end user and which optional context attributes it has: every value Ward puts
    /// in the context has a fixed type. So the check's outcome is remembered per shape, and
    /// later requests of a shape that passed skip it (it is a fifth of a decision's cost).
    fn request(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        user: Option<&EntityUid>,
        context: Context,
        shape: Shape,
    ) -> Result<CedarRequest, String> {
        let key = (
            principal.clone(),
            action.clone(),
            resource.clone(),
            user.cloned(),
            shape,
        );
        let checked = self.conforming.get(&key);
        if let Some(Err(e)) = checked {
            return Err(e);
        }
        let schema = checked.is_none().then_some(&self.schema);
        let request = CedarRequest::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            schema,
        )
        .map_err(|e| e.to_string());
        if checked.is_none() {
            self.conforming
                .insert(key, request.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        request
    }

    /// A synthesized workload and user, to check once that the schema accepts their shape.
    pub(crate) fn probe_entities(&self) -> Vec<Entity> {
        let mut probes = Vec::new();
        if let Ok(id) = SpiffeId::parse("spiffe://probe.invalid/ns/probe/sa/probe")
            && let Ok(e) = workload_entity(Model::uid(&self.model.workload, id.as_str()), &id)
        {
            probes.push(e);
        }
        let claims = UserClaims {
            issuer: "https://probe.invalid".to_owned(),
            subject: "probe".to_owned(),
            email: String::new(),
            tenant: String::new(),
            groups: vec!["probe".to_owned()],
        };
        if let Ok((_, e)) = self.user_entity(&claims) {
            probes.push(e);
        }
        probes
    }

    fn group_uids<'c>(
        &self,
        claims: &'c UserClaims,
    ) -> impl Iterator<Item = EntityUid> + use<'_, 'c> {
        claims
            .groups
            .iter()
            .map(|g| Model::uid(&self.model.group, g))
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

    /// The headers of `c` that `action`'s policies can see, by their declared (lower-case)
    /// name, in the request's order.
    pub(crate) fn declared_headers_of<'r>(
        &'r self,
        action: &str,
        c: &'r RequestContext,
    ) -> impl Iterator<Item = (&'r String, &'r String)> {
        let declared = self.context.headers(action);
        // `declared` is lower case: match case-insensitively rather than lower-casing every
        // header of every request.
        c.headers.iter().filter_map(move |(k, v)| {
            let name = declared.iter().find(|d| d.eq_ignore_ascii_case(k))?;
            Some((name, v))
        })
    }

    /// The context record Ward's schema contract describes.
    fn context(
        &self,
        req: &Request,
        action: &EntityUid,
        user: Option<&EntityUid>,
    ) -> Result<(Context, Shape), String> {
        let c = &req.context;
        let headers: Vec<(String, &String)> = self
            .declared_headers_of(action.id().unescaped(), c)
            .map(|(name, v)| (name.clone(), v))
            .collect();
        let shape = Shape {
            headers: headers.iter().map(|(k, _)| k.clone()).collect(),
            source_ip: c.source_ip.is_some() && self.reads_source_ip(),
        };
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k, RestrictedExpression::new_string(v.clone())));
        let headers = RestrictedExpression::new_record(headers).map_err(|e| e.to_string())?;
        let mut pairs = vec![
            (
                "method".to_owned(),
                RestrictedExpression::new_string(c.method.clone()),
            ),
            (
                "path".to_owned(),
                RestrictedExpression::new_string(c.path.clone()),
            ),
            (
                "host".to_owned(),
                RestrictedExpression::new_string(c.host.clone()),
            ),
            ("mtls".to_owned(), RestrictedExpression::new_bool(c.mtls)),
            (
                "request_id".to_owned(),
                RestrictedExpression::new_string(c.request_id.clone()),
            ),
            ("time".to_owned(), RestrictedExpression::new_long(c.time)),
            ("headers".to_owned(), headers),
        ];
        if let Some(ip) = c.source_ip.filter(|_| self.reads_source_ip()) {
            pairs.push((
                "source_ip".to_owned(),
                RestrictedExpression::new_ip(ip.to_string()),
            ));
        }
        if let Some(uid) = user {
            pairs.push((
                "user".to_owned(),
                RestrictedExpression::new_entity_uid(uid.clone()),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        Ok((context, shape))
    }
}

// === impl Store ===

impl std::ops::Deref for Store<'_> {
    type Target = Entities;

    fn deref(&self) -> &Entities {
        match self {
            Self::Borrowed(e) => e,
            Self::Owned(e) => e,
            Self::Shared(e) => e,
        }
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
