// The client's behaviour under Node's test runner (`node --test`), against a scripted fetch.
import assert from "node:assert/strict";
import { test } from "node:test";

import { json, load, problem } from "./harness.mjs";

const LOGIN_URL = "/bff/login?returnTo=%2Faccount%3Ftab%3Dmethods";

test("calls carry the anti-forgery header and the cookie, and send plain objects as JSON", async () => {
  const { client, calls } = await load(() => json(200, { ok: true }));
  assert.deepEqual(await client.request("/bff/thing", { method: "POST", body: { a: 1 } }), { ok: true });
  const [call] = calls;
  assert.equal(call.headers.get("X-CSRF"), "1");
  assert.equal(call.headers.get("Content-Type"), "application/json");
  assert.match(call.headers.get("Accept"), /application\/problem\+json/);
  assert.equal(call.credentials, "same-origin");
  assert.deepEqual(call.body, { a: 1 });
});

test("an empty answer resolves to null and a text answer to its text", async () => {
  const answers = [new Response(null, { status: 204 }), new Response("plain", { status: 200 })];
  const { client } = await load(() => answers.shift());
  assert.equal(await client.request("/a"), null);
  assert.equal(await client.request("/b"), "plain");
});

test("a problem rejects with a BffError holding its fields", async () => {
  const { client } = await load(() =>
    json(400, { type: "urn:x", title: "Bad", detail: "Nope", validation_errors: [{ detail: "d", field: "f" }] }));
  const error = await client.request("/x").catch((e) => e);
  assert.ok(error instanceof client.BffError);
  assert.deepEqual(
    [error.status, error.type, error.title, error.detail, error.validationErrors.length, error.message],
    [400, "urn:x", "Bad", "Nope", 1, "Nope"],
  );
  assert.equal(error.isSessionExpired, false);
});

test("an expired session is announced once, to every listener, however many calls fail at once", async () => {
  const { client, events, navigations, document } = await load(() =>
    problem(401, "not-authenticated", { login_url: "/bff/login" }));
  const heard = [];
  const stop = client.onSessionExpired((event) => heard.push(event.detail));
  const errors = await Promise.all([1, 2, 3].map(() => client.myAccount.listFactors().catch((e) => e)));
  assert.equal(events.length, 1);
  assert.equal(heard.length, 1);
  assert.equal(events[0].type, client.SESSION_EXPIRED);
  assert.equal(events[0].bubbles, true, "it reaches listeners on window too");
  assert.equal(heard[0].loginUrl, LOGIN_URL, "the login URL returns to this page, query included");
  assert.equal(heard[0].error, errors[0]);
  for (const error of errors) {
    assert.equal(error.isSessionExpired, true);
    assert.equal(error.redirecting, false);
  }
  assert.deepEqual(navigations, [], "by default the application decides when to log in");
  stop();
  document.dispatchEvent(new CustomEvent(client.SESSION_EXPIRED));
  assert.equal(heard.length, 1, "onSessionExpired's result stops listening");
});

test("an expiry after the session worked again is announced again", async () => {
  const answers = [problem(401, "login-required"), json(200, {}), problem(401, "login-required")];
  const { client, events } = await load(() => answers.shift());
  await client.myAccount.listFactors().catch(() => null);
  await client.myAccount.listFactors();
  await client.myAccount.listFactors().catch(() => null);
  assert.equal(events.length, 2);
});

test("with redirectOnAuth the client also navigates to log in, once, and back to the page", async () => {
  const { client, events, navigations } = await load(() =>
    problem(401, "login-required", { login_url: "https://app.example.com/bff/login" }));
  client.configure({ redirectOnAuth: true });
  const errors = await Promise.all([1, 2].map(() => client.myAccount.listFactors().catch((e) => e)));
  assert.deepEqual(navigations, [LOGIN_URL]);
  assert.deepEqual(errors.map((e) => e.redirecting), [true, true]);
  assert.equal(events.length, 1);
});

