//! Formatting `.cedar` files with the official formatter (`cedar-policy-formatter`).

use cedar_policy_formatter::{Config, policies_str_to_pretty};

/// The formatted text of a `.cedar` file, or why it could not be formatted (it does not parse).
///
/// Comments are kept. Formatting is idempotent: formatting the output again changes nothing.
///
/// ```
/// let pretty = ward_authz::format::format_policies(
///     "@id(\"a\") permit(principal,action,resource) when {context.mtls};",
/// ).unwrap();
/// assert!(pretty.starts_with("@id(\"a\")\npermit (principal, action, resource)"));
/// ```
pub fn format_policies(text: &str) -> Result<String, String> {
    let config = Config {
        line_width: 100,
        indent_width: 2,
    };
    let mut out = policies_str_to_pretty(text, &config).map_err(|e| {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_is_idempotent() {
        let messy = "// keep me\n@id(\"x\")\npermit(principal==Ward::Workload::\"a\",action,resource)when{context.mtls};";
        let once = format_policies(messy).unwrap();
        assert!(once.contains("// keep me"), "{once}");
        assert_eq!(format_policies(&once).unwrap(), once);
        assert_ne!(once, messy);
    }

    #[test]
    fn unparsable_text_is_an_error() {
        assert!(format_policies("permit(principal, action").is_err());
    }
}
