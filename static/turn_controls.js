// The controls under a message (issue #15): Edit on a user's message, Regenerate and thumbs up / down
// on an answer, and ‹ 2 / 3 › between a turn's alternatives. No state here: chat.js says what to show
// and what each control does.

import { element } from "./render.js";

function button(name, className, run, label) {
  const b = element("button", className, name);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", run);
  return b;
}

// The controls of one bubble, rebuilt on every render: `alternatives` (ids, in order) and `current`
// for the switcher; `actions`, each { name, run, pressed?, label? }.
export function renderControls(el, { alternatives = [], current, onSwitch, actions = [] }) {
  let bar = el.querySelector(":scope > .controls");
  if (!bar) {
    bar = element("div", "controls");
    el.append(bar);
  }
  const parts = [];
  const index = alternatives.indexOf(current);
  if (alternatives.length > 1 && index >= 0) {
    const nav = element("span", "branches");
    nav.setAttribute("role", "group");
    nav.setAttribute("aria-label", "Versions");
    const previous = button("‹", "branch-previous", () => onSwitch(alternatives[index - 1]), "Previous version");
    const next = button("›", "branch-next", () => onSwitch(alternatives[index + 1]), "Next version");
    previous.disabled = index === 0;
    next.disabled = index === alternatives.length - 1;
    nav.append(previous, element("span", "branch-position", `${index + 1} / ${alternatives.length}`), next);
    parts.push(nav);
  }
  for (const action of actions) {
    const b = button(action.name, "control", action.run, action.label);
    if (action.pressed !== undefined) b.setAttribute("aria-pressed", String(action.pressed));
    if (action.disabled) b.disabled = true;
    parts.push(b);
  }
  bar.replaceChildren(...parts);
  bar.hidden = parts.length === 0;
}

// The user's message in a form to edit it; `onSave(text)` sends it, `onCancel()` puts it back.
export function editForm(el, text, { onSave, onCancel }) {
  const form = element("form", "edit");
  const label = element("label", "visually-hidden", "Edit the message");
  const area = element("textarea");
  area.id = `edit-${el.dataset.messageId}`;
  label.htmlFor = area.id;
  area.value = text;
  area.rows = Math.min(8, text.split("\n").length + 1);
  area.required = true;
  const row = element("div", "row");
  const save = element("button", "", "Save and send");
  save.type = "submit";
  row.append(save, button("Cancel", "", onCancel));
  form.append(label, area, row);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (area.value.trim()) onSave(area.value);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") onCancel();
  });
  el.querySelector(".content").hidden = true;
  el.append(form);
  area.focus();
}
