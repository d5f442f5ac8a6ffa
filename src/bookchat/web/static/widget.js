/*! bookchat widget: chat with this book, no dependencies; data-* attributes: docs/WIDGET.md */
// `script` is captured on the first run: document.currentScript is null once deferred.
(function boot(script) {
"use strict";
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", () => boot(script));
  return;
}
if (window.BookChat) return; // the script tag was included twice
window.BookChat = {};

const ds = (script && script.dataset) || {};
const scriptOrigin = script && script.src ? new URL(script.src, location.href).origin : location.origin;
const API = (ds.apiBase || scriptOrigin).replace(/\/+$/, "");
const TITLE = ds.title || "Ask the book";
const STORE_KEY = "bookchat:" + (ds.storageKey || API);
const MAX_MESSAGE = 4000;
const MAX_SELECTION = 10000;
const SELECTION_QUESTION = "Explain this passage.";

// --- storage
// Token and session survive reloads; storage can throw (private mode, quotas).
function stored() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY) || "{}") || {}; } catch (e) { return {}; }
}
function store(patch) {
  const state = stored();
  for (const key in patch) {
    if (patch[key] == null) delete state[key];
    else state[key] = patch[key];
  }
  try { localStorage.setItem(STORE_KEY, JSON.stringify(state)); } catch (e) { /* works, not restored */ }
}

// --- SSE parsing
// EventSource cannot POST, so the stream is parsed by hand: events may be split
// anywhere across network chunks, lines end in \n, \r\n or \r, ":" lines are pings.
function SSEParser(onEvent) {
  this.buf = "";
  this.data = [];
  this.event = "";
  this.lastId = "";
  this.onEvent = onEvent;
}
SSEParser.prototype.push = function (text) {
  this.buf += text;
  const eol = /\r\n|\r|\n/g;
  let start = 0;
  let match;
  while ((match = eol.exec(this.buf))) {
    // A trailing "\r" may be half of a "\r\n" whose "\n" is in the next chunk.
    if (match[0] === "\r" && match.index === this.buf.length - 1) break;
    this.line(this.buf.slice(start, match.index));
    start = eol.lastIndex;
  }
  this.buf = this.buf.slice(start);
};
SSEParser.prototype.end = function () {
  if (this.buf.endsWith("\r")) this.line(this.buf.slice(0, -1));
  this.buf = ""; // an event without its blank line is incomplete: dropped, as per spec
};
SSEParser.prototype.line = function (line) {
  if (line === "") {
    if (this.data.length) this.onEvent(this.event || "message", this.data.join("\n"), this.lastId);
    this.data = [];
    this.event = "";
    return;
  }
  if (line[0] === ":") return; // comment: the server's keep-alive ping
  const colon = line.indexOf(":");
  const field = colon < 0 ? line : line.slice(0, colon);
  let value = colon < 0 ? "" : line.slice(colon + 1);
  if (value[0] === " ") value = value.slice(1);
  if (field === "data") this.data.push(value);
  else if (field === "event") this.event = value;
  else if (field === "id") this.lastId = value;
};

// --- DOM helpers
// Built from nodes and textContent: model output is never parsed as HTML.
function h(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const key in attrs || {}) {
    const value = attrs[key];
    if (value == null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of [].concat(children || [])) {
    if (child != null) node.append(child);
  }
  return node;
}

function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return /^https?:$/.test(parsed.protocol) ? parsed.href : null; // never javascript: etc.
  } catch (e) { return null; }
}

function sourceName(c) {
  return [...new Set([c.title, c.section])].filter(Boolean).join(" › ");
}

function citationLink(citation, label, cls) {
  const href = safeUrl(citation.url);
  const name = sourceName(citation);
  if (!href) return h("span", { text: label, title: name });
  const link = h("a", { class: cls || "bkc-cite", href, title: name, "data-n": citation.n, text: label });
  // Same-site deep links stay in the tab (the chat is restored); others open a new one.
  if (new URL(href).origin !== location.origin) {
    link.target = "_blank";
    link.rel = "noopener";
  }
  return link;
}

