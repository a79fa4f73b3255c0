// Sign-in methods: list, rename, delete, and enrollment of passkeys, TOTP,
// email, phone and recovery codes through the My Account API.
import { myAccount } from "/bff/static/bff.js";
import { renderQr } from "./qr.js";
import { $, confirmAction, describeDevice, el, formatDate, placeholder, run, typeLabel } from "./ui.js";

const PANELS = ["totp-panel", "otp-panel", "recovery-panel"];
// The API defines no friendly name for these types, so they cannot be renamed.
const NAMELESS = new Set(["password", "passkey", "recovery-code"]);

/** The enrollment waiting for verification: where to verify and its auth_session. */
let pending = null;
let renameCounter = 0;
/** The email or phone form whose enrollment is pending: cleared once it is verified. */
let pendingForm = null;
/** The demo's inbox of one-time codes (the emulator's /inbox), from /demo-config.json. */
let inboxUrl = "";

async function loadDemoConfig() {
  try {
    const response = await fetch("/demo-config.json", { credentials: "omit", cache: "no-store" });
    if (!response.ok) return;
    const config = await response.json();
    if (typeof config.inbox_url === "string" && /^https?:\/\//.test(config.inbox_url)) inboxUrl = config.inbox_url;
  } catch {
    // Not served by `bff demo`: no inbox to link.
  }
}

function subtitle(method) {
  const parts = [];
  const title = titleOf(method);
  if (typeLabel(method.type) !== title) parts.push(typeLabel(method.type));
  for (const value of [method.email, method.phone_number]) {
    if (value && value !== title) parts.push(value);
  }
  if (method.confirmed === false) parts.push("Not verified yet");
  if (method.created_at) parts.push(`Added ${formatDate(method.created_at)}`);
  if (method.last_auth_at) parts.push(`Last used ${formatDate(method.last_auth_at)}`);
  return parts.join(" · ");
}

function titleOf(method) {
  // Passkeys are named by the device they were created on, as sessions are ("Chrome on Linux").
  if (method.type === "passkey" && !method.name && method.user_agent) return describeDevice(method.user_agent);
  return method.name || method.email || method.phone_number || typeLabel(method.type);
}

function methodItem(method) {
  const title = titleOf(method);
  const titleNode = el("span", { class: "item-title", text: title });
  const item = el("li", {
    class: "item",
    "data-testid": "method-item",
    "data-method-id": method.id,
    "data-method-type": method.type,
  });
  const body = el("div", { class: "item-body" }, titleNode, el("span", { class: "item-meta", text: subtitle(method) }));
  const rename = NAMELESS.has(method.type) ? null : el("button", {
    class: "button small secondary",
    type: "button",
    "data-testid": "rename",
    "aria-label": `Rename ${title}`,
    text: "Rename",
    onclick: () => startRename(item, body, method, title),
  });
  const remove = el("button", {
    class: "button small danger",
    type: "button",
    "data-testid": "delete",
    "aria-label": `Delete ${title}`,
    text: "Delete",
    onclick: () => deleteMethod(method, title, remove),
  });
  item.append(body, el("div", { class: "item-actions" }, rename, remove));
  return item;
}

function startRename(item, body, method, title) {
  const id = `rename-input-${++renameCounter}`;
  const input = el("input", { id, "data-testid": "rename-input", value: method.name || "", maxlength: 100, required: true, autocomplete: "off" });
  const cancel = () => {
    form.replaceWith(body);
    item.querySelector("[data-testid=rename]").focus();
  };
  const form = el("form", { class: "rename-form", "data-testid": "rename-form" },
    el("label", { for: id, class: "visually-hidden", text: `New name for ${title}` }),
    input,
    el("button", { class: "button small", type: "submit", "data-testid": "rename-save", text: "Save" }),
    el("button", { class: "button small ghost", type: "button", text: "Cancel", onclick: cancel }));
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") cancel();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!name) return;
    const result = await run(() => myAccount.rename(method.id, name), { user: true, control: form, success: `Renamed to “${name}”.` });
    if (result.ok) await loadMethods();
  });
  body.replaceWith(form);
  input.focus();
  input.select();
}

async function deleteMethod(method, title, button) {
  const what = method.type === "passkey" ? `the passkey on ${title}` : title;
  if (!await confirmAction(`Delete ${what}? You won't be able to sign in with it any more.`, "Delete")) return;
  const result = await run(() => myAccount.deleteAuthenticationMethod(method.id), {
    user: true,
    control: button,
    success: `${method.type === "passkey" ? "Passkey" : title} removed.`,
  });
  if (result.ok) {
    await loadMethods();
    $("methods-title").focus();
  }
}

