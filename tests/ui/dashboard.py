"""The dashboard in a real browser: Playwright drives Debian's Chromium through each page
of a running `fleetledger serve` and checks the numbers it shows against the same SQL
over the API. Run by the e2e test `ui::the_dashboard_shows_what_sql_says` as

    python3 tests/ui/dashboard.py URL TOKEN CLUSTER SCREENSHOT_DIR

Exit status 0 when every check holds; the first failed check is printed.
"""

import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

url, token, cluster, shots = sys.argv[1:5]


def sql(query):
    req = urllib.request.Request(
        url + "/v1/sql",
        data=json.dumps({"sql": query}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["rows"]


def table(page, selector):
    """The rows of a table the page shows, as lists of cell texts (header skipped)."""
    return page.eval_on_selector_all(
        selector + " tr",
        "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))",
    )


def loaded(page, view):
    page.wait_for_function("v => document.body.dataset.loaded === v", arg=view, timeout=30000)
    message = page.text_content("#message")
    assert not message, "the page says: " + message


def check(what, shown, expected):
    assert shown == expected, f"{what}: the page shows {shown!r}, SQL says {expected!r}"


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/ui/")
    page.fill("#token", token)
    page.click("#token-form button")
    # Fleet.
    loaded(page, "fleet")
    [totals] = sql(
        "SELECT count(*) AS total, sum(CASE WHEN drift THEN 1 ELSE 0 END) AS drifting FROM clusters"
    )
    check("clusters", page.text_content("#fleet-total"), str(totals["total"]))
    check("drifting", page.text_content("#fleet-drift"), str(totals["drifting"] or 0))
    phases = sql(
        "SELECT coalesce(phase, '(none)') AS phase, count(*) AS n FROM clusters "
        "WHERE NOT coalesce(deleted, false) GROUP BY 1 ORDER BY 1"
    )
    check("by phase", table(page, "#fleet-phase"), [[r["phase"], str(r["n"])] for r in phases])
    assert len(phases) > 0, "no clusters"
    page.screenshot(path=shots + "/fleet.png", full_page=True)
    # Billing.
    page.click("#nav-billing")
    loaded(page, "billing")
    orgs = sql(
        "SELECT org_id, round(sum(cku_hours), 3) AS h FROM billing_daily "
        "GROUP BY org_id ORDER BY h DESC, org_id LIMIT 20"
    )
    shown = table(page, "#billing-orgs")
    check("orgs", [r[0] for r in shown], [r["org_id"] for r in orgs])
    for (org, hours), r in zip(shown, orgs):
        assert abs(float(hours) - r["h"]) < 1e-6, f"{org}: page {hours}, SQL {r['h']}"
    lines = page.eval_on_selector_all("#billing-chart polyline", "ls => ls.map(l => l.dataset.org)")
    check("chart lines", lines, [r["org_id"] for r in orgs[:5]])
    page.screenshot(path=shots + "/billing.png", full_page=True)
    # One cluster: its timeline (every record) and its state.
    page.click("#nav-cluster")
    loaded(page, "cluster")
    page.fill("#cluster-id", cluster)
    page.click("#cluster-form button")
    loaded(page, "cluster/" + cluster)
    [audit] = sql(f"SELECT count(*) AS n FROM audit_log WHERE cluster_id = '{cluster}'")
    timeline = table(page, "#cluster-timeline")
    check("timeline rows", len(timeline), audit["n"])
    assert any("{" in row[-1] for row in timeline), "no field-level diffs shown"
    state = table(page, "#cluster-state")
    assert {r[0] for r in state} >= {"logical"}, f"state facets: {state}"
    page.screenshot(path=shots + "/cluster.png")
    # The same cluster at its first record's time: one version of each facet written then.
    first = timeline[0][0]
    page.fill("#cluster-at", first)
    page.click("#cluster-form button")
    loaded(page, "cluster/" + cluster + "@" + first)
    versions = [r[1] for r in table(page, "#cluster-state")]
    assert versions and all(v == "1" for v in versions), f"state at {first}: versions {versions}"
    assert not errors, "errors in the page: " + "; ".join(errors)
    browser.close()
print("dashboard: every check held")
