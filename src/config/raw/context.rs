//! What checking a configuration needs besides its values: the file's name (every error names
//! it), the environment (secrets named by `*_env` keys and `CREDENTIALS_DIRECTORY`) and the
//! warnings found on the way.
//!
//! Secrets are read here, from the environment or a credential file, straight into
//! `SecretString`. No error or warning built here may contain a secret value: they name the key,
//! the variable or the file instead.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::SecretString;

use super::LoadError;

pub(super) struct Context<'a> {
    file: &'a str,
    env: &'a BTreeMap<&'a str, &'a str>,
    /// Whether the organisations' admin keys are read. Off for the commands that never call the
    /// Administration API (`audit`, `notify`): an auditor must not need the admin key.
    admin_keys: bool,
    pub(super) warnings: Vec<String>,
}

impl<'a> Context<'a> {
    pub(super) fn new(file: &'a str, env: &'a BTreeMap<&'a str, &'a str>) -> Self {
        Context {
            file,
            env,
            admin_keys: true,
            warnings: Vec::new(),
        }
    }

    /// This context, reading every secret except the organisations' admin keys.
    pub(super) fn without_admin_keys(self) -> Self {
        Context {
            admin_keys: false,
            ..self
        }
    }

    /// Whether the admin keys are read (see [`Context::without_admin_keys`]).
    pub(super) fn resolves_admin_keys(&self) -> bool {
        self.admin_keys
    }

    /// The error for the value at `key`.
    pub(super) fn err(&self, key: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::Invalid {
            file: self.file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A variable of the environment the configuration is loaded with.
    pub(super) fn var(&self, name: &str) -> Option<&'a str> {
        self.env.get(name).copied()
    }

    /// Reads a secret from the environment variable named by the config key `key`.
    pub(super) fn env_secret(&self, key: &str, var: &str) -> Result<SecretString, LoadError> {
        if var.trim().is_empty() {
            return Err(self.err(key, "names no environment variable"));
        }
        match self.env.get(var) {
            Some(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
            Some(_) => Err(self.err(key, format!("environment variable {var} is empty"))),
            None => Err(self.err(key, format!("environment variable {var} is not set"))),
        }
    }

    /// Reads a secret from a file. `check_mode`: warn when the file is readable by group or
    /// others. Off for systemd credentials, whose files are root-owned with an ACL for the
    /// service user (`stat` shows 0440 although no group can read them), and whose directory
    /// systemd already protects.
    pub(super) fn file_secret(
        &mut self,
        key: &str,
        path: &Path,
        check_mode: bool,
    ) -> Result<SecretString, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        if check_mode && let Some(w) = readable_by_others(key, path) {
            self.warnings.push(w);
        }
        let value = text.trim();
        if value.is_empty() {
            return Err(self.err(key, format!("{} is empty", path.display())));
        }
        Ok(SecretString::from(value.to_string()))
    }

    /// Checks that a file the configuration names (a CA bundle) can be read.
    pub(super) fn readable(&self, key: &str, path: &Path) -> Result<(), LoadError> {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))
    }
}

#[cfg(unix)]
fn readable_by_others(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: secret file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn readable_by_others(_key: &str, _path: &Path) -> Option<String> {
    None
}
