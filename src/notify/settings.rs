//! notify's own configuration: channels, routes, ops channels, the owner fallback, the
//! notification settings and which channels each policy notifies.
//!
//! It is built from the validated `Config` at the edge (the sweep, the daemon's shutdown hook,
//! `keysweep notify`), and it is all that the rest of `notify` ever sees of the configuration:
//! this file is the only one in `notify/` that names `Config`, and it must never copy an
//! organisation, so no admin-key material reaches notify. Channel secrets are in here, read
//! only by the senders at the moment a request is built.

use std::collections::BTreeMap;

use crate::config::{ChannelConfig, Config, NotificationSettings, ProjectPattern, RouteConfig};

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
