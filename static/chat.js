// The chat page: sessions, sending, the streamed answer, Stop, and resuming after a reload.
//
// On opening a session the page connects to GET /stream/{session_id} and, once connected, reads
// GET /history/{session_id}. Without a Last-Event-ID the stream replays a running answer from its
// `start`, so an answer that was mid-way when the page (re)loaded continues where it was. History is
// authoritative for finished answers; stream events are deduplicated by message_id and seq, so
// nothing shows twice. Only the public API is used (issue #3, part 6).
//
// An answer has parts (issue #11): its text, its reasoning (shown collapsed, "Thinking"), a refusal,
// and tool calls. Tool results are not stream events: a client posts them (POST /chat with
// `tool_results`) and they are stored as `tool` turns, the prompt of the answer that follows. So the
// page learns of them from history, and it reads history whenever an answer starts whose prompt it
// did not send itself, which is always the case for the answer that follows tool results.
//
// Conversations last (issue #15): the sidebar lists them from the service (conversations.js), and a
// session's message tree (GET /conversations/{id}) gives each turn its alternatives, which the page
// offers as Edit, Regenerate and ‹ 2 / 3 › (branches.js, turn_controls.js), with thumbs up / down.

import { addPart, emptyAnswer, finished } from "./answer.js";
import { api, ApiError, apiUrl, postChat, useApiKey } from "./api.js";
import { Sidebar } from "./conversations.js";
import { bubble, renderAnswer } from "./render.js";
import { loadTree, lookAtRecord, renderTurnControls, useChatPage } from "./turn_actions.js";

const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;
const EVENT_TYPES = [
  "start",
  "chunk",
  "reasoning",
  "refusal",
  "tool_call_start",
  "tool_call_delta",
  "tool_call_end",
  "end",
  "answer_error", // an answer's error; `error` is the EventSource's own connection failure
  "reset",
];
const HISTORY_FALLBACK_MS = 1500; // read history even if the stream does not connect by then
const STORAGE = { user: "chat.userId", apiKey: "chat.apiKey" };

const $ = (id) => document.getElementById(id);
const els = {
  sessionList: $("session-list"),
  moreSessions: $("more-sessions"),
  search: $("search-sessions"),
  sessionStatus: $("sessions-status"),
  newSession: $("new-session"),
  openForm: $("open-session"),
  openInput: $("open-session-id"),
  sessionId: $("session-id"),
  connection: $("connection"),
  messages: $("messages"),
  form: $("send-form"),
  userId: $("user-id"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  formError: $("form-error"),
  apiKey: $("api-key"),
};

// --- Storage: localStorage can be unavailable (private modes); the page then works without memory. ---

function load(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Not persisted; the page keeps working for this visit.
  }
}

// Stream tokens (issue #5) are per tab: sessionStorage, so a reload keeps them and other tabs do not.
function tokenKey(sessionId) {
  return `chat.streamToken.${sessionId}`;
}

function loadToken(sessionId) {
  try {
    return sessionStorage.getItem(tokenKey(sessionId));
  } catch {
    return null;
  }
}

function saveToken(sessionId, token) {
  try {
    sessionStorage.setItem(tokenKey(sessionId), token);
  } catch {
    // Kept in memory for this visit.
  }
}

// crypto.randomUUID exists only in secure contexts; the service may well be on plain http.
function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// --- Sessions -----------------------------------------------------------------------------------

let sidebar = null;

function newSessionId() {
  return `s-${uuid4()}`;
}

function sessionFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get("session");
  return id && ID_PATTERN.test(id) ? id : null;
}

// The session lives in the URL's hash: a reload stays in it, and two tabs can hold two sessions.
function navigate(id) {
  if (location.hash !== `#session=${encodeURIComponent(id)}`) {
    location.hash = `session=${encodeURIComponent(id)}`; // hashchange opens it
  } else if (!view || view.sessionId !== id) {
    openSession(id);
  }
}

// --- One open session: its turns, its stream ---------------------------------------------------

let view = null;

