// cmdd console: job output as a terminal would show it, and a parser for
// Server-Sent Events read with fetch(). Text only: nothing here makes HTML.
(() => {
  "use strict";

  /** Characters of output shown per stream; the rest: download the raw bytes. */
  const MAX_SHOWN = 1 << 20;

  /** A <pre> fed like a terminal: CR starts the line over, SGR colours (the
   *  16 basic ones and bold) become classes on text spans, every other escape
   *  is dropped. Text only: spans get their text through text nodes. */
  class Terminal {
    constructor(pre, note) {
      this.pre = pre;
      this.note = note;
      this.done = document.createElement("span");
      this.lineNode = document.createElement("span");
      pre.replaceChildren(this.done, this.lineNode);
      note.hidden = true;
      note.textContent = "";
      this.pending = "";
      this.shown = 0;
      this.full = false;
      this.style = { fg: null, bg: null, bold: false };
      this.line = [];
    }

    write(text) {
      if (this.full) return;
      text = this.pending + text;
      this.pending = "";
      text = text.replace(ESCAPES, (found) => (SGR.test(found) ? found : ""));
      const escape = text.lastIndexOf("\x1b");
      if (escape !== -1 && !SGR.test(text.slice(escape).match(/^\x1b\[[0-9;]*m?/)[0])) {
        // An escape sequence split between two events: wait for its end.
        if (text.length - escape < 256) this.pending = text.slice(escape);
        text = text.slice(0, escape) + (this.pending ? "" : text.slice(escape + 1));
      }
      if (text.endsWith("\r")) {
        this.pending = "\r" + this.pending;
        text = text.slice(0, -1);
      }
      const committed = document.createDocumentFragment();
      let count = 0;
      let at = 0;
      for (const match of text.matchAll(TOKENS)) {
        this.add(text.slice(at, match.index));
        at = match.index + match[0].length;
        if (match[1] !== undefined) this.sgr(match[1]);
        else if (match[0] === "\r") this.line = [];
        else {
          this.line.push({ text: "\n", cls: "" });
          this.line.forEach((part) => { count += part.text.length; committed.append(span(part)); });
          this.line = [];
        }
      }
      this.add(text.slice(at));
      this.done.append(committed);
      this.lineNode.replaceChildren(...this.line.map(span));
      this.shown += count;
      const pendingLine = this.line.reduce((n, part) => n + part.text.length, 0);
      if (this.shown + pendingLine > MAX_SHOWN) {
        this.full = true;
        this.notice(`Showing the first ${MAX_SHOWN} characters; download the raw bytes for all of it.`);
      }
      this.pre.scrollTop = this.pre.scrollHeight;
    }

    add(text) {
      text = text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, "");
      if (text) this.line.push({ text, cls: styleClass(this.style) });
    }

    /** Only 0, 1, 22, 30-37, 39, 40-47, 49, 90-97, 100-107; the rest is ignored. */
    sgr(params) {
      const codes = params === "" ? [0] : params.split(";").map(Number);
      for (let i = 0; i < codes.length; i += 1) {
        const code = codes[i];
        if (code === 38 || code === 48) {
          i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 0; // 256/true colour: dropped
        } else if (code === 0) this.style = { fg: null, bg: null, bold: false };
        else if (code === 1) this.style.bold = true;
        else if (code === 22) this.style.bold = false;
        else if (code >= 30 && code <= 37) this.style.fg = code - 30;
        else if (code === 39) this.style.fg = null;
        else if (code >= 40 && code <= 47) this.style.bg = code - 40;
        else if (code === 49) this.style.bg = null;
        else if (code >= 90 && code <= 97) this.style.fg = code - 82;
        else if (code >= 100 && code <= 107) this.style.bg = code - 92;
      }
    }

    notice(text) {
      this.note.hidden = false;
      this.note.textContent = this.note.textContent ? this.note.textContent + " " + text : text;
    }
  }

  function styleClass(style) {
    const names = [];
    if (style.bold) names.push("ansi-bold");
    if (style.fg !== null) names.push("ansi-fg-" + style.fg);
    if (style.bg !== null) names.push("ansi-bg-" + style.bg);
    return names.join(" ");
  }

  /** A part of a line as a node: plain text, or a span with classes and text. */
  function span(part) {
    if (!part.cls) return document.createTextNode(part.text);
    const node = document.createElement("span");
    node.className = part.cls;
    node.textContent = part.text;
    return node;
  }

  const ESCAPES = /\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -\/]*[@-~]|\x1b[()#][0-9A-Za-z]|\x1b[@-Z\\-_=>]/g;
  const SGR = /^\x1b\[[0-9;]*m$/;
  const TOKENS = /\x1b\[([0-9;]*)m|\r\n|\r|\n/g;

  /** Server-Sent Events from a fetch() body (EventSource cannot send a token). */
  class SseParser {
    constructor(deliver) {
      this.deliver = deliver;
      this.buffer = "";
      this.event = "message";
      this.data = [];
    }

    feed(text) {
      this.buffer += text;
      const lineEnd = /\r\n|\r(?!$)|\n/;
      let match;
      while ((match = lineEnd.exec(this.buffer))) {
        const line = this.buffer.slice(0, match.index);
        this.buffer = this.buffer.slice(match.index + match[0].length);
        this.line(line);
      }
    }

    line(line) {
      if (line === "") {
        if (this.data.length) this.deliver(this.event, this.data.join("\n"));
        this.event = "message";
        this.data = [];
        return;
      }
      if (line.startsWith(":")) return;
      const colon = line.indexOf(":");
      const name = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "event") this.event = value;
      else if (name === "data") this.data.push(value);
    }
  }

  window.cmddOutput = Object.freeze({ MAX_SHOWN, SseParser, Terminal });
})();
