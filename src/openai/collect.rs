//! Collects the inventory: every selected project of every organisation, with its keys.
//!
//! Projects are discovered page by page and their key listings start as soon as each project is
//! known, so the project list and the key pages overlap. At most `limits.concurrency` projects
//! are listed at once across all organisations (a sliding window: a new project starts when one
//! finishes). Each project's keys go page by page to a [`KeySink`] chosen by the caller: `scan`
//! keeps them all (`Vec<Key>`), a sweep evaluates and records each page and keeps only a tally,
//! so its memory does not grow with the organisation.
//!
//! Every project ends `Listing::Complete` or `Listing::Incomplete(reason)`; one failing project
//! never stops the others. A failed project list, or an admin key refused (401/403) anywhere,
//! sets `OrgInventory.error`. This module never deletes anything and never decides policy; in the
//! normal case it makes exactly the minimum number of requests (project pages + key pages + one
//! admin-key page per organisation).

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{Config, OrgConfig, ProjectPattern};
use crate::inventory::{
    AdminKeyInfo, Inventory, Key, Listing, OrgInventory, OwnerType, ProjectInventory, ProjectRef,
};
use crate::openai::AdminClient;

/// Receives one project's keys page by page while the project is being listed.
pub trait KeySink: Send + 'static {
    /// What the inventory keeps of the project's keys. `Default` stands for a project whose
    /// listing task died before it could finish.
    type Kept: Default + Send + 'static;

    /// One page of keys, in listing order, with owner e-mails filled in where the project's
    /// users could tell. Awaiting here slows the listing down (backpressure), never loses keys.
    /// `false` means the sink can take no more: the project's listing stops, incomplete.
    fn page(&mut self, keys: Vec<Key>) -> impl Future<Output = bool> + Send;

    /// The listing ended. Unless `listing` is complete, the pages seen were not the whole
    /// project and nothing may be concluded from what is missing.
    fn finish(self, listing: &Listing) -> impl Future<Output = Self::Kept> + Send;
}

/// `scan`: every key of a completely listed project; none of a project listed in part.
impl KeySink for Vec<Key> {
    type Kept = Vec<Key>;

    async fn page(&mut self, keys: Vec<Key>) -> bool {
        self.extend(keys);
        true
    }

    async fn finish(mut self, listing: &Listing) -> Vec<Key> {
        if listing.is_complete() {
            // Kept until the command ends: drop the doubling slack.
            self.shrink_to_fit();
            self
        } else {
            Vec::new()
        }
    }
}

/// Which projects of an organisation to sweep: `projects` (ids or name globs; empty means every
/// project the listing returns, i.e. every active one unless `include_archived`) minus
/// `exclude_projects`. A pattern matches a project when it equals the id or, as a glob
/// (case-sensitive), matches the name or the id.
#[derive(Debug, Clone)]
pub struct ProjectSelector {
    include: Vec<ProjectPattern>,
    exclude: Vec<ProjectPattern>,
}

impl ProjectSelector {
    pub fn new(projects: &[String], exclude: &[String]) -> Self {
        Self {
            include: projects.iter().map(|s| ProjectPattern::new(s)).collect(),
            exclude: exclude.iter().map(|s| ProjectPattern::new(s)).collect(),
        }
    }

    pub fn from_org(org: &OrgConfig) -> Self {
        Self::new(&org.projects, &org.exclude_projects)
    }

    pub fn selects(&self, p: &ProjectRef) -> bool {
        let matches = |pat: &ProjectPattern| pat.matches(&p.id, p.name.as_deref());
        let included = self.include.is_empty() || self.include.iter().any(matches);
        if !included || self.exclude.iter().any(matches) {
            return false;
        }
        // The API may answer a project's `name` as `null`. An exclusion by name cannot tell
        // whether it meant that project, and reading "no name" as "not excluded" would sweep
        // (and enforce on) a project the operator left out: it stays out, and says so.
        // A project the operator selected by its id is meant, whatever its name.
        let by_id = self
            .include
            .iter()
            .any(|x| x.is_literal_id() && x.text() == p.id);
        if p.name.is_none() && !by_id && self.exclude.iter().any(|x| !x.is_literal_id()) {
            tracing::warn!(
                organization = %p.organization,
                project = %p.id,
                "project has no name and exclude_projects matches names: left out of this \
                 sweep (write exclude_projects with project ids instead of name patterns, or \
                 list the projects to sweep by id in projects)"
            );
            return false;
        }
        true
    }

