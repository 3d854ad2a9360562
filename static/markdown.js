// An answer's text as Markdown (issue #15): marked turns it into HTML and DOMPurify keeps only what
// Markdown makes, so nothing in an answer can run a script, send a form or load anything. Both
// libraries are vendored in ./vendor/ (`make vendor`), served by this service like the page itself.
//
// A model's answer can quote anything, including text an attacker planted in its context, so:
// - HTML written in an answer is shown as the text it is, never interpreted;
// - an image becomes a link to it: showing it would send a request to a host the answer chose
//   (a known way to leak a conversation), and the page's content policy would refuse it anyway;
// - links open in a new tab, without a referrer or access to this page.

import { Marked } from "./vendor/marked/marked.esm.js";
import createDOMPurify from "./vendor/dompurify/purify.es.js";

const marked = new Marked({
  gfm: true,
  renderer: {
    html(token) {
      const shown = this.text({ type: "text", raw: token.text, text: token.text });
      return token.block ? `<p class="raw-html">${shown}</p>` : shown;
    },
    image(token) {
      const label = token.text ? token.tokens : [{ type: "text", raw: token.href, text: token.href }];
      return this.link({ ...token, type: "link", tokens: label });
    },
  },
});

// Everything marked can produce from Markdown, and nothing else.
const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "input",
  "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
];
const ALLOWED_ATTR = ["href", "title", "class", "start", "align", "type", "checked", "disabled"];

// An instance of our own, so its hook touches nothing else that might use DOMPurify.
const purify = createDOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  } else if (node.tagName === "INPUT") {
    node.setAttribute("disabled", ""); // a task list's checkbox: shown, not editable
  }
});

// Replaces `el`'s children with `text` rendered as sanitised Markdown; as plain text should marked fail
// on it, so that an answer is always shown.
export function renderMarkdown(el, text) {
  let fragment;
  try {
    const html = marked.parse(text).trim();
    fragment = purify.sanitize(html, { ALLOWED_TAGS, ALLOWED_ATTR, RETURN_DOM_FRAGMENT: true });
  } catch (error) {
    console.warn("the answer is shown as plain text:", error);
    el.textContent = text;
    return;
  }
  el.replaceChildren(fragment);
}
