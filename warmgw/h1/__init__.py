"""A small HTTP/1.1 server and upstream client for the request path (llhttp via httptools)."""