    /// Configured plain ids that matched none of `seen` and are not excluded.
    fn missing_ids(&self, seen: &HashSet<String>) -> Vec<String> {
        self.include
            .iter()
            .filter(|pat| pat.is_literal_id() && !seen.contains(pat.text()))
            .filter(|pat| !self.exclude.iter().any(|x| x.text() == pat.text()))
            .map(|pat| pat.text().to_string())
            .collect()
    }
}

/// What an organisation's discovery task reports to the collector.
enum Discovery {
    Project {
        org: usize,
        project: ProjectRef,
    },
    /// A configured project id that the listing did not return.
    Missing {
        org: usize,
        project_id: String,
    },
    Done {
        org: usize,
        /// The project-list failure and whether it was the admin key being refused.
        error: Option<(String, bool)>,
        admin_keys: Vec<AdminKeyInfo>,
    },
}

/// What a project task returns.
struct ProjectResult<K> {
    inventory: ProjectInventory<K>,
    /// The admin key was refused: the whole organisation is unusable.
    unauthorized: Option<String>,
}

/// Lists every selected project of every organisation (one client per organisation, matched to
/// its `config.organizations` entry by name) and returns the inventory, organisations in the
/// order of `clients`, projects in listing order.
///
/// `progress(done, known)` is called each time a project is discovered or finished: `known`
/// grows while project pages arrive. It runs on the caller's task.
///
/// Never fails as a whole: failures end up in `OrgInventory.error` and `Listing::Incomplete`.
pub async fn collect_inventory(
    config: &Config,
    clients: &[AdminClient],
    progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
) -> Inventory {
    collect_with(config, clients, |_| Vec::new(), progress).await
}

/// [`collect_inventory`] with the keys of each project handed to `sink_for(project)` page by
/// page; the inventory keeps what each sink's `finish` returns.
pub async fn collect_with<S: KeySink>(
    config: &Config,
    clients: &[AdminClient],
    sink_for: impl FnMut(&ProjectRef) -> S,
    progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
) -> Inventory<S::Kept> {
    let concurrency = config.limits.concurrency.max(1);
    let (tx, mut rx) = mpsc::unbounded_channel::<Discovery>();
    let mut collector = Collector::new(clients, sink_for, progress);
    // Dropping the set would abort the discovery tasks: it lives until the collection ends.
    let _discovery = spawn_discovery(config, clients, &tx);
    drop(tx);
    let mut discovery_open = true;
    loop {
        tokio::select! {
            // Finishing work first frees window slots sooner.
            biased;
            Some(joined) = collector.running.join_next_with_id(), if !collector.running.is_empty() => {
                collector.project_done(joined);
            }
            msg = rx.recv(), if discovery_open && collector.running.len() < concurrency => match msg {
                Some(found) => collector.discovered(found),
                None => discovery_open = false,
            },
            else => break,
        }
    }
    collector.finish()
}

/// Starts one discovery task per organisation, each with the project selector of its
/// `config.organizations` entry (every project when there is none).
fn spawn_discovery(
    config: &Config,
    clients: &[AdminClient],
    tx: &mpsc::UnboundedSender<Discovery>,
) -> JoinSet<()> {
    let mut discovery = JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let selector = config
            .organizations
            .iter()
            .find(|o| o.name == client.org_name())
            .map(ProjectSelector::from_org)
            .unwrap_or_else(|| ProjectSelector::new(&[], &[]));
        // Spawned tasks do not inherit the caller's span: carry it (the sweep's run id) along.
        discovery.spawn(discover(i, client.clone(), selector, tx.clone()).in_current_span());
    }
    discovery
}

