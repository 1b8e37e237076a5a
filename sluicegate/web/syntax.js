// Syntax colours for fenced code, by highlight.js (vendored, see vendor/README.md). Its result
// is HTML text; it becomes DOM here, spans and text nodes built one by one (never innerHTML),
// so model output still only ever becomes text, and a CSS class is all a colour needs.
import hljs from "./vendor/highlight.min.js";
import dockerfile from "./vendor/dockerfile.min.js";
import powershell from "./vendor/powershell.min.js";

// Beyond the bundle's common languages: two that code answers often use, and a label they do.
hljs.registerLanguage("dockerfile", dockerfile);
hljs.registerLanguage("powershell", powershell);
hljs.registerAliases(["python3", "py3"], { languageName: "python" });

/** What highlighting has cost so far on this page (for tests and the curious). */
export const stats = { finished: 0, open: 0, chars: 0, ms: 0, maxMs: 0 };

/** Whether highlight.js knows the language of this fence label ("py", "c++" and other aliases
 * included); code in any other language stays plain. */
export function known(label) {
  return Boolean(label) && Boolean(hljs.getLanguage(label));
}

/** `code` coloured as language `label`: `node`, a fragment whose text is exactly `code`, and
 * `settled`: whether the code ends outside every construct (string, comment, bracket) the
 * grammar follows, so that what comes next colours the same on its own. */
export function highlight(code, label) {
  const start = performance.now();
  const result = hljs.highlight(code, { language: label, ignoreIllegals: true });
  let node = build(result.value);
  // Copy takes the text back from the page: it must be the code, to the character.
  if (node.textContent !== code) node = document.createTextNode(code);
  const took = performance.now() - start;
  stats.chars += code.length;
  stats.ms += took;
  stats.maxMs = Math.max(stats.maxMs, took);
  // `_top` (the mode the text ends in) is highlight.js's continuation, returned but not
  // documented: if a version drops it, nothing is settled and colouring starts over each time.
  return { node, settled: result._top === hljs.getLanguage(label) };
}

// highlight.js writes text escaped (these five entities), and spans with a class, nothing else.
const TOKEN = /<span class="([\w -]*)">|<\/span>|[^<]+/g;
const ENTITY = /&(?:amp|lt|gt|quot|#x27);/g;
const CHARS = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#x27;": "'" };

function build(html) {
  const root = document.createDocumentFragment();
  const open = [root];
  for (const [token, cls] of html.matchAll(TOKEN)) {
    if (cls !== undefined) {
      const span = document.createElement("span");
      span.className = cls;
      open.at(-1).append(span);
      open.push(span);
    } else if (token === "</span>") {
      if (open.length > 1) open.pop();
    } else {
      open.at(-1).append(token.replace(ENTITY, (e) => CHARS[e]));
    }
  }
  return root;
}
