use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::*;

const ENV_LISTEN: &str = "WARD_TEST_LISTEN";

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Sample {
    data_dir: PathBuf,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    max_connections: u32,
}

impl Overrides for Sample {
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        override_path(env, ENV_DATA_DIR, &mut self.data_dir);
        let mut listen = self.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        override_parsed(env, ENV_LISTEN, &mut listen)?;
        self.listen = Some(listen);
        Ok(())
    }
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn good_file_loads() {
    let file =
        write("data_dir: /var/lib/ward\nlisten: 127.0.0.1:15006\nlimits:\n  max_connections: 10\n");
    let cfg: Sample = load(file.path(), &MapEnv::default()).unwrap();
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/ward"));
    assert_eq!(cfg.listen, Some("127.0.0.1:15006".parse().unwrap()));
    assert_eq!(cfg.limits.max_connections, 10);
}

#[test]
fn unknown_field_names_file_line_column_and_field() {
    let file = write("data_dir: /x\nlimits:\n  max_conections: 3\n");
    let err = load::<Sample>(file.path(), &MapEnv::default()).unwrap_err();
    let msg = err.to_string();
    let expected = format!("{}:3:3: ", file.path().display());
    assert!(msg.starts_with(&expected), "{msg}");
    assert!(msg.contains("limits"), "names the enclosing field: {msg}");
    assert!(msg.contains("unknown field `max_conections`"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn wrong_type_names_the_field() {
    let file = write("data_dir: /x\nlisten: [1, 2]\n");
    let err = load::<Sample>(file.path(), &MapEnv::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:2:", file.path().display())),
        "{msg}"
    );
    assert!(msg.contains("listen"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn missing_required_field_is_reported() {
    let file = write("listen: 127.0.0.1:1\n");
    let err = load::<Sample>(file.path(), &MapEnv::default()).unwrap_err();
    assert!(
        err.to_string().contains("missing field `data_dir`"),
        "{err}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = load::<Sample>(Path::new("/nonexistent/ward.yaml"), &MapEnv::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("`/nonexistent/ward.yaml`"),
        "{err}"
    );
}

#[test]
fn malformed_yaml_has_a_location() {
    let file = write("data_dir: /x\nlisten: [\n");
    let err = load::<Sample>(file.path(), &MapEnv::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Parse {
                location: Some(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let file = write("data_dir: /from/file\nlisten: 127.0.0.1:1\n");
    let env = MapEnv::from([(ENV_DATA_DIR, "/from/env"), (ENV_LISTEN, "127.0.0.1:2")]);
    let cfg: Sample = load(file.path(), &env).unwrap();
    assert_eq!(cfg.data_dir, PathBuf::from("/from/env"));
    assert_eq!(cfg.listen, Some("127.0.0.1:2".parse().unwrap()));
}

#[test]
fn bad_environment_override_names_the_variable() {
    let file = write("data_dir: /x\n");
    let env = MapEnv::from([(ENV_LISTEN, "not-an-address")]);
    let err = load::<Sample>(file.path(), &env).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(ENV_LISTEN) && msg.contains("not-an-address"),
        "{msg}"
    );
}

#[test]
fn empty_file_means_defaults() {
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct AllDefault {
        data_dir: PathBuf,
    }
    let parsed: AllDefault = parse(Path::new("x.yaml"), "\n").unwrap();
    assert_eq!(parsed.data_dir, PathBuf::new());
}