test("a login URL on another origin is never followed", async () => {
  const { client, navigations, events } = await load(() =>
    problem(401, "not-authenticated", { login_url: "https://evil.example/bff/login" }));
  await client.request("/me/v1/factors", { redirectOnAuth: true }).catch(() => null);
  assert.deepEqual(navigations, [LOGIN_URL]);
  assert.equal(events[0].detail.loginUrl, LOGIN_URL);
});

for (const kind of ["store-unavailable", "idp-unavailable", "token-busy"]) {
  test(`a 503 ${kind} is not an expiry: no event, no navigation, a retry delay`, async () => {
    const { client, events, navigations } = await load(() => problem(503, kind, {}, { "Retry-After": "7" }));
    client.configure({ redirectOnAuth: true });
    const error = await client.myAccount.listFactors().catch((e) => e);
    assert.equal(error.isUnavailable, true);
    assert.equal(error.isSessionExpired, false);
    assert.equal(error.retryAfter, 7);
    assert.equal(error.redirecting, false);
    assert.deepEqual(events, []);
    assert.deepEqual(navigations, []);
  });
}

test("a step-up problem navigates to its login URL by default and is not an expiry", async () => {
  const loginUrl = "/bff/login?acr_values=http%3A%2F%2Fschemas.openid.net%2Fpape%2Fpolicies%2F2007%2F06%2Fmulti-factor";
  const { client, events, navigations } = await load(() =>
    problem(401, "step-up-required", { login_url: loginUrl }));
  const error = await client.myAccount.deleteAuthenticationMethod("totp|x").catch((e) => e);
  assert.equal(error.isStepUp, true);
  assert.equal(error.isSessionExpired, false);
  assert.equal(error.redirecting, true);
  assert.equal(navigations.length, 1);
  const target = new URL(navigations[0], "https://app.example.com");
  assert.equal(target.searchParams.get("returnTo"), "/account?tab=methods");
  assert.ok(target.searchParams.get("acr_values"));
  assert.deepEqual(events, []);
});

test("a step-up problem only rejects when redirectOnStepUp is off", async () => {
  const { client, navigations } = await load(() => problem(401, "step-up-required", { login_url: "/bff/login" }));
  client.configure({ redirectOnStepUp: false });
  const error = await client.myAccount.listFactors().catch((e) => e);
  assert.equal(error.redirecting, false);
  assert.deepEqual(navigations, []);
});

test("user() answers null when nobody is signed in, without announcing an expiry", async () => {
  const { client, events, navigations } = await load(() => problem(401, "not-authenticated", { login_url: "/bff/login" }));
  client.configure({ redirectOnAuth: true });
  assert.equal(await client.user(), null);
  assert.deepEqual(events, []);
  assert.deepEqual(navigations, []);
});

test("user() rethrows an unavailable store instead of reporting a signed-out user", async () => {
  const { client } = await load(() => problem(503, "store-unavailable"));
  await assert.rejects(client.user(), (error) => error.isUnavailable);
});

test("login() returns to the current page with its query string by default", async () => {
  const { client, navigations } = await load();
  client.login();
  client.login("/settings", { prompt: "login" });
  assert.deepEqual(navigations, [LOGIN_URL, "/bff/login?returnTo=%2Fsettings&prompt=login"]);
});

test("logout() ends the session and goes to the provider's logout, or home when already out", async () => {
  const answers = [json(200, { logout_url: "https://idp.example/logout" }), problem(401, "not-authenticated")];
  const { client, navigations, events, calls } = await load(() => answers.shift());
  await client.logout();
  await client.logout();
  assert.deepEqual(navigations, ["https://idp.example/logout", "/"]);
  assert.deepEqual(calls.map((c) => [c.method, c.path]), [["POST", "/bff/logout"], ["POST", "/bff/logout"]]);
  assert.deepEqual(events, []);
});