function openSession(sessionId) {
  if (view) closeView(view);
  view = {
    sessionId,
    turns: new Map(), // message_id -> { user, toolResults, answer, li }
    results: new Map(), // tool_call_id -> the content of its result, from history's `tool` turns
    source: null,
    lastEventId: null,
    streamToken: loadToken(sessionId),
    historyReady: false,
    historyLoading: null,
    historyAgain: false,
    buffer: [],
    retryMs: 1000,
    retryTimer: null,
    fallbackTimer: null,
    recordTimer: null,
    tree: null, // the message tree from the conversation record, once it has the session
    editing: null, // the message_id of the user message being edited
    closed: false,
  };
  els.messages.replaceChildren();
  els.sessionId.textContent = sessionId;
  els.formError.textContent = "";
  sidebar.open(sessionId);
  updateStop();
  connect(view);
  const v = view;
  v.fallbackTimer = setTimeout(() => {
    if (!v.historyReady) loadHistory(v);
  }, HISTORY_FALLBACK_MS);
}

function closeView(v) {
  v.closed = true;
  clearTimeout(v.retryTimer);
  clearTimeout(v.fallbackTimer);
  clearTimeout(v.recordTimer);
  if (v.source) v.source.close();
  v.source = null;
}

function setConnection(state, text) {
  els.connection.dataset.state = state;
  els.connection.textContent = text;
}

function connect(v) {
  if (v.closed) return;
  if (v.source) v.source.close();
  clearTimeout(v.retryTimer);
  // EventSource resends Last-Event-ID itself on its automatic reconnects; a new EventSource (after a
  // fatal error, or with a new token) carries it in the query instead.
  const source = new EventSource(
    apiUrl(`stream/${encodeURIComponent(v.sessionId)}`, {
      last_event_id: v.lastEventId,
      token: v.streamToken,
    }),
  );
  v.source = source;
  source.addEventListener("open", () => {
    if (v.source !== source) return;
    v.retryMs = 1000;
    setConnection("live", "live");
    // Without a position in the stream, events may have been missed: read history, now that the
    // stream is connected and will deliver anything that ends from here on.
    if (v.lastEventId === null) loadHistory(v);
  });
  source.addEventListener("error", () => {
    if (v.source === source) onConnectionError(v, source);
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (event) => {
      if (v.source === source) onStreamEvent(v, type, event);
    });
  }
}

function onConnectionError(v, source) {
  if (source.readyState === EventSource.CLOSED) {
    // A fatal answer (an HTTP error status): the browser will not retry, so the page does, backing off.
    setConnection("offline", "offline, retrying");
    if (!v.historyReady) loadHistory(v);
    v.retryTimer = setTimeout(() => connect(v), v.retryMs);
    v.retryMs = Math.min(v.retryMs * 2, 15000);
  } else {
    setConnection("reconnecting", "reconnecting");
  }
}

function onStreamEvent(v, type, event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  if (event.lastEventId) v.lastEventId = event.lastEventId;
  if (!v.historyReady) {
    v.buffer.push([type, data]);
    return;
  }
  applyEvent(v, type, data);
}

function applyEvent(v, type, data) {
  if (type === "reset") {
    // The service no longer has the events after our position: history has what ended meanwhile.
    loadHistory(v);
    return;
  }
  if (!data || typeof data.message_id !== "string") return;
  const turn = ensureTurn(v, data.message_id);
  const answer = turn.answer;
  if (answer && answer.done) return; // finished (from history or an earlier end): nothing to add
  switch (type) {
    case "start":
      if (answer && answer.lastSeq >= 0) return;
      turn.answer = { ...emptyAnswer("streaming"), lastSeq: 0 };
      // Sent from another tab or client, or tool results: the prompt is in history.
      if (!promptKnown(turn)) loadHistory(v);
      break;
    case "end":
      turn.answer = finished(data);
      if (!promptKnown(turn)) loadHistory(v);
      lookAtRecord(v);
      break;
    case "answer_error":
      turn.answer = {
        ...(answer || emptyAnswer("error")),
        state: "error",
        done: true,
        note: `Error: ${(data.error && data.error.message) || "the answer failed"}`,
      };
      break;
    default: {
      // A part's delta. Without its `start` (missed, or the answer began before a reset) it still
      // shows: what came before it is in history once the answer ends.
      const current = answer && answer.lastSeq >= 0 ? answer : emptyAnswer("streaming");
      if (typeof data.seq !== "number" || data.seq <= current.lastSeq) return; // already shown
      if (!addPart(current, type, data)) return;
      current.lastSeq = data.seq;
      current.state = "streaming";
      turn.answer = current;
    }
  }
  renderTurn(v, turn);
  updateStop();
}

