// What the controls under a message do (issue #15): Edit (a new branch from the message before it),
// Regenerate (another answer to the same message), ‹ 2 / 3 › (make another branch the active one) and
// thumbs up / down; and the session's message tree they need (GET /conversations/{id}), read again
// after an answer ends until the conversation record has caught up.
//
// chat.js owns the open session (`v`: its turns and stream) and hands this module what it needs of the
// page through `useChatPage`.

import { emptyAnswer } from "./answer.js";
import { api, ApiError, sleep } from "./api.js";
import { answerAlternatives, leafOf, promptAlternatives, treeOf } from "./branches.js";
import { bubble } from "./render.js";
import { editForm, renderControls } from "./turn_controls.js";

// An ended answer reaches the conversation record a moment later: how long apart to look for it.
const RECORD_LOOKS = [300, 1000, 3000];

// { els, sidebar, renderTurn, ensureTurn, send, loadHistory, updateStop, runningTurn, uuid4 } of chat.js.
let page = null;

export function useChatPage(hooks) {
  page = hooks;
}

export function renderTurnControls(v, turn) {
  const idle = !page.runningTurn();
  const onSwitch = (id) => switchBranch(v, id);
  if (turn.user) {
    const editable = idle && (turn.stored || turn.accepted) && v.editing === null;
    renderControls(bubble(turn.li, "user"), {
      alternatives: v.tree && idle ? promptAlternatives(v.tree, turn.messageId) : [],
      current: turn.messageId,
      onSwitch,
      actions: editable ? [{ name: "Edit", run: () => startEdit(v, turn) }] : [],
    });
  }
  const answer = turn.answer;
  if (!answer) return;
  const actions = [];
  if (answer.done && idle) actions.push({ name: "Regenerate", run: () => regenerate(v, turn) });
  if (answer.done && answer.state === "done") {
    // Rated once the answer is in the record (before, the service answers 409): as the tree says, or,
    // without a tree (a session beyond the sidebar's pages), when history had it.
    const archived = v.tree ? v.tree.exchanges.has(turn.messageId) : turn.stored && !page.sidebar.knows(v.sessionId);
    for (const [rating, name] of [["up", "👍"], ["down", "👎"]]) {
      const label = rating === "up" ? "Good answer" : "Bad answer";
      actions.push({
        name,
        label,
        pressed: turn.feedback === rating,
        disabled: !archived, // until then the service would answer 409
        run: () => rate(v, turn, rating),
      });
    }
  }
  renderControls(bubble(turn.li, "assistant"), {
    alternatives: v.tree && idle ? answerAlternatives(v.tree, turn.messageId) : [],
    current: turn.messageId,
    onSwitch,
    actions,
  });
}

function renderAllTurns(v) {
  for (const turn of v.turns.values()) page.renderTurn(v, turn);
}

// The session's message tree from the conversation record; none until its first turn is archived, so
// it is asked for once the service has listed the session (before, it would be a 404).
export async function loadTree(v) {
  if (!page.sidebar.knows(v.sessionId)) return;
  try {
    const detail = await api(`conversations/${encodeURIComponent(v.sessionId)}`);
    if (v.closed) return;
    v.tree = treeOf(detail);
    for (const turn of v.turns.values()) {
      const exchange = v.tree.exchanges.get(turn.messageId);
      if (exchange && exchange.feedback && !turn.feedback) turn.feedback = exchange.feedback;
    }
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) console.warn("no message tree:", error);
    return;
  }
  renderAllTurns(v);
}

// After an answer ends: the sidebar and the tree, again until the record has caught up.
export function lookAtRecord(v, attempt = 0) {
  if (attempt === 0) page.sidebar.awaitRecord(v.sessionId);
  clearTimeout(v.recordTimer);
  v.recordTimer = setTimeout(async () => {
    if (v.closed) return;
    if (!page.sidebar.knows(v.sessionId)) await page.sidebar.refresh();
    await loadTree(v);
    const caughtUp =
      v.tree &&
      [...v.turns.values()].every((t) => !t.answer || !t.answer.done || v.tree.exchanges.has(t.messageId));
    if (!v.closed && !caughtUp && attempt + 1 < RECORD_LOOKS.length) lookAtRecord(v, attempt + 1);
  }, RECORD_LOOKS[attempt]);
}

// The turns shown, in order.
function shownTurns(v) {
  return Array.from(page.els.messages.children, (li) => v.turns.get(li.dataset.messageId)).filter(Boolean);
}

