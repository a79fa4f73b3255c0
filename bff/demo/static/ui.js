// Shared DOM helpers: element builder, messages, busy indicator, formatting.
import { BffError } from "/bff/static/bff.js";

/** @param {string} id */
export const $ = (id) => document.getElementById(id);

/**
 * Create an element. `props`: attributes, plus `class`, `text` and `on<event>`
 * listeners (attached with addEventListener, never as inline handlers).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

// What happened before the last navigation, to be told on the page we come back to (this tab only).

/** Keep `value` under `key` for the next page load of this tab. */
export function remember(key, value = "1") {
  try {
    sessionStorage.setItem(key, value);
  } catch {
    // Storage refused: what it would have told is only a courtesy.
  }
}

/** The value kept under `key` (null if none), forgotten as it is read. */
export function recall(key) {
  try {
    const value = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    return value;
  } catch {
    return null;
  }
}

/** The key under which the connection being connected is kept while the provider's page is shown. */
export const CONNECTING = "demo:connecting";

// Busy indicator: shown only when calls take longer than BUSY_DELAY_MS.
const BUSY_DELAY_MS = 300;
let inFlight = 0;
let busyTimer = 0;

function busyStart() {
  if (inFlight++ > 0) return;
  busyTimer = setTimeout(() => {
    $("busy").hidden = false;
    $("main").setAttribute("aria-busy", "true");
  }, BUSY_DELAY_MS);
}

function busyEnd() {
  if (--inFlight > 0) return;
  clearTimeout(busyTimer);
  $("busy").hidden = true;
  $("main").removeAttribute("aria-busy");
}

// Messages stay pinned under the top bar until dismissed or the next action. Their height is kept in
// --messages-height so focused and scrolled-to elements stop below them, never under them.
function syncMessages() {
  $("dismiss-messages").hidden = !$("error").textContent && !$("notice").textContent && $("step-up-panel").hidden;
  const box = document.querySelector(".messages");
  if (!box) return;
  document.documentElement.style.setProperty("--messages-height", `${box.offsetHeight}px`);
  const focused = document.activeElement;
  if (focused && focused !== document.body && focused.getBoundingClientRect().top < box.getBoundingClientRect().bottom) {
    focused.scrollIntoView({ block: "start" });
  }
}

/**
 * Ask before a destructive action, in the page's own dialog.
 * @param {string} text The question. @param {string} action The confirming button's label.
 * @returns {Promise<boolean>} Whether the user confirmed.
 */
