// The portal's behaviour: CSRF on htmx requests, the API-key dialog, the copy button.
// Every page works without it (the dialog's link opens a page of its own).
"use strict";

(function () {
  // htmx sends the CSRF token as a header on every request (the token is in a meta
  // tag, so no inline script is needed: the Content-Security-Policy forbids one).
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) {
      event.detail.headers["X-CSRFToken"] = meta.getAttribute("content");
    }
  });

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-opens-dialog]");
    if (opener) {
      var dialog = document.getElementById(opener.getAttribute("data-opens-dialog"));
      if (dialog && typeof dialog.showModal === "function") {
        event.preventDefault();
        dialog.showModal();
      }
      return;
    }
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) {
      var open = closer.closest("dialog");
      if (open) {
        event.preventDefault();
        open.close();
      }
      return;
    }
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var field = document.getElementById(copy.getAttribute("data-copy"));
      var status = copy.parentElement.parentElement.querySelector(".copy-status");
      var say = function (text) { if (status) { status.textContent = text; } };
      field.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(
          function () { say("Copied."); },
          function () { say("Press Ctrl+C (⌘C) to copy the selected key."); }
        );
      } else {
        say("Press Ctrl+C (⌘C) to copy the selected key.");
      }
    }
  });
})();
