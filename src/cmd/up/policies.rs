//! The demo mesh's policy repository, built into the binary and written out on first run, so
//! that `ward up` works from any directory and the copy in the data dir is the user's to edit.

use std::path::Path;

use anyhow::Context as _;
use ward_identity::TrustDomain;

/// The trust domain the repository's files name; replaced by the mesh's own when it differs.
const WRITTEN_FOR: &str = "ward.local";

/// Pairs each named file of `policies/` with its text, built into the binary.
macro_rules! repository {
    ($($name:literal,)*) => {
        &[$(($name, include_str!(concat!("../../../policies/", $name))),)*]
    };
}

/// Every file of `policies/`, by its path inside the repository.
const FILES: &[(&str, &str)] = repository![
    "schema.cedarschema",
    "mesh.cedar",
    "guardrails.cedar",
    "tenants.cedar",
    "egress.cedar",
    "entities/services.json",
    "entities/users.json",
    "routes/inventory-svc.yaml",
    "routes/orders-api.yaml",
    "routes/payments-svc.yaml",
    "routes/profile-svc.yaml",
    "tests/guardrails.yaml",
    "tests/mesh.yaml",
    "tests/tenants.yaml",
];

/// Writes the repository to `dir` unless it exists; returns whether it wrote it. The files go
/// to a temporary sibling first and are renamed into place, so an interrupted first run leaves
/// no half-written repository behind.
pub(super) fn ensure(dir: &Path, trust_domain: &TrustDomain) -> anyhow::Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    let staging = dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing `{}`", staging.display()))?;
    }
    // Ids (`spiffe://ward.local/…`) and the trust-domain guardrail's literal
    // (`principal.trust_domain == "ward.local"`); `login.ward.local` users stay as they are.
    let replacements = [
        (
            format!("spiffe://{WRITTEN_FOR}/"),
            format!("spiffe://{trust_domain}/"),
        ),
        (format!("\"{WRITTEN_FOR}\""), format!("\"{trust_domain}\"")),
    ];
    for (name, text) in FILES {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating `{}`", parent.display()))?;
        }
        let text = replacements
            .iter()
            .fold((*text).to_owned(), |text, (from, to)| {
                text.replace(from, to)
            });
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
    }
    std::fs::rename(&staging, dir)
        .with_context(|| format!("renaming `{}` to `{}`", staging.display(), dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_repository_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(&root).unwrap();
                    on_disk.push(rel.to_str().unwrap().to_owned());
                }
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        built_in.sort();
        assert_eq!(built_in, on_disk);
    }

    #[test]
    fn a_written_repository_validates_and_an_existing_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("policies");
        let td = TrustDomain::parse("example.org").unwrap();
        assert!(ensure(&repo, &td).unwrap());
        let mesh = std::fs::read_to_string(repo.join("mesh.cedar")).unwrap();
        assert!(mesh.contains("spiffe://example.org/ns/mobile/sa/mobile-gateway"));
        assert!(!mesh.contains("ward.local"));
        // The repository's own tests still pass in the new trust domain, the guardrail that
        // names the trust domain included.
        let snapshot = ward_authz::Snapshot::load(&repo).unwrap();
        let cases = ward_authz::policy_test::load(&repo).unwrap();
        assert!(cases.len() > 10, "{}", cases.len());
        let failed: Vec<_> = ward_authz::policy_test::run(&snapshot, &cases)
            .into_iter()
            .filter_map(|r| r.failure)
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
        std::fs::write(repo.join("mesh.cedar"), "// mine\n").unwrap();
        assert!(!ensure(&repo, &td).unwrap());
        assert_eq!(
            std::fs::read_to_string(repo.join("mesh.cedar")).unwrap(),
            "// mine\n"
        );
    }
}
