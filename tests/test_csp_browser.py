"""Real Chromium under the Content-Security-Policy: every page of the demo team, with htmx, Plotly
charts, the quick view and Swagger UI, runs without a single CSP violation; an injected inline script
does not run; the policy has a fresh nonce per response."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from experiments.demo import DEMO_PASSWORD, demo_seed
from experiments.models import Board, Card, CardKind, Iteration, Run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOW = dt.datetime(2026, 11, 24, 8, 30, tzinfo=dt.UTC)
LISTEN = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI + " " + (e.sample || ""));
});
"""


def _pages(team) -> list[str]:
    board = Board.objects.filter(team=team).first()
    card = Card.objects.filter(board=board, kind=CardKind.EXPERIMENT, run_links__isnull=False).first()
    run = Run.objects.filter(team=team).first()
    iteration = Iteration.objects.filter(team=team).order_by("-start").last()
    runs = ",".join(str(r.pk) for r in Run.objects.filter(team=team)[:3])
    slug = team.slug
    return [
        "/", f"/boards/{board.pk}/", f"/boards/{board.pk}/settings/", f"/cards/{card.pk}/", f"/runs/{run.pk}/",
        f"/teams/{slug}/runs/", f"/teams/{slug}/runs/compare/?runs={runs}", f"/teams/{slug}/standup/",
        f"/teams/{slug}/standup/history/", f"/teams/{slug}/reports/velocity/", f"/teams/{slug}/reports/flow/",
        f"/teams/{slug}/iterations/", f"/teams/{slug}/iterations/{iteration.pk}/",
        f"/teams/{slug}/reports/maturity/", f"/teams/{slug}/reports/maturity/assess/",
        f"/teams/{slug}/reports/maturity/trend/", f"/teams/{slug}/reports/maturity/print/",
        f"/teams/{slug}/settings/", f"/teams/{slug}/members/", f"/teams/{slug}/mlflow/", "/account/tokens/",
        "/api/docs/",
        # Teamwork, models and artifacts pages.
        f"/teams/{slug}/models/", f"/teams/{slug}/leaderboard/", f"/teams/{slug}/connect/",
        f"/teams/{slug}/board-rules/", "/notifications/", "/notifications/preferences/", "/search/?q=churn",
        f"/boards/{board.pk}/archive/", f"/boards/{board.pk}/dead-ends/", "/mlflow/",
    ]


def test_no_csp_violations_on_any_page(csp_page, live_server):
    page = csp_page
    team = demo_seed(now=NOW)
    page.add_init_script(LISTEN)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    seen = {}
    for path in _pages(team):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        script_src = response.headers["content-security-policy"].split("script-src ")[1].split(";")[0]
        assert script_src.startswith("'self'") and "unsafe-inline" not in script_src, (path, script_src)
        page.wait_for_load_state("networkidle")
        seen[path] = page.evaluate("window.__csp")
    assert {p: v for p, v in seen.items() if v} == {}
    assert console == []

    # Charts really drew under the policy (plotly.js needs no eval), and htmx still swaps.
    card_page = next(p for p in _pages(team) if p.startswith("/cards/"))
    page.goto(f"{live_server.url}{card_page}")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=15_000)
    board_page = next(p for p in _pages(team) if p.startswith("/boards/"))
    page.goto(f"{live_server.url}{board_page}")
    page.locator(".card a, .card [data-quick], .card").first.click()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__csp") == []


def test_injected_inline_script_is_blocked(csp_page, live_server, team, board, member):
    page = csp_page
    from experiments.services.cards import card_create

    card_create(board=board, kind="hypothesis", title="x", actor=member,
                description="<script>window.__pwned = 1</script>")
    page.add_init_script(LISTEN)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", member.username)
    page.fill("input[name=password]", "correct-horse-battery")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/boards/{board.pk}/")
    # Inline script without the nonce, as if an escaping bug let it through.
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__pwned = 1';
                             document.body.appendChild(s); }""")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    assert any("script-src" in v for v in page.evaluate("window.__csp"))


def test_each_response_has_its_own_nonce_and_inline_scripts_carry_it(db, member):
    client = Client()
    client.force_login(member)
    responses = [client.get("/account/tokens/") for _ in range(2)]
    nonces = [r["Content-Security-Policy"].split("'nonce-")[1].split("'")[0] for r in responses]
    assert nonces[0] != nonces[1]
    for response, nonce in zip(responses, nonces, strict=True):
        assert f'<script nonce="{nonce}">'.encode() in response.content


def test_only_the_run_comparison_may_eval(db, team, member):
    """'unsafe-eval' is granted to the one page whose WebGL chart needs it, not site-wide."""
    client = Client()
    client.force_login(member)
    board_policy = client.get("/account/tokens/")["Content-Security-Policy"]
    compare_policy = client.get(f"/teams/{team.slug}/runs/compare/")["Content-Security-Policy"]
    assert "'unsafe-eval'" not in board_policy and "'nonce-" in board_policy
    assert "'unsafe-eval'" in compare_policy and "script-src 'self'" in compare_policy
