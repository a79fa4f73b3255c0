"""The My Account API proxy: an allowlist of upstream routes and the forwarding of browser calls to them.

Security: the browser can reach only the routes `bff.proxy.routes` exposes, with paths and queries that
module has validated; nothing else is ever forwarded with the user's access token.
"""