function promptKnown(turn) {
  return Boolean(turn.user || turn.toolResults || turn.regenerated);
}

async function loadHistory(v) {
  if (v.historyLoading) {
    v.historyAgain = true;
    return v.historyLoading;
  }
  v.historyLoading = (async () => {
    do {
      v.historyAgain = false;
      try {
        const body = await api(`history/${encodeURIComponent(v.sessionId)}`);
        if (v.closed) return;
        applyHistory(v, body.messages || []);
      } catch (error) {
        if (v.closed) return;
        els.formError.textContent = `Could not load the history: ${error.message}`;
      }
      v.historyReady = true;
      for (const [type, data] of v.buffer.splice(0)) applyEvent(v, type, data);
    } while (v.historyAgain && !v.closed);
    loadTree(v);
  })();
  try {
    await v.historyLoading;
  } finally {
    v.historyLoading = null;
  }
}

function applyHistory(v, messages) {
  const order = [];
  for (const m of messages) {
    const turn = ensureTurn(v, m.message_id);
    if (!order.includes(turn)) order.push(turn);
    turn.stored = true;
    if (m.parent_id !== undefined) turn.parentId = m.parent_id;
    if (m.role === "user") {
      turn.user = { content: m.content, userId: m.user_id };
    } else if (m.role === "assistant") {
      turn.answer = finished(m);
    } else if (m.role === "tool") {
      // The prompt of this turn's answer, and shown under the call it answers (in an earlier turn).
      turn.toolResults = true;
      v.results.set(String(m.tool_call_id), m.content || "");
    }
  }
  // History order first, then turns known only from the stream or from this page's own sends.
  for (const turn of v.turns.values()) if (!order.includes(turn)) order.push(turn);
  for (const turn of order) {
    renderTurn(v, turn);
    els.messages.append(turn.li);
  }
  updateStop();
  scrollToEnd(true);
}

function ensureTurn(v, messageId) {
  let turn = v.turns.get(messageId);
  if (!turn) {
    const li = document.createElement("li");
    li.className = "turn";
    li.dataset.messageId = messageId;
    turn = { messageId, user: null, toolResults: false, answer: null, li, accepted: false, stored: false };
    v.turns.set(messageId, turn);
    els.messages.append(li);
  }
  return turn;
}

function renderTurn(v, turn) {
  const nearEnd = isNearEnd();
  if (turn.user) {
    const el = bubble(turn.li, "user");
    el.querySelector(".content").textContent = turn.user.content;
    el.querySelector(".note").textContent = turn.user.note || "";
  }
  if (turn.answer) renderAnswer(bubble(turn.li, "assistant"), turn.answer, v.results);
  renderTurnControls(v, turn);
  scrollToEnd(nearEnd);
}

function isNearEnd() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToEnd(when) {
  if (when) els.messages.scrollTop = els.messages.scrollHeight;
}

// --- Send and Stop -------------------------------------------------------------------------------

// The answer Stop acts on: the newest one still running that the service has accepted.
function runningTurn() {
  if (!view) return null;
  let found = null;
  for (const turn of view.turns.values()) {
    const a = turn.answer;
    if (a && !a.done && (a.state === "streaming" || (a.state === "pending" && turn.accepted))) found = turn;
  }
  return found;
}

function updateStop() {
  const turn = runningTurn();
  els.stop.hidden = !turn;
  if (turn) els.stop.dataset.messageId = turn.messageId;
  else delete els.stop.dataset.messageId;
}

