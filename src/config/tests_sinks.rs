//! Tests of issue 17's configuration keys: `[[sinks]]` (file, exec) and a policy's
//! `action = "rotate"` with `sink`, `overlap` and `scopes`. Only loads text; never touches a
//! secret.

use std::time::Duration;

use super::{Action, SinkFormat, SinkKind, load_from_str, render_effective};

const BASE: &str = "[[organizations]]\nname = \"a\"\n";

const FILE_SINK: &str = "[[sinks]]\nname = \"disk\"\ntype = \"file\"\n\
                         path = \"/run/keys/{project_id}/{service_account_id}.env\"\nformat = \"env\"\n";

fn load(extra: &str) -> Result<super::Config, String> {
    load_from_str(
        &format!("{BASE}{extra}"),
        &[
            ("OPENAI_ADMIN_KEY".into(), "sk-admin-test".into()),
            (
                "HOOK".into(),
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            ),
        ],
    )
    .map_err(|e| format!("{e:#}"))
}

#[test]
fn a_rotate_policy_reads_as_expire_with_its_settings_and_defaults() {
    let c = load(&format!(
        "{FILE_SINK}[[policies]]\nname = \"rot\"\nmax_age = \"90d\"\naction = \"rotate\"\n\
         sink = \"disk\"\nscopes = [\"api.model.read\"]\n"
    ))
    .unwrap();
    assert_eq!(c.policies[0].action, Action::Expire);
    let r = c.rotation("rot").unwrap();
    assert_eq!(r.sink, "disk");
    assert_eq!(r.overlap, Duration::from_secs(86_400));
    assert_eq!(
        r.scopes.as_deref(),
        Some(&["api.model.read".to_string()][..])
    );
    let SinkKind::File { format, .. } = &c.sink("disk").unwrap().kind else {
        panic!("not a file sink");
    };
    assert_eq!(*format, SinkFormat::Env);
    let shown = render_effective(&c);
    assert!(shown.contains("action = \"rotate\""), "{shown}");
    assert!(shown.contains("[[sinks]]"), "{shown}");
    // `scopes = []` is kept apart from no scopes at all.
    let c = load(&format!(
        "{FILE_SINK}[[policies]]\nname = \"rot\"\nmax_age = \"90d\"\naction = \"rotate\"\n\
         sink = \"disk\"\nscopes = []\noverlap = \"2d\"\n"
    ))
    .unwrap();
    assert_eq!(c.rotation("rot").unwrap().scopes, Some(vec![]));
    assert_eq!(
        c.rotation("rot").unwrap().overlap,
        Duration::from_secs(2 * 86_400)
    );
}

#[test]
fn a_configuration_without_sinks_keeps_its_hash() {
    let plain = "[[policies]]\nname = \"p\"\nmax_age = \"90d\"\naction = \"expire\"\n";
    let shown = render_effective(&load(plain).unwrap());
    assert!(!shown.contains("sinks"), "{shown}");
    assert!(!shown.contains("overlap"), "{shown}");
}

#[test]
fn bad_sinks_and_rotate_settings_name_the_key() {
    let rotate = "[[policies]]\nname = \"rot\"\nmax_age = \"90d\"\naction = \"rotate\"\n";
    let cases: [(String, &str); 12] = [
        (rotate.to_string(), "policies[0].sink: is required"),
        (format!("{rotate}sink = \"nope\"\n"), "policies[0].sink: no sink named \"nope\""),
        (
            "[[policies]]\nname = \"p\"\nmax_age = \"9d\"\naction = \"expire\"\nsink = \"x\"\n"
                .into(),
            "policies[0].sink: only applies to action = \"rotate\"",
        ),
        (
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\n".into(),
            "sinks[0].path: is required",
        ),
        (
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"/k/{project}/{project_id}-{service_account_id}\"\n".into(),
            "sinks[0].path: {project} is not a placeholder",
        ),
        (
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"/run/keys/openai.key\"\n".into(),
            "sinks[0].path: \"/run/keys/openai.key\" must contain {project_id}",
        ),
        (
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"/run/keys/{project_id}.key\"\n".into(),
            "sinks[0].path: \"/run/keys/{project_id}.key\" must contain {service_account_id}",
        ),
        (
            "[[sinks]]\nname = \"f\"\ntype = \"file\"\npath = \"/k\"\ncommand = [\"x\"]\n".into(),
            "sinks[0].command: only applies to type = \"exec\"",
        ),
        (
            "[[sinks]]\nname = \"e\"\ntype = \"exec\"\n".into(),
            "sinks[0].command: is required",
        ),
        (
            "[[sinks]]\nname = \"e\"\ntype = \"exec\"\ncommand = [\"x\"]\nenv = [\"OPENAI_ADMIN_KEY\"]\n"
                .into(),
            "sinks[0].env[0]: OPENAI_ADMIN_KEY holds the admin key",
        ),
        (
            "[[channels]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://h.example/x\"\n\
             secret_env = \"HOOK\"\n[[sinks]]\nname = \"e\"\ntype = \"exec\"\ncommand = [\"x\"]\n\
             env = [\"VAULT_ADDR\", \"HOOK\"]\n"
                .into(),
            "sinks[0].env[1]: HOOK holds the admin key or a channel's secret",
        ),
        (
            format!("{FILE_SINK}{FILE_SINK}"),
            "sinks[1].name: duplicate sink name \"disk\"",
        ),
    ];
    for (text, expected) in cases {
        let e = load(&text).unwrap_err();
        assert!(e.contains(expected), "{text}\n→ {e}\nexpected {expected}");
        assert!(e.contains("<inline>"), "{e}");
    }
}
