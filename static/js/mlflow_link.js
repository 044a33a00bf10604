// The link MLflow clients print after a run is <tracking uri>/#/experiments/<id>/runs/<run id>.
// The fragment never reaches the server, so read it here and open the matching mlboard page.
(function () {
  var el = document.getElementById("mlflow-link");
  if (!el) return;
  var base = el.getAttribute("data-open-url");
  var match = /^#\/experiments\/([^/?#]+)(?:\/runs\/([^/?#]+))?/.exec(window.location.hash || "");
  if (!match) return;
  var params = new URLSearchParams();
  params.set("experiment", decodeURIComponent(match[1]));
  if (match[2]) params.set("run", decodeURIComponent(match[2]));
  window.location.replace(base + "?" + params.toString());
})();
