//! Modes per service: `enforce` (the decision applies) or `dry-run` (decide and record, but
//! allow), so a policy change can be observed on real traffic before it blocks anything.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How decisions for a service are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The decision applies: a deny blocks the request.
    #[default]
    Enforce,
    /// The decision is made and recorded, but the request is allowed regardless.
    DryRun,
}

/// The mode of every service: a default, and exceptions by service name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Modes {
    /// The mode of services not listed in `services` (and of non-service resources).
    pub default: Mode,
    /// Modes by service name.
    pub services: BTreeMap<String, Mode>,
}

// === impl Mode ===

impl Mode {
    /// `enforce` or `dry-run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "dry-run" => Ok(Self::DryRun),
            other => Err(format!(
                "unknown mode `{other}`: expected `enforce` or `dry-run`"
            )),
        }
    }
}

// === impl Modes ===

impl Modes {
    /// Every service in `mode`.
    pub fn all(mode: Mode) -> Self {
        Self {
            default: mode,
            services: BTreeMap::new(),
        }
    }

    /// Sets the mode of one service.
    pub fn with(mut self, service: &str, mode: Mode) -> Self {
        self.services.insert(service.to_owned(), mode);
        self
    }

    /// The mode of `service` (`None` for a resource that is not a service).
    pub fn of(&self, service: Option<&str>) -> Mode {
        service
            .and_then(|s| self.services.get(s))
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_override_the_default() {
        let modes = Modes::all(Mode::Enforce).with("orders-api", Mode::DryRun);
        assert_eq!(modes.of(Some("orders-api")), Mode::DryRun);
        assert_eq!(modes.of(Some("payments-svc")), Mode::Enforce);
        assert_eq!(modes.of(None), Mode::Enforce);
        let dry = Modes::all(Mode::DryRun).with("payments-svc", Mode::Enforce);
        assert_eq!(dry.of(None), Mode::DryRun);
        assert_eq!(dry.of(Some("payments-svc")), Mode::Enforce);
    }

    #[test]
    fn modes_parse_from_yaml_and_text() {
        let modes: Modes =
            serde_norway::from_str("default: dry-run\nservices:\n  orders-api: enforce\n").unwrap();
        assert_eq!(
            modes,
            Modes::all(Mode::DryRun).with("orders-api", Mode::Enforce)
        );
        assert!(serde_norway::from_str::<Modes>("default: shadow\n").is_err());
        assert!(serde_norway::from_str::<Modes>("defualt: enforce\n").is_err());
        assert_eq!("dry-run".parse::<Mode>(), Ok(Mode::DryRun));
        assert!("DryRun".parse::<Mode>().unwrap_err().contains("`DryRun`"));
    }
}
