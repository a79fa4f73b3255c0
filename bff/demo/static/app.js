// Account settings page: boots from /bff/user and loads each card.
import { configure, login, logout, myAccount, user } from "/bff/static/bff.js";
import { loadAccounts, loadConnections } from "./accounts.js";
import { initMethods, loadMethods } from "./methods.js";
import { renderProfile, stopProfile } from "./profile.js";
import { loadSessions } from "./sessions.js";
import { $, clearMessages, el, placeholder, run, showError, showNotice, stepUpTarget, typeLabel } from "./ui.js";

// Show our own "Verify it's you" prompt instead of leaving the page at once; when the session is over,
// go to log in (and come back here) rather than only announcing bff:session-expired.
configure({ redirectOnAuth: true, redirectOnStepUp: false });

const RETURN_ERRORS = {
  access_denied: "The request was declined or cancelled.",
  login_required: "You need to log in again.",
  consent_required: "Consent is needed to continue.",
  invalid_state: "The request expired. Please try again.",
  server_error: "The identity provider reported an error.",
  temporarily_unavailable: "The identity provider is unavailable. Try again later.",
  already_connected: "That account is already connected.",
  step_up_required: "Verify it's you, then try connecting again.",
  connect_failed: "The account could not be connected. Try again.",
};

/** Report `?connected=` / `?error=` from a redirect back, then tidy the address bar. */
function handleReturn() {
  const url = new URL(window.location.href);
  const connected = url.searchParams.get("connected");
  const error = url.searchParams.get("error");
  if (connected) showNotice(`${connected} is now connected.`);
  if (error) {
    const description = url.searchParams.get("error_description");
    showError(RETURN_ERRORS[error] || "That didn't work.", [description || `Error code: ${error}`]);
  }
  if (connected || error) {
    for (const key of ["connected", "error", "error_description"]) url.searchParams.delete(key);
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }
}

async function loadFactors() {
  const result = await run(() => myAccount.listFactors());
  const list = $("factors");
  if (!result.ok) return placeholder(list, "Factors could not be loaded.");
  const factors = result.value?.factors ?? [];
  if (!factors.length) return placeholder(list, "No factors are enabled.");
  list.replaceChildren(...factors.map((factor) => el("li", {
    class: "chip",
    "data-testid": "factor-item",
    "data-factor-type": factor.type,
    text: factor.usage?.length ? `${typeLabel(factor.type)} (${factor.usage.join(", ")})` : typeLabel(factor.type),
  })));
}

function showSignedOut() {
  stopProfile();
  $("signed-in").hidden = true;
  $("logout").hidden = true;
  $("signed-out").hidden = false;
}

function showSignedIn(me) {
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
  $("logout").hidden = false;
  renderProfile(me);
  initMethods(me.claims);
  loadMethods();
  loadFactors();
  loadAccounts();
  loadConnections();
  loadSessions(showSignedOut);
}

const RECHECK_INTERVAL_MS = 10_000;
let lastRecheck = 0;

/** Re-check the session (after a countdown reaches zero, for example). */
async function recheck() {
  if (Date.now() - lastRecheck < RECHECK_INTERVAL_MS) return;
  lastRecheck = Date.now();
  const result = await run(() => user());
  if (!result.ok) return;
  if (result.value) {
    renderProfile(result.value);
  } else {
    showSignedOut();
    showNotice("Your session has ended. Log in again to continue.");
  }
}

// What happened before the last navigation, told on the page we come back to (this tab only).
const SIGNED_OUT = "demo:signed-out";
const SESSION_ENDED = "demo:session-ended";

function remembered(key) {
  try {
    const value = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    return value !== null;
  } catch {
    return false;
  }
}

function remember(key) {
  try {
    sessionStorage.setItem(key, "1");
  } catch {
    // Storage refused: the notice is only a courtesy.
  }
}

const ENDED_ELSEWHERE = "Your session was ended, from another device or because it timed out.";

/** The BFF answered 401 to a call: the session is over although this page still showed it. */
function sessionExpired() {
  remember(SESSION_ENDED);
  showNotice(`${ENDED_ELSEWHERE} Taking you to log in…`);
}

async function logOut(control) {
  remember(SIGNED_OUT);
  const result = await run(() => logout(), { user: true, control });
  if (!result.ok) remembered(SIGNED_OUT);
}

async function boot() {
  $("login").addEventListener("click", () => login());
  $("logout").addEventListener("click", (event) => logOut(event.currentTarget));
  $("step-up").addEventListener("click", () => {
    // Only follow a same-origin login URL; otherwise start a plain login here.
    const target = stepUpTarget() && new URL(stepUpTarget(), window.location.href);
    if (target && target.origin === window.location.origin) window.location.assign(target.href);
    else login();
  });
  $("dismiss-messages").addEventListener("click", clearMessages);
  document.addEventListener("bff:session-expired", sessionExpired);
  document.addEventListener("bff:session-expired", recheck);

  const signedOut = remembered(SIGNED_OUT);
  const ended = remembered(SESSION_ENDED);
  handleReturn();
  const result = await run(() => user());
  if (!result.ok) return showSignedOut();
  if (result.value) {
    showSignedIn(result.value);
    if (ended) showNotice(`${ENDED_ELSEWHERE} You are signed in again.`);
  } else {
    showSignedOut();
    if (signedOut) showNotice("You have been signed out.");
    else if (ended) showNotice(`${ENDED_ELSEWHERE} Log in again to continue.`);
  }
}

boot();