// Inline: `code`, **bold** and [n] / [1, 2] / [1-3] citation markers.
const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\[(\d+(?:\s*[,–-]\s*\d+)*)\]/g;
function inline(parent, text, cites) {
  let last = 0;
  let match;
  INLINE.lastIndex = 0;
  while ((match = INLINE.exec(text))) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    if (match[1] != null) parent.append(h("code", { text: match[1] }));
    else if (match[2] != null) parent.append(h("strong", { text: match[2] }));
    else parent.append(citationMarkers(match[0], match[3], cites));
    last = INLINE.lastIndex;
  }
  if (last < text.length) parent.append(text.slice(last));
}
function citationMarkers(raw, list, cites) {
  const numbers = [];
  for (const part of list.split(",")) {
    const range = part.split(/[–-]/).map((x) => parseInt(x, 10));
    for (let n = range[0]; n <= (range[1] || range[0]) && numbers.length < 20; n++) numbers.push(n);
  }
  if (!numbers.every((n) => cites[n])) return raw;
  const frag = document.createDocumentFragment();
  for (const n of numbers) frag.append(citationLink(cites[n], "[" + n + "]"));
  return frag;
}

// Block: paragraphs, "- " / "1. " lists, ``` fences (an open fence renders while streaming).
function renderMarkdown(target, text, cites) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) {
      const p = h("p");
      inline(p, para.join("\n"), cites);
      out.append(p);
    }
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*```/.test(line)) {
      flush();
      list = null;
      const code = [];
      while (++i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i]);
      out.append(h("pre", {}, h("code", { text: code.join("\n") })));
      continue;
    }
    const item = /^\s*(?:[-*•]|(\d+)[.)])\s+(.*)$/.exec(line);
    if (item) {
      flush();
      const tag = item[1] ? "ol" : "ul";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = h(tag);
        out.append(list);
      }
      const li = h("li");
      inline(li, item[2], cites);
      list.append(li);
    } else if (!line.trim()) {
      flush();
      list = null;
    } else {
      list = null;
      para.push(line.replace(/^#{1,6}\s+/, ""));
    }
  }
  flush();
  target.replaceChildren(out);
}

// --- styles
const CSS = `
.bkc-root{--ka:#2e6bd8;--kbg:#fff;--kfg:#1c1e21;--km:#5f6670;--kl:#dde1e6;--kb:#f2f4f7;--ke:#b3261e;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--kfg)}
html[data-theme=dark] .bkc-root{--ka:#6ea0ff;--kbg:#1e2126;--kfg:#e8eaed;--km:#a2a8b0;--kl:#3a3f47;--kb:#2a2e35;--ke:#ff8a80}
.bkc-root *,.bkc-root *::before,.bkc-root *::after{box-sizing:border-box}
.bkc-root [hidden]{display:none!important}
.bkc-root button,.bkc-root textarea{font:inherit;color:inherit}
.bkc-root :focus-visible{outline:2px solid var(--ka);outline-offset:2px}
.bkc-launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;display:flex;align-items:center;gap:8px;padding:12px 18px;border:0;border-radius:999px;background:var(--ka);color:#fff!important;font-weight:600;box-shadow:0 6px 20px rgba(0,0,0,.22);cursor:pointer}
.bkc-launcher svg{width:20px;height:20px;fill:currentColor}
.bkc-panel{position:fixed;right:20px;bottom:84px;z-index:2147483000;width:min(410px,calc(100vw - 24px));height:min(620px,calc(100vh - 110px));display:flex;flex-direction:column;background:var(--kbg);border:1px solid var(--kl);border-radius:14px;box-shadow:0 12px 40px rgba(0,0,0,.25);overflow:hidden}
.bkc-head{display:flex;align-items:center;gap:6px;padding:10px 10px 10px 16px;border-bottom:1px solid var(--kl)}
.bkc-title{flex:1;margin:0;font-size:16px;font-weight:650;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bkc-btn{border:1px solid var(--kl);background:transparent;border-radius:8px;padding:4px 10px;cursor:pointer;font-size:13px}
.bkc-btn:hover{background:var(--kb)}
.bkc-x{border:0;background:transparent;font-size:22px;line-height:1;padding:2px 8px;cursor:pointer;border-radius:8px}
.bkc-log{flex:1;overflow-y:auto;padding:14px 14px 4px;display:flex;flex-direction:column;gap:12px}
.bkc-welcome{color:var(--km);font-size:14px;margin:auto 8px;text-align:center}
.bkc-msg{display:flex;flex-direction:column;max-width:92%}
.bkc-user{align-self:flex-end;align-items:flex-end}
.bkc-bot{align-self:flex-start}
.bkc-bubble{padding:9px 13px;border-radius:14px;overflow-wrap:anywhere}
.bkc-user .bkc-bubble{background:var(--ka);color:#fff;border-bottom-right-radius:4px;white-space:pre-wrap}
.bkc-bot .bkc-bubble{background:var(--kb);border-bottom-left-radius:4px}
.bkc-bubble p{margin:0 0 .55em;white-space:pre-line}
.bkc-bubble p:last-child{margin-bottom:0}
.bkc-bubble ul,.bkc-bubble ol{margin:0 0 .55em;padding-left:1.3em}
.bkc-bubble pre{margin:0 0 .55em;padding:8px;border-radius:8px;background:rgba(0,0,0,.07);overflow-x:auto;font-size:13px}
.bkc-bubble code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.bkc-cite{font-size:.78em;vertical-align:super;text-decoration:none;color:var(--ka);font-weight:600;margin-left:1px}
.bkc-quote{font-size:12px;opacity:.9;border-left:3px solid rgba(255,255,255,.7);padding-left:8px;margin-bottom:4px;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.bkc-bubble .bkc-sources{margin:8px 0 0;padding:8px 0 0;border-top:1px solid var(--kl);list-style:none;font-size:13px}
.bkc-sources li{margin:2px 0}
.bkc-sources a{color:var(--ka)}
.bkc-note{font-size:13px;color:var(--km);margin:6px 0 0}
.bkc-error .bkc-note{color:var(--ke)}
.bkc-actions{display:flex;gap:6px;margin-top:4px}
.bkc-actions .bkc-btn{font-size:12px;padding:2px 8px;color:var(--km)}
.bkc-actions .bkc-btn[aria-pressed=true]{color:var(--ka);border-color:var(--ka)}
.bkc-dots{display:inline-flex;gap:4px;padding:4px 0}
.bkc-dots i{width:7px;height:7px;border-radius:50%;background:var(--km);animation:bkc-blink 1.2s infinite}
.bkc-dots i:nth-child(2){animation-delay:.2s}.bkc-dots i:nth-child(3){animation-delay:.4s}
@keyframes bkc-blink{0%,80%,100%{opacity:.25}40%{opacity:1}}
@media (prefers-reduced-motion:reduce){.bkc-dots i{animation:none}}
.bkc-form{border-top:1px solid var(--kl);padding:10px}
.bkc-attached{display:flex;gap:6px;align-items:flex-start;font-size:12px;background:var(--kb);border-left:3px solid var(--ka);border-radius:6px;padding:6px 8px;margin-bottom:8px}
.bkc-attached span{flex:1;max-height:3.2em;overflow:hidden}
.bkc-row{display:flex;gap:8px;align-items:flex-end}
.bkc-input{flex:1;resize:none;min-height:40px;max-height:140px;padding:9px 12px;border:1px solid var(--kl);border-radius:10px;background:var(--kbg)}
.bkc-send,.bkc-stop{height:40px;padding:0 14px;border:0;border-radius:10px;background:var(--ka);color:#fff!important;font-weight:600;cursor:pointer}
.bkc-stop{background:var(--kfg);color:var(--kbg)!important}
.bkc-status{font-size:13px;color:var(--ke);margin:6px 2px 0;min-height:0}
.bkc-status:empty{display:none}
.bkc-foot{font-size:11px;color:var(--km);margin:6px 2px 0}
.bkc-chip{position:absolute;z-index:2147483001;padding:6px 12px;border:0;border-radius:8px;background:var(--kfg);color:var(--kbg)!important;font-size:13px;font-weight:600;box-shadow:0 4px 14px rgba(0,0,0,.25);cursor:pointer}
`;

// --- the widget (the page is parsed by now)
document.head.append(h("style", { id: "bkc-style", text: CSS }));
const ids = "bkc-" + Math.random().toString(36).slice(2, 8);

const svg = (tag) => document.createElementNS("http://www.w3.org/2000/svg", tag);
const icon = svg("svg");
icon.setAttribute("viewBox", "0 0 24 24");
icon.setAttribute("aria-hidden", "true");
const path = svg("path");
path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6v2h2V9H7zm4 0v2h2V9h-2zm4 0v2h2V9h-2z");
icon.append(path);

const launcher = h("button", {
  type: "button", class: "bkc-launcher", "aria-controls": ids + "-panel", "aria-expanded": "false",
  onclick: () => (panel.hidden ? openPanel() : closePanel()),
}, [icon, h("span", { text: TITLE })]);

const log = h("div", { class: "bkc-log", role: "region", "aria-label": "Conversation", tabindex: "0" });
const welcome = h("p", {
  class: "bkc-welcome",
  text: "Ask anything about this book: answers link to the sections they cite. Tip: highlight a passage to ask about it alone.",
});
const input = h("textarea", {
  class: "bkc-input", rows: "1", maxlength: String(MAX_MESSAGE), "aria-label": "Your question",
  placeholder: "Ask a question…",
});
const send = h("button", { type: "submit", class: "bkc-send", text: "Send" });
const stop = h("button", {
  type: "button", class: "bkc-stop", text: "Stop", hidden: true, "aria-label": "Stop the answer",
  onclick: () => current && current.abort(),
});
const attachedText = h("span");
const attached = h("div", { class: "bkc-attached", hidden: true }, [
  attachedText,
  h("button", {
    type: "button", class: "bkc-x", "aria-label": "Remove the selected passage", text: "×",
    onclick: () => { attach(null); input.focus(); },
  }),
]);
const status = h("p", { class: "bkc-status", role: "status" });
const form = h("form", { class: "bkc-form", onsubmit: (e) => { e.preventDefault(); submit(); } }, [
  attached,
  h("div", { class: "bkc-row" }, [input, send, stop]),
  status,
  h("p", { class: "bkc-foot", text: "Answers are generated from the book and may be imperfect." }),
]);
const panel = h("div", {
  id: ids + "-panel", class: "bkc-panel", role: "dialog", "aria-modal": "false",
  "aria-labelledby": ids + "-title", hidden: true,
}, [
  h("div", { class: "bkc-head" }, [
    h("h2", { id: ids + "-title", class: "bkc-title", text: TITLE }),
    h("button", { type: "button", class: "bkc-btn bkc-new", text: "New chat", onclick: newChat }),
    h("button", { type: "button", class: "bkc-x bkc-close", "aria-label": "Close chat", text: "×", onclick: closePanel }),
  ]),
  log,
  form,
]);
const chip = h("button", {
  type: "button", class: "bkc-chip", hidden: true, text: "Ask about selection",
  // mousedown would collapse the page selection before the click lands
  onmousedown: (e) => e.preventDefault(),
  onclick: () => {
    if (!chipSelection) return;
    attach(chipSelection);
    chip.hidden = true;
    openPanel();
  },
});
const root = h("div", { class: "bkc-root" }, [launcher, panel, chip]);
document.body.append(root);
log.append(welcome);

let current = null; // AbortController of the answer being streamed
let pending = null; // selection attached to the next question
let chipSelection = null;

// --- panel
function show() {
  panel.hidden = false;
  launcher.setAttribute("aria-expanded", "true");
  scrollDown(true);
}
function openPanel() {
  show();
  store({ open: true });
  input.focus();
}
function closePanel() {
  panel.hidden = true;
  launcher.setAttribute("aria-expanded", "false");
  store({ open: false });
  launcher.focus();
}
panel.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    e.preventDefault();
    closePanel();
  }
});
input.addEventListener("keydown", (e) => {
  // Enter sends, Shift+Enter adds a line; never while an IME is composing.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    submit();
  }
});
input.addEventListener("input", () => {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight + 2, 140) + "px";
});

function atBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}
// Follow the conversation unless the reader scrolled up (decided by the reader's
// scrolling: one addition can be taller than any fixed slack).
let following = true;
log.addEventListener("scroll", () => { following = atBottom(); });
function scrollDown(force) {
  if (force || following) {
    log.scrollTop = log.scrollHeight;
    following = true;
  }
}
function setBusy(busy) {
  const hadFocus = document.activeElement === stop;
  send.hidden = busy;
  stop.hidden = !busy;
  if (hadFocus && !busy) input.focus(); // the focused Stop button just vanished
}
function newChat() {
  if (current) current.abort();
  store({ session: null });
  log.replaceChildren(welcome);
  status.textContent = "";
  attach(null);
  input.focus();
}

// --- selection
function attach(selection) {
  pending = selection;
  attached.hidden = !selection;
  attachedText.textContent = selection
    ? "Asking about: “" + (selection.text.length > 160 ? selection.text.slice(0, 160) + "…" : selection.text) + "”"
    : "";
  input.placeholder = selection ? "Ask about the selected passage… (Enter: “" + SELECTION_QUESTION + "”)" : "Ask a question…";
}
function headingText(heading) {
  const copy = heading.cloneNode(true);
  copy.querySelectorAll(".hash-link").forEach((a) => a.remove()); // Docusaurus "#" anchors
  return copy.textContent.replace(/[\u200b\u200c\u200d\ufeff]/g, "").replace(/\s+/g, " ").replace(/\s*#$/, "").trim().slice(0, 300);
}
function nearestHeading(node) {
  let best = null;
  for (const heading of document.querySelectorAll("h1,h2,h3,h4,h5,h6")) {
    if (root.contains(heading)) continue;
    const before = heading.contains(node) || heading.compareDocumentPosition(node) & Node.DOCUMENT_POSITION_FOLLOWING;
    if (!before) break; // headings come in document order
    best = heading;
  }
  return best ? headingText(best) : "";
}
function readSelection() {
  const sel = window.getSelection();
  if (!sel || sel.isCollapsed || !sel.rangeCount) return null;
  const range = sel.getRangeAt(0);
  if (root.contains(range.commonAncestorContainer)) return null;
  const scope = ds.content ? document.querySelector(ds.content) : null;
  if (ds.content && !(scope && scope.contains(range.commonAncestorContainer))) return null;
  const text = sel.toString().replace(/[ \t]+\n/g, "\n").trim();
  if (text.length < 3) return null;
  return {
    text: text.slice(0, MAX_SELECTION),
    section: nearestHeading(range.startContainer),
    docPath: ds.docPath || location.pathname,
    rect: range.getBoundingClientRect(),
  };
}
let chipTimer = 0;
function updateChip() {
  clearTimeout(chipTimer);
  chipTimer = setTimeout(() => {
    chipSelection = readSelection();
    if (!chipSelection) {
      chip.hidden = true;
      return;
    }
    const r = chipSelection.rect;
    chip.style.top = Math.max(0, r.bottom + window.scrollY + 8) + "px";
    chip.style.left = Math.max(8, Math.min(r.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - 180)) + "px";
    chip.hidden = false;
  }, 120); // wait for the selection to settle (drag, shift+arrows)
}
document.addEventListener("selectionchange", updateChip);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !chip.hidden) chip.hidden = true;
});

// --- messages
function addUser(text, selection) {
  welcome.remove();
  const bubble = h("div", { class: "bkc-bubble" }, [
    selection ? h("div", { class: "bkc-quote", text: selection.text || "About the selected passage" }) : null,
    text,
  ]);
  log.append(h("div", { class: "bkc-msg bkc-user" }, bubble));
  scrollDown(true);
}

function Answer(live) {
  welcome.remove();
  this.text = "";
  this.cites = {};
  this.messageId = null;
  this.body = h("div", { class: "bkc-text", "aria-live": live ? "polite" : null, "aria-busy": live ? "true" : null });
  this.bubble = h("div", { class: "bkc-bubble" }, this.body);
  this.node = h("div", { class: "bkc-msg bkc-bot", "data-state": live ? "streaming" : "done" }, this.bubble);
  if (live) this.body.append(h("span", { class: "bkc-dots", "aria-label": "Searching the book" }, [h("i"), h("i"), h("i")]));
  log.append(this.node);
  scrollDown(true);
}
Answer.prototype.setCitations = function (list) {
  for (const c of list || []) this.cites[c.n] = c;
};
Answer.prototype.render = function () {
  if (!this.text) return;
  renderMarkdown(this.body, this.text, this.cites);
  scrollDown(false);
};
Answer.prototype.settle = function (state, note) {
  this.node.setAttribute("data-state", state);
  this.body.removeAttribute("aria-busy");
  if (!this.text) this.body.replaceChildren();
  else this.render();
  if (state === "error") this.node.classList.add("bkc-error");
  if (note) this.bubble.append(h("p", { class: "bkc-note", text: note }));
  scrollDown(false);
};
Answer.prototype.finish = function (done, messageStatus) {
  this.setCitations(done.citations);
  this.messageId = done.message_id || this.messageId;
  const cited = (done.citations || []).slice().sort((a, b) => a.n - b.n);
  if (cited.length) {
    const list = h("ol", { class: "bkc-sources", "aria-label": "Sources" });
    for (const c of cited) {
      list.append(h("li", {}, citationLink(c, "[" + c.n + "] " + sourceName(c), "bkc-src")));
    }
    this.bubble.append(list);
  }
  const note = messageStatus === "interrupted" ? "Stopped before the end."
    : messageStatus === "failed" ? "This answer failed before it finished."
    : done.persistence_warning ? "Note: this answer could not be saved to your history." : "";
  this.settle(messageStatus === "failed" ? "error" : "done", note);
  if (this.messageId && stored().token) this.bubble.append(feedbackButtons(this.messageId));
  scrollDown(false); // the sources, note and feedback row come into view if following
};

function feedbackButtons(messageId) {
  const row = h("div", { class: "bkc-actions" });
  for (const [rating, label] of [["up", "Helpful"], ["down", "Not helpful"]]) {
    row.append(h("button", {
      type: "button", class: "bkc-btn", "aria-pressed": "false", text: label,
      onclick: async (e) => {
        const button = e.currentTarget;
        try {
          const res = await fetch(API + "/api/v1/messages/" + encodeURIComponent(messageId) + "/feedback", {
            method: "POST", credentials: "omit",
            headers: { "Content-Type": "application/json", Authorization: "Bearer " + stored().token },
            body: JSON.stringify({ rating }),
          });
          if (!res.ok) throw new Error(String(res.status));
          row.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
          status.textContent = "";
        } catch (err) {
          status.textContent = "Could not send your feedback. Please try again.";
        }
      },
    }));
  }
  return row;
}

// --- talking to the API
function authHeaders() {
  const token = stored().token;
  return token ? { Authorization: "Bearer " + token } : {};
}

function networkMessage(partial) {
  if (navigator.onLine === false) return "You appear to be offline. Check your connection and try again.";
  return partial
    ? "The connection was lost, so this answer may be incomplete. Please try again."
    : "Could not reach the book's chat service. Check your connection and try again.";
}

const EVENT_ERRORS = {
  generation_timeout: "The answer took too long. Please try again.",
  generation_blocked: "This answer was blocked by a safety filter. Try rephrasing the question.",
  rate_limited: "The AI service is busy right now. Please try again in a moment.",
};

function httpMessage(res, envelope) {
  const error = (envelope && envelope.error) || {};
  if (res.status === 429) {
    const wait = parseInt(res.headers.get("Retry-After") || "", 10);
    const when = wait > 0 ? "in " + wait + (wait === 1 ? " second" : " seconds") : "in a moment";
    return "You're asking faster than the limit allows. Please wait and try again " + when + ".";
  }
  if (res.status === 400) return "The question could not be sent: " + (error.message || "it was not valid") + ".";
  if (res.status === 413) return "That message is too long. Please shorten it.";
  if (res.status === 503) return "The book's search is unavailable right now. Please try again in a minute.";
  return "Something went wrong (HTTP " + res.status + "). Please try again.";
}

// Nothing was answered: give the question back so resending is one keypress.
function keepQuestion(text) {
  if (!input.value) input.value = text;
}

const messageUrl = (answer, tail) => API + "/api/v1/messages/" + encodeURIComponent(answer.messageId) + tail;

async function stream(body, answer, retried) {
  const controller = new AbortController();
  current = controller;
  setBusy(true);
  let settled = false;
  try {
    let res = await fetch(API + "/api/v1/chat", {
      method: "POST", credentials: "omit", signal: controller.signal,
      headers: Object.assign({ "Content-Type": "application/json", Accept: "text/event-stream" }, authHeaders()),
      body: JSON.stringify(body),
    });
    const token = res.headers.get("X-Bookchat-Token");
    if (token) store({ token });
    if (!res.ok) {
      const envelope = await res.json().catch(() => null);
      const code = envelope && envelope.error && envelope.error.code;
      if (!retried && (res.status === 401 || code === "session_not_found")) {
        // A revoked token or an archived session: start over once, transparently.
        store(res.status === 401 ? { token: null, session: null } : { session: null });
        delete body.session_id;
        current = null;
        return stream(body, answer, true);
      }
      settled = true;
      answer.settle("error", httpMessage(res, envelope));
      keepQuestion(body.message);
      return;
    }
    let lastId = 0;
    const onEvent = (name, data, id) => {
      if (+id <= lastId) return; // seen before a reconnect: shown once
      lastId = +id || lastId;
      let payload;
      try {
        payload = JSON.parse(data);
      } catch (e) {
        return; // not ours; the protocol always sends JSON
      }
      if (name === "session") {
        store(payload.token ? { session: payload.session_id, token: payload.token } : { session: payload.session_id });
        answer.messageId = payload.message_id;
      } else if (name === "citations") {
        answer.setCitations(payload.citations);
      } else if (name === "token") {
        answer.text += payload.content || "";
      } else if (name === "done") {
        settled = true;
        answer.finish(payload);
      } else if (name === "error") {
        settled = true;
        answer.settle("error", EVENT_ERRORS[payload.code] || "Something went wrong while answering. Please try again.");
      }
    };
    // A connection dropped mid-answer resumes after the last id seen (the server goes on
    // for a grace period): a few tries, a growing pause.
    for (let tries = 0; ; ) {
      if (res && res.ok) {
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SSEParser(onEvent);
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            parser.push(decoder.decode(value, { stream: true }));
            if (!settled) answer.render(); // one repaint per network chunk, not per token
          }
          parser.push(decoder.decode());
          parser.end();
        } catch (err) {
          if (err.name === "AbortError") throw err;
        }
      } else if (res && res.status !== 503) break; // 410 gone, 404: give up
      if (settled || !answer.messageId || ++tries > 6) break;
      await new Promise((r) => setTimeout(r, 400 * tries));
      res = await fetch(messageUrl(answer, "/events"), {
        credentials: "omit", signal: controller.signal,
        headers: Object.assign({ Accept: "text/event-stream", "Last-Event-ID": String(lastId) }, authHeaders()),
      }).catch((err) => { if (err.name === "AbortError") throw err; return null; });
    }
    // 410: it ended while the reader was away and its events are gone; the history has it.
    if (!settled && res && res.status === 410 && (await showStored(answer))) settled = true;
    if (!settled) {
      settled = true;
      answer.settle("error", networkMessage(true));
    }
  } catch (err) {
    if (settled) return;
    settled = true;
    if (err && err.name === "AbortError") {
      answer.settle("stopped", "Stopped.");
      // Stop means stop: the server would otherwise go on for its resume grace period.
      if (answer.messageId) fetch(messageUrl(answer, "/stop"), { method: "POST", credentials: "omit", headers: authHeaders() }).catch(() => {});
    } else {
      answer.settle("error", networkMessage(!!answer.text));
      if (!answer.text) keepQuestion(body.message);
    }
  } finally {
    if (current === controller) {
      current = null;
      setBusy(false);
    }
  }
}

let restoring = Promise.resolve();
async function submit() {
  if (current) return; // one answer at a time; Stop is the way out
  const selection = pending;
  const question = input.value.trim() || (selection ? SELECTION_QUESTION : "");
  if (!question) return;
  await restoring;
  status.textContent = "";
  input.value = "";
  input.style.height = "";
  attach(null);
  const body = { message: question.slice(0, MAX_MESSAGE), mode: "normal" };
  const session = stored().session;
  if (session) body.session_id = session;
  if (selection) {
    body.mode = "selected_text_only";
    body.selected_text = selection.text;
    body.source_doc_path = selection.docPath.slice(0, 512);
    if (selection.section) body.source_section = selection.section;
  }
  addUser(question, selection);
  await stream(body, new Answer(true), false);
}

const history = () =>
  fetch(API + "/api/v1/sessions/" + encodeURIComponent(stored().session) + "/messages", {
    credentials: "omit", headers: Object.assign({ Accept: "application/json" }, authHeaders()),
  });

function showAnswer(answer, m) {
  answer.text = m.content;
  answer.setCitations(m.citations);
  answer.finish({ citations: m.citations, message_id: m.id }, m.status);
}

async function showStored(answer) {
  try {
    const res = await history();
    const m = res.ok && ((await res.json()).messages || []).find((x) => x.id === answer.messageId);
    if (!m || m.status === "streaming") return false;
    showAnswer(answer, m);
    return true;
  } catch (e) {
    return false;
  }
}

async function restore() {
  const state = stored();
  if (!state.session || !state.token) return;
  try {
    const res = await history();
    if (res.status === 401) return store({ token: null, session: null });
    if (res.status === 404) return store({ session: null });
    if (!res.ok) return;
    const data = await res.json();
    for (const m of data.messages || []) {
      if (m.role === "user") {
        addUser(m.content, m.retrieval_mode === "selected_text_only" ? { text: "" } : null);
      } else showAnswer(new Answer(false), m);
    }
  } catch (e) { /* offline: the conversation shows up on the next visit */ }
}

restoring = restore();
if (stored().open || (ds.open === "true" && !("open" in stored()))) {
  restoring.then(show);
}

window.BookChat = {
  open: openPanel,
  close: closePanel,
  newChat,
  ask(question) {
    openPanel();
    input.value = String(question || "");
    return submit();
  },
  SSEParser, // exposed so the parser can be tested against split chunks in a browser
};
})(document.currentScript);