/** Fetch and show the user's authentication methods. */
export async function loadMethods() {
  const result = await run(() => myAccount.listAuthenticationMethods());
  const list = $("methods");
  if (!result.ok) return placeholder(list, "Sign-in methods could not be loaded.");
  const methods = result.value?.authentication_methods ?? [];
  if (!methods.length) return placeholder(list, "No sign-in methods yet.");
  list.replaceChildren(...methods.map(methodItem));
}

function closeEnrollment() {
  pending = null;
  for (const id of PANELS) $(id).hidden = true;
  $("totp-qr").replaceChildren();
  $("totp-secret").textContent = "";
  $("recovery-code").textContent = "";
  $("totp-code").value = "";
  $("otp-code").value = "";
}

function openPanel(panelId, focusId) {
  for (const id of PANELS) $(id).hidden = id !== panelId;
  $(focusId).focus();
}

/** Start an enrollment; keep what verification needs. */
async function begin(type, body, control) {
  closeEnrollment();
  const result = await run(() => myAccount.enroll(type, body), { user: true, control });
  if (!result.ok) return null;
  const data = result.value;
  pending = { target: data.location || data.id, auth_session: data.auth_session, label: typeLabel(type) };
  return data;
}

async function finish(body, control) {
  if (!pending) return;
  const { target, auth_session, label } = pending;
  const result = await run(() => myAccount.verify(target, { auth_session, ...body }), {
    user: true,
    control,
    success: `${label} added.`,
  });
  if (result.ok) {
    closeEnrollment();
    if (pendingForm) pendingForm.reset();
    pendingForm = null;
    await loadMethods();
    $("methods-title").focus();
  }
}

function secretFromUri(uri) {
  try {
    return new URL(uri).searchParams.get("secret") || "";
  } catch {
    return "";
  }
}

async function enrollPasskey(button) {
  closeEnrollment();
  const result = await run(async () => {
    if (!window.PublicKeyCredential || !navigator.credentials?.create) {
      throw new DOMException("Passkeys are not available", "NotSupportedError");
    }
    return myAccount.enrollPasskey();
  }, { user: true, control: button, success: "Passkey added." });
  if (result.ok) await loadMethods();
}

async function enrollTotp(button) {
  const data = await begin("totp", {}, button);
  if (!data) return;
  renderQr($("totp-qr"), data.barcode_uri, "QR code for your authenticator app");
  $("totp-secret").textContent = data.manual_input_code || secretFromUri(data.barcode_uri);
  openPanel("totp-panel", "totp-code");
}

async function enrollOtp(type, body, form, message) {
  const data = await begin(type, body, form);
  if (!data) return;
  pendingForm = form;
  $("otp-message").textContent = message;
  $("inbox-hint").hidden = !inboxUrl;
  if (inboxUrl) $("inbox-link").href = inboxUrl;
  openPanel("otp-panel", "otp-code");
}

async function enrollRecovery(button) {
  const data = await begin("recovery-code", {}, button);
  if (!data) return;
  $("recovery-code").textContent = data.recovery_code;
  openPanel("recovery-panel", "recovery-title");
}

/**
 * Wire the enrollment controls once.
 * @param {Record<string, unknown>} claims Used to prefill the email address.
 */
export function initMethods(claims) {
  loadDemoConfig();
  if (typeof claims.email === "string") $("email-address").value = claims.email;
  $("enroll-passkey").addEventListener("click", (event) => enrollPasskey(event.currentTarget));
  $("enroll-totp").addEventListener("click", (event) => enrollTotp(event.currentTarget));
  $("enroll-recovery").addEventListener("click", (event) => enrollRecovery(event.currentTarget));

  $("email-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const email = $("email-address").value.trim();
    enrollOtp("email", { email }, event.currentTarget, `Enter the code we sent to ${email}.`);
  });
  $("phone-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const phone_number = $("phone-number").value.trim();
    const preferred_authentication_method = $("phone-channel").value;
    const how = preferred_authentication_method === "voice" ? "We're calling" : "We sent a text to";
    enrollOtp("phone", { phone_number, preferred_authentication_method }, event.currentTarget, `${how} ${phone_number}. Enter the code.`);
  });

  $("totp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    finish({ otp_code: $("totp-code").value.trim() }, event.currentTarget);
  });
  $("otp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    finish({ otp_code: $("otp-code").value.trim() }, event.currentTarget);
  });
  $("recovery-confirm").addEventListener("click", (event) => finish({}, event.currentTarget));

  for (const button of document.querySelectorAll(".enroll-cancel")) {
    button.addEventListener("click", () => {
      closeEnrollment();
      $("methods-title").focus();
    });
  }
}
