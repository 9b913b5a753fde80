//! Ward's Cedar model: the entity types and actions of namespace `Ward` that the engine builds
//! requests from, and the checks that a repository's schema declares them.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};

use crate::error::Error;
use crate::route::HTTP_METHODS;

/// The namespace every Ward type lives in.
pub(crate) const NAMESPACE: &str = "Ward";

/// Actions the engine uses besides the named service actions of the routes.
pub(crate) fn builtin_actions() -> impl Iterator<Item = &'static str> {
    HTTP_METHODS
        .into_iter()
        .chain(["read", "write", "connect", "egress"])
}

/// The type names, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) workload: EntityTypeName,
    pub(crate) user: EntityTypeName,
    pub(crate) group: EntityTypeName,
    pub(crate) service: EntityTypeName,
    pub(crate) external_host: EntityTypeName,
    pub(crate) action: EntityTypeName,
}

// === impl Model ===

impl Model {
    pub(crate) fn new() -> Result<Self, Error> {
        let ty = |name: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
                .map_err(|e| Error::bug(format!("type name `{name}`: {e}")))
        };
        Ok(Self {
            workload: ty("Workload")?,
            user: ty("User")?,
            group: ty("Group")?,
            service: ty("Service")?,
            external_host: ty("ExternalHost")?,
            action: ty("Action")?,
        })
    }

    /// `Ward::<ty>::"<id>"`.
    pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    /// `Ward::Action::"<name>"`.
    pub(crate) fn action(&self, name: &str) -> EntityUid {
        Self::uid(&self.action, name)
    }

    /// Parses an entity reference written by a person: `Type::"id"` (the `Ward::` namespace is
    /// implied when missing) or a full `Ns::Type::"id"`.
    pub(crate) fn parse_uid(text: &str) -> Result<EntityUid, String> {
        let text = text.trim();
        let qualified = if text.starts_with(&format!("{NAMESPACE}::")) {
            text.to_owned()
        } else {
            format!("{NAMESPACE}::{text}")
        };
        EntityUid::from_str(&qualified)
            .map_err(|e| format!("`{text}` is not an entity reference like `User::\"alice\"`: {e}"))
    }

    /// The entity types and actions `schema` lacks, as messages.
    pub(crate) fn missing_from(&self, schema: &Schema) -> Vec<String> {
        let mut missing = Vec::new();
        let types: Vec<&EntityTypeName> = schema.entity_types().collect();
        for ty in [
            &self.workload,
            &self.user,
            &self.group,
            &self.service,
            &self.external_host,
        ] {
            if !types.contains(&ty) {
                missing.push(format!(
                    "schema does not declare entity type `{ty}`, which Ward's request model uses"
                ));
            }
        }
        let actions: Vec<&EntityUid> = schema.actions().collect();
        for name in builtin_actions() {
            let uid = self.action(name);
            if !actions.contains(&&uid) {
                missing.push(format!(
                    "schema does not declare action `{uid}`, which Ward's request model uses"
                ));
            }
        }
        missing
    }
}
