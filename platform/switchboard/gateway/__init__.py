"""The Serve ingress: HTTP routes, WebSocket sessions, and delivery to sockets."""
