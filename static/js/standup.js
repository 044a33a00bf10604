/* Standup page: lazy Plotly sparklines per card, and htmx glue for in-place decisions. */
(function () {
  "use strict";

  const root = document.querySelector(".standup");
  if (!root) return;

  // --- plotly.js is loaded only when the first chart scrolls into view ----------------------------
  let plotlyPromise = null;
  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyPromise) {
      plotlyPromise = new Promise(function (resolve, reject) {
        const script = document.createElement("script");
        script.src = root.dataset.plotlySrc;
        script.async = true;
        script.onload = function () { resolve(window.Plotly); };
        script.onerror = function () { plotlyPromise = null; reject(new Error("Could not load the chart library.")); };
        document.head.appendChild(script);
      });
    }
    return plotlyPromise;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    return Number(v).toPrecision(4).replace(/\.?0+(e|$)/, "$1");
  }

  function message(el, text, isError) {
    el.innerHTML = "";
    const span = document.createElement("span");
    span.className = "su-spark-msg" + (isError ? " error" : "");
    span.textContent = text;
    el.appendChild(span);
  }

  function draw(el, d, Plotly) {
    if (!d.points || !d.points.length) { message(el, "No values to plot"); return; }
    const css = getComputedStyle(document.documentElement);
    const accent = css.getPropertyValue("--accent").trim() || "#4f46e5";
    const muted = "#98a2b3";
    const x = d.points.map(function (_, i) { return i + 1; });
    const y = d.points.map(function (p) { return p.value; });
    const text = d.points.map(function (p) {
      return p.name + (p.seed !== null && p.seed !== undefined ? " · seed " + p.seed : "") + "<br>" +
        d.metric + " = " + fmt(p.value) + (p["new"] ? " (new)" : "");
    });
    const extent = y.slice();
    if (d.baseline !== null) extent.push(d.baseline);
    if (d.mean !== null && d.std !== null) { extent.push(d.mean - d.std, d.mean + d.std); }
    let lo = Math.min.apply(null, extent), hi = Math.max.apply(null, extent);
    const pad = (hi - lo) * 0.15 || Math.abs(hi) * 0.05 || 1;
    lo -= pad; hi += pad;
    const shapes = [];
    if (d.mean !== null && d.std !== null) {
      shapes.push({ type: "rect", xref: "paper", x0: 0, x1: 1, y0: d.mean - d.std, y1: d.mean + d.std,
                    fillcolor: accent, opacity: 0.1, line: { width: 0 } });
    }
    if (d.mean !== null) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: d.mean, y1: d.mean, line: { color: accent, width: 1 } });
    }
    if (d.baseline !== null) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: d.baseline, y1: d.baseline,
                    line: { color: "#b25e09", width: 1.2, dash: "dot" } });
    }
    const trace = {
      x: x, y: y, type: "scatter", mode: d.points.length > 1 ? "lines+markers" : "markers",
      line: { color: "#c7ccd6", width: 1 },
      marker: { size: 6, color: d.points.map(function (p) { return p["new"] ? accent : muted; }) },
      hovertext: text, hoverinfo: "text",
    };
    el.innerHTML = "";
    Plotly.newPlot(el, [trace], {
      margin: { l: 2, r: 2, t: 4, b: 4 }, height: el.clientHeight || 64, autosize: true, showlegend: false,
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", hovermode: "closest",
      xaxis: { visible: false, range: [0.5, x.length + 0.5] }, yaxis: { visible: false, range: [lo, hi] },
      shapes: shapes,
    }, { displayModeBar: false, responsive: true });
    el.title = d.metric + ": mean " + fmt(d.mean) + (d.std !== null ? " ± " + fmt(d.std) : "") +
      (d.baseline !== null ? ", baseline " + fmt(d.baseline) + " (dotted)" : "") + ". Highlighted dots are new.";
    el.classList.add("is-loaded");
  }

  function load(el) {
    if (el.dataset.state) return;
    el.dataset.state = "loading";
    Promise.all([
      fetch(el.dataset.src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) {
          return r.json().then(function (body) {
            if (!r.ok) throw new Error(body.error || "Could not load the chart (HTTP " + r.status + ").");
            return body;
          });
        }),
      loadPlotly(),
    ]).then(function (results) {
      draw(el, results[0], results[1]);
      el.dataset.state = "done";
    }).catch(function (err) {
      message(el, err.message, true);
      el.dataset.state = "error";
    });
  }

  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) { observer.unobserve(entry.target); load(entry.target); }
        });
      }, { rootMargin: "200px 0px" })
    : null;

  function observe(scope) {
    scope.querySelectorAll(".su-spark[data-src]").forEach(function (el) {
      if (el.dataset.state) return;
      if (observer) observer.observe(el); else load(el);
    });
  }
  observe(document);
  document.body.addEventListener("htmx:afterSettle", function (e) { observe(e.target); });

  // --- htmx: show validation, permission and conflict answers in place ------------------------------
  document.body.addEventListener("htmx:beforeSwap", function (e) {
    const status = e.detail.xhr.status;
    if ([400, 403, 409, 503].indexOf(status) !== -1 && root.contains(e.detail.target)) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });
  document.body.addEventListener("htmx:sendError", function () {
    toast("The server could not be reached; nothing was changed.", "error");
  });
  document.body.addEventListener("htmx:responseError", function (e) {
    if (!e.detail.shouldSwap) toast("Something went wrong (HTTP " + e.detail.xhr.status + "); nothing was changed.", "error");
  });

  function toast(text, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast toast-" + kind;
    el.textContent = text;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 6000);
  }

  // A card can appear in several sections; keep its column and version in sync everywhere so the
  // next move from another row does not report a false conflict.
  document.body.addEventListener("standup:card-changed", function (e) {
    (e.detail.cards || []).forEach(sync);
  });

  function sync(d) {
    document.querySelectorAll('[data-card-id="' + d.card + '"]').forEach(function (el) {
      el.querySelectorAll(".js-column").forEach(function (c) { c.textContent = d.column; });
    });
    document.querySelectorAll('form.su-move[data-card-id="' + d.card + '"]').forEach(function (form) {
      const version = form.querySelector(".js-version");
      if (version) version.value = d.version;
      const select = form.querySelector("select[name=column]");
      if (select) {
        Array.prototype.forEach.call(select.options, function (o) { o.selected = o.text === d.column; });
      }
    });
  }
})();
