/* mlboard teamwork UI: command palette (Ctrl/Cmd-K), shortcut help (?), "/" focuses search,
 * @mention autocomplete in comment boxes, copy buttons, similar-hypothesis lookup while typing. */
(function () {
  "use strict";

  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  // --- Command palette ---------------------------------------------------------------------------

  function commands() {
    var node = document.getElementById("palette-commands");
    var list = [];
    try { list = node ? JSON.parse(node.textContent) : []; } catch (e) { list = []; }
    return list;
  }

  var selected = 0;

  function renderPalette() {
    var input = document.getElementById("palette-input");
    var ul = document.getElementById("palette-list");
    var q = input.value.trim().toLowerCase();
    var items = commands().filter(function (c) {
      return !q || q.split(/\s+/).every(function (w) { return c.label.toLowerCase().indexOf(w) !== -1; });
    });
    if (q) items.push({ label: "Search for “" + input.value.trim() + "”", url: "/search/?q=" + encodeURIComponent(input.value.trim()) });
    selected = Math.min(selected, Math.max(items.length - 1, 0));
    ul.innerHTML = "";
    items.forEach(function (item, i) {
      var li = document.createElement("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === selected ? "true" : "false");
      li.className = "palette-item" + (i === selected ? " is-selected" : "");
      li.dataset.url = item.url;
      li.textContent = item.label;
      li.addEventListener("mousedown", function (e) { e.preventDefault(); window.location.href = item.url; });
      ul.appendChild(li);
    });
  }

  function openPalette() {
    var dialog = document.getElementById("palette");
    if (!dialog || dialog.open) return;
    var input = document.getElementById("palette-input");
    input.value = "";
    selected = 0;
    renderPalette();
    dialog.showModal();
    input.focus();
  }

  document.addEventListener("input", function (e) {
    if (e.target.id === "palette-input") { selected = 0; renderPalette(); }
  });

  document.addEventListener("keydown", function (e) {
    var key = e.key;
    if ((e.ctrlKey || e.metaKey) && (key === "k" || key === "K")) {
      e.preventDefault();
      openPalette();
      return;
    }
    if (e.target.id === "palette-input") {
      var items = document.querySelectorAll("#palette-list .palette-item");
      if (key === "ArrowDown" || key === "ArrowUp") {
        e.preventDefault();
        selected = (selected + (key === "ArrowDown" ? 1 : -1) + items.length) % Math.max(items.length, 1);
        renderPalette();
      } else if (key === "Enter") {
        e.preventDefault();
        var chosen = items[selected];
        if (chosen) window.location.href = chosen.dataset.url;
      }
      return;
    }
    if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (key === "/") {
      var search = document.getElementById("global-search");
      if (search) { e.preventDefault(); search.focus(); search.select(); }
    } else if (key === "?") {
      var help = document.getElementById("shortcuts");
      if (help && !help.open) { e.preventDefault(); help.showModal(); }
    }
  });

  // --- @mention autocomplete ---------------------------------------------------------------------

  var menu = null;
  var state = null; // {textarea, start, items, index}

  function closeMenu() {
    if (menu) menu.remove();
    menu = null;
    state = null;
  }

  function mentionAt(textarea) {
    var upto = textarea.value.slice(0, textarea.selectionStart);
    var m = /(^|[^\w@])@([\w.+-]*)$/.exec(upto);
    return m ? { start: upto.length - m[2].length, prefix: m[2] } : null;
  }

  function choose(index) {
    if (!state || !state.items[index]) return;
    var ta = state.textarea;
    var name = state.items[index].username;
    var before = ta.value.slice(0, state.start);
    var after = ta.value.slice(ta.selectionStart);
    ta.value = before + name + " " + after;
    var pos = before.length + name.length + 1;
    ta.setSelectionRange(pos, pos);
    closeMenu();
    ta.focus();
  }

  function showMenu(textarea, start, items) {
    closeMenu();
    if (!items.length) return;
    state = { textarea: textarea, start: start, items: items, index: 0 };
    menu = document.createElement("ul");
    menu.className = "mention-menu";
    menu.setAttribute("role", "listbox");
    items.forEach(function (p, i) {
      var li = document.createElement("li");
      li.setAttribute("role", "option");
      li.className = "mention-option" + (i === 0 ? " is-selected" : "");
      li.dataset.username = p.username;
      li.textContent = "@" + p.username + (p.name && p.name !== p.username ? " · " + p.name : "");
      li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(i); });
      menu.appendChild(li);
    });
    textarea.parentElement.style.position = "relative";
    textarea.parentElement.appendChild(menu);
  }

  function highlight() {
    if (!menu || !state) return;
    Array.prototype.forEach.call(menu.children, function (li, i) {
      li.classList.toggle("is-selected", i === state.index);
      li.setAttribute("aria-selected", i === state.index ? "true" : "false");
    });
  }

  var pendingLookup = 0;
  document.addEventListener("input", function (e) {
    var ta = e.target;
    if (!ta.matches || !ta.matches("textarea[data-mention-url]")) return;
    var at = mentionAt(ta);
    if (!at) { closeMenu(); return; }
    var ticket = ++pendingLookup;
    fetch(ta.dataset.mentionUrl + "?q=" + encodeURIComponent(at.prefix), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : { members: [] }; })
      .then(function (data) { if (ticket === pendingLookup) showMenu(ta, at.start, data.members || []); })
      .catch(closeMenu);
  });

  document.addEventListener("keydown", function (e) {
    if (!state || e.target !== state.textarea) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      var n = state.items.length;
      state.index = (state.index + (e.key === "ArrowDown" ? 1 : -1) + n) % n;
      highlight();
    } else if (e.key === "Enter" || e.key === "Tab") {
      e.preventDefault();
      choose(state.index);
    } else if (e.key === "Escape") {
      closeMenu();
    }
  }, true);

  document.addEventListener("focusout", function (e) {
    if (state && e.target === state.textarea) window.setTimeout(closeMenu, 150);
  });

  // --- Copy buttons --------------------------------------------------------------------------------

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent).then(function () {
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
    });
  });
})();
