/**
 * Types of bff.js, the browser client for the bff backend-for-frontend.
 *
 * The source of this file is `clients/js/src/bff.d.ts` (the `@bff/client`
 * package); the BFF serves a copy at `/bff/static/bff.d.ts`. The My Account
 * API shapes follow the OpenAPI spec the BFF proxies (`bff/proxy/myaccount-api-oas.json`).
 */

/// <reference lib="dom" />

// --- Problems and errors ---------------------------------------------------------------------------

/** Problem type the BFF answers with when an action needs a fresh MFA login. */
export declare const STEP_UP_REQUIRED: "urn:bff:problem:step-up-required";

/** The event the client dispatches on `document` (bubbling to `window`) when the session is over. */
export declare const SESSION_EXPIRED: "bff:session-expired";

/** A field error of the My Account API. */
export interface ValidationError {
  detail: string;
  field?: string;
  pointer?: string;
  source?: string;
}

/** An RFC 9457 problem as the BFF (or the My Account API through it) answers it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  /** Where to sign in again (401 problems). */
  login_url?: string;
  validation_errors?: ValidationError[];
  [member: string]: unknown;
}

/** An error answered by the BFF, or by the My Account API through it. */
export declare class BffError extends Error {
  constructor(status: number, body?: unknown, statusText?: string);
  readonly name: "BffError";
  /** HTTP status. */
  status: number;
  /** Problem type URI, e.g. `urn:bff:problem:not-authenticated`; `about:blank` when none. */
  type: string;
  title: string;
  detail: string;
  /** Where to sign in again, when offered. */
  loginUrl: string | null;
  /** The decoded body: a problem object, text, or null. */
  body: unknown;
  validationErrors: ValidationError[];
  /** Seconds to wait before retrying, from `Retry-After` (503, 429); null when absent. */
  retryAfter: number | null;
  /** True when the client already started navigating to a login page. */
  redirecting: boolean;
  /** True when the action needs the user to re-authenticate with MFA. */
  readonly isStepUp: boolean;
  /** True when the session is over (a 401 other than step-up): log in again. */
  readonly isSessionExpired: boolean;
  /** True for a 503 (`store-unavailable`, `idp-unavailable`, ...): the session is kept; retry later. */
  readonly isUnavailable: boolean;
}

// --- Configuration and calls -----------------------------------------------------------------------

export interface ClientOptions {
  /** On a 401, also navigate to the login page (default false: only `bff:session-expired`). */
  redirectOnAuth?: boolean;
  /** On a step-up problem, navigate to its `login_url` (default true). */
  redirectOnStepUp?: boolean;
}

/** Change the defaults used by every call, including the `myAccount` helpers. */
export declare function configure(options: ClientOptions): void;

export interface RequestOptions extends Omit<RequestInit, "body" | "credentials"> {
  /** A plain object or array is sent as JSON; anything else (`FormData`, text, ...) as is. */
  body?: unknown;
  redirectOnAuth?: boolean;
  redirectOnStepUp?: boolean;
  /** Dispatch `bff:session-expired` on a 401 (default true). */
  notifyExpiry?: boolean;
}

/**
 * Call the BFF on this origin with `X-CSRF: 1` and the session cookie.
 * Resolves to the decoded body (JSON, text, or null when empty).
 * @throws {BffError} On any non-2xx answer.
 */
export declare function request<T = unknown>(path: string, init?: RequestOptions): Promise<T>;

/** What `bff:session-expired` carries when the client dispatched it. */
export interface SessionExpiredDetail {
  /** The 401 that showed the session is over. */
  error: BffError;
  /** Same-origin login URL that returns to the current page. */
  loginUrl: string;
}

/** The `bff:session-expired` event; `detail` is null when the application dispatched it itself. */
export type SessionExpiredEvent = CustomEvent<SessionExpiredDetail | null>;

/** Call `listener` whenever the session is found over; returns a function that stops listening. */
export declare function onSessionExpired(listener: (event: SessionExpiredEvent) => void): () => void;

declare global {
  interface DocumentEventMap {
    "bff:session-expired": SessionExpiredEvent;
  }
  interface WindowEventMap {
    "bff:session-expired": SessionExpiredEvent;
  }
}

