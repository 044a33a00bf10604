// Reports: draw the server-built Plotly figures, filter the card picker, confirm closing an iteration.
(function () {
  "use strict";

  function drawFigures() {
    var source = document.getElementById("report-figures");
    if (!source || !window.Plotly) return;
    var figures = JSON.parse(source.textContent || "{}");
    document.querySelectorAll("[data-figure]").forEach(function (el) {
      var fig = figures[el.dataset.figure];
      if (!fig) return;
      window.Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false, displayModeBar: false })
        .then(function () { el.dataset.drawn = "true"; });
    });
  }

  function wireRowFilters() {
    document.querySelectorAll("[data-filter-rows]").forEach(function (input) {
      var body = document.querySelector(input.dataset.filterRows);
      if (!body) return;
      var empty = input.form && input.form.querySelector("[data-filter-empty]");
      input.addEventListener("input", function () {
        var needle = input.value.trim().toLowerCase();
        var shown = 0;
        body.querySelectorAll("tr").forEach(function (row) {
          // Ticked cards stay visible so a selection is never hidden from the person submitting it.
          var ticked = row.querySelector("input:checked");
          var match = !needle || ticked || row.textContent.toLowerCase().indexOf(needle) !== -1;
          row.hidden = !match;
          if (match) shown += 1;
        });
        if (empty) empty.hidden = shown !== 0;
      });
    });
  }

  function wireConfirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  function init() {
    drawFigures();
    wireRowFilters();
    wireConfirms();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