// The exchange a turn follows: as stored, or else the one shown before it (the active branch's).
function parentOf(v, turn) {
  const exchange = v.tree && v.tree.exchanges.get(turn.messageId);
  if (exchange) return exchange.parent;
  if (turn.parentId !== undefined) return turn.parentId;
  const shown = shownTurns(v);
  const index = shown.indexOf(turn);
  return index > 0 ? shown[index - 1].messageId : null;
}

// Takes `turn` (or only its answer) and every later turn off the page: another branch replaces them.
function dropFrom(v, turn, { keepPrompt = false } = {}) {
  const shown = shownTurns(v);
  for (const later of shown.slice(shown.indexOf(turn) + 1)) {
    later.li.remove();
    v.turns.delete(later.messageId);
  }
  if (keepPrompt && (turn.user || turn.toolResults)) {
    turn.answer = null;
    turn.li.querySelector('.msg[data-role="assistant"]')?.remove();
  } else {
    turn.li.remove();
    v.turns.delete(turn.messageId);
  }
}

function startEdit(v, turn) {
  v.editing = turn.messageId;
  renderAllTurns(v);
  const el = bubble(turn.li, "user");
  const done = () => {
    el.querySelector(".edit")?.remove();
    el.querySelector(".content").hidden = false;
    v.editing = null;
    renderAllTurns(v);
  };
  editForm(el, turn.user.content, {
    onCancel: done,
    onSave: (text) => {
      const parentId = parentOf(v, turn);
      done();
      dropFrom(v, turn);
      page.send({ text, parentId });
    },
  });
}

async function regenerate(v, turn) {
  page.els.formError.textContent = "";
  const userId = page.els.userId.value.trim();
  const messageId = page.uuid4();
  dropFrom(v, turn, { keepPrompt: true });
  const fresh = page.ensureTurn(v, messageId);
  fresh.regenerated = true;
  fresh.answer = emptyAnswer("pending");
  page.renderTurn(v, fresh);
  try {
    const accepted = await api(`chat/${encodeURIComponent(turn.messageId)}/regenerate`, {
      method: "POST",
      body: { user_id: userId, message_id: messageId },
    });
    fresh.accepted = true;
    const id = accepted && accepted.message_id;
    if (id && id !== messageId) {
      // The service named the new answer itself: follow its id.
      v.turns.delete(messageId);
      if (v.turns.has(id)) {
        fresh.li.remove(); // its stream events came first
      } else {
        fresh.messageId = id;
        fresh.li.dataset.messageId = id;
        fresh.li.querySelectorAll(".msg").forEach((el) => (el.dataset.messageId = id));
        v.turns.set(id, fresh);
      }
    }
  } catch (error) {
    page.els.formError.textContent = `Could not regenerate the answer: ${error.message}`;
    fresh.li.remove();
    v.turns.delete(messageId);
    page.loadHistory(v); // the answer it was to replace is still the active one: show it again
    return;
  }
  if (!v.closed) {
    page.renderTurn(v, fresh);
    page.updateStop();
  }
}

// Makes the branch through `id` the session's active one, then shows it.
async function switchBranch(v, id) {
  page.els.formError.textContent = "";
  const leaf = v.tree ? leafOf(v.tree, id) : id;
  try {
    await api(`conversations/${encodeURIComponent(v.sessionId)}/branch`, {
      method: "POST",
      body: { message_id: leaf },
    });
  } catch (error) {
    page.els.formError.textContent = `Could not switch to that version: ${error.message}`;
    return;
  }
  if (v.closed) return;
  v.turns.clear();
  page.els.messages.replaceChildren();
  page.loadHistory(v);
}

// One rating per answer and user; a new one replaces it. An answer that ended a moment ago may not be
// in the conversation record yet: the service says so (409, Retry-After: 1) and the page tries again.
async function rate(v, turn, rating) {
  page.els.formError.textContent = "";
  const body = { rating, user_id: page.els.userId.value.trim() };
  for (let attempt = 1; ; attempt++) {
    try {
      await api(`chat/${encodeURIComponent(turn.messageId)}/feedback`, { method: "POST", body });
      turn.feedback = rating;
      break;
    } catch (error) {
      if (error instanceof ApiError && error.status === 409 && attempt < 5) {
        await sleep(1000);
        continue;
      }
      page.els.formError.textContent = `Could not save the feedback: ${error.message}`;
      break;
    }
  }
  if (!v.closed) page.renderTurn(v, turn);
}
