// Compiled by `tsc -p tsconfig.json` (never run): the declarations in src/bff.d.ts describe the API as an
// application uses it, through the package name a bundler resolves (`exports` -> `types`).
import {
  BffError,
  SESSION_EXPIRED,
  STEP_UP_REQUIRED,
  configure,
  connect,
  encodeId,
  endSession,
  fromBase64url,
  listSessions,
  login,
  logout,
  myAccount,
  onSessionExpired,
  request,
  toBase64url,
  user,
  type AuthenticationMethod,
  type BffUser,
  type SessionExpiredEvent,
} from "@bff/client";

async function app(): Promise<void> {
  configure({ redirectOnAuth: false, redirectOnStepUp: false });
  // @ts-expect-error: options are booleans
  configure({ redirectOnAuth: "yes" });

  const me: BffUser | null = await user();
  if (!me) {
    login(location.pathname + location.search);
    return;
  }
  const email: string | undefined = me.claims.email;
  const expiresIn: number = me.session.expires_in;
  console.log(email, expiresIn, me.claims.picture?.startsWith("https:"));

  const stop: () => void = onSessionExpired((event: SessionExpiredEvent) => {
    if (event.detail) login(event.detail.loginUrl);
  });
  stop();
  document.addEventListener(SESSION_EXPIRED, (event) => {
    const url: string | undefined = event.detail?.loginUrl;
    console.log(url);
  });
  window.addEventListener("bff:session-expired", (event) => console.log(event.detail?.error.status));

  const typed = await request<{ ok: boolean }>("/bff/user", { method: "GET", redirectOnAuth: false, notifyExpiry: false });
  const ok: boolean = typed.ok;
  const untyped: unknown = await request("/me/v1/factors");
  console.log(ok, untyped);

  try {
    await myAccount.deleteAuthenticationMethod("totp|dev_1");
  } catch (error) {
    if (error instanceof BffError) {
      const flags: boolean[] = [error.isStepUp, error.isSessionExpired, error.isUnavailable, error.redirecting];
      const retry: number | null = error.retryAfter;
      const type: string = error.type;
      console.log(flags, retry, type === STEP_UP_REQUIRED, error.validationErrors.map((v) => v.detail));
    }
  }

  // Every route group.
  const { factors } = await myAccount.listFactors();
  const { authentication_methods } = await myAccount.listAuthenticationMethods("passkey");
  const method: AuthenticationMethod | undefined = authentication_methods[0];
  if (method?.type === "phone") {
    const phone: string = method.phone_number;
    console.log(phone);
  }
  await myAccount.getAuthenticationMethod("x");
  await myAccount.updateAuthenticationMethod("x", { name: "Work phone", preferred_authentication_method: "voice" });
  // @ts-expect-error: only sms or voice
  await myAccount.updateAuthenticationMethod("x", { preferred_authentication_method: "fax" });
  await myAccount.rename("x", "Laptop");
  const { accounts, next } = await myAccount.listConnectedAccounts({ connection: ["github"], take: 10 });
  await myAccount.listConnections({ from: next ?? "" });
  await myAccount.deleteConnectedAccount(accounts[0]?.id ?? "");
  const { consents } = await myAccount.listConsents();
  const consent = await myAccount.getConsent(consents[0]?.id ?? "");
  const { organizations } = await myAccount.listOrganizations({ take: 5 });
  console.log(factors, consent.client_id, organizations[0]?.display_name);

  // One enrollment helper per method type.
  const totp = await myAccount.enrollTotp();
  const qr: string = totp.barcode_uri;
  await totp.confirm("123456");
  // @ts-expect-error: a TOTP enrollment is confirmed with a code
  await totp.confirm();
  const push = await myAccount.enrollPushNotification();
  await push.confirm();
  const emailEnrollment = await myAccount.enrollEmail("alice@example.com");
  await emailEnrollment.confirm("123456");
  const phoneEnrollment = await myAccount.enrollPhone("+15551234567", "voice");
  await phoneEnrollment.confirm("123456");
  const recovery = await myAccount.enrollRecoveryCode();
  const code: string = recovery.recovery_code;
  const confirmed: AuthenticationMethod = await recovery.confirm();
  const password = await myAccount.enrollPassword();
  await password.confirm("a new passphrase");
  const passkey: AuthenticationMethod = await myAccount.enrollPasskey({ connection: "Username-Password-Authentication" });
  console.log(qr, code, confirmed.id, passkey.type);

  // The generic pair.
  const started = await myAccount.enroll("email", { email: "alice@example.com" });
  await myAccount.verify(started.location ?? "", { auth_session: started.auth_session, otp_code: "123456" });
  // @ts-expect-error: an email enrollment needs the address
  await myAccount.enroll("email");

  await connect("google-oauth2", ["openid"], "/settings", { login_hint: "alice@example.com" });
  const { sessions } = await listSessions();
  await endSession(sessions.find((session) => !session.current)?.id ?? "");
  const segment: string = encodeId("totp|dev_1");
  const bytes: ArrayBuffer = fromBase64url(toBase64url(new Uint8Array([1, 2, 3])));
  console.log(segment, bytes.byteLength);
  await logout();
}

void app;