/// The collection in progress: the organisations' inventories, the projects found so far in
/// listing order, and the window of running project listings.
struct Collector<'c, S: KeySink, F> {
    clients: &'c [AdminClient],
    sink_for: F,
    progress: Option<&'c (dyn Fn(usize, usize) + Send + Sync)>,
    orgs: Vec<OrgInventory<S::Kept>>,
    /// Projects in listing order per organisation; filled as their tasks finish.
    slots: Vec<Vec<Option<ProjectInventory<S::Kept>>>>,
    /// Whether each organisation's discovery task reported (it could only fail to by panicking).
    finished: Vec<bool>,
    running: JoinSet<ProjectResult<S::Kept>>,
    /// Which project a task lists, to account for a task that panicked.
    running_ids: HashMap<tokio::task::Id, (usize, usize, ProjectRef)>,
    done: usize,
    known: usize,
}

impl<'c, S: KeySink, F: FnMut(&ProjectRef) -> S> Collector<'c, S, F> {
    fn new(
        clients: &'c [AdminClient],
        sink_for: F,
        progress: Option<&'c (dyn Fn(usize, usize) + Send + Sync)>,
    ) -> Self {
        let orgs = clients
            .iter()
            .map(|client| OrgInventory {
                organization: client.org_name().to_string(),
                projects: Vec::new(),
                error: None,
                unauthorized: false,
                admin_keys: Vec::new(),
            })
            .collect();
        Self {
            clients,
            sink_for,
            progress,
            orgs,
            slots: (0..clients.len()).map(|_| Vec::new()).collect(),
            finished: vec![false; clients.len()],
            running: JoinSet::new(),
            running_ids: HashMap::new(),
            done: 0,
            known: 0,
        }
    }

    fn report(&self) {
        if let Some(p) = self.progress {
            p(self.done, self.known);
        }
    }

    /// A project task ended, normally or not: its project takes its place in the inventory.
    fn project_done(
        &mut self,
        joined: Result<(tokio::task::Id, ProjectResult<S::Kept>), tokio::task::JoinError>,
    ) {
        let (org, pos, result) = match joined {
            Ok((id, r)) => {
                let Some((org, pos, _)) = self.running_ids.remove(&id) else {
                    return;
                };
                (org, pos, r)
            }
            Err(e) => {
                let Some((org, pos, project)) = self.running_ids.remove(&e.id()) else {
                    return;
                };
                tracing::error!(project = %project.id, error = %e, "project listing task failed");
                let inventory = ProjectInventory {
                    project,
                    keys: S::Kept::default(),
                    listing: Listing::Incomplete(format!("internal error: {e}")),
                };
                let unauthorized = None;
                (
                    org,
                    pos,
                    ProjectResult {
                        inventory,
                        unauthorized,
                    },
                )
            }
        };
        if let Some(reason) = result.unauthorized
            && self.orgs[org].error.is_none()
        {
            self.orgs[org].error = Some(reason);
            self.orgs[org].unauthorized = true;
        }
        if let Some(slot) = self.slots[org].get_mut(pos) {
            *slot = Some(result.inventory);
        }
        self.done += 1;
        self.report();
    }

    fn discovered(&mut self, found: Discovery) {
        match found {
            Discovery::Project { org, project } => self.start_project(org, project),
            Discovery::Missing { org, project_id } => self.missing_project(org, project_id),
            Discovery::Done {
                org,
                error,
                admin_keys,
            } => {
                // A failed project list says more than a refusal seen by a project task.
                if let Some((reason, unauthorized)) = error {
                    self.orgs[org].error = Some(reason);
                    self.orgs[org].unauthorized |= unauthorized;
                }
                self.finished[org] = true;
                self.orgs[org].admin_keys = admin_keys;
            }
        }
    }

    /// Starts listing a selected project's keys; its place in the listing order is kept.
    fn start_project(&mut self, org: usize, project: ProjectRef) {
        let pos = self.slots[org].len();
        self.slots[org].push(None);
        let client = self.clients[org].clone();
        let sink = (self.sink_for)(&project);
        let p = project.clone();
        let handle = self
            .running
            .spawn(list_project(client, p, sink).in_current_span());
        self.running_ids.insert(handle.id(), (org, pos, project));
        self.known += 1;
        self.report();
    }

