// The sidebar (issue #15): the user's conversations as the service keeps them (GET /conversations),
// not this browser's memory, so they follow the user to another browser. Each can be opened, renamed,
// pinned or deleted (PATCH and DELETE /conversations/{id}); the search box asks
// GET /conversations/search. Pinned conversations come first, then the newest.
//
// A conversation reaches the list once its first turn has been archived, a moment after it was sent:
// until then a session the user sent to in this visit is shown all the same, titled by what was sent.

import { api, ApiError } from "./api.js";
import { element } from "./render.js";

const PAGE = 50;
const SEARCH_DELAY_MS = 250;
// A turn reaches the conversation record a moment after it is stored: how long apart to look again.
const RECORD_LOOKS_MS = [300, 1000, 3000];

export class Sidebar {
  constructor({ list, more, search, status, userId, onOpen, onDeleted }) {
    Object.assign(this, { list, more, search, status, userId, onOpen, onDeleted });
    this.conversations = [];
    this.cursor = null;
    this.current = null;
    this.localTitles = new Map(); // session id -> title, until the service lists it
    this.listed = new Set(); // every id the service has listed: the record has them
    this.pending = new Map(); // id -> the changes (PATCH) on their way, shown until the service answers
    this.editing = null; // the id whose title is being edited
    this.renaming = null; // and its form
    this.confirming = null; // the id whose deletion awaits a confirmation
    this.loads = 0; // lists asked for: an answer is used only if nothing was asked or changed since
    this.inFlight = 0; // lists on their way: the list is `aria-busy` meanwhile
    this.searchTimer = null;
    this.lookTimer = null;
    search.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.refresh(), SEARCH_DELAY_MS);
    });
    search.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && search.value) {
        search.value = "";
        this.refresh();
      }
    });
    more.addEventListener("click", () => this.refresh({ more: true }));
  }

  // The open session: marked in the list, and shown even before the service lists it.
  open(sessionId) {
    this.current = sessionId;
    this.render();
  }

  // What the user sent first in a session the service does not list yet.
  sent(sessionId, text) {
    if (!this.localTitles.has(sessionId)) this.localTitles.set(sessionId, text.split("\n")[0].slice(0, 80));
    this.render();
  }

  // Refreshes the list until the service lists `sessionId` (a few times, further and further apart).
  awaitRecord(sessionId, attempt = 0) {
    clearTimeout(this.lookTimer);
    this.lookTimer = setTimeout(async () => {
      await this.refresh();
      if (!this.lists(sessionId) && attempt + 1 < RECORD_LOOKS_MS.length) this.awaitRecord(sessionId, attempt + 1);
    }, RECORD_LOOKS_MS[attempt]);
  }

  async refresh({ more = false } = {}) {
    const user = this.userId();
    if (!user) return;
    const query = this.search.value.trim();
    const load = ++this.loads; // a newer load's answer wins
    this.busy(+1);
    try {
      const page = query
        ? await api("conversations/search", { params: { user_id: user, q: query, limit: PAGE } })
        : await api("conversations", {
            params: { user_id: user, limit: PAGE, cursor: more ? this.cursor : null },
          });
      if (load !== this.loads) return;
      const found = page.conversations || [];
      this.conversations = more ? [...this.conversations, ...found] : found;
      this.cursor = query ? null : page.next_cursor || null;
      for (const c of found) {
        this.localTitles.delete(c.id);
        this.listed.add(c.id);
      }
      this.status.textContent = query && !found.length ? "No conversation matches." : "";
    } catch (error) {
      if (load !== this.loads) return;
      this.status.textContent = `Could not load the conversations: ${error.message}`;
    } finally {
      this.busy(-1);
    }
    this.render();
  }

  busy(change) {
    this.inFlight += change;
    this.list.setAttribute("aria-busy", String(this.inFlight > 0));
  }

  // Called once the service has made a change of ours: a list asked for before then may have been read
  // before the change, and its answer, when it comes, must not undo it.
  changed() {
    this.loads++;
  }

  // Listed now? A conversation whose first turn has not been archived is not.
  lists(sessionId) {
    return this.conversations.some((c) => c.id === sessionId);
  }

  // Ever listed in this visit, so in the record (unless deleted since).
  knows(sessionId) {
    return this.listed.has(sessionId);
  }

  render() {
    const searching = Boolean(this.search.value.trim());
    const shown = this.conversations
      .map((c) => (this.pending.has(c.id) ? { ...c, ...this.pending.get(c.id) } : c))
      .sort((a, b) => Number(b.pinned) - Number(a.pinned));
    if (!searching) {
      const local = new Set(this.localTitles.keys());
      if (this.current) local.add(this.current);
      for (const id of [...local].reverse()) {
        if (!this.lists(id)) shown.unshift({ id, title: this.localTitles.get(id) || "", local: true });
      }
    }
    // The rename form moves into the new list: a node taken out of the page loses the focus, so what the
    // user types next would go nowhere. The field gets it back, with its caret or selection.
    const typing = this.renaming?.contains(document.activeElement) ? document.activeElement : null;
    const caret = typing && [typing.selectionStart, typing.selectionEnd, typing.selectionDirection];
    this.list.replaceChildren(...shown.map((c) => this.item(c)));
    if (typing?.isConnected) {
      typing.focus({ preventScroll: true });
      typing.setSelectionRange(...caret);
    }
    this.more.hidden = !this.cursor;
  }

  item(c) {
    const li = element("li", "conversation");
    li.dataset.sessionId = c.id;
    if (c.pinned) li.dataset.pinned = "true";
    if (this.editing === c.id) {
      // The same form across refreshes of the list, so that what the user typed stays.
      if (!this.renaming || this.renaming.dataset.sessionId !== c.id) this.renaming = this.renameForm(c);
      li.append(this.renaming);
      return li;
    }
    const open = element("button", "open", c.title || "New chat");
    open.type = "button";
    open.title = c.id;
    open.dataset.sessionId = c.id;
    if (c.id === this.current) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => this.onOpen(c.id));
    li.append(open);
    if (c.snippet) li.append(element("p", "snippet", c.snippet));
    if (c.local) return li; // nothing to rename or delete on the service yet
    const actions = element("div", "conversation-actions");
    if (this.confirming === c.id) {
      const yes = this.action("Confirm delete", () => this.remove(c.id));
      yes.classList.add("danger");
      actions.append(
        yes,
        this.action("Cancel", () => {
          this.confirming = null;
          this.render();
        }),
      );
    } else {
      const pin = this.action(c.pinned ? "Unpin" : "Pin", () => this.change(c.id, { pinned: !c.pinned }));
      pin.setAttribute("aria-pressed", String(Boolean(c.pinned)));
      actions.append(
        pin,
        this.action("Rename", () => {
          this.editing = c.id;
          this.render();
          this.list.querySelector(".rename input")?.focus();
        }),
        this.action("Delete", () => {
          this.confirming = c.id;
          this.render();
        }),
      );
    }
    li.append(actions);
    return li;
  }

  action(name, run) {
    const button = element("button", "action", name);
    button.type = "button";
    button.addEventListener("click", run);
    return button;
  }

  renameForm(c) {
    const form = element("form", "rename");
    form.dataset.sessionId = c.id;
    const label = element("label", "visually-hidden", "New title");
    const input = element("input");
    input.id = `rename-${c.id}`;
    label.htmlFor = input.id;
    input.value = c.title || "";
    input.required = true;
    input.maxLength = 200;
    input.autocomplete = "off";
    const save = element("button", "action", "Save");
    save.type = "submit";
    const cancel = this.action("Cancel", () => {
      this.editing = null;
      this.renaming = null;
      this.render();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") cancel.click();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim().replace(/\s+/g, " "); // as the service keeps it
      if (!title) return;
      this.editing = null;
      this.renaming = null;
      await this.change(c.id, { title });
    });
    form.append(label, input, save, cancel);
    return form;
  }

  // Shown at once, and kept over any list answered meanwhile (it may have been read before the change);
  // taken back, with the service's reason, if the service refuses it.
  async change(id, changes) {
    const shown = { ...this.pending.get(id), ...changes };
    this.pending.set(id, shown);
    this.render();
    try {
      const updated = await api(`conversations/${encodeURIComponent(id)}`, { method: "PATCH", body: changes });
      this.changed();
      this.conversations = this.conversations.map((c) => (c.id === id ? { ...c, ...updated } : c));
      this.status.textContent = "";
    } catch (error) {
      this.status.textContent = `Could not change the conversation: ${error.message}`;
    }
    if (this.pending.get(id) === shown) this.pending.delete(id); // unless another change followed
    this.render();
  }

  async remove(id) {
    this.confirming = null;
    try {
      await api(`conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) {
        this.status.textContent = `Could not delete the conversation: ${error.message}`;
        this.render();
        return;
      }
    }
    this.changed();
    this.conversations = this.conversations.filter((c) => c.id !== id);
    this.localTitles.delete(id);
    this.listed.delete(id);
    this.status.textContent = "";
    this.render();
    this.onDeleted(id);
  }
}
