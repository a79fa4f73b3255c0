// Account settings page: boots from /bff/user and loads each card.
import { configure, login, logout, myAccount, user } from "/bff/static/bff.js";
import { loadAccounts, loadConnections } from "./accounts.js";
import { initMethods, loadMethods } from "./methods.js";
import { renderProfile, stopProfile } from "./profile.js";
import { loadSessions } from "./sessions.js";
import {
  $, CONNECTING, clearMessages, connectionLabel, el, placeholder, recall, remember, run, showError, showNotice, stepUpTarget,
  typeLabel,
} from "./ui.js";

// Show our own "Verify it's you" prompt instead of leaving the page at once; when the session is over,
// go to log in (and come back here) rather than only announcing bff:session-expired.
configure({ redirectOnAuth: true, redirectOnStepUp: false });

// Why a login sent the browser back with ?error=: the BFF's codes and the identity provider's.
const LOGIN_ERRORS = {
  access_denied: "The login was cancelled.",
  login_failed: "The login could not be completed.",
  login_required: "The identity provider needs you to log in.",
  interaction_required: "The identity provider needs you to log in.",
  unmet_authentication_requirements: "The identity provider needs you to log in with a second factor.",
  consent_required: "Consent is needed to continue.",
  invalid_request: "The login request was not valid.",
  server_error: "The identity provider reported an error. Try again later.",
  temporarily_unavailable: "The identity provider is unavailable. Try again later.",
  too_many_requests: "Too many attempts. Wait a moment, then try again.",
};

// The same for a connection this tab did not remember starting (a callback opened again, say).
const OTHER_ERRORS = {
  connect_failed: "The account could not be connected.",
  already_connected: "That account is already connected.",
  step_up_required: "Verify it's you, then try connecting again.",
};

// Why connecting an account sent the browser back with ?error=; `label` names the account.
const CONNECT_ERRORS = {
  access_denied: (label) => `Connecting your ${label} account was cancelled. Nothing was connected.`,
  already_connected: (label) => `Your ${label} account is already connected.`,
  login_required: (label) => `Log in again, then connect your ${label} account.`,
  step_up_required: (label) => `Verify it's you, then try connecting your ${label} account again.`,
  temporarily_unavailable: (label) => `Your ${label} account can't be connected right now. Try again later.`,
};

/**
 * Take `?connected=` / `?error=` / `?error_description=` from a redirect back, and tidy the address bar.
 * @returns {{connected: string | null, error: string | null, description: string | null, connecting: string | null}}
 */
function takeReturn() {
  const url = new URL(window.location.href);
  const back = {
    connected: url.searchParams.get("connected"),
    error: url.searchParams.get("error"),
    description: url.searchParams.get("error_description"),
    connecting: recall(CONNECTING),
  };
  if (back.connected || back.error) {
    for (const key of ["connected", "error", "error_description"]) url.searchParams.delete(key);
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }
  return back;
}

/** Tell what became of the login or connection the browser came back from. */
function reportReturn(back, signedIn) {
  if (back.connected) showNotice(`${back.connected} is now connected.`);
  if (!back.error) return;
  let text;
  let known;
  if (back.connecting) {
    const label = connectionLabel(back.connecting);
    known = Object.hasOwn(CONNECT_ERRORS, back.error);
    text = known ? CONNECT_ERRORS[back.error](label) : `Your ${label} account could not be connected. Try again.`;
  } else if (Object.hasOwn(LOGIN_ERRORS, back.error)) {
    known = true;
    text = `${LOGIN_ERRORS[back.error]} ${signedIn ? "You are still signed in." : "You are not signed in."}`;
  } else {
    known = Object.hasOwn(OTHER_ERRORS, back.error);
    text = known ? OTHER_ERRORS[back.error] : "That didn't work.";
  }
  // The BFF's own description when it sent one; the bare code only when there is nothing better to say.
  const details = back.description ? [back.description] : known ? [] : [`Error code: ${back.error}`];
  showError(text, details);
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

const remembered = (key) => recall(key) !== null;

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
  const back = takeReturn();
  const result = await run(() => user());
  if (!result.ok) return showSignedOut();  // run() has said why; that matters more now
  reportReturn(back, Boolean(result.value));
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
