"""The container side: the one primitive that continues a caller's trace, and its adapters
(the handler decorator, WSGI, ASGI and WebSocket middleware, the model-server hooks)."""
