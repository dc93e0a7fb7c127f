//! The `file` sink: the key written to a path made from a template, atomically (a temporary file
//! in the same directory, mode 0600 from creation, synced, then renamed over the target) so a
//! reader sees the old file or the new one, never half of one.
//!
//! It must never create the file with wider permissions (not even for a moment), never leave
//! the secret in a buffer that is not zeroed, and never put the secret into an error.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::SinkFormat;

use super::meta::KeyMeta;

/// The target path: each placeholder replaced by its value, made safe for a path component (a
/// value from the API can never add a directory).
pub(super) fn target(template: &str, meta: &KeyMeta) -> PathBuf {
    let safe = |v: &str| -> String {
        let s: String = v
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if s.is_empty() || s.chars().all(|c| c == '.') {
            "_".into()
        } else {
            s
        }
    };
    PathBuf::from(
        template
            .replace("{organization}", &safe(&meta.organization))
            .replace("{project_id}", &safe(&meta.project_id))
            .replace("{service_account_id}", &safe(&meta.service_account_id)),
    )
}

/// The file's content in `format`, in a buffer zeroed on drop.
fn content(format: SinkFormat, meta: &KeyMeta, secret: &SecretString) -> Zeroizing<String> {
    let value = secret.expose_secret();
    // Room for everything up front: a `String` that grows leaves its old buffer unzeroed.
    let room = 2 * value.len()
        + 6 * (meta.key_id.len()
            + meta.key_name.len()
            + meta.organization.len()
            + meta.project_id.len()
            + meta.service_account_id.len())
        + 256;
    let mut out = Zeroizing::new(String::with_capacity(room));
    match format {
        SinkFormat::Raw => {
            out.push_str(value);
            out.push('\n');
        }
        SinkFormat::Env => {
            out.push_str("OPENAI_API_KEY=");
            out.push_str(value);
            out.push_str("\nOPENAI_API_KEY_ID=");
            out.push_str(&meta.key_id);
            out.push('\n');
        }
        SinkFormat::Json => {
            // serde_json would build its own, unzeroed copy: the value is a plain ASCII token,
            // escaped here by hand for the characters JSON requires.
            let esc = |s: &str, out: &mut String| {
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
            };
            let fields: [(&str, &str); 6] = [
                ("id", &meta.key_id),
                ("name", &meta.key_name),
                ("organization", &meta.organization),
                ("project_id", &meta.project_id),
                ("service_account_id", &meta.service_account_id),
                ("value", value),
            ];
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(k);
                out.push_str("\":\"");
                esc(v, &mut out);
                out.push('"');
            }
            out.push_str("}\n");
        }
    }
    out
}

/// Writes the key; `Err` says why not (never with the secret).
pub(super) fn write(
    template: &str,
    format: SinkFormat,
    meta: &KeyMeta,
    secret: &SecretString,
) -> Result<(), String> {
    let path = target(template, meta);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        "{}{}",
        temp_prefix(&name),
        uuid::Uuid::new_v4().simple()
    ));
    let body = content(format, meta, secret);
    let written = write_new(&tmp, body.as_bytes()).and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    remove_stale_temporaries(&dir, &name);
    // Once renamed, readers see the new key and the old secret is gone from the file: an
    // error now would have the rotation delete the key the file holds. Syncing the directory
    // only makes the rename survive a power loss, so its failure (a directory that cannot be
    // opened for reading, a file system without directory fsync) is logged, not returned.
    if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::warn!(
            path = %crate::text::log_field(&path.display().to_string()),
            "the key was written, but its directory could not be synced: {e}"
        );
    }
    Ok(())
}

/// The start of the name of every temporary file a write to the file `name` makes (a random
/// suffix follows): one place, so the clean-up always finds what [`write`] leaves.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.keysweep-")
}

/// Removes what a crash between a write and its rename left of earlier writes to the file
/// `name`: temporary files that hold a secret nobody reads. Only regular files named as
/// [`write`] names them; one sweeper writes at a time (the state file's lock), so none of them
/// is a write under way. Failures are logged: the key is already in place.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if stale && let Err(e) = fs::remove_file(entry.path()) {
            tracing::warn!(
                path = %crate::text::log_field(&entry.path().display().to_string()),
                "a temporary file an interrupted write left could not be removed: {e}"
            );
        }
    }
}

/// Creates `path` (never an existing file) with mode 0600 and writes `bytes`, synced.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn meta() -> KeyMeta {
        KeyMeta {
            organization: "acme".into(),
            project_id: "proj_1".into(),
            service_account_id: "svc/../x".into(),
            key_id: "key_new".into(),
            key_name: "ci \"bot\"".into(),
            redacted_value: "sk-...abcd".into(),
            old_key_id: "key_old".into(),
            expires_at: None,
        }
    }

    /// A crash between a write and its rename left a temporary file holding a secret: the next
    /// write to the same file removes it, and nothing else.
    #[test]
    fn a_write_removes_the_temporaries_an_interrupted_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".proj_1.key.keysweep-0123abcd");
        let other = dir.path().join(".proj_2.key.keysweep-0123abcd");
        fs::write(&stale, "sk-svcacct-OLDSECRET").unwrap();
        fs::write(&other, "not ours to touch").unwrap();
        let template = dir.path().join("{project_id}.key");
        let secret = SecretString::from("sk-svcacct-TESTSECRET1234".to_string());
        write(
            template.to_str().unwrap(),
            SinkFormat::Raw,
            &meta(),
            &secret,
        )
        .unwrap();
        assert!(!stale.exists(), "the stale temporary is still there");
        assert!(other.exists(), "another file's temporary was removed");
        let names: Vec<String> = (fs::read_dir(dir.path()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"proj_1.key".to_string()), "{names:?}");
    }

    #[test]
    fn placeholders_are_filled_and_cannot_add_directories() {
        let p = target(
            "/s/{organization}/{project_id}-{service_account_id}.key",
            &meta(),
        );
        assert_eq!(p, PathBuf::from("/s/acme/proj_1-svc_.._x.key"));
    }

    #[test]
    fn every_format_is_written_with_mode_0600_and_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretString::from("sk-svcacct-TESTSECRET1234".to_string());
        for (format, expected) in [
            (SinkFormat::Raw, "sk-svcacct-TESTSECRET1234\n".to_string()),
            (
                SinkFormat::Env,
                "OPENAI_API_KEY=sk-svcacct-TESTSECRET1234\nOPENAI_API_KEY_ID=key_new\n".into(),
            ),
        ] {
            let template = dir.path().join("{project_id}.key");
            let template = template.to_str().unwrap();
            fs::write(dir.path().join("proj_1.key"), "old").unwrap();
            write(template, format, &meta(), &secret).unwrap();
            let path = dir.path().join("proj_1.key");
            assert_eq!(fs::read_to_string(&path).unwrap(), expected);
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let template = dir.path().join("k.json");
        write(
            template.to_str().unwrap(),
            SinkFormat::Json,
            &meta(),
            &secret,
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&template).unwrap()).unwrap();
        assert_eq!(v["value"], "sk-svcacct-TESTSECRET1234");
        assert_eq!(v["name"], "ci \"bot\"");
        assert_eq!(v["service_account_id"], "svc/../x");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("keysweep-")),
            "{names:?}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_without_the_secret() {
        let secret = SecretString::from("sk-svcacct-TESTSECRET1234".to_string());
        let err = write(
            "/nonexistent-dir-ks/{project_id}",
            SinkFormat::Raw,
            &meta(),
            &secret,
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent-dir-ks/proj_1"), "{err}");
        assert!(!err.contains("TESTSECRET"), "{err}");
    }
}
