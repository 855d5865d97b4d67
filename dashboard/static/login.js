"use strict";
// Exchanges a token for an HttpOnly session cookie, then goes back to the page that asked for it.
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error");
  error.hidden = true;
  const response = await fetch("/api/session", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token: document.getElementById("token").value}),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || ("sign-in failed (" + response.status + ")");
    error.hidden = false;
    return;
  }
  const next = new URLSearchParams(location.search).get("next") || "/";
  location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
});
