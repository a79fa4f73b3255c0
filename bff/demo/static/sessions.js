// The user's BFF sessions (one per browser or device), each of which can be ended.
import { endSession, listSessions } from "/bff/static/bff.js";
import { $, confirmAction, el, formatDate, placeholder, run } from "./ui.js";

function sessionItem(session, onCurrentEnded) {
  const device = session.device || "Unknown device";
  const button = el("button", {
    class: "button small danger",
    type: "button",
    "data-testid": "end-session",
    "aria-label": session.current ? "End this session (logs you out here)" : `End session on ${device}`,
    text: "End session",
  });
  button.addEventListener("click", async () => {
    const question = session.current
      ? "End the session on this device? You will be logged out here."
      : `End the session on ${device}? That device will be logged out.`;
    if (!await confirmAction(question, "End session")) return;
    const result = await run(() => endSession(session.id), {
      user: true,
      control: button,
      success: session.current ? "You have been logged out on this device." : `Session on ${device} ended.`,
    });
    if (!result.ok) return;
    if (session.current) {
      onCurrentEnded();
    } else {
      await loadSessions(onCurrentEnded);
      $("sessions-title").focus();
    }
  });
  const meta = `Signed in ${formatDate(session.created_at)} · Last active ${formatDate(session.last_seen)}`;
  return el("li", {
    class: "item",
    "data-testid": "session-item",
    "data-session-id": session.id,
    "data-current": String(Boolean(session.current)),
  },
  el("div", { class: "item-body" },
    el("span", { class: "item-title" }, device, session.current ? el("span", { class: "badge", text: "This device" }) : null),
    el("span", { class: "item-meta", text: meta })),
  el("div", { class: "item-actions" }, button));
}

/**
 * Fetch and show the user's sessions.
 * @param {() => void} onCurrentEnded Called after the user ends the session of this browser.
 */
export async function loadSessions(onCurrentEnded) {
  const result = await run(() => listSessions());
  const list = $("sessions");
  if (!result.ok) return placeholder(list, "Sessions could not be loaded.");
  const sessions = [...(result.value?.sessions ?? [])].sort((a, b) => Number(b.current) - Number(a.current));
  if (!sessions.length) return placeholder(list, "No active sessions.");
  list.replaceChildren(...sessions.map((session) => sessionItem(session, onCurrentEnded)));
}