// --- The user and the session ----------------------------------------------------------------------

export interface SessionInfo {
  /** Seconds until the session's absolute end. */
  expires_in: number;
  /** Seconds until the idle timeout, or null when there is none. */
  idle_expires_in: number | null;
  /** Unix time. */
  created_at: number;
  acr: string | null;
  amr: string[] | null;
  auth_time: number | null;
}

/** The ID token's claims the BFF shares with the SPA. */
export interface UserClaims {
  sub: string;
  name?: string;
  nickname?: string;
  email?: string;
  email_verified?: boolean;
  /** Avatar URL (often on another origin: the CSP's `img-src` must allow it). */
  picture?: string;
  [claim: string]: unknown;
}

/** `GET /bff/user`. */
export interface BffUser {
  claims: UserClaims;
  session: SessionInfo;
  logout_url: string;
}

/** The signed-in user, or null when nobody is signed in. Never navigates. */
export declare function user(): Promise<BffUser | null>;

export interface LoginParams {
  acr_values?: string;
  max_age?: number;
  prompt?: string;
  login_hint?: string;
  /** Extra scopes, from `BFF_STEP_UP_SCOPES`. */
  scope?: string;
}

/** Navigate to the BFF login, coming back to `returnTo` (default: this page, query included). */
export declare function login(returnTo?: string, params?: LoginParams): void;

/** End the BFF session, then navigate to the identity provider's logout URL. */
export declare function logout(): Promise<void>;

/** Connect an external account (Token Vault); the browser goes to the provider. */
export declare function connect(
  connection: string,
  scopes?: string[],
  returnTo?: string,
  authorizationParams?: Record<string, string | number>,
): Promise<void>;

export interface BffSession {
  id: string;
  current: boolean;
  created_at: number;
  last_seen: number;
  device: string;
}

/** The user's BFF sessions (devices). */
export declare function listSessions(): Promise<{ sessions: BffSession[] }>;

/** End one of the user's BFF sessions. */
export declare function endSession(id: string): Promise<null>;

// --- Encoding helpers ------------------------------------------------------------------------------

/** Percent-encode an id as one path segment, unless it is already encoded. */
export declare function encodeId(id: string): string;
/** Decode base64url (padding optional). */
export declare function fromBase64url(text: string): ArrayBuffer;
/** Encode as unpadded base64url. */
export declare function toBase64url(data: ArrayBuffer | ArrayBufferView): string;

// --- My Account API shapes -------------------------------------------------------------------------

export type FactorType =
  | "password"
  | "passkey"
  | "webauthn-platform"
  | "webauthn-roaming"
  | "totp"
  | "phone"
  | "email"
  | "push-notification"
  | "recovery-code";

export type Usage = "primary" | "secondary";

export interface Factor {
  type: FactorType;
  usage?: Usage[];
}

export type PhoneMethod = "sms" | "voice";

interface MethodBase {
  id: string;
  /** ISO 8601. */
  created_at: string;
  usage: Usage[];
}

interface MfaMethodBase extends MethodBase {
  confirmed: boolean;
  last_auth_at?: string;
}

export interface PasswordMethod extends MethodBase {
  type: "password";
  identity_user_id: string;
  last_password_reset?: string;
}

export interface PasskeyMethod extends MethodBase {
  type: "passkey";
  credential_backed_up: boolean;
  credential_device_type: "multi_device" | "single_device";
  identity_user_id: string;
  key_id: string;
  public_key: string;
  user_handle: string;
  transports?: string[];
  user_agent?: string;
  aaguid?: string;
  relying_party_id?: string;
  last_auth_at?: string;
}

export interface RecoveryCodeMethod extends MfaMethodBase {
  type: "recovery-code";
}

export interface PushNotificationMethod extends MfaMethodBase {
  type: "push-notification";
  name?: string;
}

export interface TotpMethod extends MfaMethodBase {
  type: "totp";
  name?: string;
}

export interface WebAuthnMethod extends MfaMethodBase {
  type: "webauthn-platform" | "webauthn-roaming";
  name?: string;
  key_id?: string;
  public_key?: string;
}

