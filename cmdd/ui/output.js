// cmdd console: job output as a terminal would show it, and a parser for
// Server-Sent Events read with fetch(). Text only: nothing here makes HTML.
(() => {
  "use strict";

  /** Characters of output shown per stream; the rest: download the raw bytes. */
  const MAX_SHOWN = 1 << 20;

  /** A <pre> fed like a terminal: CR starts the line over, escapes are dropped. */
  class Terminal {
    constructor(pre, note) {
      this.pre = pre;
      this.note = note;
      this.done = document.createTextNode("");
      this.line = document.createTextNode("");
      pre.replaceChildren(this.done, this.line);
      note.hidden = true;
      note.textContent = "";
      this.pending = "";
      this.shown = 0;
      this.full = false;
    }

    write(text) {
      if (this.full) return;
      text = this.pending + text;
      this.pending = "";
      text = stripEscapes(text);
      const escape = text.lastIndexOf("\x1b");
      if (escape !== -1) {
        // An escape sequence split between two events: wait for its end.
        if (text.length - escape < 256) this.pending = text.slice(escape);
        text = text.slice(0, escape) + (this.pending ? "" : text.slice(escape + 1));
      }
      if (text.endsWith("\r")) {
        this.pending = "\r" + this.pending;
        text = text.slice(0, -1);
      }
      text = text.replace(/\r\n/g, "\n").replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g, "");
      const lines = text.split("\n");
      let line = this.line.data;
      let committed = "";
      lines.forEach((part, index) => {
        const overwritten = part.split("\r");
        line = overwritten.length > 1 ? overwritten[overwritten.length - 1] : line + part;
        if (index < lines.length - 1) {
          committed += line + "\n";
          line = "";
        }
      });
      this.done.appendData(committed);
      this.line.data = line;
      this.shown += committed.length;
      if (this.shown + line.length > MAX_SHOWN) {
        this.full = true;
        this.notice(`Showing the first ${MAX_SHOWN} characters; download the raw bytes for all of it.`);
      }
      this.pre.scrollTop = this.pre.scrollHeight;
    }

    notice(text) {
      this.note.hidden = false;
      this.note.textContent = this.note.textContent ? this.note.textContent + " " + text : text;
    }
  }

  const ESCAPES = /\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -\/]*[@-~]|\x1b[()#][0-9A-Za-z]|\x1b[@-Z\\-_=>]/g;

  function stripEscapes(text) {
    return text.replace(ESCAPES, "");
  }

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
