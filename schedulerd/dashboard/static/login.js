"use strict";
// The login page: say why the last try was refused, and where to go after.
(function () {
  const params = new URLSearchParams(window.location.search);
  const why = {
    refused: "That token was refused (unknown, expired, revoked or malformed).",
    scope: "That token may not read (it needs the scope \"read\", or none).",
    node: "That is a node's token: log in with a user's token.",
  };
  const failed = params.get("failed");
  if (failed) {
    const p = document.getElementById("failed");
    p.textContent = why[failed] || "Log in refused.";
    p.hidden = false;
  }
  const next = params.get("next");
  if (next && next.startsWith("/ui/")) {
    document.getElementById("next").value = next;
  }
})();