    /// A configured project id the listing did not return: an incomplete project, so the
    /// sweep cannot be taken as complete.
    fn missing_project(&mut self, org: usize, project_id: String) {
        let organization = self.orgs[org].organization.clone();
        tracing::warn!(organization = %organization, project = %project_id,
            "configured project not found in the organisation's project list");
        self.slots[org].push(Some(ProjectInventory {
            project: ProjectRef {
                organization,
                id: project_id,
                name: None,
                archived: false,
            },
            keys: S::Kept::default(),
            listing: Listing::Incomplete(
                "configured project not found in the project list (archived? then set include_archived)".to_string(),
            ),
        }));
    }

    /// The inventory, projects in listing order; an organisation whose discovery never
    /// reported is marked failed.
    fn finish(mut self) -> Inventory<S::Kept> {
        for ((org, slots), finished) in self.orgs.iter_mut().zip(self.slots).zip(self.finished) {
            if !finished && org.error.is_none() {
                org.error = Some("internal error: the project listing did not finish".to_string());
            }
            org.projects = slots.into_iter().flatten().collect();
        }
        Inventory { orgs: self.orgs }
    }
}

/// Lists one organisation's projects (feeding each selected one to the collector at once) and,
/// concurrently, its admin keys.
async fn discover(
    org: usize,
    client: AdminClient,
    selector: ProjectSelector,
    tx: mpsc::UnboundedSender<Discovery>,
) {
    let mut seen: HashSet<String> = HashSet::new();
    let projects = client.list_projects_each(|p| {
        seen.insert(p.id.clone());
        if selector.selects(&p) {
            // The receiver lives until every sender is gone; a send error only means the
            // collector was dropped, and then nobody needs the answer.
            let _ = tx.send(Discovery::Project { org, project: p });
        }
    });
    let (projects, admin_keys) = tokio::join!(projects, client.list_admin_keys());
    let error = match projects {
        Ok(()) => {
            for project_id in selector.missing_ids(&seen) {
                let _ = tx.send(Discovery::Missing { org, project_id });
            }
            None
        }
        Err(e) => {
            tracing::error!(organization = %client.org_name(), error = %e, "cannot list projects");
            Some((e.to_string(), e.is_unauthorized()))
        }
    };
    let admin_keys = admin_keys.unwrap_or_else(|e| {
        tracing::warn!(organization = %client.org_name(), error = %e,
            "cannot list admin keys; their expiry is not checked this time");
        Vec::new()
    });
    let _ = tx.send(Discovery::Done {
        org,
        error,
        admin_keys,
    });
}

/// Lists one project's keys into `sink`, page by page. Missing owner e-mails are filled from the
/// project's users, fetched once and only if a user-owned key lacks one (never an extra request
/// in the normal case).
async fn list_project<S: KeySink>(
    client: AdminClient,
    project: ProjectRef,
    mut sink: S,
) -> ProjectResult<S::Kept> {
    let mut emails = OwnerEmails::NotFetched;
    let listed = async {
        let mut pages = client.key_pages(&project)?;
        while let Some(mut page) = pages.next_page().await? {
            emails.fill(&client, &project, &mut page).await;
            if !sink.page(page).await {
                return Ok(false);
            }
        }
        Ok::<bool, crate::openai::Error>(true)
    }
    .await;
    let (listing, unauthorized) = match listed {
        Ok(true) => (Listing::Complete, None),
        Ok(false) => (
            Listing::Incomplete("listing stopped: the keys could not be recorded".to_string()),
            None,
        ),
        Err(e) => {
            tracing::warn!(organization = %client.org_name(), project = %project.id, error = %e,
                "project listing incomplete");
            let reason = e.to_string();
            (
                Listing::Incomplete(reason.clone()),
                e.is_unauthorized().then_some(reason),
            )
        }
    };
    ProjectResult {
        inventory: ProjectInventory {
            keys: sink.finish(&listing).await,
            project,
            listing,
        },
        unauthorized,
    }
}

/// The project's user e-mails, fetched at the first key that needs one.
enum OwnerEmails {
    NotFetched,
    Fetched(HashMap<String, String>),
    /// Tried once this listing; not tried again for every page.
    Failed,
}

