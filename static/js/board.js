/* mlboard Kanban board: HTML5 drag and drop, keyboard moves, quick view.
 *
 * Every move is sent with the card's version; the server answers 409 when someone changed the
 * card since this page loaded, and the card goes back where it was with a message saying who.
 * Listeners are delegated on document, so the board region can be re-rendered by htmx (filters)
 * without re-binding anything.
 *
 * Live updates: the page polls the board's state endpoint every ~10 s while the tab is visible and
 * re-renders #board-region in place (same filters and swimlanes) when the stamp differs, unless the
 * user is mid-action (dragging, quick view or a form open, keyboard-moving a card); then a small
 * "Board updated" notice offers the refresh instead.
 */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const boardEl = () => document.getElementById("board");
  const canEdit = () => { const b = boardEl(); return !!b && b.dataset.canEdit === "true"; };
  const pending = new Set();   // card ids with a move in flight (their version is about to change)
  let drag = null;             // state of the current mouse drag
  let lastFocus = null;        // element to refocus when the quick view closes
  let kbdMoved = null;         // card last moved with the keyboard (busy while it keeps focus)

  // --- Messages ---------------------------------------------------------------------------------

  function announce(text) {
    const live = document.getElementById("board-live");
    if (!live) return;
    live.textContent = "";
    // A fresh text node after a tick makes screen readers announce repeated messages too.
    window.setTimeout(() => { live.textContent = text; }, 20);
  }

  function showAlert(text, kind) {
    const box = document.getElementById("board-alert");
    if (!box) { window.alert(text); return; }
    $(".board-alert-msg", box).textContent = text;
    box.classList.toggle("is-conflict", kind === "conflict");
    $("[data-action=reload]", box).hidden = kind !== "conflict";
    box.hidden = false;
  }

  function hideAlert() {
    const box = document.getElementById("board-alert");
    if (box) box.hidden = true;
  }

  // --- Geometry helpers -------------------------------------------------------------------------

  const cardsIn = (cell) => $$(":scope > .card", cell);
  const cellOf = (card) => card.closest(".cell");
  const columnName = (columnId) => {
    const head = $(`.col-head[data-column-id="${columnId}"] .col-name`);
    return head ? head.textContent.trim() : "the column";
  };
  const laneCells = (lane) => $$(`.cell[data-lane="${CSS.escape(lane)}"]`, boardEl());

  function siblingCard(card, step) {
    let el = step < 0 ? card.previousElementSibling : card.nextElementSibling;
    while (el && !el.classList.contains("card")) el = step < 0 ? el.previousElementSibling : el.nextElementSibling;
    return el;
  }

  function snapshot(card) {
    return { cell: cellOf(card), next: card.nextElementSibling };
  }

  function restore(card, where) {
    if (where.next && where.next.parentElement === where.cell) where.cell.insertBefore(card, where.next);
    else where.cell.appendChild(card);
  }

  function samePlace(card, where) {
    return cellOf(card) === where.cell && card.nextElementSibling === where.next;
  }

  // --- Persisting a move ------------------------------------------------------------------------

  function moveUrl(cardId) {
    return boardEl().dataset.moveUrl.replace("/cards/0/", `/cards/${cardId}/`);
  }

  function updateColumns(columns) {
    for (const col of columns || []) {
      const head = $(`.col-head[data-column-id="${col.id}"]`);
      if (!head) continue;
      $(".col-total", head).textContent = col.total;
      head.classList.toggle("over-limit", col.over_limit);
      head.classList.toggle("at-limit", col.at_limit && !col.over_limit);
      head.setAttribute("aria-label", col.label);
      const flag = $(".wip-flag", head);
      if (flag) flag.hidden = !col.over_limit;
    }
  }

  async function postMove(cardId, body) {
    const board = boardEl();
    let response;
    try {
      response = await fetch(moveUrl(cardId), {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": board.dataset.csrf, Accept: "application/json" },
        body,
      });
    } catch (err) {
      return { ok: false, error: "The server could not be reached, so the move was not saved. Try again." };
    }
    const isJson = (response.headers.get("Content-Type") || "").includes("application/json");
    if (!isJson) {
      // A login page after a redirect means the session expired; anything else is a server fault.
      const why = response.redirected ? "your session has expired" : `the server answered ${response.status}`;
      return { ok: false, error: `The move was not saved: ${why}. Reload the page and try again.` };
    }
    const data = await response.json();
    return response.ok ? data : { ...data, ok: false };
  }

  /* Send the card's new place; on any failure put it back where it was and say why. */
  async function persist(card, from) {
    const cell = cellOf(card);
    const body = new URLSearchParams();
    body.set("to_column", cell.dataset.columnId);
    body.set("version", card.dataset.version);
    const prev = siblingCard(card, -1);
    const next = siblingCard(card, 1);
    if (prev) body.set("after", prev.dataset.cardId);
    if (next) body.set("before", next.dataset.cardId);

    const id = card.dataset.cardId;
    pending.add(id);
    card.classList.add("is-saving");
    card.setAttribute("aria-busy", "true");
    let data = await postMove(id, body);
    // Strict WIP limits: the server refuses a drop onto a full column until the person confirms.
    if (!data.ok && data.needs_confirm && window.confirm(data.error)) {
      body.set("confirm_over_limit", "1");
      data = await postMove(id, body);
    }
    pending.delete(id);
    card.classList.remove("is-saving");
    card.removeAttribute("aria-busy");

    if (data.ok) {
      card.dataset.version = data.card.version;
      adoptStamp(data.stamp_before, data.stamp);
      updateColumns(data.columns);
      announce(data.wip_warning ? `${data.message} ${data.wip_warning}` : data.message);
      if (data.wip_warning) showAlert(data.wip_warning, "warn");
      refreshQuickView(id);
      flash(card, "is-moved");
      return true;
    }
    restore(card, from);
    flash(card, "is-rejected");
    showAlert(data.error || "The move was not saved.", data.conflict ? "conflict" : "error");
    announce(data.error || "The move was not saved.");
    return false;
  }

  function flash(card, cls) {
    card.classList.add(cls);
    window.setTimeout(() => card.classList.remove(cls), 900);
  }

  // --- Mouse drag and drop (HTML5 DnD) ----------------------------------------------------------

  // Where the dragged card goes for a pointer over `cell`: decided from the one element under
  // the pointer (a card, or the cell's empty tail), never by measuring every card of the column,
  // so drag feedback costs the same in a column of 5 or 5,000 cards.
  function placeDragged(cell, event) {
    const card = drag.card;
    const over = event.target.closest && event.target.closest(".card");
    if (over === card) return;
    if (over && over.parentElement === cell) {
      const box = over.getBoundingClientRect();
      const before = event.clientY < box.top + box.height / 2 ? over : siblingCard(over, 1);
      if (before === card) return;
      if (before === null) {
        if (card.parentElement !== cell || siblingCard(card, 1) !== null) cell.appendChild(card);
      } else if (card.parentElement !== cell || siblingCard(card, 1) !== before) {
        cell.insertBefore(card, before);
      }
      return;
    }
    // Over the cell itself: below its last card means "at the end"; gaps between cards keep the place.
    let last = cell.lastElementChild;
    while (last && !last.classList.contains("card")) last = last.previousElementSibling;
    if (last === card) return;
    if (last === null || event.clientY > last.getBoundingClientRect().bottom) {
      const tail = last ? last.nextElementSibling : null;
      if (tail) cell.insertBefore(card, tail); else cell.appendChild(card);
    }
  }

  document.addEventListener("dragstart", (event) => {
    const card = event.target.closest && event.target.closest(".card[draggable=true]");
    if (!card || !canEdit() || pending.has(card.dataset.cardId)) { if (card) event.preventDefault(); return; }
    drag = { card, from: snapshot(card), lane: cellOf(card).dataset.lane, dropped: false, over: null };
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", card.dataset.key);
    hideAlert();
    boardEl().classList.add("is-dragging");
    for (const cell of laneCells(drag.lane)) cell.classList.add("drop-allowed");
    // Style the source after the browser took its drag image.
    window.requestAnimationFrame(() => card.classList.add("is-drag-source"));
  });

  document.addEventListener("dragover", (event) => {
    if (!drag) return;
    const cell = event.target.closest && event.target.closest(".cell");
    if (!cell || cell.dataset.lane !== drag.lane) return; // other lanes are not drop targets
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    if (drag.over !== cell) {
      if (drag.over) drag.over.classList.remove("drop-over");
      cell.classList.add("drop-over");
      drag.over = cell;
    }
    placeDragged(cell, event);
  });

  document.addEventListener("drop", (event) => {
    if (!drag) return;
    const cell = event.target.closest && event.target.closest(".cell");
    if (!cell || cell.dataset.lane !== drag.lane) return;
    event.preventDefault();
    drag.dropped = true;
  });

  document.addEventListener("dragend", () => {
    if (!drag) return;
    const { card, from, dropped } = drag;
    drag = null;
    card.classList.remove("is-drag-source");
    const board = boardEl();
    if (board) board.classList.remove("is-dragging");
    $$(".cell.drop-allowed, .cell.drop-over").forEach((c) => c.classList.remove("drop-allowed", "drop-over"));
    if (!dropped) { restore(card, from); return; }
    if (samePlace(card, from)) return;
    persist(card, from);
  });

  // --- Keyboard ---------------------------------------------------------------------------------

  function keyboardMove(card, direction) {
    if (pending.has(card.dataset.cardId)) { announce("Still saving the previous move…"); return; }
    const from = snapshot(card);
    const cell = from.cell;
    if (direction === "left" || direction === "right") {
      const cells = laneCells(cell.dataset.lane);
      const target = cells[cells.indexOf(cell) + (direction === "right" ? 1 : -1)];
      if (!target) {
        announce(`${card.dataset.key} is already in the ${direction === "right" ? "last" : "first"} column.`);
        return;
      }
      const first = cardsIn(target)[0];
      if (first) target.insertBefore(card, first); else target.appendChild(card);
    } else {
      const neighbour = siblingCard(card, direction === "up" ? -1 : 1);
      if (!neighbour) { announce(`${card.dataset.key} is already at the ${direction === "up" ? "top" : "bottom"}.`); return; }
      if (direction === "up") cell.insertBefore(card, neighbour); else cell.insertBefore(card, neighbour.nextElementSibling);
    }
    card.focus();
    card.scrollIntoView({ block: "nearest", inline: "nearest" });
    kbdMoved = card;
    persist(card, from);
  }

  function focusNeighbour(card, key) {
    const cell = cellOf(card);
    let target = null;
    if (key === "ArrowUp") target = siblingCard(card, -1);
    else if (key === "ArrowDown") target = siblingCard(card, 1);
    else {
      const cells = laneCells(cell.dataset.lane);
      const step = key === "ArrowRight" ? 1 : -1;
      for (let i = cells.indexOf(cell) + step; i >= 0 && i < cells.length && !target; i += step) {
        target = cardsIn(cells[i])[0] || null;
      }
    }
    if (target) target.focus();
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      const panel = document.getElementById("quick-view");
      if (panel && !panel.hidden) { closeQuickView(); event.preventDefault(); }
      return;
    }
    const card = event.target.classList && event.target.classList.contains("card") ? event.target : null;
    if (!card || !boardEl()) return;
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); openQuickView(card); return; }
    const modified = event.altKey || event.shiftKey;
    let direction = null;
    if ((modified && event.key === "ArrowRight") || event.key === "]") direction = "right";
    else if ((modified && event.key === "ArrowLeft") || event.key === "[") direction = "left";
    else if (modified && event.key === "ArrowUp") direction = "up";
    else if (modified && event.key === "ArrowDown") direction = "down";
    if (direction) {
      event.preventDefault();
      if (!canEdit()) { announce("You can view this board but not move cards."); return; }
      keyboardMove(card, direction);
      return;
    }
    if (["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"].includes(event.key) && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      focusNeighbour(card, event.key);
    }
  });

  // --- Quick view -------------------------------------------------------------------------------

  function loadQuickView(url) {
    const panel = document.getElementById("quick-view");
    if (!panel || !window.htmx) { window.location.href = url; return Promise.resolve(); }
    return window.htmx.ajax("GET", url, { target: "#quick-view", swap: "innerHTML" }).then(() => {
      panel.hidden = false;
      document.body.classList.add("has-quick-view");
    });
  }

  function openQuickView(card) {
    lastFocus = card;
    $$(".card.is-selected").forEach((c) => c.classList.remove("is-selected"));
    card.classList.add("is-selected");
    loadQuickView(card.dataset.quickUrl).then(() => {
      const panel = document.getElementById("quick-view");
      if (panel) panel.focus();
    });
  }

  function closeQuickView() {
    const panel = document.getElementById("quick-view");
    if (!panel) return;
    panel.hidden = true;
    panel.innerHTML = "";
    document.body.classList.remove("has-quick-view");
    $$(".card.is-selected").forEach((c) => c.classList.remove("is-selected"));
    if (lastFocus && document.body.contains(lastFocus)) lastFocus.focus();
  }

  function refreshQuickView(cardId) {
    const panel = document.getElementById("quick-view");
    const shown = panel && !panel.hidden && $(".qv", panel);
    if (!shown || shown.dataset.cardId !== String(cardId)) return;
    const card = document.getElementById(`card-${cardId}`);
    if (card) loadQuickView(card.dataset.quickUrl);
  }

  document.addEventListener("click", (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    const action = target.closest("[data-action]");
    if (action) {
      const name = action.dataset.action;
      if (name === "reload") { window.location.reload(); return; }
      if (name === "dismiss-alert") { hideAlert(); return; }
      if (name === "close-quick") { closeQuickView(); return; }
      if (name === "refresh-board") { refreshBoard(); return; }
      if (name === "dismiss-stale") { hideStale(true); return; }
    }
    const quickLink = target.closest("a[data-quick-link]");
    if (quickLink && document.getElementById("quick-view")) {
      event.preventDefault();
      loadQuickView(quickLink.getAttribute("href"));
      return;
    }
    const toggle = target.closest(".lane-toggle");
    if (toggle) {
      const row = document.getElementById(toggle.getAttribute("aria-controls"));
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      if (row) row.hidden = !open;
      return;
    }
    const card = target.closest(".card");
    if (card && boardEl() && !target.closest("a, button, input, select")) openQuickView(card);
  });

  // "Move to column" control in the quick view: same path as the keyboard, so the same checks apply.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.matches("form[data-confirm]") && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (!form.matches("form[data-move-form]")) return;
    event.preventDefault();
    const card = document.getElementById(`card-${form.dataset.cardId}`);
    const columnId = form.elements.to_column.value;
    if (!card || !boardEl()) {
      announce("This card is hidden by the current filters; clear them to move it here.");
      showAlert("This card is hidden by the current filters; clear them to move it from the board.", "error");
      return;
    }
    const from = snapshot(card);
    const target = laneCells(from.cell.dataset.lane).find((c) => c.dataset.columnId === columnId);
    if (!target || target === from.cell) { announce(`${card.dataset.key} is already in ${columnName(columnId)}.`); return; }
    const first = cardsIn(target)[0];
    if (first) target.insertBefore(card, first); else target.appendChild(card);
    persist(card, from);
  });

  // Shareable filter URLs: leave out empty filters and the default "no swimlanes".
  document.addEventListener("htmx:configRequest", (event) => {
    const form = event.detail.elt;
    if (!form || !form.classList || !form.classList.contains("board-toolbar")) return;
    const params = event.detail.parameters;
    for (const name of ["q", "kind", "owner", "tag", "lanes"]) {
      const value = params.get ? params.get(name) : params[name];
      if (value === "" || (name === "lanes" && value === "none")) {
        if (params.delete) params.delete(name); else delete params[name];
      }
    }
  });

  // --- Live updates -----------------------------------------------------------------------------

  const POLL_MS = 10000;
  const region = () => document.getElementById("board-region");
  let pollTimer = null;
  let polling = false;
  let pollStopped = false;
  let refreshing = false;
  let dismissedStamp = null;   // "Later" hides the notice until the board changes again

  function pollDelay() {
    // Tests (and anyone debugging) may set window.mlboardBoardPollMs before the page loads.
    const override = Number(window.mlboardBoardPollMs);
    if (override > 0) return override;
    const r = region();
    const fromPage = Number(r && r.dataset.pollMs);
    return fromPage > 0 ? fromPage : POLL_MS;
  }

  /* After our own move, take the server's new stamp only if nothing else had changed before it;
   * otherwise keep the old one so the next poll still brings in the teammate's change. */
  function adoptStamp(before, after) {
    const r = region();
    if (r && after && before === r.dataset.stamp) r.dataset.stamp = after;
  }

  function busyReason() {
    if (drag) return "dragging";
    if (pending.size) return "saving";
    const panel = document.getElementById("quick-view");
    if (panel && !panel.hidden) return "quick view";
    if (document.querySelector(".htmx-request")) return "loading";
    const active = document.activeElement;
    if (active && active !== document.body) {
      if (active.matches("input, textarea, select, [contenteditable=true]") && !active.closest(".board-toolbar")) {
        return "form";
      }
      if (kbdMoved && active === kbdMoved) return "keyboard move";
    }
    return "";
  }

  function showStale(stamp) {
    const box = document.getElementById("board-stale");
    if (!box || stamp === dismissedStamp) return;
    if (box.hidden) announce("Board updated. Press Refresh to see the changes.");
    box.dataset.stamp = stamp;
    box.hidden = false;
  }

  function hideStale(dismissed) {
    const box = document.getElementById("board-stale");
    if (!box) return;
    if (dismissed) dismissedStamp = box.dataset.stamp || null;
    box.hidden = true;
  }

  function focusedCardId() {
    const active = document.activeElement;
    const card = active && active.closest && active.closest("#board .card");
    return card ? card.dataset.cardId : null;
  }

  /* Re-render the board region in place with the page's current filters and swimlanes. */
  function refreshBoard() {
    const r = region();
    if (!r || refreshing) return Promise.resolve(false);
    if (!window.htmx) { window.location.reload(); return Promise.resolve(false); }
    refreshing = true;
    const focusId = focusedCardId();
    const collapsed = $$(".lane-toggle[aria-expanded=false]", r).map((t) => t.getAttribute("aria-controls"));
    const scroller = boardEl();
    const scroll = scroller ? [scroller.scrollLeft, scroller.scrollTop] : null;
    const url = window.location.pathname + window.location.search;
    return window.htmx
      .ajax("GET", url, { target: "#board-region", select: "#board-region", swap: "outerHTML" })
      .then(() => {
        for (const id of collapsed) {
          const toggle = $(`.lane-toggle[aria-controls="${CSS.escape(id)}"]`);
          const row = document.getElementById(id);
          if (toggle) toggle.setAttribute("aria-expanded", "false");
          if (row) row.hidden = true;
        }
        const board = boardEl();
        if (board && scroll) { board.scrollLeft = scroll[0]; board.scrollTop = scroll[1]; }
        if (focusId) {
          const card = document.getElementById(`card-${focusId}`);
          if (card) card.focus({ preventScroll: true });
        }
        kbdMoved = null;
        hideStale(false);
        announce("Board updated");
        return true;
      })
      .catch(() => false)
      .finally(() => { refreshing = false; });
  }

  async function checkBoard() {
    const r = region();
    if (!r || !r.dataset.stateUrl || polling || pollStopped) return;
    if (document.visibilityState !== "visible") return;
    polling = true;
    try {
      let response;
      try {
        response = await fetch(r.dataset.stateUrl, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
        });
      } catch (err) {
        return; // offline for a moment: try again on the next tick
      }
      // Signed out, access removed or board gone: stop asking rather than polling a login page.
      if (response.redirected || [401, 403, 404].includes(response.status)) { pollStopped = true; return; }
      if (!response.ok) return;
      const data = await response.json();
      const current = region();
      if (!data.stamp || !current || data.stamp === current.dataset.stamp) return;
      if (busyReason()) { showStale(data.stamp); return; }
      await refreshBoard();
    } finally {
      polling = false;
    }
  }

  function schedulePoll() {
    window.clearTimeout(pollTimer);
    if (pollStopped || !region()) return;
    pollTimer = window.setTimeout(() => { checkBoard().finally(schedulePoll); }, pollDelay());
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") checkBoard().finally(schedulePoll);
    else window.clearTimeout(pollTimer);
  });
  // Lets a test or the console check right away instead of waiting for the next tick.
  window.mlboardBoardPoll = checkBoard;
  schedulePoll();

  // The filter form lives outside the swapped region; keep the quick view when filters change.
  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail && event.detail.target && event.detail.target.id === "quick-view") {
      document.getElementById("quick-view").hidden = false;
    }
  });
})();
