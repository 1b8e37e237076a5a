"""Model providers: each turns a canonical request into canonical events."""
