//! `AdminClient`: one per organisation, the Administration API's endpoints in the crate's terms.
//!
//! Each method builds its URL from `base_url` and percent-encoded path segments (an id can never
//! add a path level), and hands the request to the organisation's `Transport` (pacing, the
//! bearer header, bounded bodies, retries, error mapping) and listings to the pager. Wire types
//! are turned into `crate::inventory` types before they leave.
//!
//! The admin key lives in the transport; this file never sees it, and the client's `Debug` names
//! the organisation and the base URL only.

use std::fmt;
use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{Limits, OrgConfig};
use crate::inventory::{AdminKeyInfo, Key, ProjectRef, ProjectUser, ServiceAccount};
use crate::openai::error::{Error, RequestContext};
use crate::openai::pager::{self, KeyPages};
use crate::openai::transport::{ClientShared, DeleteOutcome, DeleteRequest, RetryMode, Transport};
use crate::openai::types::{
    HasId, WireAdminKey, WireKey, WireProject, WireProjectUser, WireServiceAccount,
};

/// Route templates, used for metrics labels and error messages.
pub mod endpoint {
    pub const LIST_PROJECTS: &str = "GET /organization/projects";
    pub const LIST_KEYS: &str = "GET /organization/projects/{project_id}/api_keys";
    pub const GET_KEY: &str = "GET /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const DELETE_KEY: &str = "DELETE /organization/projects/{project_id}/api_keys/{api_key_id}";
    pub const LIST_SERVICE_ACCOUNTS: &str =
        "GET /organization/projects/{project_id}/service_accounts";
    pub const GET_SERVICE_ACCOUNT: &str =
        "GET /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const DELETE_SERVICE_ACCOUNT: &str =
        "DELETE /organization/projects/{project_id}/service_accounts/{service_account_id}";
    pub const LIST_PROJECT_USERS: &str = "GET /organization/projects/{project_id}/users";
    pub const LIST_ADMIN_KEYS: &str = "GET /organization/admin_api_keys";
}

