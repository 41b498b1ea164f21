// Sign in: the key goes to POST /v1/session once; the gateway answers with an HttpOnly session cookie.

const form = document.getElementById("signin");
const problem = document.getElementById("problem");

/** Where to go after signing in: a path on this site only (never an open redirect elsewhere). */
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") ?? "/console";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/console";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  problem.hidden = true;
  const key = form.elements.key.value.trim();
  let response;
  try {
    response = await fetch("/v1/session", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ key }),
    });
  } catch (err) {
    problem.textContent = `The gateway cannot be reached (${err.message}).`;
    problem.hidden = false;
    return;
  }
  if (response.ok) {
    // A fragment (#u-12 on a review link) never reaches the server; the redirect here kept it.
    location.assign(nextPage() + location.hash);
    return;
  }
  const body = await response.json().catch(() => null);
  problem.textContent = body?.error?.message ?? `${response.status} ${response.statusText}`;
  problem.hidden = false;
});
