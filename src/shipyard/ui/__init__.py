"""The dashboard at /ui: server-rendered pages over the store (needs the `ui` extra).

`shipyard.ui.pages` holds the page registry (add or replace pages there) and the traffic pages,
`shipyard.ui.monitor_pages` the drift, alerts and escalation pages,
`shipyard.ui.spans` the span sources of the trace waterfall, `shipyard.ui.routes` the HTTP
side (login, sessions, static assets) and `shipyard.ui.session` the signed session cookie.
"""