/// Client for one organisation. Cheap to clone (shared inner state).
#[derive(Clone)]
pub struct AdminClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: Url,
    include_archived: bool,
    transport: Arc<Transport>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("org", &self.inner.transport.org())
            .field("base", &self.inner.base.as_str())
            .field("admin_key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Builds the client and its transport (see `Transport::new`: TLS roots, timeouts, user
    /// agent, proxies). A `base_url` that cannot take a path is refused here.
    pub fn new(org: &OrgConfig, limits: &Limits, shared: ClientShared) -> Result<Self, Error> {
        if org.base_url.cannot_be_a_base() {
            return Err(Error::Setup {
                organization: org.name.clone(),
                detail: format!("base_url {} cannot take a path", org.base_url),
            });
        }
        let transport = Transport::new(org, limits, shared)?;
        Ok(Self {
            inner: Arc::new(Inner {
                base: org.base_url.clone(),
                include_archived: org.include_archived,
                transport: Arc::new(transport),
            }),
        })
    }

    pub fn org_name(&self) -> &str {
        self.transport().org()
    }

    /// Every project of the organisation (archived ones too when `include_archived`), pages of
    /// 100.
    pub async fn list_projects(&self) -> Result<Vec<ProjectRef>, Error> {
        let mut out = Vec::new();
        self.list_projects_each(|p| out.push(p)).await?;
        Ok(out)
    }

    /// Like [`Self::list_projects`], handing each project over as soon as its page arrives so
    /// the caller can start listing its keys while later pages load.
    pub async fn list_projects_each(&self, mut each: impl FnMut(ProjectRef)) -> Result<(), Error> {
        let mut url = self.url(&["organization", "projects"], endpoint::LIST_PROJECTS, None)?;
        if self.inner.include_archived {
            url.query_pairs_mut()
                .append_pair("include_archived", "true");
        }
        let org = self.org_name().to_string();
        self.list_all::<WireProject>(endpoint::LIST_PROJECTS, None, url, |p| {
            each(p.into_domain(&org))
        })
        .await
    }

    /// Every key of the project, whatever its owner's access (`owner_project_access=any`), all
    /// pages of 100.
    pub async fn list_project_keys(&self, project: &ProjectRef) -> Result<Vec<Key>, Error> {
        let mut pages = self.key_pages(project)?;
        let mut keys = Vec::new();
        while let Some(page) = pages.next_page().await? {
            keys.extend(page);
        }
        Ok(keys)
    }

    /// The project's keys as [`KeyPages`]: nothing is requested until the first `next_page`.
    pub fn key_pages(&self, project: &ProjectRef) -> Result<KeyPages, Error> {
        let ep = endpoint::LIST_KEYS;
        let mut url = self.url(
            &["organization", "projects", &project.id, "api_keys"],
            ep,
            Some(&project.id),
        )?;
        url.query_pairs_mut()
            .append_pair("owner_project_access", "any");
        Ok(KeyPages::new(
            self.inner.transport.clone(),
            project.clone(),
            self.ctx(ep, Some(&project.id)),
            url,
        ))
    }

    /// One key, or `None` when the API answers 404. The key's `project_name` is not known here.
    pub async fn retrieve_key(&self, project_id: &str, key_id: &str) -> Result<Option<Key>, Error> {
        let ep = endpoint::GET_KEY;
        let url = self.url(
            &["organization", "projects", project_id, "api_keys", key_id],
            ep,
            Some(project_id),
        )?;
        let ctx = self.ctx(ep, Some(project_id));
        match self
            .transport()
            .call(Method::GET, &url, &ctx, RetryMode::Idempotent)
            .await
        {
            Ok(ans) => {
                let wire: WireKey = self.transport().decode(&ctx, &ans)?;
                let project = ProjectRef {
                    organization: self.org_name().to_string(),
                    id: project_id.to_string(),
                    name: None,
                    archived: false,
                };
                Ok(Some(wire.into_domain(&project)))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a project key (permanent). A 400 (the key belongs to a service account) is
    /// [`Error::Refused`]; a 2xx without `deleted: true` is [`Error::NotDeleted`].
    pub async fn delete_key(&self, project_id: &str, key_id: &str) -> Result<DeleteOutcome, Error> {
        let eps = (endpoint::DELETE_KEY, endpoint::GET_KEY);
        self.delete(eps, project_id, "api_keys", key_id).await
    }

    /// Deletes a project service account, and with it every key it owns (permanent).
    pub async fn delete_service_account(
        &self,
        project_id: &str,
        service_account_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let eps = (
            endpoint::DELETE_SERVICE_ACCOUNT,
            endpoint::GET_SERVICE_ACCOUNT,
        );
        self.delete(eps, project_id, "service_accounts", service_account_id)
            .await
    }

    /// The project's service accounts (all pages).
    pub async fn list_service_accounts(
        &self,
        project_id: &str,
    ) -> Result<Vec<ServiceAccount>, Error> {
        let ep = endpoint::LIST_SERVICE_ACCOUNTS;
        let url = self.url(
            &["organization", "projects", project_id, "service_accounts"],
            ep,
            Some(project_id),
        )?;
        let mut out = Vec::new();
        self.list_all::<WireServiceAccount>(ep, Some(project_id), url, |s| {
            out.push(s.into_domain())
        })
        .await?;
        Ok(out)
    }

    /// The project's users (all pages), for owner e-mails the key listing lacked.
    pub async fn list_project_users(&self, project_id: &str) -> Result<Vec<ProjectUser>, Error> {
        let ep = endpoint::LIST_PROJECT_USERS;
        let url = self.url(
            &["organization", "projects", project_id, "users"],
            ep,
            Some(project_id),
        )?;
        let mut out = Vec::new();
        self.list_all::<WireProjectUser>(ep, Some(project_id), url, |u| out.push(u.into_domain()))
            .await?;
        Ok(out)
    }

    /// The organisation's admin keys (for their `expires_at`).
    pub async fn list_admin_keys(&self) -> Result<Vec<AdminKeyInfo>, Error> {
        let ep = endpoint::LIST_ADMIN_KEYS;
        let url = self.url(&["organization", "admin_api_keys"], ep, None)?;
        let mut out = Vec::new();
        self.list_all::<WireAdminKey>(ep, None, url, |k| out.push(k.into_domain()))
            .await?;
        Ok(out)
    }

    // ---- internals -------------------------------------------------------------------------

    fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    fn ctx(&self, endpoint: &'static str, project: Option<&str>) -> RequestContext {
        self.transport().ctx(endpoint, project)
    }

    /// Every item of a listing, handed to `each` in order.
    async fn list_all<W: DeserializeOwned + HasId>(
        &self,
        ep: &'static str,
        project: Option<&str>,
        url: Url,
        each: impl FnMut(W),
    ) -> Result<(), Error> {
        pager::list_all(self.transport(), self.ctx(ep, project), url, each).await
    }

    /// Deletes `…/projects/{project_id}/{collection}/{object_id}`, checking on it with the GET
    /// of the same path after an ambiguous failure (`eps`: the DELETE's and the GET's templates).
    async fn delete(
        &self,
        (delete, check): (&'static str, &'static str),
        project_id: &str,
        collection: &str,
        object_id: &str,
    ) -> Result<DeleteOutcome, Error> {
        let segs = [
            "organization",
            "projects",
            project_id,
            collection,
            object_id,
        ];
        let req = DeleteRequest {
            delete: (delete, self.url(&segs, delete, Some(project_id))?),
            check: (check, self.url(&segs, check, Some(project_id))?),
            project_id,
            object_id,
        };
        self.transport().delete_checked(req).await
    }

    /// `base_url` + path segments, each percent-encoded (an id can never add a path level).
    fn url(
        &self,
        segments: &[&str],
        endpoint: &'static str,
        project: Option<&str>,
    ) -> Result<Url, Error> {
        let mut url = self.inner.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::Setup {
                organization: self.org_name().to_string(),
                detail: format!(
                    "base_url cannot take a path ({endpoint}{})",
                    project
                        .map(|p| format!(", project {p}"))
                        .unwrap_or_default()
                ),
            })?;
            path.pop_if_empty().extend(segments);
        }
        Ok(url)
    }
}