export function confirmAction(text, action) {
  const dialog = $("confirm-dialog");
  $("confirm-message").textContent = text;
  $("confirm-ok").textContent = action;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      if (opener?.isConnected) opener.focus();
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

export function clearMessages() {
  $("error").textContent = "";
  $("notice").textContent = "";
  $("step-up-panel").hidden = true;
  syncMessages();
}

/** @param {string} text */
export function showNotice(text) {
  $("notice").textContent = text;
  syncMessages();
}

/** @param {string} text @param {string[]} [details] One is a line in smaller type; more are a list. */
export function showError(text, details = []) {
  const region = $("error");
  region.replaceChildren(el("p", { text }));
  if (details.length === 1) region.append(el("p", { class: "message-detail", text: details[0] }));
  else if (details.length) region.append(el("ul", {}, details.map((item) => el("li", { text: item }))));
  syncMessages();
}

let stepUpUrl = null;

/** The URL the "Verify it's you" button follows; null until a step-up is asked for. */
export const stepUpTarget = () => stepUpUrl;

function showStepUp(error) {
  stepUpUrl = error.loginUrl;
  $("step-up-message").textContent =
    error.detail || "This change needs you to confirm it's you with a second factor.";
  $("step-up-panel").hidden = false;
  showError("Verify it's you to continue.");
  $("step-up").focus();
}

const NETWORK_FAILURE = /fetch|network|load failed/i;

/** A sentence a person can act on, plus field-level details. */
export function describeError(error) {
  if (error instanceof BffError) {
    if (error.status === 429) return { text: "Too many requests. Wait a moment and try again.", details: [] };
    const text = error.detail && error.detail !== error.title ? `${error.title}: ${error.detail}` : error.title;
    const details = error.validationErrors.map((v) => (v.field ? `${v.field}: ${v.detail}` : v.detail));
    return { text, details };
  }
  const messages = {
    NotAllowedError: "The passkey prompt was closed or timed out. Nothing was saved.",
    InvalidStateError: "This device already holds a passkey for your account.",
    NotSupportedError: "This browser or device can't create a passkey.",
    SecurityError: "Passkeys can't be created on this site address.",
    AbortError: "The passkey prompt was cancelled.",
  };
  if (messages[error?.name]) return { text: messages[error.name], details: [] };
  if (error instanceof TypeError && NETWORK_FAILURE.test(error.message)) {
    return { text: "Couldn't reach the server. Check your connection and try again.", details: [] };
  }
  return { text: error?.message || "Something went wrong.", details: [] };
}

/** Show a failure in the right place: step-up prompt, sign-in notice or error region. */
export function report(error) {
  if (error instanceof BffError && error.isStepUp) return showStepUp(error);
  // The page's bff:session-expired listener has said why; keep its notice.
  if (error instanceof BffError && error.redirecting) return $("notice").textContent ? undefined : showNotice("Your session has ended. Taking you to log in…");
  const { text, details } = describeError(error);
  showError(text, details);
}

/**
 * Run a call with the busy indicator and error reporting.
 * `user: true` marks an action the user started: previous messages are cleared
 * and `control` (a button or form) is disabled until it settles.
 * @returns {Promise<{ok: true, value: any} | {ok: false, error: unknown}>}
 */
export async function run(fn, { user = false, control = null, success = "" } = {}) {
  if (user) clearMessages();
  const controls = control ? (control instanceof HTMLFormElement ? [...control.elements] : [control]) : [];
  controls.forEach((c) => { c.disabled = true; });
  busyStart();
  try {
    const value = await fn();
    document.dispatchEvent(new CustomEvent("bff:activity"));
    if (success) showNotice(success);
    return { ok: true, value };
  } catch (error) {
    report(error);
    return { ok: false, error };
  } finally {
    busyEnd();
    controls.forEach((c) => { c.disabled = false; });
  }
}

/** A one-line placeholder for an empty or failed list. */
export function placeholder(list, text) {
  list.replaceChildren(el("li", { class: "empty", text }));
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** Format epoch seconds, epoch milliseconds or an ISO string. */
export function formatDate(value) {
  if (value === null || value === undefined || value === "") return "—";
  const ms = typeof value === "number" ? (value < 1e12 ? value * 1000 : value) : Date.parse(value);
  return Number.isFinite(ms) ? dateFormat.format(ms) : String(value);
}

/** "1 h 05 min 09 s", "4 min 02 s", "12 s". */
export function formatDuration(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const d = Math.floor(total / 86400);
  if (d) return `${d} d ${Math.floor((total % 86400) / 3600)} h`;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  if (h) return `${h} h ${String(m).padStart(2, "0")} min ${s} s`;
  if (m) return `${m} min ${s} s`;
  return `${total} s`;
}

const TYPE_LABELS = {
  password: "Password",
  passkey: "Passkey",
  "webauthn-platform": "Device biometrics",
  "webauthn-roaming": "Security key",
  totp: "Authenticator app",
  phone: "Phone",
  email: "Email",
  "push-notification": "Push notifications",
  "recovery-code": "Recovery code",
};

/** @param {string} type */
export const typeLabel = (type) => TYPE_LABELS[type] || type;

// Device names, as the BFF gives them for sessions (bff/auth/sessions.py describe_device).
const BROWSERS = [["Edg/", "Edge"], ["OPR/", "Opera"], ["Firefox/", "Firefox"], ["Chrome/", "Chrome"],
  ["Chromium/", "Chromium"], ["Safari/", "Safari"]];
const SYSTEMS = [["iPhone", "iPhone"], ["iPad", "iPad"], ["Android", "Android"], ["Windows", "Windows"],
  ["Mac OS X", "macOS"], ["CrOS", "ChromeOS"], ["Linux", "Linux"]];

/** "Chrome on Linux" for a User-Agent string: the same rules as the BFF's session names. */
export function describeDevice(userAgent) {
  const ua = userAgent || "";
  const browser = BROWSERS.find(([marker]) => ua.includes(marker))?.[1];
  const system = SYSTEMS.find(([marker]) => ua.includes(marker))?.[1];
  if (browser && system) return `${browser} on ${system}`;
  return browser || system || (ua ? ua.slice(0, 40) : "Unknown device");
}

const CONNECTION_NAMES = {
  "google-oauth2": "Google",
  github: "GitHub",
  windowslive: "Microsoft",
  "sign-in-with-apple": "Apple",
  facebook: "Facebook",
  linkedin: "LinkedIn",
  twitter: "X (Twitter)",
  slack: "Slack",
  dropbox: "Dropbox",
  box: "Box",
  salesforce: "Salesforce",
};

/** "Google" for `google-oauth2`: a connection as a person knows it. */
export function connectionLabel(name) {
  if (CONNECTION_NAMES[name]) return CONNECTION_NAMES[name];
  const word = String(name || "").replace(/-oauth2$/, "").replace(/[-_]+/g, " ");
  return word.charAt(0).toUpperCase() + word.slice(1);
}

// What the provider's consent page says for each scope (the emulator's says the same: bff/emulator/connect.py).
const SCOPE_WORDS = {
  openid: "Know who you are",
  email: "See your email address",
  profile: "See your name and profile picture",
  offline_access: "Keep access when you are not using the application",
  "https://www.googleapis.com/auth/calendar": "See, edit, share and delete your calendars",
  "https://www.googleapis.com/auth/calendar.readonly": "See your calendars",
  "https://www.googleapis.com/auth/calendar.events": "See and edit events on your calendars",
  "https://www.googleapis.com/auth/calendar.events.readonly": "See events on your calendars",
  "https://www.googleapis.com/auth/calendar.settings.readonly": "See your calendar settings",
  "https://www.googleapis.com/auth/calendar.addons.execute": "Run as a Calendar add-on",
  "read:user": "See your profile",
  "user:email": "See your email addresses",
  repo: "See and change your repositories",
};

/**
 * A scope in words: "See your calendars" for `https://www.googleapis.com/auth/calendar.readonly`. An unknown
 * scope is named by its last path segment: "Drive file (read-only)" for `…/auth/drive.file.readonly`.
 */
export function scopeLabel(scope) {
  if (Object.hasOwn(SCOPE_WORDS, scope)) return SCOPE_WORDS[scope];
  let last = scope;
  if (scope.includes("://")) {
    try {
      last = new URL(scope).pathname.replace(/\/+$/, "").split("/").pop() || scope;
    } catch {
      // Not a URL after all: name it as it is.
    }
  }
  const words = last.split(/[._:]+/).filter(Boolean);
  const readOnly = words.length > 1 && words.at(-1) === "readonly";
  if (readOnly) words.pop();
  const text = words.join(" ") || scope;
  const sentence = text.charAt(0).toUpperCase() + text.slice(1);
  return readOnly ? `${sentence} (read-only)` : sentence;
}