impl OwnerEmails {
    async fn fill(&mut self, client: &AdminClient, project: &ProjectRef, keys: &mut [Key]) {
        let lacks = |k: &Key| {
            k.owner.kind == OwnerType::User && k.owner.email.is_none() && k.owner.id.is_some()
        };
        if !keys.iter().any(lacks) {
            return;
        }
        if let OwnerEmails::NotFetched = self {
            *self = match client.list_project_users(&project.id).await {
                Ok(users) => OwnerEmails::Fetched(
                    users
                        .into_iter()
                        .filter_map(|u| Some((u.id, u.email?)))
                        .collect(),
                ),
                Err(e) => {
                    tracing::warn!(organization = %client.org_name(), project = %project.id,
                        error = %e, "cannot list project users to find missing owner e-mails");
                    OwnerEmails::Failed
                }
            };
        }
        let OwnerEmails::Fetched(emails) = self else {
            return;
        };
        for k in keys.iter_mut().filter(|k| lacks(k)) {
            if let Some(email) = k.owner.id.as_ref().and_then(|id| emails.get(id)) {
                k.owner.email = Some(email.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, name: Option<&str>) -> ProjectRef {
        ProjectRef {
            organization: "acme".into(),
            id: id.into(),
            name: name.map(str::to_string),
            archived: false,
        }
    }

    #[test]
    fn empty_selects_everything_returned() {
        let s = ProjectSelector::new(&[], &[]);
        assert!(s.selects(&p("proj_1", Some("Payments"))));
        assert!(s.selects(&p("proj_2", None)));
    }

    #[test]
    fn ids_and_name_globs_minus_excludes() {
        let s = ProjectSelector::new(
            &["proj_1".into(), "team-*".into()],
            &["team-legacy*".into(), "proj_9".into()],
        );
        assert!(s.selects(&p("proj_1", Some("Payments"))));
        assert!(s.selects(&p("proj_2", Some("team-web"))));
        assert!(!s.selects(&p("proj_3", Some("team-legacy-api"))));
        assert!(!s.selects(&p("proj_4", Some("other"))));
        assert!(!s.selects(&p("proj_5", None)));
        let s = ProjectSelector::new(&[], &["proj_9".into()]);
        assert!(!s.selects(&p("proj_9", Some("x"))));
        assert!(s.selects(&p("proj_8", Some("x"))));
    }

    /// A project the API names `null` cannot be told apart from one an exclusion by name
    /// meant: left out, unless every exclusion is by id.
    #[test]
    fn an_unnamed_project_is_left_out_when_exclusions_match_names() {
        let by_name = ProjectSelector::new(&[], &["prod-*".into()]);
        assert!(!by_name.selects(&p("proj_1", None)));
        assert!(by_name.selects(&p("proj_2", Some("dev"))));
        assert!(!by_name.selects(&p("proj_3", Some("prod-eu"))));
        let by_id = ProjectSelector::new(&[], &["proj_9".into()]);
        assert!(by_id.selects(&p("proj_1", None)));
        // Selected by its id: meant, whatever its name; selected by a glob: left out.
        let named = ProjectSelector::new(&["proj_1".into(), "proj_*".into()], &["prod-*".into()]);
        assert!(named.selects(&p("proj_1", None)));
        assert!(!named.selects(&p("proj_2", None)));
    }

    #[test]
    fn missing_literal_ids() {
        let s = ProjectSelector::new(
            &[
                "proj_1".into(),
                "proj_2".into(),
                "proj_*".into(),
                "Name".into(),
            ],
            &["proj_2".into()],
        );
        let seen: HashSet<String> = ["proj_3".to_string()].into();
        assert_eq!(s.missing_ids(&seen), vec!["proj_1".to_string()]);
    }

    #[test]
    fn invalid_glob_is_exact_match() {
        let s = ProjectSelector::new(&["a[".into()], &[]);
        assert!(s.selects(&p("proj_1", Some("a["))));
        assert!(!s.selects(&p("proj_1", Some("a"))));
    }
}
