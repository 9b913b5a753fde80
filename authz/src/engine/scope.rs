//! Per-request entity stores: only the entities a decision can read.
//!
//! Adding a request's synthesized entities (a workload the repository does not declare, the
//! user behind the call) to the snapshot's store means copying the store and computing its
//! transitive closure again: work proportional to every declared entity, on every request.
//! Instead, a request is evaluated against a small store holding exactly what Cedar can
//! dereference while deciding it:
//!
//! - the principal, the action (with its action groups, already closed) and the resource;
//! - the end user (`context.user`), the only entity Ward puts in the context;
//! - the declared groups of a synthesized user, so `in` sees their ancestors too;
//! - every declared entity that a policy condition names as a literal.
//!
//! Cedar reads an entity only to get its attributes, tags or ancestors; `x in E` needs the
//! ancestors of `x`, never `E` itself. Declared entities go in with every ancestor listed as a
//! parent (a store computes its closure from parents, and the ancestors are not in it), so the
//! small store decides exactly as the full one; the tests below check that. Two things would break
//! that, and [`EntityScope::build`] then returns `None` and requests use the full store:
//! a declared entity whose attributes or tags hold entity references (the closure would have
//! to follow them), and a schema that rejects the shape of Ward's synthesized entities (the
//! full store reports that as an error on every request). Requests that bring their own
//! extra entities (policy tests) always use the full store.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Schema};
use serde_json::Value;

use crate::FastMap;
use crate::cache::Cache;

/// The stores of requests that bring no entities of their own depend only on these: the
/// principal, action, resource and end user.
pub(crate) type StoreKey = (EntityUid, EntityUid, EntityUid, Option<EntityUid>);

/// What every request's small store adds to the request's own entities.
#[derive(Debug)]
pub(crate) struct EntityScope {
    /// Every declared entity, with all its ancestors as parents: a small store computes its
    /// transitive closure from parents alone, and the ancestors are not in it. (This doubles
    /// the memory of declared entities; their count is that of services, users and groups.)
    flat: FastMap<EntityUid, Entity>,
    /// Declared entities that policy conditions name as literals.
    literals: Vec<EntityUid>,
    /// Stores already built, shared by requests with the same key.
    cache: Cache<StoreKey, Arc<Entities>>,
}

// === impl EntityScope ===

impl EntityScope {
    /// `None` when requests must use the full store (see the module docs).
    pub(crate) fn build(
        policies: &PolicySet,
        entities: &Entities,
        schema: &Schema,
        probes: Vec<Entity>,
    ) -> Option<Self> {
        if Entities::from_entities(probes, Some(schema)).is_err() {
            return None;
        }
        let mut flat = FastMap::default();
        for entity in entities.iter() {
            let (uid, e) = flatten(entity)?;
            flat.insert(uid, e);
        }
        let mut seen = HashSet::new();
        let mut literals = Vec::new();
        for policy in policies.policies() {
            let json = policy.to_json().ok()?;
            let mut uids = Vec::new();
            if let Some(conditions) = json.get("conditions") {
                entity_refs(conditions, &mut uids);
            }
            for uid in uids {
                if flat.contains_key(&uid) && seen.insert(uid.clone()) {
                    literals.push(uid);
                }
            }
        }
        Some(Self {
            flat,
            literals,
            cache: Cache::new(),
        })
    }

    /// The store built earlier for `key`, if any.
    pub(crate) fn cached(&self, key: &StoreKey) -> Option<Arc<Entities>> {
        self.cache.get(key)
    }

    /// Keeps `store` for later requests with `key`.
    pub(crate) fn remember(&self, key: StoreKey, store: Entities) -> Arc<Entities> {
        let store = Arc::new(store);
        self.cache.insert(key, store.clone());
        store
    }

    /// The store for one request: `synthesized` entities (they win over declared ones, as an
    /// upsert would), the declared entities of `needed`, and the condition literals.
    pub(crate) fn store(
        &self,
        synthesized: Vec<Entity>,
        needed: impl IntoIterator<Item = EntityUid>,
    ) -> Result<Entities, String> {
        let mut by_uid: HashMap<EntityUid, Entity> =
            synthesized.into_iter().map(|e| (e.uid(), e)).collect();
        for uid in needed.into_iter().chain(self.literals.iter().cloned()) {
            if !by_uid.contains_key(&uid)
                && let Some(e) = self.flat.get(&uid)
            {
                by_uid.insert(uid, e.clone());
            }
        }
        Entities::from_entities(by_uid.into_values(), None).map_err(|e| format!("entities: {e}"))
    }
}

