// Connected accounts (Token Vault): list, connect through the BFF, disconnect.
import { connect, myAccount } from "/bff/static/bff.js";
import {
  $, CONNECTING, confirmAction, connectionLabel, el, formatDate, placeholder, recall, remember, run, scopeLabel,
} from "./ui.js";

const MAX_PAGES = 5;

/** Follow `next` cursors (bounded) and gather every item under `key`. */
async function allPages(fetchPage, key) {
  const items = [];
  let from;
  for (let page = 0; page < MAX_PAGES; page++) {
    const data = await fetchPage({ from, take: 20 });
    items.push(...(data?.[key] ?? []));
    from = data?.next;
    if (!from) break;
  }
  return items;
}

/** What a connected account lets the application do, in words; each scope itself is its tooltip. */
function permissions(scopes) {
  if (!scopes?.length) return null;
  return el("ul", { class: "permissions", "data-testid": "account-scopes", "aria-label": "The application can" },
    scopes.map((scope) => el("li", { class: "permission", title: scope, "data-scope": scope, text: scopeLabel(scope) })));
}

function accountItem(account) {
  const meta = [
    `Connected ${formatDate(account.created_at)}`,
    account.expires_at ? `Expires ${formatDate(account.expires_at)}` : null,
  ].filter(Boolean).join(" · ");
  const button = el("button", {
    class: "button small danger",
    type: "button",
    "data-testid": "disconnect",
    "aria-label": `Disconnect ${connectionLabel(account.connection)}`,
    text: "Disconnect",
  });
  button.addEventListener("click", async () => {
    const label = connectionLabel(account.connection);
    if (!await confirmAction(`Disconnect your ${label} account? The application loses access to it.`, "Disconnect")) return;
    const result = await run(() => myAccount.deleteConnectedAccount(account.id), {
      user: true,
      control: button,
      success: `${account.connection} disconnected.`,
    });
    if (result.ok) {
      await loadAccounts();
      $("accounts-title").focus();
    }
  });
  return el("li", {
    class: "item",
    "data-testid": "account-item",
    "data-account-id": account.id,
    "data-connection": account.connection,
  },
  el("div", { class: "item-body" },
    el("span", { class: "item-title", text: connectionLabel(account.connection) }),
    el("span", { class: "item-meta", text: meta }),
    permissions(account.scopes)),
  el("div", { class: "item-actions" }, button));
}

let scopeCounter = 0;

function connectionItem(connection) {
  const checkboxes = (connection.scopes ?? []).map((scope) => {
    const id = `scope-${++scopeCounter}`;
    return el("span", { class: "check" },
      el("input", { type: "checkbox", id, value: scope, "data-testid": "connect-scope" }),
      el("label", { for: id, text: scopeLabel(scope), title: scope }));
  });
  const button = el("button", {
    class: "button small",
    type: "button",
    id: `connect-${connection.name}`,
    "data-testid": `connect-${connection.name}`,
    "aria-label": `Connect ${connectionLabel(connection.name)}`,
    text: "Connect",
  });
  const scopes = checkboxes.length
    ? el("details", { class: "scopes" },
      el("summary", { text: `Permissions to request (${checkboxes.length})` }),
      el("fieldset", {}, el("legend", { class: "visually-hidden", text: `Permissions for ${connectionLabel(connection.name)}` }), checkboxes))
    : null;
  button.addEventListener("click", async () => {
    const chosen = checkboxes.map((c) => c.querySelector("input")).filter((input) => input.checked).map((input) => input.value);
    // The page we come back to tells what became of this connection (see app.js).
    remember(CONNECTING, connection.name);
    const result = await run(() => connect(connection.name, chosen, window.location.pathname), { user: true, control: button });
    if (!result.ok) recall(CONNECTING);
  });
  return el("li", { class: "item", "data-testid": "connection-item", "data-connection": connection.name },
    el("div", { class: "item-body" },
      el("span", { class: "item-title", text: connectionLabel(connection.name) }),
      scopes),
    el("div", { class: "item-actions" }, button));
}

/** Fetch and show the accounts the user has connected. */
export async function loadAccounts() {
  const result = await run(() => allPages(myAccount.listConnectedAccounts, "accounts"));
  const list = $("accounts");
  if (!result.ok) return placeholder(list, "Connected accounts could not be loaded.");
  if (!result.value.length) return placeholder(list, "No connected accounts yet.");
  list.replaceChildren(...result.value.map(accountItem));
}

/** Fetch and show the connections the user can connect an account from. */
export async function loadConnections() {
  const result = await run(() => allPages(myAccount.listConnections, "connections"));
  const list = $("connections");
  if (!result.ok) return placeholder(list, "Available connections could not be loaded.");
  if (!result.value.length) return placeholder(list, "No connections are available.");
  list.replaceChildren(...result.value.map(connectionItem));
}