test("ids are encoded once as a path segment", async () => {
  const { client, calls } = await load(() => new Response(null, { status: 204 }));
  await client.myAccount.deleteAuthenticationMethod("totp|dev 1");
  await client.myAccount.deleteAuthenticationMethod("passkey%7Cnew");
  await client.myAccount.getConsent("cns_1/../x");
  await client.endSession("a b");
  assert.deepEqual(calls.map((c) => c.path), [
    "/me/v1/authentication-methods/totp%7Cdev%201",
    "/me/v1/authentication-methods/passkey%7Cnew",
    "/me/v1/consents/cns_1%2F..%2Fx",
    "/bff/sessions/a%20b",
  ]);
});

test("list wrappers send their paging and filter parameters", async () => {
  const { client, calls } = await load(() => json(200, {}));
  await client.myAccount.listOrganizations({ from: "abc", take: 5 });
  await client.myAccount.listOrganizations();
  await client.myAccount.listConsents();
  await client.myAccount.listConnectedAccounts({ connection: ["github", "google-oauth2"], take: 2 });
  await client.myAccount.listAuthenticationMethods("totp");
  assert.deepEqual(calls.map((c) => c.path), [
    "/me/v1/organizations?from=abc&take=5",
    "/me/v1/organizations",
    "/me/v1/consents",
    "/me/v1/connected-accounts/accounts?connection=github&connection=google-oauth2&take=2",
    "/me/v1/authentication-methods?type=totp",
  ]);
});

const LOCATION = "/me/v1/authentication-methods/totp%7Cdev_1";

/** Answers an enrollment with `started` and its Location, and a verification with the method. */
function enrollment(started) {
  return (call) =>
    call.path.endsWith("/verify")
      ? json(200, { id: "totp|dev_1", type: "totp", confirmed: true })
      : json(201, { auth_session: "session-1", ...started }, { Location: LOCATION });
}

const HELPERS = [
  ["enrollTotp", [], [], { type: "totp" }, { otp_code: undefined }],
  ["enrollTotp", [], ["123456"], { type: "totp" }, { otp_code: "123456" }],
  ["enrollPushNotification", [], [], { type: "push-notification" }, {}],
  ["enrollEmail", ["alice@example.com"], ["654321"], { type: "email", email: "alice@example.com" }, { otp_code: "654321" }],
  ["enrollPhone", ["+15551234567"], ["111111"],
    { type: "phone", phone_number: "+15551234567", preferred_authentication_method: "sms" }, { otp_code: "111111" }],
  ["enrollPhone", ["+15551234567", "voice"], ["111111"],
    { type: "phone", phone_number: "+15551234567", preferred_authentication_method: "voice" }, { otp_code: "111111" }],
  ["enrollRecoveryCode", [], [], { type: "recovery-code" }, {}],
  ["enrollPassword", [], ["correct horse"], { type: "password" }, { new_password: "correct horse" }],
];

for (const [helper, args, confirmArgs, enrollBody, verifyExtra] of HELPERS) {
  test(`${helper}(${args.join(", ")}) enrolls, then confirm(${confirmArgs.join(", ")}) verifies at its location`, async () => {
    const { client, calls } = await load(enrollment({ barcode_uri: "otpauth://totp/x", recovery_code: "R" }));
    const started = await client.myAccount[helper](...args);
    assert.equal(started.location, LOCATION);
    assert.equal(started.auth_session, "session-1");
    assert.equal(started.barcode_uri, "otpauth://totp/x");
    const method = await started.confirm(...confirmArgs);
    assert.equal(method.confirmed, true);
    assert.deepEqual(calls.map((c) => [c.method, c.path]), [
      ["POST", "/me/v1/authentication-methods"],
      ["POST", `${LOCATION}/verify`],
    ]);
    assert.deepEqual(calls[0].body, enrollBody);
    assert.deepEqual(calls[1].body, JSON.parse(JSON.stringify({ auth_session: "session-1", ...verifyExtra })));
  });
}

