// Behaviour that would otherwise be inline handlers (onclick=, onchange=), which the CSP forbids.
document.addEventListener("click", function (event) {
  if (event.target.closest("[data-print]")) window.print();
});
document.addEventListener("change", function (event) {
  var field = event.target.closest("[data-autosubmit]");
  if (field && field.form) field.form.requestSubmit();
});
