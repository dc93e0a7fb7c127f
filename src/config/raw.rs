//! Raw (serde) configuration and its validation into `Config`.
use std::path::{Path, PathBuf};

use super::Config;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/keysweep/keysweep.toml")
}

pub fn load(_path: &Path) -> Result<Config, LoadError> {
    Err(LoadError::File {
        file: String::new(),
        message: "not yet".into(),
    })
}

pub fn load_from_str(_toml: &str, _env: &[(String, String)]) -> Result<Config, LoadError> {
    Err(LoadError::File {
        file: String::new(),
        message: "not yet".into(),
    })
}
