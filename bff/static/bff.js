/**
 * bff.js — browser client for the bff backend-for-frontend. No token ever
 * reaches the browser: calls go to this origin only, with the session cookie
 * and the anti-forgery header `X-CSRF: 1` (which a cross-site page cannot send
 * without a CORS preflight the BFF refuses). Failures reject with
 * {@link BffError}, built from RFC 9457 problems and My Account API errors.
 *
 * The source of this file is `clients/js/src/bff.js` (the `@bff/client`
 * package); the BFF serves a copy at `/bff/static/bff.js`. Types: `bff.d.ts`.
 * @module bff
 */

const BFF = "/bff";
const ME = "/me/v1";

/** Problem type the BFF answers with when an action needs a fresh MFA login. */
export const STEP_UP_REQUIRED = "urn:bff:problem:step-up-required";

/**
 * Event dispatched (once, until a call succeeds again) when a call finds the
 * session over: a 401 that is not a step-up. Dispatched on `document` (it
 * bubbles to `window`); `event.detail` is `{error, loginUrl}`.
 */
export const SESSION_EXPIRED = "bff:session-expired";

const settings = { redirectOnAuth: false, redirectOnStepUp: true };

/** True between announcing an expired session and the next successful call. */
let expiryAnnounced = false;
/** True once a 401 started navigating to the login page. */
let redirectingToLogin = false;

/**
 * Change the defaults used by every call, including the `myAccount` helpers.
 * @param {{redirectOnAuth?: boolean, redirectOnStepUp?: boolean}} options
 *   `redirectOnAuth`: on a 401, also navigate to the login page (default false:
 *   the client dispatches `bff:session-expired` and the app decides).
 *   `redirectOnStepUp`: on a step-up problem, navigate to its `login_url`
 *   (default true); turn off to show your own prompt instead.
 */
export function configure(options) {
  for (const key of Object.keys(settings)) {
    if (typeof options[key] === "boolean") settings[key] = options[key];
  }
}

/**
 * An error answered by the BFF, or by the My Account API through it.
 * Fields: `status`, `type` (problem type URI), `title`, `detail`, `loginUrl`
 * (where to sign in again, when offered), `body` (the decoded body),
 * `validationErrors` (My Account API field errors), `retryAfter` (seconds,
 * from `Retry-After`) and `redirecting` (true when the client already started
 * navigating to a login page).
 */
export class BffError extends Error {
  /**
   * @param {number} status HTTP status.
   * @param {unknown} [body] Decoded body: problem object, text or null.
   * @param {string} [statusText] Fallback title.
   */
  constructor(status, body = null, statusText = "") {
    const problem = body && typeof body === "object" ? body : {};
    const title = problem.title || statusText || `Request failed (${status})`;
    const detail = problem.detail || (typeof body === "string" ? body.slice(0, 500) : "");
    super(detail || title);
    this.name = "BffError";
    this.status = status;
    this.type = problem.type || "about:blank";
    this.title = title;
    this.detail = detail;
    this.loginUrl = problem.login_url || null;
    this.body = body;
    this.validationErrors = Array.isArray(problem.validation_errors) ? problem.validation_errors : [];
    this.retryAfter = null;
    this.redirecting = false;
  }

  /** True when the action needs the user to re-authenticate with MFA. */
  get isStepUp() {
    return this.type === STEP_UP_REQUIRED;
  }

  /** True when the session is over (a 401 other than step-up): log in again. */
  get isSessionExpired() {
    return this.status === 401 && !this.isStepUp;
  }

  /** True for a 503 (`store-unavailable`, `idp-unavailable`, ...): the session is kept; retry later. */
  get isUnavailable() {
    return this.status === 503;
  }
}

/**
 * Percent-encode an id for use as one path segment, unless it is already
 * encoded (ids read from `Location` headers, such as `passkey%7Cnew`, must be
 * used unmodified; raw ids such as `totp|dev_1` become `totp%7Cdev_1`).
 * @param {string} id
 * @returns {string}
 */
export function encodeId(id) {
  const value = String(id);
  try {
    if (decodeURIComponent(value) !== value) return value;
  } catch {
    // A lone "%" is not an encoding: encode it.
  }
  return encodeURIComponent(value);
}

/**
 * Decode base64url (padding optional) to an ArrayBuffer.
 * @param {string} text
 * @returns {ArrayBuffer}
 */