// Sends the composer's message, or (`edit`) an edited message as a new branch after `parentId`.
async function send(edit) {
  els.formError.textContent = "";
  const v = view;
  const text = edit ? edit.text : els.message.value;
  const userId = els.userId.value.trim();
  if (!ID_PATTERN.test(userId)) {
    els.formError.textContent = "User id: 1 to 128 letters, digits or _ . : -";
    els.userId.focus();
    return;
  }
  if (!text.trim()) {
    els.message.focus();
    return;
  }
  save(STORAGE.user, userId);
  const messageId = uuid4();
  const turn = ensureTurn(v, messageId);
  turn.user = { content: text, userId };
  turn.answer = emptyAnswer("pending");
  if (edit) turn.parentId = edit.parentId;
  renderTurn(v, turn);
  scrollToEnd(true);
  if (!edit) els.message.value = "";
  sidebar.sent(v.sessionId, text);
  const body = { session_id: v.sessionId, message: text, user_id: userId, message_id: messageId };
  // An edit names the exchange it follows; null: it replaces the first message.
  if (edit) body.parent_id = edit.parentId;
  try {
    const accepted = await postChat(body);
    turn.accepted = true;
    if (accepted && accepted.stream_token && accepted.stream_token !== v.streamToken) {
      // The service hands out a token for the stream (issue #5): reconnect with it, from where we were.
      v.streamToken = accepted.stream_token;
      saveToken(v.sessionId, v.streamToken);
      if (!v.closed) connect(v);
    }
  } catch (error) {
    turn.user.note = `Not sent: ${error.message}`;
    turn.answer = null;
    turn.li.querySelector('.msg[data-role="assistant"]')?.remove();
    if (edit) {
      loadHistory(v); // the branch it was to replace is still the active one: show it again
    } else if (!v.closed && els.message.value === "") {
      els.message.value = text; // let the user try again
    }
  }
  if (!v.closed) {
    renderTurn(v, turn);
    updateStop();
  }
}

async function stop() {
  const turn = runningTurn();
  if (!turn) return;
  const v = view;
  els.stop.disabled = true;
  try {
    await api(`chat/${encodeURIComponent(turn.messageId)}/cancel`, { method: "POST" });
    // The stream brings the `end` with finish_reason "cancelled"; if it does not come (the stream is
    // down), history has the stored partial answer.
    setTimeout(() => {
      if (!v.closed && turn.answer && !turn.answer.done) loadHistory(v);
    }, 3000);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      loadHistory(v); // it had already finished: show how
    } else {
      els.formError.textContent = `Could not stop the answer: ${error.message}`;
    }
  } finally {
    els.stop.disabled = false;
  }
}

// --- Start --------------------------------------------------------------------------------------

function init() {
  const storedUser = load(STORAGE.user, "");
  els.userId.value = ID_PATTERN.test(storedUser) ? storedUser : `user-${uuid4().slice(0, 8)}`;
  save(STORAGE.user, els.userId.value);
  els.apiKey.value = load(STORAGE.apiKey, "");
  useApiKey(() => els.apiKey.value.trim());
  sidebar = new Sidebar({
    list: els.sessionList,
    more: els.moreSessions,
    search: els.search,
    status: els.sessionStatus,
    userId: () => {
      const id = els.userId.value.trim();
      return ID_PATTERN.test(id) ? id : null;
    },
    onOpen: navigate,
    onDeleted: (id) => {
      if (view && view.sessionId === id) navigate(newSessionId());
    },
  });
  useChatPage({ els, sidebar, renderTurn, ensureTurn, send, loadHistory, updateStop, runningTurn, uuid4 });
  els.userId.addEventListener("change", () => {
    if (ID_PATTERN.test(els.userId.value.trim())) save(STORAGE.user, els.userId.value.trim());
    sidebar.refresh();
  });
  els.apiKey.addEventListener("change", () => {
    save(STORAGE.apiKey, els.apiKey.value.trim());
    sidebar.refresh();
  });
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(null);
  });
  els.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.stop.addEventListener("click", stop);
  els.newSession.addEventListener("click", () => navigate(newSessionId()));
  els.openForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = els.openInput.value.trim();
    if (ID_PATTERN.test(id)) {
      els.openInput.value = "";
      navigate(id);
    }
  });
  window.addEventListener("hashchange", () => {
    const id = sessionFromHash();
    if (id && (!view || view.sessionId !== id)) openSession(id);
  });
  // A new chat unless the URL names a session: the list, from the service, has the others.
  const id = sessionFromHash() || newSessionId();
  history.replaceState(null, "", `#session=${encodeURIComponent(id)}`);
  openSession(id);
  sidebar.refresh();
}

init();
