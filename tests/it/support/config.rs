//! A `Config` for tests, built the way the daemon builds one: TOML text through the real loader
//! (`keysweep::config::load_from_str`), secrets from the given environment. Tests never build a
//! `Config` by hand, so a new field or default can never make them drift from the loader.

use keysweep::config::Config;

/// Loads `toml` with `env` as the environment the `*_env` keys are read from; panics with the
/// loader's message (file and key) if the text is not a valid configuration.
pub fn config_from_toml<K: AsRef<str>, V: AsRef<str>>(toml: &str, env: &[(K, V)]) -> Config {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
        .collect();
    keysweep::config::load_from_str(toml, &env)
        .unwrap_or_else(|e| panic!("invalid test configuration: {e}\n{toml}"))
}

/// The example policies of issue 3, exactly as written there.
pub const ISSUE_3_POLICIES: &str = r#"
[[policies]]
name = "rotate-90d"
max_age = "90d"
action = "revoke"
warn_before = "14d"

[[policies]]
name = "idle-45d"
max_idle = "45d"
action = "notify"
"#;

/// Writes `dir/keysweep.toml`: `extra` at the top level, the state in `dir`, and one
/// organisation `acme` at `base_url` whose admin key is read from `admin_key_env`. Returns the
/// file's path, for the binary's `--config`.
pub fn write_config_file(
    dir: &std::path::Path,
    base_url: &str,
    admin_key_env: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("keysweep.toml");
    let state = dir.join("keysweep.db").display().to_string();
    let text = format!(
        "state_path = {state:?}\n{extra}\n[[organizations]]\nname = \"acme\"\nbase_url = \"{base_url}\"\nadmin_key_env = \"{admin_key_env}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}
