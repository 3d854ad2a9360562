// A conversation's message tree (GET /conversations/{id}, issue #15) and what the page offers on it:
// the alternatives of a turn (edits of a user's message, regenerated answers), shown as ‹ 2 / 3 ›, and
// which branch to make active when the user picks one.
//
// The turns of one exchange share its message_id, and each exchange has a parent_id: the exchange it
// follows. An edited message is a new exchange with the edited one's parent; a regenerated answer is
// an exchange of its own holding only an answer, whose parent is the exchange of the user's message.

// The tree from the conversation's stored turns: exchanges by message_id, in the order they were stored.
export function treeOf(detail) {
  const exchanges = new Map();
  const children = new Map();
  const turnIds = new Set((detail && detail.active_branch) || []);
  const active = new Set(); // the exchanges on the active branch
  const answering = new Set(); // the exchanges whose answer is on it (a regenerated one replaces its prompt's)
  for (const stored of (detail && detail.messages) || []) {
    const role = stored.turn && stored.turn.role;
    if (turnIds.has(stored.id)) {
      active.add(stored.message_id);
      if (role === "assistant") answering.add(stored.message_id);
    }
    let exchange = exchanges.get(stored.message_id);
    if (!exchange) {
      exchange = { id: stored.message_id, parent: stored.parent_id ?? null, roles: new Set(), feedback: null };
      exchanges.set(stored.message_id, exchange);
      const siblings = children.get(exchange.parent) || [];
      siblings.push(exchange.id);
      children.set(exchange.parent, siblings);
    }
    exchange.roles.add(role);
    if (stored.feedback) exchange.feedback = stored.feedback.rating || stored.feedback;
  }
  return { exchanges, children, active, answering };
}

// Alternatives exclude each other: at most one of them is on the active branch. More than one there
// means a record without branches (whose turns all lack a parent), where they are not alternatives.
function exclusive(tree, ids, id, on = tree.active) {
  return ids.filter((x) => on.has(x)).length > 1 ? [id] : ids;
}

function asks(exchange) {
  return exchange.roles.has("user") || exchange.roles.has("tool");
}

// The exchanges that begin with a user's message after the same parent: a message and its edits.
export function promptAlternatives(tree, id) {
  const exchange = tree.exchanges.get(id);
  if (!exchange) return [id];
  const all = (tree.children.get(exchange.parent) || []).filter((x) => asks(tree.exchanges.get(x)));
  return all.length ? exclusive(tree, all, id) : [id];
}

// The answers to one prompt: its own, then those regenerated from it.
export function answerAlternatives(tree, id) {
  const exchange = tree.exchanges.get(id);
  if (!exchange) return [id];
  const prompt = asks(exchange) ? exchange : tree.exchanges.get(exchange.parent);
  if (!prompt) return [id];
  const regenerated = (tree.children.get(prompt.id) || []).filter((x) => !asks(tree.exchanges.get(x)));
  const all = [...(prompt.roles.has("assistant") ? [prompt.id] : []), ...regenerated];
  return all.includes(id) ? exclusive(tree, all, id, tree.answering) : [id];
}

// The branch to show when the user picks `id`: its newest descendants, down to a leaf.
export function leafOf(tree, id) {
  let leaf = id;
  for (let steps = 0; steps < tree.exchanges.size; steps++) {
    // An exchange with an answer of its own continues with the messages after it: its regenerated
    // answers are alternatives to that answer, not its continuation.
    const own = tree.exchanges.get(leaf)?.roles.has("assistant");
    const next = (tree.children.get(leaf) || []).filter((x) => !own || asks(tree.exchanges.get(x)));
    if (!next.length) break;
    leaf = next[next.length - 1];
  }
  return leaf;
}