test("an enrollment answered without a Location is verified by its id", async () => {
  const { client, calls } = await load((call) =>
    call.path.endsWith("/verify") ? json(200, {}) : json(201, { id: "email|dev_2", auth_session: "s" }));
  await (await client.myAccount.enrollEmail("a@example.com")).confirm("1");
  assert.equal(calls[1].path, "/me/v1/authentication-methods/email%7Cdev_2/verify");
});

test("enrollPasskey creates the credential from the API's options and verifies the attestation", async () => {
  const challenge = client64(new Uint8Array([1, 2, 3, 4]));
  const creation = {
    challenge,
    rp: { id: "app.example.com", name: "App" },
    user: { id: client64(new Uint8Array([9, 9])), name: "alice", displayName: "Alice" },
    pubKeyCredParams: [{ type: "public-key", alg: -7 }],
    excludeCredentials: [{ id: client64(new Uint8Array([7])), type: "public-key" }],
  };
  const { client, calls } = await load((call) =>
    call.path.endsWith("/verify")
      ? json(200, { id: "passkey|1", type: "passkey" })
      : json(201, { auth_session: "s", authn_params_public_key: creation }, { Location: "/me/v1/authentication-methods/passkey%7Cnew" }));
  let options;
  globalThis.navigator = {
    credentials: {
      create: async ({ publicKey }) => {
        options = publicKey;
        return {
          id: "cred",
          rawId: new Uint8Array([5, 6]).buffer,
          type: "public-key",
          authenticatorAttachment: "platform",
          response: {
            attestationObject: new Uint8Array([1]).buffer,
            clientDataJSON: new Uint8Array([2]).buffer,
            getTransports: () => ["internal"],
          },
          getClientExtensionResults: () => ({ credProps: { rk: true } }),
        };
      },
    },
  };
  try {
    const method = await client.myAccount.enrollPasskey();
    assert.equal(method.id, "passkey|1");
  } finally {
    delete globalThis.navigator;
  }
  assert.deepEqual([...new Uint8Array(options.challenge)], [1, 2, 3, 4]);
  assert.deepEqual([...new Uint8Array(options.user.id)], [9, 9]);
  assert.deepEqual([...new Uint8Array(options.excludeCredentials[0].id)], [7]);
  assert.equal(calls[1].path, "/me/v1/authentication-methods/passkey%7Cnew/verify");
  assert.deepEqual(calls[1].body, {
    auth_session: "s",
    authn_response: {
      id: "cred",
      rawId: "BQY",
      type: "public-key",
      response: { attestationObject: "AQ", clientDataJSON: "Ag", transports: ["internal"] },
      clientExtensionResults: { credProps: { rk: true } },
      authenticatorAttachment: "platform",
    },
  });
});

test("base64url round-trips and encodes without padding", async () => {
  const { client } = await load();
  const bytes = new Uint8Array([0, 250, 251, 252, 253, 254, 255]);
  const text = client.toBase64url(bytes);
  assert.doesNotMatch(text, /[+/=]/);
  assert.deepEqual([...new Uint8Array(client.fromBase64url(text))], [...bytes]);
  assert.equal(client.toBase64url(new Uint8Array([0xfb, 0xff]).subarray(1)), "_w");
});

test("connect() posts the connection and goes to the provider", async () => {
  const { client, calls, navigations } = await load(() => json(200, { redirect_url: "https://idp.example/connect?ticket=t" }));
  await client.connect("github", ["repo"], "/accounts", { login_hint: "alice" });
  assert.deepEqual(calls[0].body, {
    connection: "github",
    returnTo: "/accounts",
    scopes: ["repo"],
    authorization_params: { login_hint: "alice" },
  });
  assert.deepEqual(navigations, ["https://idp.example/connect?ticket=t"]);
});

function client64(bytes) {
  return Buffer.from(bytes).toString("base64url");
}
