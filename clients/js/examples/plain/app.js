// The plain example: no framework, no build step; the client is imported from the BFF itself.
import { BffError, login, logout, myAccount, onSessionExpired, user } from "/bff/static/bff.js";

const $ = (id) => document.getElementById(id);

function showSignedOut(text) {
  $("status").textContent = text;
  $("login").hidden = false;
  $("logout").hidden = $("methods").hidden = $("avatar").hidden = true;
  $("method-list").replaceChildren();
}

// One place reacts when any call finds the session over (once, however many calls failed).
onSessionExpired(() => showSignedOut("Your session has ended. Log in again to continue."));

$("login").addEventListener("click", () => login(location.pathname + location.search));
$("logout").addEventListener("click", () => logout());
$("methods").addEventListener("click", async () => {
  try {
    const { authentication_methods: methods } = await myAccount.listAuthenticationMethods();
    $("method-list").replaceChildren(...methods.map((method) => {
      const item = document.createElement("li");
      item.textContent = method.type;
      return item;
    }));
  } catch (error) {
    // An expired session was handled above; anything else is shown here.
    if (!(error instanceof BffError && error.isSessionExpired)) $("status").textContent = error.message;
  }
});

async function start() {
  const me = await user(); // null when nobody is signed in; never redirects
  if (!me) {
    showSignedOut("You are signed out.");
    return;
  }
  $("status").textContent = `Signed in as ${me.claims.name} (${me.claims.email})`;
  if (typeof me.claims.picture === "string") {
    $("avatar").addEventListener("load", () => { $("avatar").hidden = false; }, { once: true });
    $("avatar").src = me.claims.picture;
  }
  $("methods").hidden = $("logout").hidden = false;
}

start();
