"""The data path: a reverse proxy process driven over a unix control socket."""