export interface PhoneMethodInfo extends MfaMethodBase {
  type: "phone";
  name?: string;
  phone_number: string;
  preferred_authentication_method: PhoneMethod;
}

export interface EmailMethod extends MfaMethodBase {
  type: "email";
  name?: string;
  email: string;
}

/** An enrolled authentication method, told apart by `type`. */
export type AuthenticationMethod =
  | PasswordMethod
  | PasskeyMethod
  | RecoveryCodeMethod
  | PushNotificationMethod
  | TotpMethod
  | WebAuthnMethod
  | PhoneMethodInfo
  | EmailMethod;

/** Types `POST /authentication-methods` accepts. */
export type EnrollableType = "passkey" | "totp" | "push-notification" | "recovery-code" | "email" | "phone" | "password";

/** Which identity a passkey or password is for (accounts with several). */
export interface IdentityOptions {
  connection?: string;
  identity_user_id?: string;
}

/** WebAuthn creation options as the API sends them (binary fields base64url). */
export interface PublicKeyCreationOptionsJSON {
  challenge: string;
  rp: { id?: string; name: string };
  user: { id: string; name: string; displayName: string };
  pubKeyCredParams: Array<{ type: "public-key"; alg: number }>;
  timeout?: number;
  authenticatorSelection?: { residentKey?: "required"; userVerification?: "required" | "preferred" | "discouraged" };
  excludeCredentials?: Array<{ id: string; type: "public-key"; transports?: string[] }>;
}

export interface PasswordPolicy {
  [rule: string]: unknown;
}

/** The answer to `POST /authentication-methods`, with `location` from its `Location` header. */
export interface StartedEnrollment {
  /** BFF URL of the new method, to verify at (null when the API sent no `Location`). */
  location: string | null;
  auth_session: string;
  id?: string;
  barcode_uri?: string;
  manual_input_code?: string;
  recovery_code?: string;
  authn_params_public_key?: PublicKeyCreationOptionsJSON;
  policy?: PasswordPolicy;
  [member: string]: unknown;
}

/** A started enrollment, confirmed by `confirm(...)` (which verifies it). */
export type Enrollment<Started, ConfirmArgs extends unknown[]> = StartedEnrollment &
  Started & { confirm(...args: ConfirmArgs): Promise<AuthenticationMethod> };

export type TotpEnrollment = Enrollment<{ id: string; barcode_uri: string; manual_input_code?: string }, [otpCode: string]>;
export type PushNotificationEnrollment = Enrollment<{ id: string; barcode_uri: string }, []>;
export type EmailEnrollment = Enrollment<{ id: string }, [otpCode: string]>;
export type PhoneEnrollment = Enrollment<{ id: string }, [otpCode: string]>;
export type RecoveryCodeEnrollment = Enrollment<{ id: string; recovery_code: string }, []>;
export type PasswordEnrollment = Enrollment<{ id: string; policy: PasswordPolicy }, [newPassword: string]>;

/** The attestation sent to verify a passkey (binary fields base64url). */
export interface AttestationResponseJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: { attestationObject: string; clientDataJSON: string; transports?: string[] };
  clientExtensionResults?: Record<string, unknown>;
  authenticatorAttachment?: "platform" | "cross-platform";
}

/** Bodies `POST /authentication-methods/{id}/verify` accepts. */
export type VerifyBody =
  | { auth_session: string; otp_code: string }
  | { auth_session: string }
  | { auth_session: string; new_password: string }
  | { auth_session: string; authn_response: AttestationResponseJSON };

export interface ConnectedAccount {
  id: string;
  connection: string;
  access_type: "offline";
  scopes: string[];
  created_at: string;
  expires_at?: string;
  org_id?: string;
}

export interface ConnectedAccountConnection {
  name: string;
  strategy: string;
  scopes?: string[];
}

export interface Consent {
  id: string;
  client_id: string;
  requested_details?: { binding_message?: string; audience?: string; scope?: string[] };
  created_at: string;
  expires_at: string;
}

