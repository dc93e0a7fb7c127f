//! Coverage of the deployment kit itself: every file under `config/` and `deploy/` is of a kind
//! one of the deploy tests checks, and `deploy/README.md` names every file it describes.

use super::kit::{files_under, has_ext, read, rel, repo, shipped_files, yaml_docs};

/// Every file under `config/` and `deploy/` is of a kind a test above checks; a new kind of
/// file fails here until a check for it is added.
#[test]
fn every_shipped_file_is_checked() {
    let mut unchecked = Vec::new();
    for f in shipped_files() {
        let r = rel(&f);
        let covered = has_ext(&f, &["toml"]) // check-config
            || has_ext(&f, &["json"]) && serde_json::from_str::<serde_json::Value>(&read(&f)).is_ok()
            || has_ext(&f, &["yaml", "yml"]) && !yaml_docs(&f).is_empty()
            || matches!(
                r.as_str(),
                "deploy/systemd/keysweep.service"
                    | "deploy/systemd/keysweep.env.example"
                    | "deploy/container/Dockerfile"
                    | "deploy/container/Dockerfile.dockerignore"
                    | "deploy/README.md"
            );
        if !covered {
            unchecked.push(r);
        }
    }
    assert!(unchecked.is_empty(), "no test checks {unchecked:?}");
    // And the README names every file it describes.
    let readme = read(&repo().join("deploy/README.md"));
    for f in files_under(&repo().join("deploy")) {
        let r = rel(&f);
        if r != "deploy/README.md" {
            let name = r.trim_start_matches("deploy/");
            assert!(
                readme.contains(name),
                "deploy/README.md does not mention {name}"
            );
        }
    }
}
