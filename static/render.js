// The DOM of a message: its bubble, made once and updated in place, and every part of an answer in it
// (text, the collapsed "Thinking" reasoning, a refusal, tool calls with their results). An answer's
// text is rendered as sanitised Markdown (markdown.js); every other text from events is only ever set
// with textContent.

import { renderMarkdown } from "./markdown.js";

export function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// A message's bubble in its turn, made once and then updated in place (an open "Thinking" block stays
// open while the answer streams). Assistant bubbles hold every part, each hidden while it is empty.
export function bubble(li, role) {
  let el = li.querySelector(`.msg[data-role="${role}"]`);
  if (!el) {
    el = element("div", "msg");
    el.dataset.role = role;
    el.dataset.messageId = li.dataset.messageId;
    el.append(element("span", "who", role === "user" ? "You" : "Assistant"));
    if (role === "assistant") {
      const thinking = element("details", "reasoning");
      thinking.append(element("summary", "", "Thinking"), element("p", "reasoning-text"));
      const refusal = element("div", "refusal");
      refusal.append(element("span", "label", "Refused"), element("p", "refusal-text"));
      const calls = element("ol", "tool-calls");
      calls.setAttribute("aria-label", "Tool calls");
      el.append(thinking, element("div", "content markdown"), refusal, calls);
    } else {
      el.append(element("p", "content"));
    }
    el.append(element("p", "note"));
    if (role === "user") li.prepend(el);
    else li.append(el);
  }
  return el;
}

export function renderAnswer(el, answer, results) {
  el.dataset.state = answer.state;
  if (answer.finishReason) el.dataset.finishReason = answer.finishReason;
  el.setAttribute("aria-busy", String(answer.state === "streaming" || answer.state === "pending"));
  const thinking = el.querySelector(".reasoning");
  thinking.hidden = !answer.reasoning;
  thinking.querySelector(".reasoning-text").textContent = answer.reasoning || "";
  const content = el.querySelector(".content");
  if (answer.state === "streaming" || answer.state === "pending") showMarkdownSoon(content, answer.content);
  else showMarkdown(content, answer.content);
  const refusal = el.querySelector(".refusal");
  refusal.hidden = !answer.refusal;
  refusal.querySelector(".refusal-text").textContent = answer.refusal || "";
  const list = el.querySelector(".tool-calls");
  const calls = answer.calls || [];
  list.hidden = calls.length === 0;
  while (list.children.length > calls.length) list.lastElementChild.remove();
  calls.forEach((call, i) => {
    renderCall(list.children[i] || list.appendChild(toolCallItem()), call, results);
  });
  el.querySelector(".note").textContent = answer.note || "";
}

// While an answer streams its text is parsed again as it grows, at most once per animation frame
// however many chunks arrive in between; once it has ended, at once (its final text is never late).
const shown = new WeakMap(); // element -> the text it shows
const due = new Map(); // element -> the text to show at the next frame
let frame = 0;

function showMarkdownSoon(el, text) {
  if (shown.get(el) === text) {
    due.delete(el);
    return;
  }
  due.set(el, text);
  if (!frame) frame = requestAnimationFrame(showDue);
}

function showDue() {
  frame = 0;
  for (const [el, text] of due) showMarkdown(el, text);
}

function showMarkdown(el, text) {
  due.delete(el);
  if (shown.get(el) === text) return;
  renderMarkdown(el, text);
  shown.set(el, text);
}

function toolCallItem() {
  const item = element("li", "tool-call");
  const head = element("p", "tool-head");
  head.append(element("span", "label", "Tool call"), " ", element("code", "tool-name"));
  const result = element("div", "tool-result");
  result.append(element("span", "label", "Result"), element("pre", "tool-result-content"));
  item.append(head, element("pre", "tool-arguments"), result);
  return item;
}

// A call's name and arguments (as they stream; pretty-printed once complete), and its result if known.
function renderCall(item, call, results) {
  item.dataset.toolCallId = call.id;
  item.dataset.state = call.complete ? "complete" : "streaming";
  item.querySelector(".tool-name").textContent = call.name;
  item.querySelector(".tool-arguments").textContent = call.complete ? pretty(call.arguments) : call.arguments;
  const result = item.querySelector(".tool-result");
  const content = results.get(call.id);
  result.hidden = content === undefined;
  result.querySelector(".tool-result-content").textContent = content === undefined ? "" : pretty(content);
}

// JSON indented for reading; any other text as it is.
function pretty(text) {
  try {
    const value = JSON.parse(text);
    if (value !== null && typeof value === "object") return JSON.stringify(value, null, 2);
  } catch {
    // Not JSON: shown as written.
  }
  return text;
}
