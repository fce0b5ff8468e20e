"""Self-contained HTML snapshots of HeadScope views: data (compact float16, gzipped), plotly.js and the page's
own view code in one file that opens from disk with no network and no server. Takes API responses (plain
dicts) and returns HTML; no torch, no FastAPI, so the server's route and the `headscope` package share it."""
