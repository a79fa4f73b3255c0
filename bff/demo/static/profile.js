// Profile card: identity claims and the BFF session's lifetime, counting down.
import { $, el, formatDate, formatDuration } from "./ui.js";

const TIME_CLAIMS = new Set(["iat", "exp", "auth_time", "updated_at", "nbf"]);

let ticker = 0;
let expiresAt = 0;
let idleWindowMs = null;
let lastActivity = 0;

function initials(name) {
  return (name || "?").split(/[\s@.]+/).filter(Boolean).slice(0, 2).map((part) => part[0].toUpperCase()).join("");
}

function claimValue(key, value) {
  if (TIME_CLAIMS.has(key) && typeof value === "number") return formatDate(value);
  return typeof value === "string" ? value : JSON.stringify(value);
}

function tick() {
  const now = Date.now();
  const left = (expiresAt - now) / 1000;
  const expires = $("session-expires");
  expires.textContent = left > 0 ? formatDuration(left) : "Expired";
  expires.dataset.expiresAt = String(expiresAt);
  const idle = $("session-idle");
  if (idleWindowMs === null) {
    idle.textContent = "No idle timeout";
  } else {
    const idleLeft = (lastActivity + idleWindowMs - now) / 1000;
    idle.textContent = idleLeft > 0 ? formatDuration(idleLeft) : "Expired";
  }
  if (left <= 0 || (idleWindowMs !== null && lastActivity + idleWindowMs <= now)) {
    clearInterval(ticker);
    document.dispatchEvent(new CustomEvent("bff:session-expired"));
  }
}

// Any successful call to the BFF counts as activity and restarts the idle window.
document.addEventListener("bff:activity", () => {
  lastActivity = Date.now();
});

/**
 * Show the signed-in user's profile and session.
 * @param {{claims: Record<string, unknown>, session: object}} me The `/bff/user` answer.
 */
export function renderProfile({ claims, session }) {
  const name = claims.name || claims.nickname || claims.email || claims.sub;
  $("profile-name").textContent = name;
  $("profile-email").textContent = claims.email
    ? `${claims.email}${claims.email_verified === false ? " (not verified)" : ""}`
    : "";
  $("profile-initials").textContent = initials(name);

  const picture = $("profile-picture");
  picture.hidden = true;
  picture.addEventListener("load", () => { picture.hidden = false; }, { once: true });
  if (typeof claims.picture === "string") picture.src = claims.picture;

  $("session-auth-time").textContent = formatDate(session.auth_time);
  $("session-created").textContent = formatDate(session.created_at);
  $("session-amr").textContent = session.amr?.length ? session.amr.join(", ") : "—";
  $("session-acr").textContent = session.acr || "—";

  $("claims").replaceChildren(
    ...Object.entries(claims).map(([key, value]) =>
      el("div", {}, el("dt", { text: key }), el("dd", { text: claimValue(key, value) }))),
  );

  const now = Date.now();
  lastActivity = now;
  expiresAt = now + session.expires_in * 1000;
  idleWindowMs = typeof session.idle_expires_in === "number" ? session.idle_expires_in * 1000 : null;
  clearInterval(ticker);
  tick();
  ticker = setInterval(tick, 1000);
}

export function stopProfile() {
  clearInterval(ticker);
}