export function fromBase64url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

/**
 * Encode an ArrayBuffer or typed array as unpadded base64url.
 * @param {ArrayBuffer|ArrayBufferView} data
 * @returns {string}
 */
export function toBase64url(data) {
  const bytes = data instanceof ArrayBuffer
    ? new Uint8Array(data)
    : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const here = () => globalThis.location.pathname + globalThis.location.search;
const navigate = (url) => globalThis.location.assign(url);
const loginPath = (returnTo, params = {}) =>
  `${BFF}/login?${new URLSearchParams({ returnTo, ...params })}`;

/** Login URLs from problems are followed only when they stay on this origin. */
function sameOrigin(url) {
  try {
    return new URL(url, globalThis.location.href).origin === globalThis.location.origin;
  } catch {
    return false;
  }
}

/**
 * Where a 401 or step-up problem sends the user: its `login_url` when it stays
 * on this origin (else `/bff/login`), coming back to this page unless the URL
 * already names a `returnTo`.
 */
function loginTarget(loginUrl) {
  if (!loginUrl || !sameOrigin(loginUrl)) return loginPath(here());
  const url = new URL(loginUrl, globalThis.location.href);
  if (!url.searchParams.has("returnTo")) url.searchParams.set("returnTo", here());
  return url.pathname + url.search;
}

/** Where session-expired events go: `document` (bubbling to `window`), else the global scope. */
function eventTarget() {
  const target = globalThis.document ?? globalThis;
  return typeof target.addEventListener === "function" ? target : null;
}

function announceExpiry(error, loginUrl) {
  if (expiryAnnounced) return;
  expiryAnnounced = true;
  eventTarget()?.dispatchEvent(new CustomEvent(SESSION_EXPIRED, { bubbles: true, detail: { error, loginUrl } }));
}

/**
 * Call `listener` whenever the session is found over (the `bff:session-expired`
 * event: once per expiry, whichever call noticed it). `event.detail` is
 * `{error, loginUrl}` when the client dispatched it.
 * @param {(event: CustomEvent) => void} listener
 * @returns {() => void} Stops listening.
 */
export function onSessionExpired(listener) {
  const target = eventTarget();
  if (!target) return () => {};
  target.addEventListener(SESSION_EXPIRED, listener);
  return () => target.removeEventListener(SESSION_EXPIRED, listener);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of [].concat(value ?? [])) if (item !== "") search.append(key, String(item));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Same-origin path of a `Location` header value, each segment encoded once. */
function locationPath(header) {
  const { pathname } = new URL(header, globalThis.location.href);
  return pathname.split("/").map((segment) => (segment ? encodeId(segment) : segment)).join("/");
}

function retryAfterSeconds(header) {
  if (!header) return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim());
  const date = Date.parse(header);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function decode(response) {
  if (response.status === 204 || response.status === 205) return null;
  const text = await response.text();
  if (!text) return null;
  if (!/json/i.test(response.headers.get("Content-Type") || "")) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function send(path, init = {}) {
  const { body, headers, redirectOnAuth = settings.redirectOnAuth,
    redirectOnStepUp = settings.redirectOnStepUp, notifyExpiry = true, ...rest } = init;
  const sendHeaders = new Headers(headers);
  sendHeaders.set("X-CSRF", "1");
  if (!sendHeaders.has("Accept")) sendHeaders.set("Accept", "application/json, application/problem+json");
  let payload = body;
  if (Array.isArray(body) || Object.prototype.toString.call(body) === "[object Object]") {
    payload = JSON.stringify(body);
    sendHeaders.set("Content-Type", "application/json");
  }
  const response = await fetch(path, { ...rest, headers: sendHeaders, body: payload, credentials: "same-origin" });
  const data = await decode(response);
  if (response.ok) {
    expiryAnnounced = false;
    redirectingToLogin = false;
    return { response, data };
  }

  const error = new BffError(response.status, data, response.statusText);
  error.retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
  if (error.isStepUp) {
    if (redirectOnStepUp && error.loginUrl && sameOrigin(error.loginUrl)) {
      error.redirecting = true;
      navigate(loginTarget(error.loginUrl));
    }
  } else if (error.isSessionExpired) {
    const target = loginTarget(error.loginUrl);
    if (notifyExpiry) announceExpiry(error, target);
    if (redirectOnAuth) {
      error.redirecting = true;
      if (!redirectingToLogin) {
        redirectingToLogin = true;
        navigate(target);
      }
    }
  }
  throw error;
}

/**
 * Call the BFF on this origin. Adds `X-CSRF: 1` and the session cookie, encodes
 * a plain-object or array `body` as JSON and decodes JSON answers.
 *
 * On a 401 that is not a step-up (the session is over) it dispatches
 * `bff:session-expired` once (unless `notifyExpiry: false`) and, with
 * `redirectOnAuth: true`, navigates to the problem's `login_url` (or
 * `/bff/login` returning to this page). On a step-up problem it navigates to
 * the problem's `login_url` unless `redirectOnStepUp: false`. Either way it
 * still rejects, with `error.redirecting` set when it navigates. A 503
 * (`store-unavailable`, `idp-unavailable`) is not an expiry: the session is kept.
 *
 * @param {string} path Same-origin path, e.g. `/me/v1/factors`.
 * @param {RequestInit & {body?: unknown, redirectOnAuth?: boolean, redirectOnStepUp?: boolean, notifyExpiry?: boolean}} [init]
 * @returns {Promise<any>} The decoded body: parsed JSON, text, or null when empty.
 * @throws {BffError} On any non-2xx answer. Network failures reject with a TypeError.
 */
export async function request(path, init) {
  return (await send(path, init)).data;
}

/**
 * The signed-in user, or null when nobody is signed in. Never navigates, and a
 * 401 here is an answer, not an expiry: no `bff:session-expired`.
 * @returns {Promise<{claims: Record<string, unknown>, session: {expires_in: number, idle_expires_in: number|null, created_at: number, acr: string|null, amr: string[]|null, auth_time: number|null}, logout_url: string}|null>}
 */
export async function user() {
  try {
    return await request(`${BFF}/user`, { redirectOnAuth: false, redirectOnStepUp: false, notifyExpiry: false });
  } catch (error) {
    if (error instanceof BffError && error.status === 401) return null;
    throw error;
  }
}

/**
 * Navigate to the BFF login, coming back to `returnTo` afterwards.
 * @param {string} [returnTo] Local path (defaults to the current page, query included).
 * @param {{acr_values?: string, max_age?: number, prompt?: string, login_hint?: string, scope?: string}} [params]
 */
export function login(returnTo = here(), params = {}) {
  navigate(loginPath(returnTo, params));
}

/**
 * End the BFF session, then navigate to the identity provider's logout URL so
 * its session ends too. When already signed out, navigates to `/`.
 * @returns {Promise<void>}
 */
export async function logout() {
  let url = "/";
  try {
    const data = await request(`${BFF}/logout`, { method: "POST", redirectOnAuth: false, notifyExpiry: false });
    url = data?.logout_url || url;
  } catch (error) {
    if (!(error instanceof BffError && error.status === 401)) throw error;
  }
  navigate(url);
}

/**
 * Connect an external account (Token Vault): the BFF starts the flow and the
 * browser goes to the provider. The user comes back to
 * `returnTo?connected=<connection>` or `returnTo?error=<code>`.
 * @param {string} connection Connection name, e.g. `google-oauth2`.
 * @param {string[]} [scopes] Provider scopes to request.
 * @param {string} [returnTo] Local path to come back to (defaults to this page).
 * @param {Record<string, string|number>} [authorizationParams] e.g. `{login_hint}`.
 * @returns {Promise<void>}
 */
export async function connect(connection, scopes, returnTo = here(), authorizationParams) {
  const body = { connection, returnTo };
  if (scopes?.length) body.scopes = scopes;
  if (authorizationParams) body.authorization_params = authorizationParams;
  const { redirect_url: url } = await request(`${BFF}/connect`, { method: "POST", body });
  navigate(url);
}

/**
 * The user's BFF sessions (devices).
 * @returns {Promise<{sessions: Array<{id: string, current: boolean, created_at: number, last_seen: number, device: string}>}>}
 */
export function listSessions() {
  return request(`${BFF}/sessions`);
}

/**
 * End one of the user's BFF sessions.
 * @param {string} id
 * @returns {Promise<null>}
 */
export function endSession(id) {
  return request(`${BFF}/sessions/${encodeId(id)}`, { method: "DELETE" });
}

const methodPath = (id) => `${ME}/authentication-methods/${encodeId(id)}`;

/**
 * A started enrollment: the API's answer, `location` (where to verify) and
 * `confirm(...)`, which verifies it with `auth_session` plus `extra(...args)`.
 */
function pending(started, extra) {
  return {
    ...started,
    confirm: (...args) => myAccount.verify(started.location ?? started.id, { auth_session: started.auth_session, ...extra(...args) }),
  };
}

/**
 * Helpers for every My Account route the BFF can proxy (each group the
 * allowlist can enable); bodies are the API's own. A route whose group is not
 * enabled answers 404.
 */
export const myAccount = {
  // factors ---------------------------------------------------------------------------------------

  /** `GET /factors`. @returns {Promise<{factors: Array<{type: string, usage?: string[]}>}>} */
  listFactors: () => request(`${ME}/factors`),

  // authentication-methods --------------------------------------------------------------------------

  /**
   * `GET /authentication-methods`.
   * @param {string} [type] Filter, e.g. `passkey`, `totp`.
   * @returns {Promise<{authentication_methods: object[]}>}
   */
  listAuthenticationMethods: (type) => request(`${ME}/authentication-methods${query({ type })}`),

  /** `GET /authentication-methods/{id}`. @param {string} id @returns {Promise<object>} */
  getAuthenticationMethod: (id) => request(methodPath(id)),

  /**
   * `POST /authentication-methods`: start enrolling a method. The result is the
   * API body plus `location`, the BFF path of the new method, to pass to
   * {@link myAccount.verify}. The `enroll<Type>` helpers below wrap this.
   * @param {string} type `passkey`, `totp`, `email`, `phone`, `recovery-code`, `push-notification`, `password`.
   * @param {object} [body] e.g. `{email}` or `{phone_number, preferred_authentication_method}`.
   * @returns {Promise<object & {location: string|null}>}
   */
  async enroll(type, body = {}) {
    const { response, data } = await send(`${ME}/authentication-methods`, { method: "POST", body: { ...body, type } });
    return { ...data, location: response.headers.get("Location") };
  },

  /**
   * `POST /authentication-methods/{id}/verify`: confirm an enrollment.
   * @param {string} locationOrId The `location` from enroll (used unmodified) or a method id.
   * @param {object} body `{auth_session, otp_code}`, `{auth_session}` or the passkey body.
   * @returns {Promise<object>} The confirmed method.
   */
  verify(locationOrId, body) {
    const target = /^\/|^[a-z][a-z0-9+.-]*:\/\//i.test(locationOrId)
      ? locationPath(locationOrId)
      : methodPath(locationOrId);
    return request(`${target}/verify`, { method: "POST", body });
  },

  /**
   * `PATCH /authentication-methods/{id}`.
   * @param {string} id
   * @param {{name?: string, preferred_authentication_method?: "sms"|"voice"}} body
   * @returns {Promise<object>}
   */
  updateAuthenticationMethod: (id, body) => request(methodPath(id), { method: "PATCH", body }),

  /** Rename a method (`PATCH`). @param {string} id @param {string} name @returns {Promise<object>} */
  rename: (id, name) => request(methodPath(id), { method: "PATCH", body: { name } }),

  /** `DELETE /authentication-methods/{id}`. @param {string} id @returns {Promise<null>} */
  deleteAuthenticationMethod: (id) => request(methodPath(id), { method: "DELETE" }),

  /**
   * Start enrolling an authenticator app: show `barcode_uri` as a QR code (or
   * `manual_input_code`), then `confirm(otp_code)` with a code from the app.
   * @returns {Promise<object>}
   */
  enrollTotp: async () => pending(await myAccount.enroll("totp"), (otp_code) => ({ otp_code })),

  /**
   * Start enrolling push notifications (Guardian): show `barcode_uri`, then
   * `confirm()` once the app is paired.
   * @returns {Promise<object>}
   */
  enrollPushNotification: async () => pending(await myAccount.enroll("push-notification"), () => ({})),

  /**
   * Start enrolling an email address for one-time codes; `confirm(otp_code)`
   * with the code sent to it.
   * @param {string} email
   * @returns {Promise<object>}
   */
  enrollEmail: async (email) => pending(await myAccount.enroll("email", { email }), (otp_code) => ({ otp_code })),

  /**
   * Start enrolling a phone number; `confirm(otp_code)` with the code sent by
   * text message (`sms`, the default) or voice call.
   * @param {string} phoneNumber E.164, e.g. `+15551234567`.
   * @param {"sms"|"voice"} [preferredMethod]
   * @returns {Promise<object>}
   */
  enrollPhone: async (phoneNumber, preferredMethod = "sms") =>
    pending(
      await myAccount.enroll("phone", { phone_number: phoneNumber, preferred_authentication_method: preferredMethod }),
      (otp_code) => ({ otp_code }),
    ),

  /**
   * Generate a recovery code: show `recovery_code` once, then `confirm()` when
   * the user has saved it. Replaces any previous recovery code.
   * @returns {Promise<object>}
   */
  enrollRecoveryCode: async () => pending(await myAccount.enroll("recovery-code"), () => ({})),

  /**
   * Start setting a password: the answer carries the `policy`; then
   * `confirm(newPassword)`.
   * @param {{connection?: string, identity_user_id?: string}} [options]
   * @returns {Promise<object>}
   */
  enrollPassword: async (options = {}) =>
    pending(await myAccount.enroll("password", options), (new_password) => ({ new_password })),

  /**
   * Enroll a passkey end to end: start the enrollment, let the browser create
   * the credential (WebAuthn), then verify it at `{Location}/verify`.
   * @param {{connection?: string, identity_user_id?: string}} [options]
   * @returns {Promise<object>} The new passkey method.
   * @throws {DOMException} From `navigator.credentials.create` (e.g. NotAllowedError when cancelled).
   */
  async enrollPasskey(options = {}) {
    const { auth_session, authn_params_public_key: creation, location } = await myAccount.enroll("passkey", options);
    if (!location) throw new BffError(502, { title: "Passkey enrollment answered without a Location header" });
    const publicKey = {
      ...creation,
      challenge: fromBase64url(creation.challenge),
      user: { ...creation.user, id: fromBase64url(creation.user.id) },
    };
    if (creation.excludeCredentials) {
      publicKey.excludeCredentials = creation.excludeCredentials.map((c) => ({ ...c, id: fromBase64url(c.id) }));
    }
    const credential = await navigator.credentials.create({ publicKey });
    if (!credential) throw new DOMException("No passkey was created", "NotAllowedError");
    const { response } = credential;
    const authn_response = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toBase64url(response.attestationObject),
        clientDataJSON: toBase64url(response.clientDataJSON),
        transports: response.getTransports?.() ?? [],
      },
      clientExtensionResults: credential.getClientExtensionResults?.() ?? {},
    };
    if (credential.authenticatorAttachment) authn_response.authenticatorAttachment = credential.authenticatorAttachment;
    return myAccount.verify(location, { auth_session, authn_response });
  },

  // connected-accounts (connecting one is `connect()`: the BFF runs that flow) ----------------------

  /**
   * `GET /connected-accounts/accounts`.
   * @param {{connection?: string|string[], from?: string, take?: number}} [options]
   * @returns {Promise<{accounts: object[], next?: string}>}
   */
  listConnectedAccounts: ({ connection, from, take } = {}) =>
    request(`${ME}/connected-accounts/accounts${query({ connection, from, take })}`),

  /**
   * `GET /connected-accounts/connections`.
   * @param {{from?: string, take?: number}} [options]
   * @returns {Promise<{connections: Array<{name: string, strategy: string, scopes?: string[]}>, next?: string}>}
   */
  listConnections: ({ from, take } = {}) =>
    request(`${ME}/connected-accounts/connections${query({ from, take })}`),

  /** `DELETE /connected-accounts/accounts/{id}`. @param {string} id @returns {Promise<null>} */
  deleteConnectedAccount: (id) => request(`${ME}/connected-accounts/accounts/${encodeId(id)}`, { method: "DELETE" }),

  // consents ----------------------------------------------------------------------------------------

  /** `GET /consents`. @returns {Promise<{consents: object[]}>} */
  listConsents: () => request(`${ME}/consents`),

  /** `GET /consents/{consent_id}`. @param {string} id @returns {Promise<object>} */
  getConsent: (id) => request(`${ME}/consents/${encodeId(id)}`),

  // organizations -----------------------------------------------------------------------------------

  /**
   * `GET /organizations`.
   * @param {{from?: string, take?: number}} [options]
   * @returns {Promise<{organizations: Array<{id: string, name: string, display_name?: string}>, next?: string}>}
   */
  listOrganizations: ({ from, take } = {}) => request(`${ME}/organizations${query({ from, take })}`),
};
