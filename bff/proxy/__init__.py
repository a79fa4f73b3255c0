"""The My Account API proxy: an allowlist of upstream routes and the forwarding of browser calls to them.

Security: the browser can reach only the spec routes (`bff.proxy.spec`) that `BFF_PROXY_ROUTES` enables
(`bff.proxy.config`), with paths and queries `bff.proxy.matching` has validated; nothing else is ever
forwarded with the user's access token.
"""