/// `entity` with every ancestor as a parent; `None` when its attributes or tags hold entity
/// references (a small store would have to follow them).
fn flatten(entity: &Entity) -> Option<(EntityUid, Entity)> {
    let mut json = entity.to_json_value().ok()?;
    if ["attrs", "tags"]
        .iter()
        .any(|k| json.get(k).is_some_and(has_entity_ref))
    {
        return None;
    }
    // `into_inner` returns the parents together with every other ancestor.
    let (uid, _, ancestors) = entity.clone().into_inner();
    let parents = ancestors
        .iter()
        .map(|a| serde_json::json!({ "type": a.type_name().to_string(), "id": a.id().unescaped() }))
        .collect();
    json.as_object_mut()?
        .insert("parents".to_owned(), Value::Array(parents));
    Some((uid, Entity::from_json_value(json, None).ok()?))
}

/// Whether a JSON value (Cedar's entity JSON) holds an entity reference anywhere.
fn has_entity_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("__entity") || map.values().any(has_entity_ref),
        Value::Array(items) => items.iter().any(has_entity_ref),
        _ => false,
    }
}

/// Collects every `{"__entity": {"type", "id"}}` in a policy's JSON form.
fn entity_refs(value: &Value, out: &mut Vec<EntityUid>) {
    match value {
        Value::Object(map) => {
            if let Some(uid) = map.get("__entity").and_then(uid_of) {
                out.push(uid);
            }
            for v in map.values() {
                entity_refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| entity_refs(v, out)),
        _ => {}
    }
}

fn uid_of(value: &Value) -> Option<EntityUid> {
    let ty = EntityTypeName::from_str(value.get("type")?.as_str()?).ok()?;
    let id = EntityId::new(value.get("id")?.as_str()?);
    Some(EntityUid::from_type_name_and_id(ty, id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use ward_identity::SpiffeId;

    use super::*;
    use crate::engine::Snapshot;
    use crate::request::{
        EndUser, EntityRef, Principal, Request, RequestContext, Resource, UserClaims,
    };
    use crate::test_util::demo_copy;

    /// Group nesting, a literal dereferenced in a condition, and resource attributes.
    const EXTRA_POLICIES: &str = r#"
@id("staff-read-payments")
permit (principal in Ward::Group::"staff", action in [Ward::Action::"read"], resource == Ward::Service::"payments-svc");

@id("no-globex-users-on-payments")
forbid (principal, action, resource == Ward::Service::"payments-svc")
when { context has user && context.user.tenant == Ward::Service::"globex-reports".tenant };

@id("staff-users-anywhere-shared")
permit (principal is Ward::User, action in [Ward::Action::"read"], resource is Ward::Service)
when { principal in Ward::Group::"staff" && resource.tenant == "shared" };
"#;
    const EXTRA_ENTITIES: &str = r#"[
  { "uid": { "type": "Ward::Group", "id": "staff" }, "attrs": {}, "parents": [] },
  { "uid": { "type": "Ward::Group", "id": "oncall" }, "attrs": {}, "parents": [{ "type": "Ward::Group", "id": "staff" }] },
  { "uid": { "type": "Ward::User", "id": "https://login.ward.local#user:9" },
    "attrs": { "email": "o@globex.example", "tenant": "globex" },
    "parents": [{ "type": "Ward::Group", "id": "oncall" }] }
]"#;

    fn claims(sub: &str, tenant: &str, groups: &[&str]) -> UserClaims {
        UserClaims {
            issuer: "https://login.ward.local".to_owned(),
            subject: sub.to_owned(),
            email: format!("{sub}@example"),
            tenant: tenant.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn requests() -> Vec<Request> {
        let workload = |id: &str| Principal::Workload(SpiffeId::parse(id).unwrap());
        let principals = vec![
            workload("spiffe://ward.local/ns/checkout/sa/checkout-api"),
            workload("spiffe://ward.local/ns/mobile/sa/mobile-gateway"),
            workload("spiffe://ward.local/ns/orders/sa/orders-api"),
            workload("spiffe://other.example/ns/x/sa/intruder"),
            Principal::User(claims("a", "acme", &["customers"])),
            Principal::User(claims("b", "globex", &["oncall"])),
            Principal::User(claims("c", "acme", &["oncall", "support"])),
            Principal::User(claims("d", "acme", &[])),
            Principal::Entity(EntityRef {
                type_name: "Ward::User".to_owned(),
                id: "https://login.ward.local#user:9".to_owned(),
            }),
            Principal::Entity(EntityRef {
                type_name: "Ward::User".to_owned(),
                id: "https://login.ward.local#user:42".to_owned(),
            }),
        ];
        let users = [
            None,
            Some(EndUser::Id("https://login.ward.local#user:7".to_owned())),
            Some(EndUser::Id("https://login.ward.local#user:9".to_owned())),
            Some(EndUser::Claims(claims("e", "globex", &["support"]))),
            Some(EndUser::Claims(claims("f", "acme", &["oncall"]))),
        ];
        let targets = [
            ("GET", "payments-svc", "/charges"),
            ("orders:refund", "orders-api", "/orders/1/refund"),
            ("orders:read", "orders-api", "/orders/1"),
            ("GET", "checkout-api", "/admin/x"),
            ("GET", "mobile-gateway", "/"),
            ("GET", "globex-reports", "/r"),
            ("POST", "profile-svc", "/p"),
        ];
        let mut out = Vec::new();
        for p in &principals {
            for u in &users {
                for (action, service, path) in targets {
                    for mtls in [true, false] {
                        out.push(Request {
                            principal: p.clone(),
                            action: action.to_owned(),
                            resource: Resource::Service(service.to_owned()),
                            context: RequestContext {
                                method: "GET".to_owned(),
                                path: path.to_owned(),
                                host: service.to_owned(),
                                mtls,
                                user: u.clone(),
                                headers: [("x-ward-tenant".to_owned(), "acme".to_owned())].into(),
                                ..RequestContext::default()
                            },
                            entities: Vec::new(),
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn small_stores_decide_exactly_like_the_full_store() {
        let dir = demo_copy();
        let schema = dir.path().join("schema.cedarschema");
        let text = std::fs::read_to_string(&schema).unwrap();
        std::fs::write(
            &schema,
            text.replace("entity Group;", "entity Group in [Group];"),
        )
        .unwrap();
        std::fs::write(dir.path().join("extra.cedar"), EXTRA_POLICIES).unwrap();
        std::fs::write(dir.path().join("entities/extra.json"), EXTRA_ENTITIES).unwrap();
        let scoped = Snapshot::load(dir.path()).unwrap();
        let mut full = Snapshot::load(dir.path()).unwrap();
        let scope = scoped
            .scope
            .as_ref()
            .expect("the demo can use small stores");
        let literals: Vec<String> = scope.literals.iter().map(ToString::to_string).collect();
        assert!(
            literals.contains(&r#"Ward::Service::"globex-reports""#.to_owned()),
            "{literals:?}"
        );
        assert!(
            literals.contains(&r#"Ward::Group::"support""#.to_owned()),
            "{literals:?}"
        );
        full.scope = None;

        let (mut allowed, mut total) = (0, 0);
        for r in requests() {
            let (a, b) = (scoped.authorize(&r), full.authorize(&r));
            assert_eq!(
                (a.allow, &a.reasons, &a.errors),
                (b.allow, &b.reasons, &b.errors),
                "{r:?}"
            );
            total += 1;
            allowed += usize::from(a.allow);
        }
        // The cases must exercise both outcomes and the new policies.
        assert!(allowed > 20 && allowed < total - 20, "{allowed} of {total}");
        let nested = Request {
            principal: Principal::User(claims("g", "acme", &["oncall"])),
            action: "GET".to_owned(),
            resource: Resource::Service("payments-svc".to_owned()),
            context: RequestContext {
                mtls: true,
                ..RequestContext::default()
            },
            entities: Vec::new(),
        };
        let d = scoped.authorize(&nested);
        assert!(d.allow, "oncall is in staff: {d:?}");
        assert!(d.reasons.contains(&"staff-read-payments".to_owned()));
    }

    #[test]
    fn source_ip_reaches_the_policies_that_read_it() {
        let request = |ip: Option<[u8; 4]>| Request {
            principal: Principal::Workload(
                SpiffeId::parse("spiffe://ward.local/ns/checkout/sa/checkout-api").unwrap(),
            ),
            action: "orders:read".to_owned(),
            resource: Resource::Service("orders-api".to_owned()),
            context: RequestContext {
                mtls: true,
                source_ip: ip.map(Into::into),
                ..RequestContext::default()
            },
            entities: Vec::new(),
        };
        let demo = Snapshot::load(&crate::test_util::demo_dir()).unwrap();
        assert!(!demo.reads_source_ip());
        assert!(demo.authorize(&request(Some([10, 1, 2, 3]))).allow);

        let dir = demo_copy();
        std::fs::write(
            dir.path().join("net.cedar"),
            "@id(\"no-10-net\")\nforbid (principal, action, resource)\n\
             when { context has source_ip && context.source_ip.isInRange(ip(\"10.0.0.0/8\")) };\n",
        )
        .unwrap();
        let s = Snapshot::load(dir.path()).unwrap();
        assert!(s.reads_source_ip());
        let d = s.authorize(&request(Some([10, 1, 2, 3])));
        assert_eq!((d.allow, d.reasons), (false, vec!["no-10-net".to_owned()]));
        assert!(s.authorize(&request(Some([192, 168, 0, 1]))).allow);
        assert!(s.authorize(&request(None)).allow);
    }

    #[test]
    fn schema_checks_are_remembered_per_shape_with_the_same_outcome() {
        let s = Snapshot::load(&crate::test_util::demo_dir()).unwrap();
        let user = Principal::User(claims("h", "acme", &["customers"]));
        // `connect` applies to workloads only: the request does not conform, every time.
        let bad = Request {
            principal: user,
            action: "connect".to_owned(),
            resource: Resource::Service("mobile-gateway".to_owned()),
            context: RequestContext::default(),
            entities: Vec::new(),
        };
        let first = s.authorize(&bad);
        assert!(!first.allow);
        assert_eq!(first.errors.len(), 1, "{first:?}");
        for _ in 0..3 {
            assert_eq!(s.authorize(&bad).errors, first.errors);
        }
        // The same principal and resource with another action is checked on its own.
        let good = Request {
            action: "GET".to_owned(),
            ..bad
        };
        for _ in 0..3 {
            let d = s.authorize(&good);
            assert!(d.allow && d.errors.is_empty(), "{d:?}");
        }
        let mut tenant = good;
        tenant
            .context
            .headers
            .insert("X-Ward-Tenant".to_owned(), "acme".to_owned());
        tenant.context.user = Some(EndUser::Id("https://login.ward.local#user:77".to_owned()));
        let d = s.authorize(&tenant);
        assert_eq!(d.reasons, vec!["tenant-isolation"], "{d:?}");
    }

    #[test]
    fn entity_references_in_attributes_fall_back_to_the_full_store() {
        let dir = demo_copy();
        std::fs::write(
            dir.path().join("schema.cedarschema"),
            std::fs::read_to_string(dir.path().join("schema.cedarschema"))
                .unwrap()
                .replace("entity Group;", "entity Group { owner?: User };"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("entities/extra.json"),
            r#"[{ "uid": { "type": "Ward::Group", "id": "owned" },
                 "attrs": { "owner": { "__entity": { "type": "Ward::User", "id": "https://login.ward.local#user:7" } } },
                 "parents": [] }]"#,
        )
        .unwrap();
        let s = Snapshot::load(dir.path()).unwrap();
        assert!(s.scope.is_none());
    }

    #[test]
    fn entity_references_are_found_at_any_depth() {
        assert!(!has_entity_ref(&json!({ "email": "a", "labels": ["x"] })));
        assert!(has_entity_ref(
            &json!({ "owner": { "__entity": { "type": "Ward::User", "id": "u" } } })
        ));
        assert!(has_entity_ref(
            &json!({ "r": { "l": [{ "__entity": { "type": "Ward::Group", "id": "g" } }] } })
        ));
        let mut uids = Vec::new();
        entity_refs(
            &json!([{ "body": { "in": { "left": {}, "right": { "Value": { "__entity": { "type": "Ward::Group", "id": "support" } } } } } }]),
            &mut uids,
        );
        assert_eq!(uids.len(), 1);
        assert_eq!(uids[0].to_string(), r#"Ward::Group::"support""#);
    }
}
