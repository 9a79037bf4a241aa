"""``tetik console``: the marketers' web console (journeys, rules versions, backtests,
segments, shoppers), a raw ASGI app with server-rendered pages (:mod:`flows.console.app`)."""
