// Streaming Markdown: text arrives a token at a time and the page must not re-flow wholesale.
// Finished blocks are rendered once and never touched again; only the open block (the last
// paragraph or list) is rebuilt, and an open code block only grows (text appended to a node).
// Code is coloured by syntax.js: a finished block once, as it closes; the open block's new
// complete lines as they come (see paintOpen), the line still arriving plain.
// Everything goes through the DOM (textContent, createElement), never innerHTML.
import { highlight, known, stats } from "./syntax.js";

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
// The start of a line that may yet become a block marker (a fence, a heading, a list item,
// a quote): nothing but the marker so far.
const MARKER_SO_FAR = /^\s{0,3}(`+|~+|#{1,6}|>|([-*_+])(\s*\2)*|\d+[.)]?)\s*$/;
// Where an inline construct may begin (as INLINE below matches them).
const OPENER = /`|\*\*|__|\*(?=[^*\s])|\b_(?=[^_])|\[/;

export class MarkdownStream {
  constructor(root, { onCopy } = {}) {
    this.root = root;
    this.onCopy = onCopy;
    this.text = "";
    this.pos = 0;          // start of the first line not yet committed
    this.block = [];       // committed lines of the open (non-code) block
    this.fence = null;     // the open code block (see codeBlock)
    this.tail = null;      // element showing the open block
  }

  /** Replace everything (used when a stored answer is shown again). */
  reset(text) {
    this.root.replaceChildren();
    Object.assign(this, { text: "", pos: 0, block: [], fence: null, tail: null });
    this.push(text);
  }

  push(chunk) {
    this.text += chunk;
    let nl;
    while ((nl = this.text.indexOf("\n", this.pos)) !== -1) {
      this.line(this.text.slice(this.pos, nl));
      this.pos = nl + 1;
    }
    this.showOpen(this.text.slice(this.pos));
    this.paintOpen();
  }

  /** The text is complete: what was held back while it might still change shows as it is. */
  end() {
    const partial = this.text.slice(this.pos);
    if (this.fence) {
      this.fence.fixed.appendData(partial);
      this.fence.text += partial;
      this.fence.partial.data = "";
      this.closeFence();
      return;
    }
    const lines = partial ? [...this.block, partial] : this.block;
    if (lines.length) this.render(lines);
  }

  /** One complete line. */
  line(line) {
    if (this.fence) {
      const close = line.trim();
      if (close.startsWith(this.fence.marker) && /^[`~]+$/.test(close)) {
        this.fence.partial.data = "";
        this.closeFence();
      } else {
        this.fence.fixed.appendData(line + "\n");
        this.fence.text += line + "\n";
      }
      return;
    }
    const open = FENCE.exec(line);
    if (open) {
      this.commit();
      this.fence = this.codeBlock(open[1], open[2]);
      return;
    }
    if (line.trim() === "") {
      this.commit();
      return;
    }
    if (/^#{1,6}\s/.test(line) || /^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      this.commit();
      this.root.append(renderBlock([line]));
      return;
    }
    // A list item, quote or heading after a paragraph starts a new block.
    if (this.block.length && kind(line) !== kind(this.block[0]) && kind(line) !== "p") {
      this.commit();
    }
    this.block.push(line);
  }

  /** The unfinished last line, shown provisionally. */
  showOpen(partial) {
    if (this.fence) {
      // what may be the closing fence is not shown as code while it arrives
      this.fence.partial.data = /^\s*[`~]+$/.test(partial) ? "" : partial;
      return;
    }
    // A line that will start a block of its own (a fence, a heading, a list after a
    // paragraph...) waits for its newline: shown early, its marker would vanish later.
    const shown = partial && !this.startsBlock(partial) ? [...this.block, partial] : this.block;
    if (!shown.length) {
      this.tail?.remove();
      this.tail = null;
      return;
    }
    this.render(shown, true);
  }

  startsBlock(partial) {
    if (MARKER_SO_FAR.test(partial) || FENCE.test(partial)) return true;
    if (/^#{1,6}\s/.test(partial) || /^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(partial)) return true;
    return this.block.length > 0 && kind(partial) !== kind(this.block[0]) && kind(partial) !== "p";
  }

  /** Show lines as the open block, rebuilding it only if they changed. While it is open,
   * text from an inline marker that is not closed yet waits (its marker would vanish when
   * it closes, and the answer must only grow). */
  render(lines, open = false) {
    const key = (open ? "open:" : "") + lines.join("\n");
    if (this.tail && this.tailKey === key) return;
    const el = renderBlock(lines, open);
    if (this.tail) this.tail.replaceWith(el);
    else this.root.append(el);
    this.tail = el;
    this.tailKey = key;
  }

  commit() {
    if (!this.block.length) return;
    this.render(this.block);
    this.tail = null;
    this.block = [];
  }

  /** The code block is finished: coloured once, all of it (as if it had come at once), and
   * never touched again. */
  closeFence() {
    const f = this.fence;
    this.fence = null;
    clearTimeout(f.timer);
    if (!f.lang) return;
    f.done.replaceChildren(highlight(f.text, f.lang).node);
    f.fixed.data = "";
    stats.finished += 1;
  }

  /** Colour the open block's new complete lines, at most once a push (the page pushes once a
   * frame). Colouring starts again from the last point where the code was outside every
   * string, comment and bracket (lines before it keep their colours: the text does not move),
   * so each pass costs the new lines only. Where code stays inside something for long, a pass
   * costs more: then it waits until the last one took under a tenth of the time since. */
  paintOpen() {
    const f = this.fence;
    if (!f?.lang || f.shown === f.text.length) return;
    const wait = f.paintedAt + 9 * f.cost - performance.now();
    if (wait > 0) {
      f.timer ??= setTimeout(() => {   // in case no more text comes for a while
        f.timer = null;
        if (this.fence === f) this.paintOpen();
      }, wait);
      return;
    }
    const start = performance.now();
    const { node, settled } = highlight(f.text.slice(f.from), f.lang);
    f.live.replaceChildren(node);
    f.fixed.data = "";
    f.shown = f.text.length;
    if (settled) {
      f.from = f.shown;
      f.live = f.done.appendChild(el("span", "part"));
    }
    stats.open += 1;
    f.paintedAt = performance.now();
    f.cost = f.paintedAt - start;
  }

  codeBlock(marker, lang) {
    this.tail?.remove();
    this.tail = null;
    const wrap = el("figure", "code");
    const head = el("figcaption");
    const label = el("span", "lang", lang || "code");
    const copy = el("button", "copy", "Copy");
    copy.type = "button";
    const pre = el("pre");
    const code = el("code");
    if (lang) code.dataset.lang = lang;
    // coloured lines, in parts (`live`, the last, is coloured again as more come; each part
    // is a CSS block, so layout after a new line redoes that part only), complete lines not
    // coloured yet, the line still arriving
    const done = el("span", "lines");
    const live = done.appendChild(el("span", "part"));
    const fixed = document.createTextNode("");
    const partial = document.createTextNode("");
    code.append(done, fixed, partial);
    pre.append(code);
    copy.addEventListener("click", () => this.onCopy?.(code.textContent, copy));
    head.append(label, copy);
    wrap.append(head, pre);
    this.root.append(wrap);
    return {
      marker: marker[0].repeat(3), lang: known(lang) ? lang : null, done, live, fixed, partial,
      text: "", from: 0, shown: 0, paintedAt: -Infinity, cost: 0, timer: null,
    };
  }
}

function kind(line) {
  if (/^\s{0,3}>/.test(line)) return "quote";
  if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) return "list";
  return "p";
}

/** A finished (or provisional) block of lines as one element. */
export function renderBlock(lines, open = false) {
  const first = lines[0];
  const heading = /^(#{1,6})\s+(.*)$/.exec(first);
  if (heading && lines.length === 1) {
    const text = heading[2].replace(/\s#+\s*$/, "");
    return inline(el(`h${Math.min(heading[1].length + 2, 6)}`), text, false, open);
  }
  if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(first)) return el("hr");
  const k = kind(first);
  if (k === "quote") {
    const text = lines.map((l) => l.replace(/^\s{0,3}>\s?/, "")).join("\n");
    return inline(el("blockquote"), text, false, open);
  }
  if (k === "list") {
    const ordered = /^\s*\d+[.)]\s/.test(first);
    const list = el(ordered ? "ol" : "ul");
    let item = null;
    lines.forEach((line, i) => {
      const m = /^\s*(?:[-*+]|\d+[.)])\s+(.*)$/.exec(line);
      if (m || !item) {
        item = el("li");
        list.append(item);
      }
      const last = open && i === lines.length - 1;
      inline(item, m ? m[1] : line.trim(), Boolean(item.childNodes.length), last);
    });
    return list;
  }
  return inline(el("p"), lines.join("\n"), false, open);
}

// `code`, **bold**, *em* / _em_, [text](http…) links; the rest is text.
const INLINE = /(`+)([^`]*?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|\b_([^_]+)_\b|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;

function inline(parent, text, continued = false, open = false) {
  if (continued) parent.append("\n");
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[1]) parent.append(el("code", null, m[2]));
    else if (m[3] || m[4]) parent.append(el("strong", null, m[3] || m[4]));
    else if (m[5] || m[6]) parent.append(el("em", null, m[5] || m[6]));
    else {
      const a = el("a", null, m[7]);
      a.href = m[8];
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      parent.append(a);
    }
    last = m.index + m[0].length;
  }
  let rest = text.slice(last);
  // Only the last line can still close what it opened (an earlier one would have a while
  // ago): hold back from its first opener, and no more.
  const start = rest.lastIndexOf("\n") + 1;
  const opener = open ? rest.slice(start).search(OPENER) : -1;
  if (opener !== -1) rest = rest.slice(0, start + opener);
  if (rest) parent.append(rest);
  return parent;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