export interface Organization {
  id: string;
  name: string;
  display_name?: string;
}

export interface PageOptions {
  /** Start of the next page, for `from`. */
  from?: string;
  /** Page size. */
  take?: number;
}

// --- The wrappers ----------------------------------------------------------------------------------

/**
 * Helpers for every My Account route the BFF can proxy; a route whose group is
 * not enabled (`BFF_PROXY_ROUTES`) answers 404.
 */
export interface MyAccount {
  /** `GET /factors` (group `factors`). */
  listFactors(): Promise<{ factors: Factor[] }>;

  /** `GET /authentication-methods`. */
  listAuthenticationMethods(type?: FactorType): Promise<{ authentication_methods: AuthenticationMethod[] }>;
  /** `GET /authentication-methods/{id}`. */
  getAuthenticationMethod(id: string): Promise<AuthenticationMethod>;
  /** `POST /authentication-methods`: start enrolling; see the `enroll<Type>` helpers. */
  enroll(type: "email", body: { email: string }): Promise<StartedEnrollment>;
  enroll(type: "phone", body: { phone_number: string; preferred_authentication_method?: PhoneMethod }): Promise<StartedEnrollment>;
  enroll(type: "passkey" | "password", body?: IdentityOptions): Promise<StartedEnrollment>;
  enroll(type: "totp" | "push-notification" | "recovery-code", body?: Record<string, never>): Promise<StartedEnrollment>;
  /** `POST /authentication-methods/{id}/verify`, at an enrollment's `location` or a method id. */
  verify(locationOrId: string, body: VerifyBody): Promise<AuthenticationMethod>;
  /** `PATCH /authentication-methods/{id}`. */
  updateAuthenticationMethod(
    id: string,
    body: { name?: string; preferred_authentication_method?: PhoneMethod },
  ): Promise<AuthenticationMethod>;
  /** Rename a method (`PATCH`). */
  rename(id: string, name: string): Promise<AuthenticationMethod>;
  /** `DELETE /authentication-methods/{id}`. */
  deleteAuthenticationMethod(id: string): Promise<null>;

  /** Authenticator app: show `barcode_uri`, then `confirm(code)`. */
  enrollTotp(): Promise<TotpEnrollment>;
  /** Push notifications: show `barcode_uri`, then `confirm()` once paired. */
  enrollPushNotification(): Promise<PushNotificationEnrollment>;
  /** Email one-time codes: `confirm(code)` with the code sent to `email`. */
  enrollEmail(email: string): Promise<EmailEnrollment>;
  /** Phone one-time codes (`sms` by default, or `voice`): `confirm(code)`. */
  enrollPhone(phoneNumber: string, preferredMethod?: PhoneMethod): Promise<PhoneEnrollment>;
  /** Recovery code: show `recovery_code` once, then `confirm()`. */
  enrollRecoveryCode(): Promise<RecoveryCodeEnrollment>;
  /** Password: the answer carries the `policy`; then `confirm(newPassword)`. */
  enrollPassword(options?: IdentityOptions): Promise<PasswordEnrollment>;
  /** Passkey, end to end: the API's options, `navigator.credentials.create`, verify. */
  enrollPasskey(options?: IdentityOptions): Promise<AuthenticationMethod>;

  /** `GET /connected-accounts/accounts`. */
  listConnectedAccounts(
    options?: PageOptions & { connection?: string | string[] },
  ): Promise<{ accounts: ConnectedAccount[]; next?: string }>;
  /** `GET /connected-accounts/connections`. */
  listConnections(options?: PageOptions): Promise<{ connections: ConnectedAccountConnection[]; next?: string }>;
  /** `DELETE /connected-accounts/accounts/{id}`. */
  deleteConnectedAccount(id: string): Promise<null>;

  /** `GET /consents`. */
  listConsents(): Promise<{ consents: Consent[] }>;
  /** `GET /consents/{consent_id}`. */
  getConsent(id: string): Promise<Consent>;

  /** `GET /organizations`. */
  listOrganizations(options?: PageOptions): Promise<{ organizations: Organization[]; next?: string }>;
}

export declare const myAccount: MyAccount;
