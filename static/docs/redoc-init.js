// Starts ReDoc on /redoc. An external script, because the page's CSP forbids inline ones. Search is off:
// ReDoc runs it in a worker built from a blob: URL, which that CSP forbids too (the browser's find still works).
Redoc.init(document.currentScript.dataset.openapi, { disableSearch: true }, document.getElementById("redoc"));
