"""The ASGI routes: the only code that knows about HTTP and WebSockets."""
