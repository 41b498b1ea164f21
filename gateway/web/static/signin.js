// Sign in: the key goes to POST /v1/session once; the gateway answers with an HttpOnly session cookie.
// Where the edge signs browsers in with the identity provider, a link offers that too.

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

const idp = document.getElementById("idp");
const idpLink = document.getElementById("idp-link");

/** Offer the identity provider's sign-in where the edge runs it: opening the page without a session goes
 * by the provider's sign-in and comes back to it. */
async function offerIdentityProvider() {
  const options = await fetch("/v1/session/options", { headers: { accept: "application/json" } })
    .then((response) => (response.ok ? response.json() : null))
    .catch(() => null);
  if (!options?.identity_provider) return;
  idpLink.href = nextPage() + location.hash;
  idp.hidden = false;
}

idpLink.addEventListener("click", async (event) => {
  event.preventDefault();
  // A key session's cookie (one the gateway no longer takes brought us here) would make the edge hand the
  // page straight to the gateway, and back here: end it first, then open the page through the provider.
  await fetch("/v1/session", { method: "DELETE" }).catch(() => null);
  location.assign(idpLink.href);
});

offerIdentityProvider();
