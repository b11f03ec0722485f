"""The labeling page's two assets, served by the app itself (no network, no package data).

The script only maps keys to the page's own buttons: clicking a button submits its plain
HTML form, so the server stays the one place that decides what is shown next.
"""

LABEL_JS = r"""
"use strict";
(function () {
  var keys = {"1": "choose1", "2": "choose2", "t": "tie", "s": "skip", "u": "undo"};
  var busy = false;
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || busy) return;
    var id = keys[e.key.toLowerCase()];
    var button = id && document.getElementById(id);
    if (!button) return;
    e.preventDefault();
    busy = true;  // one judgement per page: a held or doubled key sends nothing more
    document.body.classList.add("busy");
    button.click();
  });
  document.body.dataset.keys = "ready";  // the keys work from here on
})();
"""

LABEL_CSS = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
max-width:1400px;padding:16px 24px;color:#1f2328;background:#f6f8fa}
body.busy{opacity:.6}
header{display:flex;gap:16px;align-items:center;margin-bottom:12px}
header progress{flex:1;height:10px}
.progress{font-weight:600}
.instruction{margin:4px 0}
.limit{margin:4px 0;color:#57606a}
.prompt{white-space:pre-wrap;background:#fff;border:1px solid #d0d7de;border-radius:6px;
padding:12px 16px;max-height:40vh;overflow:auto}
.cands{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-top:16px}
.cand{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;
display:flex;flex-direction:column}
.cand h2{margin:0 0 6px;font-size:15px;color:#57606a}
.cand .text{white-space:pre-wrap;overflow-wrap:anywhere;flex:1}
.wc{color:#57606a;font-size:14px}
.over{color:#cf222e;font-weight:600}
button{font:inherit;padding:6px 14px;border:1px solid #d0d7de;border-radius:6px;
background:#f6f8fa;cursor:pointer}
button:hover{background:#eaeef2}
.other{display:flex;gap:12px;margin-top:12px;justify-content:center}
.undo{margin-top:12px;text-align:center}
kbd{font:12px ui-monospace,monospace;border:1px solid #d0d7de;border-bottom-width:2px;
border-radius:4px;padding:0 5px;background:#fff}
.help{color:#57606a;font-size:14px;text-align:center}
.msg{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 12px}
"""
