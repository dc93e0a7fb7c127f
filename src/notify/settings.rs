//! notify's own configuration: channels, routes, ops channels, the owner fallback, the
//! notification settings and which channels each policy notifies.
//!
//! It is built from the validated `Config` at the edge (the sweep, the daemon's shutdown hook,
//! `keysweep notify`), and it is all that the rest of `notify` ever sees of the configuration:
//! this file is the only one in `notify/` that names `Config`, and it must never copy an
//! organisation, so no admin-key material reaches notify. Channel secrets are in here, read
//! only by the senders at the moment a request is built.

use std::collections::BTreeMap;

use crate::config::{ChannelConfig, Config, NotificationSettings, RouteConfig};

#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub channels: Vec<ChannelConfig>,
    /// Extra channels for findings in matching projects, their patterns compiled once (a
    /// first sweep routes tens of thousands of notices).
    pub routes: Vec<Route>,
    /// Channels that receive enforcer alerts (incomplete listing, auth failure, cap hit, …).
    pub ops_channels: Vec<String>,
    /// Channels for findings whose owner has no e-mail (service accounts, unknown owners).
    pub owner_fallback: Vec<String>,
    pub notifications: NotificationSettings,
    /// Each policy's `notify` channels, by policy name.
    pub policy_channels: BTreeMap<String, Vec<String>>,
}

/// A `[[routes]]` entry with its project patterns compiled.
#[derive(Debug, Clone)]
pub struct Route {
    pub projects: Vec<ProjectPattern>,
    pub channels: Vec<String>,
}

/// One of a route's `projects`: a project id matches that id only, never a name its owner chose
/// to look like it; anything else matches the id or the name exactly, or as a glob over either.
#[derive(Debug, Clone)]
pub enum ProjectPattern {
    Id(String),
    Other {
        text: String,
        /// `None`: not a valid glob, so it matches exactly only.
        glob: Option<globset::GlobMatcher>,
    },
}

impl ProjectPattern {
    pub fn new(pattern: &str) -> ProjectPattern {
        if crate::config::is_project_id_pattern(pattern) {
            return ProjectPattern::Id(pattern.to_string());
        }
        ProjectPattern::Other {
            text: pattern.to_string(),
            glob: globset::Glob::new(pattern)
                .ok()
                .map(|g| g.compile_matcher()),
        }
    }

    pub fn matches(&self, project_id: &str, project_name: Option<&str>) -> bool {
        match self {
            ProjectPattern::Id(id) => id == project_id,
            ProjectPattern::Other { text, glob } => {
                text == project_id
                    || Some(text.as_str()) == project_name
                    || glob.as_ref().is_some_and(|m| {
                        m.is_match(project_id) || project_name.is_some_and(|n| m.is_match(n))
                    })
            }
        }
    }
}

impl From<&RouteConfig> for Route {
    fn from(r: &RouteConfig) -> Route {
        Route {
            projects: r.projects.iter().map(|p| ProjectPattern::new(p)).collect(),
            channels: r.channels.clone(),
        }
    }
}

impl NotifySettings {
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

impl From<&Config> for NotifySettings {
    fn from(config: &Config) -> NotifySettings {
        NotifySettings {
            channels: config.channels.clone(),
            routes: config.routes.iter().map(Route::from).collect(),
            ops_channels: config.ops_channels.clone(),
            owner_fallback: config.owner_fallback.clone(),
            notifications: config.notifications.clone(),
            policy_channels: config
                .policies
                .iter()
                .map(|p| (p.name.clone(), p.notify.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProjectPattern;

    #[test]
    fn route_patterns_match_ids_exactly_and_globs_over_either() {
        let id = ProjectPattern::new("proj_abc");
        assert!(id.matches("proj_abc", None));
        // A name chosen to look like another project's id matches nothing.
        assert!(!id.matches("proj_other", Some("proj_abc")));
        let glob = ProjectPattern::new("prod-*");
        assert!(glob.matches("proj_1", Some("prod-eu")));
        assert!(!glob.matches("proj_1", Some("staging")));
        assert!(!glob.matches("proj_1", None));
        let over_ids = ProjectPattern::new("proj_a*");
        assert!(over_ids.matches("proj_abc", Some("x")));
        let exact = ProjectPattern::new("Team [a");
        assert!(
            exact.matches("proj_1", Some("Team [a")),
            "an invalid glob is exact"
        );
        assert!(!exact.matches("proj_1", Some("Team a")));
    }
}
