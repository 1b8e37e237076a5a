"""Where state crosses connections (and, later, processes): in-process by default."""
