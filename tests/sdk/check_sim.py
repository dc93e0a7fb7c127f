"""An independent client of the simulator: OpenAI's official Python SDK (`openai` >= 3.51.0).

Driven by tests/it/sim_nov2026.rs against a running `keysweep simulate`, started with a frozen
clock at NOW and `--max-key-lifetime 30d`. It lists, retrieves, updates (expiry and scopes),
deletes and mints service-account keys through the SDK's own admin resources, with strict
response validation on, so every answer must parse into the SDK's generated models. What the
API does not show (scopes) is read from the simulator's own `/_sim/` endpoint.

Usage: OPENAI_ADMIN_KEY=… python3 check_sim.py BASE_URL NOW
Exits non-zero with a message on the first disagreement; prints "sdk check ok" at the end.
It never prints a key's secret value.
"""

import json
import sys
import urllib.request

import openai
from openai import OpenAI

DAY = 86_400


def fail(message):
    print(f"sdk check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def sim_key(base_url, project_id, key_id):
    """The key as the simulator stores it (scopes included), from its /_sim/ endpoint."""
    root = base_url.removesuffix("/v1")
    url = f"{root}/_sim/projects/{project_id}/api_keys/{key_id}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def refused(call, status):
    """Runs `call`, which must fail with the SDK's error for `status`."""
    try:
        call()
    except openai.APIStatusError as e:
        check(e.status_code == status, f"expected HTTP {status}, got {e.status_code}: {e}")
        return
    fail(f"expected HTTP {status}, the call succeeded")


def pick_project(admin):
    """The first active project with a service account owning at least two live keys."""
    for project in admin.projects.list(limit=100):
        keys = list(admin.projects.api_keys.list(project.id, limit=100, owner_project_access="any"))
        by_sa = {}
        for k in keys:
            if k.owner.type == "service_account" and k.owner.service_account is not None:
                by_sa.setdefault(k.owner.service_account.id, []).append(k)
        for sa_id, sa_keys in by_sa.items():
            live = [k for k in sa_keys if k.expires_at is None or k.expires_at > NOW]
            if len(live) >= 2:
                return project.id, keys, sa_id, live
    fail("no project with a service account owning two live keys")


def check_listing(keys):
    check(len(keys) > 0, "no keys listed")
    for k in keys:
        check(k.object == "organization.project.api_key", f"object {k.object}")
        check("expires_at" in k.model_fields_set, f"{k.id}: expires_at missing on the wire")
        check(k.owner_project_access in ("active", "inactive"), f"{k.id}: owner_project_access")
    check(any(k.expires_at is None for k in keys), "no key that never expires")
    check(any(k.expires_at is not None and k.expires_at > NOW for k in keys), "no key expiring later")
    check(any(k.expires_at is not None and k.expires_at <= NOW for k in keys), "no expired key")


def check_updates(api_keys, base_url, project_id, key_id, expired_id):
    updated = api_keys.update(key_id, project_id=project_id, expires_in_seconds=3 * DAY)
    check(updated.id == key_id, "update answered another key")
    check(updated.expires_at == NOW + 3 * DAY, f"expires_at {updated.expires_at}")
    updated = api_keys.update(key_id, project_id=project_id, scopes=["api.all.read"])
    check(updated.expires_at == NOW + 3 * DAY, "a scopes-only update moved the expiry")
    check(not hasattr(updated, "scopes") or updated.scopes is None, "scopes shown on the key")
    check(sim_key(base_url, project_id, key_id)["scopes"] == ["api.all.read"], "scopes not stored")
    api_keys.update(key_id, project_id=project_id, scopes=[], expires_in_seconds=DAY)
    stored = sim_key(base_url, project_id, key_id)
    check(stored["scopes"] == [] and stored["expires_at"] == NOW + DAY, f"both fields: {stored}")
    check(api_keys.retrieve(key_id, project_id=project_id).expires_at == NOW + DAY, "retrieve")
    # The API's validation: beyond the organisation's limit, null, nothing, an expired key.
    refused(lambda: api_keys.update(key_id, project_id=project_id, expires_in_seconds=31 * DAY), 400)
    refused(lambda: api_keys.update(key_id, project_id=project_id, extra_body={"expires_in_seconds": None}), 400)
    refused(lambda: api_keys.update(key_id, project_id=project_id, expires_in_seconds=0), 400)
    refused(lambda: api_keys.update(key_id, project_id=project_id), 400)
    refused(lambda: api_keys.update(expired_id, project_id=project_id, expires_in_seconds=DAY), 400)
    refused(lambda: api_keys.update("key_doesNotExist", project_id=project_id, scopes=[]), 404)


def check_mint(sa_keys, api_keys, base_url, project_id, sa_id):
    minted = sa_keys.create(
        sa_id, project_id=project_id, name="sdk-minted", scopes=["api.files.read"], expires_in_seconds=2 * DAY
    )
    check(minted.object == "organization.project.service_account.api_key", minted.object)
    check(minted.value.startswith("sk-") and len(minted.value) > 20, "no plaintext value")
    check(minted.name == "sdk-minted" and minted.created_at == NOW, "name or created_at")
    check(minted.expires_at == NOW + 2 * DAY, f"minted expires_at {minted.expires_at}")
    again = api_keys.retrieve(minted.id, project_id=project_id)
    check(again.owner.type == "service_account" and again.owner.service_account.id == sa_id, "owner")
    check(again.expires_at == NOW + 2 * DAY, "minted key's expiry")
    check(minted.value[-4:] in again.redacted_value, "redacted form of another value")
    check(sim_key(base_url, project_id, minted.id)["scopes"] == ["api.files.read"], "minted scopes")
    forever = sa_keys.create(sa_id, project_id=project_id)
    check(forever.expires_at is None and forever.name, "a key minted without expiry")
    refused(lambda: sa_keys.create(sa_id, project_id=project_id, expires_in_seconds=60 * DAY), 400)
    refused(lambda: sa_keys.create("svc_acct_nope", project_id=project_id), 404)
    return minted.id


def check_delete(admin, project_id, sa_id, doomed, survivors):
    api_keys = admin.projects.api_keys
    gone = api_keys.delete(doomed, project_id=project_id)
    check(gone.deleted and gone.id == doomed, "delete answer")
    check(gone.object == "organization.project.api_key.deleted", gone.object)
    refused(lambda: api_keys.retrieve(doomed, project_id=project_id), 404)
    refused(lambda: api_keys.delete(doomed, project_id=project_id), 404)
    account = admin.projects.service_accounts.retrieve(sa_id, project_id=project_id)
    check(account.id == sa_id, "the service account went with its key")
    listed = {k.id for k in api_keys.list(project_id, limit=100, owner_project_access="any")}
    check(doomed not in listed, "deleted key still listed")
    for k in survivors:
        check(k in listed, f"the account's other key {k} went too")


def check_intel(admin, project_id, deleted):
    """The audit log (with the writes above, by the admin key) and usage/costs per key."""
    events = list(admin.audit_logs.list(event_types=["api_key.deleted"], limit=3))
    check(any(e.api_key_deleted and e.api_key_deleted.id == deleted for e in events), "delete logged")
    mine = next(e for e in events if e.api_key_deleted and e.api_key_deleted.id == deleted)
    check(mine.actor.type == "api_key" and mine.actor.api_key.id, "the admin key acted")
    created = list(admin.audit_logs.list(event_types=["api_key.created"], project_ids=[project_id], limit=7))
    check(created and all(e.api_key_created.id for e in created), "creations listed")
    start = NOW - 30 * 86400
    usage = admin.usage.completions(start_time=start, bucket_width="1d", group_by=["api_key_id"], limit=31)
    check(usage.object == "page" and len(usage.data) == 30, f"usage buckets: {len(usage.data)}")
    results = [r for b in usage.data for r in b.results]
    check(results and all(r.api_key_id and r.num_model_requests > 0 for r in results), "usage results")
    costs = admin.usage.costs(start_time=start, group_by=["api_key_id"], limit=7)
    check(costs.has_more and costs.next_page, "costs paged")
    more = admin.usage.costs(start_time=start, group_by=["api_key_id"], limit=7, page=costs.next_page)
    check(more.data[0].start_time == costs.data[-1].end_time, "costs next page")


def main():
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, _strict_response_validation=True)
    admin = client.admin.organization
    project_id, keys, sa_id, live = pick_project(admin)
    check_listing(keys)
    expired = next(k for k in keys if k.expires_at is not None and k.expires_at <= NOW)
    target = live[0].id
    got = admin.projects.api_keys.retrieve(target, project_id=project_id)
    check(got.id == target and got.owner.type == "service_account", "retrieve")
    check_updates(admin.projects.api_keys, base_url, project_id, target, expired.id)
    sa_keys = admin.projects.service_accounts.api_keys
    minted = check_mint(sa_keys, admin.projects.api_keys, base_url, project_id, sa_id)
    check_delete(admin, project_id, sa_id, target, [k.id for k in live[1:]] + [minted])
    check_intel(admin, project_id, target)
    print(f"sdk check ok (openai {openai.__version__})")


if __name__ == "__main__":
    NOW = int(sys.argv[2])
    main()
