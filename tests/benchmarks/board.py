"""The Kanban board page at 500 to 5,000 cards: server time and, in headless Chromium, page load and
a mouse drag until the move is saved, and how long board.js's dragover handler takes over a small
column and over a column with 1,000+ cards loaded (drag feedback must not grow with the column).

Seeds one board (5 columns; hypotheses, experiments under them and results; owners, tags, run
links) per size on its own fresh PostgreSQL database, then times the board page through Django's
test client (median of 5, query count, size) and with a real Chromium against a threaded WSGI
server on 127.0.0.1 (navigation to `load`, median of 3; a drag of the first card of the fullest
column to the next column, until the move request answered, median of 3).

    .venv/bin/python tests/benchmarks/board.py --sizes 1000,2000,4000     # N, 2N, 4N
    .venv/bin/python tests/benchmarks/board.py --sizes 5000 --no-browser
    .venv/bin/python tests/benchmarks/board.py 2000                        # one size, current DATABASE_URL
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time

# Production-like: no debug-mode template and SQL overheads (cookies stay plain HTTP on loopback).
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
os.environ.setdefault("SECURE_COOKIES", "0")

from _bootstrap import TMP  # noqa: F401  (sets up Django)
from _scaling import emit, print_growth, run_sizes
from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from experiments.models import Card, CardKind, CardRun, Column, Role, Run, RunStatus, Stage, Tag, User
from experiments.services.boards import board_create, membership_set, team_create

PORT = 18731
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Cards per stage: most work waits in the backlog or is done, as on a long-lived board.
SHARE = {Stage.BACKLOG: 0.35, Stage.READY: 0.1, Stage.RUNNING: 0.05, Stage.ANALYZING: 0.05, Stage.DONE: 0.45}


def seed(n_cards: int):
    rng = random.Random(5)
    users = [User.objects.create_user(f"user{i}", password="pw-bench-1", email=f"u{i}@example.com")
             for i in range(8)]
    team = team_create(name="Bench", slug="bench", timezone="UTC")
    for i, user in enumerate(users):
        membership_set(team=team, user=user, role=Role.MANAGER if i == 0 else Role.MEMBER)
    board = board_create(team=team, name="Churn", key="CHURN")
    columns = {c.stage: c for c in Column.objects.filter(board=board)}
    Column.objects.filter(board=board).update(wip_limit=None)
    tags = [Tag.objects.create(team=team, name=f"tag{i}") for i in range(12)]
    cards: list[Card] = []
    hypotheses: list[int] = []
    for n in range(1, n_cards + 1):
        kind = CardKind.HYPOTHESIS if n % 3 == 1 else CardKind.EXPERIMENT if n % 3 == 2 else CardKind.RESULT
        stage = rng.choices(list(SHARE), weights=list(SHARE.values()))[0]
        cards.append(Card(board=board, column=columns[stage], kind=kind, number=n, key=f"CHURN-{n}",
                          title=f"{kind.title()} {n}: does feature set {n % 17} lift retention AUC?",
                          owner=rng.choice([*users, None]), position=float(n), flagged=n % 29 == 0,
                          flag_reason="blocked on data" if n % 29 == 0 else "",
                          verdict=rng.choice(["", "", "supported", "refuted"]) if kind != CardKind.EXPERIMENT
                          else ""))
    Card.objects.bulk_create(cards, batch_size=1000)
    for i, card in enumerate(cards):
        if card.kind == CardKind.HYPOTHESIS:
            hypotheses.append(i)
        elif hypotheses:
            card.parent_id = cards[hypotheses[-1]].pk if card.kind == CardKind.EXPERIMENT else cards[i - 1].pk
    Card.objects.bulk_update([c for c in cards if c.parent_id], ["parent"], batch_size=1000)
    through = Card.tags.through
    through.objects.bulk_create(
        [through(card_id=c.pk, tag_id=t.pk) for c in cards for t in rng.sample(tags, rng.choice((0, 1, 2, 3)))],
        batch_size=2000,
    )
    runs = Run.objects.bulk_create(
        [Run(team=team, external_id=f"r{i}", name=f"run {i}", status=RunStatus.FINISHED) for i in range(n_cards)],
        batch_size=2000,
    )
    CardRun.objects.bulk_create(
        [CardRun(card=cards[i], run=runs[i]) for i in range(0, n_cards) if cards[i].kind == CardKind.EXPERIMENT],
        batch_size=2000,
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return board, users[1]


def timed(fn, repeat: int):
    """Median wall time and median CPU time of this process (the Django side: views, ORM, templates;
    not PostgreSQL) over `repeat` calls, and the last result."""
    times, cpu, result = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu), result


def serve() -> ThreadedWSGIServer:
    server = ThreadedWSGIServer(("127.0.0.1", PORT), WSGIRequestHandler, allow_reuse_address=True)
    server.set_app(StaticFilesHandler(WSGIHandler()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Times board.js's dragover work: a window listener in the capture phase runs before board.js's
# (on document), one in the bubble phase after it, so the difference is the handler including any
# layout it forces (getBoundingClientRect after the card moved).
DRAGOVER_PROBE = """() => {
  window.__dragover = [];
  window.addEventListener('dragover', () => { window.__dragoverT0 = performance.now(); }, true);
  window.addEventListener('dragover', () => { window.__dragover.push(performance.now() - window.__dragoverT0); });
}"""
NAV_TIMING = """() => { const n = performance.getEntriesByType('navigation')[0];
  return {ttfb: n.responseStart - n.requestStart, dom: n.domInteractive - n.responseEnd,
          load: n.loadEventEnd - n.startTime, nodes: document.getElementsByTagName('*').length}; }"""


def drag_over_column(page, source, cell, steps: int = 40) -> list[float]:
    """Drag `source` down the visible part of `cell` and drop it there; the dragover handler times."""
    page.evaluate("() => { const b = document.getElementById('board'); b.scrollTop = 0; b.scrollLeft = 0; }")
    page.evaluate(DRAGOVER_PROBE)
    s_box, c_box = source.bounding_box(), cell.bounding_box()
    page.mouse.move(s_box["x"] + 30, s_box["y"] + 20)
    page.mouse.down()
    page.mouse.move(s_box["x"] + 60, s_box["y"] + 40, steps=5)
    x = c_box["x"] + c_box["width"] / 2
    page.mouse.move(x, c_box["y"] + 30, steps=10)
    page.mouse.move(x, min(c_box["y"] + c_box["height"] - 30, 850), steps=steps)
    page.mouse.up()
    return page.evaluate("() => window.__dragover")


def browser_figures(board, user, client: Client) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls here stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    base = f"http://127.0.0.1:{PORT}"
    url = f"{base}/boards/{board.pk}/"
    done = Column.objects.get(board=board, stage=Stage.DONE)
    backlog = Column.objects.get(board=board, stage=Stage.BACKLOG)
    running = Column.objects.get(board=board, stage=Stage.RUNNING)
    server = serve()
    out: dict[str, float] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies["sessionid"].value,
                                  "url": base}])
            page = context.new_page()
            page.set_default_timeout(60_000)
            for label, target in (("", url), (" hypothesis lanes", f"{url}?lanes=hypothesis")):
                page.goto(target)  # warm-up (static files, template cache)
                loads, navs = [], []
                for _ in range(3):
                    t0 = time.perf_counter()
                    page.goto(target, wait_until="load")
                    loads.append(time.perf_counter() - t0)
                    navs.append(page.evaluate(NAV_TIMING))
                out[f"chromium load{label}"] = statistics.median(loads) * 1000
                nav = navs[loads.index(statistics.median(loads))] if len(loads) % 2 else navs[-1]
                print(f"  chromium{label or ' board'}: load {statistics.median(loads) * 1000:.0f} ms "
                      f"(server to first byte {nav['ttfb']:.0f} ms, parse to interactive {nav['dom']:.0f} ms, "
                      f"{nav['nodes']:,} elements)")
            page.goto(url, wait_until="load")
            drags = []
            for attempt in range(3):
                source_col, target_col = (done, backlog) if attempt % 2 == 0 else (backlog, done)
                source = page.locator(f'.cell[data-column-id="{source_col.pk}"] > .card').first
                card_id = source.get_attribute("data-card-id")
                target = page.locator(f'.cell[data-column-id="{target_col.pk}"] > .card').nth(3)
                s_box, t_box = source.bounding_box(), target.bounding_box()
                t0 = time.perf_counter()
                with page.expect_response(lambda r, cid=card_id: f"/cards/{cid}/move" in r.url) as response:
                    page.mouse.move(s_box["x"] + 30, s_box["y"] + 20)
                    page.mouse.down()
                    page.mouse.move(s_box["x"] + 60, s_box["y"] + 40, steps=5)
                    page.mouse.move(t_box["x"] + 40, t_box["y"] + 8, steps=20)
                    page.mouse.up()
                assert response.value.status == 200, response.value.status
                drags.append(time.perf_counter() - t0)
                page.reload(wait_until="load")
            out["chromium drag until saved"] = statistics.median(drags) * 1000
            # Drag feedback against column size: dragover handler time over the small Running column,
            # then over the Done column after "show more" loaded 1,000 more of its cards (if it has them).
            small_cell = page.locator(f'.cell[data-column-id="{running.pk}"]')
            small_n = small_cell.locator("> .card").count()
            small = drag_over_column(page, page.locator(f'.cell[data-column-id="{backlog.pk}"] > .card').first,
                                     small_cell)
            page.reload(wait_until="load")
            big_cell = page.locator(f'.cell[data-column-id="{done.pk}"]')
            for _ in range(5):
                more = big_cell.locator("> .cell-more")
                if not more.count():
                    break
                before = big_cell.locator("> .card").count()
                more.click()
                page.wait_for_function(
                    "([sel, n]) => document.querySelectorAll(sel).length > n",
                    arg=[f'.cell[data-column-id="{done.pk}"] > .card', before],
                )
            big_n = big_cell.locator("> .card").count()
            big = drag_over_column(page, page.locator(f'.cell[data-column-id="{backlog.pk}"] > .card').first,
                                   big_cell)
            for label, values, n in (("small column", small, small_n), ("big column", big, big_n)):
                values = values or [0.0]
                out[f"dragover handler, {label}"] = statistics.median(values)
                print(f"  dragover handler over a column showing {n:,} cards: "
                      f"median {statistics.median(values) * 1000:.0f} µs, max {max(values) * 1000:.0f} µs "
                      f"({len(values)} events)")
            browser.close()
    finally:
        server.shutdown()
    return out


def main(n_cards: int, browser: bool) -> None:
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    board, user = seed(n_cards)
    print(f"seeded {n_cards:,} cards in {time.perf_counter() - t0:.1f}s on {connection.vendor}")
    client = Client()
    client.force_login(user)
    url = f"/boards/{board.pk}/"
    variants = {
        "board page": {},
        "filtered (q=)": {"q": "feature set 3"},
        "hypothesis lanes": {"lanes": "hypothesis"},
        "owner lanes": {"lanes": "owner"},
    }
    times: dict[str, float] = {}
    for name, params in variants.items():
        client.get(url, params)  # warm-up
        seconds, cpu, response = timed(lambda params=params: client.get(url, params), repeat=5)
        assert response.status_code == 200
        with CaptureQueriesContext(connection) as ctx:
            client.get(url, params)
        queries = list(ctx.captured_queries)  # the next request clears the connection's query log
        sql_ms = sum(float(q["time"]) for q in queries) * 1000
        times[f"server {name}"] = seconds * 1000
        times[f"server {name}, CPU"] = cpu * 1000
        print(f"{name}: {seconds * 1000:.0f} ms (Django CPU {cpu * 1000:.0f} ms; SQL {sql_ms:.0f} ms in "
              f"{len(queries)} queries; {len(response.content) / 1024:.0f} KiB)")
    # "Show more": the next page of the fullest column, and the next swimlanes.
    done = Column.objects.get(board=board, stage=Stage.DONE)
    more_cells = f"/boards/{board.pk}/cells/?column={done.pk}&lane=all&offset=60"
    more_lanes = f"/boards/{board.pk}/lanes/?offset=40&lanes=hypothesis"
    for name, target in (("show more cards", more_cells), ("show more lanes", more_lanes)):
        if client.get(target).status_code == 404:  # a build without that endpoint (before/after runs)
            continue
        seconds, cpu, response = timed(lambda target=target: client.get(target), repeat=5)
        assert response.status_code == 200
        times[f"server {name}"] = seconds * 1000
        print(f"{name}: {seconds * 1000:.0f} ms (Django CPU {cpu * 1000:.0f} ms; "
              f"{len(response.content) / 1024:.0f} KiB)")
    if browser:
        figures = browser_figures(board, user, client)
        print("  ".join(f"{k} {v:.0f} ms" for k, v in figures.items() if "dragover" not in k))
        times.update(figures)
    print(f"load average {os.getloadavg()[0]:.1f}")
    emit({"cards": n_cards, "times": times})


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-browser"]
    browser = "--no-browser" not in sys.argv
    if args and args[0] == "--sizes":
        sizes = [int(x) for x in args[1].split(",")]
        results = run_sizes(__file__, sizes, "board_scale_bench", [] if browser else ["--no-browser"])
        print_growth(sizes, results, label="cards")
    else:
        main(int(args[0]) if args else 2000, browser)
