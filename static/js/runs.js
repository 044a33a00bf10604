/* mlboard run views: lazy Plotly charts, smoothing and log-scale controls, run selection for comparison.
 *
 * Charts are placeholders ([data-chart-src] fetches figure JSON, [data-chart-inline] reads a json_script
 * block) rendered only when scrolled into view. plotly.js itself is loaded on first need, so pages
 * without a visible chart never download it. Works after htmx swaps (htmx:load). */
(function () {
  "use strict";

  var script = document.currentScript;
  var PLOTLY_SRC = script ? script.getAttribute("data-plotly-src") : null;
  var PLOT_CONFIG = {
    responsive: true,
    displaylogo: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"],
  };
  var plotlyPromise = null;

  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotlyPromise) {
      plotlyPromise = new Promise(function (resolve, reject) {
        if (!PLOTLY_SRC) {
          reject(new Error("chart library location missing"));
          return;
        }
        var tag = document.createElement("script");
        tag.src = PLOTLY_SRC;
        tag.async = true;
        tag.onload = function () { resolve(window.Plotly); };
        tag.onerror = function () {
          plotlyPromise = null;
          reject(new Error("the chart library could not be loaded"));
        };
        document.head.appendChild(tag);
      });
    }
    return plotlyPromise;
  }

  function formatCount(n) {
    return Number(n).toLocaleString();
  }

  function setMeta(el, meta) {
    var box = el.closest(".chart-card");
    var slot = box ? box.querySelector("[data-chart-meta]") : null;
    if (!slot || !meta) return;
    var runs = meta.series === 1 ? "1 run" : formatCount(meta.series || 0) + " runs";
    var text = runs;
    if (meta.downsampled) {
      text += " · " + formatCount(meta.points) + " of " + formatCount(meta.total_points) + " points";
      slot.title = "Long series are downsampled on the server: min and max of each bucket are kept so spikes stay visible.";
    } else if (meta.total_points !== undefined) {
      text += " · " + formatCount(meta.total_points) + " points";
    }
    slot.textContent = text;
  }

  function showMessage(el, cls, text, retry) {
    el.innerHTML = "";
    var box = document.createElement("div");
    box.className = cls;
    box.textContent = text;
    if (retry) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "btn small";
      button.textContent = "Retry";
      button.addEventListener("click", function () {
        el.removeAttribute("data-chart-state");
        renderChart(el);
      });
      box.appendChild(document.createTextNode(" "));
      box.appendChild(button);
    }
    el.appendChild(box);
  }

  function fetchPayload(el) {
    var inline = el.getAttribute("data-chart-inline");
    if (inline) {
      var node = document.getElementById(inline);
      return Promise.resolve(node ? JSON.parse(node.textContent) : { figure: null });
    }
    return fetch(el.getAttribute("data-chart-src"), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) throw new Error(body.error || "the server answered " + response.status);
        return body;
      });
    });
  }

  function renderChart(el) {
    if (el.getAttribute("data-chart-state")) return el._rendering || Promise.resolve();
    el.setAttribute("data-chart-state", "loading");
    el.setAttribute("aria-busy", "true");
    el._rendering = Promise.all([fetchPayload(el), loadPlotly()])
      .then(function (results) {
        var payload = results[0];
        var Plotly = results[1];
        var figure = payload.figure;
        setMeta(el, payload.meta);
        if (!figure || !figure.data || figure.data.length === 0) {
          el.setAttribute("data-chart-state", "empty");
          showMessage(el, "chart-empty", "No points logged for this metric yet.");
          return null;
        }
        if (payload.meta && payload.meta.finite_points === 0) {
          el.setAttribute("data-chart-state", "empty");
          showMessage(el, "chart-empty", "No finite values: every point of this metric is NaN or ±Inf.");
          return null;
        }
        el.innerHTML = "";
        // Keep the unsmoothed values so smoothing can be changed and undone.
        el._rawY = figure.data.map(function (trace) { return trace.y ? trace.y.slice() : null; });
        return Plotly.newPlot(el, figure.data, figure.layout, PLOT_CONFIG).then(function () {
          el.setAttribute("data-chart-state", "ready");
          applySmoothing(el, currentSmoothing(el));
        });
      })
      .catch(function (error) {
        el.setAttribute("data-chart-state", "error");
        showMessage(el, "chart-error", "Could not load this chart: " + error.message + ".", true);
      })
      .finally(function () {
        el.removeAttribute("aria-busy");
      });
    return el._rendering;
  }

  // Printing: lazy charts below the fold would print as placeholders, so render them all first.
  function renderAll() {
    var nodes = document.querySelectorAll("[data-chart-src], [data-chart-inline]");
    return Promise.all(Array.prototype.map.call(nodes, function (el) {
      if (observer) observer.unobserve(el);
      return renderChart(el);
    }));
  }
  window.addEventListener("beforeprint", renderAll);
  if (window.matchMedia) {
    var printQuery = window.matchMedia("print");
    if (printQuery.addEventListener) {
      printQuery.addEventListener("change", function (e) { if (e.matches) renderAll(); });
    }
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-print-charts]");
    if (!button) return;
    button.disabled = true;
    renderAll().then(function () {
      button.disabled = false;
      window.print();
    });
  });

  // --- Lazy loading ------------------------------------------------------------------------------

  var observer = "IntersectionObserver" in window
    ? new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) {
            observer.unobserve(entry.target);
            renderChart(entry.target);
          }
        });
      }, { rootMargin: "200px 0px" })
    : null;

  function scan(root) {
    var nodes = (root || document).querySelectorAll("[data-chart-src], [data-chart-inline]");
    Array.prototype.forEach.call(nodes, function (el) {
      if (el.getAttribute("data-chart-state") || el._observed) return;
      el._observed = true;
      if (observer) observer.observe(el);
      else renderChart(el);
    });
    updateSelection(root || document);
  }

  // --- Smoothing and log scale -------------------------------------------------------------------

  function smooth(values, weight) {
    if (!values || weight <= 0) return values;
    var out = new Array(values.length);
    var last = null;
    var debias = 0;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v === null || v === undefined || !isFinite(v)) {
        out[i] = null; // a gap stays a gap and restarts the average
        last = null;
        debias = 0;
        continue;
      }
      last = last === null ? 0 : last;
      last = last * weight + (1 - weight) * v;
      debias = debias * weight + (1 - weight);
      out[i] = last / debias;
    }
    return out;
  }

  function scopeOf(el) {
    return el.closest(".charts-section, .runs-section, main") || document;
  }

  function currentSmoothing(el) {
    var slider = scopeOf(el).querySelector("[data-smoothing]");
    return slider ? parseFloat(slider.value) || 0 : 0;
  }

  function applySmoothing(el, weight) {
    if (!window.Plotly || el.getAttribute("data-chart-state") !== "ready" || !el._rawY) return;
    if (el.data && el.data[0] && el.data[0].type === "parcoords") return;
    var ys = el._rawY.map(function (y) { return smooth(y, weight); });
    window.Plotly.restyle(el, { y: ys });
  }

  document.addEventListener("input", function (event) {
    var slider = event.target.closest && event.target.closest("[data-smoothing]");
    if (!slider) return;
    var weight = parseFloat(slider.value) || 0;
    var output = slider.parentElement.querySelector("[data-smoothing-value]");
    if (output) output.textContent = weight.toFixed(2);
    var scope = slider.closest(".charts-section, .runs-section, main") || document;
    Array.prototype.forEach.call(scope.querySelectorAll("[data-chart-src]"), function (el) {
      applySmoothing(el, weight);
    });
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-log-toggle]");
    if (!button) return;
    var chart = button.closest(".chart-card").querySelector(".chart");
    if (!window.Plotly || !chart || chart.getAttribute("data-chart-state") !== "ready") return;
    var logOn = button.getAttribute("aria-pressed") !== "true";
    window.Plotly.relayout(chart, { "yaxis.type": logOn ? "log" : "linear" });
    button.setAttribute("aria-pressed", logOn ? "true" : "false");
  });

  // --- Selecting runs to compare -----------------------------------------------------------------

  function boxesFor(table) {
    return table.querySelectorAll("tbody input[type=checkbox][name=run]");
  }

  function updateSelection(root) {
    var tables = (root || document).querySelectorAll("[data-selectable]");
    Array.prototype.forEach.call(tables, function (table) {
      var boxes = boxesFor(table);
      var checked = Array.prototype.filter.call(boxes, function (b) { return b.checked; }).length;
      var formId = boxes.length ? boxes[0].getAttribute("form") : null;
      var buttons = formId ? document.querySelectorAll("[data-compare-button][form='" + formId + "']") : [];
      Array.prototype.forEach.call(buttons, function (button) {
        button.disabled = checked < 2;
        button.title = checked < 2 ? "Select at least two runs" : "";
        var count = button.querySelector("[data-selected-count]");
        if (count) count.textContent = String(checked);
      });
      var all = table.querySelector("[data-select-all]");
      if (all) {
        all.checked = boxes.length > 0 && checked === boxes.length;
        all.indeterminate = checked > 0 && checked < boxes.length;
      }
    });
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("[data-select-all]")) {
      var table = target.closest("[data-selectable]");
      Array.prototype.forEach.call(boxesFor(table), function (b) { b.checked = target.checked; });
      updateSelection(document);
    } else if (target.matches("[data-selectable] input[name=run]")) {
      updateSelection(document);
    } else if (target.matches("[data-only-diff]")) {
      var compare = document.querySelector("[data-compare-table]");
      if (compare) compare.classList.toggle("only-diff", target.checked);
    } else if (target.matches("select[data-autosubmit]")) {
      target.form.requestSubmit();
    }
  });

  document.addEventListener("DOMContentLoaded", function () { scan(document); });
  document.addEventListener("htmx:load", function (event) { scan(event.target); });
  if (document.readyState !== "loading") scan(document);
})();
